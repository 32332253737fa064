"""The real-browser check of the rendered book (tools/browser_check.py) catches each defect a reader
would see: a raw pipe table, math from a CDN that never typesets, a cut-off table, a build-machine
path, a traceback, a missing image.  Needs Chromium and Playwright (skipped without them)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None or importlib.util.find_spec("playwright") is None,
    reason="needs chromium (apt-get install chromium) and playwright")

PAGE = """<!doctype html><html><head>{head}</head><body><main><article class="bd-article" style="width:600px">
<h1>page</h1>{body}</article></main></body></html>"""

DEFECTS = {
    "pipe": ("", "<p>| class | ours | paper |\n|---|---|---|\n| airplane | 0.594 | 0.90 |</p>"),
    "cdn_math": ('<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>',
                 '<p><span class="math notranslate nohighlight">\\(s = \\lambda s_{IAD}\\)</span></p>'),
    "wide_table": ("", '<div class="cell_output"><table style="width:1500px"><tr><td>category</td><td>AU-PRO</td>'
                       '</tr></table></div>'),
    "wide_code": ("", '<div class="cell_input"><pre style="white-space:pre;overflow:auto">'
                      + "x = " + " + ".join(["value"] * 60) + "</pre></div>"),
    "abs_path": ("", '<div class="cell_output"><pre>/home/builder/glance-lite/data/runs/cpu-cable</pre></div>'),
    "traceback": ("", '<div class="cell_output"><pre>Traceback (most recent call last):\n  File "x.py"</pre></div>'),
    "broken_image": ("", '<div class="cell_output"><img src="missing.png"></div>'),
}


def _site(tmp_path: Path, pages: dict[str, tuple[str, str]]) -> Path:
    html = tmp_path / "html"
    html.mkdir()
    for name, (head, body) in pages.items():
        (html / f"{name}.html").write_text(PAGE.format(head=head, body=body))
    return html


def test_each_defect_fails_and_a_clean_page_passes(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    from browser_check import check_book

    pages = dict(DEFECTS, clean=("", '<p>A table:</p><div class="cell_output"><table><tr><td>0.935</td></tr>'
                                     '</table></div>'))
    res = check_book(_site(tmp_path, pages), tmp_path / "shots", forbid=["/home/builder"])
    assert res["clean.html"] == []
    expect = {"pipe": "pipe table", "cdn_math": "another host", "wide_table": "wider than the column",
              "wide_code": "wider than the column", "abs_path": "absolute path", "traceback": "traceback", "broken_image": "images that do not load"}
    for name, words in expect.items():
        assert any(words in p for p in res[f"{name}.html"]), (name, res[f"{name}.html"])
    assert any("not typeset" in p for p in res["cdn_math.html"])
    assert (tmp_path / "shots" / "clean.png").is_file()


def test_make_test_stops_at_once_with_the_instruction_when_chromium_is_missing(tmp_path):
    """Without chromium on PATH and no right to install it, ``tools/need_chromium.sh`` (the first step
    of ``make test``) exits 1 with the one instruction; with a chromium on PATH it exits 0."""
    import shutil
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "tools" / "need_chromium.sh"
    bash = shutil.which("bash")
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([bash, str(script)], env={"PATH": str(empty)}, capture_output=True, text=True)
    assert r.returncode == 1 and "apt-get install chromium" in r.stderr
    fake = empty / "chromium"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    r = subprocess.run([bash, str(script)], env={"PATH": str(empty)}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
