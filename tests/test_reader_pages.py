"""What a reader meets on every page (the chapters and book/*.md): the subject, not the project's own
process, in paragraphs of a readable length."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "book").glob("*.md"))
MAX_WORDS = 160  # "about 150"

PROCESS = [
    (r"\b[Ii]ssue \d+", "an issue number"),
    (r"\bthis machine\b", "'this machine'"),
    (r"\b(?:jobs?|runs?) (?:sharing|shared) (?:the )?(?:two )?cores\b", "jobs sharing cores"),
    (r"\bsessions?\b", "a work session"),
    (r"\bcpu-(?:before|calib|ms|ft|s2|hole|smooth|stain|cos|debian|continued|mid|own-localnet|1000-steps|w-)\S*",
     "an archived variant's name"),
]


def _markdown(page: Path) -> list[str]:
    if page.suffix == ".md":
        return [page.read_text()]
    cells = json.loads(page.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]


def paragraphs(text: str) -> list[str]:
    """Prose paragraphs: blank-line separated, list items apart, without code, tables, directives,
    math blocks or front matter."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"\$\$.*?\$\$", "", text, flags=re.S)
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith(("|", ":::", ":", "#", "<"))
                 and not re.fullmatch(r"\s*\([\w-]+\)=\s*", ln)]
        item: list[str] = []
        for ln in lines:
            if re.match(r"\s*(?:[*-]|\d+\.)\s", ln) and item:
                out.append(" ".join(item))
                item = []
            item.append(ln.strip())
        if item:
            out.append(" ".join(item))
    return out


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_pages_speak_of_the_subject_not_the_process(page):
    for text in _markdown(page):
        for pattern, what in PROCESS:
            m = re.search(pattern, text)
            assert not m, f"{page.name}: {what} on a reader's page: ...{text[max(0, m.start() - 60):m.end() + 60]}..."


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_no_paragraph_runs_over_about_150_words(page):
    long = [p for text in _markdown(page) for p in paragraphs(text) if len(p.split()) > MAX_WORDS]
    assert not long, f"{page.name}: {len(long)} paragraph(s) over {MAX_WORDS} words, e.g. {long[0][:160]}..."


def test_the_checks_catch_what_they_look_for():
    assert re.search(PROCESS[0][0], "as issue 10 asked")
    assert re.search(PROCESS[2][0], "with three jobs sharing the two cores")
    long = " ".join(["word"] * 200)
    assert [len(p.split()) for p in paragraphs(f"short one\n\n{long}\n\n* a\n* b")] == [2, 200, 2, 2]
    assert paragraphs("```\n" + long + "\n```\n\n| a | b |") == []
