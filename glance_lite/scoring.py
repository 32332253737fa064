"""Anomaly localisation (Sec. 3.3): patch scores (Eq. 11-13), the raster scan and IDW score maps.

For every patch ``p`` of a raster grid over a test image (Fig. 2b) we compute

* the local feature ``Z_l = L(p)`` (Local-Net, Eq. 4) and the global feature ``Z_g = G(I, M_0)`` of the
  image with the patch masked out (Global-Net, Eq. 6);
* the inconsistency score ``s_IAD = (1/n) ||Z_l - Z_g||^2`` (Eq. 11, :func:`glance_lite.heads.iad_score`);
* the distortion score ``s_DAD`` (Eq. 12, :func:`glance_lite.heads.dad_score`);
* their combination ``s = lambda_s s_IAD + (1 - lambda_s) s_DAD`` (Eq. 13, lambda_s = 0.8);

and turn the patch scores, placed at the patch centres, into a per-pixel anomaly map with inverse
distance weighted (IDW) interpolation.

**Raster grid** (:func:`patch_grid`).  Patch top-left corners ``0, s, 2s, ...`` along each axis, with
``H - p`` appended when it is not on the grid, so the last row and column of patches touch the
border and every pixel is covered.  Adjacent patches overlap when the stride ``s < p``.

**IDW and speed** live in their own modules, re-exported here: :mod:`glance_lite.idw`
(:func:`idw_interpolate`: the per-pixel map from the patch scores) and :mod:`glance_lite.fast_features`
(:func:`local_features_at`, :func:`global_features_incremental`: Z_l and Z_g of every grid patch
without a Python loop, used by :func:`score_patches`; :func:`anomaly_maps_loop` is the plain
per-patch reference).  IDW is linear in the scores, so any lambda_s-combination of the two head maps
(:func:`head_maps`) *is* the map of the combined score -- the lambda_s ablation (Table 4) mixes the
two maps instead of re-scoring.

**Scale.**  ``s_IAD`` is a squared feature distance, ``s_DAD`` a probability in [0, 1]; the paper adds
them as they are (Eq. 13), and so do we by default.  Optionally (``normalise=stats``) each head's
scores are standardised with statistics of the patch scores over *training* images
(:func:`fit_score_normaliser`: z-score with their mean and std, or division by their 99th
percentile).  Never fit it on test images.

Deviation: the paper does not specify the raster stride, the patch-centre convention, the IDW power
or neighbourhood, nor the score scales.  We place scores at the geometric patch centre
``top + (p - 1) / 2``, use ``preset.score_stride`` (4 for the cpu and paper presets), add the border
row/column of patches, and IDW with power 2 over the 9 nearest centres; the optional per-head
normalisation is ours and reported separately from the plain Eq. 13.  Eq. 12 is read as
``s_DAD = C(Z_l, Z_g)`` (see :mod:`glance_lite.heads`).  Maps are computed at the preset's image size.

Defined in :doc:`/notebooks/04_score_maps`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .fast_features import _pairs, global_features_batched, global_features_incremental, local_features_at
from .heads import combined_score, dad_score, iad_score
from .devices import module_device
from .idw import ScoringError, clear_idw_cache, idw_interpolate, idw_weights
from .local_net import grid_positions
from .presets import CHOICES

__all__ = [
    "ScoringError",
    "patch_grid",
    "patch_centres",
    "idw_weights",
    "idw_interpolate",
    "clear_idw_cache",
    "local_features_at",
    "global_features_incremental",
    "global_features_batched",
    "score_patches",
    "score_patches_loop",
    "head_maps",
    "anomaly_maps",
    "anomaly_maps_loop",
    "fit_score_normaliser",
    "normalise_scores",
    "normalised_head_maps",
    "NORMALISATIONS",
]


# ------------------------------------------------------------------------------------------------
# Raster grid
# ------------------------------------------------------------------------------------------------


def patch_grid(height: int, width: int, patch_size: int, stride: int) -> tuple[Tensor, Tensor]:
    """Top-left corners of a raster grid of ``patch_size`` patches (Fig. 2b): ``(tops, lefts)``.

    ``tops = 0, stride, 2 stride, ...`` up to ``height - patch_size``, with ``height - patch_size``
    appended when the stride does not land on it (so the last row of patches touches the bottom
    border and every pixel is covered); the same for ``lefts``.  Both are 1-D ``long`` tensors; the
    grid is their outer product, patch (i, j) having top-left ``(tops[i], lefts[j])``.
    """
    h, w, p, s = int(height), int(width), int(patch_size), int(stride)
    if p < 1 or s < 1:
        raise ScoringError(f"patch_grid: patch_size ({p}) and stride ({s}) must be positive")
    if p > h or p > w:
        raise ScoringError(f"patch_grid: a {p}x{p} patch does not fit an image of {h}x{w} pixels")
    return grid_positions(h, p, s), grid_positions(w, p, s)


def patch_centres(tops: Tensor, lefts: Tensor, patch_size: int) -> tuple[Tensor, Tensor]:
    """Centres (float64) of patches with these top-left corners: ``top + (p - 1) / 2``."""
    off = (int(patch_size) - 1) / 2.0
    return torch.as_tensor(tops).double() + off, torch.as_tensor(lefts).double() + off


# ------------------------------------------------------------------------------------------------
# Patch scores and maps
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """``torch.no_grad()`` and ``model.eval()``, restoring the training flags afterwards."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, f in flags.items():
            m.training = f


def _check_images(images: Tensor, p: int) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ScoringError(f"images must be a (B, 3, H, W) tensor, got {shape}")
    if images.shape[2] < p or images.shape[3] < p:
        raise ScoringError(f"images of {images.shape[2]}x{images.shape[3]} are smaller than the {p}x{p} patch")
    return images.float()


def _grid_for(model: nn.Module, images: Tensor, stride: int | None) -> tuple[Tensor, Tensor]:
    p = model.preset.patch_size
    return patch_grid(images.shape[2], images.shape[3], p, stride or model.preset.score_stride)


def score_patches(
    model: nn.Module,
    images: Tensor,
    stride: int | None = None,
    batch_size: int = 256,
    method: str = "incremental",
    progress: bool = False,
) -> dict[str, Tensor]:
    """Patch scores of Eq. 11 and 12 on the raster grid, without a Python loop over patches.

    Args:
        model: a :class:`glance_lite.model.GlanceModel` (``.preset``, ``.local_net``, ``.global_net``,
            ``.dad``).
        images: ``(B, 3, H, W)`` in [0, 1].
        stride: grid stride (default ``preset.score_stride``).
        batch_size: masked copies per Global-Net batch.
        method: ``"incremental"`` (exact incremental Global-Net, default) or ``"batched"`` (one full
            forward per masked copy, in batches).

    Returns:
        ``dict(s_iad (B, gh, gw), s_dad (B, gh, gw), tops (gh,), lefts (gw,))`` on the CPU.
    """
    if method not in ("incremental", "batched"):
        raise ScoringError(f"method must be 'incremental' or 'batched', got {method!r}")
    p = model.preset.patch_size
    images = _check_images(images, p)
    tops, lefts = _grid_for(model, images, stride)
    gh, gw = len(tops), len(lefts)
    ty, lx = _pairs(tops, lefts)
    dev = module_device(model)
    glob = global_features_incremental if method == "incremental" else global_features_batched
    s_iad, s_dad = [], []
    with _inference(model):
        for i in tqdm(range(images.shape[0]), desc="score maps", disable=not progress, leave=False):
            img = images[i : i + 1].to(dev)
            z_l = local_features_at(model.local_net, img, tops, lefts)[0].permute(1, 2, 0).reshape(gh * gw, -1)
            z_g = glob(model.global_net, img, ty, lx, p, batch_size=batch_size)
            s_iad.append(iad_score(z_l, z_g).reshape(gh, gw).cpu())
            s_dad.append(dad_score(model.dad, z_l, z_g).reshape(gh, gw).cpu())
    return {"s_iad": torch.stack(s_iad), "s_dad": torch.stack(s_dad), "tops": tops, "lefts": lefts}


def score_patches_loop(
    model: nn.Module,
    images: Tensor,
    stride: int | None = None,
    max_patches: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The plain reference: one Local-Net forward per cropped patch, one Global-Net per masked image.

    ``max_patches`` stops after that many patches per image (raster order); the scores of the
    patches not computed are NaN (used by the benchmark to time a subset and extrapolate).
    Returns the same dict as :func:`score_patches` plus ``n_done`` (patches computed per image).
    """
    from .global_net import hole_mask

    p = model.preset.patch_size
    images = _check_images(images, p)
    tops, lefts = _grid_for(model, images, stride)
    h, w = images.shape[-2:]
    gh, gw = len(tops), len(lefts)
    dev = module_device(model)
    n = gh * gw if max_patches is None else min(gh * gw, int(max_patches))
    s_iad = torch.full((images.shape[0], gh, gw), float("nan"))
    s_dad = torch.full((images.shape[0], gh, gw), float("nan"))
    with _inference(model):
        for b in range(images.shape[0]):
            img = images[b : b + 1].to(dev)
            for k in tqdm(range(n), desc="patches", disable=not progress, leave=False):
                i, j = divmod(k, gw)
                t, l = int(tops[i]), int(lefts[j])
                z_l = model.local_net(img[:, :, t : t + p, l : l + p])
                z_g = model.global_net(img, hole_mask((h, w), [t], [l], p, device=dev))
                s_iad[b, i, j] = float(iad_score(z_l, z_g)[0])
                s_dad[b, i, j] = float(dad_score(model.dad, z_l, z_g)[0])
    return {"s_iad": s_iad, "s_dad": s_dad, "tops": tops, "lefts": lefts, "n_done": n}


NORMALISATIONS = ("none", "zscore", "p99", "position")
"""The score normalisations: the paper's plain Eq. 13 and three ways of putting the heads on one scale."""


def normalise_scores(s_iad: Tensor, s_dad: Tensor, stats: Mapping[str, Any] | None,
                     method: str | None = None) -> tuple[Tensor, Tensor]:
    """Apply a normaliser from :func:`fit_score_normaliser` to each head's patch scores.

    ``method`` (default ``stats["method"]``):

    * ``"none"`` (or ``stats=None``): unchanged, the paper's plain Eq. 13;
    * ``"zscore"``: ``(s - mean) / std`` per head;
    * ``"p99"``: ``s / p99``;
    * ``"position"``: ``(s - mean_ij) / std_res``, where ``mean_ij`` is the head's mean score at grid
      position (i, j) over the training images and ``std_res`` the standard deviation of what is
      left.  It removes what the heads get wrong at a *place* on every normal image (for IAD: where
      the Global-Net cannot predict Z_l even on good images, e.g. at the border or on a part that
      varies), so that only what differs from the normal images at that place remains.  Needs the
      scores on the grid they were fitted on (same image size and stride).

    All are affine per head and grid position, so they commute with IDW.
    """
    method = (stats or {}).get("method", "none") if method is None else method
    if method == "none":
        return s_iad, s_dad
    if stats is None:
        raise ScoringError(f"normalisation {method!r} needs statistics from fit_score_normaliser")
    out = []
    try:
        for s, st in ((s_iad, stats["iad"]), (s_dad, stats["dad"])):
            if method == "zscore":
                out.append((s - st["mean"]) / st["std"])
            elif method == "p99":
                out.append(s / st["p99"])
            elif method == "position":
                mu = torch.as_tensor(st["position_mean"], dtype=s.dtype)
                if tuple(mu.shape) != tuple(s.shape[-2:]):
                    raise ScoringError(f"position normaliser fitted on a {tuple(mu.shape)} grid, scores are on "
                                       f"{tuple(s.shape[-2:])}")
                out.append((s - mu) / st["position_std"])
            else:
                raise ScoringError(f"unknown normalisation method {method!r}; use one of {NORMALISATIONS}")
    except (KeyError, TypeError) as e:
        raise ScoringError(f"not a score normaliser (from fit_score_normaliser): missing {e}") from e
    return out[0], out[1]


def fit_score_normaliser(
    model: nn.Module,
    train_images: Tensor,
    method: str = "zscore",
    stride: int | None = None,
    max_images: int | None = 16,
    progress: bool = False,
) -> dict[str, Any]:
    """Statistics of each head's patch scores over (up to ``max_images``) TRAINING images.

    Returns ``{"method", "iad": {"mean", "std", "p99", "position_mean" (gh x gw lists),
    "position_std"}, "dad": {...}, "n_images", "n_patches", "stride"}`` (plain floats and lists,
    JSON-friendly), good for every method of :func:`normalise_scores`; ``method`` is the default one.
    Pass it as ``normalise=`` to :func:`head_maps` or :func:`anomaly_maps`.  Never fit it on test images.

    Caveat: the images are those the Global-Net was trained on, so its errors there are, if anything,
    smaller than on new good images; the statistics set the heads' scales and the places where they
    err on every image, not a threshold.
    """
    if method not in NORMALISATIONS or method == "none":
        raise ScoringError(f"unknown normalisation method {method!r}; use one of {NORMALISATIONS[1:]}")
    imgs = train_images if max_images is None else train_images[: int(max_images)]
    sc = score_patches(model, imgs, stride=stride, progress=progress)
    out: dict[str, Any] = {"method": method}
    for head in ("iad", "dad"):
        s = sc[f"s_{head}"].double()
        v = s.reshape(-1)
        mu = s.mean(0)
        res = (s - mu).reshape(-1)
        out[head] = {
            "mean": float(v.mean()),
            "std": float(v.std().clamp_min(1e-12)) if len(v) > 1 else 1.0,
            "p99": float(torch.quantile(v, 0.99).clamp_min(1e-12)),
            "position_mean": mu.tolist(),
            "position_std": float(res.std().clamp_min(1e-12)) if len(res) > 1 else 1.0,
        }
    out.update(n_images=int(imgs.shape[0]), n_patches=int(sc["s_iad"].numel()),
               stride=int(stride or model.preset.score_stride))
    return out


def normalised_head_maps(model: nn.Module, images: Tensor, stats: Mapping[str, Any] | None,
                         methods: Sequence[str] = CHOICES["score_norm"],
                         stride: int | None = None) -> dict[str, dict[str, Tensor]]:
    """``{method: {"iad": (B, H, W), "dad": (B, H, W)}}`` from one scoring pass: the head maps under
    each normalisation (``"none"`` needs no ``stats``).  Used by the evaluation, which reports them all."""
    sc = score_patches(model, images, stride=stride)
    pw, nb = _idw_args(model, None, None)
    h, w = images.shape[-2:]
    p = model.preset.patch_size
    out = {}
    for m in methods:
        s_iad, s_dad = normalise_scores(sc["s_iad"], sc["s_dad"], stats, method=m)
        out[m] = {"iad": _maps_from_scores(s_iad, sc["tops"], sc["lefts"], p, h, w, pw, nb),
                  "dad": _maps_from_scores(s_dad, sc["tops"], sc["lefts"], p, h, w, pw, nb)}
    return out


def _idw_args(model: nn.Module, power: float | None, neighbours: int | None) -> tuple[float, int | None]:
    pw = model.preset.idw_power if power is None else power
    nb = model.preset.idw_neighbours if neighbours is None else neighbours
    return float(pw), nb


def _maps_from_scores(scores: Tensor, tops: Tensor, lefts: Tensor, p: int, h: int, w: int, power: float, nb: int | None) -> Tensor:
    cy, cx = patch_centres(tops, lefts, p)
    return idw_interpolate(scores, cy, cx, h, w, power=power, neighbours=nb)


def head_maps(
    model: nn.Module,
    images: Tensor,
    stride: int | None = None,
    power: float | None = None,
    neighbours: int | None = None,
    progress: bool = False,
    normalise: Mapping[str, Any] | None = None,
    batch_size: int = 256,
    method: str = "incremental",
) -> dict[str, Tensor]:
    """Per-pixel maps of each head: ``dict(iad=(B, H, W), dad=(B, H, W))``.

    ``power`` / ``neighbours`` default to ``preset.idw_power`` / ``preset.idw_neighbours``
    (``neighbours=0``: all centres).  Because IDW is linear, ``l * iad + (1 - l) * dad`` equals the map
    of the combined score of Eq. 13 for any lambda_s = l (used by the Table 4 ablation).
    """
    sc = score_patches(model, images, stride=stride, batch_size=batch_size, method=method, progress=progress)
    s_iad, s_dad = normalise_scores(sc["s_iad"], sc["s_dad"], normalise)
    pw, nb = _idw_args(model, power, neighbours)
    h, w = images.shape[-2:]
    p = model.preset.patch_size
    return {
        "iad": _maps_from_scores(s_iad, sc["tops"], sc["lefts"], p, h, w, pw, nb),
        "dad": _maps_from_scores(s_dad, sc["tops"], sc["lefts"], p, h, w, pw, nb),
    }


def anomaly_maps(
    model: nn.Module,
    images: Tensor,
    lambda_s: float | None = None,
    stride: int | None = None,
    power: float | None = None,
    neighbours: int | None = None,
    progress: bool = False,
    normalise: Mapping[str, Any] | None = None,
    batch_size: int = 256,
    method: str = "incremental",
) -> Tensor:
    """Anomaly maps ``(B, H, W)``: Eq. 13 per patch (lambda_s default ``preset.lambda_s``), then IDW."""
    lam = model.preset.lambda_s if lambda_s is None else float(lambda_s)
    sc = score_patches(model, images, stride=stride, batch_size=batch_size, method=method, progress=progress)
    s_iad, s_dad = normalise_scores(sc["s_iad"], sc["s_dad"], normalise)
    pw, nb = _idw_args(model, power, neighbours)
    s = combined_score(s_iad, s_dad, lam)
    return _maps_from_scores(s, sc["tops"], sc["lefts"], model.preset.patch_size, images.shape[2], images.shape[3], pw, nb)


def anomaly_maps_loop(
    model: nn.Module,
    images: Tensor,
    lambda_s: float | None = None,
    stride: int | None = None,
    power: float | None = None,
    neighbours: int | None = None,
    progress: bool = False,
    normalise: Mapping[str, Any] | None = None,
) -> Tensor:
    """The plain reference for :func:`anomaly_maps`: a Python loop over patches (see
    :func:`score_patches_loop`), then the same Eq. 13 and IDW."""
    lam = model.preset.lambda_s if lambda_s is None else float(lambda_s)
    sc = score_patches_loop(model, images, stride=stride, progress=progress)
    s_iad, s_dad = normalise_scores(sc["s_iad"], sc["s_dad"], normalise)
    pw, nb = _idw_args(model, power, neighbours)
    s = combined_score(s_iad, s_dad, lam)
    return _maps_from_scores(s, sc["tops"], sc["lefts"], model.preset.patch_size, images.shape[2], images.shape[3], pw, nb)
