"""Tests of Eq. 5 (partial convolution) and the mask pooling rule against direct Python loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from glance_lite.common.fileio import GlanceError
from glance_lite.models.partial_conv import MaskError, PartialConv2d, mask_max_pool2d


def loop_pconv(x, mask, weight, bias, stride, padding, multi_channel):
    """Eq. 5 written out window by window in float64 (Liu et al.'s semantics)."""
    x, mask, weight = x.double(), mask.double(), weight.double()
    bias = None if bias is None else bias.double()
    b, c, h, w = x.shape
    o, _, k, _ = weight.shape
    xp = F.pad(x, (padding,) * 4)
    mp = F.pad(mask, (padding,) * 4)
    ho = (h + 2 * padding - k) // stride + 1
    wo = (w + 2 * padding - k) // stride + 1
    win = (c if multi_channel else 1) * k * k
    out = torch.zeros(b, o, ho, wo, dtype=torch.float64)
    new = torch.zeros(b, o if multi_channel else 1, ho, wo, dtype=torch.float64)
    for i in range(ho):
        for j in range(wo):
            r, s = i * stride, j * stride
            mw = mp[:, :, r : r + k, s : s + k]  # (B, 1|C, k, k)
            xw = xp[:, :, r : r + k, s : s + k] * mw  # X ⊙ M
            msum = mw.sum(dim=(1, 2, 3))  # (B,)
            for bb in range(b):
                if msum[bb] > 0:
                    val = (weight * xw[bb]).sum(dim=(1, 2, 3)) * (win / msum[bb])
                    if bias is not None:
                        val = val + bias
                    out[bb, :, i, j] = val
                    new[bb, :, i, j] = 1.0
    return out, new


def random_mask(gen, b, c, h, w, p_hole=0.4):
    """Random binary masks: a few random rectangles of holes plus scattered holes."""
    m = (torch.rand(b, c, h, w, generator=gen) > p_hole * 0.3).float()
    for bb in range(b):
        for _ in range(2):
            t = int(torch.randint(0, h, (1,), generator=gen))
            lf = int(torch.randint(0, w, (1,), generator=gen))
            hh = int(torch.randint(1, h + 1, (1,), generator=gen))
            ww = int(torch.randint(1, w + 1, (1,), generator=gen))
            m[bb, :, t : t + hh, lf : lf + ww] = 0.0
    return m


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("multi_channel", [False, True])
def test_matches_loop_reference(seed, multi_channel):
    gen = torch.Generator().manual_seed(seed)
    b = int(torch.randint(1, 3, (1,), generator=gen))
    cin = int(torch.randint(1, 4, (1,), generator=gen))
    cout = int(torch.randint(1, 5, (1,), generator=gen))
    k = [1, 2, 3, 5][seed % 4]
    stride = [1, 2, 3][seed % 3]
    padding = int(torch.randint(0, k + 1, (1,), generator=gen))
    h = int(torch.randint(k, 12, (1,), generator=gen))
    w = int(torch.randint(k, 12, (1,), generator=gen))
    torch.manual_seed(seed)
    conv = PartialConv2d(cin, cout, k, stride=stride, padding=padding, bias=seed % 3 != 0,
                         multi_channel=multi_channel)
    if conv.bias is not None:
        torch.nn.init.uniform_(conv.bias, 1.0, 2.0)  # clearly non-zero, so bias mistakes show
    x = torch.randn(b, cin, h, w, generator=gen)
    mask = random_mask(gen, b, cin if multi_channel else 1, h, w)
    out, new = conv(x, mask)
    ref_out, ref_new = loop_pconv(x, mask, conv.weight.detach(), None if conv.bias is None
                                  else conv.bias.detach(), stride, padding, multi_channel)
    assert out.shape == ref_out.shape and new.shape == ref_new.shape
    assert torch.equal(new, ref_new.float())
    assert torch.allclose(out.double(), ref_out, atol=1e-5, rtol=1e-5)


def test_all_hole_windows_are_exact_zeros_including_bias():
    torch.manual_seed(0)
    conv = PartialConv2d(2, 3, 3, stride=1, padding=1)
    torch.nn.init.constant_(conv.bias, 5.0)
    x = torch.randn(1, 2, 10, 10)
    mask = torch.ones(1, 1, 10, 10)
    mask[..., 2:8, 2:8] = 0.0  # interior 4x4 windows see no valid pixel
    out, new = conv(x, mask)
    assert torch.equal(new[0, 0, 3:7, 3:7], torch.zeros(4, 4))
    assert new.sum() == 100 - 16
    hole = new.expand_as(out) == 0
    assert torch.equal(out[hole], torch.zeros(int(hole.sum())))
    assert not torch.signbit(out[hole]).any()  # +0, never -0
    # and a fully masked input gives an all-zero output and mask
    out0, new0 = conv(x, torch.zeros_like(mask))
    assert torch.equal(out0, torch.zeros_like(out0)) and torch.equal(new0, torch.zeros_like(new0))


def test_full_mask_is_border_rescaled_conv():
    torch.manual_seed(1)
    conv = PartialConv2d(3, 4, 3, stride=1, padding=1)
    x = torch.randn(2, 3, 9, 7)
    out, new = conv(x, torch.ones(2, 1, 9, 7))
    assert torch.equal(new, torch.ones_like(new))
    plain = F.conv2d(x, conv.weight, conv.bias, padding=1)
    # interior windows hold all 9 pixels: exactly the ordinary convolution
    assert torch.allclose(out[..., 1:-1, 1:-1], plain[..., 1:-1, 1:-1], atol=1e-6)
    # border windows are rescaled by 9 / (number of in-image pixels); the bias is not rescaled
    nobias = F.conv2d(x, conv.weight, None, padding=1)
    b = conv.bias.view(1, -1, 1, 1)
    assert torch.allclose(out[..., 0, 0], (nobias[..., 0, 0] * 9 / 4 + b[..., 0, 0]), atol=1e-5)
    assert torch.allclose(out[..., 0, 3], (nobias[..., 0, 3] * 9 / 6 + b[..., 0, 0]), atol=1e-5)
    assert not torch.allclose(out[..., 0, 0], plain[..., 0, 0], atol=1e-3)
    # mask=None means "all valid"
    out_none, _ = conv(x, None)
    assert torch.equal(out_none, out)
    # without padding a full mask is exactly an ordinary conv
    conv0 = PartialConv2d(3, 4, 3, stride=2, padding=0)
    out0, _ = conv0(x, torch.ones(2, 1, 9, 7))
    assert torch.allclose(out0, F.conv2d(x, conv0.weight, conv0.bias, stride=2), atol=1e-6)


def test_rescaling_restores_a_constant_image():
    """With an averaging kernel, Eq. 5 maps a constant image to the same constant at every valid
    output, whatever the hole: the sum(1)/sum(M) factor undoes the missing pixels."""
    conv = PartialConv2d(1, 1, 5, stride=2, padding=2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0 / 25)
    gen = torch.Generator().manual_seed(3)
    mask = random_mask(gen, 2, 1, 16, 16)
    out, new = conv(torch.full((2, 1, 16, 16), 0.7), mask)
    assert torch.allclose(out[new > 0], torch.full_like(out[new > 0], 0.7), atol=1e-6)
    assert torch.equal(out[new == 0], torch.zeros_like(out[new == 0]))


@pytest.mark.parametrize("multi_channel", [False, True])
def test_output_ignores_hole_bitwise(multi_channel):
    torch.manual_seed(2)
    conv = PartialConv2d(3, 5, 3, stride=2, padding=1, multi_channel=multi_channel)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 13, 11, generator=gen)
    mask = random_mask(gen, 2, 3 if multi_channel else 1, 13, 11)
    out, new = conv(x, mask)
    hole = mask.expand_as(x) == 0
    for filler in (torch.randn_like(x) * 1e6, torch.full_like(x, float("inf")),
                   torch.full_like(x, float("nan")), -x):
        x2 = torch.where(hole, filler, x)
        out2, new2 = conv(x2, mask)
        assert torch.equal(out2, out) and torch.equal(new2, new)
    # but a valid pixel does matter
    x3 = x.clone()
    idx = torch.nonzero(~hole)[0]
    x3[tuple(idx)] += 1.0
    assert not torch.equal(conv(x3, mask)[0], out)


def test_no_gradient_reaches_the_hole():
    torch.manual_seed(4)
    conv = PartialConv2d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 8, 8, requires_grad=True)
    mask = torch.ones(1, 1, 8, 8)
    mask[..., 2:6, 3:7] = 0
    out, _ = conv(x, mask)
    out.square().sum().backward()
    hole = (mask == 0).expand_as(x)
    assert torch.equal(x.grad[hole], torch.zeros(int(hole.sum())))
    assert x.grad[~hole].abs().sum() > 0 and conv.weight.grad.abs().sum() > 0


def test_batch_broadcast_one_image_many_masks():
    torch.manual_seed(6)
    conv = PartialConv2d(3, 4, 3, stride=2, padding=1)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1, 3, 10, 10, generator=gen)
    masks = random_mask(gen, 4, 1, 10, 10)
    out, new = conv(x, masks)
    out_e, new_e = conv(x.expand(4, -1, -1, -1), masks)
    assert out.shape[0] == 4 and torch.allclose(out, out_e) and torch.equal(new, new_e)


def loop_mask_pool(mask, k, s, p):
    b, c, h, w = mask.shape
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = torch.zeros(b, c, ho, wo)
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * s - p, j * s - p
            rs = slice(max(r0, 0), min(r0 + k, h))
            cs = slice(max(c0, 0), min(c0 + k, w))
            out[:, :, i, j] = (mask[:, :, rs, cs].amax(dim=(2, 3)) > 0).float()
    return out


@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (2, 2, 0), (3, 1, 1), (3, 3, 0)])
def test_mask_max_pool_matches_loop(k, s, p):
    gen = torch.Generator().manual_seed(k * 10 + s)
    x = torch.randn(2, 3, 11, 9, generator=gen)
    mask = random_mask(gen, 2, 1, 11, 9)
    xo, mo = mask_max_pool2d(x, mask, k, s, p)
    assert torch.equal(xo, F.max_pool2d(x, k, s, p))
    assert torch.equal(mo, loop_mask_pool(mask, k, s, p))
    assert set(mo.unique().tolist()) <= {0.0, 1.0}


def test_bad_shapes_raise_mask_error():
    conv = PartialConv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(MaskError, match="mask of shape"):
        conv(x, torch.ones(2, 1, 7, 8))
    with pytest.raises(MaskError, match="mask of shape"):
        conv(x, torch.ones(2, 3, 8, 8))  # multi-channel mask on a single-channel layer
    with pytest.raises(MaskError, match="batch sizes"):
        conv(x, torch.ones(3, 1, 8, 8))
    with pytest.raises(GlanceError, match="channels"):
        conv(torch.randn(2, 2, 8, 8), torch.ones(2, 1, 8, 8))
    with pytest.raises(MaskError):
        mask_max_pool2d(x, torch.ones(2, 1, 4, 4), 3, 2, 1)
