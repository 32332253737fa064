"""The students' cost benchmark: one row per patch size, and the multi-scale projection is the sum of
the single-scale ones (a benchmark prints numbers; this only checks its arithmetic and its file)."""

import json

import pytest


def test_bench_students_projects_single_and_multi_scale_cost(tmp_path):
    from glance_lite.experiments.bench_students import bench_students, main
    from glance_lite.baselines.students import stop_rule
    from glance_lite.common.presets import get_preset

    res = bench_students("smoke", (33, 17), steps=1)
    rule = stop_rule(get_preset("smoke"))
    assert [r["patch_size"] for r in res["rows"]] == [33, 17]
    own = res["rows"][1]
    assert own["ratio_to_own"] == pytest.approx(1.0)
    assert own["minutes_converged"][0] == pytest.approx(3 * rule["min_steps"] * own["seconds_per_step"] / 60)
    assert res["single_scale_minutes"] == own["minutes_converged"]
    assert res["multi_scale_minutes"][1] == pytest.approx(sum(r["minutes_converged"][1] for r in res["rows"]))
    out = tmp_path / "b.json"
    assert main(["--preset", "smoke", "--sizes", "17", "--steps", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["patch_size"] == 17
