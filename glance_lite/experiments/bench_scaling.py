"""Benchmark: steps per second of data-parallel training on 1 and 2 ranks, measured in one run.

``python -m glance_lite.experiments.bench_scaling --out glance_lite/results/scaling/cpu.json`` times two training
stages of the ``cpu`` preset (sizes: 128 px images, 33 px patches, batch 32) on random images:

* the Local-Net fine-tuning step (Eq. 3, the compactness loss on the gathered batch);
* the joint Global-Net + DAD step (Eq. 10), the stage that dominates a category's fit;

each under three set-ups, in the same call: 1 process with 1 thread, 1 process with ``world``
threads (what the same cores give without data parallelism), and ``world`` ranks of 1 thread each
(:func:`glance_lite.common.distributed.spawn_local`, gloo).  It writes the seconds per step, the speed-ups
as ratios measured in this one run, the hardware and the git commit.  Used by :doc:`/book/scaling`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..common.distributed import SINGLE, DistContext, spawn_local
from ..common.fileio import atomic_write_json
from ..common.presets import get_preset, hardware_info

__all__ = ["time_stage", "run_benchmark", "markdown", "main"]


def _preset(steps: int):
    return get_preset("cpu").replace(global_steps=steps, checkpoint_every=10_000, pretrained="none")


def time_stage(ctx: DistContext, stage: str, steps: int, out: str) -> None:
    """Run ``steps`` steps of ``stage`` (``finetune`` or ``global``) with checkpoints in the folder of
    ``out`` (shared by the ranks) and (rank 0) write the seconds per step of all but the first two
    (warm-up) to ``out``."""
    from ..models.model import GlanceModel
    from ..train.training import LocalTrainer, train_global

    p = _preset(steps)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    work = Path(out).parent / stage  # shared by the ranks: checkpoints are written by rank 0
    if stage == "finetune":
        patches = torch.rand(512, 3, p.patch_size, p.patch_size, generator=g)
        targets = torch.randn(512, 1280, generator=g)
        tr = LocalTrainer(p, teacher_dim=1280, device="cpu")
        tr.set_stats(targets)
        h1 = tr.train("finetune", patches, targets, 2, work / "w.pt", progress=False)  # warm-up
        h2 = tr.train("finetune", patches, targets, steps, work / "w.pt", progress=False)
    elif stage == "global":
        images = torch.rand(32, 3, p.image_size, p.image_size, generator=g)
        model = GlanceModel(p)
        h1 = train_global(model, images, work, progress=False, stop_after=2)  # warm-up
        h2 = train_global(model, images, work, progress=False)
    else:
        raise ValueError(f"unknown stage {stage!r}")
    # the stages' own clocks count the optimiser steps only (not the set-up of a call)
    sec = (h2.seconds - h1.seconds) / (steps - 2)
    if ctx.is_main:
        Path(out).write_text(json.dumps({"seconds_per_step": sec}))


def _measure(stage: str, steps: int, world: int, threads: int, timeout: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "r.json")
        old = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(threads)
        try:
            if world == 1:
                n = torch.get_num_threads()
                torch.set_num_threads(threads)
                try:
                    time_stage(SINGLE, stage, steps, out)
                finally:
                    torch.set_num_threads(n)
            else:
                spawn_local(time_stage, world, stage, steps, out, timeout=timeout)
        finally:
            if old is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = old
        return float(json.loads(Path(out).read_text())["seconds_per_step"])


def run_benchmark(steps: int = 12, world: int = 2, timeout: float = 900.0) -> dict[str, Any]:
    """Seconds per step of each stage for 1 rank x 1 thread, 1 rank x ``world`` threads and
    ``world`` ranks x 1 thread, with the speed-ups over 1 rank x 1 thread."""
    rows = []
    for stage in ("finetune", "global"):
        one = _measure(stage, steps, 1, 1, timeout)
        threads = _measure(stage, steps, 1, world, timeout)
        ranks = _measure(stage, steps, world, 1, timeout)
        rows.append({"stage": stage, "steps_timed": steps - 2,
                     "seconds_per_step": {"1 rank, 1 thread": one, f"1 rank, {world} threads": threads,
                                          f"{world} ranks, 1 thread each": ranks},
                     "speedup_vs_1_rank_1_thread": {f"1 rank, {world} threads": one / threads,
                                                    f"{world} ranks, 1 thread each": one / ranks}})
    from ..train.training import git_commit

    return {"rows": rows, "world": world, "backend": "gloo", "preset": "cpu", "batch_size": _preset(steps).batch_size,
            "hardware": hardware_info(), "git_commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "written_by": "python -m glance_lite.experiments.bench_scaling"}


def markdown(res: dict[str, Any]) -> str:
    """The results as a GFM table with its provenance (included by ``book/scaling.md``)."""
    w = res["world"]
    keys = ["1 rank, 1 thread", f"1 rank, {w} threads", f"{w} ranks, 1 thread each"]
    names = {"finetune": "Local-Net fine-tuning step (Eq. 3)", "global": "joint Global-Net + DAD step (Eq. 10)"}
    lines = ["| stage, `cpu` preset sizes | " + " | ".join(f"{k}: s/step" for k in keys)
             + f" | speed-up of {w} ranks | speed-up of {w} threads |",
             "|---|" + "---:|" * (len(keys) + 2)]
    for r in res["rows"]:
        sp, up = r["seconds_per_step"], r["speedup_vs_1_rank_1_thread"]
        lines.append(f"| {names.get(r['stage'], r['stage'])} | " + " | ".join(f"{sp[k]:.3f}" for k in keys)
                     + f" | {up[keys[2]]:.2f}× | {up[keys[1]]:.2f}× |")
    hw = res["hardware"]
    lines += ["", f"Measured by `{res['written_by']} --out glance_lite/results/scaling/cpu.json` on {res['date'][:10]}: "
              f"{hw.get('cpu_count')} CPU cores, torch {hw.get('torch')}, {res['backend']} backend, global batch "
              f"{res['batch_size']}, {res['rows'][0]['steps_timed']} timed steps per set-up after 2 warm-up steps, "
              f"all set-ups in one run (git {res['git_commit'][:12]}). Speed-ups are against 1 rank with 1 thread."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="results JSON (default: print only)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--world", type=int, default=2)
    a = ap.parse_args(argv)
    res = run_benchmark(a.steps, a.world)
    for r in res["rows"]:
        sp = ", ".join(f"{k}: {v:.3f} s" for k, v in r["seconds_per_step"].items())
        up = ", ".join(f"{k}: {v:.2f}x" for k, v in r["speedup_vs_1_rank_1_thread"].items())
        print(f"{r['stage']}: {sp} | speed-up {up}")
    if a.out:
        from ..common.fileio import atomic_write_text

        atomic_write_json(a.out, res)
        atomic_write_text(Path(a.out).with_suffix(".md"), markdown(res))
        print(a.out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
