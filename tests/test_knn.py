"""The nearest-neighbour control: distances against a brute-force reference, the grid scores against
per-patch forwards, the bank cap, and an end-to-end run with its results file (smoke)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from glance_lite.baselines.knn import evaluate_knn, knn_distances, knn_maps, knn_patch_scores, memory_bank
from glance_lite.common.fileio import GlanceError
from test_students import PRESET, _fake_run, _images, _teacher, _tiny_dataset


def _brute(queries: torch.Tensor, bank: torch.Tensor, k: int) -> list[float]:
    out = []
    for q in queries.tolist():
        d = sorted(math.sqrt(sum((a - b) ** 2 for a, b in zip(q, m))) for m in bank.tolist())
        out.append(sum(d[:k]) / k)
    return out


@pytest.mark.parametrize("k", [1, 3])
def test_distances_match_brute_force(k):
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(40, 5, generator=g), torch.randn(17, 5, generator=g)
    got = knn_distances(queries, bank, k=k, chunk=4)  # several chunks
    assert got.tolist() == pytest.approx(_brute(queries, bank, k), abs=1e-5)
    # a query that is a bank row is at distance 0 (k = 1)
    assert float(knn_distances(bank[3:4], bank, k=1)[0]) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(GlanceError):
        knn_distances(queries, bank[:, :3], k=k)
    with pytest.raises(GlanceError, match="empty"):
        knn_distances(queries, bank[:0], k=k)


def test_grid_scores_match_per_patch_forwards():
    net = _teacher(3)
    train, test = _images(3, seed=1), _images(1, seed=2)
    bank = memory_bank(net, train, stride=5)
    p = net.patch_size
    with torch.no_grad():
        # the bank is every raster-grid patch of every training image, run one at a time
        from glance_lite.score.scoring import patch_grid

        tops, lefts = patch_grid(32, 32, p, 5)
        want_bank = torch.cat([net(train[i : i + 1, :, t : t + p, l : l + p])
                               for i in range(3) for t in tops.tolist() for l in lefts.tolist()])
        torch.testing.assert_close(bank, want_bank, atol=1e-4, rtol=1e-4)
        s, t2, l2 = knn_patch_scores(net, bank, test, stride=5, k=2)
        q = torch.cat([net(test[:, :, t : t + p, l : l + p]) for t in tops.tolist() for l in lefts.tolist()])
    assert s.shape == (1, len(tops), len(lefts)) and torch.equal(t2, tops)
    assert s.reshape(-1).tolist() == pytest.approx(_brute(q, want_bank, 2), abs=1e-4)
    # a test image that is a training image scores 0 everywhere (k = 1): the control really looks up the bank
    assert float(knn_patch_scores(net, bank, train[1:2], stride=5, k=1)[0].abs().max()) < 1e-4


def test_bank_cap_is_a_seeded_subset():
    net = _teacher(3)
    train = _images(3, seed=1)
    full = memory_bank(net, train, stride=5)
    a, b = memory_bank(net, train, 5, max_bank=7, seed=1), memory_bank(net, train, 5, max_bank=7, seed=1)
    assert len(a) == 7 and torch.equal(a, b)
    assert all(bool((full - row).abs().amax(1).min() < 1e-6) for row in a)
    assert not torch.equal(a, memory_bank(net, train, 5, max_bank=7, seed=2))
    with pytest.raises(GlanceError):
        memory_bank(net, train, 5, max_bank=0)


def test_end_to_end_on_a_run(tmp_path):
    root = _tiny_dataset(tmp_path / "ds")
    run = _fake_run(tmp_path / "run")
    m = evaluate_knn(run, root, "widget", progress=False)
    on_disk = json.loads((run / "metrics_knn.json").read_text())
    assert on_disk["AU-PRO"] == m["AU-PRO"] and m["n_test"] == 4 and m["k"] == 1
    from glance_lite.score.scoring import patch_grid

    gt, gl = patch_grid(32, 32, PRESET.patch_size, PRESET.score_stride)
    assert m["bank_size"] == 5 * len(gt) * len(gl)  # every grid patch of the 5 training images
    z = np.load(run / "knn_maps.npz")
    assert z["maps"].shape == (4, 32, 32) and np.isfinite(z["maps"]).all()
    # the maps are those of knn_maps on the run's Local-Net and a bank of the training images
    from glance_lite.data.mvtec import MVTecDataset, find_category
    from glance_lite.models.model import GlanceModel
    from glance_lite.train.training import load_train_images

    model, cat = GlanceModel.load(run), find_category(root, "widget")
    bank = memory_bank(model.local_net, load_train_images(cat, model.preset), model.preset.score_stride)
    img = MVTecDataset(cat, "test", PRESET.image_size)[2]["image"][None]
    assert np.allclose(z["maps"][2], knn_maps(model.local_net, bank, img, model.preset)[0].numpy(), atol=1e-5)
    # the bright square of the defect is far from every training patch: its pixels score higher
    masks = z["masks"].astype(bool)
    assert z["maps"][masks].mean() > z["maps"][~masks].mean()
    # the scale of a normal score comes from held-out training images against a bank of the others
    from glance_lite.baselines.students import split_train_val

    tr, va = split_train_val(5, 0.1, model.preset.seed + 11)
    train = load_train_images(cat, model.preset)
    held = knn_patch_scores(model.local_net, memory_bank(model.local_net, train[tr], model.preset.score_stride),
                            train[va], model.preset.score_stride)[0]
    assert m["score_stats"]["n_images"] == 1 and m["score_stats"]["mean"] == pytest.approx(float(held.mean()), rel=1e-5)
    assert m["score_stats"]["mean"] > 0  # a held-out patch is not in the bank
    with pytest.raises(GlanceError, match="scoring fields"):
        evaluate_knn(run, root, "widget", progress=False, preset=PRESET.replace(global_steps=PRESET.global_steps + 1))


def test_cli(tmp_path, capsys):
    from glance_lite.cli import main

    root = _tiny_dataset(tmp_path / "ds")
    run = _fake_run(tmp_path / "run")
    assert main(["knn", str(run), "--data", str(root), "--category", "widget", "--quiet", "--k", "2"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["k"] == 2 and printed["AU-PRO"] == json.loads((run / "metrics_knn.json").read_text())["AU-PRO"]
    assert main(["knn", str(run), "--data", str(root), "--category", "widget", "--quiet", "--k", "0"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "k must be at least 1" in err[0]


def test_strongest_control_skips_an_unconverged_ts():
    from glance_lite.baselines.controls import converged_ts, strongest, summary

    conv = {"AU-PRO": 0.8, "students": {"stop_steps": [1000, 1100], "settings": {"rule": {"kind": "heldout-plateau"}}}}
    fixed = {"AU-PRO": 0.9, "students": {"stop_steps": [200, 200], "settings": {"rule": {"kind": "fixed"}}}}
    old = {"AU-PRO": 0.95, "students": {"final_losses": [0.3]}}
    nn = {"AU-PRO": 0.7, "k": 1}
    assert converged_ts(conv) and converged_ts(summary(conv)) and not converged_ts(fixed) and not converged_ts(old)
    assert strongest({"ts": conv, "knn": nn}) == ("ts", 0.8)
    assert strongest({"ts": fixed, "knn": nn}) == ("knn", 0.7)
    assert strongest({"ts": old, "knn": nn}) == ("knn", 0.7)
    assert strongest({"ts": conv, "knn": {"AU-PRO": 0.85}}) == ("knn", 0.85)
    assert strongest({}) == (None, None)
