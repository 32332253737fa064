"""Evaluate a fitted run on a category's test split, and predict maps for unlabelled images.

``evaluate_run`` writes, in anomalib's conventions:

* ``RUN/metrics.json`` -- ``image_AUROC``, ``pixel_AUROC``, ``AU-PRO`` (FPR limit 0.3), the preset,
  teacher, hardware, git commit, date and seconds per image, and the same three metrics for each
  head alone (lambda_s = 1 and 0);
* ``RUN/maps/test/<defect>/<stem>.tiff`` -- float32 anomaly maps in the MVTec evaluation layout;
* ``RUN/overlays/test/<defect>/<stem>.png`` -- image, ground-truth contour and heat map;
* ``RUN/head_maps.npz`` -- the IAD and DAD maps of every test image (for the lambda_s ablation),
  under the headline normalisation (``iad``, ``dad``) and plain (``iad_raw``, ``dad_raw``);
* in ``metrics.json`` also ``normalisations``: the three metrics, and each head's alone, under every
  score normalisation (``none``, the paper's Eq. 13; ``zscore``; ``position``; see
  :func:`glance_lite.score.scoring.normalise_scores`), fitted on training images (``RUN/score_stats.json``).
  ``preset.score_norm`` picks the headline; ``preset.iad_metric`` picks Eq. 11's metric (the paper's
  Euclidean, or whitened with ``RUN/iad_whitener.pt``, :mod:`glance_lite.score.iad_metric`).

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

from ..common.fileio import GlanceError, atomic_write, atomic_write_json
from ..models.model import GlanceModel
from ..common.presets import CHOICES, Preset, hardware_info, training_fields

__all__ = ["evaluate_run", "predict", "run_scales", "combined_head_maps", "score_stats", "write_tiff", "IMAGE_SUFFIXES", "SCORE_STATS",
           "WHITENED_STATS", "IAD_WHITENER"]

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
    preset: Preset | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Score every test image of ``category`` with the run's model and write the results.

    ``overlays`` caps the number of overlay PNGs per defect type (None: all).  ``preset``, when
    given, must match the run's training fields; its evaluation fields (score normalisation,
    lambda_s, grid stride, IDW) are used instead of those stored with the run.  ``device``: where
    the networks run (:func:`glance_lite.common.devices.resolve_device`; default ``GLANCE_DEVICE`` or auto).
    """
    from ..common.devices import resolve_device
    from ..data.mvtec import MVTecDataset, find_category

    run_dir = Path(run_dir)
    model = GlanceModel.load(run_dir).to(resolve_device(device))
    if preset is not None:
        if training_fields(preset) != training_fields(model.preset):
            raise GlanceError(f"{run_dir}: was fitted with other training settings than preset {preset.name!r}")
        model.preset = preset
    cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    if cfg.get("category") not in (None, category):
        raise GlanceError(f"{run_dir}: was fitted on category {cfg.get('category')!r}, not {category!r}")
    p = model.preset
    cat = find_category(data_root, category)
    ds = MVTecDataset(cat, "test", p.image_size, max_images=p.max_test_images)
    if len(ds) == 0:
        raise GlanceError(f"{cat.root}: no test images")
    scales = run_scales(run_dir, model, cat, progress)
    methods = CHOICES["score_norm"]  # every evaluation reports them all; the preset picks the headline
    hmaps: dict[str, dict[str, list[np.ndarray]]] = {m: {"iad": [], "dad": []} for m in methods}
    per_scale: dict[int, list[np.ndarray]] = {size: [] for size, _, _ in scales}
    masks, labels, paths, defects = [], [], [], []
    t0 = time.perf_counter()
    for i in tqdm(range(len(ds)), desc=f"evaluate {category}", disable=not progress):
        item = ds[i]
        nm = combined_head_maps(scales, item["image"][None], methods, per_scale=per_scale)
        for m in methods:
            for head in ("iad", "dad"):
                hmaps[m][head].append(nm[m][head][0].numpy())
        masks.append(item["mask"][0].numpy())
        labels.append(int(item["label"]))
        paths.append(item["path"])
        defects.append(item["defect"])
    sec_per_image = (time.perf_counter() - t0) / len(ds)
    masks_a = np.stack(masks).astype(np.uint8) if cat.has_masks else None
    labels_a = np.array(labels)
    stacked = {m: (np.stack(hmaps[m]["iad"]), np.stack(hmaps[m]["dad"])) for m in methods}
    by_method = {}
    for m, (ia, da) in stacked.items():
        by_method[m] = {**_metrics(p.lambda_s * ia + (1 - p.lambda_s) * da, masks_a, labels_a),
                        "iad_only": _metrics(ia, masks_a, labels_a), "dad_only": _metrics(da, masks_a, labels_a)}
    by_scale = ({f"p{size}": _metrics(np.stack(v), masks_a, labels_a) for size, v in per_scale.items()}
                if len(scales) > 1 else None)
    iad_a, dad_a = stacked[p.score_norm]
    maps = p.lambda_s * iad_a + (1 - p.lambda_s) * dad_a
    head = by_method[p.score_norm]
    result: dict[str, Any] = {
        "category": category,
        **{k: head[k] for k in ("image_AUROC", "pixel_AUROC", "AU-PRO")},
        "lambda_s": p.lambda_s,
        "score_norm": p.score_norm,
        "iad_metric": p.iad_metric,
        "heads": {"iad_only": head["iad_only"], "dad_only": head["dad_only"]},
        "normalisations": by_method,
        "patch_sizes": [size for size, _, _ in scales],
        "scales": by_scale,
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
                                iad_raw=stacked["none"][0].astype(np.float32),
                                dad_raw=stacked["none"][1].astype(np.float32),
                                masks=masks_a if masks_a is not None else np.zeros(0), labels=labels_a,
                                defects=np.array(defects), paths=np.array(paths))

    atomic_write(run_dir / "head_maps.npz", _npz)
    if write_maps:
        from ..common.figures import save_overlay

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


def run_scales(run_dir: str | Path, model: GlanceModel, category: Any = None,
               progress: bool = False) -> list[tuple[int, GlanceModel, dict[str, Any]]]:
    """``[(patch_size, model, score_stats), ...]`` of a run: its own scale first, then each of
    ``preset.extra_patch_sizes`` from ``RUN/scales/p<size>/`` (scored with the run's evaluation fields)."""
    from ..common.devices import module_device
    from ..train.training import scale_dir, scale_preset

    out = [(model.preset.patch_size, model, score_stats(run_dir, model, category, progress))]
    for size in model.preset.extra_patch_sizes:
        sub = scale_dir(run_dir, size)
        if not (sub / "model.pt").is_file():
            raise GlanceError(f"{sub}: the multi-scale run has no model for patch size {size}; run fit again")
        m = GlanceModel.load(sub).to(module_device(model))
        if training_fields(m.preset) != training_fields(scale_preset(model.preset, size)):
            raise GlanceError(f"{sub}: was fitted with other settings than the run's patch size {size}")
        m.preset = scale_preset(model.preset, size)
        out.append((size, m, score_stats(sub, m, category, progress)))
    return out


def combined_head_maps(scales: list[tuple[int, GlanceModel, dict[str, Any]]], images: torch.Tensor,
                       methods: Iterable[str], per_scale: dict[int, list[np.ndarray]] | None = None
                       ) -> dict[str, dict[str, torch.Tensor]]:
    """Each head's maps under each normalisation, averaged over the run's patch sizes.

    With one scale this is :func:`glance_lite.score.scoring.normalised_head_maps`.  With several, each
    size's maps are first standardised with its own training statistics (``zscore`` or ``position``),
    then averaged; under ``none`` the plain maps are averaged.  ``per_scale``, when given, collects
    each size's headline map (``lambda_s`` mix under ``preset.score_norm``, which must be among
    ``methods``), to report the sizes alone.
    """
    from ..score.scoring import normalised_head_maps

    methods = list(methods)
    per_size = []
    for size, m, stats in scales:
        nm = normalised_head_maps(m, images, stats, methods)
        if per_scale is not None:
            p = m.preset
            hl = nm[p.score_norm]
            per_scale[size].extend((p.lambda_s * hl["iad"] + (1 - p.lambda_s) * hl["dad"]).numpy())
        per_size.append(nm)
    return {meth: {head: sum(nm[meth][head] for nm in per_size) / len(per_size) for head in ("iad", "dad")}
            for meth in methods}


SCORE_STATS = "score_stats.json"
"""File in a run folder holding the score normaliser fitted on training images (Euclidean IAD)."""

WHITENED_STATS = "score_stats-mahalanobis.json"
"""The score normaliser of the whitened IAD metric (its whitener: :data:`IAD_WHITENER`)."""

IAD_WHITENER = "iad_whitener.pt"
"""File in a run folder holding the whitener of the IAD metric (:mod:`glance_lite.score.iad_metric`)."""


def score_stats(run_dir: str | Path, model: GlanceModel, category: Any = None, progress: bool = False,
                train_images: Any = None) -> dict[str, Any]:
    """The run's scoring statistics, fitted on 16 training images spread over the training set:
    the score normaliser (:func:`glance_lite.score.scoring.fit_score_normaliser`) and, when
    ``preset.iad_metric == "mahalanobis"``, the IAD whitener fitted in the same scoring pass
    (:func:`glance_lite.score.scoring.fit_whitened_normaliser`, returned under ``"iad_whitener"``).

    Read from ``RUN/score_stats.json`` (Euclidean) or ``RUN/score_stats-mahalanobis.json`` +
    ``RUN/iad_whitener.pt``, or fitted and written (atomically, whitener first) on first use
    (``evaluate`` or ``predict``), and again when the preset's ``score_stride`` is not the one they
    were fitted at (the ``position`` normaliser has one mean per grid position); from the category's
    training images, found through ``category`` or the run's ``config.json``; never from test images.
    """
    from ..score.iad_metric import load_whitener, save_whitener
    from ..score.scoring import fit_score_normaliser, fit_whitened_normaliser
    from ..train.training import load_train_images, spread_indices

    whiten = model.preset.iad_metric == "mahalanobis"
    path = Path(run_dir) / (WHITENED_STATS if whiten else SCORE_STATS)
    wpath = Path(run_dir) / IAD_WHITENER
    stride = model.preset.score_stride
    stats = json.loads(path.read_text()) if path.is_file() and (not whiten or wpath.is_file()) else None
    if stats is not None and stats.get("stride", stride) == stride:  # at another stride: refitted below
        if whiten:
            try:
                stats["iad_whitener"] = load_whitener(wpath)
            except Exception as e:  # a damaged file: say which, refit below
                raise GlanceError(f"{wpath}: cannot be read ({e}); delete it and {path.name} to refit them") from e
        return stats
    if train_images is None:
        if category is None:
            from ..data.mvtec import find_category

            cfg_path = Path(run_dir) / "config.json"
            cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
            if not cfg.get("data_root") or not cfg.get("category"):
                raise GlanceError(f"{run_dir}: no {path.name} and no training data to fit it on")
            category = find_category(cfg["data_root"], cfg["category"])
        train_images = load_train_images(category, model.preset)
    pick = spread_indices(len(train_images), 16)
    method = model.preset.score_norm if model.preset.score_norm != "none" else "zscore"
    if whiten:  # whitener and statistics from one scoring pass; the whitener is written first
        stats = fit_whitened_normaliser(model, train_images[pick], method=method, progress=progress)
        save_whitener(wpath, stats["iad_whitener"])
    else:
        stats = fit_score_normaliser(model, train_images[pick], method=method, max_images=None, progress=progress)
    stats["train_indices"] = pick.tolist()
    atomic_write_json(path, {k: v for k, v in stats.items() if k != "iad_whitener"})
    return stats


def _git() -> str:
    from ..train.training import git_commit

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


def predict(run_dir: str | Path, inputs: Iterable[str | Path], out: str | Path, progress: bool = True,
            device: str | torch.device | None = None) -> list[dict[str, Any]]:
    """Anomaly maps (``.tiff``) and overlays (``.png``) for images without labels.

    Returns one record per image with its path, the image score (max of the map) and output files.
    """
    from ..data.mvtec import load_image
    from ..common.figures import save_overlay

    from ..common.devices import resolve_device

    model = GlanceModel.load(run_dir).to(resolve_device(device))
    p = model.preset
    scales = run_scales(run_dir, model)
    files = _collect_images(inputs)
    out = Path(out)
    records = []
    for f in tqdm(files, desc="predict", disable=not progress):
        img = load_image(f, p.image_size)
        hm = combined_head_maps(scales, img[None], [p.score_norm])[p.score_norm]
        amap = (p.lambda_s * hm["iad"] + (1 - p.lambda_s) * hm["dad"])[0].cpu().numpy()
        tif = write_tiff(out / f"{f.stem}.tiff", amap)
        png = save_overlay(out / f"{f.stem}.png", img.permute(1, 2, 0).numpy(), amap, None, title=f.name)
        records.append({"image": str(f), "score": float(amap.max()), "map": str(tif), "overlay": str(png)})
    atomic_write_json(out / "predictions.json", records)
    return records
