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

**IDW** (:func:`idw_interpolate`).  The value at pixel x is ``sum_j w_j s_j / sum_j w_j`` with
``w_j = 1 / d(x, c_j)^power`` over the ``k`` patch centres c_j nearest to x (Shepard, 1968); a pixel
that *is* a centre takes that centre's score.  On a regular grid many pixels are equidistant from
several centres, so every centre tied with the k-th nearest is included too: the map then does not
depend on how ties are broken (a symmetric score pattern gives a symmetric map).  Defaults
(``preset.idw_power = 2``, ``preset.idw_neighbours = 9``): power 2 is Shepard's classic choice (smooth,
and the weights fall off fast enough that a centre dominates its own neighbourhood); 9 neighbours are
the 3 x 3 block of grid centres around a pixel, the centres of the patches that cover it or touch its
grid cell.  A small k keeps the map *local*: with all centres (Shepard's global form) every pixel also
averages in hundreds of far patches, which flattens the contrast of small defects.  The neighbour
indices and weights depend only on the geometry, so they are computed once per (image size, grid,
power, k) and cached (on a grid only the nearby rows and columns of centres are examined, with a
bound that keeps the result exact); a map is then one gather and one weighted sum.  IDW is linear in the scores, so
any lambda_s-combination of the two head maps (:func:`head_maps`) *is* the map of the combined score
-- the lambda_s ablation (Table 4) mixes the two maps instead of re-scoring.

**Speed.**  The plain reference (:func:`anomaly_maps_loop`) runs the Local-Net once per cropped patch
and the Global-Net once per masked image, in a Python loop.  The fast path (:func:`score_patches`)
computes the same numbers with

* the Local-Net (:func:`local_features_at`) slid fully-convolutionally over the image: the ordinary
  network (2x2/2 pools) applied to a crop yields exactly the features of the patches at
  ``crop start + J k`` (J = total pooling stride, 4 for p = 33), so one crop per residue class of the
  grid positions mod J gives every patch -- one pass for a stride that is a multiple of J, plus thin
  strips for the border row/column.  When cropping the patches and running them as one batch costs
  fewer multiply-accumulates (sparse grids), that is done instead;
* an exact incremental Global-Net (:func:`global_features_incremental`): the unmasked image is run
  once, keeping every layer's features.  A hole only changes, at each layer, the outputs whose window
  reaches a changed input, an interval per axis that grows with the receptive field.  For each hole
  only that window is recomputed at each layer, reading its inputs from the cached unmasked maps
  with the previous layer's recomputed window pasted in (one gather per layer; explicit zero padding
  for the partial convolutions, -inf for the max-pool), and the last window is pasted into the
  cached final map before the masked global pool.  The masks, the partial-convolution rescaling
  ``sum(1)/sum(M)`` and the validity ``sum(M) > 0`` depend only on the hole's position, never on the
  image: they are computed once per geometry, in closed form (a rectangular hole stays a rectangle
  at every layer, so ``sum(M)`` is a product of per-axis counts), and cached.  Many holes are
  processed as one batch of equally sized windows, in channels-last layout.  The arithmetic is that
  of :class:`glance_lite.partial_conv.PartialConv2d` (masked input, rescaling, bias after rescaling,
  exact 0 where no input is valid) followed by ReLU, and of the mask max-pool; the result equals the
  plain per-copy forward up to float rounding (tested within 1e-5).  The per-copy batched forward
  remains available (``method="batched"``).

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
import math
from collections import OrderedDict
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .fileio import GlanceError
from .heads import combined_score, dad_score, iad_score
from .local_net import grid_positions

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
]


class ScoringError(GlanceError, ValueError):
    """Bad arguments to a scoring function (grid that does not fit, wrong score shapes, ...)."""


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
# Inverse distance weighting
# ------------------------------------------------------------------------------------------------

_IDW_CACHE: "OrderedDict[tuple, tuple[Tensor | None, Tensor]]" = OrderedDict()
_IDW_CACHE_SIZE = 16
_IDW_DENSE_LIMIT = 1 << 24  # entries of a cached (H*W, K) all-neighbour weight matrix
_IDW_CHUNK = 1 << 22  # distance entries per chunk when building weights


def clear_idw_cache() -> None:
    """Forget every cached IDW geometry."""
    _IDW_CACHE.clear()


def _centre_list(centres_y: Tensor, centres_x: Tensor, grid: bool) -> tuple[Tensor, Tensor]:
    cy = torch.as_tensor(centres_y, dtype=torch.float64).reshape(-1).cpu()
    cx = torch.as_tensor(centres_x, dtype=torch.float64).reshape(-1).cpu()
    if grid:
        return cy.repeat_interleave(len(cx)), cx.repeat(len(cy))
    if len(cy) != len(cx):
        raise ScoringError(f"idw: {len(cy)} centre rows but {len(cx)} centre columns")
    return cy, cx


def _check_idw_args(power: float, neighbours: int | None) -> None:
    if not (isinstance(power, (int, float)) and math.isfinite(power) and power >= 0):
        raise ScoringError(f"idw: power must be a finite number >= 0, got {power!r}")
    if neighbours is not None and int(neighbours) < 0:
        raise ScoringError(f"idw: neighbours must be >= 0 (0 or None = all), got {neighbours!r}")


_TIE_SLACK = 8
"""Extra candidates kept beyond the k nearest so that centres tied with the k-th are included."""


def _weights_from_d2(d2: Tensor, cand: Tensor | None, power: float, k: int) -> tuple[Tensor | None, Tensor]:
    """IDW (index, weight) from squared distances ``d2`` (n, M) to M candidate centres.

    ``cand`` (n, M) holds the candidates' centre indices, or is None when the candidates are all the
    centres in order.  The neighbourhood is the k nearest candidates plus every candidate at the same
    distance as the k-th (up to ``_TIE_SLACK`` more), so that the map does not depend on how ties
    are broken: on a regular grid many pixels are equidistant from several centres.  Returns index
    None when every candidate is kept and ``cand`` is None.
    """
    m = d2.shape[1]
    idx = cand
    keep = None
    if k < m:
        d2, sel = torch.topk(d2, min(m, k + _TIE_SLACK), dim=1, largest=False, sorted=True)
        idx = sel if cand is None else cand.gather(1, sel)
        keep = d2 <= d2[:, k - 1 : k]
    zero = d2 == 0
    w = d2.clamp_min(1e-300).pow(-power / 2.0)
    if keep is not None:
        w = torch.where(keep, w, torch.zeros((), dtype=w.dtype))
    hit = zero.any(dim=1)
    if bool(hit.any()):
        # a pixel on a centre takes exactly that centre's score (the first one if centres repeat)
        first = torch.zeros_like(zero)
        first[torch.arange(len(zero)), zero.to(torch.uint8).argmax(dim=1)] = True
        w = torch.where(hit[:, None], first.double(), w)
    w = w / w.sum(dim=1, keepdim=True)
    return idx, w.float()


def _weights_chunk(py: Tensor, px: Tensor, cy: Tensor, cx: Tensor, power: float, k: int) -> tuple[Tensor | None, Tensor]:
    """IDW (index, weight) for a chunk of pixels against all K centres (brute force)."""
    d2 = (py[:, None] - cy[None, :]).pow(2) + (px[:, None] - cx[None, :]).pow(2)  # (n, K) float64
    return _weights_from_d2(d2, None, power, k)


def _axis_candidates(n: int, c: Tensor, r: int) -> tuple[Tensor, Tensor, float]:
    """For a sorted axis of centres ``c``: per pixel coordinate the distances (n, len(c)) and the
    r-th smallest distance's maximum over the axis (a bound used to prune candidates)."""
    d = (torch.arange(n, dtype=torch.float64)[:, None] - c[None, :]).abs()
    return d, d.kthvalue(r, dim=1).values, float(d.kthvalue(r, dim=1).values.max())


def _grid_weights(cy: Tensor, cx: Tensor, h: int, w: int, power: float, k: int) -> tuple[Tensor, Tensor]:
    """IDW (index, weight) on a grid of centres ``cy x cx`` (sorted), looking only at nearby centres.

    With r = ceil(sqrt(k)), the r x r block of the nearest centre rows and columns holds k centres
    within ``D = sqrt(A^2 + B^2)`` of the pixel (A, B: the largest r-th nearest row / column
    distance over the image), so the k nearest (and their ties) lie within D, hence in the rows and
    columns closer than D: a fixed-size block of candidates per pixel.  Exact, like brute force.
    """
    gh, gw = len(cy), len(cx)
    r = min(gh, max(1, math.isqrt(k - 1) + 1))
    c = min(gw, max(1, math.isqrt(k - 1) + 1))
    dy, _, a = _axis_candidates(h, cy, r)
    dx, _, b = _axis_candidates(w, cx, c)
    dmax = math.sqrt(a * a + b * b) * (1 + 1e-12)

    def window(d: Tensor, g: int) -> tuple[Tensor, int]:
        inside = d <= dmax  # contiguous run of centres per pixel coordinate (centres are sorted)
        length = int(inside.sum(1).max())
        start = inside.to(torch.uint8).argmax(dim=1).clamp_max(g - length)
        return start, length

    y0, ly = window(dy, gh)
    x0, lx = window(dx, gw)
    rows = y0[:, None] + torch.arange(ly)  # (H, ly) centre rows per pixel row
    cols = x0[:, None] + torch.arange(lx)  # (W, lx)
    d2y = dy.gather(1, rows).pow(2)  # (H, ly)
    d2x = dx.gather(1, cols).pow(2)  # (W, lx)
    idx_parts, w_parts = [], []
    step = max(1, _IDW_CHUNK // max(1, w * ly * lx))
    for a0 in range(0, h, step):
        sl = slice(a0, a0 + step)
        nrow = d2y[sl].shape[0]
        d2 = (d2y[sl][:, None, :, None] + d2x[None, :, None, :]).reshape(nrow * w, ly * lx)
        cand = (rows[sl][:, None, :, None] * gw + cols[None, :, None, :]).reshape(nrow * w, ly * lx)
        i, wt = _weights_from_d2(d2, cand, power, k)
        assert i is not None
        idx_parts.append(i)
        w_parts.append(wt)
    return torch.cat(idx_parts), torch.cat(w_parts)


def idw_weights(
    centres_y: Tensor,
    centres_x: Tensor,
    height: int,
    width: int,
    power: float = 2.0,
    neighbours: int | None = 9,
    grid: bool = True,
    device: torch.device | str | None = None,
) -> tuple[Tensor | None, Tensor]:
    """Neighbour indices ``(H*W, k')`` (None when all K centres are used) and weights ``(H*W, k')``.

    ``k' = min(K, k + 8)``: the k nearest centres and any tied with the k-th get a weight, the other
    candidates weight 0.

    With ``grid=True`` the centres are the outer product of ``centres_y`` (gh,) and ``centres_x``
    (gw,), numbered row-major (``i * gw + j``); otherwise they are K scattered points.  Weights are
    float32, non-negative and sum to 1 per pixel.  The result is cached per geometry.  Raises
    :class:`ScoringError` when an all-neighbour weight matrix would be too large to cache (use
    :func:`idw_interpolate`, which then works in chunks).
    """
    _check_idw_args(power, neighbours)
    cy, cx = _centre_list(centres_y, centres_x, grid)
    K = len(cy)
    if K == 0:
        raise ScoringError("idw: no centres")
    k = K if not neighbours else min(int(neighbours), K)
    key = (tuple(cy.tolist()), tuple(cx.tolist()), int(height), int(width), float(power), k)
    if device is not None and torch.device(device).type != "cpu":
        dkey = key + (str(torch.device(device)),)
        if dkey not in _IDW_CACHE:
            idx_c, w_c = idw_weights(centres_y, centres_x, height, width, power, neighbours, grid)
            _IDW_CACHE[dkey] = (None if idx_c is None else idx_c.to(device), w_c.to(device))
        _IDW_CACHE.move_to_end(dkey)
        return _IDW_CACHE[dkey]
    if key in _IDW_CACHE:
        _IDW_CACHE.move_to_end(key)
        return _IDW_CACHE[key]
    n = int(height) * int(width)
    if k == K and n * K > _IDW_DENSE_LIMIT:
        raise ScoringError(f"idw: all-neighbour weights of {n} pixels x {K} centres are too large to cache")
    gy = torch.as_tensor(centres_y, dtype=torch.float64).reshape(-1).cpu()
    gx = torch.as_tensor(centres_x, dtype=torch.float64).reshape(-1).cpu()
    if grid and k < K and bool(torch.all(gy.diff() > 0)) and bool(torch.all(gx.diff() > 0)):
        idx, w = _grid_weights(gy, gx, int(height), int(width), power, k)
    else:
        ys = torch.arange(int(height), dtype=torch.float64).repeat_interleave(int(width))
        xs = torch.arange(int(width), dtype=torch.float64).repeat(int(height))
        step = max(1, _IDW_CHUNK // K)
        parts = [_weights_chunk(ys[a : a + step], xs[a : a + step], cy, cx, power, k) for a in range(0, n, step)]
        idx = None if parts[0][0] is None else torch.cat([p[0] for p in parts])  # type: ignore[misc]
        w = torch.cat([p[1] for p in parts])
    _IDW_CACHE[key] = (idx, w)
    while len(_IDW_CACHE) > _IDW_CACHE_SIZE:
        _IDW_CACHE.popitem(last=False)
    return idx, w


def idw_interpolate(
    scores: Tensor,
    centres_y: Tensor,
    centres_x: Tensor,
    height: int,
    width: int,
    power: float = 2.0,
    neighbours: int | None = 9,
) -> Tensor:
    """Inverse-distance-weighted map ``(B, H, W)`` from scores at patch centres.

    Args:
        scores: ``(B, gh, gw)`` on the grid ``centres_y (gh,) x centres_x (gw,)``, or ``(B, K)`` at
            K scattered points ``(centres_y[k], centres_x[k])``.
        centres_y, centres_x: centre coordinates in pixels (row, column; pixel (0, 0) is at 0, 0).
        height, width: size of the map.
        power: ``w = 1 / d^power`` (0: plain average of the neighbours).
        neighbours: use the k nearest centres per pixel (and any centre tied with the k-th, so
            that the result does not depend on tie-breaking); None or 0 = all centres.

    A pixel exactly at a centre takes that centre's score; every value is a convex combination of
    the scores.  Linear in ``scores``.
    """
    if scores.dim() == 3:
        grid = True
        if scores.shape[1] != len(torch.as_tensor(centres_y).reshape(-1)) or scores.shape[2] != len(
            torch.as_tensor(centres_x).reshape(-1)
        ):
            raise ScoringError(
                f"idw: scores {tuple(scores.shape)} do not match a grid of "
                f"{len(centres_y)} x {len(centres_x)} centres"
            )
    elif scores.dim() == 2:
        grid = False
        if scores.shape[1] != len(torch.as_tensor(centres_y).reshape(-1)):
            raise ScoringError(f"idw: scores {tuple(scores.shape)} do not match {len(centres_y)} centres")
    else:
        raise ScoringError(f"idw: scores must be (B, gh, gw) or (B, K), got {tuple(scores.shape)}")
    _check_idw_args(power, neighbours)
    b = scores.shape[0]
    flat = scores.reshape(b, -1)
    K = flat.shape[1]
    h, w = int(height), int(width)
    if h < 1 or w < 1:
        raise ScoringError(f"idw: map size must be positive, got {h}x{w}")
    all_k = not neighbours or int(neighbours) >= K
    if all_k and h * w * K > _IDW_DENSE_LIMIT:
        # too large to cache: build the dense weights chunk by chunk and apply them at once
        cy, cx = _centre_list(centres_y, centres_x, grid)
        ys = torch.arange(h, dtype=torch.float64).repeat_interleave(w)
        xs = torch.arange(w, dtype=torch.float64).repeat(h)
        step = max(1, _IDW_CHUNK // K)
        out = []
        for a in range(0, h * w, step):
            _, wc = _weights_chunk(ys[a : a + step], xs[a : a + step], cy, cx, power, K)
            out.append(flat @ wc.to(flat.device, flat.dtype).T)
        return torch.cat(out, dim=1).reshape(b, h, w)
    idx, wt = idw_weights(centres_y, centres_x, h, w, power, neighbours, grid, device=flat.device)
    wt = wt.to(flat.dtype)
    if idx is None:
        return (flat @ wt.T).reshape(b, h, w)
    return (flat[:, idx] * wt).sum(dim=2).reshape(b, h, w)


# ------------------------------------------------------------------------------------------------
# Local-Net features at grid positions
# ------------------------------------------------------------------------------------------------


def _local_stride(local_net: nn.Module) -> int | None:
    """Total pooling stride J of a Uninformed-Students Local-Net (product of its pool sizes)."""
    layers = getattr(local_net, "layers", None)
    if layers is None or not hasattr(local_net, "_run"):
        return None
    j = 1
    for kind, k, _ in layers:
        if kind == "pool":
            j *= int(k)
    return j


def _residue_groups(pos: Tensor, j: int) -> list[tuple[int, int, Tensor]]:
    """Split positions by their residue mod j: ``[(first, last, index tensor), ...]``."""
    groups = []
    for r in sorted(set((pos % j).tolist())):
        ix = torch.nonzero(pos % j == r).reshape(-1)
        groups.append((int(pos[ix].min()), int(pos[ix].max()), ix))
    return groups


def _local_macs(local_net: nn.Module, h: int, w: int) -> int:
    """Multiply-accumulates of the (non-dense) Local-Net slid over an h x w input."""
    macs, i = 0, 0
    for kind, k, _ in local_net.layers:
        if kind == "conv":
            conv = local_net.convs[i]
            h, w = h - k + 1, w - k + 1
            macs += max(h, 0) * max(w, 0) * conv.weight[0].numel() * conv.weight.shape[0]
            i += 1
        else:
            h, w = h // k, w // k
    return macs


def local_features_at(local_net: nn.Module, images: Tensor, tops: Tensor, lefts: Tensor, batch_size: int = 256) -> Tensor:
    """Z_l of the patches with top-left corners ``tops x lefts``: ``(B, dim, len(tops), len(lefts))``.

    Exactly (up to float rounding) ``local_net(images[..., t:t+p, l:l+p])`` for every pair, computed
    the cheaper of two ways (counted in multiply-accumulates):

    * the ordinary network slid over crops of the image, one crop per residue class of the
      positions modulo the network's total pooling stride J (its outputs are the patches at
      ``crop start + J k``; cheap when the grid stride is a multiple of J);
    * the patches cropped and run as one batch (cheap for sparse grids).

    Falls back to :meth:`LocalNet.dense` for a network without a layer table.
    """
    p = int(local_net.patch_size)
    tops = torch.as_tensor(tops, dtype=torch.long).cpu()
    lefts = torch.as_tensor(lefts, dtype=torch.long).cpu()
    nb, _, h, w = images.shape
    j = _local_stride(local_net)
    if j is None:
        z = local_net.dense(images)
        return z[:, :, tops.to(z.device)][:, :, :, lefts.to(z.device)]
    rg, cg = _residue_groups(tops, j), _residue_groups(lefts, j)
    slide = sum(_local_macs(local_net, r1 - r0 + p, c1 - c0 + p) for r0, r1, _ in rg for c0, c1, _ in cg)
    crops = len(tops) * len(lefts) * _local_macs(local_net, p, p)
    if crops <= slide:
        ty, lx = _pairs(tops, lefts)
        ar = torch.arange(p)
        rows = (ty[:, None] + ar)[:, :, None].to(images.device)
        cols = (lx[:, None] + ar)[:, None, :].to(images.device)
        out = []
        for a in range(0, len(ty), batch_size):
            pt = images[:, :, rows[a : a + batch_size], cols[a : a + batch_size]]  # (B, 3, n, p, p)
            pt = pt.permute(0, 2, 1, 3, 4).reshape(-1, 3, p, p)
            out.append(local_net(pt).reshape(nb, -1, local_net.dim))
        return torch.cat(out, dim=1).reshape(nb, len(tops), len(lefts), -1).permute(0, 3, 1, 2)
    out = None
    for r0, r1, ri in rg:
        for c0, c1, ci in cg:
            y = local_net._run(images[:, :, r0 : r1 + p, c0 : c1 + p], dense=False)
            yi = (tops[ri] - r0) // j
            xi = (lefts[ci] - c0) // j
            if out is None:
                out = y.new_empty(nb, y.shape[1], len(tops), len(lefts))
            out[:, :, ri[:, None], ci[None, :]] = y[:, :, yi[:, None], xi[None, :]]
    assert out is not None
    return out


# ------------------------------------------------------------------------------------------------
# Global-Net: batched masked copies and the exact incremental evaluation
# ------------------------------------------------------------------------------------------------


def _pairs(tops: Tensor, lefts: Tensor) -> tuple[Tensor, Tensor]:
    """Row-major (top, left) pairs of a grid."""
    return tops.repeat_interleave(len(lefts)), lefts.repeat(len(tops))


def global_features_batched(
    global_net: nn.Module, image: Tensor, tops: Tensor, lefts: Tensor, patch_size: int, batch_size: int = 64
) -> Tensor:
    """Z_g ``(N, dim)`` of one image ``(1, 3, H, W)`` with each hole ``(tops[k], lefts[k])`` masked.

    One Global-Net forward per batch of masked copies (the image is broadcast against the masks).
    """
    from .global_net import hole_mask

    image = image if image.dim() == 4 else image[None]
    h, w = image.shape[-2:]
    out = []
    for a in range(0, len(tops), batch_size):
        m = hole_mask((h, w), tops[a : a + batch_size], lefts[a : a + batch_size], patch_size, device=image.device)
        out.append(global_net(image, m))
    return torch.cat(out)


class _Axis:
    """One axis of the incremental plan at one level, for every hole (N of them).

    ``n``: length of the level; ``A``: window length; ``win`` (N,): window starts; ``h0``, ``h1`` (N,):
    the hole's invalid interval at this level (empty when ``h0 > h1``); and, for the step producing
    this level, ``rm`` / ``rh`` (N, A): how many inputs of each window position's kernel lie inside
    the map / inside the hole (so that ``sum(M) = rm_r rm_c - rh_r rh_c``, exactly).
    """

    __slots__ = ("n", "A", "win", "h0", "h1", "rm", "rh")

    def __init__(self, **kw: Any) -> None:
        for k in self.__slots__:
            setattr(self, k, kw.get(k))


def _overlap(a0: Tensor, a1: Tensor, b0: Tensor, b1: Tensor) -> Tensor:
    """Length of the intersection of the integer intervals [a0, a1] and [b0, b1] (0 if disjoint)."""
    return (torch.minimum(a1, b1) - torch.maximum(a0, b0) + 1).clamp_min(0)


def _axis_plan(n: int, p: int, starts: Tensor, steps: Sequence[Any]) -> list[_Axis]:
    """The per-level geometry of one axis (see :class:`_Axis`), level 0 being the input.

    Changed region: output i of a step (kernel k, stride s, padding q) reads inputs
    ``[i s - q, i s - q + k - 1]`` and so can change iff that range meets the changed inputs
    ``[a0, a1]``.  All holes share one window length (the largest) and a window is shifted inwards
    at the borders.  Invalid (hole) region: an output is invalid iff every input of its window that
    lies inside the map lies inside the hole (zero padding counts as a hole, as in Eq. 5); for a
    rectangular hole this is again a rectangle, the product of one interval per axis.
    """
    a0, a1 = starts.clone(), starts + p - 1
    plan = [_Axis(n=n, A=p, win=starts.clone(), h0=a0.clone(), h1=a1.clone())]
    h0, h1 = a0.clone(), a1.clone()
    for st in steps:
        k, s, q = st.kernel, st.stride, st.padding
        n_out = st.out_size(n)
        lo = torch.div(a0 + q - k + s, s, rounding_mode="floor").clamp_min(0)  # ceil((a0+q-k+1)/s)
        hi = torch.div(a1 + q, s, rounding_mode="floor").clamp_max(n_out - 1)
        empty = lo > hi  # nothing changes along this axis: keep a 1-long window (harmless)
        lo = torch.where(empty, lo.clamp_max(n_out - 1), lo)
        hi = torch.where(empty, lo, hi)
        length = min(n_out, int((hi - lo + 1).max()))
        win = lo.clamp_max(n_out - length)
        i = win[:, None] + torch.arange(length)  # (N, A) output positions of the window
        w0, w1 = i * s - q, i * s - q + k - 1
        rm = _overlap(w0, w1, torch.zeros_like(w0), torch.full_like(w0, n - 1))
        rh = _overlap(w0, w1, h0[:, None], h1[:, None])
        bad = rm == rh  # every in-map input of the window is in the hole
        any_bad = bad.any(dim=1)
        first = torch.where(any_bad, win + bad.float().argmax(dim=1), torch.full_like(win, n_out))
        last = torch.where(any_bad, win + length - 1 - bad.flip(1).float().argmax(dim=1), torch.full_like(win, -1))
        plan.append(_Axis(n=n_out, A=length, win=win, h0=first, h1=last, rm=rm, rh=rh))
        a0, a1, n, h0, h1 = lo, hi, n_out, first, last
    return plan


class _Level:
    """Geometry of one step for one batch of holes (independent of the image)."""

    __slots__ = ("kind", "index", "kernel", "stride", "idx", "shape", "out_hw", "ratio", "valid")

    def __init__(self, **kw: Any) -> None:
        for k in self.__slots__:
            setattr(self, k, kw.get(k))


def _region_index(
    r0: Tensor, c0: Tensor, lr: int, lc: int, wp: int, n_cache: int,
    pr: Tensor | None, pc: Tensor | None, ar: int, ac: int,
) -> Tensor:
    """Flat row indices into ``cat([cache (Hp*Wp, C), prev crops (B*ar*ac, C)])`` of every region
    element ``(b, i, j)`` at padded position ``(r0[b] + i, c0[b] + j)``; positions inside the previous
    window ``[pr[b], pr[b] + ar) x [pc[b], pc[b] + ac)`` (padded coordinates) read the crop."""
    b = len(r0)
    ii = r0[:, None] + torch.arange(lr)  # (B, lr) padded rows
    jj = c0[:, None] + torch.arange(lc)
    idx = (ii * wp)[:, :, None] + jj[:, None, :]
    if pr is not None and pc is not None:
        di, dj = ii - pr[:, None], jj - pc[:, None]
        in_r = ((di >= 0) & (di < ar))[:, :, None]
        in_c = ((dj >= 0) & (dj < ac))[:, None, :]
        crop = (n_cache + torch.arange(b)[:, None] * (ar * ac) + di * ac)[:, :, None] + dj[:, None, :]
        idx = torch.where(in_r & in_c, crop, idx)
    return idx.reshape(-1)


def _gather_cl(src: Tensor, idx: Tensor, b: int, lr: int, lc: int) -> Tensor:
    """Rows ``src[idx]`` of a channels-last flat source as a ``(B, C, lr, lc)`` channels-last tensor."""
    return src.index_select(0, idx).view(b, lr, lc, src.shape[1]).permute(0, 3, 1, 2)


def _flat_cl(x: Tensor) -> Tensor:
    """``(1 or B, C, H, W)`` -> ``(N*H*W, C)`` (a view when already channels-last)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


_PLAN_CACHE: "OrderedDict[tuple, list[tuple[list[_Level], Tensor, Tensor]]]" = OrderedDict()


def _incremental_plan(global_net: nn.Module, h: int, w: int, p: int, tops: Tensor, lefts: Tensor, batch_size: int,
                      device: torch.device | None = None):
    """Per batch of holes: the per-step gather indices and partial-conv rescaling, and the final
    gather index and mask.  Masks depend on the hole only, never on the image, so they are computed
    here once per geometry (in closed form, see :func:`_axis_plan`) and cached (per device)."""
    steps = global_net.steps()
    wsize = tuple(int(c.window_size) for c in global_net.convs)
    key = (tuple(steps), wsize, h, w, p, tuple(tops.tolist()), tuple(lefts.tolist()), batch_size)
    if device is not None and torch.device(device).type != "cpu":
        dkey = key + (str(torch.device(device)),)
        if dkey not in _PLAN_CACHE:
            mv = lambda t: None if t is None else t.to(device)  # noqa: E731
            cpu_plan = _incremental_plan(global_net, h, w, p, tops, lefts, batch_size)
            _PLAN_CACHE[dkey] = [
                ([_Level(kind=lv.kind, index=lv.index, kernel=lv.kernel, stride=lv.stride, idx=mv(lv.idx),
                         shape=lv.shape, out_hw=lv.out_hw, ratio=mv(lv.ratio), valid=mv(lv.valid)) for lv in levels],
                 mv(fi), mv(fm))
                for levels, fi, fm in cpu_plan
            ]
        _PLAN_CACHE.move_to_end(dkey)
        return _PLAN_CACHE[dkey]
    if key in _PLAN_CACHE:
        _PLAN_CACHE.move_to_end(key)
        return _PLAN_CACHE[key]
    rp, cp = _axis_plan(h, p, tops, steps), _axis_plan(w, p, lefts, steps)
    batches = []
    for a in range(0, len(tops), batch_size):
        sl = slice(a, a + batch_size)
        b = len(tops[sl])
        levels: list[_Level] = []
        for li, st in enumerate(steps):
            q, s, k = st.padding, st.stride, st.kernel
            pr, pc, nr, nc = rp[li], cp[li], rp[li + 1], cp[li + 1]
            lr, lc = (nr.A - 1) * s + k, (nc.A - 1) * s + k
            wp = pc.n + 2 * q
            n_cache = (pr.n + 2 * q) * wp
            idx = _region_index(nr.win[sl] * s, nc.win[sl] * s, lr, lc, wp, n_cache,
                                pr.win[sl] + q, pc.win[sl] + q, pr.A, pc.A)
            ratio = valid = None
            if st.kind == "pconv":
                msum = (nr.rm[sl, :, None] * nc.rm[sl, None, :] - nr.rh[sl, :, None] * nc.rh[sl, None, :])
                msum = msum.to(torch.float32).unsqueeze(1)  # (B, 1, A_r, A_c), exact integers
                ok = msum > 0
                ratio = torch.where(ok, global_net.convs[st.index].window_size / msum.clamp_min(1e-8), 0.0)
                valid = None if bool(ok.all()) else ok.float()
            if li == 0:
                idx = idx.clamp_max(n_cache)  # hole pixels read an all-zero row: the masked input X*M
            levels.append(_Level(kind=st.kind, index=st.index, kernel=k, stride=s, idx=idx, shape=(b, lr, lc),
                                 out_hw=(nr.A, nc.A), ratio=ratio, valid=valid))
        fr, fc = rp[-1], cp[-1]
        zero = torch.zeros(b, dtype=torch.long)
        fin_idx = _region_index(zero, zero, fr.n, fc.n, fc.n, fr.n * fc.n, fr.win[sl], fc.win[sl], fr.A, fc.A)
        rows, cols = torch.arange(fr.n), torch.arange(fc.n)
        in_r = (rows >= fr.h0[sl, None]) & (rows <= fr.h1[sl, None])
        in_c = (cols >= fc.h0[sl, None]) & (cols <= fc.h1[sl, None])
        fin_mask = (~(in_r[:, :, None] & in_c[:, None, :])).float().unsqueeze(1)
        batches.append((levels, fin_idx, fin_mask))
    _PLAN_CACHE[key] = batches
    while len(_PLAN_CACHE) > 3:
        _PLAN_CACHE.popitem(last=False)
    return batches


def global_features_incremental(
    global_net: nn.Module,
    image: Tensor,
    tops: Tensor,
    lefts: Tensor,
    patch_size: int,
    batch_size: int = 256,
) -> Tensor:
    """Exact Z_g ``(N, dim)`` of one image with each hole ``(tops[k], lefts[k])`` masked out.

    Equal (up to float rounding) to ``global_net(image, hole_mask(...))`` per hole, but only the
    part of each layer that the hole can change is recomputed (see the module docstring).  The
    partial-convolution arithmetic follows :class:`glance_lite.partial_conv.PartialConv2d` (masked
    input, ``sum(1)/sum(M)`` rescaling, bias after rescaling, exact 0 where no input is valid) and
    the network's step order (:meth:`GlobalNet.steps`: partial conv + ReLU, mask max-pool); the
    masks are image-independent and precomputed per geometry.
    """
    image = image if image.dim() == 4 else image[None]
    if image.shape[0] != 1:
        raise ScoringError(f"global_features_incremental takes one image, got a batch of {image.shape[0]}")
    dev, dt = image.device, image.dtype
    h, w = image.shape[-2:]
    p = int(patch_size)
    tops = torch.as_tensor(tops, dtype=torch.long).reshape(-1).cpu()
    lefts = torch.as_tensor(lefts, dtype=torch.long).reshape(-1).cpu()
    if len(tops) != len(lefts):
        raise ScoringError(f"{len(tops)} tops but {len(lefts)} lefts")
    if len(tops) == 0:
        return image.new_zeros(0, global_net.dim)
    if int(tops.min()) < 0 or int(tops.max()) > h - p or int(lefts.min()) < 0 or int(lefts.max()) > w - p:
        raise ScoringError(f"a {p}x{p} hole must lie inside the {h}x{w} image")
    steps = global_net.steps()
    ones = torch.ones(1, 1, h, w, dtype=dt, device=dev)
    trace = global_net.trace(image, ones)
    if not all(bool(t[2].all()) for t in trace[1:]):
        # the closed-form masks assume that without a hole every position is valid (true whenever
        # no window lies entirely in the padding); otherwise use the plain batched forward
        return global_features_batched(global_net, image, tops, lefts, p, batch_size)
    plan = _incremental_plan(global_net, int(h), int(w), p, tops, lefts, int(batch_size), dev)
    feats = [global_net.normalize(image)] + [t[1] for t in trace[1:]]
    bmax = max(levels[0].shape[0] for levels, _, _ in plan)
    bufs = []  # per step: the padded unmasked input (channels-last rows), then room for a batch of crops
    for li, (st, f) in enumerate(zip(steps, feats)):
        q = st.padding
        fill = float("-inf") if st.kind == "pool" else 0.0
        cache = _flat_cl(torch.nn.functional.pad(f, (q, q, q, q), value=fill))
        prev = 1 if li == 0 else bmax * math.prod(plan[0][0][li - 1].out_hw)
        buf = torch.zeros(cache.shape[0] + prev, cache.shape[1], dtype=dt, device=dev)
        buf[: cache.shape[0]] = cache
        bufs.append((buf, cache.shape[0]))
    fh, fw = feats[-1].shape[-2:]
    fcache = _flat_cl(feats[-1])
    fbuf = torch.empty(fcache.shape[0] + bmax * math.prod(plan[0][0][-1].out_hw), fcache.shape[1], dtype=dt, device=dev)
    fbuf[: fcache.shape[0]] = fcache
    out = []
    for levels, fin_idx, fin_mask in plan:
        crop = None
        for li, lv in enumerate(levels):
            buf, n_cache = bufs[li]
            if crop is not None:
                buf[n_cache : n_cache + crop.shape[0]] = crop
            b, lr, lc = lv.shape
            reg = _gather_cl(buf, lv.idx, b, lr, lc)
            if lv.kind == "pconv":
                conv = global_net.convs[lv.index]
                y = torch.nn.functional.conv2d(reg, conv.weight, None, lv.stride, 0)
                if conv.bias is not None:  # Eq. 5: W^T(X*M) * sum(1)/sum(M) + b, in one pass
                    torch.addcmul(conv.bias.view(1, -1, 1, 1), y, lv.ratio.to(dt), out=y)
                else:
                    y.mul_(lv.ratio.to(dt))
                y.clamp_min_(0)  # ReLU
                if lv.valid is not None:
                    y.mul_(lv.valid.to(dt))
            else:
                y = torch.nn.functional.max_pool2d(reg, lv.kernel, lv.stride)
            crop = _flat_cl(y)
        b = fin_mask.shape[0]
        fbuf[fcache.shape[0] : fcache.shape[0] + crop.shape[0]] = crop
        full = _gather_cl(fbuf, fin_idx, b, fh, fw)
        out.append(global_net.pool_head(full, fin_mask.to(dt)))
    return torch.cat(out)


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


def _device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


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
    dev = _device(model)
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
    dev = _device(model)
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


def normalise_scores(s_iad: Tensor, s_dad: Tensor, stats: Mapping[str, Any] | None) -> tuple[Tensor, Tensor]:
    """Apply a normaliser from :func:`fit_score_normaliser` to each head's scores (or maps).

    ``method == "zscore"``: ``(s - mean) / std`` per head; ``"p99"``: ``s / p99``.  ``None`` returns
    the scores unchanged (the paper's plain Eq. 13).  Affine per head, so it commutes with IDW.
    """
    if stats is None:
        return s_iad, s_dad
    try:
        method = stats["method"]
        ia, da = stats["iad"], stats["dad"]
        if method == "zscore":
            return (s_iad - ia["mean"]) / ia["std"], (s_dad - da["mean"]) / da["std"]
        if method == "p99":
            return s_iad / ia["p99"], s_dad / da["p99"]
    except (KeyError, TypeError) as e:
        raise ScoringError(f"not a score normaliser (from fit_score_normaliser): missing {e}") from e
    raise ScoringError(f"unknown normalisation method {method!r}; use 'zscore' or 'p99'")


def fit_score_normaliser(
    model: nn.Module,
    train_images: Tensor,
    method: str = "zscore",
    stride: int | None = None,
    max_images: int | None = 16,
    progress: bool = False,
) -> dict[str, Any]:
    """Statistics of each head's patch scores over (up to ``max_images``) TRAINING images.

    Returns ``{"method", "iad": {"mean", "std", "p99"}, "dad": {...}, "n_images", "n_patches",
    "stride"}`` (plain floats, JSON-friendly).  Pass it as ``normalise=`` to :func:`head_maps` or
    :func:`anomaly_maps`.  Never fit it on test images.
    """
    if method not in ("zscore", "p99"):
        raise ScoringError(f"unknown normalisation method {method!r}; use 'zscore' or 'p99'")
    imgs = train_images if max_images is None else train_images[: int(max_images)]
    sc = score_patches(model, imgs, stride=stride, progress=progress)
    out: dict[str, Any] = {"method": method}
    for head in ("iad", "dad"):
        v = sc[f"s_{head}"].reshape(-1).double()
        out[head] = {
            "mean": float(v.mean()),
            "std": float(v.std().clamp_min(1e-12)) if len(v) > 1 else 1.0,
            "p99": float(torch.quantile(v, 0.99).clamp_min(1e-12)),
        }
    out.update(n_images=int(imgs.shape[0]), n_patches=int(sc["s_iad"].numel()),
               stride=int(stride or model.preset.score_stride))
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
