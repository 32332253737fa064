"""Tests of the score maps (Eq. 11-13, raster grid, IDW) and of the fast exact evaluation."""

from __future__ import annotations


import pytest
import torch

from glance_lite.score import idw, scoring
from glance_lite.common.fileio import GlanceError
from glance_lite.models.global_net import GlobalNet, hole_mask
from glance_lite.models.local_net import LocalNet
from glance_lite.models.model import GlanceModel
from glance_lite.common.presets import get_preset
from glance_lite.score.scoring import (
    ScoringError,
    anomaly_maps,
    anomaly_maps_loop,
    fit_score_normaliser,
    global_features_batched,
    global_features_incremental,
    head_maps,
    idw_interpolate,
    idw_weights,
    local_features_at,
    normalise_scores,
    patch_centres,
    patch_grid,
    score_patches,
    score_patches_loop,
)


@pytest.fixture(scope="module")
def smoke_model() -> GlanceModel:
    torch.manual_seed(0)
    return GlanceModel(get_preset("smoke")).eval()


@pytest.fixture(scope="module")
def smoke_images() -> torch.Tensor:
    s = get_preset("smoke").image_size
    return torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------ grid


@pytest.mark.parametrize("h,w,p,s", [(48, 48, 17, 8), (128, 128, 33, 4), (50, 37, 17, 5), (33, 40, 33, 7), (20, 20, 3, 1)])
def test_grid_covers_every_pixel_and_touches_the_borders(h, w, p, s):
    tops, lefts = patch_grid(h, w, p, s)
    assert tops[0] == 0 and lefts[0] == 0
    assert tops[-1] == h - p and lefts[-1] == w - p
    assert torch.all(tops.diff() > 0) and torch.all(tops.diff() <= s) and torch.all(lefts.diff() <= s)
    # all but the last step are exactly the stride (raster scan), the last may be shorter
    assert torch.all(tops.diff()[:-1] == s) and torch.all(lefts.diff()[:-1] == s)
    covered = torch.zeros(h, w, dtype=torch.bool)
    for t in tops.tolist():
        for l in lefts.tolist():
            covered[t : t + p, l : l + p] = True
    assert covered.all()


def test_grid_rejects_bad_arguments():
    with pytest.raises(GlanceError, match="does not fit"):
        patch_grid(16, 40, 17, 4)
    with pytest.raises(ScoringError, match="positive"):
        patch_grid(48, 48, 17, 0)


def test_centres_are_patch_middles():
    cy, cx = patch_centres(torch.tensor([0, 4]), torch.tensor([2]), 17)
    assert cy.tolist() == [8.0, 12.0] and cx.tolist() == [10.0]


# ------------------------------------------------------------------------------------------- IDW


def _idw_reference(scores, cy, cx, h, w, power, k):
    """Brute force over pixels, for scattered centres (B, K)."""
    out = torch.empty(scores.shape[0], h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            d = ((cy - y) ** 2 + (cx - x) ** 2).sqrt()
            order = torch.argsort(d)
            order = order[d[order] <= d[order[k - 1]]]  # the k nearest, and any tied with the k-th
            if d[order[0]] == 0:
                out[:, y, x] = scores[:, order[0]]
                continue
            wt = 1.0 / d[order] ** power
            out[:, y, x] = (scores[:, order] * wt).sum(1) / wt.sum()
    return out


@pytest.mark.parametrize("power,k", [(2.0, 4), (1.0, 9), (3.0, None), (0.0, 3)])
def test_idw_matches_brute_force(power, k):
    g = torch.Generator().manual_seed(0)
    K, h, w = 12, 9, 11
    cy = torch.rand(K, generator=g, dtype=torch.float64) * (h - 1)
    cx = torch.rand(K, generator=g, dtype=torch.float64) * (w - 1)
    cy[0], cx[0] = 4.0, 5.0  # one centre exactly on a pixel
    scores = torch.randn(2, K, generator=g)
    got = idw_interpolate(scores, cy, cx, h, w, power=power, neighbours=k)
    ref = _idw_reference(scores.double(), cy, cx, h, w, power, k or K)
    assert torch.allclose(got.double(), ref, atol=1e-5)
    assert torch.equal(got[:, 4, 5], scores[:, 0])


def test_idw_is_exact_at_grid_centres_and_constant_for_constant_scores():
    tops, lefts = patch_grid(40, 30, 9, 6)
    cy, cx = patch_centres(tops, lefts, 9)
    s = torch.randn(3, len(tops), len(lefts))
    m = idw_interpolate(s, cy, cx, 40, 30)
    for i, y in enumerate(cy.long().tolist()):
        for j, x in enumerate(cx.long().tolist()):
            assert torch.equal(m[:, y, x], s[:, i, j])
    c = idw_interpolate(torch.full((1, len(tops), len(lefts)), 2.5), cy, cx, 40, 30, neighbours=0)
    assert torch.allclose(c, torch.full_like(c, 2.5), atol=1e-6)


def test_idw_is_a_convex_combination_and_linear():
    tops, lefts = patch_grid(32, 32, 7, 5)
    cy, cx = patch_centres(tops, lefts, 7)
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(2, len(tops), len(lefts), generator=g), torch.randn(2, len(tops), len(lefts), generator=g)
    for k in (1, 4, 9, None):
        ma, mb = idw_interpolate(a, cy, cx, 32, 32, neighbours=k), idw_interpolate(b, cy, cx, 32, 32, neighbours=k)
        lo = a.amin(dim=(1, 2))[:, None, None]
        hi = a.amax(dim=(1, 2))[:, None, None]
        assert torch.all(ma >= lo - 1e-6) and torch.all(ma <= hi + 1e-6)
        assert torch.allclose(idw_interpolate(0.3 * a - 2 * b, cy, cx, 32, 32, neighbours=k), 0.3 * ma - 2 * mb, atol=1e-5)
        idx, wt = idw_weights(cy, cx, 32, 32, 2.0, k)
        assert torch.all(wt >= 0) and torch.allclose(wt.sum(1), torch.ones(32 * 32), atol=1e-6)
    # one neighbour = the nearest centre's score, or the mean of the tied nearest ones
    tops, lefts = patch_grid(30, 30, 7, 4)  # even spacing: many pixels are equidistant from centres
    cy, cx = patch_centres(tops, lefts, 7)
    s = torch.rand(1, len(tops), len(lefts), generator=g)
    m1 = idw_interpolate(s, cy, cx, 30, 30, neighbours=1)
    ys, xs = torch.meshgrid(torch.arange(30.0), torch.arange(30.0), indexing="ij")
    gy, gx = torch.meshgrid(cy.float(), cx.float(), indexing="ij")
    dist = (ys[:, :, None] - gy.reshape(-1)) ** 2 + (xs[:, :, None] - gx.reshape(-1)) ** 2  # (H, W, K)
    near = (dist == dist.amin(-1, keepdim=True)).float()
    expect = (near * s.reshape(-1)).sum(-1) / near.sum(-1)
    assert int((near.sum(-1) > 1).sum()) > 0  # ties do occur on this grid
    assert torch.allclose(m1[0], expect, atol=1e-6)


def test_idw_ignores_tie_breaking_so_symmetric_scores_give_symmetric_maps():
    tops, lefts = patch_grid(40, 40, 9, 4)
    cy, cx = patch_centres(tops, lefts, 9)
    a = torch.rand(1, len(tops), len(lefts), generator=torch.Generator().manual_seed(4))
    s = a + a.transpose(1, 2)
    for k in (2, 4, 9, 12):
        m = idw_interpolate(s, cy, cx, 40, 40, neighbours=k)
        assert torch.allclose(m, m.transpose(1, 2), atol=1e-6)


def test_idw_power_sharpens_towards_the_nearest_centre():
    # two centres on a line; a pixel at distance 1 from the first and 3 from the second
    cy, cx = torch.tensor([0.0, 0.0]), torch.tensor([0.0, 4.0])
    s = torch.tensor([[1.0, 0.0]])
    vals = [float(idw_interpolate(s, cy, cx, 1, 5, power=pw, neighbours=None)[0, 0, 1]) for pw in (0, 1, 2, 4, 8)]
    assert vals[0] == pytest.approx(0.5)  # power 0: plain average
    assert vals[1] == pytest.approx(0.75)  # (1/1) / (1/1 + 1/3)
    assert vals[2] == pytest.approx(0.9)  # (1) / (1 + 1/9)
    assert all(x < y for x, y in zip(vals, vals[1:])) and vals[-1] > 0.9998


def test_idw_geometry_is_cached_and_all_neighbours_work_in_chunks(monkeypatch):
    tops, lefts = patch_grid(24, 24, 5, 3)
    cy, cx = patch_centres(tops, lefts, 5)
    w1 = idw_weights(cy, cx, 24, 24, 2.0, 9)
    assert idw_weights(cy, cx, 24, 24, 2.0, 9)[1] is w1[1]
    s = torch.randn(2, len(tops), len(lefts))
    small = idw_interpolate(s, cy, cx, 24, 24, neighbours=None)
    monkeypatch.setattr(idw, "_IDW_DENSE_LIMIT", 10)  # force the uncached chunked path
    monkeypatch.setattr(idw, "_IDW_CHUNK", 500)
    assert torch.allclose(idw_interpolate(s, cy, cx, 24, 24, neighbours=0), small, atol=1e-6)


def test_idw_rejects_bad_input():
    cy, cx = torch.arange(3.0), torch.arange(4.0)
    with pytest.raises(ScoringError, match="do not match"):
        idw_interpolate(torch.zeros(1, 4, 3), cy, cx, 8, 8)
    with pytest.raises(ScoringError, match="power"):
        idw_interpolate(torch.zeros(1, 3, 4), cy, cx, 8, 8, power=-1)
    with pytest.raises(ScoringError, match=r"\(B, gh, gw\)"):
        idw_interpolate(torch.zeros(3), cy, cx, 8, 8)


# ------------------------------------------------------------------------- local and global nets


@pytest.mark.parametrize("p,h,w,stride", [(17, 48, 48, 8), (17, 30, 26, 1), (33, 50, 45, 4), (33, 47, 41, 3)])
def test_local_features_at_grid_equal_per_patch_forward(p, h, w, stride):
    torch.manual_seed(0)
    net = LocalNet(patch_size=p, dim=16).eval()
    img = torch.rand(2, 3, h, w)
    tops, lefts = patch_grid(h, w, p, stride)
    with torch.no_grad():
        got = local_features_at(net, img, tops, lefts)
        for b in range(2):
            for i, t in enumerate(tops.tolist()):
                ref = net(torch.stack([img[b, :, t : t + p, l : l + p] for l in lefts.tolist()]))
                assert torch.allclose(got[b, :, i, :].T, ref, atol=1e-5)


@pytest.mark.parametrize(
    "h,w,p,strides",
    [(48, 48, 17, (2, 1, 2, 1, 2, 1, 2)), (96, 83, 17, (2, 1, 2, 1, 2, 1, 2)), (70, 131, 33, (2, 1, 2, 1, 2, 1, 2)),
     (41, 57, 9, (1, 2, 1, 2))],
)
def test_incremental_global_net_equals_masked_forward(h, w, p, strides):
    torch.manual_seed(1)
    net = GlobalNet(channels=(4, 6, 5, 8, 8, 8, 6)[: len(strides)], strides=strides, dim=12).eval()
    g = torch.Generator().manual_seed(2)
    img = torch.rand(1, 3, h, w, generator=g)
    # random holes plus the four corners, in an order that is not a grid
    tops = torch.cat([torch.randint(0, h - p + 1, (23,), generator=g), torch.tensor([0, 0, h - p, h - p])])
    lefts = torch.cat([torch.randint(0, w - p + 1, (23,), generator=g), torch.tensor([0, w - p, 0, w - p])])
    with torch.no_grad():
        got = global_features_incremental(net, img, tops, lefts, p, batch_size=10)
        ref = torch.cat([net(img, hole_mask((h, w), [t], [l], p)) for t, l in zip(tops.tolist(), lefts.tolist())])
        assert torch.allclose(got, ref, atol=1e-5)
        assert torch.allclose(global_features_batched(net, img, tops, lefts, p, batch_size=7), ref, atol=1e-5)
        # as in the plain forward, the hole's pixels never matter (not even nan)
        t, l = int(tops[0]), int(lefts[0])
        poisoned = img.clone()
        poisoned[..., t : t + p, l : l + p] = float("nan")
        assert torch.equal(global_features_incremental(net, poisoned, tops[:1], lefts[:1], p),
                           global_features_incremental(net, img, tops[:1], lefts[:1], p))


def test_incremental_global_net_rejects_bad_holes():
    net = GlobalNet(channels=(4, 4), strides=(2, 1), dim=4)
    img = torch.rand(1, 3, 20, 20)
    with pytest.raises(ScoringError, match="inside"):
        global_features_incremental(net, img, torch.tensor([5]), torch.tensor([15]), 9)
    with pytest.raises(ScoringError, match="one image"):
        global_features_incremental(net, torch.rand(2, 3, 20, 20), torch.tensor([0]), torch.tensor([0]), 9)


# ------------------------------------------------------------------------------- scores and maps


def test_fast_maps_equal_the_per_patch_loop(smoke_model, smoke_images):
    fast = score_patches(smoke_model, smoke_images)
    loop = score_patches_loop(smoke_model, smoke_images)
    assert loop["n_done"] == fast["s_iad"][0].numel()
    assert torch.equal(fast["tops"], loop["tops"]) and torch.equal(fast["lefts"], loop["lefts"])
    assert torch.allclose(fast["s_iad"], loop["s_iad"], atol=1e-5)
    assert torch.allclose(fast["s_dad"], loop["s_dad"], atol=1e-5)
    # the scores really vary over the grid (the comparison is not trivially between constants)
    assert float(fast["s_iad"].std()) > 1e-3
    m_fast = anomaly_maps(smoke_model, smoke_images)
    m_loop = anomaly_maps_loop(smoke_model, smoke_images)
    assert m_fast.shape == smoke_images[:, 0].shape
    assert torch.allclose(m_fast, m_loop, atol=1e-5)
    assert torch.allclose(anomaly_maps(smoke_model, smoke_images, method="batched"), m_loop, atol=1e-5)
    # Eq. 13 at the patch centres
    p = smoke_model.preset
    cy, cx = patch_centres(fast["tops"], fast["lefts"], p.patch_size)
    s13 = p.lambda_s * fast["s_iad"] + (1 - p.lambda_s) * fast["s_dad"]
    assert torch.allclose(m_fast[:, cy.long()][:, :, cx.long()], s13, atol=1e-6)


def test_head_maps_combine_linearly_into_the_anomaly_map(smoke_model, smoke_images):
    hm = head_maps(smoke_model, smoke_images, stride=5)
    for lam in (0.0, 0.3, 0.8, 1.0):
        m = anomaly_maps(smoke_model, smoke_images, lambda_s=lam, stride=5)
        assert torch.allclose(lam * hm["iad"] + (1 - lam) * hm["dad"], m, atol=1e-5)
    assert torch.all(hm["dad"] >= 0) and torch.all(hm["dad"] <= 1)


def test_score_normaliser_is_fitted_on_training_scores(smoke_model, smoke_images):
    train = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    stats = fit_score_normaliser(smoke_model, train)
    assert stats["n_images"] == 3 and stats["method"] == "zscore"
    sc = score_patches(smoke_model, train)
    zi, zd = normalise_scores(sc["s_iad"], sc["s_dad"], stats)
    assert abs(float(zi.mean())) < 1e-4 and float(zi.std()) == pytest.approx(1.0, rel=1e-4)
    assert abs(float(zd.mean())) < 1e-4
    raw, norm = head_maps(smoke_model, smoke_images), head_maps(smoke_model, smoke_images, normalise=stats)
    assert torch.allclose(norm["iad"], (raw["iad"] - stats["iad"]["mean"]) / stats["iad"]["std"], atol=1e-4)
    p99 = fit_score_normaliser(smoke_model, train, method="p99")
    n2 = anomaly_maps(smoke_model, smoke_images, normalise=p99, lambda_s=1.0)
    assert torch.allclose(n2, raw["iad"] / p99["iad"]["p99"], atol=1e-5)
    with pytest.raises(ScoringError):
        normalise_scores(zi, zd, {"method": "zscore"})
    with pytest.raises(ScoringError):
        fit_score_normaliser(smoke_model, train, method="minmax")


def test_scoring_uses_eval_mode_without_grad_and_restores_the_mode(smoke_model, smoke_images):
    smoke_model.train()
    try:
        sc = score_patches(smoke_model, smoke_images[:1])
        assert smoke_model.training and smoke_model.global_net.training
        assert not sc["s_iad"].requires_grad
    finally:
        smoke_model.eval()


def test_scoring_rejects_bad_images(smoke_model):
    with pytest.raises(GlanceError, match=r"\(B, 3, H, W\)"):
        anomaly_maps(smoke_model, torch.rand(3, 48, 48))
    with pytest.raises(GlanceError, match="smaller than"):
        anomaly_maps(smoke_model, torch.rand(1, 3, 10, 48))


def test_loop_subset_for_extrapolation(smoke_model, smoke_images):
    sc = score_patches_loop(smoke_model, smoke_images[:1], max_patches=3)
    assert sc["n_done"] == 3
    done = ~sc["s_iad"].isnan()
    assert int(done.sum()) == 3 and bool(done[0, 0, :3].all())
    fast = score_patches(smoke_model, smoke_images[:1])
    assert torch.allclose(sc["s_iad"][done], fast["s_iad"][done], atol=1e-5)


def test_bench_table_formats_rows():
    from glance_lite.experiments.bench import format_table

    row = dict(preset="paper", image=256, patch=33, stride=4, patches_per_image=3249, fast_s_per_image=2.0,
               loop_s_per_image=100.0, ratio_wall=50.0, ratio_cpu=40.0, fast_setup_s=1.0, fast_peak_mb=10.0,
               loop_peak_mb=None, max_abs_diff_scores=1e-7, max_abs_diff_maps=None,
               loop_extrapolated_from_patches=48, threads=2)
    t = format_table([row])
    assert "50.0x" in t and "extrapolated" in t and "n/a" in t and "(scores)" in t


def test_incremental_global_net_at_the_cpu_preset_geometry():
    torch.manual_seed(3)
    p = get_preset("cpu")
    net = GlobalNet.from_preset(p).eval()
    img = torch.rand(1, 3, p.image_size, p.image_size)
    tops, lefts = patch_grid(p.image_size, p.image_size, p.patch_size, 31)
    ty, lx = tops.repeat_interleave(len(lefts)), lefts.repeat(len(tops))
    with torch.no_grad():
        got = global_features_incremental(net, img, ty, lx, p.patch_size)
        ref = global_features_batched(net, img, ty, lx, p.patch_size, batch_size=len(ty))
    assert torch.allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("h,w,p,s,k", [(48, 48, 17, 8, 9), (40, 37, 9, 3, 4), (30, 30, 7, 4, 1), (50, 21, 5, 2, 12)])
def test_idw_grid_shortcut_equals_brute_force_over_all_centres(h, w, p, s, k):
    tops, lefts = patch_grid(h, w, p, s)
    cy, cx = patch_centres(tops, lefts, p)
    gy, gx = torch.meshgrid(cy, cx, indexing="ij")
    sc = torch.randn(2, len(tops), len(lefts), generator=torch.Generator().manual_seed(0))
    scoring.clear_idw_cache()
    fast = idw_interpolate(sc, cy, cx, h, w, neighbours=k)  # grid: only nearby centres are examined
    scoring.clear_idw_cache()
    brute = idw_interpolate(sc.reshape(2, -1), gy.reshape(-1), gx.reshape(-1), h, w, neighbours=k)
    assert torch.allclose(fast, brute, atol=1e-6)


def test_position_normaliser_removes_what_every_training_image_shares(smoke_model, smoke_images):
    from glance_lite.score.scoring import normalised_head_maps

    train = torch.rand(4, 3, 48, 48, generator=torch.Generator().manual_seed(6))
    stats = fit_score_normaliser(smoke_model, train, method="position")
    sc = score_patches(smoke_model, train)
    pi, pd = normalise_scores(sc["s_iad"], sc["s_dad"], stats)
    # on the training images, every grid position now has mean 0 and the residual unit spread
    assert torch.allclose(pi.mean(0), torch.zeros_like(pi[0]), atol=1e-4)
    assert float(pi.std()) == pytest.approx(1.0, rel=0.05)
    # an error that every training image makes at one place is gone; a new one at that place stays
    bumped = sc["s_iad"].clone()
    bumped[:, 0, 0] += 5.0
    st2 = dict(stats, iad=dict(stats["iad"], position_mean=bumped.double().mean(0).tolist()))
    assert torch.allclose(normalise_scores(bumped, sc["s_dad"], st2)[0], pi, atol=1e-4)
    # the maps of each method come from one scoring pass and agree with normalise-then-IDW
    maps = normalised_head_maps(smoke_model, smoke_images, stats)
    raw = head_maps(smoke_model, smoke_images)
    assert torch.allclose(maps["none"]["iad"], raw["iad"], atol=1e-6)
    z = head_maps(smoke_model, smoke_images, normalise=dict(stats, method="zscore"))
    assert torch.allclose(maps["zscore"]["dad"], z["dad"], atol=1e-5)
    pos = head_maps(smoke_model, smoke_images, normalise=stats)
    assert torch.allclose(maps["position"]["iad"], pos["iad"], atol=1e-5)
    with pytest.raises(ScoringError, match="grid"):
        normalise_scores(sc["s_iad"][:, :2, :2], sc["s_dad"][:, :2, :2], stats)
