"""The TS baseline (Uninformed Students): scores, training, exact resume and an end-to-end run (smoke)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glance_lite.common.fileio import GlanceError, load_torch
from glance_lite.models.local_net import LocalNet
from glance_lite.models.model import GlanceModel
from glance_lite.common.presets import get_preset
from glance_lite.baselines.students import (
    StudentEnsemble,
    fit_students,
    make_pool,
    new_student,
    predictive_variance,
    regression_error,
    run_ts_baseline,
    split_train_val,
    student_maps,
    student_patch_scores,
    train_student,
)

# small images keep every forward pass cheap; p = 17 as in the smoke preset
PRESET = get_preset("smoke").replace(image_size=32, score_stride=4, finetune_patches=48, checkpoint_every=2)


def _images(n: int = 4, s: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 5, 5, generator=g)
    return torch.nn.functional.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)


def _teacher(seed: int = 1) -> LocalNet:
    return new_student(PRESET.patch_size, PRESET.descriptor_dim, seed).eval()


def test_scores_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    preds = torch.randn(3, 5, 7, generator=g)
    target = torch.randn(5, 7, generator=g)
    torch.testing.assert_close(regression_error(preds, target), ((preds.mean(0) - target) ** 2).sum(-1))
    torch.testing.assert_close(predictive_variance(preds), preds.var(0, unbiased=False).mean(-1))
    with pytest.raises(ValueError):
        regression_error(preds, target[:, :3])


def test_variance_is_zero_for_identical_students():
    teacher, s = _teacher(1), new_student(PRESET.patch_size, PRESET.descriptor_dim, 2)
    ens = StudentEnsemble.from_students([s, s, s], PRESET)
    tops = lefts = torch.tensor([0, 5, 15])
    e, v = ens.raw_scores_at(teacher, _images(2), tops, lefts)
    assert torch.all(v == 0)
    assert torch.all(e > 0)  # a random student does not replicate the teacher
    ens2 = StudentEnsemble.from_students([s, new_student(PRESET.patch_size, PRESET.descriptor_dim, 3)], PRESET)
    assert torch.all(ens2.raw_scores_at(teacher, _images(2), tops, lefts)[1] > 0)


def test_student_learns_a_constant_teacher(tmp_path):
    """A teacher whose descriptor is the same for every patch is learnt to a small error."""
    teacher = _teacher(1)
    with torch.no_grad():
        last = teacher.convs[-1]
        last.weight.zero_()
        last.bias.copy_(torch.linspace(-2, 2, PRESET.descriptor_dim))
    pool = make_pool(teacher, _images(4), 48, seed=0)
    assert torch.allclose(pool["targets"], pool["targets"][:1].expand_as(pool["targets"]))
    targets = pool["targets"]  # raw (not standardised): a constant of unit scale
    p = PRESET.replace(batch_size=8)
    student = new_student(p.patch_size, p.descriptor_dim, 5)
    test = _images(2, seed=9)[:, :, :17, :17]
    with torch.no_grad():
        before = float(((student(test) - targets[:2]) ** 2).mean())
    hist = train_student(student, 0, pool["patches"], targets, p, steps=30, lr=2e-3,
                         ckpt=tmp_path / "s.pt", progress=False)
    with torch.no_grad():
        after = float(((student(test) - targets[:2]) ** 2).mean())  # on patches never seen
    assert hist.final(window=5) < 0.1 * hist.records[0]["loss"]
    assert after < 0.1 * before


def test_train_student_resumes_exactly(tmp_path):
    teacher = _teacher(1)
    pool = make_pool(teacher, _images(3), 24, seed=0)
    ens = StudentEnsemble(1, PRESET.patch_size, PRESET.descriptor_dim)
    ens.set_teacher_stats(pool["targets"])
    targets = ens.standardise(pool["targets"])

    def run(ckpt: Path, stop_after=None) -> LocalNet:
        s = new_student(PRESET.patch_size, PRESET.descriptor_dim, 7)
        train_student(s, 0, pool["patches"], targets, PRESET, 6, 1e-3, ckpt, stop_after=stop_after, progress=False)
        return s

    whole = run(tmp_path / "a.pt")
    part = run(tmp_path / "b.pt", stop_after=3)
    assert int(load_torch(tmp_path / "b.pt")["step"]) == 3
    assert not all(torch.equal(x, y) for x, y in zip(whole.parameters(), part.parameters()))
    resumed = run(tmp_path / "b.pt")
    for x, y in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(x, y)


def test_replicating_the_teacher_scores_lower_than_a_perturbed_ensemble():
    teacher = _teacher(1)
    exact = StudentEnsemble.from_students([teacher, teacher], PRESET)
    noisy = []
    for k in range(2):
        s = new_student(PRESET.patch_size, PRESET.descriptor_dim, 0)
        s.load_state_dict(teacher.state_dict())
        with torch.no_grad():
            for prm in s.parameters():
                prm.add_(0.05 * torch.randn(prm.shape, generator=torch.Generator().manual_seed(k)))
        noisy.append(s)
    perturbed = StudentEnsemble.from_students(noisy, PRESET)
    x = _images(2)
    for ens in (exact, perturbed):  # the same normalisation for both
        ens.set_score_stats(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 2.0]))
    m_exact = student_maps(exact, teacher, x)
    m_pert = student_maps(perturbed, teacher, x)
    assert m_exact.shape == (2, 32, 32)
    floor = -2 * 1.0 / 2.0**0.5  # e = v = 0: -(mean_e / std_e) - (mean_v / std_v), mean 1, std sqrt(2)
    torch.testing.assert_close(m_exact, torch.full_like(m_exact, floor))
    assert torch.all(m_pert > m_exact + 1e-3)
    sc = student_patch_scores(perturbed, teacher, x, stride=8)
    assert sc["score"].shape == (2, len(sc["tops"]), len(sc["lefts"]))


def test_split_train_val():
    tr, va = split_train_val(20, 0.1, seed=3)
    assert len(va) == 2 and len(tr) == 18 and not set(tr.tolist()) & set(va.tolist())
    tr, va = split_train_val(1, 0.1)
    assert tr.tolist() == va.tolist() == [0]  # too few images: in-sample statistics
    tr, va = split_train_val(5, 0.0)
    assert torch.equal(tr, va)


# ---------------------------------------------------------------------------------------------
# end to end on a tiny dataset and a (randomly initialised) run folder
# ---------------------------------------------------------------------------------------------


def _tiny_dataset(root: Path, n_train: int = 5, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    cat = root / "widget"
    for d in ("train/good", "test/good", "test/dent", "ground_truth/dent"):
        (cat / d).mkdir(parents=True)
    base = (np.indices((size, size)).sum(0) % 8 < 4).astype(np.uint8) * 120 + 60

    def img() -> np.ndarray:
        return np.clip(base[..., None] + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)

    for i in range(n_train):
        Image.fromarray(img()).save(cat / "train" / "good" / f"{i:03d}.png")
    for i in range(2):
        Image.fromarray(img()).save(cat / "test" / "good" / f"{i:03d}.png")
        a = img()
        a[8:18, 10:20] = 250
        m = np.zeros((size, size), np.uint8)
        m[8:18, 10:20] = 255
        Image.fromarray(a).save(cat / "test" / "dent" / f"{i:03d}.png")
        Image.fromarray(m).save(cat / "ground_truth" / "dent" / f"{i:03d}_mask.png")
    return root


def _fake_run(run: Path, category: str = "widget") -> Path:
    """A run folder as training.fit writes it, with untrained networks (the teacher is random)."""
    torch.manual_seed(0)
    GlanceModel(PRESET, teacher="test").save(run)
    (run / "config.json").write_text(json.dumps({"category": category, "preset": PRESET.to_dict()}))
    return run


def test_end_to_end_resume_and_reuse(tmp_path, monkeypatch):
    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    root = _tiny_dataset(tmp_path / "ds")
    a = _fake_run(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    kw = dict(n_students=2, steps=3, progress=False)

    # uninterrupted
    pa = fit_students(a, root, "widget", **kw)
    # stopped after 4 steps (student 0 finished, student 1 at step 1), then resumed
    pb = fit_students(b, root, "widget", stop_after=4, **kw)
    assert not pb.is_file() and (b / "checkpoints" / "students_1.pt").is_file()
    assert int(load_torch(b / "checkpoints" / "students_1.pt")["step"]) == 1
    pb = fit_students(b, root, "widget", **kw)
    ea, eb = StudentEnsemble.load(pa), StudentEnsemble.load(pb)
    assert ea.n_students == 2 and ea.info["n_val_images"] == 1 and not ea.info["val_in_sample"]
    for (ka, va), (kb, vb) in zip(ea.state_dict().items(), eb.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert float(ea.e_std) > 0 and float(ea.v_std) > 0

    # reuse: a finished students.pt is not trained again; other settings are refused
    mtime = pa.stat().st_mtime_ns
    assert fit_students(a, root, "widget", **kw) == pa and pa.stat().st_mtime_ns == mtime
    with pytest.raises(GlanceError, match="other settings"):
        fit_students(a, root, "widget", n_students=3, steps=3, progress=False)

    m = run_ts_baseline(a, root, "widget", progress=False)
    on_disk = json.loads((a / "metrics_ts.json").read_text())
    assert on_disk["AU-PRO"] == m["AU-PRO"]
    for k in ("image_AUROC", "pixel_AUROC", "AU-PRO"):
        assert 0.0 <= m[k] <= 1.0
    assert m["preset"] == "smoke" and m["n_students"] == 2 and m["n_test"] == 4 and m["seconds_per_image"] > 0
    z = np.load(a / "ts_maps.npz")
    assert z["maps"].shape == (4, 32, 32) and np.isfinite(z["maps"]).all()

    # a preset that changes only scoring fields scores TS on its own grid, as evaluate_run does glance-lite
    fine = PRESET.replace(score_stride=1, idw_neighbours=4)
    assert fine.score_stride != PRESET.score_stride
    m2 = run_ts_baseline(a, root, "widget", progress=False, preset=fine)
    z2 = np.load(a / "ts_maps.npz")
    assert m2["preset_fields"]["score_stride"] == 1 and not np.allclose(z2["maps"], z["maps"])
    from glance_lite.data.mvtec import MVTecDataset, find_category

    ens, model = StudentEnsemble.from_run(a), GlanceModel.load(a)
    img = MVTecDataset(find_category(root, "widget"), "test", PRESET.image_size)[0]["image"][None]
    want = student_maps(ens, model.local_net, img, stride=1, neighbours=4)[0].numpy()
    assert np.allclose(z2["maps"][0], want, atol=1e-5)
    with pytest.raises(GlanceError, match="scoring fields"):
        run_ts_baseline(a, root, "widget", progress=False, preset=PRESET.replace(global_steps=PRESET.global_steps + 1))


def test_errors_name_the_run(tmp_path):
    root = _tiny_dataset(tmp_path / "ds")
    run = _fake_run(tmp_path / "run")
    with pytest.raises(GlanceError, match="students.pt"):
        StudentEnsemble.from_run(run)
    with pytest.raises(GlanceError, match="gadget"):
        fit_students(run, root, "gadget", steps=1, progress=False)
    with pytest.raises(GlanceError, match="nope"):
        fit_students(tmp_path / "nope", root, "widget", steps=1, progress=False)
    (run / "students.pt").write_bytes(b"garbage")
    with pytest.raises(GlanceError, match="students.pt"):
        StudentEnsemble.from_run(run)


# ---------------------------------------------------------------------------------------------
# the stop rule: students train until their held-out error stops falling
# ---------------------------------------------------------------------------------------------


def test_stop_rule_gives_the_students_the_joint_stage_steps():
    from glance_lite.baselines.students import stop_rule

    cpu = get_preset("cpu")
    r = stop_rule(cpu, 3)
    assert r["min_steps"] * 3 >= cpu.global_steps and r["min_steps"] == 1000 and r["max_steps"] == 1500
    assert stop_rule(cpu.replace(global_steps=100), 3)["min_steps"] == cpu.finetune_steps // 2  # never below 200
    with pytest.raises(GlanceError):
        stop_rule(cpu, 0)
    # convergence is judged on 1,024 held-out patches at cpu and paper (the committed runs' rule), on
    # fewer only where the preset fine-tunes on fewer (smoke: 4 x 32)
    assert r["heldout_patches"] == 1024 and stop_rule(get_preset("paper"), 3)["heldout_patches"] == 1024
    assert stop_rule(get_preset("smoke"), 3)["heldout_patches"] == 128


def test_has_converged_reads_the_last_fifth():
    from glance_lite.baselines.students import has_converged

    rule = {"min_steps": 500, "max_steps": 2000, "tol": 0.01, "window": 0.2}
    steps = list(range(0, 1001, 100))
    falling = [1.0 * 0.9 ** i for i in range(len(steps))]  # 10 % per evaluation: not converged
    assert not has_converged(steps, falling, rule)
    flat = falling[:8] + [falling[7] * 0.999] * 3  # 0.1 % over the last fifth (800 -> 1000)
    assert has_converged(steps, flat, rule)
    assert not has_converged(steps[:5], flat[:5], rule)  # before min_steps never
    rising = falling[:9] + [falling[8] * 1.1] * 2  # a rise counts as no gain
    assert has_converged(steps, rising, rule)
    assert has_converged([0, 2000], [1.0, 0.1], rule)  # the cap
    assert not has_converged([], [], rule)
    # 1 % is the line: 2 % gain over the last fifth goes on
    assert not has_converged(steps, falling[:8] + [falling[7] * 0.99, falling[7] * 0.985, falling[7] * 0.98], rule)


def test_last_window_gain_is_the_fall_over_the_last_fifth():
    from glance_lite.baselines.students import last_window_gain

    steps = [0, 500, 800, 1000]
    # the error at 800 (the last evaluation at or before 0.8 * 1000) against the error at 1000
    assert abs(last_window_gain(steps, [4.0, 2.0, 1.0, 0.9]) - 0.1) < 1e-12
    assert abs(last_window_gain(steps, [4.0, 2.0, 1.0, 1.2]) + 0.2) < 1e-12  # a rise is negative
    # no evaluation at exactly 0.8 t: the last one before it
    assert abs(last_window_gain([0, 700, 1000], [4.0, 2.0, 1.5]) - 0.25) < 1e-12
    assert last_window_gain([1000], [1.0]) is None and last_window_gain(steps, [0.0, 0.0, 0.0, 0.0]) is None
    assert abs(last_window_gain(steps, [4.0, 2.0, 1.0, 0.9], window=0.5) - 0.55) < 1e-12  # 2.0 at 500


def test_converged_students_record_their_curves_and_resume_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    root = _tiny_dataset(tmp_path / "ds")
    a = _fake_run(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    from glance_lite.baselines.students import stop_rule

    rule = stop_rule(PRESET, 2)
    pa = fit_students(a, root, "widget", n_students=2, progress=False)
    pb = fit_students(b, root, "widget", n_students=2, progress=False, stop_after=rule["min_steps"] + 1)
    assert not pb.is_file()
    pb = fit_students(b, root, "widget", n_students=2, progress=False)
    ea, eb = StudentEnsemble.load(pa), StudentEnsemble.load(pb)
    assert ea.info["settings"]["rule"] == rule and ea.info["heldout_curves"] == eb.info["heldout_curves"]
    for (ka, va), (kb, vb) in zip(ea.state_dict().items(), eb.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    for curve, stop in zip(ea.info["heldout_curves"], ea.info["stop_steps"]):
        assert curve["steps"][0] == 0 and curve["steps"][-1] == stop == curve["stop_step"]
        assert rule["min_steps"] <= stop <= rule["max_steps"]
        assert curve["loss"][-1] < curve["loss"][0]  # the held-out error fell
        assert all(s % rule["eval_every"] == 0 or s == rule["max_steps"] for s in curve["steps"])
    m = run_ts_baseline(a, root, "widget", progress=False)
    assert m["students"]["stop_steps"] == ea.info["stop_steps"] and m["students"]["settings"]["rule"] == rule
    assert len(m["students"]["heldout_curves"]) == 2


def test_students_from_before_the_stop_rule_are_refused(tmp_path):
    root = _tiny_dataset(tmp_path / "ds")
    run = _fake_run(tmp_path / "run")
    ens = StudentEnsemble(2, PRESET.patch_size, PRESET.descriptor_dim, PRESET)
    ens.info = {"settings": {"n_students": 2, "steps": 200}}  # a fixed-step ensemble with no held-out curve
    ens.save(run / "students.pt")
    with pytest.raises(GlanceError, match="older file"):
        run_ts_baseline(run, root, "widget", progress=False)


def test_stop_rule_cap_factor_and_the_ts_cap_experiment(tmp_path, monkeypatch):
    """The cap is a parameter of the rule; ts_cap trains each cap in its own copy of the run, and reuses them."""
    from glance_lite.baselines.students import stop_rule
    from glance_lite.experiments import ts_cap

    cpu = get_preset("cpu")
    assert stop_rule(cpu, 3)["max_steps"] == 1500 and stop_rule(cpu, 3, cap_factor=3.0)["max_steps"] == 3000
    with pytest.raises(GlanceError):
        stop_rule(cpu, 3, cap_factor=0.5)

    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    root = _tiny_dataset(tmp_path / "ds")
    run = _fake_run(tmp_path / "run")
    out = tmp_path / "cap.json"
    args = [str(run), "--data", str(root), "--category", "widget", "--caps", "1,2", "--work", str(tmp_path / "w"),
            "--out", str(out), "--quiet"]
    assert ts_cap.main(args) == 0
    rows = json.loads(out.read_text())["caps"]
    lo = stop_rule(PRESET, 3)["min_steps"]
    assert [r["rule"]["max_steps"] for r in rows] == [lo, 2 * lo]
    for r in rows:
        assert all(s <= r["rule"]["max_steps"] for s in r["stop_steps"]) and len(r["stop_steps"]) == 3
        assert set(r["stopped_by"]) <= {"cap", "plateau"} and 0 <= r["AU-PRO"] <= 1
    assert not (run / "students.pt").exists()  # the run itself is left as it was
    trained = (tmp_path / "w" / "cap-2" / "students.pt").stat().st_mtime_ns
    assert ts_cap.main(args) == 0  # re-scored, not retrained
    assert (tmp_path / "w" / "cap-2" / "students.pt").stat().st_mtime_ns == trained
    bad = [a if a != "1,2" else "0.5" for a in args]
    assert ts_cap.main(bad) == 1
