"""Fail if a built page of the book loads anything from another host, or a local asset is missing.

Usage: python tools/check_offline_html.py [HTML_DIR ...]
(default: whichever of _build/smoke/_build/html and _build/html exist).

For every page (``*.html`` outside ``_static/`` and ``_sources/``) it checks what a browser
fetches on load: ``<script src>``, ``<link href>`` (stylesheets, preloads, icons; not
``canonical``/``alternate``-style links, which load nothing), ``<img>``, ``<source>``,
``<iframe>``, ``<video>``, ``<audio>``, ``<embed>``, ``<object>``, and ``url(...)``/``@import``
in ``<style>`` blocks and ``style=`` attributes; and every ``*.css`` file of the build for
``url(...)``/``@import`` (web fonts).  A reference to ``http:``, ``https:``
or ``//`` fails, naming the page.  Local scripts, stylesheets and images must exist in the build
(so a missing ``_static/mathjax`` fails too), and a page with math must load MathJax from the
build itself.  Plain links (``<a href>``) are not checked.  Exit 0 when clean, 1 otherwise.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

DEFAULT_DIRS = ("_build/smoke/_build/html", "_build/html")
EXTERNAL = re.compile(r"^\s*(https?:|//)", re.I)
# url(...) and @import "..." in CSS
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)""", re.I)
CSS_IMPORT = re.compile(r"""@import\s+(?:url\(\s*)?['"]?([^'")\s;]+)""", re.I)
CSS_COMMENT = re.compile(r"/\*.*?\*/", re.S)
# <link rel=...> values that make the browser fetch nothing
NON_FETCHING_RELS = {"canonical", "alternate", "author", "license", "help", "bookmark", "next",
                     "prev", "previous", "index", "search", "first", "last", "up", "external",
                     "nofollow", "noopener", "noreferrer", "me", "tag", "top", "contents", "start"}
SRC_TAGS = {"script": "src", "img": "src", "iframe": "src", "source": "src", "video": "src",
            "audio": "src", "embed": "src", "track": "src", "input": "src", "object": "data"}
MATH_MARKER = re.compile(r'class="[^"]*\bmath\b')


def css_refs(text: str) -> list[str]:
    text = CSS_COMMENT.sub("", text)
    return list(dict.fromkeys(CSS_URL.findall(text) + CSS_IMPORT.findall(text)))


class PageScan(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.loads: list[tuple[str, str, bool]] = []  # (what, url, must exist locally)
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "link" and a.get("href"):
            rels = set(a.get("rel", "").lower().split())
            if not rels or not rels <= NON_FETCHING_RELS:
                local_must_exist = bool(rels & {"stylesheet", "preload", "icon"})
                self.loads.append((f'<link rel="{a.get("rel", "")}">', a["href"], local_must_exist))
        attr = SRC_TAGS.get(tag)
        if attr and a.get(attr):
            self.loads.append((f"<{tag}>", a[attr], tag in {"script", "img"}))
        for key in ("srcset", "poster"):
            if a.get(key):
                for part in a[key].split(","):
                    if part.strip():
                        self.loads.append((f"<{tag} {key}>", part.split()[0], False))
        if a.get("style"):
            for url in css_refs(a["style"]):
                self.loads.append((f"<{tag} style>", url, False))
        if tag == "style":
            self._in_style = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            for url in css_refs(data):
                self.loads.append(("<style>", url, False))


def local_target(page: Path, url: str) -> Path | None:
    parts = urlsplit(url)
    if parts.scheme or not parts.path:  # data:, blob:, javascript:, "#anchor"
        return None
    return (page.parent / unquote(parts.path)).resolve()


def pages_of(root: Path) -> list[Path]:
    """The book's pages: not the theme's Jinja macro files under _static/ (nor _sources/)."""
    return sorted(p for p in root.rglob("*.html")
                  if p.relative_to(root).parts[0] not in {"_static", "_sources"})


def check_dir(root: Path) -> list[str]:
    problems: list[str] = []
    pages = pages_of(root)
    if not pages:
        return [f"{root}: no HTML pages (was the book built?)"]
    for page in pages:
        rel = page.relative_to(root).as_posix()
        text = page.read_text(encoding="utf-8", errors="replace")
        scan = PageScan()
        scan.feed(text)
        local_mathjax = False
        for what, url, must_exist in scan.loads:
            if EXTERNAL.match(url):
                problems.append(f"{rel}: {what} loads {url} from another host")
                continue
            target = local_target(page, url)
            if target is None:
                continue
            if what == "<script>" and "mathjax" in url.lower() and target.is_file():
                local_mathjax = True
            if must_exist and not target.is_file():
                problems.append(f"{rel}: {what} {url} is missing from the build")
        if MATH_MARKER.search(text) and not local_mathjax:
            problems.append(f"{rel}: has math but loads no MathJax from the build's _static")
    for css in sorted(root.rglob("*.css")):
        rel = css.relative_to(root).as_posix()
        for url in css_refs(css.read_text(encoding="utf-8", errors="replace")):
            if EXTERNAL.match(url):
                problems.append(f"{rel}: stylesheet loads {url} from another host")
    return problems


def main(argv: list[str]) -> int:
    if argv:
        dirs = [Path(d) for d in argv]
        missing = [d for d in dirs if not d.is_dir()]
        if missing:
            print(f"check_offline_html: no such folder: {', '.join(map(str, missing))}",
                  file=sys.stderr)
            return 1
    else:
        dirs = [Path(d) for d in DEFAULT_DIRS if Path(d).is_dir()]
        if not dirs:
            print("check_offline_html: no built book found (nothing to check)")
            return 0
    problems: list[str] = []
    for d in dirs:
        problems += check_dir(d)
    if problems:
        for p in problems:
            print(f"check_offline_html: {p}", file=sys.stderr)
        print(f"check_offline_html: FAILED, {len(problems)} problem(s): the book must read offline "
              "(serve it from _static; see tools/fetch_mathjax.py)", file=sys.stderr)
        return 1
    n = sum(len(pages_of(d)) for d in dirs)
    print(f"check_offline_html: {n} pages in {', '.join(map(str, dirs))} load nothing from "
          "another host")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
