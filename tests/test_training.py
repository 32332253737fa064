"""Training stages: exact resume, frozen Local-Net, losses that go down (smoke preset)."""

from __future__ import annotations

import pytest
import torch

from glance_lite.models.model import GlanceModel
from glance_lite.common.presets import get_preset
from glance_lite.train.training import LocalTrainer, crop_patches, joint_lr, train_global


def _images(n=6, s=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth random images: a low-resolution pattern upsampled, so patches have structure
    low = torch.rand(n, 3, 6, 6, generator=g)
    return torch.nn.functional.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)


def _model(preset, seed=123):
    torch.manual_seed(seed)
    return GlanceModel(preset, teacher="test")


def test_crop_patches_matches_slicing():
    x = torch.rand(3, 3, 20, 24)
    idx = torch.tensor([2, 0, 2])
    tops = torch.tensor([0, 5, 11])
    lefts = torch.tensor([3, 0, 16])
    out = crop_patches(x, idx, tops, lefts, 7)
    for k in range(3):
        i, t, l = idx[k], tops[k], lefts[k]
        assert torch.equal(out[k], x[i, :, t : t + 7, l : l + 7])


@pytest.mark.parametrize("holes,schedule,readout", [(1, "constant", "mean"), (4, "constant", "mean"),
                                                    (1, "cosine", "mean"), (1, "constant", "hole"),
                                                    (4, "constant", "hole")])
def test_global_stage_resumes_exactly(tmp_path, holes, schedule, readout):
    p = get_preset("smoke").replace(global_steps=6, checkpoint_every=2, global_holes=holes,
                                    global_schedule=schedule, global_readout=readout)
    imgs = _images()
    # uninterrupted
    m1 = _model(p)
    train_global(m1, imgs, tmp_path / "a", progress=False)
    # stopped after 3 steps, then a new process (new objects, same seed) resumes
    m2 = _model(p)
    h = train_global(m2, imgs, tmp_path / "b", progress=False, stop_after=3)
    assert len(h.records) == 3
    m3 = _model(p)
    h3 = train_global(m3, imgs, tmp_path / "b", progress=False)
    assert len(h3.records) == 6
    for (n1, a), (_, b) in zip(m1.state_dict().items(), m3.state_dict().items()):
        assert torch.equal(a, b), f"{n1} differs after resume"
    # and the run really trained: weights moved away from the initialisation
    m0 = _model(p)
    assert not torch.equal(m0.global_net.state_dict()[next(iter(m0.global_net.state_dict()))],
                           m1.global_net.state_dict()[next(iter(m1.global_net.state_dict()))])


def test_local_stage_resumes_exactly(tmp_path):
    p = get_preset("smoke").replace(checkpoint_every=2)
    patches = torch.rand(40, 3, p.patch_size, p.patch_size)
    targets = torch.randn(40, 12)

    def trainer():
        torch.manual_seed(5)
        t = LocalTrainer(p, 12)
        t.set_stats(targets)
        return t

    t1 = trainer()
    t1.train("pretrain", patches, targets, 5, tmp_path / "a.pt", progress=False)
    t2 = trainer()
    t2.train("pretrain", patches, targets, 5, tmp_path / "b.pt", progress=False, stop_after=2)
    t3 = trainer()
    t3.train("pretrain", patches, targets, 5, tmp_path / "b.pt", progress=False)
    for a, b in zip(t1.local_net.state_dict().values(), t3.local_net.state_dict().values()):
        assert torch.equal(a, b)


def test_no_gradient_reaches_the_local_net(tmp_path):
    p = get_preset("smoke").replace(global_steps=2, checkpoint_every=100)
    m = _model(p)
    before = {k: v.clone() for k, v in m.local_net.state_dict().items()}
    g_before = {k: v.clone() for k, v in m.global_net.state_dict().items()}
    train_global(m, _images(), tmp_path, progress=False)
    assert all(q.grad is None for q in m.local_net.parameters())
    assert all(not q.requires_grad for q in m.local_net.parameters())
    for k, v in m.local_net.state_dict().items():
        assert torch.equal(v, before[k])
    assert any(not torch.equal(v, g_before[k]) for k, v in m.global_net.state_dict().items())


@pytest.mark.parametrize("holes", [1, 4])
def test_joint_loss_decreases(tmp_path, holes):
    p = get_preset("smoke").replace(global_steps=60, checkpoint_every=1000, lr=3e-3, batch_size=16,
                                    global_holes=holes)
    m = _model(p)
    h = train_global(m, _images(8), tmp_path, progress=False)
    loss = h.column("loss")
    assert loss[-10:].mean() < loss[:10].mean()
    # Eq. 10 bookkeeping: loss = iad + lambda_t * dad
    r = h.records[-1]
    assert abs(r["loss"] - (r["iad"] + p.lambda_t * r["dad"])) < 1e-4


def test_global_stage_trains_on_every_scored_hole_position(tmp_path, monkeypatch):
    # 46-pixel images, 33-pixel patches, Local-Net stride 4: the score maps use lefts 0, 4, 8, 12 and
    # the border position 13; the joint stage must put holes there too (it once stopped at 12)
    import glance_lite.train.training as tr
    from glance_lite.score.scoring import patch_grid

    p = get_preset("smoke").replace(image_size=46, patch_size=33, global_steps=40, batch_size=8,
                                    checkpoint_every=100)
    m = _model(p)
    seen_t, seen_l = set(), set()
    real = tr.hole_mask

    def spy(size, tops, lefts, patch, **kw):
        seen_t.update(int(t) for t in tops)
        seen_l.update(int(v) for v in lefts)
        return real(size, tops, lefts, patch, **kw)

    monkeypatch.setattr(tr, "hole_mask", spy)
    train_global(m, _images(n=3, s=46), tmp_path / "run", progress=False)
    gt, gl = patch_grid(46, 46, 33, m.local_net.stride)
    assert seen_t == set(gt.tolist()) and seen_l == set(gl.tolist()), (sorted(seen_t), gt.tolist())


def test_many_holes_per_image_use_the_incremental_global_net(tmp_path, monkeypatch):
    # global_holes=4 with a batch of 8: eight images per step, four holes in each, Z_g from the
    # differentiable incremental Global-Net (no full masked copy per hole)
    import glance_lite.train.training as tr

    p = get_preset("smoke").replace(global_steps=3, batch_size=8, global_holes=4, checkpoint_every=100)
    m = _model(p)
    calls = []
    real = tr.global_features_incremental

    def spy(net, image, tops, lefts, patch, batch_size=256, differentiable=False):
        calls.append((image.shape[0], len(tops), differentiable))
        return real(net, image, tops, lefts, patch, batch_size=batch_size, differentiable=differentiable)

    monkeypatch.setattr(tr, "global_features_incremental", spy)
    monkeypatch.setattr(tr, "hole_mask", lambda *a, **k: (_ for _ in ()).throw(AssertionError("full pass")))
    train_global(m, _images(), tmp_path / "run", progress=False)
    assert calls == [(1, 4, True)] * 8 * 3


def test_preset_fields_are_checked():
    with pytest.raises(ValueError, match="global_holes"):
        get_preset("smoke").replace(global_holes=0)
    with pytest.raises(ValueError, match="pretrained"):
        get_preset("smoke").replace(pretrained="yes")


def test_a_finished_joint_stage_is_not_recomputed(tmp_path, monkeypatch):
    # re-running fit on a finished run (e.g. to evaluate it with other evaluation settings) must not
    # recompute the Local-Net grid features of every training image
    import glance_lite.train.training as tr

    p = get_preset("smoke").replace(global_steps=3, checkpoint_every=100)
    imgs = _images()
    train_global(_model(p), imgs, tmp_path, progress=False)
    monkeypatch.setattr(tr, "grid_local_cache", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    h = train_global(_model(p), imgs, tmp_path, progress=False)
    assert len(h.records) == 3


@pytest.mark.parametrize("negatives", ["stain", "stain+swap"])
def test_dad_negatives_stained_or_swapped(tmp_path, monkeypatch, negatives):
    # dad_negatives="stain+swap": about half the negatives (label 1) are the cached Local-Net feature
    # of a normal patch from elsewhere, the other half stained patches; "stain" never swaps
    import glance_lite.train.training as tr

    p = get_preset("smoke").replace(global_steps=6, batch_size=16, checkpoint_every=100, dad_negatives=negatives)
    m = _model(p)
    imgs = _images(n=4)
    cache = tr.grid_local_cache(m, imgs, progress=False)
    feats = cache[0].permute(0, 2, 3, 1).reshape(-1, cache[0].shape[1]).float()
    seen = []
    real = tr.dad_loss

    def spy(head, z_star, z_g, y, **kw):
        seen.append((z_star.detach().clone(), y.clone()))
        return real(head, z_star, z_g, y, **kw)

    zl = []
    real_iad = tr.iad_score
    monkeypatch.setattr(tr, "dad_loss", spy)
    monkeypatch.setattr(tr, "iad_score", lambda a, b: (zl.append(a.detach().clone()), real_iad(a, b))[1])
    train_global(m, imgs, tmp_path / "run", progress=False, local_cache=cache)
    z_l = torch.cat(zl)
    z = torch.cat([s[0] for s in seen])
    y = torch.cat([s[1] for s in seen]).bool()
    is_cached = (torch.cdist(z, feats, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values < 1e-5)
    assert is_cached[~y].all()                      # clean samples: this patch's own feature
    swapped = (is_cached & y).float().mean() / y.float().mean()
    if negatives == "stain":
        assert swapped == 0
    else:
        assert 0.25 < swapped < 0.75, swapped        # about half of the negatives
        assert (~is_cached & y).any()                # and the rest still stained
        assert ((z - z_l).abs().amax(dim=1) > 0)[is_cached & y].all()   # never the patch itself


def test_later_training_fields_keep_old_run_keys():
    from glance_lite.common.presets import same_preset, training_fields

    p = get_preset("cpu")
    assert "dad_negatives" not in training_fields(p)
    assert training_fields(p.replace(dad_negatives="stain+swap"))["dad_negatives"] == "stain+swap"
    old = p.to_dict()
    old.pop("dad_negatives")                         # a results file written before the field existed
    assert same_preset(old, p) and not same_preset(old, p.replace(dad_negatives="stain+swap"))
    with pytest.raises(ValueError, match="dad_negatives"):
        p.replace(dad_negatives="swap")


def test_later_joint_stage_schedule_fields_keep_old_run_keys():
    from glance_lite.common.presets import same_local_net, same_preset, training_fields

    p = get_preset("cpu")
    assert "global_lr" not in training_fields(p) and "global_schedule" not in training_fields(p)
    q = p.replace(global_lr=1e-3, global_schedule="cosine")
    assert training_fields(q)["global_lr"] == 1e-3 and training_fields(q)["global_schedule"] == "cosine"
    assert same_local_net(p, q)                      # a joint-stage lever: the TS baseline is shared
    old = p.to_dict()
    old.pop("global_lr"), old.pop("global_schedule")  # a results file written before the fields existed
    assert same_preset(old, p) and not same_preset(old, q)
    with pytest.raises(ValueError, match="global_schedule"):
        p.replace(global_schedule="linear")
    with pytest.raises(ValueError, match="global_lr"):
        p.replace(global_lr=0.0)


def test_joint_stage_follows_its_learning_rate_schedule(tmp_path, monkeypatch):
    # the rate Adam actually used at each step: constant at lr by default; with global_schedule="cosine"
    # and global_lr, a warm-up to global_lr, then a decay to a tenth of it at the last step
    used: list[float] = []
    step = torch.optim.Adam.step

    def recording_step(self, *a, **k):
        used.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    base = get_preset("smoke").replace(global_steps=40, checkpoint_every=100)
    train_global(_model(base), _images(), tmp_path / "const", progress=False)
    assert used == [base.lr] * 40
    used.clear()
    p = base.replace(global_lr=1e-3, global_schedule="cosine")
    train_global(_model(p), _images(), tmp_path / "cos", progress=False)
    assert len(used) == 40
    assert used[0] == pytest.approx(1e-3 / 2)          # warm-up: 5 % of 40 steps = 2 steps
    assert max(used) == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(used[1:], used[2:]))   # then it only decays
    assert used[-1] == pytest.approx(1e-4, rel=0.05)   # to about a tenth at the last step
    assert [joint_lr(p)(s) for s in range(40)] == pytest.approx(used)


def test_stain_min_axis_reaches_the_dad_stains(tmp_path, monkeypatch):
    # the joint stage draws its stains with the preset's stain_min_axis, not add_stain's default
    import glance_lite.train.training as tr

    p = get_preset("smoke").replace(global_steps=2, batch_size=8, checkpoint_every=100, stain_min_axis=0.05)
    seen = []
    real = tr.add_stain
    monkeypatch.setattr(tr, "add_stain", lambda x, rng, **kw: (seen.append(kw.get("min_axis")), real(x, rng, **kw))[1])
    train_global(_model(p), _images(n=4), tmp_path / "run", progress=False)
    assert seen and set(seen) == {0.05}


def test_smoothed_iad_target_is_what_the_global_net_regresses(tmp_path, monkeypatch):
    # with iad_target_smoothing = 3 the joint stage's l_IAD compares Z_g with the mean Z_l of the 3 x 3
    # neighbouring grid patches, while the DAD head still gets the patch's own Z_l
    import glance_lite.train.training as tr
    from glance_lite.models.heads import iad_target

    p = get_preset("smoke").replace(global_steps=1, batch_size=8, checkpoint_every=100, iad_target_smoothing=3)
    m = _model(p)
    imgs = _images(n=4)
    cache = tr.grid_local_cache(m, imgs, False)
    seen = {}
    real_iad, real_dad = tr.iad_score, tr.dad_loss
    monkeypatch.setattr(tr, "iad_score", lambda a, b: (seen.setdefault("iad", a), real_iad(a, b))[1])
    monkeypatch.setattr(tr, "dad_loss", lambda h, a, b, y, **kw: (seen.setdefault("dad", (a, y)), real_dad(h, a, b, y, **kw))[1])
    train_global(m, imgs, tmp_path / "run", progress=False, local_cache=cache)
    z, y = seen["dad"]
    smooth = iad_target(cache[0].float(), 3).permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    raw = cache[0].float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])

    def rows_in(a, table):
        return all(bool(torch.isclose(table, r, atol=3e-3, rtol=0).all(1).any()) for r in a)  # the cache is float16

    assert rows_in(seen["iad"], smooth) and not rows_in(seen["iad"], raw)
    assert rows_in(z[y == 0], raw)  # the clean DAD inputs are the patches' own Z_l


def test_calibration_split_keeps_a_spread_quarter_out():
    from glance_lite.train.training import calibration_split

    joint, calib = calibration_split(60, 16)
    assert len(calib) == 15 and len(joint) == 45  # at most a quarter
    assert sorted(joint.tolist() + calib.tolist()) == list(range(60))  # a partition
    assert calib[0] == 0 and calib[-1] == 59 and (calib.diff() >= 3).all()  # spread, not a block
    joint, calib = calibration_split(200, 16)
    assert len(calib) == 16 and len(joint) == 184
    joint, calib = calibration_split(10, 0)
    assert joint.tolist() == list(range(10)) and len(calib) == 0
    with pytest.raises(ValueError):
        get_preset("smoke", calibration_images=-1)


def test_calibration_images_are_kept_from_the_joint_stage_and_fit_the_statistics(tmp_path, monkeypatch):
    # the joint stage trains on the other images; the whitener and the normaliser are fitted on these
    import glance_lite.train.training as T
    from glance_lite.evaluate.evaluation import score_stats
    from glance_lite.models.model import GlanceModel
    from test_cli import _tiny_dataset

    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    root = _tiny_dataset(tmp_path / "ds", size=48)
    seen = {}
    real = T.train_global

    def spy(model, images, *a, **k):
        seen["n"] = len(images)
        return real(model, images, *a, **k)

    monkeypatch.setattr(T, "train_global", spy)
    p = get_preset("smoke", calibration_images=2, iad_metric="mahalanobis", score_norm="position")
    run = tmp_path / "run"
    T.fit(root, "widget", run, p, progress=False)
    from glance_lite.data.mvtec import find_category

    n = len(T.load_train_images(find_category(root, "widget"), p))
    joint, calib = T.calibration_split(n, 2)
    assert n >= 4 and len(calib) == min(2, n // 4) >= 1
    assert seen["n"] == len(joint) == n - len(calib)
    stats = score_stats(run, GlanceModel.load(run), find_category(root, "widget"))
    assert stats["train_indices"] == calib.tolist() and stats["n_images"] == len(calib)
    # without the field: every image trains, and the statistics come from (up to) 16 of them
    T.fit(root, "widget", tmp_path / "run0", p.replace(calibration_images=0), progress=False)
    assert seen["n"] == n
