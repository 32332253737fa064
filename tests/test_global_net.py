"""Tests of the Global-Net (Eq. 6): exact hole invariance, masks, pooling head, receptive field."""

from __future__ import annotations

import pytest
import torch

from glance_lite.models.global_net import GlobalNet, hole_mask
from glance_lite.models.partial_conv import MaskError
from glance_lite.common.presets import get_preset


def _net_and_input(name: str, batch: int, seed: int = 0):
    p = get_preset(name)
    torch.manual_seed(seed)
    net = GlobalNet.from_preset(p)
    gen = torch.Generator().manual_seed(seed)
    s, ps = p.image_size, p.patch_size
    tops = torch.randint(0, s - ps + 1, (batch,), generator=gen)
    lefts = torch.randint(0, s - ps + 1, (batch,), generator=gen)
    images = torch.rand(batch, 3, s, s, generator=gen)
    return net, images, hole_mask(s, tops, lefts, ps), gen


@pytest.mark.parametrize("name,batch", [("smoke", 3), ("cpu", 2), ("paper", 1)])
@pytest.mark.parametrize("train", [True, False])
def test_hole_pixels_never_change_z_g(name, batch, train):
    net, images, mask, gen = _net_and_input(name, batch)
    net.train(train)
    hole = (mask == 0).expand_as(images)
    with torch.no_grad():
        z = net(images, mask)
        # scramble every hole pixel, then a single one, then inf/nan
        for filler in (torch.rand(images.shape, generator=gen), 1.0 - images,
                       torch.full_like(images, float("nan")), torch.full_like(images, -float("inf"))):
            z2 = net(torch.where(hole, filler, images), mask)
            assert torch.equal(z2, z)
        one = images.clone()
        idx = tuple(torch.nonzero(hole)[len(torch.nonzero(hole)) // 2])
        one[idx] = 1.0 - one[idx] + 0.5
        assert torch.equal(net(one, mask), z)


@pytest.mark.parametrize("name", ["smoke", "cpu"])
def test_pixel_outside_hole_changes_z_g(name):
    net, images, mask, _ = _net_and_input(name, 1, seed=1)
    with torch.no_grad():
        z = net(images, mask)
        valid = torch.nonzero((mask[0, 0] == 1))
        for r, c in (valid[len(valid) // 2], valid[0]):
            changed = images.clone()
            changed[0, :, r, c] = 1.0 - changed[0, :, r, c]
            assert not torch.equal(net(changed, mask), z)
        # and moving the hole changes Z_g too
        assert not torch.allclose(net(images, torch.ones_like(mask)), z)


def test_forward_is_features_then_pool_head_and_masks_agree():
    net, images, mask, _ = _net_and_input("smoke", 2)
    with torch.no_grad():
        feat, m = net.forward_features(images, mask)
        assert torch.equal(net.pool_head(feat, m), net(images, mask))
        assert feat.shape[2:] == net.feature_size(images.shape[2], images.shape[3])
        trace = net.trace(images, mask)
        masks = net.propagate_mask(mask)
        assert [t[0] for t in trace] == [n for n, _ in masks]
        for k, ((_, f, mt), (_, mp)) in enumerate(zip(trace, masks)):
            assert torch.equal(mt, mp)
            if k > 0:  # after every step, feat is exactly 0 wherever the mask is 0
                assert torch.all(f[(mt == 0).expand_as(f)] == 0)
        # the hole shrinks: fewer invalid positions after each step
        holes = [int((mm == 0).sum()) for _, mm in masks]
        assert holes[0] > holes[1] > 0 and holes[-1] == 0


def test_pool_head_averages_only_valid_positions():
    torch.manual_seed(0)
    net = GlobalNet(channels=(4, 4), strides=(2, 1), dim=6)
    feat = torch.rand(2, 4, 5, 5)
    mask = torch.ones(2, 1, 5, 5)
    mask[0, :, :2] = 0
    garbage = feat.clone()
    garbage[0, :, :2] = 1e9
    want0 = feat[0, :, 2:].mean(dim=(1, 2))
    with torch.no_grad():
        z = net.pool_head(garbage, mask)
        assert torch.allclose(z[0], net.fc(want0), atol=1e-5)
        assert torch.allclose(z[1], net.fc(feat[1].mean(dim=(1, 2))), atol=1e-5)
        # no valid position at all: plain mean
        z0 = net.pool_head(feat, torch.zeros_like(mask))
        assert torch.allclose(z0, net.fc(feat.mean(dim=(2, 3))), atol=1e-6)


def test_receptive_field_facts():
    net = GlobalNet()
    rf = net.receptive_field()
    assert (rf.size, rf.jump, rf.start) == (123, 32, -61)
    assert net.feature_size(256) == (8, 8) and net.feature_size(128) == (4, 4)
    assert [s.kind for s in net.steps()] == ["pconv", "pool"] + ["pconv"] * 6
    # empirically: a pixel outside the window of final position (0, 0) cannot change it
    torch.manual_seed(0)
    small = GlobalNet.from_preset(get_preset("smoke"))
    srf = small.receptive_field()
    x = torch.rand(1, 3, 96, 96)
    m = torch.ones(1, 1, 96, 96)
    x.requires_grad_(True)
    feat, _ = small.forward_features(x, m)
    feat[0, :, 0, 0].sum().backward()
    lo, hi = srf.window(0)
    support = torch.nonzero(x.grad[0].abs().sum(0))
    assert support.min() >= max(lo, 0) and support.max() <= hi
    with torch.no_grad():
        y = x.detach().clone()
        y[..., hi + 1 :, :] = torch.rand_like(y[..., hi + 1 :, :])
        y[..., :, hi + 1 :] = 0.0
        f2, _ = small.forward_features(y, m)
        assert torch.equal(f2[0, :, 0, 0], feat.detach()[0, :, 0, 0])


def test_no_batch_statistics_and_broadcast():
    net, images, mask, _ = _net_and_input("smoke", 3)
    assert not any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in net.modules())
    net.train()
    with torch.no_grad():
        z = net(images, mask)
        alone = torch.cat([net(images[i : i + 1], mask[i : i + 1]) for i in range(3)])
        assert torch.allclose(z, alone, atol=1e-5)
        one = images[:1]
        zb = net(one, mask)  # one image, three masks
        assert zb.shape == (3, net.dim)
        assert torch.allclose(zb, net(one.expand(3, -1, -1, -1), mask), atol=1e-5)


def test_hole_mask_matches_loop_and_validates():
    tops, lefts = [0, 5, 9], [3, 0, 9]
    m = hole_mask((12, 13), tops, lefts, 3)
    assert m.shape == (3, 1, 12, 13) and m.dtype == torch.float32
    for b, (t, lf) in enumerate(zip(tops, lefts)):
        want = torch.ones(12, 13)
        for r in range(t, t + 3):
            for c in range(lf, lf + 3):
                want[r, c] = 0
        assert torch.equal(m[b, 0], want)
    assert torch.equal(hole_mask(12, torch.tensor([2]), torch.tensor([4]), 5),
                       hole_mask((12, 12), [2], [4], 5))
    with pytest.raises(MaskError, match="top"):
        hole_mask(12, [8], [0], 5)
    with pytest.raises(MaskError, match="lefts"):
        hole_mask(12, [0, 1], [0], 5)
    with pytest.raises(MaskError, match="integers"):
        hole_mask(12, [0.5], [0], 5)


def test_bad_input_raises():
    net = GlobalNet(channels=(4, 4), strides=(2, 1), dim=8)
    with pytest.raises(MaskError, match="images"):
        net(torch.rand(1, 1, 32, 32), torch.ones(1, 1, 32, 32))
    with pytest.raises(MaskError, match="mask"):
        net(torch.rand(1, 3, 32, 32), torch.ones(1, 1, 16, 32))
    with pytest.raises(ValueError):
        GlobalNet(channels=(4, 4), strides=(2,))
