"""Fig. 5 feature extraction: only abnormal patches, correct fractions, and the two head views."""

from __future__ import annotations

import numpy as np
import torch

from glance_lite.evaluate.features import abnormal_patch_features, head_views, separation
from glance_lite.models.model import GlanceModel
from glance_lite.common.presets import get_preset


def test_abnormal_patches_and_views():
    p = get_preset("smoke")
    torch.manual_seed(0)
    m = GlanceModel(p).eval()
    imgs = torch.rand(3, 3, p.image_size, p.image_size)
    masks = torch.zeros(3, 1, p.image_size, p.image_size)
    masks[1, :, 10:30, 5:25] = 1
    f = abnormal_patch_features(m, imgs, masks, n_patches=200, seed=1)
    assert len(f.fraction) > 0 and (f.fraction > 0).all() and (f.fraction <= 1).all()
    assert f.z_l.shape == f.z_g.shape == (len(f.fraction), p.descriptor_dim)
    v = head_views(m, f)
    assert v["DAD"][0].shape == (len(f.fraction), p.dad_hidden)
    # the DAD view is the first layer of the classifier split in two halves: their sum plus the bias
    # is exactly the first layer's pre-activation on [Z_l, Z_g]
    pre = m.dad.net[0](torch.cat([f.z_l, f.z_g], 1)).detach().numpy()
    assert np.allclose(v["DAD"][0] + v["DAD"][1] + m.dad.net[0].bias.detach().numpy(), pre, atol=1e-5)


def test_separation_detects_separable_and_mixed_clouds():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (60, 5))
    assert separation(a, a + 10) > 0.95
    assert separation(a, rng.normal(0, 1, (60, 5))) < 0.75
