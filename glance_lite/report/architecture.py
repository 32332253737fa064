"""The model at a glance: a boxes-and-arrows figure of Fig. 2 of the paper, drawn with matplotlib.

It shows the two feature extractors and the two heads of Sec. 3 and what is trained when:

* the **Local-Net** L describes the patch, ``Z_l = L(p)`` (Eq. 4);
* the **Global-Net** G describes the image with the patch masked out by partial convolutions,
  ``Z_g = G(I, M_0)`` (Eq. 5-6);
* the **IAD head** compares them by a distance, ``(1/n) ||Z_l - Z_g||^2`` (Eq. 7 as a loss, Eq. 11 as
  a score), and the **DAD head** is a classifier C on ``[Z_l, Z_g]`` (Eq. 8-9, Eq. 12 as a score);
* the two scores are combined by Eq. 13.

The band underneath gives the schedule: stage 1 distils the Local-Net from a pretrained teacher
(Eq. 1-4; the package's ``pretrain`` and ``finetune`` stages), stage 2 trains the Global-Net and the
DAD head jointly with the Local-Net frozen (Eq. 10; ``global``), and at inference both heads score
every patch of the grid.  The colours of the boxes say in which stage a network is trained.

    python -m glance_lite.report.architecture --out book/static/architecture.png

writes the figure the book's introduction shows.  Taught in :doc:`/notebooks/03_heads_and_training`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

__all__ = ["STAGES", "COLOURS", "draw_architecture", "save_architecture", "main"]

STAGES = ("both", "stage1", "stage2", "inference")
"""What :func:`draw_architecture` can emphasise: everything (``both``: training and inference), or the
parts that take part in stage 1, stage 2 or inference (the others are drawn faded)."""

COLOURS = {
    "stage1": "#cfe2f3",     # trained in stage 1 (blue)
    "stage2": "#fce5cd",     # trained in stage 2 (orange)
    "fixed": "#eeeeee",      # no parameters, or never trained here (grey)
    "inference": "#d9ead3",  # the inference band (green)
    "input": "#ffffff",
}
"""Box fill colours: the stage in which a box's parameters are trained."""

FONT = 11
"""Font size of the figure's labels (points), legible at the book's page width."""

# Which boxes take part in each stage (the others are faded when that stage is emphasised).
_ACTIVE = {
    "stage1": {"patch", "teacher", "local", "z_l"},
    "stage2": {"patch", "image", "local", "global", "z_l", "z_g", "iad", "dad"},
    "inference": {"patch", "image", "local", "global", "z_l", "z_g", "iad", "dad", "score"},
}


def _plt():
    import matplotlib

    try:
        from IPython import get_ipython

        in_notebook = get_ipython() is not None
    except Exception:  # noqa: BLE001
        in_notebook = False
    if not in_notebook and matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_architecture(ax: Any = None, stage: str = "both") -> Any:
    """Draw the architecture into ``ax`` (default: a new 10 x 4.5 inch figure); returns the Figure.

    ``stage`` (one of :data:`STAGES`) emphasises what takes part in one stage and fades the rest.
    The axes use data coordinates 0-100 by 0-45 with equal aspect, so the boxes keep their shape in
    a smaller axes (then the labels may crowd: the figure is meant for about 10 inches of width).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    plt = _plt()
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    if ax is None:
        fig, ax = plt.subplots(figsize=(10, 4.5))
    else:
        fig = ax.figure
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 45)
    ax.set_aspect("equal")
    ax.set_axis_off()
    active = _ACTIVE.get(stage)

    def alpha(key: str) -> float:
        return 1.0 if active is None or key in active else 0.3

    def box(key: str, x: float, y: float, w: float, h: float, text: str, colour: str,
            size: float = FONT, style: str = "-", weight: str = "normal") -> tuple[float, float, float, float]:
        a = alpha(key)
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=1.2",
                                    facecolor=colour, edgecolor="#333333", linewidth=1.2,
                                    linestyle=style, alpha=a, gid=key))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, alpha=a,
                weight=weight, linespacing=1.25, gid=key)
        return x, y, w, h

    def arrow(a: Sequence[float], b: Sequence[float], key: str, label: str = "", style: str = "-",
              label_at: Sequence[float] | None = None, colour: str = "#333333") -> None:
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=14, linewidth=1.3,
                                     linestyle=style, color=colour, alpha=alpha(key),
                                     shrinkA=0, shrinkB=0))
        if label:
            x, y = label_at if label_at is not None else ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
            ax.text(x, y, label, ha="center", va="center", fontsize=FONT - 1, alpha=alpha(key),
                    color=colour, bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0})

    # --- inputs -------------------------------------------------------------------------------
    box("patch", 0.5, 23.5, 17, 9, "patch $\\mathbf{p}$\n(in stage 2 also\na stained $\\mathbf{p}^-$)",
        COLOURS["input"], size=FONT - 1)
    box("image", 0.5, 9.5, 17, 9, "image $\\mathbf{I}$,\npatch masked\nout by $\\mathbf{M}_0$",
        COLOURS["input"], size=FONT - 1)

    # --- feature extractors -------------------------------------------------------------------
    box("teacher", 20.5, 37, 20, 7, "pretrained teacher\n(ImageNet CNN)", COLOURS["fixed"],
        size=FONT - 1, style="--")
    box("local", 20.5, 23.5, 20, 9, "Local-Net $\\mathcal{L}$\n(Eq. 1–4)\nfrozen in stage 2",
        COLOURS["stage1"], size=FONT - 1)
    box("global", 20.5, 9.5, 20, 9, "Global-Net $\\mathcal{G}$\npartial convolutions\n(Eq. 5–6)",
        COLOURS["stage2"], size=FONT - 1)
    arrow((17.5, 28), (20.5, 28), "local")
    arrow((17.5, 14), (20.5, 14), "global")
    arrow((30.5, 37), (30.5, 32.5), "teacher", style="--", colour="#1f5fa0")
    ax.text(31.7, 34.75, "targets (stage 1)", ha="left", va="center", fontsize=FONT - 1, color="#1f5fa0",
            alpha=alpha("teacher"))

    # --- features -----------------------------------------------------------------------------
    box("z_l", 43, 25, 6, 6, "$Z_l$", COLOURS["input"])
    box("z_g", 43, 11, 6, 6, "$Z_g$", COLOURS["input"])
    arrow((40.5, 28), (43, 28), "z_l")
    arrow((40.5, 14), (43, 14), "z_g")

    # --- heads --------------------------------------------------------------------------------
    box("iad", 53.5, 23.5, 20.5, 9, "IAD head\n$\\frac{1}{n}\\,\\|Z_l - Z_g\\|_2^2$\n(Eq. 7, 11)",
        COLOURS["fixed"], size=FONT - 1)
    box("dad", 53.5, 9.5, 20.5, 9, "DAD head: classifier\n$\\mathcal{C}([Z_l, Z_g])$\n(Eq. 8, 9, 12)",
        COLOURS["stage2"], size=FONT - 1)
    arrow((49, 28), (53.5, 28), "iad")
    arrow((49, 14), (53.5, 14), "dad")
    arrow((49, 16.5), (53.5, 25.5), "iad")   # Z_g -> IAD
    arrow((49, 25.5), (53.5, 16.5), "dad")   # Z_l -> DAD

    # --- combined score -----------------------------------------------------------------------
    box("score", 78.5, 14, 21, 14,
        "anomaly score\n(Eq. 13)\n$s = \\lambda_s\\, s_\\mathrm{IAD}$\n$+\\,(1-\\lambda_s)\\, s_\\mathrm{DAD}$",
        COLOURS["fixed"], size=FONT - 1)
    arrow((74, 28), (78.5, 25), "score")
    arrow((74, 14), (78.5, 17), "score")
    ax.text(76.25, 30.2, "$s_\\mathrm{IAD}$", ha="center", va="center", fontsize=FONT - 1,
            alpha=alpha("score"))
    ax.text(76.25, 11.6, "$s_\\mathrm{DAD}$", ha="center", va="center", fontsize=FONT - 1,
            alpha=alpha("score"))

    # --- what is trained when -----------------------------------------------------------------
    band = [
        ("stage1", COLOURS["stage1"], "Stage 1: Local-Net distilled\nfrom the teacher (Eq. 1–4)"),
        ("stage2", COLOURS["stage2"], "Stage 2: Global-Net and DAD head,\n"
                                      "$l = l_\\mathrm{IAD} + \\lambda_t\\, l_\\mathrm{DAD}$ (Eq. 10)"),
        ("inference", COLOURS["inference"], "Inference: both heads on\nevery grid patch → score map"),
    ]
    xs = [(0.5, 29), (31.5, 35), (68.5, 31)]
    for (key, colour, text), (x, w) in zip(band, xs):
        emph = stage in ("both", key)
        ax.add_patch(FancyBboxPatch((x, 0.5), w, 7, boxstyle="round,pad=0,rounding_size=1.2",
                                    facecolor=colour, edgecolor="#333333",
                                    linewidth=2.0 if stage == key else 1.0, alpha=1.0 if emph else 0.35,
                                    gid=f"band-{key}"))
        ax.text(x + w / 2, 4.0, text, ha="center", va="center", fontsize=FONT - 1,
                alpha=1.0 if emph else 0.4, linespacing=1.25, gid=f"band-{key}")
    return fig


def save_architecture(path: str | Path, stage: str = "both", dpi: int = 150) -> Path:
    """Write the figure as a PNG (atomically); returns the path."""
    from ..common.fileio import atomic_write

    plt = _plt()
    fig = draw_architecture(stage=stage)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight",
                                                   pad_inches=0.05, metadata={"Software": None}))
    finally:
        plt.close(fig)
    return Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m glance_lite.report.architecture --out PATH [--stage S] [--dpi N]``."""
    ap = argparse.ArgumentParser(prog="python -m glance_lite.report.architecture", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="book/static/architecture.png", help="PNG to write")
    ap.add_argument("--stage", default="both", choices=STAGES, help="what to emphasise")
    ap.add_argument("--dpi", type=int, default=150)
    args = ap.parse_args(argv)
    out = save_architecture(args.out, stage=args.stage, dpi=args.dpi)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
