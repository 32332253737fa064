"""How much the context predicts, per validation source: :mod:`glance_lite.evaluate.context` on the fitted
runs that ``glance-lite validate`` left behind, written to one results file (chapter 08).

    python -m glance_lite.experiments.context_check \\
        --validation glance_lite/results/validation/cpu-seed3/validation.json [more files] \\
        --out glance_lite/results/context/cpu-seed3.json

Each finished row whose run folder is still on disk gives one entry: its source, the R² of ``Z_g`` for
the IAD target and of the position mean (on the defect-free patches of the source's test split, never a
training image), and, copied from the row, the AU-PRO of glance-lite, of each head alone and of TS.
Rows whose run folder is gone are listed under ``skipped``.  The file records the command, the date,
the commit and the machine.  No test split of a real category is read that ``validate`` did not read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..common.fileio import atomic_write_json
from ..common.presets import hardware_info
from ..evaluate.context import context_r2_of_run
from .validation import finished_rows

__all__ = ["context_rows", "main"]

_COPIED = ("AU-PRO", "iad_only_AU-PRO", "dad_only_AU-PRO", "ts_AU-PRO")


def context_rows(validation_files: Sequence[str | Path], max_images: int | None = None,
                 progress: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """``(rows, skipped)`` for every finished row of the validation files (see the module docstring)."""
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for f in validation_files:
        v = json.loads(Path(f).read_text())
        name = v.get("preset_fields", {}).get("name", Path(f).parent.name)
        seed = v.get("preset_fields", {}).get("seed")
        for r in finished_rows(v.get("rows", [])):
            run = Path(r.get("run", ""))
            if not (run / "model.pt").is_file():
                skipped.append({"variant": name, "source": r.get("source", "?"), "why": f"no fitted run at {run}"})
                continue
            t0 = time.perf_counter()
            c = context_r2_of_run(run, r["data_root"], r["category"], max_images=max_images, progress=progress)
            rows.append({"variant": name, "seed": seed, "source": r["source"], **c,
                         **{k: r.get(k) for k in _COPIED}, "seconds": round(time.perf_counter() - t0, 1)})
    return rows, skipped


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m glance_lite.experiments.context_check", description=__doc__.split("\n")[0])
    ap.add_argument("--validation", nargs="+", required=True, help="validation.json files whose runs are on disk")
    ap.add_argument("--out", required=True, help="results file to write (JSON)")
    ap.add_argument("--max-images", type=int, default=None, help="at most this many test images per source")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    rows, skipped = context_rows(a.validation, a.max_images, progress=not a.quiet)
    if not rows:
        print(f"context_check: no fitted run found ({len(skipped)} rows skipped)", file=sys.stderr)
        return 1
    from ..train.training import git_commit

    out = {"written_by": "python -m glance_lite.experiments.context_check",
           "command": "python -m glance_lite.experiments.context_check " + " ".join(
               [f"--validation {' '.join(Path(x).as_posix() for x in a.validation)}"]
               + ([f"--max-images {a.max_images}"] if a.max_images else [])),
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git_commit(), "hardware": hardware_info(),
           "patches": "grid patches of the test split that miss the ground truth", "rows": rows, "skipped": skipped}
    atomic_write_json(a.out, out)
    for r in rows:
        print(f"{r['variant']:>12} {r['source']:<28} R2 context {r['r2_context']:+.3f}  position {r['r2_position']:+.3f}"
              f"  (training images: {r.get('r2_context_train', float('nan')):+.3f}, {r.get('r2_position_train', float('nan')):+.3f})"
              f"  glance {r['AU-PRO']:.3f}  TS {r['ts_AU-PRO'] if r['ts_AU-PRO'] is None else round(r['ts_AU-PRO'], 3)}")
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
