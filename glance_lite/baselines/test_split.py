"""Scoring a test split with any per-image map function: the loop that every local-only control shares.

The controls of :mod:`glance_lite.baselines.students` (TS) and :mod:`glance_lite.baselines.knn` (nearest
neighbours) differ only in how a patch is scored; both turn the grid scores into a map with the same
IDW interpolation, read the same test images, compute anomalib's three metrics
(:func:`glance_lite.evaluate.metrics.summary_metrics`) and write their maps next to the run in the same
``.npz`` layout, so that their results files compare directly with ``metrics.json``.

Used in :doc:`/notebooks/06_mvtec_ad`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..common.fileio import GlanceError, atomic_write
from ..common.presets import Preset

__all__ = ["TestMaps", "score_test_split", "save_maps_npz", "load_maps_npz"]


class TestMaps(dict):
    """``maps (N, H, W) float``, ``masks (N, H, W) uint8 or None``, ``labels (N,)``, ``paths``, ``defects``,
    ``seconds_per_image`` of one scored test split."""


def score_test_split(data_root: str | Path, category: str, preset: Preset,
                     map_fn: Callable[[torch.Tensor], torch.Tensor], desc: str,
                     progress: bool = True) -> TestMaps:
    """Run ``map_fn`` (a ``(1, 3, H, W)`` image tensor to a ``(1, H, W)`` map) on every test image of
    ``category`` at ``preset.image_size`` (at most ``preset.max_test_images`` per defect type)."""
    from ..data.mvtec import MVTecDataset, find_category

    cat = find_category(data_root, category)
    ds = MVTecDataset(cat, "test", preset.image_size, max_images=preset.max_test_images)
    if len(ds) == 0:
        raise GlanceError(f"{cat.root}: no test images")
    maps, masks, labels, paths, defects = [], [], [], [], []
    t0 = time.perf_counter()
    for i in tqdm(range(len(ds)), desc=desc, disable=not progress):
        item = ds[i]
        maps.append(map_fn(item["image"][None])[0].numpy())
        masks.append(item["mask"][0].numpy())
        labels.append(int(item["label"]))
        paths.append(item["path"])
        defects.append(item["defect"])
    sec = (time.perf_counter() - t0) / len(ds)
    return TestMaps(maps=np.stack(maps), masks=np.stack(masks).astype(np.uint8) if cat.has_masks else None,
                    labels=np.array(labels), paths=paths, defects=defects, seconds_per_image=round(sec, 4))


def save_maps_npz(path: str | Path, maps: np.ndarray, masks: np.ndarray | None, labels: np.ndarray,
                  defects: Any, paths: Any) -> Path:
    """Write maps with their masks, labels, defect types and image paths atomically (``np.savez_compressed``);
    a missing ``masks`` is stored as an empty array."""

    def _npz(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, maps=np.asarray(maps, dtype=np.float32),
                                masks=masks if masks is not None else np.zeros(0), labels=labels,
                                defects=np.array(defects), paths=np.array(paths))

    return atomic_write(Path(path), _npz)


def load_maps_npz(path: str | Path) -> TestMaps:
    """Read a file of :func:`save_maps_npz` (masks ``None`` when none were stored)."""
    path = Path(path)
    try:
        with np.load(path) as d:
            out = TestMaps({k: d[k] for k in ("maps", "masks", "labels", "defects", "paths")})
    except (OSError, ValueError, KeyError) as e:
        raise GlanceError(f"{path}: not a maps file ({e})") from e
    if out["masks"].size == 0:
        out["masks"] = None
    return out
