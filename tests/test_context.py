"""Tests of the context-predictability diagnostic (glance_lite.evaluate.context)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glance_lite.common.presets import get_preset
from glance_lite.evaluate.context import clean_patch_mask, context_r2, context_r2_from_features
from glance_lite.models.global_net import hole_mask
from glance_lite.models.model import GlanceModel
from glance_lite.score.scoring import patch_grid


def _data(n: int = 6, p: int = 9, d: int = 4, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    place = rng.normal(size=(1, p, d)) * 3  # what each grid position usually holds
    return place + noise * rng.normal(size=(n, p, d))


def test_perfect_mean_and_worse_than_mean_predictions():
    t = _data(noise=1.0)
    assert context_r2_from_features(t, t)["r2_context"] == pytest.approx(1.0)
    mean = np.broadcast_to(t.mean((0, 1)), t.shape)
    assert context_r2_from_features(t, mean)["r2_context"] == pytest.approx(0.0, abs=1e-12)
    assert context_r2_from_features(t, -t)["r2_context"] < 0  # worse than the mean
    # a constant offset is forgiven (the whitened IAD subtracts the mean residual), and reported
    shifted = context_r2_from_features(t, t + 0.5)
    assert shifted["r2_context"] == pytest.approx(1.0) and shifted["offset"] == pytest.approx(0.25)
    # a prediction that varies without following the target explains nothing and adds its own variance
    rng = np.random.default_rng(5)
    r = context_r2_from_features(t, mean + rng.normal(size=t.shape))
    assert r["r2_context"] < -0.05


def test_position_r2_is_one_for_a_pure_layout_and_near_zero_for_a_texture():
    layout = _data(noise=0.0)  # every image the same at each place
    assert context_r2_from_features(layout, layout * 0)["r2_position"] == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    texture = rng.normal(size=(40, 9, 4))  # no place holds anything in particular
    r = context_r2_from_features(texture, texture)
    assert abs(r["r2_position"]) < 0.1 and r["r2_context"] == pytest.approx(1.0)


def test_position_mean_leaves_the_image_out():
    # two images that differ everywhere: with itself included the position mean would explain half
    t = np.stack([np.ones((3, 2)), -np.ones((3, 2))])
    r = context_r2_from_features(t, t)
    # leaving each image out, the position mean is the *other* image: error 2 everywhere, R² = 1 - 4 = -3
    assert r["r2_position"] == pytest.approx(-3.0)


def test_keep_drops_patches_from_every_sum():
    t = _data(noise=1.0, seed=1)
    g = t + 0.1
    base = context_r2_from_features(t, g)
    g2, t2 = g.copy(), t.copy()
    g2[0, 0] += 1e6  # a wildly wrong patch, then left out
    keep = np.ones(t.shape[:2], bool)
    keep[0, 0] = False
    r = context_r2_from_features(t2, g2, keep)
    assert r["n_patches"] == base["n_patches"] - 1
    assert r["r2_context"] == pytest.approx(context_r2_from_features(
        t.reshape(1, -1, 4)[:, 1:], g.reshape(1, -1, 4)[:, 1:])["r2_context"])
    assert context_r2_from_features(t2, g2)["r2_context"] < -1e3


def test_bad_shapes_and_constant_targets_are_refused():
    with pytest.raises(ValueError, match="N, P, n"):
        context_r2_from_features(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="undefined"):
        context_r2_from_features(np.ones((2, 3, 4)), np.zeros((2, 3, 4)))


def test_clean_patch_mask_matches_a_loop():
    h, w, p = 30, 26, 7
    tops, lefts = patch_grid(h, w, p, 4)
    masks = torch.zeros(2, h, w)
    masks[0, 12, 9] = 1
    masks[1, 0:3, 20:26] = 1
    got = clean_patch_mask(masks, tops, lefts, p)
    for i in range(2):
        want = [not bool(masks[i, t:t + p, l:l + p].any()) for t in tops.tolist() for l in lefts.tolist()]
        assert got[i].tolist() == want
    assert not got[0].all() and got[0].any()


def test_context_r2_on_a_model_matches_the_patch_by_patch_reference():
    torch.manual_seed(0)
    model = GlanceModel(get_preset("smoke")).eval()
    s, p = model.preset.image_size, model.preset.patch_size
    images = torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(2, s, s)
    masks[1, :p, :p] = 1  # the top-left patches of image 1 are "defective"
    got = context_r2(model, images, masks)
    tops, lefts = patch_grid(s, s, p, model.preset.score_stride)
    ts, gs = [], []
    with torch.no_grad():
        for i in range(2):
            zt, zg = [], []
            for t in tops.tolist():
                for l in lefts.tolist():
                    zt.append(model.local_net(images[i:i + 1, :, t:t + p, l:l + p])[0])
                    zg.append(model.global_net(images[i:i + 1], hole_mask(s, [t], [l], p))[0])
            ts.append(torch.stack(zt))
            gs.append(torch.stack(zg))
    want = context_r2_from_features(torch.stack(ts), torch.stack(gs), clean_patch_mask(masks, tops, lefts, p))
    assert got["n_patches"] == want["n_patches"] < 2 * len(tops) * len(lefts)
    assert got["r2_context"] == pytest.approx(want["r2_context"], abs=1e-4)
    assert got["r2_position"] == pytest.approx(want["r2_position"], abs=1e-4)


def test_context_check_end_to_end_on_a_validated_run(tmp_path, monkeypatch):
    import json

    from glance_lite.data.offline_data import make_offline
    from glance_lite.experiments import validation as V
    from glance_lite.experiments.context_check import main

    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    off = make_offline(tmp_path / "off", size=64, n_train=6, n_test_good=2, n_test_defect=2)
    p = get_preset("smoke").replace(name="smoke-ctx", global_steps=2)
    V.validate([f"{off}:brick", f"{off}:mesh"], tmp_path / "val", p, ts=False, progress=False)
    vf = tmp_path / "val" / "smoke-ctx" / "validation.json"
    v = json.loads(vf.read_text())
    # a run folder that is gone is skipped and named, not a crash
    gone = v["rows"][1]["run"]
    import shutil

    shutil.rmtree(gone)
    out = tmp_path / "ctx.json"
    assert main(["--validation", str(vf), "--out", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert [r["source"] for r in res["rows"]] == [v["rows"][0]["source"]]
    assert res["skipped"] and res["skipped"][0]["source"] == v["rows"][1]["source"] and gone in res["skipped"][0]["why"]
    r = res["rows"][0]
    assert r["AU-PRO"] == v["rows"][0]["AU-PRO"] and r["variant"] == "smoke-ctx"
    assert r["r2_context"] <= 1 and r["r2_position"] <= 1 and r["n_train_images"] == 6
    # the defect-free patches of every test image (2 good, 2 per defect type): fewer than all of them
    tops, lefts = patch_grid(r["image_size"], r["image_size"], r["patch_size"], p.score_stride)
    assert r["n_images"] == 10 and 0 < r["n_patches"] < 10 * len(tops) * len(lefts)
    assert res["git_commit"] and res["hardware"] and "context_check" in res["command"]
    # nothing on disk at all: a clear failure
    shutil.rmtree(v["rows"][0]["run"])
    assert main(["--validation", str(vf), "--out", str(tmp_path / "none.json"), "--quiet"]) == 1
    assert not (tmp_path / "none.json").exists()


def test_training_image_r2_uses_the_first_training_images(tmp_path, monkeypatch):
    # the R² on training images is measured on the first train_images of them, all seen by the joint stage
    import glance_lite.evaluate.context as C
    from glance_lite.common.presets import get_preset
    from glance_lite.data.mvtec import MVTecDataset, find_category
    from glance_lite.train.training import fit
    from test_cli import _tiny_dataset

    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    root = _tiny_dataset(tmp_path / "ds", size=48)
    p = get_preset("smoke")
    fit(root, "widget", tmp_path / "run", p, progress=False)
    seen = []
    real = C.context_r2

    def spy(model, images, masks=None, **k):
        seen.append(images.clone())
        return real(model, images, masks, **k)

    monkeypatch.setattr(C, "context_r2", spy)
    out = C.context_r2_of_run(tmp_path / "run", root, "widget", train_images=2)
    train = MVTecDataset(find_category(root, "widget"), "train", p.image_size, max_images=p.max_train_images)
    assert len(train) > 2 and out["n_train_images"] == 2
    assert torch.equal(seen[-1], torch.stack([train[i]["image"] for i in range(2)]))
