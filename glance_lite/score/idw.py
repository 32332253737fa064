"""Inverse distance weighted (IDW) interpolation (Sec. 3.3): patch scores at the patch centres -> a map.

The anomaly map of Sec. 3.3 spreads the patch scores (Eq. 11-13, :mod:`glance_lite.score.scoring`), placed at
the patch centres, over the image.  The value at pixel x is ``sum_j w_j s_j / sum_j w_j`` with
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
bound that keeps the result exact); a map is then one gather and one weighted sum.  IDW is linear in
the scores, so any lambda_s-combination (Eq. 13) of two head maps is the map of the combined score
(used by :func:`glance_lite.score.scoring.head_maps`).

Deviation: the paper names IDW but not its power or neighbourhood; power 2 over the 9 nearest
centres (plus ties) is ours.

:class:`ScoringError`, the error of every scoring function, is defined in :mod:`glance_lite.common.fileio`
(so that :mod:`glance_lite.models.fast_features` can raise it too) and re-exported here.

Defined in :doc:`/notebooks/04_score_maps`.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor

from ..common.fileio import ScoringError

__all__ = ["ScoringError", "idw_weights", "idw_interpolate", "clear_idw_cache"]


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
