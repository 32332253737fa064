"""Data-parallel training (glance_lite.common.distributed) on CPU with gloo: 2 ranks give what 1 process gives.

Each multi-rank test starts real processes (``spawn_local``, as torchrun would on one machine); the
stage functions are the package's own, so what is tested is the code ``fit`` runs under torchrun.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glance_lite.common.distributed import SINGLE, DistContext, DistError, gather_rows, shard, spawn_local
from glance_lite.common.presets import get_preset

WORLD = 2
STEPS = 4


def _preset(**kw):
    return get_preset("smoke").replace(checkpoint_every=1, **kw)


# --------------------------------------------------------------------------------------------
# The three kinds of stage, as module-level functions (spawned processes import them)
# --------------------------------------------------------------------------------------------


def _local_stage(ctx: DistContext, out: str, steps: int, stop_after: int | None = None) -> None:
    from glance_lite.train.training import LocalTrainer

    p = _preset()
    g = torch.Generator().manual_seed(5)
    patches = torch.rand(40, 3, p.patch_size, p.patch_size, generator=g)
    targets = torch.randn(40, 16, generator=g)
    torch.manual_seed(0)
    tr = LocalTrainer(p, teacher_dim=16, device="cpu")
    tr.set_stats(targets)
    h = tr.train("pretrain", patches, targets, steps, Path(out) / "ckpt.pt", stop_after=stop_after, progress=False)
    if ctx.is_main:
        torch.save({"state": {**tr.local_net.state_dict(), **{f"dec.{k}": v for k, v in tr.decoder.state_dict().items()}},
                    "losses": [r["loss"] for r in h.records]}, Path(out) / "result.pt")


def _global_stage(ctx: DistContext, out: str, steps: int, stop_after: int | None = None) -> None:
    from glance_lite.models.model import GlanceModel
    from glance_lite.train.training import train_global

    p = _preset(global_steps=steps)
    torch.manual_seed(0)
    model = GlanceModel(p)
    images = torch.rand(6, 3, p.image_size, p.image_size, generator=torch.Generator().manual_seed(6))
    h = train_global(model, images, out, progress=False, stop_after=stop_after)
    if ctx.is_main:
        state = {**{f"g.{k}": v for k, v in model.global_net.state_dict().items()},
                 **{f"d.{k}": v for k, v in model.dad.state_dict().items()}}
        torch.save({"state": state, "losses": [r["loss"] for r in h.records]}, Path(out) / "result.pt")


def _students_stage(ctx: DistContext, out: str, steps: int, stop_after: int | None = None) -> None:
    from glance_lite.baselines.students import new_student, train_student

    p = _preset()
    g = torch.Generator().manual_seed(7)
    patches = (torch.rand(30, 3, p.patch_size, p.patch_size, generator=g) * 255).to(torch.uint8)
    targets = torch.randn(30, p.descriptor_dim, generator=g)
    student = new_student(p.patch_size, p.descriptor_dim, seed=3)
    h = train_student(student, 0, patches, targets, p, steps, 1e-3, Path(out) / "ckpt.pt", stop_after=stop_after,
                      progress=False)
    if ctx.is_main:
        torch.save({"state": student.state_dict(), "losses": [r["loss"] for r in h.records]}, Path(out) / "result.pt")


STAGES = {"local": (_local_stage, ()), "global": (_global_stage, ()), "students": (_students_stage, ())}


def _single(fn, out: Path, *args, **kw) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    fn(SINGLE, str(out), *args, **kw)
    return torch.load(out / "result.pt", weights_only=True)


def _assert_same(a: dict, b: dict) -> None:
    # Adam divides each gradient by its running RMS, so where a gradient is ~0 a float-rounding
    # difference (a sum over 2 ranks vs over 1 batch) can move a weight by a fraction of one step
    # (lr is 3e-4 or 1e-3 here); 1e-4 stays below a step of a wrong batch, and the losses agree to 1e-5
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        torch.testing.assert_close(a["state"][k], b["state"][k], rtol=1e-4, atol=1e-4, msg=k)
    torch.testing.assert_close(torch.tensor(a["losses"]), torch.tensor(b["losses"]), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


def test_shards_cover_the_batch_once_in_order():
    for n in (1, 7, 8, 33):
        for world in (1, 2, 3):
            if n < world:
                continue
            parts = [shard(n, DistContext(r, world)) for r in range(world)]
            idx = [i for s in parts for i in range(n)[s]]
            assert idx == list(range(n))
            sizes = [s.stop - s.start for s in parts]
            assert max(sizes) - min(sizes) <= 1
    assert gather_rows(torch.ones(3, 2), 3, SINGLE).shape == (3, 2)


# --------------------------------------------------------------------------------------------
# 2 ranks == 1 process, stage by stage
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_two_ranks_give_the_weights_of_one_process(tmp_path, stage):
    fn, extra = STAGES[stage]
    one = _single(fn, tmp_path / "one", STEPS, *extra)
    (tmp_path / "two").mkdir()
    spawn_local(fn, WORLD, str(tmp_path / "two"), STEPS, *extra, timeout=240)
    two = torch.load(tmp_path / "two" / "result.pt", weights_only=True)
    _assert_same(one, two)
    # and the test can fail: one step fewer is not the same
    fewer = _single(fn, tmp_path / "fewer", STEPS - 1, *extra)
    with pytest.raises(AssertionError):
        _assert_same(one, fewer)


def test_a_run_stopped_under_two_ranks_resumes_under_one(tmp_path):
    full = _single(_global_stage, tmp_path / "full", STEPS)
    run = tmp_path / "run"
    run.mkdir()
    spawn_local(_global_stage, WORLD, str(run), STEPS, 2, timeout=240)  # stop after 2 of 4 steps
    ck = torch.load(run / "checkpoints" / "global.pt", weights_only=True)
    assert ck["step"] == 2
    resumed = _single(_global_stage, run, STEPS)
    _assert_same(full, resumed)


# --------------------------------------------------------------------------------------------
# Failure: a dead rank fails the job, it does not hang
# --------------------------------------------------------------------------------------------


def _dies(ctx: DistContext, out: str) -> None:
    from glance_lite.common.distributed import all_reduce_sum

    if ctx.rank == 1:
        os._exit(3)
    try:
        all_reduce_sum({"x": 1.0}, ctx)
        all_reduce_sum({"x": 1.0}, ctx)
    except Exception as e:  # noqa: BLE001 - the point: rank 0 gets an error
        Path(out, "rank0.txt").write_text(type(e).__name__)
        raise


def test_a_dead_rank_fails_the_job_within_the_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv("GLANCE_DIST_TIMEOUT", "20")
    import time

    t0 = time.monotonic()
    with pytest.raises(DistError, match="rank 1 of 2 failed|rank 0 of 2 failed|did not finish"):
        spawn_local(_dies, WORLD, str(tmp_path), timeout=90)
    assert time.monotonic() - t0 < 90


# --------------------------------------------------------------------------------------------
# The command line: torchrun fit, reproduce --devices
# --------------------------------------------------------------------------------------------


def _torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run"]


def test_torchrun_fit_writes_one_run_equal_to_a_single_process_fit(tmp_path):
    from test_cli import _tiny_dataset

    root = _tiny_dataset(tmp_path / "ds", n_train=6)
    env = dict(os.environ, OMP_NUM_THREADS="1", GLANCE_DATA=str(tmp_path / "data"))
    args = ["fit", "--data", str(root), "--category", "widget", "--preset", "smoke", "--quiet", "--device", "cpu"]
    one = subprocess.run([sys.executable, "-m", "glance_lite", *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([*_torchrun(), "--standalone", "--nproc_per_node=2", "-m", "glance_lite", *args,
                          "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-8000:]
    assert two.stdout.strip().splitlines() == [str(tmp_path / "two" / "model.pt")]  # rank 0 alone prints
    a = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    for net in ("local_net", "global_net", "dad"):
        for k, v in a[net].items():
            # atol 1e-4, a third of one Adam step at the smoke lr (3e-4), as in the per-stage test above:
            # Adam divides by sqrt(v), so a gradient that is nearly zero turns the rounding of a
            # two-rank all-reduce into up to a whole step on that weight (1.7e-5 on some CPUs); a
            # sharding error moves the weights by many steps
            torch.testing.assert_close(v, b[net][k], rtol=1e-4, atol=1e-4, msg=f"{net}.{k}")
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    assert cfg["ranks"] == 2


def test_reproduce_on_two_cpu_workers_equals_a_sequential_run(tmp_path):
    from test_cli import _tiny_dataset

    from glance_lite.cli import main

    root = tmp_path / "ds"
    _tiny_dataset(root, n_train=6)
    shutil.copytree(root / "widget", root / "gadget")
    env_keys = {"OMP_NUM_THREADS": "1", "GLANCE_DATA": str(tmp_path / "data")}
    old = {k: os.environ.get(k) for k in env_keys}
    os.environ.update(env_keys)
    try:
        seq = ["reproduce", "--data", str(root), "--preset", "smoke", "--no-ts", "--quiet", "--device", "cpu"]
        assert main([*seq, "--out", str(tmp_path / "seq"), "--runs", str(tmp_path / "runs-seq")]) == 0
        assert main([*seq[:-2], "--devices", "cpu,cpu", "--out", str(tmp_path / "par"),
                     "--runs", str(tmp_path / "runs-par")]) == 0
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    for cat in ("gadget", "widget"):
        a = json.loads((tmp_path / "seq" / "smoke" / "ds" / cat / "metrics.json").read_text())
        b = json.loads((tmp_path / "par" / "smoke" / "ds" / cat / "metrics.json").read_text())
        for k in ("AU-PRO", "pixel_AUROC", "image_AUROC"):
            assert a[k] == pytest.approx(b[k], abs=1e-6), (cat, k)
        assert (tmp_path / "runs-par" / "logs" / f"ds-{cat}.log").is_file()
    # re-running skips what is complete
    log = tmp_path / "runs-par" / "logs" / "ds-widget.log"
    before = log.stat().st_mtime_ns
    assert main(["reproduce", "--data", str(root), "--preset", "smoke", "--no-ts", "--quiet", "--devices", "cpu,cpu",
                 "--out", str(tmp_path / "par"), "--runs", str(tmp_path / "runs-par")]) == 0
    assert log.stat().st_mtime_ns == before


def test_a_failed_category_is_reported_and_the_others_finish(tmp_path, capsys):
    from test_cli import _tiny_dataset

    from glance_lite.experiments.reproduce import reproduce_parallel

    root = tmp_path / "ds"
    _tiny_dataset(root, n_train=6)
    shutil.copytree(root / "widget", root / "broken")
    for f in (root / "broken" / "train" / "good").iterdir():
        f.write_bytes(b"not an image")
    failed = reproduce_parallel("cpu,cpu", tmp_path / "out", data_roots=[root], preset=get_preset("smoke"),
                                runs=tmp_path / "runs", ts=False)
    assert failed == ["ds/broken"]
    err = capsys.readouterr().err
    assert "ds/broken: FAILED" in err and "ds-broken.log" in err
    assert (tmp_path / "out" / "smoke" / "ds" / "widget" / "metrics.json").is_file()


def test_a_missing_gpu_in_the_device_list_stops_before_anything_starts(tmp_path, capsys):
    from glance_lite.cli import main

    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    rc = main(["reproduce", "--devices", "cpu,cuda:7", "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "r"),
               "--preset", "smoke"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "cuda:7" in err[0]
    assert not (tmp_path / "r").exists() and not (tmp_path / "out").exists()


def test_the_scaling_page_shows_the_committed_measurement():
    # book/scaling.md includes results/scaling/cpu.md, which must be exactly what the benchmark
    # writes for the committed cpu.json (no hand-edited numbers)
    from glance_lite.experiments.bench_scaling import markdown
    from glance_lite.common.paths import results_dir

    res = json.loads((results_dir() / "scaling" / "cpu.json").read_text())
    assert (results_dir() / "scaling" / "cpu.md").read_text() == markdown(res)
    for r in res["rows"]:
        sp = r["seconds_per_step"]
        one, ranks = sp["1 rank, 1 thread"], sp[f"{res['world']} ranks, 1 thread each"]
        assert r["speedup_vs_1_rank_1_thread"][f"{res['world']} ranks, 1 thread each"] == pytest.approx(one / ranks)
    assert "cpu.md" in (Path(__file__).resolve().parent.parent / "book" / "scaling.md").read_text()


def test_ts_command_trains_and_scores_the_students_of_a_run(tmp_path, monkeypatch, capsys):
    from test_cli import _tiny_dataset

    from glance_lite.cli import main

    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    root = _tiny_dataset(tmp_path / "ds", n_train=6)
    run = tmp_path / "run"
    assert main(["fit", "--data", str(root), "--category", "widget", "--out", str(run), "--preset", "smoke",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["ts", str(run), "--data", str(root), "--category", "widget", "--students", "2", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((run / "metrics_ts.json").read_text())
    assert printed["AU-PRO"] == saved["AU-PRO"] and (run / "students.pt").is_file()
    assert main(["ts", str(tmp_path / "nope"), "--data", str(root), "--category", "widget"]) == 1


def test_pretrain_refuses_torchrun(tmp_path, monkeypatch, capsys):
    from glance_lite.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["pretrain", "--out", str(tmp_path / "p"), "--preset", "smoke", "--steps", "2"]) == 1
    assert "without torchrun" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
