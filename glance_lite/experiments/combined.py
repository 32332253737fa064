"""Our extension, apart from the paper's method: global context *on top of* a strong local detector.

The nearest-neighbour control (:mod:`glance_lite.baselines.knn`) judges a patch by its Local-Net
descriptor alone; glance-lite's two heads judge it against what the rest of the image predicts
(Eq. 11-13).  If the two see different anomalies, their sum should beat both.  On one fitted run::

    s(x) = (s_NN(x) - mu_NN) / sigma_NN  +  w * s_glance(x)

where ``s_NN`` is the nearest-neighbour map, ``mu_NN, sigma_NN`` the mean and standard deviation of a
normal patch's score (measured on held-out training images, ``metrics_knn.json``'s ``score_stats``),
and ``s_glance = lambda_s s_IAD + (1 - lambda_s) s_DAD`` the run's headline map, whose heads are already
standardised on training images by the preset's score normalisation (``position`` for ``cpu``).  Both
maps come from the same grid and IDW, so their sum is the IDW map of the summed patch scores.
``w = 0`` is the nearest-neighbour control itself.

The weight ``w`` is a setting, so it is chosen on the validation protocol (the offline test splits,
which are fair to tune on), never on MVTec AD's test split: :func:`sweep` scores each candidate on
every run given, and :func:`choose` picks the weight with the best mean AU-PRO over the validation runs.

Used in :doc:`/notebooks/06_mvtec_ad`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..common.fileio import GlanceError, atomic_write_json
from ..common.presets import hardware_info
from ..train.training import git_commit

__all__ = ["WEIGHTS", "combined_maps", "sweep", "choose", "main"]

WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
"""The candidate weights of the global map. ours."""


def _read(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """(glance map, standardised NN map, masks, labels) of a run scored by evaluate and knn."""
    from ..baselines.test_split import load_maps_npz

    run = Path(run)
    try:
        m = json.loads((run / "metrics.json").read_text())
        k = json.loads((run / "metrics_knn.json").read_text())
    except (OSError, ValueError) as e:
        raise GlanceError(f"{run}: needs metrics.json and metrics_knn.json (glance-lite evaluate, knn): {e}") from e
    st = k.get("score_stats") or {}
    if st.get("mean") is None:
        raise GlanceError(f"{run / 'metrics_knn.json'}: has no score_stats (too few training images, or an older file)")
    with np.load(run / "head_maps.npz") as h:
        lam = float(m["lambda_s"])
        glance = lam * h["iad"] + (1 - lam) * h["dad"]
        paths = [str(p) for p in h["paths"]]
    nn = load_maps_npz(run / "knn_maps.npz")
    if nn["maps"].shape != glance.shape or [str(p) for p in nn["paths"]] != paths:
        raise GlanceError(f"{run}: knn_maps.npz and head_maps.npz hold different test images; score both again")
    return glance, (nn["maps"] - st["mean"]) / st["std"], nn["masks"], nn["labels"]


def combined_maps(run: str | Path, weight: float) -> np.ndarray:
    """``(N, H, W)`` maps of the standardised nearest-neighbour map plus ``weight`` times the glance map."""
    glance, nn, _, _ = _read(Path(run))
    return nn + float(weight) * glance


def sweep(runs: Iterable[str | Path], weights: Iterable[float] = WEIGHTS) -> dict[str, dict[str, Any]]:
    """``{run name: {"weights": {w: AU-PRO}, "pixel_AUROC": {w: ...}, "glance": AU-PRO}}`` for each run."""
    from ..evaluate.metrics import au_pro, pixel_auroc

    out: dict[str, dict[str, Any]] = {}
    for run in runs:
        glance, nn, masks, _ = _read(Path(run))
        if masks is None:
            raise GlanceError(f"{run}: has no ground-truth masks")
        row: dict[str, Any] = {"AU-PRO": {}, "pixel_AUROC": {}, "glance AU-PRO": au_pro(glance, masks)}
        for w in weights:
            maps = nn + float(w) * glance
            row["AU-PRO"][f"{w:g}"] = au_pro(maps, masks)
            row["pixel_AUROC"][f"{w:g}"] = pixel_auroc(maps, masks)
        out[Path(run).name] = row
    return out


def choose(validation: dict[str, dict[str, Any]]) -> tuple[str, float]:
    """The weight (its key) with the best mean AU-PRO over the validation runs, and that mean."""
    if not validation:
        raise GlanceError("no validation runs to choose the weight on")
    keys = list(next(iter(validation.values()))["AU-PRO"])
    means = {k: float(np.mean([r["AU-PRO"][k] for r in validation.values()])) for k in keys}
    best = max(keys, key=lambda k: means[k])
    return best, means[best]


def main(argv: list[str] | None = None) -> int:
    """``python -m glance_lite.experiments.combined --validation RUN... --test RUN... --out FILE``."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--validation", nargs="+", required=True, help="run folders the weight is chosen on")
    ap.add_argument("--test", nargs="*", default=[], help="run folders the chosen weight is reported on")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    try:
        val = sweep(a.validation)
        best, mean = choose(val)
        test = sweep(a.test) if a.test else {}
    except GlanceError as e:
        print(f"combined: error: {e}")
        return 1
    res = {"weights": [float(w) for w in WEIGHTS], "chosen_weight": float(best), "validation_mean_AU-PRO": mean,
           "validation": val, "test": {k: {"AU-PRO": v["AU-PRO"][best], "pixel_AUROC": v["pixel_AUROC"][best],
                                           "nn AU-PRO": v["AU-PRO"]["0"], "glance AU-PRO": v["glance AU-PRO"]}
                                       for k, v in test.items()},
           "hardware": hardware_info(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git_commit(),
           "command": " ".join(["python -m glance_lite.experiments.combined", *map(str, sys.argv[1:] if argv is None else argv)]),
           "written_by": "python -m glance_lite.experiments.combined"}
    atomic_write_json(a.out, res)
    print(json.dumps({"chosen_weight": res["chosen_weight"], "test": res["test"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
