"""Shared set-up for the book's chapters: the dataset and the fitted runs they reuse.

Chapters train with the active preset and store their runs under ``data/runs/``; because training
resumes from checkpoints and a finished run is simply loaded, later chapters reuse what earlier
chapters trained instead of training again.

Defined in :doc:`/notebooks/00_data`.
"""

from __future__ import annotations

from pathlib import Path

from .presets import Preset, get_preset

__all__ = ["BOOK_CATEGORY", "offline_root", "book_run"]

BOOK_CATEGORY = "cable"
"""The offline category the method chapters train on: an object with logical defects."""


def offline_root() -> Path:
    """The offline default dataset under ``data/offline`` (generated on first use, in seconds)."""
    from .offline_data import ensure_offline

    return Path(ensure_offline())


def book_run(category: str = BOOK_CATEGORY, preset: Preset | None = None, data_root: str | Path | None = None,
             progress: bool = True, tag: str = "offline") -> Path:
    """Fit (or load, if finished) the run the chapters share; returns its folder."""
    from .paths import runs_dir
    from .training import fit

    p = preset or get_preset()
    root = Path(data_root) if data_root else offline_root()
    run = runs_dir() / f"{p.name}-{tag}-{category}"
    if not (run / "model.pt").is_file():
        fit(root, category, run, p, progress=progress)
    return run
