"""Copy a pinned MathJax 3 out of an installed PyPI package, so that the book typesets math offline.

MathJax comes from PyPI, not npm (CI reaches PyPI and Debian packages only): the wheel
``sphinx-mathjax-offline==DIST_VERSION`` ships MathJax 3.2.2's ``es5/`` build under
``sphinx-mathjax-offline/static/mathjax/``.  ``pyproject.toml`` pins it in the ``book`` and
``test`` extras, so ``make setup`` installs it with pip; this script then only copies files, no
network.  It is *not* registered as a Sphinx extension (that would set ``mathjax_path`` to the
CHTML build); the book keeps ``mathjax_path: mathjax/tex-svg.js``.

It locates the package with ``importlib.metadata``, checks the sha256 of ``tex-svg.js`` against
the value pinned below (and every copied file against the wheel's RECORD), and copies the parts a
page can load (``tex-svg.js``, the TeX extensions it autoloads, the menu, the accessibility
components, the output jax) into ``_vendor/static/mathjax``.  ``_config.yml`` lists
``_vendor/static`` in ``html_static_path``, so Sphinx copies it to ``_build/html/_static/mathjax/``.
SVG output needs no web fonts.

Idempotent: if the stamp file records the pinned package and hash and ``tex-svg.js`` is in place,
it does nothing.  Run it with the project's Python (``.venv/bin/python``; ``make setup`` does).
Standard library only; exits 1 with one line on any failure.

Licence: MathJax is Copyright (c) The MathJax Consortium, under the Apache License 2.0
(https://www.apache.org/licenses/LICENSE-2.0, https://github.com/mathjax/MathJax).  The wheel
carries no LICENSE file, so none is copied; the built book redistributes MathJax under that
licence.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

DIST = "sphinx-mathjax-offline"
DIST_VERSION = "0.0.2"  # pinned in pyproject.toml (book, test) and environment.yml
VERSION = "3.2.2"  # the MathJax release the wheel ships
ENTRY = "tex-svg.js"  # mathjax_path in _config.yml is "mathjax/" + ENTRY
SHA256 = "d4295dc33744836935c1399feece5159577b34c5c8ffb9f1c6324cd82e03a882"  # of ENTRY
PREFIX = f"{DIST}/static/mathjax/"  # where the wheel keeps MathJax

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "_vendor"
STATIC = VENDOR / "static"  # the html_static_path entry in _config.yml
DEST = STATIC / "mathjax"  # -> _static/mathjax/ in the built book
STAMP = VENDOR / "mathjax.stamp"
STAMP_TEXT = f"mathjax {VERSION} from {DIST} {DIST_VERSION} {ENTRY} sha256={SHA256}\n"

# What is copied: the combined component the book loads, and everything it may load lazily
# (TeX extensions, menu, a11y + speech maps, the output jax).
KEEP_TOP_FILES = {ENTRY, "startup.js", "loader.js", "core.js"}
KEEP_DIRS = {"input", "output", "ui", "a11y", "sre"}


def fail(msg: str) -> None:
    print(f"fetch_mathjax: {msg}", file=sys.stderr)
    sys.exit(1)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kept(rel: str) -> bool:
    """`rel` is a path inside static/mathjax/."""
    parts = rel.split("/")
    if len(parts) == 1:
        return parts[0] in KEEP_TOP_FILES
    return parts[0] in KEEP_DIRS and ".." not in parts


def installed_files() -> dict[str, tuple[Path, metadata.PackagePath]]:
    """{path inside static/mathjax: (installed file, its RECORD entry)}; fails in one line."""
    try:
        dist = metadata.distribution(DIST)
    except metadata.PackageNotFoundError:
        fail(f"{DIST} is not installed; run `make setup` (pip install {DIST}=={DIST_VERSION})")
    if dist.version != DIST_VERSION:
        fail(f"{DIST} {dist.version} is installed, {DIST_VERSION} is pinned; run `make setup`")
    found = {}
    for f in dist.files or []:
        name = f.as_posix()
        if name.startswith(PREFIX) and kept(name[len(PREFIX):]):
            found[name[len(PREFIX):]] = (Path(dist.locate_file(f)), f)
    if ENTRY not in found or not found[ENTRY][0].is_file():
        fail(f"{PREFIX}{ENTRY} missing from the installed {DIST}; reinstall it")
    return found


def record_ok(path: Path, entry: metadata.PackagePath) -> bool:
    h = entry.hash
    if h is None or h.mode != "sha256":
        return True
    digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=")
    return digest.decode() == h.value


def copy(files: dict[str, tuple[Path, metadata.PackagePath]]) -> None:
    STATIC.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mathjax-", dir=VENDOR))
    try:
        out = tmp / "mathjax"
        for rel, (src, entry) in sorted(files.items()):
            if not record_ok(src, entry):
                fail(f"{src} differs from {DIST}'s RECORD; reinstall it")
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
        if DEST.exists():
            shutil.rmtree(DEST)
        out.rename(DEST)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    files = installed_files()
    if (STAMP.is_file() and STAMP.read_text() == STAMP_TEXT and (DEST / ENTRY).is_file()
            and sha256(DEST / ENTRY) == SHA256):
        print(f"fetch_mathjax: MathJax {VERSION} present in {DEST.relative_to(ROOT)}")
        return
    got = sha256(files[ENTRY][0])
    if got != SHA256:
        fail(f"hash mismatch for {PREFIX}{ENTRY}: sha256 {got}, expected {SHA256}")
    STAMP.unlink(missing_ok=True)
    copy(files)
    STAMP.write_text(STAMP_TEXT)
    print(f"fetch_mathjax: MathJax {VERSION} from {DIST} {DIST_VERSION} ({len(files)} files) "
          f"-> {DEST.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
