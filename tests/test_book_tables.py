"""The tables chapters 06 and 08 show carry exactly the numbers of the committed results files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from glance_lite.report import book_tables
from glance_lite.report.paper_tables import TABLE1_PRO, TABLE4_LAMBDA_PRO
from glance_lite.experiments.reproduce import load_results, load_validation

pytest.importorskip("pandas")


def test_tables_1_and_2_match_the_results_files():
    rows = load_results()
    mv = [r for r in rows if r.get("dataset") == "mvtec_ad"]
    df = book_tables.tables_1_and_2(rows)
    for r in mv:
        disk = json.loads(open(f"{r['_folder']}/metrics.json").read())
        assert df.loc[r["category"], "ours: AU-PRO"] == disk["AU-PRO"]
        assert df.loc[r["category"], "ours: pixel AUROC"] == disk["pixel_AUROC"]
        assert df.loc[r["category"], "ours: TS AU-PRO"] == disk["ts"]["AU-PRO"]
        assert df.loc[r["category"], "paper: AU-PRO"] == TABLE1_PRO[r["category"].capitalize()]["Ours"]
    if mv:  # the mean is over the categories present, the paper's column over the same ones
        mean = df.loc[f"mean ({len(mv)})"]
        assert mean["ours: AU-PRO"] == pytest.approx(np.mean([r["AU-PRO"] for r in mv]))
        assert mean["paper: AU-PRO"] == pytest.approx(np.mean([TABLE1_PRO[r["category"].capitalize()]["Ours"] for r in mv]))
    assert all(c not in book_tables.missing_note(rows) for c in {r["category"] for r in mv})


def test_offline_and_table_4_match_the_results_files():
    rows = load_results()
    off = book_tables.offline_table(rows)
    for r in (r for r in rows if r.get("dataset") == "offline"):
        assert off.loc[r["category"], "AU-PRO"] == r["AU-PRO"]
        assert off.loc[r["category"], "TS AU-PRO"] == r["ts"]["AU-PRO"]
    t4 = book_tables.table_4(rows)
    for r in (r for r in rows if "ablation" in r and r.get("dataset") == "mvtec_ad"):
        for x in r["ablation"]["rows"]:
            assert t4.loc[(r["category"], f"ours ({r['preset']})"), f"{x['lambda_s']:.1f}"] == x["AU-PRO"]
        assert t4.loc[(r["category"], "paper"), "0.8"] == TABLE4_LAMBDA_PRO[r["category"].capitalize()]["0.8"]


def test_provenance_has_no_absolute_paths(tmp_path):
    from glance_lite.common.paths import results_dir

    rows = load_results()
    html = book_tables.provenance_html(rows, results_dir())
    assert str(results_dir()) not in html and "<details>" in html
    assert html.count("<li>") == len(rows)


def test_validation_tables_match_the_files():
    from glance_lite.experiments.validation import borrow_ts, same_weights

    val = borrow_ts(load_validation())
    if not val:
        pytest.skip("no validation files")
    lev = book_tables.validation_levers(val)
    repeats = book_tables.seed_repeats(val)
    for name, v in val.items():
        if name in repeats:  # shown in the seeds table instead
            assert name not in lev.index
            continue
        lent = sorted({r["ts_from"] for r in v["rows"] if r.get("ts_from")})
        label = f"{name} (TS of {', '.join(lent)})" if lent else name
        assert lev.loc[label, "AU-PRO"] == v["mean"]["AU-PRO"]
        if v["mean"]["ts_AU-PRO"] is not None:
            assert lev.loc[label, "TS AU-PRO"] == v["mean"]["ts_AU-PRO"]
        # what the variant changes is named, image size included (a variant may change only that)
        assert lev.loc[label, "image, Local-Net"].startswith(f"{v['preset_fields']['image_size']} px, ")
        # and so is a joint stage with its own learning rate or schedule, and only such a one
        f = v["preset_fields"]
        own_lr = f.get("global_lr") is not None or f.get("global_schedule", "constant") != "constant"
        assert (" lr " in lev.loc[label, "joint steps × holes, DAD negatives"]) == own_lr
        # and stains that can be smaller than the default's
        assert ("fine-tuned" in lev.loc[label, "image, Local-Net"]) == (f.get("finetune_steps", 400) != 400)
        assert ("(≥" in lev.loc[label, "joint steps × holes, DAD negatives"]) == (f.get("stain_min_axis", 0.12) != 0.12)
        assert ("stride" in lev.loc[label, "IAD, λ_s"]) == (f.get("score_stride", 4) != 4)
        assert ("hole read-out" in lev.loc[label, "joint steps × holes, DAD negatives"]) == (
            f.get("global_readout", "mean") == "hole")
        assert ("target" in lev.loc[label, "IAD, λ_s"]) == (f.get("iad_target_smoothing", 1) != 1)
    src = book_tables.validation_sources(val)
    for name, v in val.items():
        if name in repeats:
            continue
        for r in v["rows"]:
            assert src.loc[r["source"], (name, "glance")] == r["AU-PRO"]
    # TS is shown once per Local-Net (same fields *and* same starting weights): never for a variant that
    # borrowed it
    ts_cols = [n for n, kind in src.columns if kind == "TS"]
    assert all(not any(r.get("ts_from") for r in val[n]["rows"]) for n in ts_cols)
    assert not any(same_weights(val[a], val[b]) for i, a in enumerate(ts_cols) for b in ts_cols[i + 1:])


def _val(name: str, seed: int, rows: list[tuple[str, float, float]], **fields: object) -> dict:
    return {"date": f"2026-12-0{seed + 1}", "preset_fields": {"name": name, "seed": seed, "image_size": 128, **fields},
            "rows": [{"source": s, "status": "ok", "AU-PRO": g, "ts_AU-PRO": t} for s, g, t in rows],
            "mean": {}}


def test_seed_repeats_are_grouped_and_summarised():
    val = {"cpu": _val("cpu", 0, [("mesh", 0.785, 0.777), ("bottle", 0.945, 0.903)]),
           "cpu-seed1": _val("cpu-seed1", 1, [("mesh", 0.734, 0.749), ("bottle", 0.946, 0.920)]),
           "cpu-seed2": _val("cpu-seed2", 2, [("mesh", 0.80, 0.79)]),
           "cpu-i192": _val("cpu-i192", 0, [("mesh", 0.85, 0.862)], image_size=192),
           "cpu-i192-seed1": _val("cpu-i192-seed1", 1, [("mesh", 0.84, 0.85)], image_size=192)}
    # the same fields from other shipped weights (a longer distillation) is another Local-Net, not a repeat
    val["cpu-cont"] = _val("cpu-cont", 1, [("mesh", 0.8, 0.78)])
    val["cpu-cont"]["rows"][0]["local_net"] = {"kind": "shipped", "sha256": "ab" * 32}
    assert book_tables.seed_repeats(val) == {"cpu-seed1": "cpu", "cpu-seed2": "cpu", "cpu-i192-seed1": "cpu-i192"}
    del val["cpu-cont"]
    # a file written after a field was added records it at its old value: still a repeat; at another value, not
    val["cpu-seed3"] = _val("cpu-seed3", 3, [("mesh", 0.73, 0.74)], global_readout="mean", stain_min_axis=0.12)
    val["cpu-hole"] = _val("cpu-hole", 0, [("mesh", 0.77, 0.78)], global_readout="hole")
    rep = book_tables.seed_repeats(val)
    assert rep["cpu-seed3"] == "cpu" and "cpu-hole" not in rep
    # the same settings and the same seed under another name is not a second draw
    val["cpu-again"] = _val("cpu-again", 0, [("mesh", 0.785, 0.777)], stain_min_axis=0.12)
    assert "cpu-again" not in book_tables.seed_repeats(val)
    del val["cpu-seed3"], val["cpu-hole"], val["cpu-again"]
    df = book_tables.validation_seeds(val, "cpu")
    assert list(df.columns.get_level_values(0).unique()) == ["seed 0", "seed 1", "seed 2", "over seeds"]
    assert df.loc["bottle", ("over seeds", "glance ≥ TS")] == "2 / 2"
    assert df.loc["mesh", ("over seeds", "glance ≥ TS")] == "2 / 3"
    assert df.loc["mesh", ("over seeds", "worst")] == pytest.approx(0.734 - 0.749)
    assert df.loc["mesh", ("over seeds", "glance − TS")] == pytest.approx((0.008 - 0.015 + 0.01) / 3)
    assert df.loc["bottle", ("over seeds", "TS")] == pytest.approx((0.903 + 0.920) / 2)
    # the mean over the sources every seed finished (only mesh here: one source makes no mean row)
    assert not any(str(i).startswith("mean") for i in df.index)
    val["cpu-seed2"]["rows"].append({"source": "bottle", "status": "ok", "AU-PRO": 0.95, "ts_AU-PRO": 0.98})
    df = book_tables.validation_seeds(val, "cpu")
    mean = df.loc["mean (2 sources)"]
    assert mean[("seed 2", "glance")] == pytest.approx((0.80 + 0.95) / 2)
    assert mean[("seed 1", "TS")] == pytest.approx((0.749 + 0.920) / 2)
    assert mean[("over seeds", "glance ≥ TS")] == "2 / 3"
    assert book_tables.validation_seeds({"cpu": val["cpu"]}, "cpu").empty


def test_seed_table_can_keep_only_complete_repeats_and_intervals_use_every_seed():
    two = [("mesh", 0.785, 0.777), ("bottle", 0.945, 0.903)]
    val = {"cpu": _val("cpu", 0, two),
           "cpu-seed1": _val("cpu-seed1", 1, [("mesh", 0.734, 0.749), ("bottle", 0.946, 0.920)]),
           "cpu-seed3": _val("cpu-seed3", 3, [("mesh", 0.80, 0.79)])}  # a repeat on one source only
    assert "seed 3" in book_tables.validation_seeds(val, "cpu").columns.get_level_values(0)
    df = book_tables.validation_seeds(val, "cpu", complete=True)
    assert list(df.columns.get_level_values(0).unique()) == ["seed 0", "seed 1", "over seeds"]
    assert df.loc["mean (2 sources)", ("over seeds", "glance ≥ TS")] == "2 / 2"
    # a repeat that failed on a source is not complete either
    val["cpu-seed1"]["rows"][1]["status"] = "failed"
    assert book_tables.validation_seeds(val, "cpu", complete=True).empty
    val["cpu-seed1"]["rows"][1]["status"] = "ok"

    val["cpu-seed3"]["rows"].append({"source": "bottle", "status": "ok", "AU-PRO": 0.95, "ts_AU-PRO": 0.91})
    iv = book_tables.seed_intervals(val, "cpu")
    d = np.array([0.785 - 0.777, 0.734 - 0.749, 0.80 - 0.79])
    assert iv.loc["mesh", "seeds"] == 3 and iv.loc["bottle", "seeds"] == 3
    assert iv.loc["mesh", "glance − TS"] == pytest.approx(d.mean())
    assert iv.loc["mesh", "sd"] == pytest.approx(d.std(ddof=1))
    half = 4.302652729911275 * d.std(ddof=1) / np.sqrt(3)  # Student t, 2 degrees of freedom, 95 %
    assert iv.loc["mesh", "low"] == pytest.approx(d.mean() - half)
    assert iv.loc["mesh", "high"] == pytest.approx(d.mean() + half)
    assert iv.loc["mesh", "low"] < 0 < iv.loc["mesh", "high"]  # a tie the seeds cannot break
    assert iv.loc["bottle", "low"] > 0  # a margin: 0.042, 0.026 and 0.040 over three seeds
    assert iv.loc["mesh", "worst"] == pytest.approx(-0.015) and iv.loc["mesh", "glance ≥ TS"] == "2 / 3"
    # the heads alone are averaged over the seeds that report them
    val["cpu"]["rows"][0].update({"iad_only_AU-PRO": 0.79, "dad_only_AU-PRO": 0.65})
    val["cpu-seed1"]["rows"][0].update({"iad_only_AU-PRO": 0.75, "dad_only_AU-PRO": 0.55})
    iv = book_tables.seed_intervals(val, "cpu")
    assert iv.loc["mesh", "IAD alone"] == pytest.approx(0.77) and iv.loc["mesh", "DAD alone"] == pytest.approx(0.60)
    assert np.isnan(iv.loc["bottle", "IAD alone"])
    # a wider level gives a wider interval around the same mean
    iv99 = book_tables.seed_intervals(val, "cpu", level=0.99)
    assert iv99.loc["mesh", "low"] < iv.loc["mesh", "low"] and iv99.loc["mesh", "glance − TS"] == iv.loc["mesh", "glance − TS"]
    # one seed: no interval; no repeat: no table
    val["cpu"]["rows"].append({"source": "cable", "status": "ok", "AU-PRO": 0.95, "ts_AU-PRO": 0.70})
    iv = book_tables.seed_intervals(val, "cpu")
    assert iv.loc["cable", "seeds"] == 1 and iv[["sd", "low", "high"]].loc["cable"].isna().all()
    assert book_tables.seed_intervals({"cpu": val["cpu"]}, "cpu").empty


def test_local_nets_against_validation_pairs_weights_with_their_cpu_variant() -> None:
    from glance_lite.common.presets import PRESETS
    from glance_lite.report.book_tables import local_nets_against_validation

    cpu = PRESETS["cpu"].to_dict()

    def variant(sha: str, scores: dict[str, float], **fields: object) -> dict:
        rows = [{"source": s, "status": "ok", "AU-PRO": a, "local_net": {"sha256": sha}} for s, a in scores.items()]
        return {"preset_fields": {**cpu, "name": "x", **fields}, "rows": rows,
                "mean": {"AU-PRO": float(np.mean(list(scores.values()))), "ts_AU-PRO": 0.5}}

    def net(sha: str, held: float, shipped: bool, extra: dict | None = None, teacher: str = "efficientnet_lite0") -> dict:
        corpus = {"train_photos": ["a"] * 19, "heldout_photos": ["b"] * 3, **({"extra": extra} if extra else {})}
        return {"sha256": sha, "corpus": corpus, "steps": 5000, "final": {"train_distillation": held - 0.05},
                "heldout": {"distillation": held}, "teacher": teacher, **({"_shipped": True} if shipped else {})}

    val = {"cpu": variant("a" * 64, {"mesh": 0.78, "screw": 0.94}),
           "cpu-seed1": variant("a" * 64, {"mesh": 0.10, "screw": 0.10}, seed=1),  # a repeat: not the variant
           "cpu-i192": variant("b" * 64, {"mesh": 0.99, "screw": 0.99}, image_size=192),  # other settings
           "cpu-new": variant("b" * 64, {"mesh": 0.68, "screw": 0.93}),
           # a mid-level teacher's net is validated with the teacher field that names it, and only with it
           "cpu-mid": variant("d" * 64, {"mesh": 0.90, "screw": 0.90}, teacher="efficientnet_lite0_mid"),
           "cpu-mid-wrong": variant("e" * 64, {"mesh": 0.90, "screw": 0.90}, teacher="resnet18_mid")}
    nets = [net("a" * 64, 0.766, True), net("b" * 64, 0.725, False, {"n_photos": 50, "folder": "debian"}),
            net("c" * 64, 0.7, False), net("d" * 64, 0.4, False, teacher="efficientnet_lite0_mid"),
            net("e" * 64, 0.4, False, teacher="efficientnet_lite0_mid")]
    t = local_nets_against_validation(nets, val)
    assert list(t["validated as"]) == ["cpu", "cpu-new", "–", "cpu-mid", "–"]
    assert list(t["teacher feature"])[2:4] == ["final, 1280-d", "mid-level, 152-d"]
    assert t["AU-PRO"].iloc[0] == pytest.approx(0.86) and t["AU-PRO"].iloc[1] == pytest.approx(0.805)
    assert t["largest loss vs shipped"].iloc[1] == "mesh: -0.100" and t["largest loss vs shipped"].iloc[0] == "–"
    assert t["photographs (train / held out)"].iloc[1] == "19 / 3 (+50 from debian)"
    assert np.isnan(t["AU-PRO"].iloc[2]) and t["sources"].isna().iloc[2] and list(t["sources"].iloc[:2]) == [2, 2]
    assert t["AU-PRO"].iloc[3] == pytest.approx(0.90)


def test_lever_table_names_weights_that_were_never_shipped() -> None:
    from glance_lite.common.presets import PRESETS
    from glance_lite.experiments.validation import LEGACY_LOCAL_NETS

    shipped_sha = LEGACY_LOCAL_NETS["localnet-p33-d128-efficientnet_lite0-t96"]
    mean = {"n_sources": 1, "AU-PRO": 0.9, "ts_AU-PRO": 0.8, "glance_minus_ts_AU-PRO": 0.1}

    def variant(sha: str, date: str) -> dict:
        return {"preset_fields": {**PRESETS["cpu"].to_dict(), "name": "x"}, "date": date, "mean": mean,
                "rows": [{"source": "s", "status": "ok", "AU-PRO": 0.9, "local_net": {"sha256": sha}}]}

    t = book_tables.validation_levers({"cpu": variant(shipped_sha, "1"), "cand": variant("f" * 64, "2")})
    assert t.loc["cpu", "image, Local-Net"] == f"128 px, shipped p33 ({shipped_sha[:8]})"
    assert t.loc["cand", "image, Local-Net"] == "128 px, candidate p33 (ffffffff)"


def test_lever_table_names_a_hole_read_out():
    from glance_lite.common.presets import PRESETS

    def variant(name: str, day: int, **fields: object) -> dict:
        v = _val(name, 0, [("offline-mesh-test", 0.8, 0.79)], **{k: v for k, v in {**PRESETS["cpu"].to_dict(), **fields}.items() if k not in ("name", "seed")})
        v["date"] = f"2026-12-0{day}"
        v["mean"] = {"n_sources": 1, "AU-PRO": 0.8, "ts_AU-PRO": 0.79, "glance_minus_ts_AU-PRO": 0.01}
        return v

    lev = book_tables.validation_levers({"cpu-x": variant("cpu-x", 1, global_readout="hole"),
                                         "cpu-y": variant("cpu-y", 2, global_steps=1000)})
    assert lev.loc["cpu-x", "joint steps × holes, DAD negatives"].endswith(", hole read-out")
    assert "read-out" not in lev.loc["cpu-y", "joint steps × holes, DAD negatives"]
    lev = book_tables.validation_levers({"cpu-z": variant("cpu-z", 1, iad_target_smoothing=3)})
    assert lev.loc["cpu-z", "IAD, λ_s"] == "whitened, 0.8, 3×3 target"
    assert "target" not in book_tables.validation_levers({"cpu-y": variant("cpu-y", 2)}).loc["cpu-y", "IAD, λ_s"]
    lev = book_tables.validation_levers({"cpu-c": variant("cpu-c", 1, calibration_images=16),
                                         "cpu-y": variant("cpu-y", 2)})
    assert lev.loc["cpu-c", "joint steps × holes, DAD negatives"].endswith(", 16 images kept for the statistics")
    assert "kept" not in lev.loc["cpu-y", "joint steps × holes, DAD negatives"]


def test_context_table_averages_fits_and_joins_the_seed_intervals():
    pd = pytest.importorskip("pandas")
    ctx = [{"source": "mesh", "r2_context": 0.30, "r2_position": 0.02},
           {"source": "mesh", "r2_context": 0.20, "r2_position": 0.04},
           {"source": "cable", "r2_context": 0.80, "r2_position": 0.50},
           {"source": "bottle", "r2_context": 0.70, "r2_position": 0.95}]
    iv = pd.DataFrame({"glance − TS": {"mesh": -0.013, "cable": 0.257}, "IAD alone": {"mesh": 0.74, "cable": 0.95},
                       "TS": {"mesh": 0.75, "cable": 0.69}})
    df = book_tables.context_table(ctx, iv)
    assert list(df.index) == ["mesh", "bottle", "cable"]  # sorted by how much the context predicts
    assert df.loc["mesh", "fits"] == 2 and df.loc["mesh", "R² context"] == pytest.approx(0.25)
    assert df.loc["mesh", "beyond place"] == pytest.approx(0.25 - 0.03)
    assert df.loc["cable", "IAD alone − TS"] == pytest.approx(0.26)
    assert df.loc["mesh", "glance − TS"] == -0.013
    assert np.isnan(df.loc["bottle", "glance − TS"])  # no seeds for it: nothing to join
    assert "glance − TS" not in book_tables.context_table(ctx).columns
