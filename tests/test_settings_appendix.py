"""The appendix "Settings we tried" (``notebooks/09_settings_we_tried.ipynb``) is built from the committed
validation files, one row per file; chapter 08 reads as the subject (no project process, no variant
names in its prose, at most about 1,500 words) and shows a local-only control only where a fair one exists.

The notebooks' code cells are executed here in one namespace (``display`` collects what would be shown),
without a kernel; the fair-control paths run on a copy of the results files with invented controls."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from glance_lite.common.presets import PRESETS, REMOVED_FIELDS, Preset, removed_settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "glance_lite" / "results"
APPENDIX = ROOT / "notebooks" / "09_settings_we_tried.ipynb"
CHAPTER = ROOT / "notebooks" / "08_ablation_and_features.ipynb"
LEVERS, CONTEXT, IMPORTS = "30e6f7d7", "c884d90c", "7c6f061d"  # chapter 08's cells run here


def _exercises():
    """tools/exercises.py, the one reader of the exercises' cells."""
    import importlib.util
    import sys

    if "exercises" not in sys.modules:  # registered before it runs: its dataclasses look themselves up there
        spec = importlib.util.spec_from_file_location("exercises", ROOT / "tools" / "exercises.py")
        sys.modules["exercises"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["exercises"])
    return sys.modules["exercises"]


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _variants() -> list[str]:
    return sorted(p.parent.name for p in (RESULTS / "validation").glob("*/validation.json"))


def _run(path: Path, ids: tuple[str, ...] = ()) -> dict:
    """Execute the code cells of a notebook (all but the install cell and those tagged skip-execution, or
    only ``ids``, in order) in one namespace; ``shown`` holds what they display."""
    shown: list = []
    ns: dict = {"display": lambda *a, **k: shown.extend(a), "shown": shown}
    for c in _cells(path)[1:]:
        if c["cell_type"] != "code" or "skip-execution" in c.get("metadata", {}).get("tags", []):
            continue
        if ids and c["id"] not in ids:
            continue
        exec(compile("".join(c["source"]), f"{path.name}:{c['id']}", "exec"), ns)
    return ns


def _fields(v: dict) -> dict:
    """A file's preset fields as today's package reads them, with a setting since removed from the package as
    the file has it (else at its former default)."""
    stored = v["preset_fields"]
    kept = Preset.from_dict({k: x for k, x in stored.items() if k not in REMOVED_FIELDS}).to_dict()
    f = {**REMOVED_FIELDS, **kept, **{k: x for k, x in stored.items() if k in REMOVED_FIELDS}}
    f.pop("name")
    return f


def test_appendix_has_every_validation_file_once():
    ns = _run(APPENDIX)
    settings, seeds = ns["settings"], ns["seeds"]
    listed = list(settings.index) + list(seeds.index)
    assert sorted(listed) == _variants(), "every validation folder appears exactly once"
    cpu = {**REMOVED_FIELDS, **PRESETS["cpu"].to_dict()}
    cpu.pop("name")
    for name in listed:
        v = json.loads((RESULTS / "validation" / name / "validation.json").read_text())
        table = settings if name in settings.index else seeds
        assert table.loc[name, "AU-PRO"] == pytest.approx(v["mean"]["AU-PRO"], abs=1e-12)
        assert table.loc[name, "sources"] == v["mean"]["n_sources"]
        if name in settings.index and _fields(v) != cpu:
            assert settings.loc[name, "decision"] == "not adopted", name
    assert set(seeds.index) == set(ns["repeats"]), "the second table is the seed repeats"


def test_appendix_describes_the_settings_that_left_the_package():
    # a file that used a setting since removed from the package names it (in words and as the option it was
    # run with) and is not adopted; a file that has a removed field at its former default shows no change there
    ns = _run(APPENDIX)
    settings = ns["settings"]
    used = 0
    for name in settings.index:
        v = json.loads((RESULTS / "validation" / name / "validation.json").read_text())
        gone = removed_settings(v["preset_fields"])
        used += bool(gone)
        words, opts = settings.loc[name, "what it changes"], settings.loc[name, "re-run with"]
        for k in REMOVED_FIELDS:
            assert (f"--set {k}=" in opts) == (k in gone), (name, k)
            if k in gone:
                assert ns["WORDS"][k](gone[k]) in words, (name, k)
        if gone:
            assert settings.loc[name, "decision"] == "not adopted", name
    assert used >= 5, "the files of cpu-swap, cpu-cos1e3, cpu-hole, cpu-smooth3 and cpu-calib16-* are listed"


def test_appendix_commits_are_those_of_the_files():
    # the notebook asks git; where git answers here, every row's commit is the file's last commit
    ns = _run(APPENDIX)
    for table in (ns["settings"], ns["seeds"]):
        for name, commit in table["commit"].items():
            try:
                git = subprocess.run(["git", "log", "--format=%h", "-1", "--", "validation.json"],
                                     cwd=RESULTS / "validation" / name, capture_output=True, text=True,
                                     timeout=30).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                git = ""
            expected = git or ns["COMMITS"].get(name, "–")
            assert commit == expected, name
            assert commit == "–" or re.fullmatch(r"[0-9a-f]{7,40}", commit), (name, commit)


def test_chapter_08_prose_is_the_subject_not_the_process():
    md = ["".join(c["source"]) for c in _cells(CHAPTER) if c["cell_type"] == "markdown"]
    text = "\n".join(md)
    for bad in ("Issue", "issue 10", "session", "this machine", "200-step", "glance − TS"):
        assert bad not in text, bad
    for name in _variants():
        if name != "cpu":  # the preset's own name is the subject; a variant's name is not
            assert not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), name
    assert "cpu-" not in text
    words = len(text.split())
    assert words <= 2100, f"chapter 08 has {words} words of prose with its exercises (about 2,000 at most)"
    own = sum(len("".join(c["source"]).split()) for c in _cells(CHAPTER)
              if c["cell_type"] == "markdown" and not _exercises().is_exercise_cell(c))
    assert own <= 1500, f"chapter 08 has {own} words of prose besides its exercises"
    code = "\n".join("".join(c["source"]) for c in _cells(CHAPTER) if c["cell_type"] == "code")
    for old in ("glance − TS", "glance_minus_ts", "ts_AU-PRO", "r['TS']", 'r["TS"]'):  # a 200-step TS's keys
        assert old not in code, old


def test_appendix_is_a_part_after_the_chapters():
    yaml = pytest.importorskip("yaml")
    parts = yaml.safe_load((ROOT / "_toc.yml").read_text())["parts"]
    where = {ch["file"]: i for i, p in enumerate(parts) for ch in p.get("chapters", [])}
    assert where["notebooks/09_settings_we_tried"] > where["notebooks/08_ablation_and_features"]
    assert parts[where["notebooks/09_settings_we_tried"]]["caption"].lower().startswith("appendix")


@pytest.fixture
def fair_results(tmp_path, monkeypatch):
    """A copy of the results files in which the cpu fits (and their seed repeats) and the offline results
    carry invented fair local-only controls: converged TS 0.05 and nearest neighbours 0.03 below
    glance-lite."""
    import glance_lite.common.paths as paths

    root = tmp_path / "results"
    for sub in ("validation", "context", "local_nets"):
        shutil.copytree(RESULTS / sub, root / sub)
    for cat in ("cable", "mesh"):
        shutil.copytree(RESULTS / "cpu" / "offline" / cat, root / "cpu" / "offline" / cat)
        f = root / "cpu" / "offline" / cat / "metrics.json"
        m = json.loads(f.read_text())
        m["knn"] = {"AU-PRO": m["AU-PRO"] - 0.03}
        f.write_text(json.dumps(m))
    for name in ("cpu", "cpu-seed1", "cpu-seed2", "cpu-seed3"):
        f = root / "validation" / name / "validation.json"
        v = json.loads(f.read_text())
        for r in v["rows"]:
            if r.get("AU-PRO") is None:
                continue
            r.update({"controls_version": 2, "ts": {"AU-PRO": r["AU-PRO"] - 0.05, "stop_steps": [400]},
                      "ts_AU-PRO": r["AU-PRO"] - 0.05, "knn_AU-PRO": r["AU-PRO"] - 0.03,
                      "local_AU-PRO": r["AU-PRO"] - 0.03})
        f.write_text(json.dumps(v))
    monkeypatch.setattr(paths, "results_dir", lambda: root)
    return root


def test_chapter_08_shows_the_strongest_fair_control(fair_results, capsys):
    ns = _run(CHAPTER, (IMPORTS, LEVERS, CONTEXT))
    out = capsys.readouterr().out
    ct = ns["ct"]
    assert ct.loc["offline-mesh-test", "glance − local"] == pytest.approx(0.03)  # the stronger control
    assert "No fair local-only control" not in out
    assert "glance − local +0.030" in out and "results file of chapter 06" in out
    assert "nearest neighbours" in out


def test_chapter_08_says_so_when_no_fair_control_exists(tmp_path, monkeypatch, capsys):
    import glance_lite.common.paths as paths

    root = tmp_path / "results"
    for sub in ("validation", "context"):
        shutil.copytree(RESULTS / sub, root / sub)
    for f in (root / "validation").glob("*/validation.json"):  # no row of the fair controls' version
        v = json.loads(f.read_text())
        for r in v["rows"]:
            r.pop("controls_version", None)
        f.write_text(json.dumps(v))
    monkeypatch.setattr(paths, "results_dir", lambda: root)
    ns = _run(CHAPTER, (IMPORTS, LEVERS, CONTEXT))
    out = capsys.readouterr().out
    assert out.count("No fair local-only control has been measured") == 1
    assert "glance − local" not in ns["ct"]
    assert len(ns["levers"]) >= 3  # the levers' table needs no control


def test_appendix_adds_the_control_column_when_a_file_has_it(fair_results):
    ns = _run(APPENDIX)
    s = ns["settings"]
    assert s.loc["cpu", "glance − local"] == pytest.approx(0.03)
