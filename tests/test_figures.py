"""Anomaly-map overlays: one colour scale across the images compared, a perceptually uniform colormap, and a
colorbar that shows the scale."""

from __future__ import annotations

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from glance_lite.common.figures import MAP_CMAP, _overlay_figure, save_overlay  # noqa: E402


def _maps(size=64):
    """Two maps that share a score of 0.5 everywhere but in one corner block (1.0 on one, 0.0 on the other)."""
    hot, cold = np.full((size, size), 0.5), np.full((size, size), 0.5)
    hot[:16, :16], cold[:16, :16] = 1.0, 0.0
    return hot, cold


def test_same_vmin_vmax_give_the_same_score_the_same_colour():
    import matplotlib.pyplot as plt

    image = np.full((64, 64, 3), 0.5)
    hot, cold = _maps()
    fig_a, heat_a = _overlay_figure(image, hot, None, vmin=0.0, vmax=2.0)
    fig_b, heat_b = _overlay_figure(image, cold, None, vmin=0.0, vmax=2.0)
    try:
        assert heat_a.cmap.name == heat_b.cmap.name == MAP_CMAP != "jet"
        for score in (0.0, 0.5, 1.0, 2.0):
            assert np.array_equal(heat_a.to_rgba(score), heat_b.to_rgba(score))
        # the colorbar shows the scale that was asked for, not the map's own range
        for fig in (fig_a, fig_b):
            bar = fig.axes[-1]
            assert bar.get_ylim() == pytest.approx((0.0, 2.0))
            assert bar.get_ylabel() == "anomaly score"
    finally:
        plt.close(fig_a)
        plt.close(fig_b)


def test_saved_overlays_differ_only_where_the_scores_differ(tmp_path):
    # the two PNGs share layout, title and colorbar, so with one scale they differ only in the corner block;
    # with each map's own range (vmin = vmax = None) the score 0.5 is the coldest colour of one map and the
    # hottest of the other, and the whole heat map differs
    from matplotlib.image import imread

    image = np.full((64, 64, 3), 0.5)
    hot, cold = _maps()

    def differing_pixels(vmin, vmax):
        a = imread(save_overlay(tmp_path / "a.png", image, hot, None, vmin, vmax, title="t"))
        b = imread(save_overlay(tmp_path / "b.png", image, cold, None, vmin, vmax, title="t"))
        assert a.shape == b.shape
        return int(np.any(a != b, axis=-1).sum())

    shared, own = differing_pixels(0.0, 1.0), differing_pixels(None, None)
    assert 0 < shared < own / 8  # the block is 1/16 of the map
