"""Our extension (global heads on top of the nearest-neighbour control): the sum is what it says, the
weight is chosen on the validation runs only, and mismatched files are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from glance_lite.baselines.test_split import save_maps_npz
from glance_lite.common.fileio import GlanceError
from glance_lite.experiments.combined import choose, combined_maps, main, sweep


def _run(folder, seed, nn_good=True):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    masks = np.zeros((4, 16, 16), np.uint8)
    masks[2:, 4:9, 4:9] = 1
    paths = [f"img{i}.png" for i in range(4)]
    iad, dad = rng.normal(size=(2, 4, 16, 16)).astype(np.float32)
    iad[masks == 1] += 3.0  # the global heads see the defect ...
    nn = rng.normal(size=(4, 16, 16)).astype(np.float32) * 0.5 + 10
    if nn_good:
        nn[masks == 1] += 1.0  # ... and so, more weakly, does the local control
    with open(folder / "head_maps.npz", "wb") as fh:
        np.savez(fh, iad=iad, dad=dad, masks=masks, labels=np.array([0, 0, 1, 1]), paths=np.array(paths))
    save_maps_npz(folder / "knn_maps.npz", nn, masks, np.array([0, 0, 1, 1]), ["good"] * 2 + ["dent"] * 2, paths)
    (folder / "metrics.json").write_text(json.dumps({"lambda_s": 0.8}))
    (folder / "metrics_knn.json").write_text(json.dumps({"score_stats": {"mean": 10.0, "std": 0.5}}))
    return folder, iad, dad, nn


def test_combined_map_is_the_standardised_sum(tmp_path):
    run, iad, dad, nn = _run(tmp_path / "a", 0)
    got = combined_maps(run, 0.5)
    np.testing.assert_allclose(got, (nn - 10.0) / 0.5 + 0.5 * (0.8 * iad + 0.2 * dad), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(combined_maps(run, 0.0), (nn - 10.0) / 0.5, rtol=1e-6)


def test_weight_is_chosen_on_validation_and_reported_on_test(tmp_path):
    val = [_run(tmp_path / f"v{i}", i)[0] for i in range(2)]
    test = [_run(tmp_path / "t", 9)[0]]
    sw = sweep(val)
    best, mean = choose(sw)
    assert mean == max(np.mean([r["AU-PRO"][k] for r in sw.values()]) for k in sw["v0"]["AU-PRO"])
    assert best != "0"  # the heads see the defect better than the weak local control here
    out = tmp_path / "combined.json"
    assert main(["--validation", *map(str, val), "--test", *map(str, test), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["chosen_weight"] == float(best) and res["test"]["t"]["AU-PRO"] == sweep(test)["t"]["AU-PRO"][best]


def test_mismatched_or_missing_files_are_refused(tmp_path):
    run, *_ = _run(tmp_path / "a", 0)
    (run / "metrics_knn.json").write_text(json.dumps({}))
    with pytest.raises(GlanceError, match="score_stats"):
        combined_maps(run, 1.0)
    run2, *_ = _run(tmp_path / "b", 1)
    d = dict(np.load(run2 / "knn_maps.npz"))
    save_maps_npz(run2 / "knn_maps.npz", d["maps"], d["masks"], d["labels"], d["defects"], list(d["paths"][::-1]))
    with pytest.raises(GlanceError, match="different test images"):
        combined_maps(run2, 1.0)
    with pytest.raises(GlanceError, match="metrics_knn"):
        combined_maps(tmp_path / "nope", 1.0)
