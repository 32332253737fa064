"""Evaluate a fitted run on a category's test split, and predict maps for unlabelled images.

``evaluate_run`` writes, in anomalib's conventions:

* ``RUN/metrics.json`` -- ``image_AUROC``, ``pixel_AUROC``, ``AU-PRO`` (FPR limit 0.3), the preset,
  teacher, hardware, git commit, date and seconds per image, and the same three metrics for each
  head alone (lambda_s = 1 and 0);
* ``RUN/maps/test/<defect>/<stem>.tiff`` -- float32 anomaly maps in the MVTec evaluation layout;
* ``RUN/overlays/test/<defect>/<stem>.png`` -- image, ground-truth contour and heat map;
* ``RUN/head_maps.npz`` -- the IAD and DAD maps of every test image (for the lambda_s ablation).

Defined in :doc:`/notebooks/06_mvtec_ad`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from .fileio import GlanceError, atomic_write, atomic_write_json
from .model import GlanceModel
from .presets import hardware_info

__all__ = ["evaluate_run", "predict", "write_tiff", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def write_tiff(path: str | Path, amap: np.ndarray) -> Path:
    """Atomically write a float32 anomaly map as a single-page TIFF."""
    import tifffile

    arr = np.asarray(amap, dtype=np.float32)
    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, arr))


def _metrics(maps: np.ndarray, masks: np.ndarray | None, labels: np.ndarray) -> dict[str, float | None]:
    from .metrics import summary_metrics

    return summary_metrics(maps, masks, labels)

def evaluate_run(
    run_dir: str | Path,
    data_root: str | Path,
    category: str,
    progress: bool = True,
    write_maps: bool = True,
    overlays: int | None = None,
) -> dict[str, Any]:
    """Score every test image of ``category`` with the run's model and write the results.

    ``overlays`` caps the number of overlay PNGs per defect type (None: all).
    """
    from .mvtec import MVTecDataset, find_category
    from .scoring import head_maps

    run_dir = Path(run_dir)
    model = GlanceModel.load(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    if cfg.get("category") not in (None, category):
        raise GlanceError(f"{run_dir}: was fitted on category {cfg.get('category')!r}, not {category!r}")
    p = model.preset
    cat = find_category(data_root, category)
    ds = MVTecDataset(cat, "test", p.image_size, max_images=p.max_test_images)
    if len(ds) == 0:
        raise GlanceError(f"{cat.root}: no test images")
    iad, dad, masks, labels, paths, defects = [], [], [], [], [], []
    t0 = time.perf_counter()
    for i in tqdm(range(len(ds)), desc=f"evaluate {category}", disable=not progress):
        item = ds[i]
        hm = head_maps(model, item["image"][None])
        iad.append(hm["iad"][0].numpy())
        dad.append(hm["dad"][0].numpy())
        masks.append(item["mask"][0].numpy())
        labels.append(int(item["label"]))
        paths.append(item["path"])
        defects.append(item["defect"])
    sec_per_image = (time.perf_counter() - t0) / len(ds)
    iad_a, dad_a = np.stack(iad), np.stack(dad)
    masks_a = np.stack(masks).astype(np.uint8) if cat.has_masks else None
    labels_a = np.array(labels)
    maps = p.lambda_s * iad_a + (1 - p.lambda_s) * dad_a
    result: dict[str, Any] = {
        "category": category,
        **_metrics(maps, masks_a, labels_a),
        "lambda_s": p.lambda_s,
        "heads": {
            "iad_only": _metrics(iad_a, masks_a, labels_a),
            "dad_only": _metrics(dad_a, masks_a, labels_a),
        },
        "n_test": len(ds),
        "seconds_per_image": round(sec_per_image, 4),
        "preset": p.name,
        "preset_fields": p.to_dict(),
        "teacher": model.teacher,
        "hardware": hardware_info(),
        "git_commit": _git(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fit": {k: cfg.get(k) for k in ("stage_seconds", "final_losses", "fit_seconds_this_call", "git_commit")},
        "data_root": str(Path(data_root).resolve()),
    }
    def _npz(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, iad=iad_a.astype(np.float32), dad=dad_a.astype(np.float32),
                                masks=masks_a if masks_a is not None else np.zeros(0), labels=labels_a,
                                defects=np.array(defects), paths=np.array(paths))

    atomic_write(run_dir / "head_maps.npz", _npz)
    if write_maps:
        from .figures import save_overlay

        counts: dict[str, int] = {}
        vmin, vmax = float(np.percentile(maps, 1)), float(np.percentile(maps, 99.9))
        for i, (pth, d) in enumerate(zip(paths, defects)):
            stem = Path(pth).stem
            write_tiff(run_dir / "maps" / "test" / d / f"{stem}.tiff", maps[i])
            counts[d] = counts.get(d, 0) + 1
            if overlays is None or counts[d] <= overlays:
                img = ds[i]["image"].permute(1, 2, 0).numpy()
                save_overlay(run_dir / "overlays" / "test" / d / f"{stem}.png", img, maps[i],
                             masks_a[i] if masks_a is not None else None, vmin, vmax, title=f"{d}/{stem}")
    atomic_write_json(run_dir / "metrics.json", result)
    return result


def _git() -> str:
    from .training import git_commit

    return git_commit()


def _collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for x in inputs:
        x = Path(x)
        if x.is_dir():
            found = sorted(f for f in x.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise GlanceError(f"{x}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif x.is_file():
            files.append(x)
        else:
            raise GlanceError(f"{x}: no such file or folder")
    return files


def predict(run_dir: str | Path, inputs: Iterable[str | Path], out: str | Path, progress: bool = True) -> list[dict[str, Any]]:
    """Anomaly maps (``.tiff``) and overlays (``.png``) for images without labels.

    Returns one record per image with its path, the image score (max of the map) and output files.
    """
    from .mvtec import load_image
    from .scoring import anomaly_maps
    from .figures import save_overlay

    model = GlanceModel.load(run_dir)
    files = _collect_images(inputs)
    out = Path(out)
    records = []
    for f in tqdm(files, desc="predict", disable=not progress):
        img = load_image(f, model.preset.image_size)
        amap = anomaly_maps(model, img[None])[0].numpy()
        tif = write_tiff(out / f"{f.stem}.tiff", amap)
        png = save_overlay(out / f"{f.stem}.png", img.permute(1, 2, 0).numpy(), amap, None, title=f.name)
        records.append({"image": str(f), "score": float(amap.max()), "map": str(tif), "overlay": str(png)})
    atomic_write_json(out / "predictions.json", records)
    return records
