"""The chapters' exercises: the exercises page, the student edition, and grading.

Format (the teacher's edition is the chapter itself).  Every exercise cell carries
``metadata["exercise"] = {"id": "01.2", "role": ...}``; the roles are

* ``task`` (markdown, ``### Exercise 01.2 (core): ...``) with ``level`` (``warm-up``, ``core`` or
  ``stretch``), ``teaches`` (one line) and ``minutes`` (an estimate);
* ``answer``: the cell the student fills in.  For a code exercise it is a stub whose function raises
  ``NotImplementedError("Exercise 01.2: ...")`` saying what to write; for a stretch question, a
  markdown cell for the student's answer;
* ``solution`` (code, tagged ``hide-cell``): the teacher's solution, with ``wrong_answers``: plausible
  mistakes (an off-by-one, the wrong axis, a missing term) that the check must reject;
* ``check`` (code): the automatic check, which calls the student's function and asserts;
* ``model-answer`` (markdown): the model answer to a stretch question, for the teacher.

This mirrors the regions of otter-grader's assignment format (question, solution, tests) as cell
metadata, so that the chapters keep rendering as chapters; see the exercises page for why neither
otter-grader nor nbgrader is used as is.

Commands (from the repository root)::

    python tools/exercises.py page [--check]          # book/exercises.md from the chapters
    python tools/exercises.py student [--out DIR]     # DIR/*.ipynb without solutions (_build/student)
    python tools/exercises.py grade SUBMISSIONS [--out grades.csv]

``grade`` runs every submitted notebook's answers inside the teacher's chapter (its own setup cells,
not the student's copies) with the ``smoke`` preset, one fresh kernel per notebook, and writes one row
per student and exercise: 1 when the check passes, 0 when it fails (with the error), and ``manual``
for open questions.  ``tests/test_exercises.py`` runs the same machinery on every chapter with the stub,
every wrong answer and the solution.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
LEVELS = ("warm-up", "core", "stretch")
STUDENT_NOTE = "glance_student_edition"


def _src(cell: dict[str, Any]) -> str:
    return "".join(cell["source"])


def _meta(cell: dict[str, Any]) -> dict[str, Any]:
    return cell.get("metadata", {}).get("exercise") or {}


def is_exercise_cell(cell: dict[str, Any]) -> bool:
    """Whether a cell belongs to a chapter's exercises: one of an exercise's cells (its ``exercise``
    metadata) or the ``## Exercises`` heading that opens them."""
    return bool(_meta(cell)) or _src(cell).startswith("## Exercises")


@dataclass
class Exercise:
    """One exercise of a chapter, gathered from its cells."""

    id: str
    chapter: str
    level: str
    teaches: str
    minutes: int
    task: str
    answer: str = ""
    answer_kind: str = "code"
    solution: str = ""
    wrong_answers: list[str] = field(default_factory=list)
    check: str = ""
    model_answer: str = ""

    @property
    def auto(self) -> bool:
        """Whether the exercise has an automatic check (else it is graded by hand)."""
        return bool(self.check)


def load(nb_path: Path) -> dict[str, Any]:
    return json.loads(Path(nb_path).read_text())


def exercises(nb: dict[str, Any], chapter: str = "") -> list[Exercise]:
    """The exercises of a notebook, in order; raises ValueError on a malformed one."""
    out: dict[str, Exercise] = {}
    for cell in nb["cells"]:
        m = _meta(cell)
        if not m:
            continue
        eid, role = m.get("id"), m.get("role")
        if role == "task":
            if eid in out:
                raise ValueError(f"{chapter}: exercise {eid} has two tasks")
            if m.get("level") not in LEVELS:
                raise ValueError(f"{chapter}: exercise {eid}: level {m.get('level')!r} not in {LEVELS}")
            out[eid] = Exercise(eid, chapter, m["level"], m.get("teaches", ""), int(m.get("minutes", 0)), _src(cell))
            continue
        if eid not in out:
            raise ValueError(f"{chapter}: a {role} cell of exercise {eid} comes before its task")
        ex = out[eid]
        if role == "answer":
            ex.answer, ex.answer_kind = _src(cell), cell["cell_type"]
        elif role == "solution":
            ex.solution, ex.wrong_answers = _src(cell), list(m.get("wrong_answers", []))
        elif role == "check":
            ex.check = _src(cell)
        elif role == "model-answer":
            ex.model_answer = _src(cell)
        else:
            raise ValueError(f"{chapter}: exercise {eid}: unknown role {role!r}")
    for ex in out.values():
        if ex.answer_kind == "code" and not (ex.solution and ex.check):
            raise ValueError(f"{chapter}: exercise {ex.id} needs a solution and a check")
        if ex.answer_kind == "markdown" and not ex.model_answer:
            raise ValueError(f"{chapter}: exercise {ex.id} (open question) needs a model answer")
    return list(out.values())


def chapters() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def title(nb: dict[str, Any]) -> str:
    first = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
    return _src(first).splitlines()[0].lstrip("# ").strip()


# ------------------------------------------------------------------------------------------------
# The student edition
# ------------------------------------------------------------------------------------------------

def student_edition(nb: dict[str, Any], chapter: str) -> dict[str, Any]:
    """The chapter without solutions and model answers.  "Run all" stops at the first check, whose
    call of the stub raises ``NotImplementedError("Exercise ...: ...")`` naming what to write."""
    out = copy.deepcopy(nb)
    out["cells"] = [c for c in out["cells"] if _meta(c).get("role") not in ("solution", "model-answer")]
    for c in out["cells"]:
        if c["cell_type"] == "code":
            c["outputs"], c["execution_count"] = [], None
    out["metadata"][STUDENT_NOTE] = {"chapter": chapter}
    return out


def write_student(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in chapters():
        nb = load(path)
        if not exercises(nb, path.stem):
            continue
        dst = out_dir / path.name
        tmp = dst.with_suffix(".tmp")
        tmp.write_text(json.dumps(student_edition(nb, path.stem), indent=1, ensure_ascii=False) + "\n")
        tmp.replace(dst)
        written.append(dst)
    return written


# ------------------------------------------------------------------------------------------------
# Grading: the teacher's chapter with the submitted answers, every check recorded
# ------------------------------------------------------------------------------------------------

def _code(src: str, **meta: Any) -> dict[str, Any]:
    import uuid

    return {"cell_type": "code", "execution_count": None, "id": uuid.uuid4().hex[:8], "metadata": meta,
            "outputs": [], "source": src.splitlines(True)}


_RUN = '''
def _glance_try(eid, variant, answer, check):
    import traceback
    try:
        exec(compile(answer, f"<answer {eid}>", "exec"), globals())
        exec(compile(check, f"<check {eid}>", "exec"), globals())
        _glance_results.append({"exercise": eid, "variant": variant, "score": 1, "error": ""})
    except Exception as e:  # a failed check or a broken answer scores 0; grading goes on
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        _glance_results.append({"exercise": eid, "variant": variant, "score": 0, "error": last[:300]})
'''


def grading_notebook(nb: dict[str, Any], answers: dict[str, list[tuple[str, str]]]) -> dict[str, Any]:
    """The teacher's chapter ``nb`` rewritten to grade: at each exercise's check, every ``(variant,
    source)`` of ``answers[id]`` (default: the stub) is run, then the check, and the outcome is recorded;
    the last variant's definitions stay for the rest of the chapter.  Solutions, model answers and cells
    tagged ``skip-execution`` are left out.  The last cell writes the outcomes to ``$GLANCE_GRADES``."""
    out = copy.deepcopy(nb)
    cells = [_code("_glance_results = []\n" + _RUN)]
    stub = {}
    for c in out["cells"]:
        m = _meta(c)
        role = m.get("role")
        tags = set(c.get("metadata", {}).get("tags", []))
        if role in ("solution", "model-answer") or "skip-execution" in tags:
            continue
        if role == "answer":
            stub[m["id"]] = _src(c)
            continue
        if role == "check":
            eid = m["id"]
            variants = answers.get(eid) or [("stub", stub.get(eid, ""))]
            calls = "".join(f"_glance_try({eid!r}, {v!r}, {a!r}, {_src(c)!r})\n" for v, a in variants)
            cells.append(_code(calls))
            continue
        if c["cell_type"] == "code":
            c["outputs"], c["execution_count"] = [], None
        cells.append(c)
    cells.append(_code("import json, os\n"
                       "with open(os.environ['GLANCE_GRADES'], 'w') as _f:\n"
                       "    json.dump(_glance_results, _f)\n"))
    out["cells"] = cells
    return out


def run_grading(nb: dict[str, Any], timeout: int = 1800) -> list[dict[str, Any]]:
    """Execute a grading notebook in a fresh kernel (``smoke`` preset, an empty working folder, the
    repository's data folder) and return its recorded outcomes."""
    import nbformat
    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory() as tmp:
        grades = Path(tmp) / "grades.json"
        env = {"GLANCE_PRESET": "smoke", "GLANCE_GRADES": str(grades)}
        env.setdefault("GLANCE_DATA", os.environ.get("GLANCE_DATA", str(ROOT / "data")))
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            node = nbformat.reads(json.dumps(nb), as_version=4)
            NotebookClient(node, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": tmp}}).execute()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return json.loads(grades.read_text())


def chapter_of(nb: dict[str, Any], path: Path) -> Path:
    """The teacher's chapter a submitted notebook belongs to (by the student edition's note, else by
    file name)."""
    stem = (nb.get("metadata", {}).get(STUDENT_NOTE) or {}).get("chapter") or path.stem
    for c in chapters():
        if c.stem == stem or path.name.startswith(c.stem):
            return c
    raise ValueError(f"{path}: not a chapter of this book (no notebooks/{stem}.ipynb)")


def grade_folder(folder: Path) -> list[dict[str, Any]]:
    """One row per submitted notebook (``*.ipynb`` under ``folder``, recursively) and exercise."""
    rows: list[dict[str, Any]] = []
    subs = sorted(p for p in Path(folder).rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if not subs:
        raise SystemExit(f"grade: no notebooks under {folder}")
    from tqdm.auto import tqdm  # a dependency of the package

    for sub in tqdm(subs, desc="grading", unit="notebook"):
        student = sub.relative_to(folder).with_suffix("").as_posix()
        try:
            nb = load(sub)
            teacher_path = chapter_of(nb, sub)
        except (ValueError, OSError) as e:
            rows.append({"student": student, "chapter": "", "exercise": "", "level": "", "score": 0,
                         "error": f"unreadable submission: {e}"})
            continue
        teacher = load(teacher_path)
        exs = exercises(teacher, teacher_path.stem)
        submitted = {_meta(c).get("id"): _src(c) for c in nb["cells"]
                     if _meta(c).get("role") == "answer"}
        answers = {e.id: [("submitted", submitted.get(e.id, e.answer))] for e in exs if e.auto}
        try:
            got = {r["exercise"]: r for r in run_grading(grading_notebook(teacher, answers))}
        except Exception as e:  # noqa: BLE001 - a chapter that cannot run scores 0 with the reason
            got = {}
            why = f"the chapter did not run: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__}"
        else:
            why = "not reached"
        for e in exs:
            r = got.get(e.id)
            if not e.auto:
                score, err = "manual", ""
            else:
                score, err = (r["score"], r["error"]) if r else (0, why)
            rows.append({"student": student, "chapter": teacher_path.stem, "exercise": e.id, "level": e.level,
                         "score": score, "error": err})
    return rows


# ------------------------------------------------------------------------------------------------
# The exercises page
# ------------------------------------------------------------------------------------------------

def render_page() -> str:
    out = [
        "# Exercises",
        "",
        "Every chapter ends with exercises at three levels: a **warm-up** that implements a small piece and",
        "checks it against the package, a **core** exercise that changes the method's behaviour and measures",
        "the effect, and an open **stretch** question with a model answer for the teacher. The automatic",
        "checks reject the unsolved stub and typical mistakes (the test suite proves this for every check).",
        "",
        "## For teachers",
        "",
        "* **The student edition.** `make student` writes every chapter without solutions or model answers to",
        "  `_build/student/`. In it, *Run all* stops at the first unsolved exercise with a message that says",
        "  what to write. Hand these notebooks out; a student opens one in Jupyter, or on Colab with",
        "  *File → Upload notebook* (or, from a course repository on GitHub,",
        "  `https://colab.research.google.com/github/<owner>/<repo>/blob/<branch>/<path>.ipynb`). Its first",
        "  cell installs glance-lite on Colab.",
        "* **Grading.** Collect the completed notebooks in one folder (any file names; sub-folders per student",
        "  work too) and run `make grade SUBMISSIONS=folder`. Each notebook's answers are run inside the",
        "  original chapter with the `smoke` preset, so a student cannot change a check, and",
        "  `grades.csv` gets one row per student and exercise: 1 or 0 (with the error), or `manual` for the",
        "  open questions.",
        "* **Why not otter-grader or nbgrader.** otter-grader installs beside this book's packages, but it",
        "  grades a folder of submissions in Docker containers (`otter grade`), which Colab and many",
        "  classroom machines lack, and its assignment format rewrites the notebook into question cells. nbgrader",
        "  needs a course directory with its database and a Jupyter server stack. The exercises keep their",
        "  regions (question, solution, tests) as cell metadata instead, and `tools/exercises.py` does the",
        "  rest in a few hundred lines.",
        "",
        "## All exercises",
        "",
        "| exercise | chapter | level | what it teaches | minutes |",
        "|---|---|---|---|---|",
    ]
    sections = []
    for path in chapters():
        nb = load(path)
        exs = exercises(nb, path.stem)
        if not exs:
            continue
        for e in exs:
            teaches = e.teaches.replace("|", "\\|")  # a pipe inside a cell would split the table's row
            out.append(f"| [{e.id}](ex-{e.id.replace('.', '-')}) | {{doc}}`/notebooks/{path.stem}` | {e.level} | "
                       f"{teaches} | {e.minutes} |")
        sections += [f"## {title(nb)}", ""]
        for e in exs:
            body = e.task.split("\n", 1)
            head = body[0].lstrip("#").strip()
            sections += [f"(ex-{e.id.replace('.', '-')})=", f"### {head}", "",
                         (body[1].strip() if len(body) > 1 else ""), ""]
            if e.answer_kind == "code":
                sections += ["```python", e.answer.rstrip(), "```", "",
                             ":::{admonition} Solution", ":class: dropdown", "", "```python",
                             e.solution.rstrip(), "```", ":::", ""]
            else:
                text = e.model_answer.strip()
                if not text.startswith(":::"):
                    text = ":::{admonition} Model answer\n:class: dropdown\n\n" + text + "\n:::"
                sections += [text, ""]
    return "\n".join(out + [""] + sections).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    pg = sub.add_parser("page", help="write book/exercises.md")
    pg.add_argument("--check", action="store_true", help="exit 1 when the page is stale")
    st = sub.add_parser("student", help="write the student edition")
    st.add_argument("--out", default=str(ROOT / "_build" / "student"))
    gr = sub.add_parser("grade", help="grade a folder of completed notebooks")
    gr.add_argument("submissions")
    gr.add_argument("--out", default="grades.csv")
    a = ap.parse_args(argv)
    if a.cmd == "page":
        page, text = ROOT / "book" / "exercises.md", render_page()
        if a.check:
            if not page.is_file() or page.read_text() != text:
                print("book/exercises.md is stale: run python tools/exercises.py page", file=sys.stderr)
                return 1
            return 0
        page.write_text(text)
        print(f"wrote {page}")
        return 0
    if a.cmd == "student":
        for p in write_student(Path(a.out)):
            print(p)
        return 0
    folder = Path(a.submissions)
    if not folder.is_dir():
        print(f"grade: {folder} is not a folder", file=sys.stderr)
        return 1
    rows = grade_folder(folder)
    out = Path(a.out)
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["student", "chapter", "exercise", "level", "score", "error"])
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out)
    per: dict[str, list[int]] = {}
    for r in rows:
        if r["score"] != "manual":
            per.setdefault(r["student"], []).append(int(r["score"]))
    for s, v in per.items():
        print(f"{s}: {sum(v)}/{len(v)} automatic checks passed")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
