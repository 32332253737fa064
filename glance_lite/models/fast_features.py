"""Fast exact features for the raster scan (Sec. 3.3): Z_l (Eq. 4) and Z_g (Eq. 5-6) of every grid patch.

The plain reference (:func:`glance_lite.score.scoring.anomaly_maps_loop`) runs the Local-Net once per
cropped patch and the Global-Net once per masked image, in a Python loop.  The fast path
(:func:`glance_lite.score.scoring.score_patches`) computes the same numbers with

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
  of :class:`glance_lite.models.partial_conv.PartialConv2d` (masked input, rescaling, bias after rescaling,
  exact 0 where no input is valid) followed by ReLU, and of the mask max-pool; the result equals the
  plain per-copy forward up to float rounding (tested within 1e-5).  The per-copy batched forward
  remains available (:func:`global_features_batched`, ``method="batched"`` of
  :func:`glance_lite.score.scoring.score_patches`).

Defined in :doc:`/notebooks/04_score_maps`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..common.fileio import ScoringError

__all__ = ["local_features_at", "global_features_incremental", "global_features_batched"]


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
    partial-convolution arithmetic follows :class:`glance_lite.models.partial_conv.PartialConv2d` (masked
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
