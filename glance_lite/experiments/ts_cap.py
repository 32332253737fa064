"""Does the cap of the TS stop rule weaken the control?  The same run's students under two caps.

The TS control's students stop when their held-out error levels off, or at the cap ``max_steps =
cap_factor * min_steps`` (:func:`glance_lite.baselines.students.stop_rule`, ``cap_factor`` 1.5).  At the
``cpu`` preset most students reach the cap with their error still falling (chapter 06 prints which), so
the question is whether a longer cap would give a stronger control.  For one fitted run this trains the
students again under each cap factor given, each in its own copy of the run (the fitted model is shared;
``students.pt`` and its checkpoints are not), scores each ensemble on the run's test split
(:func:`~glance_lite.baselines.students.evaluate_students`), and writes one JSON file with, per cap, the
TS metrics, each student's stop step and what stopped it, and the seconds of student training.  Every
copy is resumable: a finished one is re-scored, not retrained.

Usage::

    python -m glance_lite.experiments.ts_cap data/runs/cpu-offline-cable --data data/offline \\
        --category cable --caps 1.5,3 --work data/ts_cap --out glance_lite/results/ts_cap/cpu-offline-cable.json

Its result is cited on the errata page and in :doc:`/notebooks/06_mvtec_ad`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..common.fileio import GlanceError, atomic_write_json
from ..common.presets import hardware_info
from ..train.training import git_commit

__all__ = ["copy_run", "cap_row", "main"]


def copy_run(run: Path, dst: Path) -> Path:
    """``dst`` holding the files of the fitted ``run`` (not its sub-folders: no checkpoints, no students)."""
    if not (run / "model.pt").is_file():
        raise GlanceError(f"{run}: not a finished run (no model.pt)")
    dst.mkdir(parents=True, exist_ok=True)
    for f in run.iterdir():
        if f.is_file() and not f.name.startswith(("students", "metrics_ts", "ts_maps")) and not (dst / f.name).exists():
            shutil.copy2(f, dst / f.name)
    return dst


def cap_row(work: Path, data: Path, category: str, cap_factor: float, progress: bool = False) -> dict[str, Any]:
    """Train (or reuse) the students of the run copy ``work`` under ``cap_factor`` and score them."""
    from ..baselines import students

    t0 = time.perf_counter()
    students.fit_students(work, data, category, progress=progress, cap_factor=cap_factor)
    fit_s = time.perf_counter() - t0
    m = students.evaluate_students(work, data, category, progress=progress)
    info = m["students"]  # the ensemble's settings, curves and seconds, as evaluate_students recorded them
    rule = info["settings"]["rule"]
    curves = info.get("heldout_curves") or []
    why = [students.stop_reason(c, rule) for c in curves]
    return {"cap_factor": float(cap_factor), "rule": rule, "AU-PRO": m["AU-PRO"],
            "pixel_AUROC": m["pixel_AUROC"], "image_AUROC": m["image_AUROC"],
            "stop_steps": [w[0] for w in why], "stopped_by": [w[1] for w in why],
            "still_falling": [w[2] for w in why], "heldout_final": [c["loss"][-1] for c in curves],
            "student_seconds": info.get("student_seconds"),
            "student_seconds_this_call": round(fit_s, 1)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m glance_lite.experiments.ts_cap", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a fitted run folder (model.pt)")
    ap.add_argument("--data", type=Path, required=True, help="the dataset root of the run")
    ap.add_argument("--category", required=True)
    ap.add_argument("--caps", default="1.5,3", help="cap factors, comma-separated (default 1.5,3)")
    ap.add_argument("--work", type=Path, required=True, help="folder for one copy of the run per cap")
    ap.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    try:
        caps = [float(c) for c in a.caps.split(",") if c.strip()]
        if not caps or any(not c >= 1 for c in caps):
            raise GlanceError(f"--caps: need factors >= 1, got {a.caps!r}")
        rows = []
        for c in caps:
            work = copy_run(a.run, a.work / f"cap-{c:g}")
            rows.append(cap_row(work, a.data, a.category, c, progress=not a.quiet))
            print(f"cap {c:g}: TS AU-PRO {rows[-1]['AU-PRO']:.3f}, stop steps {rows[-1]['stop_steps']} "
                  f"({', '.join(rows[-1]['stopped_by'])})")
    except GlanceError as e:
        print(f"ts_cap: error: {e}", file=sys.stderr)
        return 1
    atomic_write_json(a.out, {"written_by": "python -m glance_lite.experiments.ts_cap",
                              "command": "python -m glance_lite.experiments.ts_cap " + " ".join(sys.argv[1:] if argv is None else argv),
                              "run": str(a.run), "category": a.category, "git_commit": git_commit(),
                              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "hardware": hardware_info(),
                              "caps": rows})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
