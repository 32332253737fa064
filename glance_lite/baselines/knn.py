"""The nearest-neighbour control: PatchCore's idea on the run's own Local-Net descriptor, with no training.

A local-only control that cannot be under-trained.  Every raster-grid patch of every good training
image is described by the run's fine-tuned Local-Net (Eq. 4), ``Z_l``; these descriptors form a
*memory bank* ``M``.  A test patch ``p`` is scored by its mean Euclidean distance to its ``k`` nearest
descriptors in the bank::

    s_NN(p) = (1/k) sum_{m in kNN(Z_l(p), M)} || Z_l(p) - m ||_2

and the grid scores become a per-pixel map with the same inverse-distance-weighted interpolation as
glance-lite (:func:`glance_lite.score.idw.idw_interpolate`, ``preset.idw_power``,
``preset.idw_neighbours``) on the same grid (:func:`glance_lite.score.scoring.patch_grid`, stride
``preset.score_stride``).  glance-lite, TS and this control therefore share the image size, the patch,
the descriptor and the map; they differ only in how a patch is judged.  If glance-lite's global heads
add something that the descriptor alone does not give, glance-lite beats this control.

Design decisions (for the errata page):

* ours: the bank holds the descriptors of the same raster grid used for scoring (stride
  ``preset.score_stride``) on every training image.  Above ``max_bank`` descriptors a seeded *random*
  subset is kept (PatchCore uses a greedy coreset; a random one is the simpler bound on memory, and at
  the ``cpu`` preset the bank of a category is 50,000 to 190,000 descriptors, so the cap of 200,000
  rarely bites).
* ours: ``k = 1`` (PatchCore's nearest neighbour) by default; PatchCore's re-weighting of the image score
  by the neighbour's own neighbourhood is not used, since only the pixel maps are compared.
* The distance is the plain Euclidean one on ``Z_l`` (no whitening), as in PatchCore.
* ours: the scale of a normal patch's score (``score_stats``: mean and standard deviation) is measured
  on held-out training images -- the 10 % that the TS baseline holds out
  (:func:`glance_lite.baselines.students.split_train_val`) -- against a bank of the other training
  images, since a training patch is its own nearest neighbour in the full bank.  The control's own
  maps do not use it (a constant shift and scale changes no metric); it is what lets a nearest-neighbour
  map be added to other standardised maps.

Defined in :doc:`/notebooks/06_mvtec_ad` (the "nearest neighbours" column of the results).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..common.devices import resolve_device
from ..common.fileio import GlanceError, atomic_write_json
from ..common.presets import Preset, hardware_info, training_fields
from ..models.local_net import LocalNet

__all__ = ["DEFAULT_K", "MAX_BANK", "grid_descriptors", "memory_bank", "knn_distances", "knn_patch_scores",
           "knn_maps", "heldout_score_stats", "evaluate_knn"]

DEFAULT_K = 1
"""Neighbours averaged per test patch. PatchCore: 1."""

MAX_BANK = 200_000
"""Most descriptors kept in the bank (a seeded random subset above it). ours."""


def grid_descriptors(local_net: LocalNet, images: Tensor, stride: int) -> tuple[Tensor, Tensor, Tensor]:
    """``Z_l`` of every raster-grid patch: ``(B, gh, gw, n)``, with the grid's ``tops`` and ``lefts``."""
    from ..models.fast_features import local_features_at
    from ..score.scoring import patch_grid

    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise GlanceError(f"images must be a (B, 3, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    tops, lefts = patch_grid(images.shape[2], images.shape[3], local_net.patch_size, stride)
    dev = next(local_net.parameters()).device
    was = local_net.training
    local_net.eval()
    try:
        with torch.no_grad():
            z = torch.cat([local_features_at(local_net, images[i : i + 1].float().to(dev), tops, lefts).cpu()
                           for i in range(images.shape[0])])
    finally:
        local_net.train(was)
    return z.permute(0, 2, 3, 1).contiguous(), tops, lefts


def memory_bank(local_net: LocalNet, images: Tensor, stride: int, max_bank: int = MAX_BANK, seed: int = 0,
                progress: bool = False) -> Tensor:
    """The bank ``(N, n)``: grid descriptors of every training image, a seeded random subset of
    ``max_bank`` of them when there are more."""
    if max_bank < 1:
        raise GlanceError(f"max_bank must be at least 1, got {max_bank}")
    parts = [grid_descriptors(local_net, images[i : i + 1], stride)[0].reshape(-1, local_net.dim)
             for i in tqdm(range(images.shape[0]), desc="NN bank", disable=not progress)]
    bank = torch.cat(parts)
    if len(bank) > max_bank:
        g = torch.Generator().manual_seed(int(seed))
        bank = bank[torch.randperm(len(bank), generator=g)[:max_bank]]
    return bank


def knn_distances(queries: Tensor, bank: Tensor, k: int = DEFAULT_K, chunk: int = 4096) -> Tensor:
    """Mean Euclidean distance of each query ``(Q, n)`` to its ``k`` nearest rows of ``bank`` ``(N, n)``: ``(Q,)``.

    The neighbours are found in chunks of queries with ``torch.cdist`` (matrix products, fast but
    rounded near zero); their distances are then computed again exactly from the differences.  ``k`` is
    capped at ``N``.
    """
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise GlanceError(f"queries {tuple(queries.shape)} and bank {tuple(bank.shape)} must be (Q, n) and (N, n)")
    if len(bank) == 0:
        raise GlanceError("the memory bank is empty")
    if k < 1:
        raise GlanceError(f"k must be at least 1, got {k}")
    k = min(int(k), len(bank))
    out = []
    b = bank.float()
    for a in range(0, len(queries), chunk):
        q = queries[a : a + chunk].float()
        idx = torch.cdist(q, b).topk(k, dim=1, largest=False).indices  # (c, k)
        out.append((q[:, None, :] - b[idx]).pow(2).sum(-1).sqrt().mean(1))
    return torch.cat(out) if out else queries.new_zeros(0)


def knn_patch_scores(local_net: LocalNet, bank: Tensor, images: Tensor, stride: int, k: int = DEFAULT_K
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Grid scores ``(B, gh, gw)`` of :func:`knn_distances`, with the grid's ``tops`` and ``lefts``."""
    z, tops, lefts = grid_descriptors(local_net, images, stride)
    b, gh, gw, n = z.shape
    return knn_distances(z.reshape(-1, n), bank, k).reshape(b, gh, gw), tops, lefts


def knn_maps(local_net: LocalNet, bank: Tensor, images: Tensor, preset: Preset, k: int = DEFAULT_K) -> Tensor:
    """Per-pixel maps ``(B, H, W)``: grid scores, then IDW as in glance-lite (``preset``'s stride and IDW)."""
    from ..score.idw import idw_interpolate
    from ..score.scoring import patch_centres

    s, tops, lefts = knn_patch_scores(local_net, bank, images, preset.score_stride, k)
    cy, cx = patch_centres(tops, lefts, local_net.patch_size)
    return idw_interpolate(s, cy, cx, images.shape[2], images.shape[3], power=preset.idw_power,
                           neighbours=preset.idw_neighbours)


def heldout_score_stats(local_net: LocalNet, train: Tensor, preset: Preset, k: int = DEFAULT_K,
                        max_bank: int = MAX_BANK) -> dict[str, Any]:
    """Mean and standard deviation of the grid scores of held-out training images against a bank of the
    other training images (the split of :func:`glance_lite.baselines.students.split_train_val`).  With
    fewer than two training images there is no split: ``None`` statistics."""
    from .students import VAL_FRACTION, split_train_val

    tr, va = split_train_val(len(train), VAL_FRACTION, preset.seed + 11)
    if torch.equal(tr, va):
        return {"mean": None, "std": None, "n_images": 0}
    bank = memory_bank(local_net, train[tr], preset.score_stride, max_bank, seed=preset.seed)
    s = knn_patch_scores(local_net, bank, train[va], preset.score_stride, k)[0].double()
    return {"mean": float(s.mean()), "std": max(float(s.std()), 1e-12), "n_images": int(len(va))}


def evaluate_knn(run_dir: str | Path, data_root: str | Path, category: str, k: int = DEFAULT_K,
                 max_bank: int = MAX_BANK, progress: bool = True, device: str | torch.device | None = None,
                 preset: Preset | None = None) -> dict[str, Any]:
    """Score the test split with the nearest-neighbour control on a fitted run.

    Writes ``run_dir/metrics_knn.json`` (the metrics of ``metrics.json``, the settings and the
    seconds) and ``run_dir/knn_maps.npz``.  ``preset`` (default: the run's) gives the scoring fields;
    its training fields must be the run's.  Nothing is trained: the bank is built from the run's
    fine-tuned Local-Net and the training images.
    """
    from ..data.mvtec import find_category
    from ..evaluate.metrics import summary_metrics
    from ..models.model import GlanceModel
    from ..train.training import git_commit, load_train_images
    from .test_split import save_maps_npz, score_test_split

    run_dir = Path(run_dir)
    model = GlanceModel.load(run_dir)
    p = model.preset
    if preset is not None:
        if training_fields(preset) != training_fields(p):
            raise GlanceError(f"{run_dir}: was fitted with another preset than {preset.name!r} (only scoring fields may differ)")
        p = preset
    dev = resolve_device(device)
    net = model.local_net.to(dev).eval()
    t0 = time.perf_counter()
    train = load_train_images(find_category(data_root, category), p)
    bank = memory_bank(net, train, p.score_stride, max_bank, seed=p.seed, progress=progress)
    bank_seconds = time.perf_counter() - t0
    stats = heldout_score_stats(net, train, p, k, max_bank)
    tm = score_test_split(data_root, category, p, lambda x: knn_maps(net, bank, x, p, k), f"NN {category}", progress)
    result: dict[str, Any] = {
        "method": "nearest neighbours on the run's fine-tuned Local-Net (no training)",
        "category": category,
        **summary_metrics(tm["maps"], tm["masks"], tm["labels"]),
        "k": int(k),
        "bank_size": int(len(bank)),
        "max_bank": int(max_bank),
        "n_train_images": int(len(train)),
        "n_test": int(len(tm["labels"])),
        "bank_seconds": round(bank_seconds, 2),
        "score_stats": stats,
        "seconds_per_image": tm["seconds_per_image"],
        "preset": p.name,
        "preset_fields": p.to_dict(),
        "hardware": hardware_info(),
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data_root": str(Path(data_root).resolve()),
    }
    save_maps_npz(run_dir / "knn_maps.npz", tm["maps"], tm["masks"], tm["labels"], tm["defects"], tm["paths"])
    atomic_write_json(run_dir / "metrics_knn.json", result)
    return result
