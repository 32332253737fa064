"""Benchmark: what the TS control's students cost per patch size, single- and multi-scale.

``python -m glance_lite.experiments.bench_students [--preset cpu] [--sizes 17,33,65] [--steps 20] [--threads 2]``

The paper's TS column is the multi-scale Uninformed Students (p = 17, 33, 65); glance-lite's default
control uses one patch size, the preset's.  For each patch size this measures, in one process, the
seconds of one student optimiser step (the preset's batch of random patches, Adam, the same code
path as :func:`glance_lite.baselines.students.train_student`), after a few warm-up steps, and prints:

* seconds per step, and its ratio to the preset's own patch size;
* the projected training time of the converged control, three students between the stop rule's
  ``min_steps`` and its cap (:func:`glance_lite.baselines.students.stop_rule`), for the single-scale
  control and for the multi-scale one (the sum over the sizes).

Student weights and pixels do not change the work, so random ones are used.  A benchmark, not a test;
wall times on a shared machine are noisy, so compare the ratios of one run.

Read the projection as a lower bound.  It counts the optimiser step only.  A real run also samples
patches, evaluates the held-out error every ``eval_every`` steps and scores the test images.  On the
offline ``cable`` category at ``cpu`` (idle 2-core machine, two threads) the whole control took 0.34 s
per student step, about twice this benchmark's 0.17 s (``glance_lite/results/cpu/offline/cable``,
``ts.wall_seconds`` over the students' ``stop_steps``).

Defined in :doc:`/book/cli` (section "The local-only controls").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from ..baselines.students import DEFAULT_STUDENTS, new_student, stop_rule
from ..common.presets import get_preset

__all__ = ["bench_students", "main"]


def _seconds_per_step(patch_size: int, dim: int, batch: int, steps: int, warmup: int = 3) -> float:
    student = new_student(patch_size, dim, 0)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    pool = torch.randint(0, 256, (max(4 * batch, 256), 3, patch_size, patch_size), dtype=torch.uint8, generator=g)
    targets = torch.randn(len(pool), dim, generator=g)
    t0 = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            t0 = time.perf_counter()
        idx = torch.randint(len(pool), (batch,), generator=g)
        loss = (student(pool[idx].float() / 255) - targets[idx]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def bench_students(preset_name: str = "cpu", sizes: tuple[int, ...] = (17, 33, 65), steps: int = 20,
                   threads: int | None = None) -> dict[str, Any]:
    """Seconds per student step per patch size, and the projected single- and multi-scale TS times."""
    if threads:
        torch.set_num_threads(int(threads))
    p = get_preset(preset_name)
    rule = stop_rule(p)
    rows = []
    for s in sizes:
        sec = _seconds_per_step(s, p.descriptor_dim, p.batch_size, steps)
        rows.append({"patch_size": s, "seconds_per_step": sec})
    own = next((r["seconds_per_step"] for r in rows if r["patch_size"] == p.patch_size), None)
    M = DEFAULT_STUDENTS
    for r in rows:
        r["ratio_to_own"] = None if own is None else r["seconds_per_step"] / own
        r["minutes_converged"] = [M * rule["min_steps"] * r["seconds_per_step"] / 60,
                                  M * rule["max_steps"] * r["seconds_per_step"] / 60]
    multi = [sum(r["minutes_converged"][i] for r in rows) for i in (0, 1)]
    return {"preset": p.name, "batch_size": p.batch_size, "threads": torch.get_num_threads(), "rule": rule,
            "steps_timed": steps, "rows": rows, "multi_scale_minutes": multi,
            "single_scale_minutes": next((r["minutes_converged"] for r in rows if r["patch_size"] == p.patch_size), None)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="seconds per TS student step per patch size")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--sizes", default="17,33,65")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args(argv)
    res = bench_students(a.preset, tuple(int(s) for s in a.sizes.split(",")), a.steps, a.threads)
    print(f"preset {res['preset']}, batch {res['batch_size']}, {res['threads']} threads; converged TS = "
          f"{DEFAULT_STUDENTS} students x {res['rule']['min_steps']}-{res['rule']['max_steps']} steps")
    print("| patch | s/step | ratio to own | converged TS, minutes |")
    print("|---|---|---|---|")
    for r in res["rows"]:
        ratio = "" if r["ratio_to_own"] is None else f"{r['ratio_to_own']:.2f}"
        lo, hi = r["minutes_converged"]
        print(f"| {r['patch_size']} | {r['seconds_per_step']:.3f} | {ratio} | {lo:.0f}-{hi:.0f} |")
    lo, hi = res["multi_scale_minutes"]
    print(f"multi-scale ({'+'.join(str(r['patch_size']) for r in res['rows'])}): {lo:.0f}-{hi:.0f} minutes")
    if a.json:
        from ..common.fileio import atomic_write_json

        atomic_write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
