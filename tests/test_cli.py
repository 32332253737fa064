"""The glance-lite command line: one-line errors with non-zero exit, and an end-to-end smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

from glance_lite.cli import main


def _tiny_dataset(root: Path, n_train: int = 6, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    cat = root / "widget"
    (cat / "train" / "good").mkdir(parents=True)
    (cat / "test" / "good").mkdir(parents=True)
    (cat / "test" / "dent").mkdir(parents=True)
    (cat / "ground_truth" / "dent").mkdir(parents=True)
    base = (np.indices((size, size)).sum(0) % 8 < 4).astype(np.uint8) * 120 + 60
    def img():
        a = np.clip(base[..., None] + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
        return a
    for i in range(n_train):
        Image.fromarray(img()).save(cat / "train" / "good" / f"{i:03d}.png")
    for i in range(2):
        Image.fromarray(img()).save(cat / "test" / "good" / f"{i:03d}.png")
        a = img()
        a[10:20, 12:22] = 250
        m = np.zeros((size, size), np.uint8)
        m[10:20, 12:22] = 255
        Image.fromarray(a).save(cat / "test" / "dent" / f"{i:03d}.png")
        Image.fromarray(m).save(cat / "ground_truth" / "dent" / f"{i:03d}_mask.png")
    return root


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, f"expected one line, got: {err!r}"
    return err


def test_inspect_prints_json(tmp_path, capsys):
    root = _tiny_dataset(tmp_path)
    assert main(["data", "inspect", str(root), "widget"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["train"] == 6 and d["test"] == 4 and d["masks"] == 2
    assert d["defects"] == {"dent": 2, "good": 2}


def test_inspect_broken_dataset_one_line(tmp_path, capsys):
    root = _tiny_dataset(tmp_path)
    (root / "widget" / "test" / "dent" / "000.png").write_bytes(b"not a png at all")
    assert main(["data", "inspect", str(root), "widget"]) != 0
    assert "000.png" in _err(capsys)


def test_wrong_category_and_missing_run(tmp_path, capsys):
    root = _tiny_dataset(tmp_path)
    assert main(["data", "inspect", str(root), "gadget"]) != 0
    assert "gadget" in _err(capsys)
    assert main(["evaluate", str(tmp_path / "nope"), "--data", str(root), "--category", "widget"]) != 0
    assert "nope" in _err(capsys)
    assert main(["predict", str(tmp_path / "nope"), str(root), "--out", str(tmp_path / "o")]) != 0
    _err(capsys)


def test_fit_evaluate_predict_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    root = _tiny_dataset(tmp_path / "ds")
    run = tmp_path / "run"
    assert main(["fit", "--data", str(root), "--category", "widget", "--out", str(run), "--preset", "smoke", "--quiet"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["preset"]["name"] == "smoke" and cfg["teacher"] in ("resnet18", "efficientnet_lite0")
    assert (run / "model.pt").is_file() and (run / "history.json").is_file()
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(root), "--category", "widget", "--quiet"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    for k in ("image_AUROC", "pixel_AUROC", "AU-PRO"):
        assert 0.0 <= m[k] <= 1.0
    assert m["preset"] == "smoke" and "hardware" in m and m["seconds_per_image"] > 0
    import tifffile
    amap = tifffile.imread(run / "maps" / "test" / "dent" / "000.tiff")
    assert amap.dtype == np.float32 and amap.shape == (48, 48) and np.isfinite(amap).all()
    assert (run / "overlays" / "test" / "dent" / "000.png").is_file()
    # wrong category for this run
    assert main(["evaluate", str(run), "--data", str(root), "--category", "gadget"]) != 0
    _err(capsys)
    # predict on a folder of unlabelled images, and a clear error for an unreadable one
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(root / "widget" / "test" / "dent"), "--out", str(out), "--quiet"]) == 0
    assert (out / "000.tiff").is_file() and (out / "predictions.json").is_file()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    capsys.readouterr()
    assert main(["predict", str(run), str(bad), "--out", str(out), "--quiet"]) != 0
    assert "bad.png" in _err(capsys)
    # re-running fit on a finished run resumes instantly and changes nothing
    from glance_lite.models.model import GlanceModel

    before = GlanceModel.load(run).state_dict()
    assert main(["fit", "--data", str(root), "--category", "widget", "--out", str(run), "--preset", "smoke", "--quiet"]) == 0
    after = GlanceModel.load(run).state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_set_overrides_are_typed_and_checked():
    from glance_lite.common.presets import parse_overrides

    o = parse_overrides(["global_steps=30", "lr=1e-4", "global_channels=8,8,16,16,16,32,32",
                         "max_test_images=none", "teacher=efficientnet_lite0"])
    assert o == {"global_steps": 30, "lr": 1e-4, "global_channels": (8, 8, 16, 16, 16, 32, 32),
                 "max_test_images": None, "teacher": "efficientnet_lite0"}
    # an optional count takes a whole number, or none
    assert parse_overrides(["max_train_images=5"]) == {"max_train_images": 5}
    # a field that was measured, not adopted and removed from the package: refused, saying so
    with pytest.raises(ValueError, match="global_lr was measured, not adopted and removed"):
        parse_overrides(["global_lr=1e-3"])
    assert parse_overrides(["pretrained=none", "score_norm=position"]) == {"pretrained": "none",
                                                                             "score_norm": "position"}
    for bad in (["global_step=3"], ["global_steps"], ["global_steps=lots"], ["name=x"], ["patch_size=none"],
                ["pretrained=maybe"], ["score_norm=minmax"]):
        with pytest.raises(ValueError, match="--set"):
            parse_overrides(bad)


def test_fit_with_set_and_name_records_the_variant(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    root = _tiny_dataset(tmp_path / "ds")
    run = tmp_path / "run"
    args = ["fit", "--data", str(root), "--category", "widget", "--out", str(run), "--preset", "smoke", "--quiet"]
    assert main(args + ["--set", "global_steps=3", "--name", "smoke-short"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["preset"]["name"] == "smoke-short" and cfg["preset"]["global_steps"] == 3
    capsys.readouterr()
    # a typo, a bad value, or a variant posing as a built-in preset: one line, non-zero exit
    assert main(args + ["--set", "global_stepz=3"]) != 0 and "global_stepz" in _err(capsys)
    assert main(args + ["--set", "global_steps=3", "--name", "cpu"]) != 0 and "--name" in _err(capsys)
    assert main(args + ["--name", "../escape"]) != 0 and "--name" in _err(capsys)
    # a removed setting: one line naming it, and where its result is kept
    for removed in ("global_lr=1e-3", "global_holes=4", "global_readout=hole"):
        assert main(args + ["--set", removed, "--name", "x"]) != 0
        err = _err(capsys)
        assert removed.split("=")[0] in err and "removed from the package" in err and "Settings we tried" in err


def test_readme_commands_parse():
    # every `glance-lite ...` line of the README is accepted by the argument parser
    import shlex

    from glance_lite.cli import build_parser

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    lines = [ln.split("#")[0].strip() for ln in readme.splitlines() if ln.startswith("glance-lite ")]
    assert len(lines) >= 5
    for ln in lines:
        build_parser().parse_args(shlex.split(ln)[1:])


def test_scoring_statistics_follow_the_grid_stride(tmp_path, monkeypatch):
    # the position normaliser has one mean per grid position: statistics fitted at one stride must be
    # refitted, not reused (which raised a ScoringError), when the run is scored at another
    from glance_lite.common.presets import get_preset
    from glance_lite.evaluate.evaluation import evaluate_run

    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    root = _tiny_dataset(tmp_path / "ds", n_train=7)
    run = tmp_path / "run"
    p = get_preset("smoke").replace(name="smoke-pos", score_norm="position", iad_metric="mahalanobis")
    assert main(["fit", "--data", str(root), "--category", "widget", "--out", str(run), "--preset", "smoke",
                 "--set", "score_norm=position", "--set", "iad_metric=mahalanobis", "--name", "smoke-pos",
                 "--quiet"]) == 0
    stats_file = run / "score_stats-mahalanobis.json"
    a = evaluate_run(run, root, "widget", progress=False, overlays=0, preset=p)
    assert json.loads(stats_file.read_text())["stride"] == p.score_stride
    b = evaluate_run(run, root, "widget", progress=False, overlays=0, preset=p.replace(score_stride=4))
    assert json.loads(stats_file.read_text())["stride"] == 4
    assert b["preset_fields"]["score_stride"] == 4
    # and back: the first stride's statistics are fitted again, and score exactly as before
    c = evaluate_run(run, root, "widget", progress=False, overlays=0, preset=p)
    assert json.loads(stats_file.read_text())["stride"] == p.score_stride
    assert c["AU-PRO"] == a["AU-PRO"] and c["normalisations"] == a["normalisations"]


def test_evaluation_reports_every_normalisation_fitted_on_training_images(tmp_path, capsys, monkeypatch):
    import glance_lite.score.scoring as scoring

    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    root = _tiny_dataset(tmp_path / "ds", n_train=7)
    run = tmp_path / "run"
    assert main(["fit", "--data", str(root), "--category", "widget", "--out", str(run), "--preset", "smoke",
                 "--set", "score_norm=position", "--name", "smoke-pos", "--quiet"]) == 0
    seen = []
    real = scoring.fit_score_normaliser

    def spy(model, imgs, *a, **k):
        seen.append(imgs.clone())
        return real(model, imgs, *a, **k)

    monkeypatch.setattr(scoring, "fit_score_normaliser", spy)
    assert main(["evaluate", str(run), "--data", str(root), "--category", "widget", "--quiet"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["normalisations"]) == {"none", "zscore", "position"} and m["score_norm"] == "position"
    assert m["AU-PRO"] == m["normalisations"]["position"]["AU-PRO"]
    assert m["heads"]["iad_only"] == m["normalisations"]["position"]["iad_only"]
    # the normaliser saw the 7 training images (16 at most, spread over the set), no test image
    from glance_lite.data.mvtec import find_category
    from glance_lite.common.presets import get_preset
    from glance_lite.train.training import load_train_images

    train = load_train_images(find_category(root, "widget"), get_preset("smoke"))
    assert len(seen) == 1 and torch.equal(seen[0], train)
    stats = json.loads((run / "score_stats.json").read_text())
    assert stats["method"] == "position" and stats["n_images"] == 7
    # predict uses the same statistics (read back, not refitted)
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(root / "widget" / "test" / "dent"), "--out", str(out), "--quiet"]) == 0
    assert len(seen) == 1


def test_evaluation_fields_do_not_ask_for_a_new_fit(tmp_path, monkeypatch):
    # score_norm, lambda_s, the grid and IDW only change how a run is scored: fit resumes the same
    # run and evaluate_run(preset=) scores it with the new fields; a training field still refuses
    from glance_lite.evaluate.evaluation import evaluate_run
    from glance_lite.common.fileio import GlanceError
    from glance_lite.common.presets import get_preset
    from glance_lite.train.training import fit

    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    root = _tiny_dataset(tmp_path / "ds")
    run = tmp_path / "run"
    p = get_preset("smoke")
    fit(root, "widget", run, p, progress=False)
    from glance_lite.models.model import GlanceModel

    before = GlanceModel.load(run).state_dict()
    hist = (run / "history.json").read_text()
    q = p.replace(score_norm="position", lambda_s=1.0)
    fit(root, "widget", run, q, progress=False)
    after = GlanceModel.load(run).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and (run / "history.json").read_text() == hist
    m = evaluate_run(run, root, "widget", progress=False, write_maps=False, preset=q)
    assert m["score_norm"] == "position" and m["lambda_s"] == 1.0
    assert m["AU-PRO"] == m["normalisations"]["position"]["iad_only"]["AU-PRO"]
    with pytest.raises(GlanceError, match="another preset"):
        fit(root, "widget", run, p.replace(global_steps=p.global_steps + 1), progress=False)
    with pytest.raises(GlanceError, match="training settings"):
        evaluate_run(run, root, "widget", progress=False, write_maps=False, preset=p.replace(lr=1.0))


def test_ts_baseline_accepts_a_run_rescored_with_other_evaluation_fields(tmp_path, monkeypatch):
    # the students of a run stay valid when only the scoring settings of its preset change
    from glance_lite.evaluate.evaluation import evaluate_run
    from glance_lite.common.presets import get_preset
    from glance_lite.baselines.students import run_ts_baseline
    from glance_lite.train.training import fit

    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    root = _tiny_dataset(tmp_path / "ds")
    run = tmp_path / "run"
    p = get_preset("smoke")
    fit(root, "widget", run, p, progress=False)
    first = run_ts_baseline(run, root, "widget", progress=False)
    q = p.replace(score_norm="zscore")
    fit(root, "widget", run, q, progress=False)  # resumes; the run now carries q's scoring fields
    evaluate_run(run, root, "widget", progress=False, write_maps=False, preset=q)
    again = run_ts_baseline(run, root, "widget", progress=False)
    assert again["AU-PRO"] == first["AU-PRO"]
