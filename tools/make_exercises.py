"""Regenerate book/exercises.md from the chapters' exercise sections.

Each chapter ends with ``## Exercise``: a task (markdown), a stub cell, a solution cell tagged
``hide-cell`` and a check cell.  This page gathers them for teachers, with every solution behind a
toggle.  ``tests/test_exercises.py`` checks that the page is up to date and that every chapter has an
exercise whose solution comes before its automatic check (nbval then proves the check passes).

Usage: ``python tools/make_exercises.py`` (writes the page) or ``--check`` (exit 1 if stale).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def exercise_cells(nb_path: Path) -> dict[str, str] | None:
    cells = json.loads(nb_path.read_text())["cells"]
    start = next((i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
                  and "".join(c["source"]).lstrip().startswith("## Exercise")), None)
    if start is None:
        return None
    rest = cells[start + 1 :]
    sol_i = next((i for i, c in enumerate(rest) if "hide-cell" in c.get("metadata", {}).get("tags", [])), None)
    if sol_i is None or sol_i + 1 >= len(rest):
        return None
    code_before = [c for c in rest[:sol_i] if c["cell_type"] == "code"]
    return {
        "task": "".join(cells[start]["source"]).split("\n", 1)[1].strip(),
        "stub": "".join(code_before[0]["source"]) if code_before else "",
        "solution": "".join(rest[sol_i]["source"]),
        "check": "".join(rest[sol_i + 1]["source"]),
    }


def render() -> str:
    out = [
        "# Exercises",
        "",
        "Every chapter ends with an exercise: a task, a stub to fill in, and an automatic check that runs",
        "in the notebook. The solutions are hidden below (click to reveal) and, in each chapter, in a",
        "collapsed cell just before the check. The test suite runs every chapter, so every provided",
        "solution is proven to pass its own check.",
        "",
    ]
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        ex = exercise_cells(nb)
        if ex is None:
            continue
        title = next("".join(c["source"]).splitlines()[0].lstrip("# ").strip()
                     for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "markdown")
        out += [f"## {title}", "", f"From {{doc}}`/notebooks/{nb.stem}`.", "", ex["task"], "",
                "```python", ex["stub"].rstrip(), "```", "",
                "Automatic check:", "", "```python", ex["check"].rstrip(), "```", "",
                ":::{admonition} Solution", ":class: dropdown", "", "```python", ex["solution"].rstrip(), "```", ":::", ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    page = ROOT / "book" / "exercises.md"
    text = render()
    if "--check" in sys.argv:
        if not page.is_file() or page.read_text() != text:
            print("book/exercises.md is stale: run python tools/make_exercises.py")
            return 1
        return 0
    page.write_text(text)
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
