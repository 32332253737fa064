"""One-class CIFAR-10 (Sec. 4.3, Table 3): protocol, negatives, resuming, a tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from glance_lite.experiments import one_class as oc
from glance_lite.common.fileio import GlanceError
from glance_lite.models.model import GlanceModel
from glance_lite.common.presets import get_preset


def _write_npz(folder, n_train=6, n_test=4, seed=0):
    """A synthetic CIFAR-like dataset: class k is a noisy image of its own colour."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def make(n):
        xs, ys = [], []
        for k in range(10):
            base = np.array([(k * 25) % 256, (k * 80) % 256, (255 - k * 25) % 256], float)
            x = base + rng.normal(0, 20, size=(n, 32, 32, 3))
            xs.append(np.clip(x, 0, 255).astype(np.uint8))
            ys.append(np.full(n, k, np.uint8))
        return np.concatenate(xs), np.concatenate(ys)

    for name, n in (("cifar10_train.npz", n_train), ("cifar10_test.npz", n_test)):
        x, y = make(n)
        np.savez(folder / name, x=x, y=y)
    return folder


def _tiny_settings(**kw):
    base = dict(image_size=48, max_train=12, max_test=8, finetune_images=8, finetune_steps=2,
                global_steps=4, batch_size=4, lr=1e-3)
    base.update(kw)
    return oc.OneClassSettings(**base)


# ------------------------------------------------------------------------------------------------
# the paper's table
# ------------------------------------------------------------------------------------------------


def test_paper_table3_is_transcribed_consistently():
    classes = [c for c in oc.PAPER_TABLE3 if c != "mean"]
    assert classes == list(oc.class_names("cifar10"))
    for m in oc.PAPER_TABLE3_METHODS:
        mean = np.mean([oc.PAPER_TABLE3[c][m] for c in classes])
        assert abs(mean - oc.PAPER_TABLE3["mean"][m]) <= 0.0015, m
    assert oc.PAPER_TABLE3["airplane"]["Ours"] == 0.791 and oc.PAPER_TABLE3["mean"]["GradCon"] == 0.664


# ------------------------------------------------------------------------------------------------
# protocol
# ------------------------------------------------------------------------------------------------


def test_split_is_one_to_one_and_seeded(tmp_path):
    d = _write_npz(tmp_path / "c")
    a = oc.load_split(3, npz_dir=d, seed=0)
    assert len(a.train_x) == 6 and (a.test_y == 0).sum() == (a.test_y == 1).sum() == 4
    assert (a.test_classes[a.test_y == 0] == 3).all() and (a.test_classes[a.test_y == 1] != 3).all()
    b = oc.load_split("cat", npz_dir=d, seed=0)
    assert np.array_equal(a.test_x, b.test_x) and np.array_equal(a.test_classes, b.test_classes)
    c = oc.load_split(3, npz_dir=d, seed=1)
    assert not np.array_equal(a.test_classes, c.test_classes)
    small = oc.load_split(3, npz_dir=d, seed=0, max_train=2, max_test=4)
    assert len(small.train_x) == 2 and list(small.test_y) == [0, 0, 1, 1]


def test_different_indices_never_pick_the_image_itself():
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(5).repeat(400)
    other = oc.different_indices(idx, 5, g)
    assert (other != idx).all() and other.min() >= 0 and other.max() < 5
    # uniform over the four other images
    for i in range(5):
        counts = torch.bincount(other[idx == i], minlength=5).float()
        assert counts[i] == 0 and counts.sum() == 400
        assert (counts[torch.arange(5) != i] > 60).all()
    with pytest.raises(GlanceError):
        oc.different_indices(torch.zeros(3, dtype=torch.long), 1)


def test_training_step_pairs_image_with_its_own_and_a_different_feature(tmp_path, monkeypatch):
    p = get_preset("smoke")
    s = _tiny_settings(image_size=32, global_steps=3, batch_size=8)
    n = 7
    # image i is constant i/10 and its local feature is the constant vector i: both identify the image
    images = (torch.arange(n).float() / 10)[:, None, None, None].expand(n, 3, 32, 32).contiguous()
    z_local = torch.arange(n).float()[:, None].expand(n, p.descriptor_dim).contiguous()
    seen = []
    real = oc.one_class_loss

    def spy(global_net, dad, z_l, z_neg, images_g, mask, lambda_t=1.0):
        seen.append((z_l.clone(), z_neg.clone(), images_g.clone(), mask.clone()))
        return real(global_net, dad, z_l, z_neg, images_g, mask, lambda_t)

    monkeypatch.setattr(oc, "one_class_loss", spy)
    torch.manual_seed(0)
    oc.train_one_class_global(GlanceModel(p), images, z_local, s, tmp_path / "g.pt", progress=False)
    assert len(seen) == 3
    for z_l, z_neg, xg, mask in seen:
        own = z_l[:, 0].round().long()
        neg = z_neg[:, 0].round().long()
        assert (own != neg).all(), "a negative came from the image itself"
        assert xg.shape[-1] == s.image_size
        # the Global-Net sees the same image the positive local feature came from, and no hole
        assert torch.allclose(xg.mean((1, 2, 3)), own.float() / 10, atol=1e-5)
        assert torch.equal(mask, torch.ones_like(mask))


def test_global_mask_centre_hole():
    m = oc.global_mask(2, 48, 17, "centre")
    assert m.shape == (2, 1, 48, 48) and int((m == 0).sum()) == 2 * 17 * 17
    assert m[0, 0, 24, 24] == 0 and m[0, 0, 0, 0] == 1
    assert torch.equal(oc.global_mask(1, 8, 3), torch.ones(1, 1, 8, 8))
    with pytest.raises(GlanceError):
        oc.global_mask(1, 8, 3, "ring")


def test_loss_matches_equation_10():
    torch.manual_seed(0)
    p = get_preset("smoke")
    m = GlanceModel(p)
    z_l, z_n = torch.randn(3, p.descriptor_dim), torch.randn(3, p.descriptor_dim)
    x = torch.rand(3, 3, 48, 48)
    out = oc.one_class_loss(m.global_net, m.dad, z_l, z_n, x, torch.ones(3, 1, 48, 48), lambda_t=0.5)
    z_g = m.global_net(x, torch.ones(3, 1, 48, 48))
    iad = ((z_l - z_g) ** 2).mean()
    p_pos, p_neg = m.dad(z_l, z_g), m.dad(z_n, z_g)
    dad = -(torch.log(1 - p_pos).sum() + torch.log(p_neg).sum()) / 6
    assert torch.allclose(out["loss"], iad + 0.5 * dad, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# resuming
# ------------------------------------------------------------------------------------------------


def test_global_stage_resumes_exactly(tmp_path):
    p = get_preset("smoke").replace(checkpoint_every=2)
    s = _tiny_settings(global_steps=5, batch_size=4)
    g = torch.Generator().manual_seed(1)
    images, z_local = torch.rand(6, 3, 32, 32, generator=g), torch.randn(6, p.descriptor_dim, generator=g)

    def model():
        torch.manual_seed(3)
        return GlanceModel(p)

    m1 = model()
    oc.train_one_class_global(m1, images, z_local, s, tmp_path / "a.pt", progress=False)
    m2 = model()
    h = oc.train_one_class_global(m2, images, z_local, s, tmp_path / "b.pt", stop_after=3, progress=False)
    assert len(h.records) == 3
    m3 = model()
    h3 = oc.train_one_class_global(m3, images, z_local, s, tmp_path / "b.pt", progress=False)
    assert len(h3.records) == 5
    for (k, a), b in zip(m1.state_dict().items(), m3.state_dict().values()):
        assert torch.equal(a, b), f"{k} differs after resume"
    assert not torch.equal(model().global_net.fc.weight, m1.global_net.fc.weight)


# ------------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------------


def test_smoke_end_to_end(tmp_path):
    d = _write_npz(tmp_path / "c")
    p = get_preset("smoke")
    s = _tiny_settings()
    out = tmp_path / "t3"
    rows = oc.table3([0, "bird"], p, out, npz_dir=d, progress=False, settings=s, pretrain_dir=tmp_path / "pre")
    assert [r["class"] for r in rows] == ["airplane", "bird"]
    for r in rows:
        assert 0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["auroc_iad"] <= 1.0 and 0.0 <= r["auroc_dad"] <= 1.0
        assert r["n_train"] == 6 and r["n_test"] == 8 and r["n_outliers"] == 4 and r["seconds"] > 0
        assert r["paper"]["Ours"] == oc.PAPER_TABLE3[r["class"]]["Ours"]
    run = out / "airplane"
    saved = json.loads((out / "table3.json").read_text())
    assert [r["auroc"] for r in saved["rows"]] == [r["auroc"] for r in rows]
    # scores can be recomputed from the run folder, and equal the stored ones
    npz = np.load(run / "scores.npz")
    split = oc.load_split(0, npz_dir=d, seed=p.seed, max_train=s.max_train, max_test=s.max_test)
    sc = oc.score_one_class(run, split.test_x)
    assert np.allclose(sc.score, npz["score"]) and np.array_equal(npz["labels"], split.test_y)
    assert np.allclose(sc.score, 0.8 * sc.iad + 0.2 * sc.dad)
    # a finished run is reused, not retrained
    mtime = (run / "model.pt").stat().st_mtime_ns
    assert oc.fit_one_class(0, p, run, npz_dir=d, settings=s, pretrain_dir=tmp_path / "pre", progress=False) == run
    assert (run / "model.pt").stat().st_mtime_ns == mtime
    # the folder refuses a run of another class
    with pytest.raises(GlanceError, match="another"):
        oc.fit_one_class(1, p, run, npz_dir=d, settings=s, pretrain_dir=tmp_path / "pre", progress=False)
    md = oc.table3_markdown(rows)
    assert "0.791" in md and "mean (2)" in md
    # the book's table: the same numbers, one row per class plus the mean, the paper's columns labelled
    df = oc.table3_frame(rows)
    assert list(df.index) == ["airplane", "bird", "mean (2)"]
    assert df.loc["bird", "ours (Eq. 13)"] == rows[1]["auroc"]
    assert df.loc["mean (2)", "paper: Ours"] == pytest.approx((oc.PAPER_TABLE3["airplane"]["Ours"]
                                                              + oc.PAPER_TABLE3["bird"]["Ours"]) / 2)


def test_offline_demo_split_follows_the_protocol():
    names = oc.class_names("offline-demo")
    sp = oc.load_split(names[0], dataset="offline-demo", seed=0, max_train=5, max_test=6)
    assert sp.classes == names and sp.normal_name == names[0]
    assert sp.train_x.shape == (5, 32, 32, 3) and sp.train_x.dtype == np.uint8
    assert list(sp.test_y) == [0, 0, 0, 1, 1, 1]
    assert (sp.test_classes[:3] == 0).all() and (sp.test_classes[3:] != 0).all()


def test_bad_settings_are_rejected():
    with pytest.raises(GlanceError):
        _tiny_settings(hole="ring")
    with pytest.raises(GlanceError):
        _tiny_settings(max_train=1)
    with pytest.raises(GlanceError):
        oc.class_names("mnist")
