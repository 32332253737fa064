"""The tables chapters 06 and 08 show carry exactly the numbers of the committed results files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from glance_lite.common.presets import REMOVED_FIELDS
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
        ts = df.loc[r["category"], "ours: TS (stop rule) AU-PRO"]
        if (disk.get("ts") or {}).get("stop_steps"):  # a converged TS is shown as it is on disk ...
            assert ts == disk["ts"]["AU-PRO"]
        else:  # ... the 200-step TS of an older file never
            assert np.isnan(ts)
        if disk.get("local"):
            assert df.loc[r["category"], "ours: strongest local AU-PRO"] == disk["local"]["AU-PRO"]
            assert df.loc[r["category"], "ours: glance − local AU-PRO"] == pytest.approx(
                disk["glance_minus_local"]["AU-PRO"], abs=1e-6)
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
        ts = off.loc[r["category"], "TS (stop rule)"]
        assert ts == r["ts"]["AU-PRO"] if (r.get("ts") or {}).get("stop_steps") else np.isnan(ts)
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
        fair = [r for r in v["rows"] if r.get("controls_version") == 2 and (r.get("ts") or {}).get("stop_steps")]
        if not fair:  # a TS of the files written before the fair controls is never shown
            assert np.isnan(lev.loc[label, "TS (stop rule)"])
        # what the variant changes is named, image size included (a variant may change only that)
        assert lev.loc[label, "image, Local-Net"].startswith(f"{v['preset_fields']['image_size']} px, ")
        # and so is each setting since removed from the package that the variant used, and only such a one
        f = v["preset_fields"]
        joint = lev.loc[label, "joint stage"]
        for k, old in REMOVED_FIELDS.items():
            assert (f", {k} = " in joint) == (f.get(k, old) != old), (name, k)
        # and stains that can be smaller than the default's
        assert ("fine-tuned" in lev.loc[label, "image, Local-Net"]) == (f.get("finetune_steps", 400) != 400)
        assert ("stains ≥" in joint) == (f.get("stain_min_axis", 0.12) != 0.12)
        assert ("stride" in lev.loc[label, "IAD, λ_s"]) == (f.get("score_stride", 4) != 4)
    src = book_tables.validation_sources(val)
    for name, v in val.items():
        if name in repeats:
            continue
        for r in v["rows"]:
            assert src.loc[r["source"], (name, "glance")] == r["AU-PRO"]
    # the strongest local control is shown once per Local-Net (same fields *and* same starting weights):
    # never for a variant that borrowed its TS, and only from rows with the fair controls
    ts_cols = [n for n, kind in src.columns if kind == "strongest local"]
    assert all(not any(r.get("ts_from") for r in val[n]["rows"]) for n in ts_cols)
    assert not any(same_weights(val[a], val[b]) for i, a in enumerate(ts_cols) for b in ts_cols[i + 1:])
    assert all(any(r.get("controls_version") == 2 for r in val[n]["rows"]) for n in ts_cols)
    assert "TS" not in {kind for _, kind in src.columns}


def _numbers(df) -> set[float]:
    """Every number a table shows (its cells and its index), rounded to six decimals."""
    vals = list(np.ravel(df.to_numpy(dtype=object))) + list(np.ravel(df.index.to_numpy(dtype=object)))
    return {round(float(v), 6) for v in vals if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
            and np.isfinite(float(v))}


def _row(source: str, glance: float, ts: float, fair: bool = True, knn: float | None = None) -> dict:
    """A finished validation row; ``fair``: of the fair controls (a converged TS, ``controls_version`` 2),
    else an old row whose TS was trained a fixed 200 steps."""
    if not fair:
        return {"source": source, "status": "ok", "AU-PRO": glance, "ts_AU-PRO": ts, "ts": {"AU-PRO": ts}}
    local = max(ts, knn) if knn is not None else ts
    return {"source": source, "status": "ok", "AU-PRO": glance, "ts_AU-PRO": ts, "knn_AU-PRO": knn,
            "ts": {"AU-PRO": ts, "stop_steps": [1000, 1100, 1000], "rule": {"kind": "heldout-plateau"}},
            "local_AU-PRO": local, "glance_minus_local_AU-PRO": glance - local, "controls_version": 2}


def _val(name: str, seed: int, rows: list[tuple[str, float, float]], fair: bool = True, **fields: object) -> dict:
    return {"date": f"2026-12-0{seed + 1}", "preset_fields": {"name": name, "seed": seed, "image_size": 128, **fields},
            "rows": [_row(s, g, t, fair) for s, g, t in rows], "mean": {}}


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
    # a file that records a field added later (or removed since) at its old value: still a repeat; at another
    # value, not
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
    assert df.loc["bottle", ("over seeds", "glance ≥ local")] == "2 / 2"
    assert df.loc["mesh", ("over seeds", "glance ≥ local")] == "2 / 3"
    assert df.loc["mesh", ("over seeds", "worst")] == pytest.approx(0.734 - 0.749)
    assert df.loc["mesh", ("over seeds", "glance − local")] == pytest.approx((0.008 - 0.015 + 0.01) / 3)
    assert df.loc["bottle", ("over seeds", "strongest local")] == pytest.approx((0.903 + 0.920) / 2)
    # the mean over the sources every seed finished (only mesh here: one source makes no mean row)
    assert not any(str(i).startswith("mean") for i in df.index)
    val["cpu-seed2"]["rows"].append(_row("bottle", 0.95, 0.98))
    df = book_tables.validation_seeds(val, "cpu")
    mean = df.loc["mean (2 sources)"]
    assert mean[("seed 2", "glance")] == pytest.approx((0.80 + 0.95) / 2)
    assert mean[("seed 1", "strongest local")] == pytest.approx((0.749 + 0.920) / 2)
    assert mean[("over seeds", "glance ≥ local")] == "2 / 3"
    assert book_tables.validation_seeds({"cpu": val["cpu"]}, "cpu").empty
    # a repeat written before the fair controls shows glance-lite, never its 200-step TS
    val["cpu-seed2"] = _val("cpu-seed2", 2, [("mesh", 0.80, 0.123456), ("bottle", 0.95, 0.654321)], fair=False)
    df = book_tables.validation_seeds(val, "cpu")
    assert ("seed 2", "glance") in df.columns and ("seed 2", "strongest local") not in df.columns
    assert 0.123456 not in _numbers(df) and 0.654321 not in _numbers(df)
    assert df.loc["mesh", ("over seeds", "glance ≥ local")] == "1 / 2"


def test_seed_table_can_keep_only_complete_repeats_and_intervals_use_every_seed():
    two = [("mesh", 0.785, 0.777), ("bottle", 0.945, 0.903)]
    val = {"cpu": _val("cpu", 0, two),
           "cpu-seed1": _val("cpu-seed1", 1, [("mesh", 0.734, 0.749), ("bottle", 0.946, 0.920)]),
           "cpu-seed3": _val("cpu-seed3", 3, [("mesh", 0.80, 0.79)])}  # a repeat on one source only
    assert "seed 3" in book_tables.validation_seeds(val, "cpu").columns.get_level_values(0)
    df = book_tables.validation_seeds(val, "cpu", complete=True)
    assert list(df.columns.get_level_values(0).unique()) == ["seed 0", "seed 1", "over seeds"]
    assert df.loc["mean (2 sources)", ("over seeds", "glance ≥ local")] == "2 / 2"
    # a repeat that failed on a source is not complete either
    val["cpu-seed1"]["rows"][1]["status"] = "failed"
    assert book_tables.validation_seeds(val, "cpu", complete=True).empty
    val["cpu-seed1"]["rows"][1]["status"] = "ok"

    val["cpu-seed3"]["rows"].append(_row("bottle", 0.95, 0.91))
    iv = book_tables.seed_intervals(val, "cpu")
    d = np.array([0.785 - 0.777, 0.734 - 0.749, 0.80 - 0.79])
    assert iv.loc["mesh", "seeds"] == 3 and iv.loc["bottle", "seeds"] == 3
    assert iv.loc["mesh", "glance − local"] == pytest.approx(d.mean())
    assert iv.loc["mesh", "sd"] == pytest.approx(d.std(ddof=1))
    half = 4.302652729911275 * d.std(ddof=1) / np.sqrt(3)  # Student t, 2 degrees of freedom, 95 %
    assert iv.loc["mesh", "low"] == pytest.approx(d.mean() - half)
    assert iv.loc["mesh", "high"] == pytest.approx(d.mean() + half)
    assert iv.loc["mesh", "low"] < 0 < iv.loc["mesh", "high"]  # a tie the seeds cannot break
    assert iv.loc["bottle", "low"] > 0  # a margin: 0.042, 0.026 and 0.040 over three seeds
    assert iv.loc["mesh", "worst"] == pytest.approx(-0.015) and iv.loc["mesh", "glance ≥ local"] == "2 / 3"
    # the heads alone are averaged over the seeds that report them
    val["cpu"]["rows"][0].update({"iad_only_AU-PRO": 0.79, "dad_only_AU-PRO": 0.65})
    val["cpu-seed1"]["rows"][0].update({"iad_only_AU-PRO": 0.75, "dad_only_AU-PRO": 0.55})
    iv = book_tables.seed_intervals(val, "cpu")
    assert iv.loc["mesh", "IAD alone"] == pytest.approx(0.77) and iv.loc["mesh", "DAD alone"] == pytest.approx(0.60)
    assert np.isnan(iv.loc["bottle", "IAD alone"])
    # a wider level gives a wider interval around the same mean
    iv99 = book_tables.seed_intervals(val, "cpu", level=0.99)
    assert iv99.loc["mesh", "low"] < iv.loc["mesh", "low"] and iv99.loc["mesh", "glance − local"] == iv.loc["mesh", "glance − local"]
    # a seed written before the fair controls does not count: its TS was trained 200 steps
    val["cpu-seed4"] = _val("cpu-seed4", 4, [("mesh", 0.70, 0.10)], fair=False)
    assert book_tables.seed_intervals(val, "cpu").loc["mesh", "seeds"] == 3
    # the strongest control is the stronger of TS and nearest neighbours, seed by seed
    val["cpu-seed4"]["rows"] = [_row("mesh", 0.70, 0.60, knn=0.75)]
    iv4 = book_tables.seed_intervals(val, "cpu")
    assert iv4.loc["mesh", "seeds"] == 4 and iv4.loc["mesh", "worst"] == pytest.approx(0.70 - 0.75)
    assert iv4.loc["mesh", "nearest neighbours"] == pytest.approx(0.75)  # the mean over the seeds that have it
    del val["cpu-seed4"]
    # one seed: no interval; no repeat: no table
    val["cpu"]["rows"].append(_row("cable", 0.95, 0.70))
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


def test_lever_table_names_the_settings_that_left_the_package():
    from glance_lite.common.presets import PRESETS

    def variant(name: str, day: int, **fields: object) -> dict:
        v = _val(name, 0, [("offline-mesh-test", 0.8, 0.79)], **{k: v for k, v in {**PRESETS["cpu"].to_dict(), **fields}.items() if k not in ("name", "seed")})
        v["date"] = f"2026-12-0{day}"
        v["mean"] = {"n_sources": 1, "AU-PRO": 0.8, "ts_AU-PRO": 0.79, "glance_minus_ts_AU-PRO": 0.01}
        return v

    lev = book_tables.validation_levers({"cpu-x": variant("cpu-x", 1, global_readout="hole", global_holes=1),
                                         "cpu-z": variant("cpu-z", 2, iad_target_smoothing=3, stain_min_axis=0.03),
                                         "cpu-y": variant("cpu-y", 3, global_steps=1000, global_readout="mean")})
    assert lev.loc["cpu-x", "joint stage"] == "3000 steps, global_readout = hole"
    assert lev.loc["cpu-z", "joint stage"] == "3000 steps, stains ≥ 0.03 p, iad_target_smoothing = 3"
    assert lev.loc["cpu-y", "joint stage"] == "1000 steps"  # a removed field at its former default is no change
def test_context_table_averages_fits_and_joins_the_seed_intervals():
    pd = pytest.importorskip("pandas")
    ctx = [{"source": "mesh", "r2_context": 0.30, "r2_position": 0.02},
           {"source": "mesh", "r2_context": 0.20, "r2_position": 0.04},
           {"source": "cable", "r2_context": 0.80, "r2_position": 0.50},
           {"source": "bottle", "r2_context": 0.70, "r2_position": 0.95}]
    iv = pd.DataFrame({"glance − local": {"mesh": -0.013, "cable": 0.257}, "IAD alone": {"mesh": 0.74, "cable": 0.95},
                       "strongest local": {"mesh": 0.75, "cable": 0.69}})
    df = book_tables.context_table(ctx, iv)
    assert list(df.index) == ["mesh", "bottle", "cable"]  # sorted by how much the context predicts
    assert df.loc["mesh", "fits"] == 2 and df.loc["mesh", "R² context"] == pytest.approx(0.25)
    assert df.loc["mesh", "beyond place"] == pytest.approx(0.25 - 0.03)
    assert df.loc["cable", "IAD alone − local"] == pytest.approx(0.26)
    assert df.loc["mesh", "glance − local"] == -0.013
    assert np.isnan(df.loc["bottle", "glance − local"])  # no seeds for it: nothing to join
    assert "glance − local" not in book_tables.context_table(ctx).columns


# ------------------------------------------------------------------------------------------------
# the fair local-only controls in the tables of results files (synthetic files)
# ------------------------------------------------------------------------------------------------

OLD_TS = {"AU-PRO": 0.111111, "pixel_AUROC": 0.222222, "image_AUROC": 0.333333, "wall_seconds": 611.0}
"""The TS of a results file written before the stop rule (200 steps per student, no ``stop_steps``)."""


def _file(category: str, glance: float, dataset: str = "mvtec_ad", preset: str = "cpu", ts: dict | None = None,
          knn: dict | None = None) -> dict:
    r = {"category": category, "dataset": dataset, "preset": preset, "AU-PRO": glance, "pixel_AUROC": 0.95,
         "image_AUROC": 0.97, "fit_stage_seconds": {"finetune": 100.0, "global": 500.0},
         "heads": {"iad_only": {"AU-PRO": glance - 0.01}, "dad_only": {"AU-PRO": 0.5}}, "_archived": None}
    if ts is not None:
        r["ts"] = ts
    if knn is not None:
        r["knn"] = knn
    return r


def _converged(au_pro: float, pixel: float = 0.94, image: float = 0.9) -> dict:
    return {"AU-PRO": au_pro, "pixel_AUROC": pixel, "image_AUROC": image, "stop_steps": [1000, 1200, 1100],
            "rule": {"kind": "heldout-plateau", "min_steps": 1000, "max_steps": 1500}, "wall_seconds": 900.0,
            "heldout_curves": [{"steps": [0, 100], "loss": [1.0, 0.5], "stop_step": 100}] * 3}


def _knn(au_pro: float, pixel: float = 0.96, image: float = 0.95) -> dict:
    return {"AU-PRO": au_pro, "pixel_AUROC": pixel, "image_AUROC": image, "k": 1, "bank_size": 1000,
            "wall_seconds": 30.0}


def test_an_old_ts_is_never_shown_in_any_table():
    mv = [_file("bottle", 0.86, ts=dict(OLD_TS)), _file("screw", 0.67, ts=dict(OLD_TS))]
    off = [_file("cable", 0.95, dataset="offline", ts=dict(OLD_TS))]
    archived = [dict(_file("bottle", 0.85, ts=dict(OLD_TS)), _archived="cpu-1000-steps")]
    tables = {"tables 1 and 2": book_tables.tables_1_and_2(mv), "bars": book_tables.bar_rows("bottle", mv, archived),
              "offline": book_tables.offline_table(off), "at a glance": book_tables.results_at_a_glance(mv)}
    for name, df in tables.items():
        shown = _numbers(df)
        assert not {0.111111, 0.222222, 0.333333} & shown, name
        assert len(df) and 0.86 in shown or 0.95 in shown  # the file itself is shown
    # its control cells are empty (NaN), never filled from the old TS
    t12 = tables["tables 1 and 2"]
    for c in ("ours: TS (stop rule) AU-PRO", "ours: strongest local AU-PRO", "ours: glance − local AU-PRO"):
        assert t12[c].isna().all(), c
    assert tables["offline"][["TS (stop rule)", "strongest local", "glance − local"]].isna().all().all()
    assert not any(i.startswith(("TS", "nearest")) for i in tables["bars"].index)
    # a TS with stop steps but trained a fixed step count is no converged TS either
    fixed = dict(_converged(0.444444), rule={"kind": "fixed", "min_steps": 200, "max_steps": 200})
    assert 0.444444 not in _numbers(book_tables.tables_1_and_2([_file("bottle", 0.86, ts=fixed)]))
    assert book_tables.converged_ts(fixed) is None and book_tables.converged_ts(OLD_TS) is None


def test_fair_controls_show_the_strongest_and_glance_minus_it():
    mv = [_file("bottle", 0.86, ts=_converged(0.80), knn=_knn(0.90)),  # nearest neighbours is stronger
          _file("screw", 0.67, ts=_converged(0.70), knn=_knn(0.55)),   # TS is stronger
          _file("cable", 0.90, knn=_knn(0.85))]                         # nearest neighbours only (no TS)
    t12 = book_tables.tables_1_and_2(mv)
    assert t12.loc["bottle", "which local control"] == "nearest neighbours"
    assert t12.loc["bottle", "ours: strongest local AU-PRO"] == 0.90
    assert t12.loc["bottle", "ours: glance − local AU-PRO"] == pytest.approx(0.86 - 0.90)
    assert t12.loc["bottle", "ours: TS (stop rule) AU-PRO"] == 0.80
    assert t12.loc["screw", "which local control"] == "TS (stop rule)"
    assert t12.loc["screw", "ours: glance − local AU-PRO"] == pytest.approx(0.67 - 0.70)
    assert t12.loc["screw", "ours: nearest neighbours AU-PRO"] == 0.55
    assert np.isnan(t12.loc["cable", "ours: TS (stop rule) AU-PRO"])
    assert t12.loc["cable", "ours: glance − local AU-PRO"] == pytest.approx(0.90 - 0.85)
    mean = t12.loc["mean (3)"]
    assert mean["ours: glance − local AU-PRO"] == pytest.approx(np.mean([-0.04, -0.03, 0.05]))
    assert np.isnan(mean["ours: TS (stop rule) AU-PRO"])  # cable has none: no mean over fewer categories
    # the strongest may differ by metric: pixel AUROC is judged on its own
    assert book_tables.strongest_local(mv[0], "pixel_AUROC") == ("nearest neighbours", 0.96)
    bars = book_tables.bar_rows("screw", mv)
    assert bars.loc["TS (stop rule), preset cpu", "AU-PRO"] == 0.70
    assert bars.loc["nearest neighbours, preset cpu", "AU-PRO"] == 0.55
    assert bars.loc["nearest neighbours, preset cpu", "fit s"] == 30
    assert bars.loc["glance-lite, preset cpu", "which local control"] == "TS (stop rule)"
    assert bars.loc["glance-lite, preset cpu", "glance − local"] == pytest.approx(0.67 - 0.70)
    off = book_tables.offline_table([_file("mesh", 0.78, dataset="offline", ts=_converged(0.77), knn=_knn(0.81))])
    assert off.loc["mesh", "strongest local"] == 0.81 and off.loc["mesh", "which local control"] == "nearest neighbours"
    assert off.loc["mesh", "glance − local"] == pytest.approx(0.78 - 0.81)
    assert off.loc["mesh", "TS (stop rule)"] == 0.77


def test_results_at_a_glance_picks_the_papers_values_by_category(tmp_path):
    rows = [_file("screw", 0.67, ts=_converged(0.70), knn=_knn(0.55)), _file("bottle", 0.86, ts=dict(OLD_TS)),
            _file("metal_nut", 0.90, knn=_knn(0.88)),
            _file("screw", 0.99, preset="cpu-i192"),                        # another preset: left out
            dict(_file("bottle", 0.5), _archived="cpu-1000-steps"),         # archived: left out
            _file("cable", 0.95, dataset="offline")]                        # not MVTec AD: left out
    (tmp_path / "patchcore").mkdir()
    (tmp_path / "patchcore" / "bottle.json").write_text(json.dumps({"metrics": {"AU-PRO": 0.935}}))
    t = book_tables.results_at_a_glance(rows, results_root=tmp_path)
    assert list(t.index) == ["bottle", "metal_nut", "screw"]  # the paper's order
    for cat, paper in (("bottle", "Bottle"), ("metal_nut", "Metal Nut"), ("screw", "Screw")):
        assert t.loc[cat, "paper's AU-PRO"] == TABLE1_PRO[paper]["Ours"]
        assert t.loc[cat, "ours − paper"] == pytest.approx(t.loc[cat, "ours"] - TABLE1_PRO[paper]["Ours"])
    assert t.loc["screw", "ours"] == 0.67 and t.loc["bottle", "ours"] == 0.86
    assert t.loc["screw", "strongest local"] == 0.70 and t.loc["screw", "which local control"] == "TS (stop rule)"
    assert t.loc["screw", "ours − strongest local"] == pytest.approx(-0.03)
    assert t.loc["metal_nut", "which local control"] == "nearest neighbours"
    assert np.isnan(t.loc["bottle", "strongest local"]) and np.isnan(t.loc["bottle", "ours − strongest local"])
    assert t.loc["bottle", "PatchCore"] == 0.935 and np.isnan(t.loc["screw", "PatchCore"])
    assert 0.111111 not in _numbers(t)
    assert book_tables.results_at_a_glance(rows, preset="paper").empty


def test_validation_tables_show_controls_only_from_rows_that_have_them():
    from glance_lite.experiments.validation import borrow_ts

    from glance_lite.common.presets import PRESETS

    f = {k: v for k, v in PRESETS["cpu"].to_dict().items() if k not in ("name", "seed")}
    new = dict(_val("cpu", 0, [("mesh", 0.785, 0.777), ("bottle", 0.945, 0.903)], **f), ts=True)
    new["rows"][0].update({"knn_AU-PRO": 0.80, "local_AU-PRO": 0.80, "glance_minus_local_AU-PRO": -0.015})
    old = _val("cpu-old", 0, [("mesh", 0.70, 0.123456), ("bottle", 0.90, 0.654321)], fair=False,
               **dict(f, finetune_steps=1200))
    # validated without TS: borrows cpu's TS, and the strongest control is cpu's (nearest neighbours on mesh)
    swap = _val("cpu-swap", 1, [], **dict(f, dad_negatives="stain+swap"))
    swap["rows"] = [{"source": "mesh", "status": "ok", "AU-PRO": 0.79, "controls_version": 2},
                    {"source": "bottle", "status": "ok", "AU-PRO": 0.94, "controls_version": 2}]
    swap["preset_fields"]["seed"] = 0
    for v in (new, old, swap):
        v["mean"] = {"n_sources": 2, "AU-PRO": float(np.mean([r["AU-PRO"] for r in v["rows"]]))}
    val = borrow_ts({"cpu": new, "cpu-old": old, "cpu-swap": swap})
    assert book_tables.ts_lenders(val["cpu-swap"]) == ["cpu"]
    lev = book_tables.validation_levers(val)
    assert lev.loc["cpu", "strongest local"] == pytest.approx((0.80 + 0.903) / 2)
    assert lev.loc["cpu", "glance − local"] == pytest.approx((-0.015 + 0.042) / 2)
    assert lev.loc["cpu", "nearest neighbours"] == pytest.approx(0.80)
    assert lev.loc["cpu-swap (TS of cpu)", "glance − local"] == pytest.approx((0.79 - 0.80 + 0.94 - 0.903) / 2)
    assert lev.loc["cpu-old", ["TS (stop rule)", "strongest local", "glance − local"]].isna().all()
    assert lev.loc["cpu-old", "sources with controls"] == 0
    src = book_tables.validation_sources(val, ["cpu", "cpu-old", "cpu-swap"])
    assert src.loc["mesh", ("cpu", "strongest local")] == 0.80
    assert src.loc["mesh", ("cpu-swap", "glance − local")] == pytest.approx(0.79 - 0.80)
    assert ("cpu-swap", "strongest local") not in src.columns  # the same Local-Net: shown once
    assert ("cpu-old", "glance") in src.columns and ("cpu-old", "glance − local") not in src.columns
    for df in (lev, src):
        assert 0.123456 not in _numbers(df) and 0.654321 not in _numbers(df)


def test_plot_heldout_curves_draws_one_line_per_student():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from glance_lite.common.figures import plot_heldout_curves

    curves = [{"steps": [0, 100, 200, 300], "loss": [1.0, 0.5, 0.4, 0.39 + k / 100], "stop_step": 300 - 100 * (k == 1)}
              for k in range(3)]
    fig, ax = plot_heldout_curves({"heldout_curves": curves, "rule": {"min_steps": 200, "max_steps": 300}})
    students = [ln for ln in ax.get_lines() if ln.get_label().startswith("student")]
    assert len(students) == 3
    assert [ln.get_label() for ln in students] == ["student 1 (stop 300)", "student 2 (stop 200)", "student 3 (stop 300)"]
    assert ax.get_yscale() == "log"
    # a marker at each stop step, on the student's own curve
    markers = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    assert sorted(float(m.get_xdata()[0]) for m in markers) == [200.0, 300.0, 300.0]
    assert float(markers[1].get_ydata()[0]) == 0.4
    # the rule's bounds as vertical lines
    vertical = [ln for ln in ax.get_lines() if len(set(ln.get_xdata())) == 1 and ln.get_linestyle() == "--"]
    assert sorted(float(ln.get_xdata()[0]) for ln in vertical) == [200.0, 300.0]
    assert ax.title.get_fontsize() >= 10 and ax.xaxis.label.get_fontsize() >= 10
    plt.close(fig)
    _, ax2 = plt.subplots()
    fig2, ax2b = plot_heldout_curves({"heldout_curves": curves[:2]}, ax=ax2)
    assert ax2b is ax2 and len([ln for ln in ax2.get_lines() if ln.get_label().startswith("student")]) == 2
    plt.close(fig2)
    with pytest.raises(Exception, match="no held-out curves"):
        plot_heldout_curves(OLD_TS)


def test_ts_stops_tells_the_cap_from_the_plateau():
    from glance_lite.report.book_tables import ts_stops

    rule = {"kind": "heldout-plateau", "min_steps": 1000, "max_steps": 1500, "tol": 0.01, "window": 0.2}
    steps = list(range(0, 1501, 100))
    still = {"steps": steps, "loss": [1.0 / (1 + s) for s in steps], "stop_step": 1500}  # -> 20 % fall at the cap
    flat = {"steps": steps[:12], "loss": [1.0] * 12, "stop_step": 1100}
    rising = {"steps": steps, "loss": [1.0] * 13 + [1.1] * 3, "stop_step": 1500}  # at the cap, but no gain
    rows = [
        {"dataset": "d", "category": "a", "ts": {"AU-PRO": 0.5, "stop_steps": [1500, 1100, 1500], "rule": rule,
                                                 "heldout_curves": [still, flat, rising]}},
        {"dataset": "d", "category": "old", "ts": {"AU-PRO": 0.5}},  # under-trained: left out
    ]
    df = ts_stops(rows)
    assert list(df.index) == ["d/a"] * 3
    assert list(df["stopped by"]) == ["cap", "plateau", "plateau"]
    assert list(df["stop step"]) == [1500, 1100, 1500]
    assert abs(df["still falling"].iloc[0] - (1 / 1201 - 1 / 1501) / (1 / 1201)) < 1e-12
    assert df["still falling"].iloc[1] == 0.0 and df["still falling"].iloc[2] < 0


def test_style_never_prints_a_signed_zero():
    import numpy as np
    import pandas as pd

    from glance_lite.report.book_tables import STYLE

    html = pd.DataFrame({"a": [-0.0001, -0.25, np.nan], "b": ["x", "y", None]}).style.format(**STYLE).to_html()
    assert "-0.000" not in html and ">0.000<" in html and ">-0.250<" in html and ">–<" in html and ">x<" in html
