"""Stained negatives (Sec. 3.2) and the IAD / DAD heads (Eq. 7-9, 11-13)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glance_lite.models.heads import DADHead, combined_score, dad_loss, dad_score, iad_score
from glance_lite.data.stains import add_stain, stain_mask


@pytest.mark.parametrize("p", [17, 33, 65])
def test_stain_lies_inside_patch_and_scales_with_it(p):
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(50):
        m = stain_mask(p, rng)
        assert m.any()
        # never touches the border: the stain lies entirely inside the patch
        assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
        areas.append(m.mean())
    # a small stain: between ~1% and ~40% of the patch, whatever p is
    assert 0.01 < np.mean(areas) < 0.4


def test_stain_contours_are_irregular_not_ellipses():
    rng = np.random.default_rng(1)
    m = stain_mask(65, rng, jitter=0.25)
    # compare with the best ellipse of the same second moments: a jittered contour differs
    ys, xs = np.nonzero(m)
    assert m.sum() > 20
    ellipse_like = stain_mask(65, np.random.default_rng(1), jitter=0.0)
    assert not np.array_equal(m, ellipse_like)


def test_add_stain_changes_only_the_stain_and_is_deterministic():
    x = torch.rand(6, 3, 33, 33)
    s1, m1 = add_stain(x, 7)
    s2, m2 = add_stain(x, 7)
    assert torch.equal(s1, s2) and torch.equal(m1, m2)
    outside = m1.expand_as(x) == 0
    assert torch.equal(s1[outside], x[outside])
    assert not torch.equal(s1[~outside], x[~outside])
    # one grey level per stain plus light noise: the stain is nearly uniform
    for i in range(6):
        vals = s1[i][m1[i].expand(3, -1, -1) > 0]
        assert vals.std() < 0.1
    assert s1.min() >= 0 and s1.max() <= 1


def test_stain_min_axis_adds_stains_of_a_few_pixels():
    # the preset field stain_min_axis: at 0.03 a third of the stains on a 33-pixel patch are smaller
    # than any stain at the default 0.12, and none is larger than the default's largest
    x = torch.rand(400, 3, 33, 33)
    _, m_default = add_stain(x, 0)
    _, m_small = add_stain(x, 0, min_axis=0.03)
    area_default = m_default.sum(dim=(1, 2, 3)).numpy()
    area_small = m_small.sum(dim=(1, 2, 3)).numpy()
    assert (area_small < area_default.min()).mean() > 0.2
    assert area_small.max() <= area_default.max() * 1.1
    assert area_small.min() >= 1
    from glance_lite.common.presets import get_preset, training_fields
    p = get_preset("cpu")
    assert "stain_min_axis" not in training_fields(p)  # old runs keep their keys
    assert training_fields(p.replace(stain_min_axis=0.03))["stain_min_axis"] == 0.03
    with pytest.raises(ValueError, match="stain_min_axis"):
        p.replace(stain_min_axis=0.5)


def test_add_stain_rejects_non_square():
    with pytest.raises(ValueError):
        add_stain(torch.rand(2, 3, 10, 12), 0)


def test_iad_score_is_eq7():
    z_l = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    z_g = torch.tensor([[1.0, 0.0, 3.0, 0.0]])
    # (0 + 4 + 0 + 16) / 4 = 5
    assert iad_score(z_l, z_g).item() == pytest.approx(5.0)
    with pytest.raises(ValueError):
        iad_score(z_l, z_g[:, :3])


def test_dad_convention_high_score_for_stained():
    torch.manual_seed(0)
    head = DADHead(dim=8, hidden=16)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    z_g = torch.randn(64, 8)
    clean = z_g + 0.05 * torch.randn(64, 8)
    stained = torch.randn(64, 8) * 2
    for _ in range(200):
        z = torch.cat([clean, stained])
        y = torch.cat([torch.zeros(64), torch.ones(64)])  # Eq. 9: y = 1 for the negative patch
        loss = dad_loss(head, z, torch.cat([z_g, z_g]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        s_clean = dad_score(head, clean, z_g).mean()
        s_stained = dad_score(head, stained, z_g).mean()
    assert s_stained > 0.9 and s_clean < 0.1


def test_dad_loss_matches_eq9():
    head = DADHead(dim=4, hidden=8)
    z, zg = torch.randn(5, 4), torch.randn(5, 4)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    p = head(z, zg)
    ref = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    assert torch.allclose(dad_loss(head, z, zg, y), ref, atol=1e-6)


def test_combined_score_eq13():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(combined_score(a, b, 0.8), 0.8 * a + 0.2 * b)
    assert torch.equal(combined_score(a, b, 1.0), a)
    assert torch.equal(combined_score(a, b, 0.0), b)
    with pytest.raises(ValueError):
        combined_score(a, b, 1.5)
