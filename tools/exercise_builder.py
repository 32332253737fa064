"""Write a chapter's exercises section in the format of ``tools/exercises.py`` (used by authors).

    from exercise_builder import Ex, replace_exercises
    replace_exercises("notebooks/05_pro_metric.ipynb", [Ex(...), ...])

Everything from the chapter's first ``## Exercise`` heading to its end is replaced by a
``## Exercises`` heading and the given exercises (task, answer, solution, check / model answer).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Ex:
    id: str                      # "05.1"
    level: str                   # warm-up | core | stretch
    title: str                   # short title
    teaches: str                 # one line
    minutes: int
    task: str                    # markdown body (without the heading)
    answer: str                  # code stub (code exercise) or "" for an open question
    solution: str = ""           # code
    wrong_answers: list[str] = field(default_factory=list)
    check: str = ""              # code, must call the student's function and assert
    model_answer: str = ""       # markdown, open questions


def _cell(kind: str, src: str, meta: dict, tags: list[str] | None = None) -> dict:
    c = {"cell_type": kind, "id": uuid.uuid4().hex[:8], "metadata": {"exercise": meta}, "source": src.strip("\n").splitlines(True)}
    if tags:
        c["metadata"]["tags"] = tags
    if kind == "code":
        c["execution_count"], c["outputs"] = None, []
    return c


def cells(ex: Ex) -> list[dict]:
    head = f"### Exercise {ex.id} ({ex.level}): {ex.title}\n\n*Teaches:* {ex.teaches} *About {ex.minutes} minutes.*\n\n"
    out = [_cell("markdown", head + ex.task.strip(), {"id": ex.id, "role": "task", "level": ex.level,
                                                     "teaches": ex.teaches, "minutes": ex.minutes})]
    if ex.answer.strip():
        out.append(_cell("code", ex.answer, {"id": ex.id, "role": "answer"}))
        out.append(_cell("code", ex.solution, {"id": ex.id, "role": "solution", "wrong_answers": ex.wrong_answers},
                         tags=["hide-cell"]))
        out.append(_cell("code", ex.check, {"id": ex.id, "role": "check"}))
    else:
        out.append(_cell("markdown", "*Your answer:*", {"id": ex.id, "role": "answer"}))
        body = ex.model_answer.strip()
        out.append(_cell("markdown", ":::{admonition} Model answer (for the teacher)\n:class: dropdown\n\n" + body + "\n:::",
                         {"id": ex.id, "role": "model-answer"}))
    return out


def replace_exercises(path: str | Path, exs: list[Ex], intro: str = "") -> None:
    path = Path(path)
    nb = json.loads(path.read_text())
    cs = nb["cells"]
    start = next((i for i, c in enumerate(cs) if c["cell_type"] == "markdown"
                  and "".join(c["source"]).lstrip().startswith("## Exercise")), len(cs))
    head = "## Exercises\n\n" + (intro.strip() + "\n" if intro else
                                 "Three levels: a warm-up checked against the package, a core exercise that changes "
                                 "the method and measures the effect, and an open stretch question.\n")
    new = [{"cell_type": "markdown", "id": uuid.uuid4().hex[:8], "metadata": {}, "source": head.splitlines(True)}]
    for ex in exs:
        new += cells(ex)
    nb["cells"] = cs[:start] + new
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
