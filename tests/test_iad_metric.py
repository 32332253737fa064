"""Tests of the whitened inconsistency metric (glance_lite.score.iad_metric) and of how runs use it."""

from __future__ import annotations

import json

import pytest
import torch

from glance_lite.score import scoring
from glance_lite.models.heads import iad_score
from glance_lite.score.iad_metric import IADWhitener, fit_iad_whitener, iad_scores, load_whitener, save_whitener
from glance_lite.models.model import GlanceModel
from glance_lite.common.presets import get_preset, training_fields
from glance_lite.score.scoring import ScoringError, fit_score_normaliser, fit_score_whitener, head_maps


def test_identity_whitener_is_eq_11():
    g = torch.Generator().manual_seed(0)
    z_l, z_g = torch.randn(50, 16, generator=g), torch.randn(50, 16, generator=g)
    torch.testing.assert_close(iad_scores(z_l, z_g, IADWhitener.identity(16)), iad_score(z_l, z_g))
    torch.testing.assert_close(iad_scores(z_l, z_g), iad_score(z_l, z_g))


def test_whitening_discounts_the_errors_every_normal_patch_makes():
    # normal residuals vary 10x more along axis 0 than along axis 1 and are offset along axis 2:
    # Euclidean distance scores equal-length residuals alike; the whitened one discounts axis 0
    # (where the Global-Net always errs) and the constant offset
    g = torch.Generator().manual_seed(1)
    n = 8
    normal = torch.randn(4000, n, generator=g) * 0.1
    normal[:, 0] *= 10.0
    normal[:, 2] += 2.0
    w = fit_iad_whitener(normal)
    zero = torch.zeros(3, n)
    r = torch.zeros(3, n)
    r[:, 2] = 2.0  # every residual carries the normal offset
    r[0, 0] = 1.0  # plus a unit error along the direction of normal variation
    r[1, 1] = 1.0  # or along a direction normal patches never err in
    eu, wh = iad_scores(r, zero), iad_scores(r, zero, w)
    assert eu[0] == eu[1] and eu[2] < eu[0]
    assert wh[1] > 20 * wh[0]
    assert wh[2] < wh[0] and wh[2] < 0.01
    assert 0.0 <= w.shrinkage <= 1.0 and w.n_samples == 4000


def test_fit_refuses_too_few_or_non_finite_residuals():
    with pytest.raises(ValueError, match="at least 2"):
        fit_iad_whitener(torch.zeros(1, 4))
    bad = torch.randn(10, 4)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fit_iad_whitener(bad)
    with pytest.raises(ValueError, match="8-d"):
        iad_scores(torch.zeros(2, 4), torch.zeros(2, 4), IADWhitener.identity(8))


def test_whitener_round_trips_and_a_bad_file_names_itself(tmp_path):
    w = fit_iad_whitener(torch.randn(200, 6, generator=torch.Generator().manual_seed(2)))
    p = save_whitener(tmp_path / "w.pt", w)
    back = load_whitener(p)
    assert torch.equal(back.mean, w.mean) and torch.equal(back.precision, w.precision)
    assert back.n_samples == 200 and back.shrinkage == w.shrinkage
    torch.save({"mean": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        load_whitener(tmp_path / "bad.pt")


def test_statistics_and_metric_must_agree():
    torch.manual_seed(0)
    model = GlanceModel(get_preset("smoke")).eval()
    train = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    w = fit_score_whitener(model, train)
    eu_stats = fit_score_normaliser(model, train)
    wh_stats = fit_score_normaliser(model, train, whitener=w)
    assert eu_stats["iad_metric"] == "euclidean" and wh_stats["iad_metric"] == "mahalanobis"
    # the one-pass fit used by evaluate gives the same whitener and statistics
    one = scoring.fit_whitened_normaliser(model, train)
    torch.testing.assert_close(one["iad_whitener"].precision, w.precision)
    torch.testing.assert_close(one["iad_whitener"].mean, w.mean)
    for head in ("iad", "dad"):
        for k in ("mean", "std", "p99", "position_std"):
            assert one[head][k] == pytest.approx(wh_stats[head][k], rel=1e-5), (head, k)
    assert eu_stats["iad"]["mean"] != pytest.approx(wh_stats["iad"]["mean"])
    with pytest.raises(ScoringError, match="mahalanobis"):
        head_maps(model, train[:1], normalise=wh_stats)  # whitened statistics without their whitener
    with pytest.raises(ScoringError, match="euclidean"):
        head_maps(model, train[:1], normalise=eu_stats, whitener=w)
    a = head_maps(model, train[:1], normalise=dict(wh_stats, iad_whitener=w))
    b = head_maps(model, train[:1], normalise=wh_stats, whitener=w)
    torch.testing.assert_close(a["iad"], b["iad"])
    # DAD does not depend on the IAD metric
    torch.testing.assert_close(a["dad"], head_maps(model, train[:1], normalise=eu_stats)["dad"])


def test_iad_metric_is_an_evaluation_field():
    p = get_preset("smoke")
    assert training_fields(p) == training_fields(p.replace(iad_metric="mahalanobis"))
    with pytest.raises(ValueError, match="iad_metric"):
        p.replace(iad_metric="cosine")


def test_evaluate_fits_the_whitener_on_training_images_once(tmp_path, monkeypatch):
    from glance_lite.cli import main
    from test_cli import _tiny_dataset

    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    root = _tiny_dataset(tmp_path / "ds", n_train=7)
    run = tmp_path / "run"
    assert main(["fit", "--data", str(root), "--category", "widget", "--out", str(run), "--preset", "smoke",
                 "--set", "score_norm=position", "--set", "iad_metric=mahalanobis", "--name", "smoke-w",
                 "--quiet"]) == 0
    seen = []
    real = scoring.fit_whitened_normaliser

    def spy(model, imgs, *a, **k):
        seen.append(imgs.clone())
        return real(model, imgs, *a, **k)

    monkeypatch.setattr(scoring, "fit_whitened_normaliser", spy)
    assert main(["evaluate", str(run), "--data", str(root), "--category", "widget", "--quiet"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["iad_metric"] == "mahalanobis"
    from glance_lite.data.mvtec import find_category
    from glance_lite.train.training import load_train_images

    train = load_train_images(find_category(root, "widget"), get_preset("smoke"))
    assert len(seen) == 1 and torch.equal(seen[0], train)  # training images only
    stats = json.loads((run / "score_stats-mahalanobis.json").read_text())
    assert stats["iad_metric"] == "mahalanobis" and (run / "iad_whitener.pt").is_file()
    # evaluating again (and predicting) reads the whitener back instead of refitting it
    assert main(["evaluate", str(run), "--data", str(root), "--category", "widget", "--quiet"]) == 0
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(root / "widget" / "test" / "dent"), "--out", str(out), "--quiet"]) == 0
    assert len(seen) == 1
    # a damaged whitener file is named in a one-line error, not silently refitted
    (run / "iad_whitener.pt").write_bytes(b"not a torch file")
    assert main(["evaluate", str(run), "--data", str(root), "--category", "widget", "--quiet"]) != 0
