"""Repository hygiene: notebooks are committed without outputs, and the book's TOC is complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[n.name for n in NOTEBOOKS])
def test_notebook_has_no_outputs(nb):
    cells = json.loads(nb.read_text())["cells"]
    dirty = [i for i, c in enumerate(cells) if c.get("outputs") or c.get("execution_count")]
    assert not dirty, f"{nb.name}: cells {dirty} carry outputs; strip them before committing"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[n.name for n in NOTEBOOKS])
def test_notebook_prints_preset_and_installs_only_on_colab(nb):
    src = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"])
    assert "describe(" in src, f"{nb.name}: does not print the preset and hardware"
    assert '"google.colab" in sys.modules' in src, f"{nb.name}: lacks the Colab-only install cell"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[n.name for n in NOTEBOOKS])
def test_install_cell_is_the_one_made_from_the_repository_url(nb):
    # one URL, in glance_lite.experiments.chapters.REPO_URL; `python -m glance_lite.experiments.chapters` rewrites
    # the cells
    from glance_lite.experiments.chapters import REPO_URL, install_cell_source

    first = json.loads(nb.read_text())["cells"][0]
    src = "".join(first["source"])
    assert src == install_cell_source(), f"{nb.name}: run `python -m glance_lite.experiments.chapters`"
    assert REPO_URL in src and "-c /tmp/keep-torch.txt" in src  # torch is never reinstalled


def test_every_notebook_is_in_the_toc():
    toc = (ROOT / "_toc.yml").read_text()
    for nb in NOTEBOOKS:
        assert f"notebooks/{nb.stem}" in toc, f"{nb.name} is missing from _toc.yml"
    assert NOTEBOOKS, "no chapters found"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[n.name for n in NOTEBOOKS])
def test_widget_calls_are_skipped_by_the_book_only(nb):
    # Jupyter Book (myst-nb -> nbclient) does not run cells tagged `skip-execution`; nbval ignores the
    # tag, so `make test` still runs them.  The widget cell must hold nothing later cells need: only
    # the `interact` call, no definitions or assignments outside its try block.
    cells = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
    widget = [c for c in cells if "interact(" in "".join(c["source"])]
    assert widget, f"{nb.name}: no ipywidgets control"
    for c in widget:
        src = "".join(c["source"])
        assert "skip-execution" in c.get("metadata", {}).get("tags", []), (
            f"{nb.name}: the ipywidgets cell is executed by the book build (tag it skip-execution)")
        code = [ln for ln in src.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        assert code[0].startswith("try:"), f"{nb.name}: the widget cell does more than call interact: {code[0]!r}"
        assert not any(ln.startswith(("def ", "class ")) or (ln[0] != " " and "=" in ln.split("(")[0])
                       for ln in code[1:] if ln[0] != " " and not ln.startswith(("except", "try"))), nb.name


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[n.name for n in NOTEBOOKS])
def test_notebook_is_valid_nbformat_with_unique_cell_ids(nb):
    # nbformat 4.5 requires an id on every cell; a missing one is invented afresh by each tool that
    # reads the file (a warning, and a diff that never settles), a repeated one confuses anchors
    import nbformat

    raw = json.loads(nb.read_text())
    ids = [c.get("id") for c in raw["cells"]]
    missing = [i for i, x in enumerate(ids) if not x]
    assert not missing, f"{nb.name}: cells {missing} have no id"
    assert len(set(ids)) == len(ids), f"{nb.name}: repeated cell ids"
    nbformat.validate(nbformat.reads(nb.read_text(), as_version=4))


def test_chapter_code_is_formatted_for_the_column(tmp_path):
    # black at 72 characters (tools/format_notebooks.py): the rendered code column holds about 73
    pytest.importorskip("black")
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    from format_notebooks import format_notebook, format_source

    bad = {nb.name: cells for nb in NOTEBOOKS if (cells := format_notebook(nb, check=True))}
    assert not bad, f"run `python tools/format_notebooks.py`: {bad}"
    # and the check can fail: a long call is split
    long = "result = some_function(first_argument, second_argument, third_argument, fourth)\n"
    assert format_source(long) != long and all(len(x) <= 72 for x in format_source(long).splitlines())


VISIBLE_LOOPS = {
    "01_local_net.ipynb": "package.train(",  # LocalTrainer.train: pretrain_local / finetune_local
    "03_heads_and_training.ipynb": "train_global",
    "06_mvtec_ad.ipynb": "students.train_student(",
}


@pytest.mark.parametrize("name", sorted(VISIBLE_LOOPS))
def test_chapters_train_with_a_visible_loop_checked_against_the_package(name):
    """A chapter that teaches a training stage writes its loop out (backward and an optimiser step in a
    code cell that is shown) and, in a later shown cell, asserts that the package's loop gives the same."""
    cells = json.loads((ROOT / "notebooks" / name).read_text())["cells"]
    shown = [("".join(c["source"]), i) for i, c in enumerate(cells) if c["cell_type"] == "code"
             and not {"remove-cell", "hide-cell", "remove-input"} & set(c.get("metadata", {}).get("tags", []))]
    loops = [i for s, i in shown if ".backward()" in s and "opt.step()" in s]
    assert loops, f"{name}: no visible training loop"
    checks = [i for s, i in shown if VISIBLE_LOOPS[name] in s and "assert" in s and i >= loops[0]]
    assert checks, f"{name}: the loop is never checked against {VISIBLE_LOOPS[name]}"
