"""The exercises (tools/exercises.py): enough of them at every level, checks that discriminate, a
student edition without solutions that stops at the first exercise, and grading of a folder.

The discrimination test runs each chapter once (smoke preset) with, at every automatic check, the
stub, every recorded wrong answer and the solution in turn: the stub and each wrong answer must fail
and the solution must pass."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("exercises", ROOT / "tools" / "exercises.py")
X = importlib.util.module_from_spec(spec)
sys.modules["exercises"] = X
spec.loader.exec_module(X)
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
METHOD = [n for n in NOTEBOOKS if n.name[:2] in {"00", "01", "02", "03", "04", "05"}]
RESULTS = [n for n in NOTEBOOKS if n.name[:2] in {"06", "07", "08"}]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[n.name for n in NOTEBOOKS])
def test_exercises_are_well_formed(nb):
    exs = X.exercises(X.load(nb), nb.stem)
    need = 3 if nb in METHOD else 2 if nb in RESULTS else 1
    assert len(exs) >= need, f"{nb.name}: {len(exs)} exercises, need {need}"
    if nb in METHOD:
        assert {e.level for e in exs} == set(X.LEVELS), f"{nb.name}: not every level"
    assert exs[0].auto, f"{nb.name}: the first exercise must have an automatic check"
    for e in exs:
        assert e.id.startswith(nb.stem[:2] + "."), e.id
        assert e.teaches and e.minutes > 0 and e.task.startswith(f"### Exercise {e.id} ({e.level})")
        if e.auto:
            assert "assert" in e.check, f"{e.id}: the check asserts nothing"
            assert e.wrong_answers, f"{e.id}: no wrong answer to prove the check discriminates"
            assert re.search(rf"NotImplementedError\(\s*\"Exercise {re.escape(e.id)}: ", e.answer), (
                f"{e.id}: the stub must raise NotImplementedError(\"Exercise {e.id}: <what to write>\")")
        else:
            assert e.model_answer, f"{e.id}: an open question needs a model answer"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[n.name for n in NOTEBOOKS])
def test_every_check_fails_on_the_stub_and_wrong_answers_and_passes_on_the_solution(nb):
    teacher = X.load(nb)
    exs = [e for e in X.exercises(teacher, nb.stem) if e.auto]
    variants = {e.id: [("stub", e.answer)] + [(f"wrong {i}", w) for i, w in enumerate(e.wrong_answers)]
                + [("solution", e.solution)] for e in exs}
    got = {(r["exercise"], r["variant"]): r for r in X.run_grading(X.grading_notebook(teacher, variants))}
    for e in exs:
        for v, _ in variants[e.id]:
            r = got.get((e.id, v))
            assert r is not None, f"{e.id} ({v}): the check was never reached"
            if v == "solution":
                assert r["score"] == 1, f"{e.id}: the solution fails its check: {r['error']}"
            else:
                assert r["score"] == 0, f"{e.id}: the check accepts the {v} answer"
        assert got[(e.id, "stub")]["error"].startswith(f"NotImplementedError: Exercise {e.id}: ")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[n.name for n in NOTEBOOKS])
def test_the_student_edition_has_no_solutions_and_stops_at_the_first_exercise(nb):
    teacher = X.load(nb)
    exs = X.exercises(teacher, nb.stem)
    student = X.student_edition(teacher, nb.stem)
    cell_lines = lambda cells: {ln.strip() for c in cells for ln in "".join(c["source"]).splitlines()}
    student_lines = cell_lines(student["cells"])
    others = cell_lines([c for c in teacher["cells"] if (c.get("metadata", {}).get("exercise") or {}).get("role")
                         not in ("solution", "model-answer")])
    for e in exs:
        secret = e.solution if e.auto else e.model_answer
        own = {ln.strip() for ln in secret.splitlines() if len(ln.strip()) > 12} - others
        assert own, f"{e.id}: nothing in the solution differs from the rest of the chapter"
        assert not own & student_lines, f"{e.id}: solution or model answer in the student edition"
    # what Run all meets: the teacher's cells minus solutions and model answers, so the first check is
    # reached with the stub in place (whose failure the discrimination test records)
    kept = [c for c in teacher["cells"] if (c.get("metadata", {}).get("exercise") or {}).get("role")
            not in ("solution", "model-answer")]
    assert [c["source"] for c in student["cells"]] == [c["source"] for c in kept]
    roles = [(c.get("metadata", {}).get("exercise") or {}).get("role") for c in student["cells"]]
    assert roles.index("answer") < roles.index("check")


def _solved(student: dict, teacher_exs) -> dict:
    sol = {e.id: e.solution for e in teacher_exs if e.auto}
    out = json.loads(json.dumps(student))
    for c in out["cells"]:
        m = c.get("metadata", {}).get("exercise") or {}
        if m.get("role") == "answer" and m["id"] in sol:
            c["source"] = sol[m["id"]].splitlines(True)
    return out


def test_run_all_on_a_student_notebook_stops_at_the_first_exercise_with_its_message(tmp_path):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = ROOT / "notebooks" / "05_pro_metric.ipynb"
    (path,) = [p for p in X.write_student(tmp_path / "student") if p.name == nb.name] or [None]
    first = X.exercises(X.load(nb), nb.stem)[0]
    node = nbformat.read(path, as_version=4)
    with pytest.raises(CellExecutionError) as err:
        NotebookClient(node, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert f"Exercise {first.id}: write" in str(err.value) and "NotImplementedError" in str(err.value)


def test_grading_a_folder_gives_full_marks_to_a_solved_notebook_and_zero_to_an_unsolved_one(tmp_path):
    import csv

    nb = ROOT / "notebooks" / "05_pro_metric.ipynb"
    exs = X.exercises(X.load(nb), nb.stem)
    student = X.student_edition(X.load(nb), nb.stem)
    subs = tmp_path / "submissions"
    (subs / "ada").mkdir(parents=True)
    (subs / "ada" / "my_pro_homework.ipynb").write_text(json.dumps(_solved(student, exs)))
    (subs / "bob.ipynb").write_text(json.dumps(student))
    (subs / "broken.ipynb").write_text("{not json")
    out = tmp_path / "grades.csv"
    assert X.main(["grade", str(subs), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    auto = [e.id for e in exs if e.auto]
    score = {(r["student"], r["exercise"]): r["score"] for r in rows}
    assert all(score[("ada/my_pro_homework", i)] == "1" for i in auto)
    assert all(score[("bob", i)] == "0" for i in auto)
    assert all(score[(s, e.id)] == "manual" for s in ("ada/my_pro_homework", "bob") for e in exs if not e.auto)
    assert [r for r in rows if r["student"] == "broken"][0]["error"].startswith("unreadable submission")


def test_exercises_page_is_up_to_date():
    assert (ROOT / "book" / "exercises.md").read_text() == X.render_page(), "run: python tools/exercises.py page"


def test_the_exercises_table_has_five_cells_in_every_row():
    """A pipe in "what it teaches" (e.g. |c_ij|) must not split a row of the table."""
    rows = [ln for ln in X.render_page().splitlines() if ln.startswith("| [")]
    assert rows and all(len(re.split(r"(?<!\\)\|", ln)) == 7 for ln in rows)
