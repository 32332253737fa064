"""Format the chapters' code for the book's column: black at 72 characters, every code cell but the
generated install cell (cell 0, written by ``python -m glance_lite.experiments.chapters``).

The rendered code column holds about 73 characters; a longer line hides behind a scrollbar on the page
and is cut in print.  Strings are left as written (no quote normalisation); a long string or comment
that black cannot split wraps in the page instead (``book/static/glance.css``).

    python tools/format_notebooks.py            # rewrite the notebooks in place
    python tools/format_notebooks.py --check    # exit 1 and name the cells that would change
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINE_LENGTH = 72


def _mode():
    import black

    return black.Mode(line_length=LINE_LENGTH, string_normalization=False)


def format_source(src: str) -> str:
    """One code cell's source, formatted (unchanged when black has nothing to change)."""
    import black

    try:
        return black.format_cell(src, fast=False, mode=_mode())
    except black.NothingChanged:
        return src


def format_notebook(path: Path, check: bool = False) -> list[int]:
    """Indices of the code cells that black changes; rewrites the file (same JSON layout) unless ``check``."""
    nb = json.loads(path.read_text())
    changed = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or i == 0:
            continue
        src = "".join(cell["source"])
        out = format_source(src)
        if out != src:
            changed.append(i)
            lines = out.split("\n")
            cell["source"] = [ln + "\n" for ln in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    if changed and not check:
        tmp = path.with_suffix(".ipynb.tmp")
        tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        tmp.replace(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a cell would change")
    a = ap.parse_args(argv)
    paths = a.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    bad = 0
    for p in paths:
        cells = format_notebook(p, check=a.check)
        if cells:
            bad += 1
            print(f"{p.name}: cells {cells} {'need formatting' if a.check else 'formatted'}")
    return 1 if (a.check and bad) else 0


if __name__ == "__main__":
    sys.exit(main())
