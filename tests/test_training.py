"""Training stages: exact resume, frozen Local-Net, losses that go down (smoke preset)."""

from __future__ import annotations

import pytest
import torch

from glance_lite.models.model import GlanceModel
from glance_lite.common.presets import get_preset
from glance_lite.train.training import LocalTrainer, crop_patches, train_global


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


def test_global_stage_resumes_exactly(tmp_path):
    p = get_preset("smoke").replace(global_steps=6, checkpoint_every=2)
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


def test_joint_loss_decreases(tmp_path):
    p = get_preset("smoke").replace(global_steps=60, checkpoint_every=1000, lr=3e-3, batch_size=16)
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


def test_preset_fields_are_checked():
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


def test_dad_negatives_are_stained_patches(tmp_path, monkeypatch):
    # a clean sample (label 0) shows the DAD head this patch's own cached Local-Net feature; a negative
    # (label 1) the feature of a stained copy, never a cached one (Sec. 3.2)
    import glance_lite.train.training as tr

    p = get_preset("smoke").replace(global_steps=6, batch_size=16, checkpoint_every=100)
    m = _model(p)
    imgs = _images(n=4)
    cache = tr.grid_local_cache(m, imgs, progress=False)
    feats = cache[0].permute(0, 2, 3, 1).reshape(-1, cache[0].shape[1]).float()
    seen = []
    real = tr.dad_loss

    def spy(head, z_star, z_g, y, **kw):
        seen.append((z_star.detach().clone(), y.clone()))
        return real(head, z_star, z_g, y, **kw)

    monkeypatch.setattr(tr, "dad_loss", spy)
    train_global(m, imgs, tmp_path / "run", progress=False, local_cache=cache)
    z = torch.cat([s[0] for s in seen])
    y = torch.cat([s[1] for s in seen]).bool()
    is_cached = (torch.cdist(z, feats, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values < 1e-5)
    assert y.any() and (~y).any()
    assert is_cached[~y].all()                      # clean samples: this patch's own feature
    assert not is_cached[y].any()                   # negatives: stained copies


def test_joint_stage_runs_at_the_preset_learning_rate(tmp_path, monkeypatch):
    # the rate Adam actually used at each step: the preset's lr, constant (as the re-implementation does)
    used: list[float] = []
    step = torch.optim.Adam.step

    def recording_step(self, *a, **k):
        used.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    base = get_preset("smoke").replace(global_steps=40, checkpoint_every=100)
    train_global(_model(base), _images(), tmp_path / "const", progress=False)
    assert used == [base.lr] * 40


def test_stain_min_axis_reaches_the_dad_stains(tmp_path, monkeypatch):
    # the joint stage draws its stains with the preset's stain_min_axis, not add_stain's default
    import glance_lite.train.training as tr

    p = get_preset("smoke").replace(global_steps=2, batch_size=8, checkpoint_every=100, stain_min_axis=0.05)
    seen = []
    real = tr.add_stain
    monkeypatch.setattr(tr, "add_stain", lambda x, rng, **kw: (seen.append(kw.get("min_axis")), real(x, rng, **kw))[1])
    train_global(_model(p), _images(n=4), tmp_path / "run", progress=False)
    assert seen and set(seen) == {0.05}


def test_joint_stage_trains_on_every_image_and_statistics_come_from_16(tmp_path, monkeypatch):
    # the joint stage trains on every training image; the whitener and the normaliser are fitted on (up to)
    # 16 of them, spread over the file list
    import glance_lite.train.training as T
    from glance_lite.data.mvtec import find_category
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
    p = get_preset("smoke", iad_metric="mahalanobis", score_norm="position")
    run = tmp_path / "run"
    T.fit(root, "widget", run, p, progress=False)
    n = len(T.load_train_images(find_category(root, "widget"), p))
    assert seen["n"] == n
    stats = score_stats(run, GlanceModel.load(run), find_category(root, "widget"))
    assert stats["train_indices"] == T.spread_indices(n, 16).tolist() and stats["n_images"] == min(n, 16)
