"""The architecture figure (glance_lite.report.architecture): its labels, its layout, its PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

from glance_lite.report.architecture import STAGES, draw_architecture, main, save_architecture  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _texts(fig):
    return [t for ax in fig.axes for t in ax.texts if t.get_text().strip()]


@pytest.mark.parametrize("stage", STAGES)
def test_the_figure_names_every_part(stage):
    fig = draw_architecture(stage=stage)
    try:
        words = " ".join(t.get_text() for t in _texts(fig))
        for label in ("Local-Net", "Global-Net", "IAD", "DAD", "Eq. 7", "Eq. 10", "Eq. 13", "Stage 1",
                      "Stage 2", "Inference"):
            assert label in words, f"{label!r} missing from the figure ({stage})"
        w, h = fig.get_size_inches()
        assert (w, h) == (10, 4.5)
        assert min(t.get_fontsize() for t in _texts(fig)) >= 10
    finally:
        plt.close(fig)


def test_labels_do_not_overlap_and_stay_inside_their_boxes():
    fig = draw_architecture()
    try:
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        ax = fig.axes[0]
        texts = _texts(fig)
        ext = [t.get_window_extent(r) for t in texts]
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                assert not ext[i].overlaps(ext[j]), (texts[i].get_text(), texts[j].get_text())
        boxes = {p.get_gid(): p.get_window_extent(r) for p in ax.patches if isinstance(p, FancyBboxPatch)}
        inside = 0
        for t, e in zip(texts, ext):
            b = boxes.get(t.get_gid())
            if b is None:
                continue
            inside += 1
            margin = min(e.x0 - b.x0, b.x1 - e.x1, e.y0 - b.y0, b.y1 - e.y1)
            assert margin >= 2, f"{t.get_text()!r} touches the edge of its box ({margin:.1f} px)"
        assert inside >= 12
        fb = fig.bbox
        assert all(fb.x0 <= e.x0 and e.x1 <= fb.x1 and fb.y0 <= e.y0 and e.y1 <= fb.y1 for e in ext)
    finally:
        plt.close(fig)


def test_drawing_into_given_axes_and_a_bad_stage():
    fig, ax = plt.subplots(figsize=(10, 4.5))
    try:
        assert draw_architecture(ax=ax) is fig
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="stage"):
        draw_architecture(stage="stage3")


def test_the_png_writer(tmp_path):
    out = save_architecture(tmp_path / "a" / "arch.png")
    data = out.read_bytes()
    assert len(data) > 10_000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["--out", str(tmp_path / "b.png"), "--stage", "stage2"]) == 0
    assert (tmp_path / "b.png").stat().st_size > 10_000
    assert not list(tmp_path.rglob("*.tmp"))


def test_the_book_shows_the_committed_png():
    png = ROOT / "book" / "static" / "architecture.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    intro = (ROOT / "book" / "intro.md").read_text()
    assert "```{figure} static/architecture.png" in intro
