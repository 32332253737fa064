"""Figures: loss curves, anomaly-map overlays, qualitative grids (plotting primitives that training and
evaluation use, hence in :mod:`glance_lite.common`).

Defined in :doc:`/notebooks/03_heads_and_training` (loss curves) and :doc:`/notebooks/04_score_maps`
(overlays); :func:`plot_heldout_curves` (the TS students' stop rule) in :doc:`/notebooks/06_mvtec_ad`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["plot_history", "plot_heldout_curves", "overlay", "save_overlay", "MAP_CMAP"]


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg",) and not _in_notebook():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None
    except Exception:  # noqa: BLE001
        return False


def _smooth(v: np.ndarray, k: int) -> np.ndarray:
    if len(v) < k or k <= 1:
        return v
    return np.convolve(v, np.ones(k) / k, mode="valid")


def plot_history(history: Mapping[str, Any], path: str | Path | None = None, smooth: int = 25):
    """Plot the loss curves of every stage in ``history`` (as written to ``history.json``).

    Returns the matplotlib figure; saves it atomically as PNG when ``path`` is given.
    """
    plt = _plt()
    stages = [s for s in ("pretrain", "finetune", "global") if s in history and history[s]["records"]]
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(4.2 * max(1, len(stages)), 3.2), squeeze=False)
    for ax, s in zip(axes[0], stages):
        recs = history[s]["records"]
        if "step" in recs[0]:  # an evaluated curve (the shipped Local-Net's): plot it at its steps
            x = np.array([r["step"] for r in recs], dtype=float)
            for key in (k for k in recs[0] if k != "step"):
                ax.plot(x, [r[key] for r in recs], "o-", ms=3, label=key)
        else:
            for key in recs[0]:
                v = np.array([r[key] for r in recs], dtype=float)
                ax.plot(np.arange(len(_smooth(v, smooth))) + min(smooth, len(v)) // 2, _smooth(v, smooth), label=key)
        ax.set_title(s)
        ax.set_xlabel("step")
        ax.set_yscale("log" if all(r["loss"] > 0 for r in recs) else "linear")
        ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        from .fileio import atomic_write

        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)
    return fig


def plot_heldout_curves(ts_summary: Mapping[str, Any], ax=None, title: str | None = None):
    """The held-out error of each TS student against its optimiser steps (log scale), as recorded by the stop
    rule (:func:`glance_lite.baselines.students.train_until_converged`): one line per student, a marker at
    the step where it stopped, and the rule's ``min_steps`` and ``max_steps`` as light vertical lines.

    ``ts_summary`` is the ``"ts"`` of a results file (or a ``metrics_ts.json``'s ``"students"``): it needs
    ``heldout_curves`` (per student ``{"steps", "loss", "stop_step"}``) and, for the vertical lines,
    ``rule`` (or ``settings.rule``).  Draws on ``ax`` (a new figure of about page width when None) and
    returns ``(figure, axes)``.
    """
    from .fileio import GlanceError

    curves = list(ts_summary.get("heldout_curves") or [])
    if not curves:
        raise GlanceError("no held-out curves in this TS summary (a TS trained before the stop rule records none)")
    rule = ts_summary.get("rule") or (ts_summary.get("settings") or {}).get("rule") or {}
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
    else:
        fig = ax.figure
    bounds = [int(x) for x in (rule.get("min_steps"), rule.get("max_steps")) if x is not None]
    for i, x in enumerate(bounds):  # one legend entry for both lines
        ax.axvline(x, color="0.7", lw=1.0, ls="--", zorder=0,
                   label=f"rule: min / max steps ({' / '.join(f'{b:,}' for b in bounds)})" if i == 0 else "_nolegend_")
    for k, c in enumerate(curves):
        steps = np.asarray(c["steps"], dtype=float)
        loss = np.asarray(c["loss"], dtype=float)
        stop = c.get("stop_step")
        (line,) = ax.plot(steps, loss, lw=1.6, label=f"student {k + 1}" + (f" (stop {int(stop):,})" if stop is not None
                                                                           else ""))
        if stop is not None and len(steps):
            i = int(np.argmin(np.abs(steps - float(stop))))
            ax.plot([steps[i]], [loss[i]], "o", ms=7, color=line.get_color(), label="_nolegend_")
    if all(np.all(np.asarray(c["loss"], dtype=float) > 0) for c in curves):
        ax.set_yscale("log")
    ax.set_xlabel("optimiser step of the student", fontsize=11)
    ax.set_ylabel("held-out error (MSE)", fontsize=11)
    ax.set_title(title or "TS students: error on patches of held-out training images", fontsize=11)
    ax.tick_params(labelsize=10)
    if bounds:
        ax.set_xlim(right=max(ax.get_xlim()[1], 1.04 * max(bounds)))
    ax.legend(fontsize=10, frameon=False)
    fig.tight_layout()
    return fig, ax


#: The colormap of every anomaly map: perceptually uniform (equal steps in score look like equal steps in
#: colour, and brightness grows with the score), unlike "jet", whose bright bands invent edges.
MAP_CMAP = "inferno"


def overlay(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None = None, ax=None,
            vmin: float | None = None, vmax: float | None = None, alpha: float = 0.5):
    """Draw ``image`` (H, W, 3 in [0, 1]) with the anomaly map as a heat map (:data:`MAP_CMAP`) and the mask
    contour.

    ``vmin`` and ``vmax`` fix the colour scale: pass the same pair for every image that is compared, so that
    one score has one colour on all of them (a good image then looks cool beside a defective one).  Left at
    None, the scale is this map's own minimum and maximum, and every map looks equally hot somewhere.  The
    heat map is ``ax.images[-1]``, the mappable a colorbar needs.
    """
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(np.clip(image, 0, 1))
    ax.imshow(amap, cmap=MAP_CMAP, alpha=alpha, vmin=vmin, vmax=vmax, interpolation="nearest")
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors="white", linewidths=1.0)
    ax.set_axis_off()
    return ax


def _overlay_figure(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None = None,
                    vmin: float | None = None, vmax: float | None = None, title: str = ""):
    """The figure :func:`save_overlay` saves: image, image + ground-truth contour, heat-map overlay with a
    colorbar of the scale ``[vmin, vmax]`` (the map's own range where they are None, and the colorbar's
    label says so).  Returns ``(figure, heat-map mappable)``."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(7.6, 2.9), gridspec_kw={"width_ratios": [1, 1, 1.15]})
    axes[0].imshow(np.clip(image, 0, 1))
    axes[0].set_title("image", fontsize=12)
    axes[1].imshow(np.clip(image, 0, 1))
    if mask is not None and mask.any():
        axes[1].contour(mask.astype(float), levels=[0.5], colors="red", linewidths=1.2)
    axes[1].set_title("ground truth" if mask is not None else "(no mask)", fontsize=12)
    shared = vmin is not None and vmax is not None
    overlay(image, amap, mask, ax=axes[2], vmin=vmin, vmax=vmax)
    heat = axes[2].images[-1]
    axes[2].set_title("anomaly map", fontsize=12)
    for a in axes:
        a.set_axis_off()
    from matplotlib.cm import ScalarMappable

    # the scale itself (the heat map's norm and colormap), opaque rather than half-transparent as on the image
    bar = fig.colorbar(ScalarMappable(norm=heat.norm, cmap=heat.cmap), ax=axes[2], fraction=0.046, pad=0.03)
    bar.set_label("anomaly score" + ("" if shared else "\n(this map's own range)"), fontsize=11)
    bar.ax.tick_params(labelsize=11)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig, heat


def save_overlay(path: str | Path, image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None = None,
                 vmin: float | None = None, vmax: float | None = None, title: str = "") -> Path:
    """Save a three-panel PNG: image, image + ground-truth contour, heat-map overlay with its colorbar.

    ``vmin``/``vmax`` are the colour scale; give every overlay that is compared the same pair (evaluation
    passes percentiles of all test maps of the category), so that a good image does not look as hot as a
    defective one.  Where they are None the scale is the map's own range, and the colorbar says so.
    """
    plt = _plt()
    from .fileio import atomic_write

    fig, _ = _overlay_figure(image, amap, mask, vmin, vmax, title)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return Path(path)
