"""The local-only controls of a fitted run, and the strongest of them: what glance-lite is compared with.

The paper's claim is that global context beats looking at the patch alone.  A comparison supports it
only against a *fair* local-only control: one that sees the same data, the same Local-Net descriptor,
the same scoring grid and the same maps, and that is not weakened by being trained less.  Two are run
on every fitted run:

* ``ts`` -- the TS baseline (Uninformed Students, :mod:`glance_lite.baselines.students`), its students
  trained until their held-out error stops falling, with at least the joint stage's optimiser steps;
* ``knn`` -- nearest neighbours on the run's own Local-Net descriptor (:mod:`glance_lite.baselines.knn`),
  which has nothing to train.

Every "glance - local" figure uses the **strongest** of them on the metric compared
(:func:`strongest`): a margin over the weaker control would overstate what the global context adds.

Used in :doc:`/notebooks/06_mvtec_ad` and by ``glance-lite reproduce`` / ``validate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..common.presets import Preset

__all__ = ["CONTROLS", "SUMMARY_KEYS", "run_local_controls", "converged_ts", "strongest", "summary"]

CONTROLS = ("ts", "knn")
"""The local-only controls, in the order they run."""

SUMMARY_KEYS = ("image_AUROC", "pixel_AUROC", "AU-PRO")
"""The metrics every control reports (anomalib's names)."""


def run_local_controls(run: str | Path, data_root: str | Path, category: str, preset: Preset | None = None,
                       progress: bool = True, device: str | None = None,
                       which: tuple[str, ...] = CONTROLS) -> dict[str, dict[str, Any]]:
    """Run each control of ``which`` on a fitted run; returns ``{name: its results file's dict}``
    (``metrics_ts.json``, ``metrics_knn.json``).  ``preset`` gives the scoring fields."""
    from .knn import evaluate_knn
    from .students import run_ts_baseline

    out: dict[str, dict[str, Any]] = {}
    for name in which:
        if name == "ts":
            out[name] = run_ts_baseline(run, data_root, category, progress=progress, device=device, preset=preset)
        elif name == "knn":
            out[name] = evaluate_knn(run, data_root, category, progress=progress, device=device, preset=preset)
        else:
            raise ValueError(f"unknown control {name!r}; choose among {CONTROLS}")
    return out


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The part of a control's results file that a ``metrics.json`` or a validation row keeps: the three
    metrics, and for TS the rule, the stop steps and the held-out curves of its students."""
    out = {k: result.get(k) for k in SUMMARY_KEYS}
    st = result.get("students")
    if st:
        out["stop_steps"] = st.get("stop_steps")
        out["heldout_final"] = [c["loss"][-1] for c in st.get("heldout_curves") or []] or None
        out["heldout_curves"] = st.get("heldout_curves")
        out["rule"] = (st.get("settings") or {}).get("rule")
    if "k" in result:
        out.update(k=result["k"], bank_size=result.get("bank_size"))
    return out


def converged_ts(result: dict[str, Any] | None) -> bool:
    """Whether a TS result (``metrics_ts.json`` or its :func:`summary`) comes from students trained by the
    held-out stop rule: it records stop steps and a rule of kind ``heldout-plateau``."""
    r = result or {}
    st = r.get("students") or r
    rule = st.get("rule") or (st.get("settings") or {}).get("rule") or {}
    return bool(st.get("stop_steps")) and rule.get("kind") == "heldout-plateau"


def strongest(controls: dict[str, dict[str, Any]], metric: str = "AU-PRO") -> tuple[str | None, float | None]:
    """The control with the highest ``metric`` among those that have it: ``(name, value)``, or
    ``(None, None)`` when none has it.  Ties go to the first in :data:`CONTROLS` order.  A TS whose
    students did not train to convergence (:func:`converged_ts`) is not a fair control and is skipped."""
    best: tuple[str | None, float | None] = (None, None)
    for name in sorted(controls, key=lambda n: CONTROLS.index(n) if n in CONTROLS else len(CONTROLS)):
        if name == "ts" and not converged_ts(controls[name]):
            continue
        v = (controls[name] or {}).get(metric)
        if v is not None and (best[1] is None or float(v) > best[1]):
            best = (name, float(v))
    return best
