"""Anomaly localisation (Sec. 3.3): patch scores (Eq. 11-13), the raster scan and IDW score maps.

For every patch ``p`` of a raster grid over a test image (Fig. 2b) we compute

* the local feature ``Z_l = L(p)`` (Local-Net, Eq. 4) and the global feature ``Z_g = G(I, M_0)`` of the
  image with the patch masked out (Global-Net, Eq. 6);
* the inconsistency score ``s_IAD = (1/n) ||Z_l - Z_g||^2`` (Eq. 11, :func:`glance_lite.models.heads.iad_score`);
* the distortion score ``s_DAD`` (Eq. 12, :func:`glance_lite.models.heads.dad_score`);
* their combination ``s = lambda_s s_IAD + (1 - lambda_s) s_DAD`` (Eq. 13, lambda_s = 0.8);

and turn the patch scores, placed at the patch centres, into a per-pixel anomaly map with inverse
distance weighted (IDW) interpolation.

**Raster grid** (:func:`patch_grid`).  Patch top-left corners ``0, s, 2s, ...`` along each axis, with
``H - p`` appended when it is not on the grid, so the last row and column of patches touch the
border and every pixel is covered.  Adjacent patches overlap when the stride ``s < p``.

**IDW and speed** live in their own modules, re-exported here: :mod:`glance_lite.score.idw`
(:func:`idw_interpolate`: the per-pixel map from the patch scores) and :mod:`glance_lite.models.fast_features`
(:func:`local_features_at`, :func:`global_features_incremental`: Z_l and Z_g of every grid patch
without a Python loop, used by :func:`score_patches`; :func:`anomaly_maps_loop` is the plain
per-patch reference).  IDW is linear in the scores, so any lambda_s-combination of the two head maps
(:func:`head_maps`) *is* the map of the combined score -- the lambda_s ablation (Table 4) mixes the
two maps instead of re-scoring.

**Scale and metric.**  ``s_IAD`` is a squared feature distance, ``s_DAD`` a probability in [0, 1];
the paper adds them as they are (Eq. 13), and so do we by default.  Optionally (``normalise=stats``)
each head's scores are standardised with statistics of the patch scores over *training* images
(:func:`fit_score_normaliser`; the normalisations themselves live in :mod:`glance_lite.score.score_norm`),
and the inconsistency can be measured with a metric whitened by the residuals of training patches
(:func:`fit_score_whitener`, :mod:`glance_lite.score.iad_metric`).  Never fit either on test images.

Deviation: the paper does not specify the raster stride, the patch-centre convention, the IDW power
or neighbourhood, nor the score scales.  We place scores at the geometric patch centre
``top + (p - 1) / 2``, use ``preset.score_stride`` (4 for the cpu and paper presets), add the border
row/column of patches, and IDW with power 2 over the 9 nearest centres; the optional per-head
normalisation is ours and reported separately from the plain Eq. 13.  Eq. 12 is read as
``s_DAD = C(Z_l, Z_g)`` (see :mod:`glance_lite.models.heads`).  Maps are computed at the preset's image size.

Defined in :doc:`/notebooks/04_score_maps`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..models.fast_features import _pairs, global_features_batched, global_features_incremental, local_features_at
from ..models.heads import combined_score, dad_score, iad_score
from ..common.devices import module_device
from .iad_metric import IADWhitener, fit_iad_whitener, iad_scores, residual_scores
from .idw import ScoringError, clear_idw_cache, idw_interpolate, idw_weights
from .score_norm import NORMALISATIONS, normalise_scores, normaliser_from_scores
from ..models.local_net import grid_positions
from ..common.presets import CHOICES

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
    "patch_residuals",
    "patch_feature_pairs",
    "fit_score_whitener",
    "fit_whitened_normaliser",
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


def _patch_features(model: nn.Module, images: Tensor, stride: int | None, batch_size: int, method: str,
                    progress: bool) -> tuple[Tensor, Tensor, Iterator[tuple[Tensor, Tensor]]]:
    """``(tops, lefts, features)``: the raster grid, and per image ``(Z_l, Z_g)``, each ``(gh*gw, n)``,
    of every grid patch (no Python loop over patches)."""
    if method not in ("incremental", "batched"):
        raise ScoringError(f"method must be 'incremental' or 'batched', got {method!r}")
    p = model.preset.patch_size
    images = _check_images(images, p)
    tops, lefts = _grid_for(model, images, stride)
    gh, gw = len(tops), len(lefts)
    ty, lx = _pairs(tops, lefts)
    dev = module_device(model)
    glob = global_features_incremental if method == "incremental" else global_features_batched

    def features() -> Iterator[tuple[Tensor, Tensor]]:
        with _inference(model):
            for i in tqdm(range(images.shape[0]), desc="score maps", disable=not progress, leave=False):
                img = images[i : i + 1].to(dev)
                z_l = local_features_at(model.local_net, img, tops, lefts)[0].permute(1, 2, 0).reshape(gh * gw, -1)
                z_g = glob(model.global_net, img, ty, lx, p, batch_size=batch_size)
                yield z_l, z_g

    return tops, lefts, features()


def patch_feature_pairs(model: nn.Module, images: Tensor, stride: int | None = None, batch_size: int = 256,
                        progress: bool = False) -> tuple[Tensor, Tensor, Iterator[tuple[Tensor, Tensor]]]:
    """``(tops, lefts, pairs)``: the raster grid, and per image ``(Z_l, Z_g)``, each ``(gh*gw, n)`` in row-major
    grid order: what Eq. 11 compares, Z_l and the Global-Net's prediction of it from the context
    (incremental Global-Net).  For diagnostics such as :mod:`glance_lite.evaluate.context`."""
    return _patch_features(model, images, stride, batch_size, "incremental", progress)


def score_patches(
    model: nn.Module,
    images: Tensor,
    stride: int | None = None,
    batch_size: int = 256,
    method: str = "incremental",
    progress: bool = False,
    whitener: IADWhitener | None = None,
) -> dict[str, Tensor]:
    """Patch scores of Eq. 11 and 12 on the raster grid, without a Python loop over patches.

    Args:
        model: a :class:`glance_lite.models.model.GlanceModel` (``.preset``, ``.local_net``, ``.global_net``,
            ``.dad``).
        images: ``(B, 3, H, W)`` in [0, 1].
        stride: grid stride (default ``preset.score_stride``).
        batch_size: masked copies per Global-Net batch.
        method: ``"incremental"`` (exact incremental Global-Net, default) or ``"batched"`` (one full
            forward per masked copy, in batches).
        whitener: ``None`` for the paper's Euclidean Eq. 11, or the run's
            :class:`glance_lite.score.iad_metric.IADWhitener` for the whitened inconsistency (ours).

    Returns:
        ``dict(s_iad (B, gh, gw), s_dad (B, gh, gw), tops (gh,), lefts (gw,))`` on the CPU.
    """
    tops, lefts, features = _patch_features(model, images, stride, batch_size, method, progress)
    shape = (len(tops), len(lefts))
    s_iad, s_dad = [], []
    with torch.no_grad():
        for z_l, z_g in features:
            s_iad.append(iad_scores(z_l, z_g, whitener).reshape(shape).cpu())
            s_dad.append(dad_score(model.dad, z_l, z_g).reshape(shape).cpu())
    return {"s_iad": torch.stack(s_iad), "s_dad": torch.stack(s_dad), "tops": tops, "lefts": lefts}


def _residuals_and_dad(model: nn.Module, images: Tensor, stride: int | None, progress: bool,
                       batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """One scoring pass: the residuals ``Z_l - Z_g`` ``(B, gh, gw, n)`` and ``s_DAD`` ``(B, gh, gw)``, on the CPU."""
    tops, lefts, features = _patch_features(model, images, stride, batch_size, "incremental", progress)
    shape = (len(tops), len(lefts))
    res, dad = [], []
    with torch.no_grad():
        for z_l, z_g in features:
            res.append((z_l - z_g).reshape(*shape, -1).float().cpu())
            dad.append(dad_score(model.dad, z_l, z_g).reshape(shape).cpu())
    return torch.stack(res), torch.stack(dad)


def patch_residuals(model: nn.Module, images: Tensor, stride: int | None = None, batch_size: int = 256,
                    progress: bool = False) -> Tensor:
    """The residuals ``Z_l - Z_g`` of every grid patch, ``(B, gh, gw, n)`` on the CPU (what Eq. 11 measures)."""
    tops, lefts, features = _patch_features(model, images, stride, batch_size, "incremental", progress)
    return torch.stack([(z_l - z_g).reshape(len(tops), len(lefts), -1).float().cpu() for z_l, z_g in features])


def fit_score_whitener(model: nn.Module, train_images: Tensor, stride: int | None = None,
                       progress: bool = False) -> IADWhitener:
    """The whitened IAD metric (:mod:`glance_lite.score.iad_metric`) fitted on the residuals of every grid
    patch of these TRAINING images.  Never fit it on test images."""
    r = patch_residuals(model, train_images, stride=stride, progress=progress)
    return fit_iad_whitener(r.reshape(-1, r.shape[-1]))


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
    from ..models.global_net import hole_mask

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


def fit_score_normaliser(
    model: nn.Module,
    train_images: Tensor,
    method: str = "zscore",
    stride: int | None = None,
    max_images: int | None = 16,
    progress: bool = False,
    whitener: IADWhitener | None = None,
) -> dict[str, Any]:
    """Statistics of each head's patch scores over (up to ``max_images``) TRAINING images
    (:func:`glance_lite.score.score_norm.normaliser_from_scores`), plus ``stride`` and ``iad_metric``.

    Good for every method of :func:`normalise_scores`; ``method`` is the default one.  With a
    ``whitener`` the IAD statistics are those of the whitened scores.  Pass the result as
    ``normalise=`` to :func:`head_maps` or :func:`anomaly_maps`.  Never fit it on test images.

    Caveat: the images are those the Global-Net was trained on, so its errors there are, if anything,
    smaller than on new good images; the statistics set the heads' scales and the places where they
    err on every image, not a threshold.
    """
    _check_method(method)
    imgs = train_images if max_images is None else train_images[: int(max_images)]
    sc = score_patches(model, imgs, stride=stride, progress=progress, whitener=whitener)
    return _normaliser(model, sc["s_iad"], sc["s_dad"], method, stride, whitener)


def fit_whitened_normaliser(model: nn.Module, train_images: Tensor, method: str = "zscore",
                            stride: int | None = None, progress: bool = False) -> dict[str, Any]:
    """:func:`fit_score_whitener` and :func:`fit_score_normaliser` with it, from ONE scoring pass over
    these TRAINING images: the statistics, with the whitener under ``"iad_whitener"``."""
    _check_method(method)
    r, s_dad = _residuals_and_dad(model, train_images, stride, progress)
    whitener = fit_iad_whitener(r.reshape(-1, r.shape[-1]))
    out = _normaliser(model, residual_scores(r, whitener), s_dad, method, stride, whitener)
    out["iad_whitener"] = whitener
    return out


def _check_method(method: str) -> None:
    if method not in NORMALISATIONS or method == "none":
        raise ScoringError(f"unknown normalisation method {method!r}; use one of {NORMALISATIONS[1:]}")


def _normaliser(model: nn.Module, s_iad: Tensor, s_dad: Tensor, method: str, stride: int | None,
                whitener: IADWhitener | None) -> dict[str, Any]:
    out = normaliser_from_scores(s_iad, s_dad, method)
    out.update(stride=int(stride or model.preset.score_stride),
               iad_metric="euclidean" if whitener is None else "mahalanobis")
    return out


def normalised_head_maps(model: nn.Module, images: Tensor, stats: Mapping[str, Any] | None,
                         methods: Sequence[str] = CHOICES["score_norm"],
                         stride: int | None = None) -> dict[str, dict[str, Tensor]]:
    """``{method: {"iad": (B, H, W), "dad": (B, H, W)}}`` from one scoring pass: the head maps under
    each normalisation (``"none"`` needs no ``stats``).  Used by the evaluation, which reports them all.

    The IAD metric follows ``stats``: statistics fitted with a whitener (``stats["iad_metric"] ==
    "mahalanobis"``) carry it as ``stats["iad_whitener"]`` (see :func:`glance_lite.evaluate.evaluation.score_stats`)."""
    sc = score_patches(model, images, stride=stride, whitener=_whitener_for(stats, None))
    pw, nb = _idw_args(model, None, None)
    h, w = images.shape[-2:]
    p = model.preset.patch_size
    out = {}
    for m in methods:
        s_iad, s_dad = normalise_scores(sc["s_iad"], sc["s_dad"], stats, method=m)
        out[m] = {"iad": _maps_from_scores(s_iad, sc["tops"], sc["lefts"], p, h, w, pw, nb),
                  "dad": _maps_from_scores(s_dad, sc["tops"], sc["lefts"], p, h, w, pw, nb)}
    return out


def _whitener_for(stats: Mapping[str, Any] | None, whitener: IADWhitener | None) -> IADWhitener | None:
    """The whitener to score with: the one given, else the one the statistics were fitted with.

    Raises :class:`ScoringError` when the statistics were fitted on whitened scores but no whitener
    comes with them, or on Euclidean scores while a whitener is given: the normalised scores would be
    on the wrong scale."""
    fitted = (stats or {}).get("iad_metric", "euclidean")
    w = whitener if whitener is not None else (stats or {}).get("iad_whitener")
    if stats is not None and (fitted == "mahalanobis") != (w is not None):
        raise ScoringError(f"the score statistics were fitted with the {fitted} IAD metric, but "
                           f"{'a whitener' if w is not None else 'no whitener'} was given")
    return w


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
    whitener: IADWhitener | None = None,
) -> dict[str, Tensor]:
    """Per-pixel maps of each head: ``dict(iad=(B, H, W), dad=(B, H, W))``.

    ``power`` / ``neighbours`` default to ``preset.idw_power`` / ``preset.idw_neighbours``
    (``neighbours=0``: all centres).  Because IDW is linear, ``l * iad + (1 - l) * dad`` equals the map
    of the combined score of Eq. 13 for any lambda_s = l (used by the Table 4 ablation).  ``whitener``:
    the whitened IAD metric (:mod:`glance_lite.score.iad_metric`); by default the one ``normalise`` carries,
    else the paper's Euclidean Eq. 11.
    """
    sc = score_patches(model, images, stride=stride, batch_size=batch_size, method=method, progress=progress,
                       whitener=_whitener_for(normalise, whitener))
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
    whitener: IADWhitener | None = None,
) -> Tensor:
    """Anomaly maps ``(B, H, W)``: Eq. 13 per patch (lambda_s default ``preset.lambda_s``), then IDW.
    ``whitener`` as in :func:`head_maps`."""
    lam = model.preset.lambda_s if lambda_s is None else float(lambda_s)
    sc = score_patches(model, images, stride=stride, batch_size=batch_size, method=method, progress=progress,
                       whitener=_whitener_for(normalise, whitener))
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
