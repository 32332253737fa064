"""Multi-scale maps (preset field ``extra_patch_sizes``): one complete run per patch size, whose
standardised maps are averaged, for glance-lite and for the TS baseline alike."""

from __future__ import annotations

import json

import numpy as np
import pytest

from glance_lite.common.presets import get_preset

from test_cli import _tiny_dataset


def test_extra_patch_sizes_are_checked():
    p = get_preset("smoke")
    with pytest.raises(ValueError, match="extra_patch_sizes"):
        p.replace(extra_patch_sizes=(17,))  # the run's own size
    with pytest.raises(ValueError, match="extra_patch_sizes"):
        p.replace(extra_patch_sizes=(21,))
    with pytest.raises(ValueError, match="extra_patch_sizes"):
        p.replace(extra_patch_sizes=(33, 33))


def test_multiscale_maps_are_the_mean_of_each_scale(tmp_path, monkeypatch):
    from glance_lite.evaluate.evaluation import evaluate_run
    from glance_lite.evaluate.metrics import au_pro
    from glance_lite.baselines.students import run_ts_baseline
    from glance_lite.train.training import fit, scale_dir

    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    root = _tiny_dataset(tmp_path / "ds", size=48)
    p = get_preset("smoke").replace(score_norm="zscore")
    single, multi = tmp_path / "single", tmp_path / "multi"
    fit(root, "widget", single, p, progress=False)
    fit(root, "widget", multi, p.replace(extra_patch_sizes=(33,)), progress=False)
    assert (scale_dir(multi, 33) / "model.pt").is_file()
    sub_cfg = json.loads((scale_dir(multi, 33) / "config.json").read_text())
    assert sub_cfg["preset"]["patch_size"] == 33 and sub_cfg["preset"]["extra_patch_sizes"] == []

    m1 = evaluate_run(single, root, "widget", progress=False, write_maps=False)
    h1 = dict(np.load(single / "head_maps.npz"))
    mm = evaluate_run(multi, root, "widget", progress=False, write_maps=False)
    hm = dict(np.load(multi / "head_maps.npz"))
    # the run's own scale is the single-scale run (same seed, same settings)
    assert mm["scales"]["p17"]["AU-PRO"] == pytest.approx(m1["AU-PRO"])
    assert mm["patch_sizes"] == [17, 33] and m1["scales"] is None
    # the combined map is the mean of the standardised maps of the two sizes
    evaluate_run(scale_dir(multi, 33), root, "widget", progress=False, write_maps=False,
                 preset=p.replace(patch_size=33))
    h33 = dict(np.load(scale_dir(multi, 33) / "head_maps.npz"))
    for head in ("iad", "dad"):
        np.testing.assert_allclose(hm[head], (h1[head] + h33[head]) / 2, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(hm[f"{head}_raw"], (h1[f"{head}_raw"] + h33[f"{head}_raw"]) / 2, rtol=1e-5, atol=1e-5)
    combined = p.lambda_s * hm["iad"] + (1 - p.lambda_s) * hm["dad"]
    assert mm["AU-PRO"] == pytest.approx(au_pro(combined, hm["masks"]))

    # the TS baseline of a multi-scale run is multi-scale too
    ts = run_ts_baseline(multi, root, "widget", progress=False)
    assert ts["patch_sizes"] == [17, 33] and set(ts["scales"]) == {"p17", "p33"}
    maps = np.load(multi / "ts_maps.npz")["maps"]
    sub = np.load(scale_dir(multi, 33) / "ts_maps.npz")["maps"]
    assert not np.allclose(maps, sub)
    assert ts["AU-PRO"] == pytest.approx(au_pro(maps, hm["masks"]))


def test_predict_on_a_multiscale_run_needs_every_scale(tmp_path, monkeypatch):
    import shutil

    from glance_lite.evaluate.evaluation import predict
    from glance_lite.common.fileio import GlanceError
    from glance_lite.train.training import fit, scale_dir

    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    root = _tiny_dataset(tmp_path / "ds", size=48)
    run = tmp_path / "multi"
    fit(root, "widget", run, get_preset("smoke").replace(extra_patch_sizes=(33,)), progress=False)
    recs = predict(run, [root / "widget" / "test" / "dent"], tmp_path / "pred", progress=False)
    assert len(recs) == 2 and all(np.isfinite(r["score"]) for r in recs)
    shutil.rmtree(scale_dir(run, 33))
    with pytest.raises(GlanceError, match="p33"):
        predict(run, [root / "widget" / "test" / "dent"], tmp_path / "pred2", progress=False)
