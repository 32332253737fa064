"""Shared set-up for the book's chapters: the dataset and the fitted runs they reuse.

Chapters train with the active preset and store their runs under ``data/runs/``; because training
resumes from checkpoints and a finished run is simply loaded, later chapters reuse what earlier
chapters trained instead of training again.

Defined in :doc:`/notebooks/00_data`.
"""

from __future__ import annotations

from pathlib import Path

from ..common.presets import Preset, get_preset

__all__ = ["BOOK_CATEGORY", "REPO_URL", "install_cell_source", "sync_install_cells", "offline_root", "book_run",
           "mvtec_root", "live_caveat"]

REPO_URL = "https://github.com/glance-lite/glance-lite"
"""The one place that names the repository the chapters' Colab install cell installs from.  A fork
changes it here and runs ``python -m glance_lite.experiments.chapters`` to rewrite the cells (or, without
editing anything, sets ``GLANCE_REPO`` in the Colab runtime before running the first cell)."""


def install_cell_source(repo: str = REPO_URL) -> str:
    """The first cell of every chapter: on Colab only, install what the runtime lacks.

    torch and torchvision are kept at the versions the runtime has (a pip constraint), so they are never
    reinstalled; if those versions were outside glance-lite's supported range, pip fails loudly instead.
    """
    return (
        "# On Colab only: install glance-lite and what the runtime lacks (torch is kept as it is).\n"
        "import os, sys\n"
        'if "google.colab" in sys.modules:\n'
        "    import torch, torchvision\n"
        f'    REPO = os.environ.get("GLANCE_REPO", "{repo}")\n'
        '    with open("/tmp/keep-torch.txt", "w") as fh:\n'
        '        fh.write(f"torch=={torch.__version__}\\ntorchvision=={torchvision.__version__}\\n")\n'
        '    %pip install -q -c /tmp/keep-torch.txt "glance-lite[colab] @ git+{REPO}"'
    )


def sync_install_cells(notebooks: str | Path | None = None, repo: str = REPO_URL) -> list[Path]:
    """Rewrite the first cell of every ``notebooks/*.ipynb`` to :func:`install_cell_source`; returns
    the notebooks that changed."""
    import json

    from ..common.fileio import atomic_write_text
    from ..common.paths import repo_root

    changed = []
    for nb in sorted(Path(notebooks or repo_root() / "notebooks").glob("*.ipynb")):
        d = json.loads(nb.read_text())
        src = install_cell_source(repo)
        cell = d["cells"][0]
        if "".join(cell["source"]) != src:
            cell["source"] = src.splitlines(keepends=True)
            atomic_write_text(nb, json.dumps(d, indent=1, ensure_ascii=False) + "\n")
            changed.append(nb)
    return changed

BOOK_CATEGORY = "cable"
"""The offline category the method chapters train on: an object with logical defects."""


def live_caveat(preset: Preset) -> str:
    """What a chapter prints under its live numbers: at the ``smoke`` preset (seconds of training, for the
    tests) a warning that they say nothing about the method, else nothing.  Used in
    :doc:`/notebooks/06_mvtec_ad` and :doc:`/notebooks/08_ablation_and_features`."""
    if preset.name != "smoke":
        return ""
    return ("(smoke preset: the model trained for seconds, for the tests, so these live numbers say nothing about "
            "the method; build the book with GLANCE_PRESET=cpu, or read the results files below.)")


def offline_root() -> Path:
    """The offline default dataset under ``data/offline`` (generated on first use, in seconds)."""
    from ..data.offline_data import ensure_offline

    return Path(ensure_offline())


def book_run(category: str = BOOK_CATEGORY, preset: Preset | None = None, data_root: str | Path | None = None,
             progress: bool = True, tag: str = "offline") -> Path:
    """Fit (or load, if finished) the run the chapters share; returns its folder."""
    from ..common.paths import runs_dir
    from ..train.training import fit

    p = preset or get_preset()
    root = Path(data_root) if data_root else offline_root()
    run = runs_dir() / f"{p.name}-{tag}-{category}"
    if not (run / "model.pt").is_file():
        fit(root, category, run, p, progress=progress)
    return run


def mvtec_root(category: str = "bottle", preset: Preset | None = None, download: bool | None = None) -> Path | None:
    """The dataset root holding MVTec AD ``category``, or None.

    Looks in the shared real data (``GLANCE_SHARED``) and in ``data/mvtec_ad``.  When it is in
    neither, it is downloaded there (with the checksum-verified :func:`glance_lite.data.download.download_mvtec`)
    if ``download`` -- by default only with the ``paper`` preset, i.e. on a GPU, where a chapter opened
    alone on Colab trains on it.
    """
    from ..data.mvtec import find_category
    from ..common.paths import data_dir, shared_category

    shared = shared_category("mvtec_ad", category)
    if shared is not None:
        return shared.parent
    local = data_dir() / "mvtec_ad"
    try:
        find_category(local, category)
        return local
    except Exception:  # noqa: BLE001 - not there (or incomplete): download or give up
        pass
    p = preset or get_preset()
    if download is None:
        download = p.name == "paper"
    if not download:
        return None
    from ..data.download import download_mvtec

    return Path(download_mvtec(local, categories=[category]))

if __name__ == "__main__":  # pragma: no cover
    for path in sync_install_cells():
        print(f"rewrote the install cell of {path}")
