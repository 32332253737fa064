"""Behaviour of the Local-Net, its dense extraction and the losses of Eq. 1-3."""

from __future__ import annotations

import pytest
import torch

from glance_lite.models.local_net import (
    LAYER_TABLES,
    Decoder,
    FeatureNormaliser,
    LocalNet,
    compactness_loss,
    correlation_matrix,
    distillation_loss,
    local_loss,
)


def _loop_features(net: LocalNet, images: torch.Tensor) -> torch.Tensor:
    """Reference: run ``forward`` on every patch, one top-left corner at a time."""
    p = net.patch_size
    h, w = images.shape[-2:]
    rows = []
    for i in range(h - p + 1):
        cols = [net(images[:, :, i : i + p, j : j + p]) for j in range(w - p + 1)]
        rows.append(torch.stack(cols, dim=-1))
    return torch.stack(rows, dim=-2)


@pytest.mark.parametrize("p, size", [(17, (23, 30)), (33, (41, 36)), (65, (69, 67))])
def test_dense_equals_patch_loop(p: int, size: tuple[int, int]) -> None:
    torch.manual_seed(p)
    net = LocalNet(patch_size=p, dim=128).eval()
    images = torch.rand(2, 3, *size)
    with torch.no_grad():
        dense = net.dense(images, chunk=1)
        ref = _loop_features(net, images)
    assert dense.shape == ref.shape == (2, 128, size[0] - p + 1, size[1] - p + 1)
    assert torch.allclose(dense, ref, atol=1e-5, rtol=0)
    # the map really varies with the position (a constant map would hide a misalignment)
    assert dense.std(dim=(-2, -1)).mean() > 1e-4


def test_dense_stride_subsamples() -> None:
    torch.manual_seed(0)
    net = LocalNet(patch_size=17).eval()
    images = torch.rand(1, 3, 30, 27)
    with torch.no_grad():
        full = net.dense(images)
        strided = net.dense(images, stride=4)
    assert torch.equal(strided, full[..., ::4, ::4])


def test_forward_depends_only_on_its_patch_and_reads_the_documented_area() -> None:
    torch.manual_seed(1)
    for p, rf in [(17, 17), (33, 32), (65, 60)]:
        net = LocalNet(patch_size=p).eval()
        assert net.receptive_field == rf
        x = torch.rand(1, 3, p, p)
        y = x.clone()
        y[..., rf - 1, rf - 1] += 0.5  # inside the read area: the output changes
        z = x.clone()
        z[..., rf:, :] = 0.0  # beyond the read area (empty for p = 17): no change
        z[..., :, rf:] = 0.0
        with torch.no_grad():
            assert not torch.allclose(net(x), net(y))
            assert torch.equal(net(x), net(z))


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        LocalNet(patch_size=32)
    net = LocalNet(patch_size=17)
    with pytest.raises(ValueError):
        net(torch.rand(2, 3, 18, 18))
    with pytest.raises(ValueError):
        net.dense(torch.rand(1, 3, 16, 40))
    assert set(LAYER_TABLES) == {17, 33, 65}


def test_compactness_zero_when_decorrelated_positive_when_correlated() -> None:
    # Columns of a Hadamard matrix (without the constant one) are centred and orthogonal.
    h = torch.tensor([[1.0]])
    for _ in range(3):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    z = h[:, 1:]  # (8, 7)
    assert torch.allclose(correlation_matrix(z), torch.eye(7), atol=1e-6)
    assert compactness_loss(z).item() == pytest.approx(0.0, abs=1e-6)
    assert compactness_loss(z, reduction="sum").item() == pytest.approx(0.0, abs=1e-5)

    torch.manual_seed(0)
    base = torch.randn(64, 1)
    weak = base + 3.0 * torch.randn(64, 6)
    strong = base + 0.1 * torch.randn(64, 6)
    anti = torch.cat([base, -base], 1)
    assert compactness_loss(strong) > compactness_loss(weak) > 0.0
    assert compactness_loss(anti).item() == pytest.approx(1.0, abs=1e-5)  # |c| penalised
    assert compactness_loss(anti, absolute=False).item() == pytest.approx(-1.0, abs=1e-5)
    # the mean is the sum over the n(n-1) off-diagonal entries divided by their number
    assert compactness_loss(strong, reduction="sum").item() == pytest.approx(
        30 * compactness_loss(strong).item(), rel=1e-5
    )


def test_distillation_loss_values_and_gradient_step() -> None:
    target = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    pred = torch.zeros(2, 2)
    assert distillation_loss(pred, target).item() == pytest.approx(5.0 / 4.0)
    assert distillation_loss(pred, target, reduction="sum").item() == pytest.approx(5.0 / 2.0)
    with pytest.raises(ValueError):
        distillation_loss(pred, target[:, :1])

    torch.manual_seed(0)
    pred = torch.randn(8, 16, requires_grad=True)
    target = torch.randn(8, 16)
    before = distillation_loss(pred, target)
    before.backward()
    with torch.no_grad():
        pred -= 0.5 * pred.grad
    assert distillation_loss(pred, target) < before


def test_feature_normaliser_standardises_and_inverts() -> None:
    torch.manual_seed(0)
    feats = 3.0 + 2.0 * torch.randn(100, 5)
    norm = FeatureNormaliser.from_features(feats)
    out = norm(feats)
    assert torch.allclose(out.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(out.std(0), torch.ones(5), atol=1e-5)
    assert torch.allclose(norm.inverse(out), feats, atol=1e-5)
    restored = FeatureNormaliser(5)
    restored.load_state_dict(norm.state_dict())
    assert torch.allclose(restored(feats), out)


def test_adam_steps_reduce_local_loss() -> None:
    torch.manual_seed(0)
    net = LocalNet(patch_size=17, dim=32)
    dec = Decoder(32, 24)
    patches = torch.rand(8, 3, 17, 17)
    target = torch.randn(8, 24)
    opt = torch.optim.Adam([*net.parameters(), *dec.parameters()], lr=1e-3)

    def step() -> float:
        z = net(patches)
        total, parts = local_loss(dec(z), target, z, lambda_k=1.0, lambda_c=1.0)
        assert parts["total"].item() == pytest.approx(
            parts["distillation"].item() + parts["compactness"].item(), rel=1e-5
        )
        opt.zero_grad()
        total.backward()
        opt.step()
        return total.item()

    first = step()
    for _ in range(11):
        last = step()
    assert last < 0.8 * first


def test_strided_equals_per_patch_on_the_natural_grid():
    import torch
    from glance_lite.models.local_net import LocalNet

    torch.manual_seed(0)
    net = LocalNet(33).eval()
    img = torch.rand(2, 3, 50, 45)
    with torch.no_grad():
        z = net.strided(img)
        j = net.stride
        assert j == 4 and z.shape[-2:] == ((50 - 33) // 4 + 1, (45 - 33) // 4 + 1)
        for (a, b) in [(0, 0), (4, 3), (2, 1)]:
            ref = net(img[:, :, a * j : a * j + 33, b * j : b * j + 33])
            assert torch.allclose(z[:, :, a, b], ref, atol=1e-5)


@pytest.mark.parametrize("size", [(48, 48), (50, 45), (33, 40), (36, 36)])
def test_on_grid_covers_the_scoring_grid_exactly(size):
    # the training grid is the scoring grid with step J, border row/column included, and each entry
    # is the per-patch forward of the patch at those coordinates
    import torch
    from glance_lite.models.local_net import LocalNet
    from glance_lite.score.scoring import patch_grid

    torch.manual_seed(0)
    net = LocalNet(33).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        z, tops, lefts = net.on_grid(x)
    gt, gl = patch_grid(size[0], size[1], 33, net.stride)
    assert torch.equal(tops, gt) and torch.equal(lefts, gl)
    assert z.shape[-2:] == (len(tops), len(lefts))
    assert int(tops[-1]) == size[0] - 33 and int(lefts[-1]) == size[1] - 33
    for i in sorted({0, len(tops) - 2, len(tops) - 1}):
        for j in sorted({0, len(lefts) - 2, len(lefts) - 1}):
            if i < 0 or j < 0:
                continue
            t, l = int(tops[i]), int(lefts[j])
            with torch.no_grad():
                ref = net(x[:, :, t:t + 33, l:l + 33])
            assert torch.allclose(z[:, :, i, j], ref, atol=1e-5), (t, l)
