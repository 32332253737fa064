"""The validation protocol: held-out sets never read test/, exact masks, determinism, re-use, and an
end-to-end ``validate`` (smoke preset) that resumes without refitting."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glance_lite.experiments import validation as V
from glance_lite.cli import main
from glance_lite.common.fileio import DatasetError, GlanceError


def _fake_category(root: Path, n_train: int = 12, size: int = 64, name: str = "widget", grey: bool = False,
                   junk_test: bool = True) -> Path:
    """root/name/train/good with textured images; test/ and ground_truth/ hold only junk."""
    rng = np.random.default_rng(1)
    good = root / name / "train" / "good"
    good.mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n_train):
        base = 90 + 60 * np.sin(xx / 3.0 + i) * np.cos(yy / 5.0) + 40 * (xx / size)
        a = np.clip(base[..., None] + rng.normal(0, 10, (size, size, 3)) + [0, 20, -20], 0, 255).astype(np.uint8)
        Image.fromarray(a[..., 0] if grey else a).save(good / f"{i:03d}.png")
    if junk_test:
        for d in ("test/good", "test/crack", "ground_truth/crack"):
            (root / name / d).mkdir(parents=True)
            (root / name / d / "000.png").write_bytes(b"junk, not a png")
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _arr(path: Path) -> np.ndarray:
    return V._pixels(path).astype(np.int16)


def test_heldout_split_never_reads_test_and_is_exact(tmp_path, monkeypatch):
    src = _fake_category(tmp_path / "src")
    read: list[str] = []
    import glance_lite.data.mvtec as mv

    orig = mv.load_image
    monkeypatch.setattr(mv, "load_image", lambda p, s: (read.append(str(p)), orig(p, s))[1])
    test_dir = src / "widget" / "test"
    os.chmod(test_dir, 0)  # unreadable (when not running as root); its files are junk anyway
    try:
        data = V.make_heldout(src, "widget", tmp_path / "out", seed=3)
    finally:
        os.chmod(test_dir, 0o755)
    assert read and not any("/test/" in r or "ground_truth" in r for r in read)
    cat = data / "widget"
    train = sorted(p.name for p in (cat / "train" / "good").iterdir())
    held = sorted(p.name for p in (cat / "test" / "good").iterdir())
    all_train = sorted(p.name for p in (src / "widget" / "train" / "good").iterdir())
    assert len(held) == 2 and not set(train) & set(held) and sorted(train + held) == all_train
    man = json.loads((cat / "manifest.json").read_text())
    assert man["heldout"] == held and man["seed"] == 3 and man["version"] == V.HELDOUT_VERSION
    # a valid MVTec category; every defect type is present with one mask per image
    from glance_lite.data.mvtec import find_category

    c = find_category(data, "widget")
    assert c.has_masks and set(c.defects) == {"good", *V.DEFECT_TYPES}
    n_checked = 0
    for kind in V.DEFECT_TYPES:
        for img_p in sorted((cat / "test" / kind).glob("*.png")):
            s = next(x for x in man["samples"][kind] if x["file"] == img_p.name)
            clean = _arr(cat / "test" / "good" / s["source"])
            bad = _arr(img_p)
            mask = np.asarray(Image.open(cat / "ground_truth" / kind / f"{img_p.stem}_mask.png")) > 127
            assert mask.any() and bad.shape == clean.shape
            assert (bad[~mask] == clean[~mask]).all(), f"{img_p}: pixels changed outside the mask"
            assert np.abs(bad - clean)[mask].mean() >= V.MIN_MEAN_CHANGE
            n_checked += 1
    assert n_checked >= 5 and sum(man["counts"][f"test/{k}"] for k in V.DEFECT_TYPES) == n_checked


def test_heldout_is_deterministic_reused_and_independent_of_test(tmp_path, monkeypatch):
    src = _fake_category(tmp_path / "src")
    a = V.make_heldout(src, "widget", tmp_path / "a", seed=0)
    # the same source without any test/ or ground_truth/ folder gives the same bytes
    src2 = _fake_category(tmp_path / "src2", junk_test=False)
    b = V.make_heldout(src2, "widget", tmp_path / "b", seed=0)
    fa, fb = _files(a / "widget"), _files(b / "widget")
    fa.pop("manifest.json"), fb.pop("manifest.json")  # they name their source roots
    assert fa == fb and len(fa) > 15
    # an existing matching set is re-used as it is (nothing is drawn again)
    mt = (a / "widget" / "manifest.json").stat().st_mtime_ns
    monkeypatch.setattr(V, "synthetic_defect", lambda *a, **k: pytest.fail("redrawn"))
    assert V.make_heldout(src, "widget", tmp_path / "a", seed=0) == a
    assert (a / "widget" / "manifest.json").stat().st_mtime_ns == mt
    monkeypatch.undo()
    # another seed rebuilds it, with another held-out tenth or other defects
    V.make_heldout(src, "widget", tmp_path / "a", seed=1)
    assert json.loads((a / "widget" / "manifest.json").read_text())["seed"] == 1
    assert _files(a / "widget") != _files(b / "widget")
    # a folder it did not write is never overwritten
    foreign = tmp_path / "c" / "data" / "widget"
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="refusing"):
        V.make_heldout(src, "widget", tmp_path / "c")
    assert (foreign / "keep.txt").read_text() == "mine"


def test_grey_sources_stay_grey_and_small_categories_are_refused(tmp_path):
    src = _fake_category(tmp_path / "g", grey=True, name="screwish")
    data = V.make_heldout(src, "screwish", tmp_path / "out", per_type=2)
    for p in (data / "screwish" / "test").rglob("*.png"):
        assert Image.open(p).mode == "L"
    man = json.loads((data / "screwish" / "manifest.json").read_text())
    assert all(man["counts"][f"test/{k}"] <= 2 for k in V.DEFECT_TYPES)
    small = _fake_category(tmp_path / "s", n_train=9)
    with pytest.raises(GlanceError, match="at least 10"):
        V.make_heldout(small, "widget", tmp_path / "o2")


def test_synthetic_defect_drops_invisible_changes():
    flat = np.full((64, 64, 3), 128, np.uint8)  # a rotated disk of a flat image changes nothing
    res = V.synthetic_defect("rotated_crop", flat, lambda t: np.random.default_rng(t))
    assert res is None
    with pytest.raises(GlanceError, match="unknown"):
        V.synthetic_defect("scratch", flat, lambda t: np.random.default_rng(t))


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if ln.startswith("glance-lite: error")]
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    return lines[0]


def test_cli_bad_sources_one_line(tmp_path, capsys):
    src = _fake_category(tmp_path / "src")
    small = _fake_category(tmp_path / "small", n_train=5)
    out = str(tmp_path / "out")
    base = ["validate", "--out", out, "--preset", "smoke", "--quiet"]
    assert main(base + ["--source", f"{tmp_path / 'nope'}:widget"]) != 0
    assert "nope" in _err(capsys)
    assert main(base + ["--source", f"{src}:gadget"]) != 0
    assert "gadget" in _err(capsys)
    assert main(base + ["--source", "justonepart"]) != 0
    assert "justonepart" in _err(capsys)
    assert main(base + ["--source", f"{small}:widget"]) != 0
    assert "at least 10" in _err(capsys)
    assert not (tmp_path / "out").exists()


def test_parse_source_modes(tmp_path):
    from glance_lite.data.offline_data import make_offline

    off = make_offline(tmp_path / "off", size=32, n_train=1, n_test_good=1, n_test_defect=1)
    assert V.parse_source(f"{off}:brick").mode == "test"
    src = _fake_category(tmp_path / "src")
    s = V.parse_source(f"{src}:widget")
    assert s.mode == "heldout" and s.name == "src-widget-heldout"
    assert V.parse_source(f"{src}:widget:test").mode == "test"


def test_validate_end_to_end_and_resume(tmp_path, capsys, monkeypatch):
    from glance_lite.data.offline_data import make_offline
    from glance_lite.common.presets import get_preset

    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    off = make_offline(tmp_path / "off", size=64, n_train=6, n_test_good=2, n_test_defect=2)
    src = _fake_category(tmp_path / "src")
    broken = _fake_category(tmp_path / "broken", name="brick")  # test/ holds junk: fails at fit
    p = get_preset("smoke").replace(name="smoke-val", global_steps=2)
    out = tmp_path / "val"
    sources = [f"{off}:brick", f"{src}:widget", f"{broken}:brick:test"]
    rows = V.validate(sources, out, p, progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert "000.png" in rows[2]["error"]
    res = json.loads((out / "smoke-val" / "validation.json").read_text())
    assert res["preset_fields"]["global_steps"] == 2 and res["git_commit"] and res["hardware"]
    for r in res["rows"][:2]:
        assert math.isfinite(r["AU-PRO"]) and r["ts"] is not None and math.isfinite(r["ts"]["AU-PRO"])
        assert r["glance_minus_ts_AU-PRO"] == pytest.approx(r["AU-PRO"] - r["ts_AU-PRO"], abs=1e-6)
        assert r["iad_only_AU-PRO"] is not None and r["dad_only_AU-PRO"] is not None
        # both fair controls ran; glance - local is against the strongest of them
        assert r["controls_version"] == 2 and r["ts"]["stop_steps"] and r["knn"]["k"] == 1
        assert r["local_AU-PRO"] == max(r["ts_AU-PRO"], r["knn_AU-PRO"])
        assert r["glance_minus_local_AU-PRO"] == pytest.approx(r["AU-PRO"] - r["local_AU-PRO"], abs=1e-6)
    assert res["mean"]["n_sources"] == 2
    assert res["mean"]["AU-PRO"] == pytest.approx(np.mean([r["AU-PRO"] for r in res["rows"][:2]]), abs=1e-5)
    # lambda_s is chosen on this protocol: every row is scored at each value of the sweep, and the
    # sweep at the preset's own lambda_s is the row's headline
    for r in res["rows"][:2]:
        assert set(r["lambda_sweep"]) == {"0.0", "0.2", "0.4", "0.5", "0.6", "0.8", "1.0"}
        assert r["lambda_sweep"][f"{p.lambda_s:.1f}"] == pytest.approx(r["AU-PRO"], abs=1e-9)
        assert r["lambda_sweep"]["1.0"] == pytest.approx(r["iad_only_AU-PRO"], abs=1e-9)
    assert res["mean"]["lambda_sweep"]["0.5"] == pytest.approx(
        np.mean([r["lambda_sweep"]["0.5"] for r in res["rows"][:2]]), abs=1e-5)
    assert (out / "data" / "widget" / "manifest.json").is_file()
    # the held-out source trained on 90 % of train/good and was tested on the held-out tenth
    cfg = json.loads((Path(rows[1]["run"]) / "config.json").read_text())
    assert Path(cfg["data_root"]) == (out / "data").resolve()
    # the same sources again through the CLI: nothing is refitted or re-evaluated
    import glance_lite.evaluate.evaluation
    import glance_lite.train.training

    monkeypatch.setattr(glance_lite.train.training, "fit", lambda *a, **k: pytest.fail("refitted"))
    monkeypatch.setattr(glance_lite.evaluate.evaluation, "evaluate_run", lambda *a, **k: pytest.fail("re-evaluated"))
    capsys.readouterr()
    argv = ["validate", "--out", str(out), "--preset", "smoke", "--set", "global_steps=2", "--name", "smoke-val",
            "--quiet", "--source", sources[0], "--source", sources[1]]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| source |" in table and "off-brick-test" in table and "**mean**" in table
    again = json.loads((out / "smoke-val" / "validation.json").read_text())
    assert [r["AU-PRO"] for r in again["rows"]] == [r["AU-PRO"] for r in res["rows"][:2]]


def test_table_markdown_handles_missing_and_failed():
    rows = [{"source": "a", "mode": "test", "status": "ok", "AU-PRO": 0.5, "ts_AU-PRO": 0.4, "knn_AU-PRO": 0.3,
             "local_AU-PRO": 0.4, "glance_minus_local_AU-PRO": 0.1, "controls_version": V.CONTROLS_VERSION,
             "seconds": 3.0},
            {"source": "b", "mode": "heldout", "status": "failed", "error": "x"}]
    t = V.validation_table_markdown(rows).splitlines()
    assert len(t) == 5 and all(ln.startswith("|") and ln.endswith("|") for ln in t)
    assert "+0.100" in t[2] and "failed" in t[3] and "**mean** (1 sources)" in t[4]
    assert len({ln.count("|") for ln in t}) == 1


def test_table_markdown_reports_glance_minus_the_strongest_fair_control():
    head = ["source", "mode", "AU-PRO", "pixel AUROC", "image AUROC", "IAD-only AU-PRO", "DAD-only AU-PRO",
            "TS AU-PRO", "NN AU-PRO", "strongest local", "which", "glance − local AU-PRO"]
    fair = {"status": "ok", "controls_version": V.CONTROLS_VERSION}
    rows = [dict(fair, source="a", mode="test", **{"AU-PRO": 0.9, "ts_AU-PRO": 0.7, "knn_AU-PRO": 0.8,
                                                   "local_AU-PRO": 0.8, "glance_minus_local_AU-PRO": 0.1}),
            dict(fair, source="b", mode="test", **{"AU-PRO": 0.6, "ts_AU-PRO": 0.8, "knn_AU-PRO": 0.7,
                                                   "local_AU-PRO": 0.8, "glance_minus_local_AU-PRO": -0.2}),
            # written before the fair controls: its 200-step TS is not shown, and stays out of the means
            {"source": "c", "mode": "test", "status": "ok", "AU-PRO": 0.7, "ts_AU-PRO": 0.1,
             "glance_minus_ts_AU-PRO": 0.6}]
    lines = V.validation_table_markdown(rows).splitlines()
    cols = [c.strip() for c in lines[0].strip("|").split("|")]
    assert cols[: len(head)] == head and "glance − TS AU-PRO" not in cols

    def cells(i: int) -> dict[str, str]:
        return dict(zip(cols, (c.strip() for c in lines[i].strip("|").split("|"))))

    a, b, c, m = cells(2), cells(3), cells(4), cells(5)
    assert (a["strongest local"], a["which"], a["glance − local AU-PRO"]) == ("0.800", "NN", "+0.100")
    assert (b["strongest local"], b["which"], b["glance − local AU-PRO"]) == ("0.800", "TS", "-0.200")
    assert c["TS AU-PRO"] == c["strongest local"] == c["glance − local AU-PRO"] == "–" and c["AU-PRO"] == "0.700"
    assert m["TS AU-PRO"] == "0.750" and m["glance − local AU-PRO"] == "-0.050" and m["which"] == "2 with controls"
    assert m["AU-PRO"] == "0.733"


def test_a_variant_without_ts_borrows_it_only_from_the_same_local_net():
    from glance_lite.common.presets import get_preset
    from glance_lite.experiments.validation import borrow_ts

    base = get_preset("cpu")

    def res(preset, rows):
        return {"preset_fields": preset.to_dict(), "ts": any(r.get("ts_AU-PRO") is not None for r in rows),
                "rows": [dict(r, status="ok") for r in rows]}

    val = {
        "cpu": res(base, [{"source": "a", "AU-PRO": 0.80, "ts_AU-PRO": 0.70}, {"source": "b", "AU-PRO": 0.6, "ts_AU-PRO": 0.9}]),
        # joint stage only: same Local-Net, borrows TS source by source
        "longer": res(base.replace(global_steps=3000), [{"source": "a", "AU-PRO": 0.85}, {"source": "b", "AU-PRO": 0.7}]),
        # another Local-Net (fine-tuned longer): must not borrow
        "finetune": res(base.replace(finetune_steps=800), [{"source": "a", "AU-PRO": 0.9}]),
    }
    # a joint-stage setting since removed from the package, in a file written before: still the same Local-Net
    val["longer"]["preset_fields"]["dad_negatives"] = "stain+swap"
    # the same preset fields but other shipped weights (a longer distillation): must not borrow either
    val["other-weights"] = res(base.replace(global_steps=3000), [{"source": "a", "AU-PRO": 0.9, "teacher": "efficientnet_lite0",
                                                                   "local_net": {"kind": "shipped", "sha256": "f" * 64}}])
    out = borrow_ts(val)
    assert out["other-weights"]["rows"][0].get("ts_AU-PRO") is None
    rows = out["longer"]["rows"]
    assert [r["ts_AU-PRO"] for r in rows] == [0.70, 0.9] and {r["ts_from"] for r in rows} == {"cpu"}
    assert abs(rows[0]["glance_minus_ts_AU-PRO"] - 0.15) < 1e-9 and abs(rows[1]["glance_minus_ts_AU-PRO"] + 0.2) < 1e-9
    assert abs(out["longer"]["mean"]["ts_AU-PRO"] - 0.8) < 1e-9
    assert out["finetune"]["rows"][0].get("ts_AU-PRO") is None and "ts_from" not in out["finetune"]["rows"][0]
    assert val["longer"]["rows"][0].get("ts_AU-PRO") is None      # the input is left as it was
    assert out["cpu"]["rows"] == val["cpu"]["rows"]                 # rows with TS keep theirs


def test_rows_know_their_local_net_and_new_weights_get_new_runs(tmp_path, monkeypatch):
    import glance_lite.models.shipped as shipped
    from glance_lite.common.presets import get_preset

    p = get_preset("cpu")
    name = "localnet-p33-d128-efficientnet_lite0-t96"
    legacy = V.LEGACY_LOCAL_NETS[name]
    fields = p.to_dict()
    # a row written before rows recorded it: the first weights shipped under that name
    assert V.row_local_net({"teacher": "efficientnet_lite0"}, fields) == legacy
    assert V.row_local_net({"local_net": {"kind": "shipped", "sha256": "ab" * 32}}, fields) == "ab" * 32
    assert V.row_local_net({}, get_preset("cpu", pretrained="none").to_dict()) == "distilled here"
    res = {"preset_fields": fields, "rows": [{"status": "ok", "teacher": "efficientnet_lite0"},
                                             {"status": "ok", "local_net": {"sha256": legacy}}]}
    assert V.local_net_id(res) == legacy
    res["rows"].append({"status": "ok", "local_net": {"sha256": "ab" * 32}})
    assert V.local_net_id(res) == "mixed"
    # the run key: unchanged for the legacy weights, new for other weights under the same name
    wdir = tmp_path / "weights"
    wdir.mkdir()
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", wdir)
    no_weights = V.run_key(p, "auto", "d")
    (wdir / f"{name}.pt").write_bytes(b"x")
    (wdir / f"{name}.json").write_text(json.dumps({"sha256": legacy}))
    assert V.run_key(p, "auto", "d") == no_weights
    (wdir / f"{name}.json").write_text(json.dumps({"sha256": "ab" * 32}))
    assert V.run_key(p, "auto", "d") != no_weights
    assert V.run_key(p, "efficientnet_lite0", "d") != V.run_key(p, "efficientnet_lite0", "e")


def test_hardware_records_the_threads_the_rows_were_fitted_with(monkeypatch):
    # parts fitted on one thread each and merged by a later call on two: the file must say one
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    rows = [{"source": "a", "threads": 1}, {"source": "b", "threads": 1}, {"source": "c", "status": "failed"}]
    hw = V._hardware(rows)
    assert hw["threads"] == 1 and hw["threads_per_source"] == {"a": 1, "b": 1}
    mixed = V._hardware([{"source": "a", "threads": 1}, {"source": "b", "threads": 2}])
    assert mixed["threads"] == 2 and mixed["threads_per_source"] == {"a": 1, "b": 2}  # this call's, and each row's
    assert "threads_per_source" not in V._hardware([{"source": "a"}])  # rows written before the field


def test_finished_rows_is_the_one_filter_every_reader_uses():
    # a failed source, and an "ok" row that lost its AU-PRO, count nowhere: not in the means, not in the
    # seed statistics, not in context_check
    from glance_lite.experiments.validation import finished_rows, mean_row
    from glance_lite.report import book_tables

    rows = [{"source": "a", "status": "ok", "AU-PRO": 0.9},
            {"source": "b", "status": "failed", "error": "x"},
            {"source": "c", "status": "ok", "AU-PRO": None},
            {"source": "d", "status": "ok", "AU-PRO": 0.7}]
    assert [r["source"] for r in finished_rows(rows)] == ["a", "d"]
    assert mean_row(rows)["n_sources"] == 2 and abs(mean_row(rows)["AU-PRO"] - 0.8) < 1e-9
    assert book_tables._ok_rows({"rows": rows}) == finished_rows(rows)


def test_sources_run_as_separate_jobs_join_into_one_variant(tmp_path, monkeypatch):
    """``validate --reuse``: parts fitted under other names are taken as they are; a part with other
    settings is not, and an unreadable file is refused by name."""
    from glance_lite.data.offline_data import make_offline
    from glance_lite.common.presets import get_preset

    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    off = make_offline(tmp_path / "off", size=64, n_train=6, n_test_good=2, n_test_defect=2)
    p = get_preset("smoke").replace(global_steps=2)
    out, res = tmp_path / "val", tmp_path / "res"
    a, b = f"{off}:brick", f"{off}:cable"
    part_a = V.validate([a], out, p.replace(name="part-a"), ts=False, progress=False, results=res)
    part_b = V.validate([b], out, p.replace(name="part-b"), ts=False, progress=False, results=res)
    other = V.validate([b], out, p.replace(name="other", lambda_s=0.5), ts=False, progress=False, results=res)
    assert [r["status"] for r in part_a + part_b + other] == ["ok"] * 3

    import glance_lite.evaluate.evaluation
    import glance_lite.train.training

    def refuse(what):
        def f(*a, **k):
            raise RuntimeError(what)
        return f

    monkeypatch.setattr(glance_lite.train.training, "fit", refuse("refitted"))
    monkeypatch.setattr(glance_lite.evaluate.evaluation, "evaluate_run", refuse("re-evaluated"))
    files = [str(res / n / "validation.json") for n in ("part-a", "part-b")]
    argv = ["validate", "--out", str(out), "--results", str(res), "--preset", "smoke", "--set", "global_steps=2",
            "--name", "joined", "--no-ts", "--quiet", "--source", a, "--source", b]
    assert main([*argv, "--reuse", files[0], "--reuse", files[1]]) == 0
    joined = json.loads((res / "joined" / "validation.json").read_text())
    assert [r["AU-PRO"] for r in joined["rows"]] == [part_a[0]["AU-PRO"], part_b[0]["AU-PRO"]]
    assert [r["reused_from"] for r in joined["rows"]] == files
    assert joined["preset"] == "joined" and joined["mean"]["n_sources"] == 2
    # lambda_s differs: the "other" row describes other settings and is not taken (so it would refit)
    rows = V.validate([b], out, p.replace(name="joined-2"), ts=False, progress=False, results=res,
                      reuse=[res / "other" / "validation.json"])
    assert rows[0]["status"] == "failed" and "refitted" in rows[0]["error"]
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(GlanceError, match="junk.json"):
        V.validate([b], out, p.replace(name="joined-3"), ts=False, progress=False, results=res,
                   reuse=[tmp_path / "junk.json"])


def test_validate_runs_only_the_controls_asked_for_and_refits_when_one_is_missing(tmp_path, monkeypatch):
    """``--controls knn`` scores a row with nearest neighbours alone; asking again for knn reuses it,
    asking for both runs the source again with both (a row never claims a control it did not run)."""
    import glance_lite.experiments.reproduce as R
    from glance_lite.common.presets import get_preset
    from glance_lite.data.offline_data import make_offline

    off = make_offline(tmp_path / "off", size=32, n_train=1, n_test_good=1, n_test_defect=1)
    calls = []

    def fake(root, category, run, preset, teacher="auto", ts=True, progress=True, device=None, overlays=0,
             controls=None):
        calls.append(tuple(controls))
        Path(run).mkdir(parents=True, exist_ok=True)
        ran = {}
        if "knn" in controls:
            ran["knn"] = {"AU-PRO": 0.7, "pixel_AUROC": 0.9, "image_AUROC": 0.8, "k": 1, "bank_size": 10}
        if "ts" in controls:
            ran["ts"] = {"AU-PRO": 0.75, "pixel_AUROC": 0.8, "image_AUROC": 0.8,
                         "students": {"stop_steps": [3], "heldout_curves": [],
                                      "settings": {"rule": {"kind": "heldout-plateau"}}}}
        return {"AU-PRO": 0.6, "pixel_AUROC": 0.9, "image_AUROC": 0.9, "heads": {}}, ran, {c: 1.0 for c in ran}

    monkeypatch.setattr(R, "fit_evaluate_ts", fake)
    monkeypatch.setattr(V, "lambda_sweep", lambda run: {})
    p = get_preset("smoke").replace(name="smoke-ctl")
    (row,) = V.validate([f"{off}:brick"], tmp_path / "val", p, progress=False, controls=("knn",))
    assert calls == [("knn",)] and row["controls"] == ["knn"] and row["ts"] is None
    assert row["local_AU-PRO"] == 0.7 and row["glance_minus_local_AU-PRO"] == pytest.approx(-0.1)
    V.validate([f"{off}:brick"], tmp_path / "val", p, progress=False, controls=("knn",))
    assert calls == [("knn",)]  # reused
    (row,) = V.validate([f"{off}:brick"], tmp_path / "val", p, progress=False)
    assert calls == [("knn",), ("ts", "knn")] and row["controls"] == ["ts", "knn"]
    assert row["local_AU-PRO"] == 0.75 and row["local"]["AU-PRO_control"] == "ts"
