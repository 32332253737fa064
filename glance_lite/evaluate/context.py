"""How much of a patch its context predicts: the R² of Z_g for Z_l on normal patches (ours; chapter 08).

The joint stage (Eq. 10) trains the Global-Net to predict, from the image around a hole, the Local-Net's
descriptor ``Z_l`` of the patch in the hole.  How well it does that on *normal* patches bounds what the
inconsistency of Eq. 11 can add to a local-only score.  Where ``Z_g`` predicts ``Z_l`` no better than
the category's average patch does, the inconsistency reduces to "how far is this patch from the usual
patch", which a local model such as TS measures as well.  Where the context pins the patch down, a
patch that is normal in itself but wrong for its place stands out to the IAD head alone.

Over every raster-grid patch ``(i, p)`` (image ``i``, grid position ``p``) of a set of images, with
``T = Z_l`` the IAD target:

    R²_context  = 1 - Σ ||r_ip - r̄||² / Σ ||T_ip - T̄||²,      r_ip = T_ip - Z_g,ip
    R²_position = 1 - Σ ||T_ip - T̄_p^(-i)||² / Σ ||T_ip - T̄||²

``T̄`` is the mean target over all patches and ``r̄`` the mean residual, so a constant offset between
``Z_g`` and ``T`` costs nothing: the whitened IAD metric subtracts the mean residual of training patches
anyway (:mod:`glance_lite.score.iad_metric`), and the Global-Net's linear read-out can be slow to learn
an offset when the descriptors sit far from the origin in a tight cluster (as on a grey texture).
``R²_context`` is then the share of the variation of ``T`` across patches that ``Z_g`` explains.
``T̄_p^(-i)`` is the mean target at grid position ``p`` over the *other* images (leave one image out,
so an image never predicts itself).  ``R²_position`` is what
knowing only *where* a patch is would predict: high on aligned objects, near 0 on textures and on
objects that turn.  ``R²_context − R²_position`` is then what the context says beyond the place.

Which patches: those of the test images whose window does not touch the ground-truth mask (normal
patches; a defect elsewhere in the image is still in their context, which can only lower
``R²_context``).  The model never trained on them.  The sums run over all descriptor dimensions; a
negative R² means the prediction is worse than the mean.

Deviation: a diagnostic of ours; the paper reports no such measure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data.mvtec import MVTecDataset, find_category
from ..score.scoring import patch_feature_pairs

__all__ = ["context_r2_from_features", "clean_patch_mask", "context_r2", "context_r2_of_run"]


def _f64(x: Tensor | np.ndarray) -> Tensor:
    """A float64 CPU copy of a tensor or array."""
    return x.detach().to("cpu", torch.float64) if isinstance(x, Tensor) else torch.tensor(np.asarray(x), dtype=torch.float64)


def context_r2_from_features(targets: Tensor | np.ndarray, preds: Tensor | np.ndarray,
                             keep: Tensor | np.ndarray | None = None) -> dict[str, float]:
    """``R²_context`` and ``R²_position`` (module docstring) from ``targets`` and ``preds`` of shape
    ``(N images, P grid positions, n)``; ``keep`` ``(N, P)`` bool selects the patches that count (all by
    default).  The leave-one-image-out position mean at ``p`` uses the other images' kept patches at
    ``p``; a position kept in fewer than two images is left out of ``R²_position`` (and of nothing else).
    Returns ``r2_context``, ``r2_position``, ``n_patches``, ``n_position_patches`` and ``offset`` (the mean
    squared size per dimension of the mean residual ``r̄``, which ``r2_context`` forgives)."""
    t, g = _f64(targets), _f64(preds)
    if t.ndim != 3 or t.shape != g.shape:
        raise ValueError(f"targets and preds must both be (N, P, n), got {tuple(t.shape)} and {tuple(g.shape)}")
    k = torch.ones(t.shape[:2], dtype=torch.bool) if keep is None else torch.as_tensor(np.asarray(keep), dtype=torch.bool)
    if k.shape != t.shape[:2]:
        raise ValueError(f"keep must be (N, P) = {tuple(t.shape[:2])}, got {tuple(k.shape)}")
    if int(k.sum()) < 2:
        raise ValueError("context_r2: fewer than two patches to measure")
    kf = k.to(t.dtype)[..., None]
    mean = (t * kf).sum((0, 1)) / kf.sum()
    total = float((((t - mean) ** 2) * kf).sum())
    if total <= 0:
        raise ValueError("context_r2: every kept target is the same; R² is undefined")
    r = t - g
    r_mean = (r * kf).sum((0, 1)) / kf.sum()
    r2_context = 1.0 - float((((r - r_mean) ** 2) * kf).sum()) / total
    # leave-one-image-out mean per position, over the kept patches of the other images
    s_p, c_p = (t * kf).sum(0), kf.sum(0)  # (P, n), (P, 1)
    c_other = c_p[None] - kf  # (N, P, 1)
    ok = k & (c_other[..., 0] >= 1)
    loo = (s_p[None] - t * kf) / c_other.clamp_min(1)
    okf = ok.to(t.dtype)[..., None]
    tot_pos = float((((t - mean) ** 2) * okf).sum())
    r2_position = 1.0 - float((((t - loo) ** 2) * okf).sum()) / tot_pos if tot_pos > 0 else float("nan")
    return {"r2_context": r2_context, "r2_position": r2_position, "n_patches": int(k.sum()),
            "n_position_patches": int(ok.sum()), "offset": float((r_mean ** 2).mean())}


def clean_patch_mask(masks: Tensor, tops: Tensor, lefts: Tensor, patch_size: int) -> Tensor:
    """``(N, gh*gw)`` bool, row-major: whether each grid patch's ``patch_size`` window misses the
    ground truth of ``masks`` ``(N, 1, H, W)`` (or ``(N, H, W)``) entirely."""
    m = masks.reshape(masks.shape[0], 1, *masks.shape[-2:]).float()
    # a patch touches the defect iff the window sum of the mask is > 0: one box filter, read on the grid
    box = torch.nn.functional.avg_pool2d(m, patch_size, stride=1)  # (N, 1, H-p+1, W-p+1)
    hit = box[:, 0][:, tops.long()][:, :, lefts.long()] > 0  # (N, gh, gw)
    return ~hit.reshape(masks.shape[0], -1)


def context_r2(model: nn.Module, images: Tensor, masks: Tensor | None = None, stride: int | None = None,
               progress: bool = False) -> dict[str, float]:
    """The two R² of the module docstring for a fitted :class:`~glance_lite.models.model.GlanceModel` on
    ``images`` ``(N, 3, H, W)`` in [0, 1], counting only patches that miss ``masks`` (all when ``None``)."""
    p = model.preset.patch_size
    tops, lefts, pairs = patch_feature_pairs(model, images, stride=stride, progress=progress)
    ts, gs = [], []
    for z_l, z_g in pairs:
        ts.append(z_l.double().cpu())
        gs.append(z_g.double().cpu())
    keep = None if masks is None else clean_patch_mask(masks, tops, lefts, p)
    return context_r2_from_features(torch.stack(ts), torch.stack(gs), keep)


def context_r2_of_run(run: str | Path, data_root: str | Path, category: str, max_images: int | None = None,
                      train_images: int = 16, progress: bool = False) -> dict[str, Any]:
    """:func:`context_r2` of the fitted run folder ``run`` on the test split of ``category`` under
    ``data_root`` (every test image, or the first ``max_images`` of each defect type, as
    :class:`glance_lite.data.mvtec.MVTecDataset` keeps them; the defect-free patches only), at the run's
    image size.  Also, as ``*_train``, the same on the first ``train_images`` *training* images that
    the Global-Net was fitted on: far more explained there than on new images means the Global-Net
    learned the training images rather than the category.  Adds the numbers of images and the sizes."""
    from ..models.model import GlanceModel

    model = GlanceModel.load(run).eval()
    size = model.preset.image_size
    cat = find_category(data_root, category)
    test = MVTecDataset(cat, "test", size, max_images=max_images)
    if len(test) == 0:
        raise ValueError(f"{Path(data_root) / category}: no test images")
    items = [test[i] for i in range(len(test))]
    images = torch.stack([it["image"] for it in items])
    masks = torch.stack([it["mask"][0] for it in items])
    out: dict[str, Any] = dict(context_r2(model, images, masks, progress=progress))
    out.update(n_images=len(test), patch_size=model.preset.patch_size, image_size=size)
    train = MVTecDataset(cat, "train", size, max_images=model.preset.max_train_images)
    if train_images > 0 and len(train):
        tr = torch.stack([train[i]["image"] for i in range(min(train_images, len(train)))])
        t = context_r2(model, tr, progress=progress)
        out.update(r2_context_train=t["r2_context"], r2_position_train=t["r2_position"], n_train_images=len(tr))
    return out
