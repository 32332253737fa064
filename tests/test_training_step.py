"""The joint stage's single step (``global_step``, ``draw_global_batch``) is what ``train_global`` runs.

* ``train_global`` equals a plain loop of ``global_step`` + backward + Adam, bit for bit (CPU);
* the loss arithmetic written out by hand (Eq. 7, 9, 10, as chapter 03 does) equals it: losses to 1e-6,
  weights to 1e-5 (Adam turns last-bit gradient differences into weight differences of a few 1e-6 on some CPUs);
* a wrong loss (lambda_t dropped, or the DAD term dropped) gives other weights, so the checks can fail.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from glance_lite.common.presets import get_preset
from glance_lite.data.stains import add_stain
from glance_lite.models.global_net import hole_mask
from glance_lite.models.model import GlanceModel
from glance_lite.train.training import crop_patches, draw_global_batch, global_step, grid_local_cache, train_global

STEPS = 4


def _images(n=6, s=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g)
    return F.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)


def _model(preset, seed=123):
    torch.manual_seed(seed)
    m = GlanceModel(preset, teacher="test")
    m.freeze_local()
    return m


def _adam(m, p):
    params = list(m.global_net.parameters()) + list(m.dad.parameters())
    return torch.optim.Adam(params, lr=p.lr, weight_decay=p.weight_decay)


def _package(p, imgs, tmp_path):
    m = _model(p)
    h = train_global(m, imgs, tmp_path / "run", progress=False)
    return m, np.array([[r["loss"], r["iad"], r["dad"]] for r in h.records])


def _loop_of_global_step(p, imgs, loss_of=lambda d, p: d["loss"]):
    """The loop train_global runs, written with the public single step."""
    m = _model(p)
    cache = grid_local_cache(m, imgs, progress=False)
    opt = _adam(m, p)
    out = []
    for step in range(p.global_steps):
        d = global_step(m, imgs, cache, step)
        opt.zero_grad(set_to_none=True)
        loss_of(d, p).backward()
        opt.step()
        out.append([float(d[k].detach()) for k in ("loss", "iad", "dad")])
    return m, np.array(out)


def _loop_by_hand(p, imgs, lambda_t=None):
    """Chapter 03's loop: the package draws the batch, Eq. 7, 9 and 10 are written out."""
    lambda_t = p.lambda_t if lambda_t is None else lambda_t
    m = _model(p)
    cache, tops, lefts = grid_local_cache(m, imgs, progress=False)
    opt = _adam(m, p)
    out = []
    for step in range(p.global_steps):
        b = draw_global_batch(p, step, len(imgs), tops, lefts)
        z_l = cache[b.idx, :, b.gi, b.gj].float()
        z_star = z_l.clone()
        if b.neg.any():
            clean = crop_patches(imgs, b.idx[b.neg], b.tops[b.neg], b.lefts[b.neg], p.patch_size)
            stained, _ = add_stain(clean, b.rng, min_axis=p.stain_min_axis)
            with torch.no_grad():
                z_star[b.neg] = m.local_net(stained)
        z_g = m.global_net(imgs[b.idx], hole_mask(p.image_size, b.tops, b.lefts, p.patch_size))
        l_iad = ((z_l - z_g) ** 2).mean(1).mean()                                # Eq. 7
        s, y = m.dad.logits(z_star, z_g), b.neg.float()
        l_dad = -(y * F.logsigmoid(s) + (1 - y) * F.logsigmoid(-s)).mean()       # Eq. 9
        loss = l_iad + lambda_t * l_dad                                          # Eq. 10
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append([loss.item(), l_iad.item(), l_dad.item()])
    return m, np.array(out)


def _max_weight_diff(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def test_train_global_is_a_loop_of_global_step(tmp_path):
    p = get_preset("smoke").replace(global_steps=STEPS, checkpoint_every=100, lambda_t=0.5)
    imgs = _images()
    pkg, pkg_losses = _package(p, imgs, tmp_path)
    mine, my_losses = _loop_of_global_step(p, imgs)
    assert np.array_equal(pkg_losses, my_losses)
    for k, v in pkg.state_dict().items():
        assert torch.equal(v, mine.state_dict()[k]), k


def test_a_wrong_loss_gives_other_weights(tmp_path):
    p = get_preset("smoke").replace(global_steps=STEPS, checkpoint_every=100, lambda_t=0.5)
    imgs = _images()
    pkg, _ = _package(p, imgs, tmp_path)
    no_lambda, _ = _loop_of_global_step(p, imgs, lambda d, p: d["iad"] + d["dad"])
    no_dad, _ = _loop_of_global_step(p, imgs, lambda d, p: d["iad"])
    assert _max_weight_diff(pkg, no_lambda) > 1e-4
    assert _max_weight_diff(pkg, no_dad) > 1e-4


def test_eq_7_9_10_written_out_match_the_package(tmp_path):
    # chapter 03's check: same seed and batches, same losses to 1e-6 and weights to 1e-5 (Adam divides by each
    # gradient's running size, so a last-bit difference in a tiny gradient moves a weight by a few 1e-6 on some CPUs)
    p = get_preset("smoke").replace(global_steps=STEPS, checkpoint_every=100, lambda_t=0.5)
    imgs = _images()
    pkg, pkg_losses = _package(p, imgs, tmp_path)
    mine, my_losses = _loop_by_hand(p, imgs)
    torch.testing.assert_close(torch.tensor(my_losses), torch.tensor(pkg_losses), rtol=0, atol=1e-6)
    for k, v in pkg.state_dict().items():
        torch.testing.assert_close(mine.state_dict()[k], v, rtol=0, atol=1e-5, msg=k)
    # and the same check catches a loop that drops lambda_t
    wrong, wrong_losses = _loop_by_hand(p, imgs, lambda_t=1.0)
    assert np.abs(wrong_losses[:, 0] - pkg_losses[:, 0]).max() > 1e-3
    assert _max_weight_diff(pkg, wrong) > 1e-4


def test_draw_global_batch_is_a_function_of_the_step():
    p = get_preset("smoke")
    tops = lefts = torch.arange(0, 32)
    a, b, c = (draw_global_batch(p, s, 6, tops, lefts) for s in (3, 3, 4))
    for f in ("idx", "gi", "gj", "tops", "lefts", "neg"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert not all(torch.equal(getattr(a, f), getattr(c, f)) for f in ("idx", "gi", "gj", "neg"))
    assert a.rng.random() == b.rng.random()  # the stains' generator too
    assert len(a.idx) == p.batch_size and int(a.idx.max()) < 6
    assert torch.equal(a.tops, tops[a.gi]) and torch.equal(a.lefts, lefts[a.gj])
    # about half the samples are DAD negatives
    share = torch.cat([draw_global_batch(p, s, 6, tops, lefts).neg for s in range(200)]).float().mean()
    assert 0.4 < float(share) < 0.6


# ------------------------------------------------------------------------------------------------
# The Local-Net's stages (Eq. 1-3, chapter 01) and the TS students (chapter 06), written by hand
# ------------------------------------------------------------------------------------------------

def _local_data(p, n=40, seed=5):
    g = torch.Generator().manual_seed(seed)
    patches = (torch.rand(n, 3, p.patch_size, p.patch_size, generator=g) * 255).round().to(torch.uint8)
    targets = torch.randn(n, 24, generator=g) * 3 + 1
    return patches.float() / 255, targets


def _trainer(p, seed=11):
    from glance_lite.train.training import LocalTrainer

    torch.manual_seed(seed)
    return LocalTrainer(p, 24)


def _local_by_hand(p, patches, targets, steps, drop_compactness=False):
    """Chapter 01's loop: Eq. 1 + Eq. 2 -> Eq. 3, Adam, the package's batches."""
    from glance_lite.models.local_net import compactness_loss
    from glance_lite.train.training import local_batch

    t = _trainer(p)
    t.set_stats(targets)
    tn = (targets - t.mean) / t.std
    opt = torch.optim.Adam([*t.local_net.parameters(), *t.decoder.parameters()], lr=p.lr, weight_decay=p.weight_decay)
    B, out = min(p.batch_size, len(patches)), []
    t.local_net.train(), t.decoder.train()
    for step in range(steps):
        idx = local_batch(p.seed, "finetune", step, len(patches), B)
        z = t.local_net(patches[idx])
        lk = (t.decoder(z) - tn[idx]).pow(2).mean()
        lc = compactness_loss(z)
        loss = p.lambda_k * lk + (0.0 if drop_compactness else p.lambda_c) * lc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        out.append([float(loss.detach()), float(lk.detach()), float(lc.detach())])
    return t, np.array(out)


def test_the_local_net_loop_by_hand_equals_local_trainer(tmp_path):
    p = get_preset("smoke").replace(batch_size=8)
    patches, targets = _local_data(p)
    pkg = _trainer(p)
    pkg.set_stats(targets)
    h = pkg.train("finetune", patches, targets, STEPS, tmp_path / "ft.pt", progress=False)
    hand, losses = _local_by_hand(p, patches, targets, STEPS)
    ref = np.array([[r["loss"], r["distillation"], r["compactness"]] for r in h.records])
    np.testing.assert_allclose(losses, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(hand.local_net.parameters(), pkg.local_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # a loop without Eq. 2 trains other weights: the comparison can fail
    wrong, _ = _local_by_hand(p, patches, targets, STEPS, drop_compactness=True)
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(wrong.local_net.parameters(),
                                                                  pkg.local_net.parameters()))


def test_the_student_loop_by_hand_equals_train_student(tmp_path):
    from glance_lite.baselines.students import new_student, student_seed, train_student
    from glance_lite.train.training import local_batch

    p = get_preset("smoke").replace(batch_size=8)
    patches, targets = _local_data(p)
    pool = (patches * 255).round().to(torch.uint8)
    targets = torch.randn(len(pool), p.descriptor_dim, generator=torch.Generator().manual_seed(2))
    pkg = new_student(p.patch_size, p.descriptor_dim, 3)
    h = train_student(pkg, 0, pool, targets, p, STEPS, 1e-3, tmp_path / "s.pt", progress=False)

    def by_hand(seed):
        s = new_student(p.patch_size, p.descriptor_dim, 3)
        opt = torch.optim.Adam(s.parameters(), lr=1e-3, weight_decay=p.weight_decay)
        s.train()
        out = []
        for step in range(STEPS):
            idx = local_batch(seed, "students", step, len(pool), min(p.batch_size, len(pool)))
            loss = (s(pool[idx].float() / 255) - targets[idx]).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            out.append(float(loss.detach()))
        return s, out

    s, losses = by_hand(student_seed(p, 0))
    np.testing.assert_allclose(losses, [r["loss"] for r in h.records], rtol=1e-5, atol=1e-7)
    for a, b in zip(s.parameters(), pkg.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    other, _ = by_hand(student_seed(p, 1))  # the batches of another student: other weights
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(other.parameters(), pkg.parameters()))
