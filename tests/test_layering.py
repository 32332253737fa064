"""The package's one-way flow: a module imports only from its own stage or from earlier ones.

Stages, in order (``glance_lite/__init__.py`` lists their modules)::

    common < data < models < train < score < evaluate < baselines < experiments < report < cli, __main__

Every module under ``glance_lite/`` is parsed with :mod:`ast`; every import counts, at any depth
(lazy imports inside functions too), relative or absolute.  Importing the package itself
(``glance_lite``, whose ``__init__`` only re-exports the presets) is allowed everywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import glance_lite

PACKAGE = Path(glance_lite.__file__).resolve().parent
STAGES = ["common", "data", "models", "train", "score", "evaluate", "baselines", "experiments", "report"]
TOP_LEVEL = {"glance_lite.cli", "glance_lite.__main__"}  # after every stage
RANK = {s: i for i, s in enumerate(STAGES)} | {"<top>": len(STAGES)}

KNOWN_UPWARD: set[tuple[str, str]] = set()
"""Upward imports tolerated for now, as (importer, imported); none today."""


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def stage_of(module: str) -> str | None:
    """The stage a module (or subpackage) belongs to; ``<top>`` for cli/__main__; None for the package."""
    parts = module.split(".")
    if parts[0] != "glance_lite" or len(parts) == 1:
        return None
    if parts[1] in STAGES:
        return parts[1]
    return "<top>"


def imported_modules(module: str, is_package: bool, source: str, known: set[str]) -> list[tuple[int, str]]:
    """(line, absolute module name) of every glance_lite module ``source`` imports, at any depth.
    ``from X import a`` counts as importing ``X.a`` when that is a module in ``known``."""
    package = module if is_package else module.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "glance_lite"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "glance_lite":
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            out += [(node.lineno, s) for s in subs] or [(node.lineno, target)]
    return out


def upward_imports(sources: dict[str, tuple[bool, str]]) -> list[tuple[str, int, str]]:
    """(importer, line, imported) for every import of a later stage; ``sources`` maps module name to
    (is_package, source)."""
    known = set(sources)
    bad = []
    for mod, (is_pkg, src) in sorted(sources.items()):
        me = stage_of(mod)
        if me is None:
            continue
        for line, target in imported_modules(mod, is_pkg, src, known):
            them = stage_of(target)
            if them is not None and RANK[them] > RANK[me]:
                bad.append((mod, line, target))
    return bad


def package_sources() -> dict[str, tuple[bool, str]]:
    return {module_name(f): (f.name == "__init__.py", f.read_text()) for f in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_belongs_to_a_stage():
    mods = package_sources()
    assert len(mods) > 40, sorted(mods)
    stray = [m for m in mods if stage_of(m) == "<top>" and m not in TOP_LEVEL]
    assert not stray, f"modules outside the stage subpackages: {stray} (put each in its stage)"
    dirs = {p.parent.name for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE}
    assert dirs == set(STAGES), f"stage folders {sorted(dirs)} differ from the stages {STAGES}"
    for s in STAGES:
        assert (PACKAGE / s / "__init__.py").is_file(), f"glance_lite/{s} lacks an __init__.py"


def test_no_module_imports_from_a_later_stage():
    found = upward_imports(package_sources())
    unexpected = [b for b in found if (b[0], b[2]) not in KNOWN_UPWARD]
    assert not unexpected, "imports from a later stage:\n" + "\n".join(
        f"  {m}:{line} imports {t} ({stage_of(m)} < {stage_of(t)})" for m, line, t in unexpected)
    stale = KNOWN_UPWARD - {(b[0], b[2]) for b in found}
    assert not stale, f"listed as known upward imports but no longer there (remove them): {sorted(stale)}"


@pytest.mark.parametrize("code", [
    "from ..score.scoring import patch_grid\n",                          # relative, module level
    "def f():\n    from ..experiments import chapters\n",               # lazy, `from pkg import module`
    "import glance_lite.report.book_tables as bt\n",                    # absolute import
    "class A:\n    def g(self):\n        from glance_lite.cli import main\n",  # nested, top level
])
def test_the_check_detects_an_upward_import(code):
    sources = package_sources()
    sources["glance_lite.common.fake"] = (False, "import os\n" + code)
    found = [b for b in upward_imports(sources) if b[0] == "glance_lite.common.fake"]
    assert len(found) == 1, found


def test_the_check_allows_same_and_earlier_stages():
    sources = package_sources()
    sources["glance_lite.score.fake"] = (False, (
        "from .idw import ScoringError\nfrom ..models.heads import iad_score\nfrom ..common import paths\n"
        "import glance_lite\nfrom glance_lite import __version__\n"
        "def f():\n    from glance_lite.train.training import fit\n"))
    assert [b for b in upward_imports(sources) if b[0] == "glance_lite.score.fake"] == []
