"""Every chapter has an exercise whose solution precedes its automatic check, and the exercises page
is generated from them (nbval, run by `make test`, then proves every solution passes its check)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("make_exercises", ROOT / "tools" / "make_exercises.py")
mx = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mx)
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[n.name for n in NOTEBOOKS])
def test_chapter_has_checked_exercise_and_widget(nb):
    ex = mx.exercise_cells(nb)
    assert ex is not None, f"{nb.name}: no '## Exercise' section with a hide-cell solution and a check"
    assert "assert" in ex["check"], f"{nb.name}: the check cell asserts nothing"
    src = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"])
    assert "ipywidgets" in src, f"{nb.name}: no ipywidgets control"


def test_stub_does_not_pass_the_check():
    # the stubs raise NotImplementedError (or return nothing useful): a reader must do the work
    for nb in NOTEBOOKS:
        ex = mx.exercise_cells(nb)
        if ex and ex["stub"]:
            assert ex["stub"] != ex["solution"], f"{nb.name}: the stub already is the solution"


def test_exercises_page_is_up_to_date():
    assert (ROOT / "book" / "exercises.md").read_text() == mx.render(), "run: python tools/make_exercises.py"
