"""Where things live on disk: the repository, ``data/``, runs, and the optional shared real data.

* ``GLANCE_DATA``   -- folder for datasets and runs (default: ``<repo>/data`` or ``./data``).
* ``GLANCE_SHARED`` -- folder holding real data for development (default: ``<repo>/../shared/data``
  when it exists).  Tests and chapters use it when present and skip it when not.

Defined in :doc:`/notebooks/00_data`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["package_dir", "repo_root", "data_dir", "shared_data_dir", "shared_category", "runs_dir", "results_dir",
           "display_path"]


def package_dir() -> Path:
    """The ``glance_lite`` package folder, which holds the package data ``weights/`` and ``results/``."""
    return Path(__file__).resolve().parent.parent


def repo_root() -> Path:
    """The repository root (the folder holding ``pyproject.toml``), else the working directory."""
    here = package_dir().parent
    if (here / "pyproject.toml").is_file():
        return here
    cwd = Path.cwd().resolve()
    for p in (cwd, *cwd.parents):
        if (p / "pyproject.toml").is_file() and (p / "glance_lite").is_dir():
            return p
    return cwd


def data_dir() -> Path:
    """The folder for datasets and runs (``GLANCE_DATA`` or ``<repo>/data``), created if needed."""
    d = Path(os.environ.get("GLANCE_DATA") or repo_root() / "data")
    d.mkdir(parents=True, exist_ok=True)
    return d


def results_dir() -> Path:
    """The committed results files the book shows (``glance_lite/results``), package data: ``pip
    install`` brings them, so a chapter opened alone (e.g. on Colab) finds them.  ``make results``
    rewrites them; ``glance-lite reproduce --out DIR`` writes a user's own elsewhere."""
    return package_dir() / "results"


def runs_dir() -> Path:
    """``data/runs``: checkpoints and results written by the book's notebooks."""
    d = data_dir() / "runs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def shared_data_dir() -> Path | None:
    """The shared real-data folder when it exists (``GLANCE_SHARED`` or ``<repo>/../shared/data``)."""
    env = os.environ.get("GLANCE_SHARED")
    cands = [Path(env)] if env else []
    cands.append(repo_root().parent / "shared" / "data")
    for c in cands:
        if c.is_dir():
            return c
    return None


def shared_category(dataset: str, category: str) -> Path | None:
    """``<shared>/<dataset>/<category>`` if present, e.g. ``shared_category('mvtec_ad', 'bottle')``."""
    s = shared_data_dir()
    if s is None:
        return None
    p = s / dataset / category
    return p if p.is_dir() else None


def display_path(path: str | os.PathLike) -> str:
    """A path as the book prints it: never an absolute path of the machine that ran it.

    Inside the repository it is relative to it (``data/offline``); in the shared real data it is
    ``<shared>/mvtec_ad/bottle``; in ``GLANCE_DATA`` it is ``<data>/...``; in the home folder
    ``~/...``; anything else is shown by its last two parts.  A string that is not a path is returned
    as it is.
    """
    s = str(path)
    if not os.path.isabs(s):  # a text that holds absolute paths (e.g. "npz arrays in /home/...") is mended
        import re

        return re.sub(r"(?<![\w.~<>])/[^\s:;,'\"()]+", lambda m: display_path(m.group(0)), s)
    p = Path(s).resolve()
    bases = [(repo_root(), None), (shared_data_dir(), "<shared>"), (data_dir(), "<data>"), (Path.home(), "~")]
    for base, label in bases:
        if base is None:
            continue
        try:
            rel = p.relative_to(Path(base).resolve())
        except ValueError:
            continue
        rel_s = rel.as_posix()
        return (rel_s or ".") if label is None else f"{label}/{rel_s}".rstrip("/")
    return "/".join(p.parts[-2:])
