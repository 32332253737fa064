"""The book reads offline: MathJax comes from the book's own _static, and no page loads a script,
style or font from another host.

Cheap checks only (no book build): the configuration in ``_config.yml`` (and as Jupyter Book
resolves it), the pins of ``tools/fetch_mathjax.py`` (MathJax from the PyPI wheel
``sphinx-mathjax-offline``, pinned in ``pyproject.toml`` and ``environment.yml``), and
``tools/check_offline_html.py`` on small hand-written pages.  ``make test`` runs that checker on
the strict build as its last step; a build already on disk that is newer than ``_config.yml`` is
checked here too.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
EXTERNAL = re.compile(r"^\s*(https?:)?//", re.I)


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


fetch = _load_tool("fetch_mathjax")
checker = _load_tool("check_offline_html")


@pytest.fixture(scope="module")
def user_config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def _strings(obj, where=""):
    """Every (path, string) in a YAML tree, mapping keys included (nb_ipywidgets_js uses URLs
    as keys)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield f"{where}.{k}", str(k)
            yield from _strings(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _strings(v, f"{where}[{i}]")
    elif isinstance(obj, str):
        yield where, obj


# ---------------------------------------------------------------- the configuration


def test_mathjax_path_is_the_local_copy(user_config):
    sc = user_config["sphinx"]["config"]
    path = sc.get("mathjax_path")
    assert path, "no sphinx.config.mathjax_path in _config.yml: Sphinx loads MathJax from a CDN"
    assert not EXTERNAL.match(path) and "://" not in path, f"mathjax_path {path!r} is not local"
    assert not path.startswith("/"), f"mathjax_path {path!r} must be relative to _static"
    assert path == f"{fetch.DEST.name}/{fetch.ENTRY}", (
        f"mathjax_path {path!r} is not what tools/fetch_mathjax.py installs "
        f"({fetch.DEST.name}/{fetch.ENTRY})")
    static = fetch.STATIC.relative_to(ROOT).as_posix()
    assert static in sc.get("html_static_path", []), (
        f"html_static_path lacks {static!r}: MathJax would not be copied into _static")
    assert "_vendor" in user_config["exclude_patterns"], "Sphinx must not read _vendor as source"


def test_no_widget_manager_from_a_cdn(user_config):
    # myst-nb's default loads require.js and @jupyter-widgets/html-manager from CDNs on every page
    # whose notebook holds widget state.
    assert user_config["sphinx"]["config"].get("nb_ipywidgets_js") == {}, (
        "set sphinx.config.nb_ipywidgets_js: {} (or serve the widget manager from _static)")


def test_no_external_script_or_style_configured(user_config):
    sc = user_config["sphinx"]["config"]
    bad = [(k, s) for k, s in _strings(sc, "sphinx.config") if EXTERNAL.match(s)]
    # raw HTML anywhere in the config (extra_footer, announcement, ...) must not pull in assets
    tag = re.compile(r"""(<script[^>]*\bsrc|<link[^>]*\bhref|@import\s+url\(|url\()\s*=?\s*['"]?"""
                     r"""(https?:)?//""", re.I)
    bad += [(k, s) for k, s in _strings(user_config) if tag.search(s)]
    assert not bad, f"assets from another host configured: {bad}"
    html = user_config.get("html", {})
    comments = html.get("comments", {}) or {}
    assert not any(comments.values()), f"html.comments loads hypothesis/utterances: {comments}"
    assert not (user_config.get("launch_buttons", {}) or {}).get("thebe"), "thebe loads from unpkg"
    assert not html.get("google_analytics_id"), "analytics load from another host"


def test_jupyter_book_resolves_the_same(user_config):
    """As Jupyter Book hands the config to Sphinx (its defaults, plus the `_static` folder it
    sweeps into html_js_files when one exists at the root)."""
    jb = pytest.importorskip("jupyter_book.config")
    cfg, _ = jb.get_final_config(user_yaml=ROOT / "_config.yml",
                                 cli_config={"latex_individualpages": False}, sourcedir=ROOT)
    assert cfg["mathjax_path"] == user_config["sphinx"]["config"]["mathjax_path"]
    assert cfg["nb_ipywidgets_js"] == {}
    for key in ("html_js_files", "html_css_files"):
        for entry in cfg.get(key) or []:
            name = entry[0] if isinstance(entry, (list, tuple)) else entry
            assert not EXTERNAL.match(name), f"{key}: {name} comes from another host"
            assert not name.startswith(f"{fetch.DEST.name}/"), (
                f"{key} would load {name} on every page: keep MathJax out of a root `_static/`")
    assert not any((cfg.get("comments_config") or {}).values())
    theme = cfg.get("html_theme_options", {})
    assert not theme.get("launch_buttons", {}).get("thebe")
    analytics = theme.get("analytics", {})
    assert not analytics.get("google_analytics_id") and not analytics.get(
        "plausible_analytics_domain"), f"analytics scripts from another host: {analytics}"


def test_mathjax_pin():
    """MathJax comes from a pinned PyPI wheel (CI reaches PyPI and Debian only), never npm."""
    assert re.fullmatch(r"3\.\d+\.\d+", fetch.VERSION), "MathJax 3 (its config API is v3's)"
    assert fetch.DIST == "sphinx-mathjax-offline" and fetch.DIST_VERSION == "0.0.2"
    assert fetch.PREFIX == f"{fetch.DIST}/static/mathjax/"
    assert re.fullmatch(r"[0-9a-f]{64}", fetch.SHA256)
    assert fetch.ENTRY in {"tex-svg.js", "tex-chtml.js"}
    source = (ROOT / "tools/fetch_mathjax.py").read_text()
    assert "urllib" not in source and "npmjs" not in source, "no download: a local copy step"


def test_mathjax_wheel_pinned_in_the_install():
    """`make setup` installs the wheel through the extras; environment.yml lists the same pin."""
    tomllib = pytest.importorskip("tomllib")
    pin = f"{fetch.DIST}=={fetch.DIST_VERSION}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for extra in ("book", "test"):
        assert pin in extras[extra], f"pyproject.toml [{extra}] must pin {pin}"
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pin in pip, f"environment.yml's pip list must pin {pin}"
    sc = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]
    exts = (sc.get("extra_extensions") or []) + (sc.get("config", {}).get("extensions") or [])
    assert not any("mathjax_offline" in e or "mathjax-offline" in e for e in exts), (
        "do not load sphinx-mathjax-offline as an extension: it sets mathjax_path to CHTML")


def test_mathjax_wheel_installed_as_pinned():
    from importlib import metadata

    try:
        dist = metadata.distribution(fetch.DIST)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{fetch.DIST} not installed: `make setup` installs it")
    assert dist.version == fetch.DIST_VERSION
    files = fetch.installed_files()
    assert fetch.sha256(files[fetch.ENTRY][0]) == fetch.SHA256, "tex-svg.js is not the pinned one"
    for rel in ("input/tex/extensions/cancel.js", "output/svg.js", "output/svg/fonts/tex.js"):
        assert rel in files, f"{rel} missing from the wheel"


def test_fetch_fails_in_one_line_when_the_wheel_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(fetch, "DIST", "sphinx-mathjax-offline-not-installed")
    with pytest.raises(SystemExit) as exc:
        fetch.main()
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not installed" in err and "make setup" in err


def test_mathjax_installed():
    if not fetch.VENDOR.exists():
        pytest.skip("_vendor/ absent: `make setup` copies MathJax (make test/book do it first)")
    assert (fetch.DEST / fetch.ENTRY).is_file(), "MathJax missing: run `make setup`"
    assert fetch.STAMP.read_text() == fetch.STAMP_TEXT, "MathJax is not the pinned one: make setup"
    assert fetch.sha256(fetch.DEST / fetch.ENTRY) == fetch.SHA256
    assert (fetch.DEST / "input/tex/extensions/cancel.js").is_file(), "autoloaded TeX extensions"
    assert (fetch.DEST / "output/svg/fonts/tex.js").is_file(), "the SVG output's font data"


# ---------------------------------------------------------------- the HTML checker


def _site(tmp_path: Path, pages: dict[str, str], files: dict[str, str] | None = None) -> Path:
    root = tmp_path / "html"
    for rel, text in {**pages, **(files or {})}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


MATHJAX_FILE = {"_static/mathjax/tex-svg.js": "/* MathJax */"}
GOOD = """<html><head>
<link rel="stylesheet" href="../_static/theme.css?v=1">
<link rel="canonical" href="https://example.org/book/intro.html">
<script defer src="../_static/mathjax/tex-svg.js?v=50970ec6"></script>
</head><body><span class="math notranslate nohighlight">\\(x^2\\)</span>
<a href="https://github.com/glance-lite/glance-lite">repo</a>
<img src="data:image/png;base64,AAAA"></body></html>"""


def test_checker_passes_a_clean_page(tmp_path):
    root = _site(tmp_path, {"book/intro.html": GOOD},
                 {**MATHJAX_FILE, "_static/theme.css": "a{background:url(img.png)}"})
    assert checker.check_dir(root) == []
    assert checker.main([str(root)]) == 0


@pytest.mark.parametrize("snippet, what", [
    ('<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>', "cdn math"),
    ('<script src="//cdnjs.cloudflare.com/ajax/libs/require.js/2.3.4/require.min.js"></script>',
     "widget manager"),
    ('<link href="https://fonts.googleapis.com/css?family=Lato" rel="stylesheet">', "style"),
    ('<link rel="preload" as="font" href="http://example.org/f.woff2">', "font preload"),
    ("<style>@import url(https://example.org/x.css);</style>", "@import"),
    ('<div style="background: url(\'https://example.org/bg.png\')"></div>', "inline style"),
    ('<img src="https://example.org/badge.svg">', "image"),
])
def test_checker_fails_on_another_host_naming_the_page(tmp_path, snippet, what):
    page = GOOD.replace("</head>", snippet + "</head>")
    root = _site(tmp_path, {"notebooks/06_mvtec_ad.html": page},
                 {**MATHJAX_FILE, "_static/theme.css": ""})
    problems = checker.check_dir(root)
    assert len(problems) == 1, (what, problems)
    assert problems[0].startswith("notebooks/06_mvtec_ad.html: ")
    assert checker.main([str(root)]) == 1


def test_checker_fails_on_a_web_font_in_css(tmp_path):
    css = "/* url(https://in.a/comment) */ @font-face{src:url(https://fonts.gstatic.com/x.woff2)}"
    root = _site(tmp_path, {"book/intro.html": GOOD},
                 {**MATHJAX_FILE, "_static/theme.css": css})
    problems = checker.check_dir(root)
    assert len(problems) == 1 and problems[0].startswith("_static/theme.css: "), problems


def test_checker_fails_when_local_mathjax_is_missing(tmp_path):
    root = _site(tmp_path, {"book/intro.html": GOOD}, {"_static/theme.css": ""})
    problems = checker.check_dir(root)
    assert any("mathjax/tex-svg.js" in p and "missing" in p for p in problems), problems
    assert any("has math but loads no MathJax" in p for p in problems), problems


def test_checker_ignores_theme_macro_files(tmp_path):
    macro = '<script src="{{ pathto(\'_static/scripts/x.js\', 1) }}"></script>'
    root = _site(tmp_path, {"book/intro.html": GOOD, "_static/webpack-macros.html": macro},
                 {**MATHJAX_FILE, "_static/theme.css": ""})
    assert checker.check_dir(root) == []


def test_built_book_on_disk_is_offline():
    """A build left on disk (the strict build of `make test`, or `make book`) newer than
    _config.yml; CI starts from a clean clone, where `make test` runs the checker after its
    strict build instead."""
    config_mtime = (ROOT / "_config.yml").stat().st_mtime
    dirs = [ROOT / d for d in checker.DEFAULT_DIRS
            if (ROOT / d / "index.html").is_file()
            and (ROOT / d / "index.html").stat().st_mtime >= config_mtime]
    if not dirs:
        pytest.skip("no book built since _config.yml last changed")
    problems = [p for d in dirs for p in checker.check_dir(d)]
    assert not problems, "\n".join(problems)
