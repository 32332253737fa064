"""The committed results files: current with the code that reads them, archive kept apart."""

from __future__ import annotations

import json
from pathlib import Path


from glance_lite.common.presets import PRESETS, Preset
from glance_lite.experiments.reproduce import load_results, load_validation


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_load_results_skips_the_archive_unless_asked(tmp_path: Path) -> None:
    _write(tmp_path / "cpu" / "mvtec_ad" / "bottle" / "metrics.json", {"AU-PRO": 0.9})
    _write(tmp_path / "archive" / "cpu-old" / "mvtec_ad" / "bottle" / "metrics.json", {"AU-PRO": 0.8})
    _write(tmp_path / "validation" / "cpu" / "validation.json", {"rows": []})
    rows = load_results(tmp_path)
    assert [r["AU-PRO"] for r in rows] == [0.9] and rows[0]["_archived"] is None
    both = load_results(tmp_path, archive=True)
    assert sorted((r["AU-PRO"], r["_archived"]) for r in both) == [(0.8, "cpu-old"), (0.9, None)]
    assert list(load_validation(tmp_path / "validation")) == ["cpu"]


def test_committed_results_match_the_presets_they_name() -> None:
    # a results file of a built-in preset must have been written with that preset's current fields,
    # so that the book never shows numbers of settings the code no longer has
    # (a field added after a file was written is read with its default, which is how that file ran)
    def current(fields):
        return Preset.from_dict(fields).to_dict()

    rows = load_results()
    assert rows, "no committed results files found in the package"
    for r in rows:
        if r["preset"] in PRESETS:
            assert current(r["preset_fields"]) == PRESETS[r["preset"]].to_dict(), r["_folder"]
    for name, v in load_validation().items():
        assert v["preset"] == name
        if name in PRESETS:
            assert current(v["preset_fields"]) == PRESETS[name].to_dict(), name
        assert all(row["status"] == "ok" for row in v["rows"]), name


def test_every_committed_results_file_names_its_commit():
    """A results file is re-runnable only with the code that wrote it: each JSON under
    glance_lite/results carries ``git_commit`` (the loss curves ``history.json`` sit beside the
    ``metrics.json`` that carries it)."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "glance_lite" / "results"
    missing = []
    for f in sorted(root.rglob("*.json")):
        if f.name == "history.json" and (f.parent / "metrics.json").is_file():
            continue
        d = json.loads(f.read_text())
        if isinstance(d, dict) and not d.get("git_commit"):
            missing.append(str(f.relative_to(root)))
    assert not missing, f"results files without git_commit: {missing}"
