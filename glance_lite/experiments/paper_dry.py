"""A dry run of the ``paper`` preset's full-size path: every stage for a few steps, then evaluation.

``python -m glance_lite.experiments.paper_dry`` (``make paper-dry``, which ``make test`` runs) fits one offline
category with the ``paper`` preset's sizes -- 256 px images, 33 px patches, batch 64, the paper's
Global-Net channel widths, the teacher at 224 px -- but only a few optimiser steps per stage, then
evaluates it on one test image per defect type.  It proves that those sizes work together (shapes,
memory, checkpoints, scoring at 256 px) on whatever device it is given, and it measures:

* the seconds per optimiser step of each stage and the seconds per test image;
* the peak memory (resident set on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU);
* an estimate of one category's time at the ``paper`` preset's full step counts, from those rates.

The estimate is labelled as one.  :doc:`/book/cli` quotes it, and says when a GPU measurement
replaces it.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..common.devices import resolve_device
from ..common.fileio import atomic_write_json
from ..common.presets import Preset, describe, get_preset, hardware_info
from ..train.training import git_commit

__all__ = ["dry_preset", "paper_dry", "main"]

DRY_STEPS = 3
"""Optimiser steps per stage in the dry run (rates are taken over steps 2..n, after warm-up)."""


def dry_preset(steps: int = DRY_STEPS, base: Preset | None = None) -> Preset:
    """The ``paper`` preset with its sizes unchanged and its step and data counts cut to a dry run."""
    p = base or get_preset("paper")
    return p.replace(name="paper-dry", pretrained="none", pretrain_patches=4 * p.batch_size,
                     pretrain_steps=steps, finetune_patches=4 * p.batch_size, finetune_steps=steps,
                     global_steps=steps, max_train_images=8, max_test_images=1,
                     checkpoint_every=steps)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _rate(records: list[dict[str, Any]], seconds: float) -> float | None:
    return round(seconds / len(records), 3) if records else None


def paper_dry(work: str | Path, device: str | None = None, steps: int = DRY_STEPS, category: str = "cable",
              progress: bool = False) -> dict[str, Any]:
    """Run the dry run in ``work`` (offline data and the run folder go there); return the report."""
    from ..evaluate.evaluation import evaluate_run
    from ..data.offline_data import make_offline
    from ..train.training import fit

    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    work = Path(work)
    p = dry_preset(steps)
    root = make_offline(work / "offline", size=p.image_size, progress=progress, n_train=p.max_train_images,
                        n_test_good=1, n_test_defect=1)
    t0 = time.perf_counter()
    fit(root, category, work / "run", p, progress=progress, pretrain_dir=work / "pretrain", device=dev)
    t_fit = time.perf_counter() - t0
    t1 = time.perf_counter()
    m = evaluate_run(work / "run", root, category, progress=progress, write_maps=False, device=dev)
    t_eval = time.perf_counter() - t1
    hist = json.loads((work / "run" / "history.json").read_text())
    per_step = {st: _rate(h["records"], h["seconds"]) for st, h in hist.items()}
    full = get_preset("paper")
    steps_full = {"pretrain": full.pretrain_steps, "finetune": full.finetune_steps, "global": full.global_steps}
    n_test_mvtec = 150  # a typical MVTec AD test split (83 to 167 images per category)
    est = {st: round(per_step[st] * steps_full[st] / 60, 1) for st in steps_full if per_step.get(st)}
    est["evaluate"] = round(m["seconds_per_image"] * n_test_mvtec / 60, 1)
    report = {
        "what": "paper preset sizes, a few steps per stage (glance_lite.experiments.paper_dry)",
        "describe": describe(p),
        "preset_fields": p.to_dict(),
        "device": str(dev),
        "hardware": hardware_info(),
        "steps_per_stage": steps,
        "seconds_per_step": per_step,
        "seconds_per_test_image": m["seconds_per_image"],
        "n_test_images": m["n_test"],
        "fit_seconds": round(t_fit, 1),
        "evaluate_seconds": round(t_eval, 1),
        "peak_memory_mb": round(_peak_mb(dev), 1),
        "estimate_minutes_full_paper_preset": est,
        "estimate_note": ("an estimate, not a measurement: the seconds per step of this dry run times the "
                          "paper preset's steps (pretrain is done once, not per category); evaluation for "
                          f"{n_test_mvtec} test images"),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": git_commit(),
        "written_by": "python -m glance_lite.experiments.paper_dry",
    }
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m glance_lite.experiments.paper_dry",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="data/paper-dry", help="folder for the offline data and the run")
    ap.add_argument("--device", default=None)
    ap.add_argument("--steps", type=int, default=DRY_STEPS)
    ap.add_argument("--out", default=None, help="also write the report (JSON) here")
    args = ap.parse_args(argv)
    import shutil

    shutil.rmtree(Path(args.work) / "run", ignore_errors=True)  # a dry run always trains afresh
    shutil.rmtree(Path(args.work) / "pretrain", ignore_errors=True)
    rep = paper_dry(args.work, args.device, args.steps)
    if args.out:
        atomic_write_json(args.out, rep)
    print(describe(get_preset("paper")), file=sys.stderr)
    for st, s in rep["seconds_per_step"].items():
        print(f"{st:9s} {s:8.3f} s/step   (full paper preset: ~{rep['estimate_minutes_full_paper_preset'].get(st)} min, estimate)")
    print(f"evaluate  {rep['seconds_per_test_image']:8.3f} s/image  peak memory {rep['peak_memory_mb']:.0f} MB on {rep['device']}")
    print(json.dumps({k: rep[k] for k in ("device", "seconds_per_step", "seconds_per_test_image", "peak_memory_mb")}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
