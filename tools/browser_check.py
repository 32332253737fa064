"""Open every page of the built book in headless Chromium, as a reader would, and check what it shows.

The pages are served from a local folder (``http.server`` on 127.0.0.1); every request to another
host is blocked and reported.  On each page:

* math is typeset (MathJax elements present where the page has math, no raw ``\\(`` left);
* no raw pipe tables (a markdown table rendered as a paragraph of ``|``);
* no ``Traceback`` and no error outputs;
* every image loads;
* no output, and no code, wider than the content column (a cut-off table or line);
* no absolute path of the build machine (``--forbid``, by default the repository and the home folder);
* no request to another host.

A screenshot of each page goes to ``--screenshots``.  Chromium is the Debian package (``apt-get
install chromium``), driven by Playwright with that system browser (no browser download).

Usage: ``python tools/browser_check.py _build/exec/_build/html --screenshots _build/screenshots``
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent

_PAGE_JS = r"""
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(im => im.complete ? null : new Promise(r => { im.onload = im.onerror = r; })));
  const main = document.querySelector("main") || document.querySelector("article") || document.body;
  const article = document.querySelector("article.bd-article") || document.querySelector("article") || main;
  const col = article.getBoundingClientRect();
  const text = main.innerText;
  const raw = main.innerHTML;
  const wide = [];
  for (const el of article.querySelectorAll("div.cell_output, div.cell_output pre, div.cell_input pre, " +
                                            "div.cell_output table, " +
                                            "div.cell_output img, article table:not(.highlighttable)")) {
    // an element that needs more width than it has (cut off or behind a scrollbar), or that sticks out
    const r = el.getBoundingClientRect();
    if (r.width === 0) continue;
    if (el.scrollWidth > el.clientWidth + 2 || r.right > col.right + 2) {
      wide.push(el.tagName.toLowerCase() + "." + (el.className || "").toString().split(" ").join(".") + ": " +
                el.innerText.slice(0, 80).replace(/\s+/g, " "));
    }
  }
  const pipes = Array.from(main.querySelectorAll("p")).map(p => p.innerText)
      .filter(t => /\|\s*:?-{3,}/.test(t) || (t.trim().startsWith("|") && (t.match(/\|/g) || []).length >= 4));
  return {
    text: text,
    hasMathSource: /\\\(|\\\[|\$\$|class="math/.test(raw),
    mathjax: document.querySelectorAll("mjx-container").length,
    rawMath: (text.match(/\\\(|\\\[/g) || []).length,
    brokenImages: imgs.filter(im => !im.naturalWidth).map(im => im.getAttribute("src")),
    errorOutputs: main.querySelectorAll("div.output.traceback, div.output.error, .output_error").length,
    wide: wide,
    pipes: pipes.map(t => t.slice(0, 80)),
  };
}
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # noqa: D401 - silence the per-request log
        pass


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_Quiet, directory=str(folder))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def pages_of(html: Path) -> list[Path]:
    skip = {"genindex.html", "search.html", "py-modindex.html"}
    return sorted(p for p in html.rglob("*.html")
                  if p.name not in skip and not any(part.startswith("_") for part in p.relative_to(html).parts))


def default_forbidden() -> list[str]:
    out = {str(ROOT), str(Path.home())}
    out.update(p for p in (os.environ.get("VIRTUAL_ENV"),) if p)
    return sorted(s for s in out if len(s) > 4)


def check_page(page, url: str, forbid: list[str], shot: Path | None) -> list[str]:
    """The problems on one page (an empty list when it reads well)."""
    page.goto(url, wait_until="load")
    for attempt in range(3):  # a page that redirects (e.g. index.html) destroys the first context
        try:
            page.wait_for_load_state("networkidle")
            r = page.evaluate(_PAGE_JS)
            break
        except Exception:  # noqa: BLE001 - retried on the page it navigated to
            if attempt == 2:
                raise
            time.sleep(0.5)
    problems = []
    if r["hasMathSource"] and r["mathjax"] == 0:
        problems.append("math is not typeset (no MathJax output)")
    if r["rawMath"]:
        problems.append(f"{r['rawMath']} raw \\( or \\[ left in the text")
    if r["pipes"]:
        problems.append(f"raw pipe table: {r['pipes'][0]!r}")
    if "Traceback" in r["text"] or r["errorOutputs"]:
        problems.append("a traceback or error output")
    if r["brokenImages"]:
        problems.append(f"images that do not load: {r['brokenImages'][:3]}")
    if r["wide"]:
        problems.append(f"{len(r['wide'])} output(s) wider than the column, e.g. {r['wide'][0]!r}")
    for f in forbid:
        if f in r["text"]:
            problems.append(f"absolute path of the build machine: {f!r}")
    if shot is not None:
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
    return problems


def check_book(html: Path, screenshots: Path | None, forbid: list[str] | None = None,
               width: int = 1280) -> dict[str, list[str]]:
    """``{page: problems}`` for every page of the built book in ``html``."""
    from playwright.sync_api import sync_playwright

    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        raise SystemExit("browser-check: no chromium on PATH (apt-get install chromium)")
    forbid = default_forbidden() if forbid is None else forbid
    srv, base = serve(html)
    host = urlparse(base).netloc
    results: dict[str, list[str]] = {}
    try:
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            ctx = b.new_context(viewport={"width": width, "height": 900})
            foreign: list[str] = []

            def route(rt) -> None:
                if urlparse(rt.request.url).netloc == host or rt.request.url.startswith(("data:", "blob:")):
                    rt.continue_()
                else:
                    foreign.append(rt.request.url)
                    rt.abort()

            ctx.route("**/*", route)
            page = ctx.new_page()
            for p in pages_of(html):
                rel = p.relative_to(html).as_posix()
                foreign.clear()
                shot = screenshots / (rel.replace("/", "__").removesuffix(".html") + ".png") if screenshots else None
                probs = check_page(page, f"{base}/{rel}", forbid, shot)
                if foreign:
                    probs.append(f"requests to another host: {sorted(set(foreign))[:3]}")
                results[rel] = probs
            b.close()
    finally:
        srv.shutdown()
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", help="the built book (…/_build/html)")
    ap.add_argument("--screenshots", default=None, help="folder for one full-page PNG per page")
    ap.add_argument("--forbid", action="append", default=None,
                    help="text no page may show (repeatable; default: the repository and home folders)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = check_book(Path(args.html), Path(args.screenshots) if args.screenshots else None, args.forbid)
    bad = {k: v for k, v in res.items() if v}
    for page, probs in bad.items():
        for pr in probs:
            print(f"browser-check: {page}: {pr}")
    print(f"browser-check: {len(res)} pages, {len(bad)} with problems ({time.perf_counter() - t0:.0f} s)")
    return 1 if bad or not res else 0


if __name__ == "__main__":
    sys.exit(main())
