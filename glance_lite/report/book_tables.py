"""The tables the reproduction chapters show, built from results files as pandas DataFrames.

Each function takes rows read by :func:`glance_lite.experiments.reproduce.load_results` (or
:func:`~glance_lite.experiments.reproduce.load_validation`) and returns a DataFrame whose numbers are those of
the files, unrounded; the chapters render them as HTML tables with three decimals.  The paper's
columns are labelled ``paper: ...``; categories without a results file are left out of a table and
named once in :func:`missing_note`; long provenance goes into a collapsed ``<details>`` block
(:func:`provenance_html`), with paths relative to the results folder.

The local-only controls (:mod:`glance_lite.baselines.controls`) are shown only where they are fair: the TS
baseline of a results file only when its students were trained to convergence (its summary records
``stop_steps``, :func:`converged_ts`), the nearest-neighbour control (``knn``) when the file has one, and
the strongest of the two (:func:`strongest_local`) beside glance-lite.  A TS trained a fixed 200 steps per
student (the files written before the stop rule) is never shown: where a file has no fair control, those
cells are empty.  Validation rows count only with ``controls_version == 2``
(:data:`glance_lite.experiments.validation.CONTROLS_VERSION`).

Used by :doc:`/notebooks/06_mvtec_ad` and :doc:`/notebooks/08_ablation_and_features`.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .paper_tables import (MVTEC_CATEGORIES, TABLE1_PRO, TABLE2_PIXEL_AUROC, TABLE4_LAMBDA_PRO,
                           TEXTURES, category_key)
from ..common.presets import LATER_FIELDS, PRESETS, REMOVED_FIELDS, removed_settings
from ..baselines.controls import converged_ts as _is_converged, strongest
from ..experiments.reproduce import load_patchcore, pro_by_lambda
from ..experiments.validation import (CONTROLS_VERSION, LEGACY_LOCAL_NETS, finished_rows, local_net_id, same_weights,
                                      ts_lenders)

__all__ = ["tables_1_and_2", "results_at_a_glance", "missing_note", "bar_rows", "offline_table", "table_4",
           "provenance_html", "validation_levers", "validation_sources", "validation_lambda", "seed_repeats",
           "validation_seeds", "seed_intervals", "context_table", "converged_ts", "fair_controls",
           "strongest_local", "ts_stops", "CONTROL_NAMES", "STYLE"]

def _three(v: Any) -> str:
    """A float with three decimals, never a signed zero ("-0.000" is a tiny negative rounded away)."""
    if isinstance(v, (float, np.floating)):
        s = f"{float(v):.3f}"
        return "0.000" if s == "-0.000" else s
    return str(v)


STYLE = {"formatter": _three, "na_rep": "–"}
"""``DataFrame.style.format(**STYLE)``: three decimals (no "-0.000"), a dash for a missing value."""


CONTROL_NAMES = {"ts": "TS (stop rule)", "knn": "nearest neighbours"}
"""How the tables name each local-only control."""


def converged_ts(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """A TS summary (the ``"ts"`` of a results file or a validation row) when it is a fair control, else
    None: the package's own test, :func:`glance_lite.baselines.controls.converged_ts` (students trained by
    the held-out stop rule).  A summary without ``stop_steps`` is the under-trained 200-step baseline."""
    return summary if _is_converged(summary) else None


def fair_controls(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The fair local-only controls of a results file: ``{"ts": converged TS, "knn": nearest neighbours}``,
    each only when present (an old TS is left out)."""
    out = {}
    ts = converged_ts(r.get("ts"))
    if ts is not None:
        out["ts"] = ts
    if r.get("knn"):
        out["knn"] = r["knn"]
    return out


def strongest_local(r: dict[str, Any], metric: str = "AU-PRO") -> tuple[str | None, float | None]:
    """The strongest fair control of a results file on ``metric``: ``(its name in the tables, value)``,
    or ``(None, None)`` when the file has none (:func:`glance_lite.baselines.controls.strongest`)."""
    name, v = strongest(fair_controls(r), metric)
    return (CONTROL_NAMES.get(name, name) if name else None), v


def ts_stops(rows: Sequence[dict[str, Any]]) -> Any:
    """How each TS student of the stop rule (:func:`converged_ts`) stopped: one row per file and student.

    Columns: ``student`` (1..M), ``stop step``, ``stopped by`` (``plateau`` when the held-out error fell by
    less than the rule's ``tol`` over the last ``window`` of its steps, ``cap`` when ``max_steps`` ended it
    first) and ``still falling`` (that relative fall at the stop),
    from :func:`glance_lite.baselines.students.stop_reason`, indexed by ``dataset/category``.  Files
    without such a TS are left out.  Shown in :doc:`/notebooks/06_mvtec_ad`.
    """
    from ..baselines.students import stop_reason

    out = []
    for r in rows:
        ts = converged_ts(r.get("ts"))
        if ts is None:
            continue
        for k, c in enumerate(ts.get("heldout_curves") or []):
            stop, by, gain = stop_reason(c, ts.get("rule") or {})
            out.append({"category": f"{r.get('dataset')}/{r['category']}", "student": k + 1, "stop step": stop,
                        "stopped by": by, "still falling": gain})
    return _pd().DataFrame(out, columns=["category", "student", "stop step", "stopped by",
                                         "still falling"]).set_index("category")


def _minus(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


def _floats(df: Any, cols: Iterable[str]) -> Any:
    """``df`` with the columns ``cols`` that it has as floats (an empty cell is NaN, never None)."""
    pd = _pd()
    for c in cols:
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return df


def _paper_name(cat: str) -> str:
    return next(k for k in TABLE1_PRO if category_key(k) == cat)


def _pd() -> Any:
    import pandas as pd

    return pd


def tables_1_and_2(rows: Sequence[dict[str, Any]]) -> Any:
    """Tables 1 and 2 for the MVTec AD categories that have a results file, in the paper's order.

    Columns: the paper's AU-PRO of "Ours" and of TS (Table 1) and pixel AUROC (Table 2) beside ours; our
    local-only controls on the same run (AU-PRO): TS trained by the held-out stop rule, nearest neighbours, the
    strongest of them and which one it is, and glance-lite minus it; and our image AUROC.  A file without
    fair controls leaves those cells empty (:func:`fair_controls`).  The last row is the mean over the
    categories present, the paper's columns averaged over the *same* categories; a column that some
    category lacks has no mean.
    """
    pd = _pd()
    out = []
    for cat in MVTEC_CATEGORIES:
        for r in (r for r in rows if r.get("dataset") == "mvtec_ad" and r["category"] == cat):
            pn = _paper_name(cat)
            fair = fair_controls(r)
            which, local = strongest_local(r)
            out.append({
                "category": cat, "kind": "texture" if cat in TEXTURES else "object", "preset": r["preset"],
                "paper: AU-PRO": TABLE1_PRO[pn]["Ours"], "ours: AU-PRO": r["AU-PRO"],
                "paper: TS AU-PRO": TABLE1_PRO[pn]["TS"],
                "ours: TS (stop rule) AU-PRO": (fair.get("ts") or {}).get("AU-PRO"),
                "ours: nearest neighbours AU-PRO": (fair.get("knn") or {}).get("AU-PRO"),
                "ours: strongest local AU-PRO": local, "which local control": which,
                "ours: glance − local AU-PRO": _minus(r["AU-PRO"], local),
                "paper: pixel AUROC": TABLE2_PIXEL_AUROC[pn]["Ours"], "ours: pixel AUROC": r["pixel_AUROC"],
                "ours: image AUROC": r["image_AUROC"],
            })
    df = pd.DataFrame(out)
    if len(df):
        mean: dict[str, Any] = {"category": f"mean ({len(df)})", "kind": "", "preset": "", "which local control": ""}
        for c in df.columns:
            if c.startswith(("paper:", "ours:")):
                col = pd.to_numeric(df[c], errors="coerce")
                mean[c] = float(col.mean()) if col.notna().all() else None  # never a mean over fewer categories
        df = pd.concat([df, pd.DataFrame([mean])], ignore_index=True)
        df = _floats(df, [c for c in df.columns if c.startswith(("paper:", "ours:"))])
    return df.set_index("category") if len(df) else df


def results_at_a_glance(rows: Sequence[dict[str, Any]], preset: str = "cpu",
                        results_root: str | Path | None = None) -> Any:
    """One row per MVTec AD category with a results file of ``preset``, in the paper's order: the paper's
    AU-PRO (Table 1, its "Ours"), ours, the strongest fair local-only control on the same run and its name
    (:func:`strongest_local`), PatchCore's AU-PRO where ``results/patchcore/<category>.json`` exists
    (:func:`glance_lite.experiments.reproduce.load_patchcore`, read from ``results_root``), then ours minus
    the paper's and ours minus the strongest local control.  Archived rows are left out."""
    pd = _pd()
    out = []
    for cat in MVTEC_CATEGORIES:
        for r in rows:
            if (r.get("dataset") != "mvtec_ad" or r.get("category") != cat or r.get("preset") != preset
                    or r.get("_archived")):
                continue
            paper = TABLE1_PRO[_paper_name(cat)]["Ours"]
            which, local = strongest_local(r)
            pc = load_patchcore(cat, results_root)
            out.append({"category": cat, "paper's AU-PRO": paper, "ours": r["AU-PRO"],
                        "strongest local": local, "which local control": which,
                        "PatchCore": pc["metrics"]["AU-PRO"] if pc else None,
                        "ours − paper": _minus(r["AU-PRO"], paper), "ours − strongest local": _minus(r["AU-PRO"], local)})
    if not out:
        return pd.DataFrame(out)
    df = pd.DataFrame(out).set_index("category")
    return _floats(df, [c for c in df.columns if c != "which local control"])


def missing_note(rows: Sequence[dict[str, Any]], dataset: str = "mvtec_ad") -> str:
    """One line naming the categories without a results file (empty when all are present)."""
    have = {r["category"] for r in rows if r.get("dataset") == dataset}
    missing = [c for c in MVTEC_CATEGORIES if c not in have]
    if not missing:
        return ""
    return (f"No results file yet for {len(missing)} of the {len(MVTEC_CATEGORIES)} categories (their images "
            f"were not available to the build; `glance-lite reproduce` adds them): " + ", ".join(missing) + ".")


def bar_rows(cat: str, rows: Sequence[dict[str, Any]], archived: Sequence[dict[str, Any]] = ()) -> Any:
    """One MVTec AD category against its bars: the paper's numbers, PatchCore (where a reference file
    exists), the archived and the current glance-lite rows, and the fair local-only controls of each
    (:func:`fair_controls`: TS trained by the held-out stop rule, nearest neighbours), each with its source.  A
    glance-lite row names its strongest local control on AU-PRO and glance-lite minus it."""
    pd = _pd()
    cols = ("AU-PRO", "pixel_AUROC", "image_AUROC")
    pn = _paper_name(cat)
    out = [{"row": "paper: glance (Tables 1, 2)", "AU-PRO": TABLE1_PRO[pn]["Ours"],
            "pixel_AUROC": TABLE2_PIXEL_AUROC[pn]["Ours"], "source": "paper"},
           {"row": "paper: TS (Table 1)", "AU-PRO": TABLE1_PRO[pn]["TS"], "source": "paper"}]
    pc = load_patchcore(cat)
    if pc is not None:
        out.append({"row": "PatchCore (anomalib, same backbone)", **{c: pc["metrics"][c] for c in cols},
                    "fit s": pc["fit_seconds"],
                    "source": f"tools/patchcore_anomalib.py, anomalib {pc['versions']['anomalib']}, "
                              f"{pc['image_size']} px, coreset {pc['coreset_ratio']:g}"})

    def with_controls(r: dict[str, Any], tag: str, source: str, fit: float | None) -> None:
        which, local = strongest_local(r)
        out.append({"row": f"glance-lite, {tag}", **{c: r[c] for c in cols}, "fit s": fit,
                    "which local control": which, "glance − local": _minus(r["AU-PRO"], local), "source": source})
        for name, c in fair_controls(r).items():
            out.append({"row": f"{CONTROL_NAMES[name]}, {tag}", **{k: c.get(k) for k in cols},
                        "fit s": c.get("wall_seconds"), "source": source})

    for r in sorted(archived, key=lambda r: r["_archived"]):
        if r["category"] == cat and r.get("dataset") == "mvtec_ad":
            with_controls(r, str(r["_archived"]), "archived results file",
                          sum((r.get("fit_stage_seconds") or {}).values()))
    for r in rows:
        if r["category"] != cat or r.get("dataset") != "mvtec_ad":
            continue
        stages = r.get("fit_stage_seconds") or {}
        with_controls(r, f"preset {r['preset']}", "results file",
                      sum(v for k, v in stages.items() if k != "pretrain"))
    df = pd.DataFrame(out).set_index("row")
    if "fit s" in df:
        df["fit s"] = pd.to_numeric(df["fit s"], errors="coerce").round().astype("Int64")  # whole seconds
    df = _floats(df, ("AU-PRO", "pixel_AUROC", "image_AUROC", "glance − local"))
    return df[[c for c in ("AU-PRO", "pixel_AUROC", "image_AUROC", "which local control", "glance − local", "fit s",
                           "source") if c in df]]


def offline_table(rows: Sequence[dict[str, Any]]) -> Any:
    """The offline dataset's results: glance-lite, each head alone and the fair local-only controls
    (TS trained by the held-out stop rule, nearest neighbours, the strongest of them and glance-lite minus it; empty
    where a file has none), per category (no paper column)."""
    from ..data.offline_data import OFFLINE_CATEGORIES

    pd = _pd()
    out = []
    for r in rows:
        if r.get("dataset") != "offline":
            continue
        heads = r.get("heads") or {}
        fair = fair_controls(r)
        which, local = strongest_local(r)
        out.append({"category": r["category"], "kind": OFFLINE_CATEGORIES.get(r["category"], "?"),
                    "AU-PRO": r["AU-PRO"], "IAD alone": (heads.get("iad_only") or {}).get("AU-PRO"),
                    "DAD alone": (heads.get("dad_only") or {}).get("AU-PRO"),
                    "TS (stop rule)": (fair.get("ts") or {}).get("AU-PRO"),
                    "nearest neighbours": (fair.get("knn") or {}).get("AU-PRO"),
                    "strongest local": local, "which local control": which,
                    "glance − local": _minus(r["AU-PRO"], local),
                    "pixel AUROC": r["pixel_AUROC"], "image AUROC": r["image_AUROC"], "preset": r["preset"]})
    if not out:
        return pd.DataFrame(out)
    return _floats(pd.DataFrame(out).set_index("category"),
                   ("AU-PRO", "IAD alone", "DAD alone", "TS (stop rule)", "nearest neighbours", "strongest local",
                    "glance − local", "pixel AUROC", "image AUROC"))


def table_4(rows: Sequence[dict[str, Any]]) -> Any:
    """Table 4 (AU-PRO against lambda_s): the paper's row for each MVTec AD category we have, ours below
    it, and our offline categories.  Columns are the values of lambda_s, then the best one."""
    pd = _pd()
    out = []
    for cat in MVTEC_CATEGORIES:
        ours = [r for r in rows if r.get("dataset") == "mvtec_ad" and r["category"] == cat and "ablation" in r]
        if not ours:
            continue
        pv = TABLE4_LAMBDA_PRO[_paper_name(cat)]
        out.append(_sweep_row(cat, "paper", {k: float(v) for k, v in pv.items()}))
        out += [_sweep_row(cat, f"ours ({r['preset']})", pro_by_lambda(r["ablation"])) for r in ours]
    out += [_sweep_row(f"offline/{r['category']}", f"ours ({r['preset']})", pro_by_lambda(r["ablation"]))
            for r in rows if r.get("dataset") == "offline" and "ablation" in r]
    return pd.DataFrame(out).set_index(["category", "source"]) if out else pd.DataFrame(out)


def _sweep_row(category: str, source: str, by_lambda: dict[str, float]) -> dict[str, Any]:
    """One row of Table 4: AU-PRO per lambda_s, and the lambda_s that scored best."""
    return {"category": category, "source": source, **by_lambda, "best λ_s": max(by_lambda, key=by_lambda.get)}


def _short_hw(hw: dict[str, Any]) -> str:
    t = hw.get("threads", "?")
    cores = f"{hw.get('cpu_count')} CPU cores, {t} thread{'' if t == 1 else 's'}"
    return hw.get("gpu") or (f"{hw['cpu_model']} ({cores})" if hw.get("cpu_model") else cores)


def provenance_html(rows: Iterable[dict[str, Any]], results_root: str | Path | None = None,
                    title: str = "Provenance of these rows") -> str:
    """A collapsed ``<details>`` block with one line per results file: its folder relative to the
    results root, preset, teacher, commit, date and hardware (never an absolute path)."""
    items = []
    for r in rows:
        folder = r.get("_folder", "")
        if results_root is not None and folder:
            try:
                folder = Path(folder).relative_to(results_root).as_posix()
            except ValueError:
                folder = Path(folder).name
        items.append(
            f"<li><code>{html.escape(str(folder))}</code>: preset <code>{html.escape(str(r.get('preset')))}</code>, "
            f"teacher {html.escape(str(r.get('teacher')))}, commit <code>{html.escape(str(r.get('git_commit', ''))[:12])}</code>, "
            f"{html.escape(str(r.get('date', '')))}, {html.escape(_short_hw(r.get('hardware') or {}))}</li>")
    return (f"<details><summary>{html.escape(title)} ({len(items)} results files)</summary>"
            f"<ul style=\"font-size:0.85em\">{''.join(items)}</ul></details>")


def seed_repeats(val: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``{repeat: base}`` for every variant that differs from another only in its ``seed``: the same
    settings fitted again with other random numbers.  The base is the variant of the lowest seed.
    Repeats measure noise, not a lever, so the lever tables leave them out and
    :func:`validation_seeds` shows them.  A field of :data:`~glance_lite.common.presets.LATER_FIELDS` at its
    old value counts as absent, so a file written before that field existed still groups with a newer one,
    and so does a field of :data:`~glance_lite.common.presets.REMOVED_FIELDS` at its former default.
    Only another seed makes a repeat: a variant with the same settings and seed as the base (the same fits
    under another name) stays a variant of its own."""
    def key(v: dict[str, Any]) -> str:
        absent = {**LATER_FIELDS, **REMOVED_FIELDS}
        return repr((sorted((k, repr(x)) for k, x in v["preset_fields"].items() if k not in ("seed", "name")
                            and not (k in absent and x == absent[k])),
                     local_net_id(v)))

    groups: dict[str, list[str]] = {}
    for name, v in val.items():
        groups.setdefault(key(v), []).append(name)
    out = {}
    for names in groups.values():
        names.sort(key=lambda n: (int(val[n]["preset_fields"].get("seed", 0)), n))
        seen = {int(val[names[0]]["preset_fields"].get("seed", 0))}
        for n in names[1:]:  # the same settings *and* seed (a re-run under another name) is no repeat
            seed = int(val[n]["preset_fields"].get("seed", 0))
            if seed not in seen:
                out[n] = names[0]
                seen.add(seed)
    return out


def _ok_rows(v: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a validation file that finished, with an AU-PRO
    (:func:`glance_lite.experiments.validation.finished_rows`)."""
    return finished_rows(v["rows"])


def _seed_names(val: dict[str, dict[str, Any]], base: str) -> list[str]:
    """``base`` and its seed repeats (:func:`seed_repeats`), in the order of their seeds."""
    rep = seed_repeats(val)
    return [base] + sorted((n for n, b in rep.items() if b == base),
                           key=lambda n: int(val[n]["preset_fields"].get("seed", 0)))


def _fair_row(r: dict[str, Any]) -> bool:
    """Whether a validation row holds the fair local-only controls (``controls_version`` 2)."""
    return r.get("controls_version") == CONTROLS_VERSION


def _row_ts(r: dict[str, Any]) -> float | None:
    """A validation row's TS AU-PRO when it is fair: a row of the current controls version whose TS
    (its own or borrowed) was trained to convergence (:func:`converged_ts`); else None."""
    if not _fair_row(r) or converged_ts(r.get("ts")) is None:
        return None
    return r.get("ts_AU-PRO")


def _row_knn(r: dict[str, Any]) -> float | None:
    """A validation row's nearest-neighbour AU-PRO (rows of the current controls version only)."""
    return r.get("knn_AU-PRO") if _fair_row(r) else None


def _row_local(r: dict[str, Any], val: dict[str, dict[str, Any]] | None = None) -> float | None:
    """The strongest fair local-only control of a validation row (AU-PRO): the best of its converged TS and
    its nearest neighbours, i.e. its ``local_AU-PRO``.  A row that borrowed TS from a variant with the same
    Local-Net (``ts_from``, :func:`glance_lite.experiments.validation.borrow_ts`) takes that variant's
    strongest control on the same source when it is stronger, nearest neighbours included."""
    vals = [v for v in (_row_ts(r), _row_knn(r)) if v is not None]
    lender = r.get("ts_from")
    if _fair_row(r) and val and lender in val:
        twin = next((t for t in _ok_rows(val[lender]) if t.get("source") == r.get("source")), None)
        if twin is not None and twin.get("ts_from") is None:
            vals += [v for v in (_row_ts(twin), _row_knn(twin)) if v is not None]
    return max(vals) if vals else None


def _mean(xs: Iterable[float | None]) -> float | None:
    v = [float(x) for x in xs if x is not None]
    return float(np.mean(v)) if v else None


def validation_seeds(val: dict[str, dict[str, Any]], base: str, complete: bool = False) -> Any:
    """AU-PRO of glance-lite and of the strongest fair local-only control (:func:`_row_local`) per
    validation source (rows) for ``base`` and each of its seed repeats (:func:`seed_repeats`), then, over
    the seeds a source has: the mean of glance-lite, and over the seeds with a fair control the mean of
    that control, the mean and the worst (lowest) of glance − local, and on how many seeds glance-lite is at
    least the control.  Rows written before the fair controls (no ``controls_version`` 2) show glance-lite
    only.  A last row averages the sources that every seed finished, seed by seed (how far a variant's
    *mean* moves between seeds).  With ``complete``, only the repeats that finished every source ``base``
    finished are shown (a repeat run on a few sources only goes to :func:`seed_intervals`).  Empty when
    ``base`` has no repeat."""
    pd = _pd()
    G, L = "glance", "strongest local"
    names = _seed_names(val, base)
    if complete and base in val:
        need = {r["source"] for r in _ok_rows(val[base])}
        names = [n for n in names if need <= {r["source"] for r in _ok_rows(val[n])}]
    if len(names) < 2:
        return pd.DataFrame()
    table: dict[str, dict[Any, Any]] = {}
    seeds: list[str] = []
    for name in names:
        seed = f"seed {int(val[name]['preset_fields'].get('seed', 0))}"
        seeds.append(seed)
        for r in _ok_rows(val[name]):
            d = table.setdefault(r["source"], {})
            d[(seed, G)] = r["AU-PRO"]
            loc = _row_local(r, val)
            if loc is not None:
                d[(seed, L)] = loc

    def over(d: dict[Any, Any], out: dict[Any, Any]) -> None:
        have = [s for s in seeds if d.get((s, G)) is not None]
        pairs = [(d[(s, G)], d[(s, L)]) for s in have if d.get((s, L)) is not None]
        out[("over seeds", G)] = _mean(d[(s, G)] for s in have)
        if pairs:
            diffs = [g - t for g, t in pairs]
            out[("over seeds", L)] = _mean(t for _, t in pairs)
            out[("over seeds", "glance − local")] = float(np.mean(diffs))
            out[("over seeds", "worst")] = min(diffs)
            out[("over seeds", "glance ≥ local")] = f"{sum(x >= 0 for x in diffs)} / {len(diffs)}"

    for d in table.values():
        over(d, d)
    df = pd.DataFrame.from_dict(table, orient="index")
    full = df.dropna(subset=[(s, G) for s in seeds if (s, G) in df.columns])  # sources every seed finished
    if len(full) > 1:  # the mean over those sources, per seed and over seeds
        m: dict[Any, Any] = {(s, G): float(full[(s, G)].mean()) for s in seeds}
        for s in seeds:
            if (s, L) in full.columns and full[(s, L)].notna().all():
                m[(s, L)] = float(full[(s, L)].mean())
        over(m, m)
        df.loc[f"mean ({len(full)} sources)"] = pd.Series(m)
    cols = [(s, k) for s in seeds for k in (G, L) if (s, k) in df.columns]
    cols += [c for c in df.columns if c[0] == "over seeds"]
    df = df[cols]
    df.columns = pd.MultiIndex.from_tuples(df.columns)
    return df


def seed_intervals(val: dict[str, dict[str, Any]], base: str, level: float = 0.95) -> Any:
    """Glance − local per validation source over *every* seed that source has with the fair local-only
    controls (``base`` and all its repeats, complete or not; rows of ``controls_version`` 2): the number of
    seeds, the mean AU-PRO of glance-lite, of TS trained by the held-out stop rule, of nearest neighbours and of the
    strongest of them per seed (:func:`_row_local`), the mean difference glance − local, its standard
    deviation over the seeds, a Student-t interval for the mean difference at ``level`` (``low`` to
    ``high``; none from a single seed), the worst seed's difference, on how many seeds glance-lite is at
    least the strongest control, and the mean AU-PRO of each head of Eq. 13 alone (``IAD alone``, ``DAD
    alone``), which says which head carries or holds back a source.  An interval that holds 0 is a tie the
    seeds cannot break; one above 0, a margin.  The seeds are treated as independent draws of the whole fit
    (fine-tuning, joint stage and controls).
    Empty when ``base`` has no repeat, or no seed has fair controls."""
    from scipy import stats

    pd = _pd()
    names = _seed_names(val, base)
    if len(names) < 2:
        return pd.DataFrame()
    per: dict[str, list[tuple[dict[str, Any], float]]] = {}
    for name in names:
        for r in _ok_rows(val[name]):
            loc = _row_local(r, val)
            if loc is not None:
                per.setdefault(r["source"], []).append((r, loc))
    out: dict[str, dict[str, Any]] = {}
    for src, pairs in per.items():
        rows = [r for r, _ in pairs]
        g = np.array([float(r["AU-PRO"]) for r in rows])
        t = np.array([loc for _, loc in pairs])
        d = g - t
        n = len(d)
        sd = float(d.std(ddof=1)) if n > 1 else None
        half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n)) if sd is not None else None
        out[src] = {"seeds": n, "glance": float(g.mean()), "TS (stop rule)": _mean(_row_ts(r) for r in rows),
                    "nearest neighbours": _mean(_row_knn(r) for r in rows), "strongest local": float(t.mean()),
                    "glance − local": float(d.mean()), "sd": sd,
                    "low": None if half is None else float(d.mean()) - half,
                    "high": None if half is None else float(d.mean()) + half,
                    "worst": float(d.min()), "glance ≥ local": f"{int((d >= 0).sum())} / {n}"}
        for head in ("iad", "dad"):  # each head of Eq. 13 alone, over the seeds that report it
            x = [float(r[f"{head}_only_AU-PRO"]) for r in rows if r.get(f"{head}_only_AU-PRO") is not None]
            out[src][f"{head.upper()} alone"] = float(np.mean(x)) if x else None
    return pd.DataFrame.from_dict(out, orient="index")


def context_table(ctx: Sequence[dict[str, Any]], intervals: Any = None) -> Any:
    """One row per validation source from the rows of ``python -m glance_lite.experiments.context_check``
    (averaged over the fits a source has there): how much of Z_l the context predicts (``R² context``),
    how much the place alone does (``R² position``) and the difference (``beyond place``); then, from
    :func:`seed_intervals` when given, glance − local and IAD alone − local (the strongest fair local-only
    control) over every seed of the source.  Sorted by ``R² context``."""
    pd = _pd()
    by: dict[str, list[dict[str, Any]]] = {}
    for r in ctx:
        by.setdefault(r["source"], []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for src, rows in by.items():
        rc = float(np.mean([r["r2_context"] for r in rows]))
        rp = float(np.mean([r["r2_position"] for r in rows]))
        d: dict[str, Any] = {"fits": len(rows), "R² context": rc, "R² position": rp, "beyond place": rc - rp}
        if intervals is not None and len(intervals) and src in intervals.index:
            iv = intervals.loc[src]
            d["glance − local"] = iv["glance − local"]
            d["IAD alone − local"] = _minus(iv.get("IAD alone"), iv["strongest local"])
        out[src] = d
    df = pd.DataFrame.from_dict(out, orient="index")
    return df.sort_values("R² context") if len(df) else df


def _stride(f: dict[str, Any]) -> str:
    """", stride 2" when a variant scores on another raster stride than the ``cpu`` preset; else ""."""
    st = f.get("score_stride", PRESETS["cpu"].score_stride)
    return "" if st == PRESETS["cpu"].score_stride else f", stride {st}"


def _finetune(f: dict[str, Any]) -> str:
    """", fine-tuned 1200 steps" when a variant fine-tunes its Local-Net longer or shorter than ``cpu``; else ""."""
    n = f.get("finetune_steps", PRESETS["cpu"].finetune_steps)
    return "" if n == PRESETS["cpu"].finetune_steps else f", fine-tuned {n} steps"


def _removed(f: dict[str, Any]) -> str:
    """", global_readout = hole" for each setting a variant used that has since left the package
    (:func:`glance_lite.common.presets.removed_settings`); else ""."""
    return "".join(f", {k} = {v}" for k, v in removed_settings(f).items())


def _stains(f: dict[str, Any]) -> str:
    """", stains ≥ 0.03 p" when a variant's DAD stains can be smaller than the default (preset field
    ``stain_min_axis``); else ""."""
    lo, default = f.get("stain_min_axis", LATER_FIELDS["stain_min_axis"]), LATER_FIELDS["stain_min_axis"]
    return "" if lo == default else f", stains ≥ {lo:g} p"


def _controls_means(v: dict[str, Any], val: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The fair local-only controls of a validation result, over its finished rows that have them."""
    ok = _ok_rows(v)
    diffs = [_minus(r["AU-PRO"], _row_local(r, val)) for r in ok]
    diffs = [d for d in diffs if d is not None]
    return {"TS (stop rule)": _mean(_row_ts(r) for r in ok), "nearest neighbours": _mean(_row_knn(r) for r in ok),
            "strongest local": _mean(_row_local(r, val) for r in ok),
            "glance − local": float(np.mean(diffs)) if diffs else None,
            "worst glance − local": min(diffs) if diffs else None, "sources with controls": len(diffs)}


def validation_levers(val: dict[str, dict[str, Any]]) -> Any:
    """One row per validated preset variant: what it changes, its mean AU-PRO over its sources, and the
    fair local-only controls over the sources that have them (rows of ``controls_version`` 2): the mean of
    TS trained by the held-out stop rule, of nearest neighbours and of the strongest of them per source, the mean and
    the worst of glance − local, and on how many sources that was measured.  Rows written before the fair
    controls show no control.  Seed repeats (:func:`seed_repeats`) are left out: :func:`validation_seeds`
    shows them."""
    from ..models.shipped import WEIGHTS_DIR, shipped_entries

    pd = _pd()
    out = []
    repeats = seed_repeats(val)
    shipped_ids = {e["sha256"] for e in shipped_entries(WEIGHTS_DIR)} | set(LEGACY_LOCAL_NETS.values())
    for name, v in sorted(val.items(), key=lambda kv: kv[1]["date"]):
        if name in repeats:
            continue
        m, f = v["mean"], v["preset_fields"]
        patch = (f["patch_size"] if not f.get("extra_patch_sizes") else
                 "+".join(str(x) for x in [f["patch_size"], *f["extra_patch_sizes"]]))
        lent = ts_lenders(v)
        if lent:  # validated without TS: TS of the variant with the same Local-Net (validation.borrow_ts)
            name = f"{name} (TS of {', '.join(lent)})"
        ln = local_net_id(v)
        weights = f" ({ln[:8]})" if ln and f.get("pretrained") == "shipped" and ln != "mixed" else ""
        kind = f.get("pretrained")
        if weights and ln not in shipped_ids:  # fitted from weights that were never shipped (GLANCE_WEIGHTS)
            kind = "candidate"
        out.append({"variant": name, "image, Local-Net": f"{f['image_size']} px, {kind} p{patch}{weights}{_finetune(f)}",
                    "joint stage": f"{f['global_steps']} steps{_stains(f)}{_removed(f)}",
                    "IAD, λ_s": f"{'whitened' if f.get('iad_metric') == 'mahalanobis' else 'Eq. 11'}, {f.get('lambda_s'):g}"
                                f"{_stride(f)}",
                    "sources": m["n_sources"], "AU-PRO": m["AU-PRO"], **_controls_means(v, val),
                    "IAD alone": m.get("iad_only_AU-PRO"), "DAD alone": m.get("dad_only_AU-PRO")})
    if not out:
        return pd.DataFrame(out)
    return _floats(pd.DataFrame(out).set_index("variant"),
                   ("AU-PRO", "TS (stop rule)", "nearest neighbours", "strongest local", "glance − local",
                    "worst glance − local", "IAD alone", "DAD alone"))


def validation_sources(val: dict[str, dict[str, Any]], variants: Sequence[str] | None = None) -> Any:
    """AU-PRO per validation source (rows) and variant (columns): glance-lite, and from rows with the fair
    local-only controls (``controls_version`` 2) the strongest of them (:func:`_row_local`) and glance −
    local.  A variant's ``strongest local`` column is shown only when no variant shown before it fitted the
    same Local-Net (the controls depend on the Local-Net alone,
    :func:`glance_lite.experiments.validation.same_weights`) and its TS was not borrowed
    (:func:`glance_lite.experiments.validation.borrow_ts`); its ``glance − local`` column whenever it has
    one.  Rows written before the fair controls show glance-lite only."""
    pd = _pd()
    repeats = seed_repeats(val)
    names = list(variants) if variants else [k for k, _ in sorted(val.items(), key=lambda kv: kv[1]["date"])
                                             if k not in repeats]
    table: dict[str, dict[str, Any]] = {}
    shown_local: list[str] = []
    for name in names:
        local = {r["source"]: _row_local(r, val) for r in _ok_rows(val[name])}
        borrowed = bool(ts_lenders(val[name]))
        twin = any(same_weights(val[o], val[name]) for o in shown_local)
        with_local = not borrowed and not twin and any(x is not None for x in local.values())
        if with_local:
            shown_local.append(name)
        with_diff = any(x is not None for x in local.values())
        for r in val[name]["rows"]:
            d = table.setdefault(r["source"], {})
            d[(name, "glance")] = r.get("AU-PRO")
            if with_local:
                d[(name, "strongest local")] = local.get(r["source"])
            if with_diff:
                d[(name, "glance − local")] = _minus(r.get("AU-PRO"), local.get(r["source"]))
    df = pd.DataFrame.from_dict(table, orient="index")
    if len(df):
        df.columns = pd.MultiIndex.from_tuples(df.columns)
        df.loc["mean"] = [float(np.nanmean(pd.to_numeric(df[c], errors="coerce"))) for c in df.columns]
    return df


def validation_lambda(val: dict[str, dict[str, Any]]) -> Any:
    """Mean validation AU-PRO of each variant at each lambda_s of the sweep (Eq. 13's mix of the two
    heads under the variant's headline normalisation), the variant's own lambda_s marked in the index."""
    pd = _pd()
    out = {}
    repeats = seed_repeats(val)
    for name, v in sorted(val.items(), key=lambda kv: kv[1]["date"]):
        if name in repeats:
            continue
        sw = v["mean"].get("lambda_sweep")
        if sw:
            out[f"{name} (λ_s = {v['preset_fields']['lambda_s']:g})"] = sw
    return pd.DataFrame.from_dict(out, orient="index")


TEACHER_FEATURES = {"efficientnet_lite0": "final, 1280-d", "efficientnet_lite0_mid": "mid-level, 152-d",
                    "resnet18": "final, 512-d", "resnet18_mid": "mid-level, 384-d"}
"""How :func:`local_nets_against_validation` names each teacher's feature (l_k is measured against it)."""


def local_nets_against_validation(nets: Sequence[dict[str, Any]], val: dict[str, dict[str, Any]]) -> Any:
    """One row per Local-Net provenance file (the shipped ones and candidates, e.g.
    ``results/local_nets/*.json``): its corpus, steps and held-out / training l_k (Eq. 1), beside the
    validation of the ``cpu`` settings fitted from it -- the variant whose fields are the ``cpu``
    preset's apart from its name, seed 0 and (for a Local-Net distilled from another teacher feature,
    e.g. ``efficientnet_lite0_mid``) the ``teacher`` field that names it, and whose rows started from these weights
    (:func:`glance_lite.experiments.validation.local_net_id`).  Mean AU-PRO of glance-lite over the
    sources, the mean of the strongest fair local-only control over the sources that have one
    (rows of ``controls_version`` 2, :func:`_row_local`; empty for older files), and the source where
    glance-lite lost most against the shipped Local-Net's variant.  Held-out l_k is a proxy; this table
    shows how far it predicts what the anomaly maps do."""
    from ..common.presets import Preset

    pd = _pd()
    base = {k: v for k, v in PRESETS["cpu"].to_dict().items() if k not in ("name", "seed", "teacher")}

    def variant_of(sha: str, teacher: str) -> tuple[str | None, dict[str, Any] | None]:
        for name, v in sorted(val.items()):
            if removed_settings(v.get("preset_fields", {})):  # a setting that has left the package: not cpu's
                continue
            # a field added after a file was written is read with its default, which is how that file ran
            f = {k: x for k, x in Preset.from_dict(v.get("preset_fields", {})).to_dict().items()
                 if k not in ("name", "seed")}
            t = f.pop("teacher")
            if (f == base and t in ("auto", teacher) and int(v["preset_fields"].get("seed", 0)) == 0
                    and local_net_id(v) == sha):
                return name, v
        return None, None

    rows, per_source = [], {}
    for e in nets:
        name, v = variant_of(e["sha256"], str(e.get("teacher", "")))
        if v is not None:
            per_source[e["sha256"]] = {r["source"]: r["AU-PRO"] for r in _ok_rows(v)}
        extra = (e.get("corpus") or {}).get("extra")
        rows.append({
            "Local-Net": f"{e['sha256'][:8]} ({'shipped' if e.get('_shipped') else 'candidate'})",
            "photographs (train / held out)": f"{len(e['corpus']['train_photos'])} / {len(e['corpus']['heldout_photos'])}"
                                              + (f" (+{extra['n_photos']} from {extra['folder']})" if extra else ""),
            "teacher feature": TEACHER_FEATURES.get(str(e.get("teacher")), str(e.get("teacher"))),
            "steps": e.get("total_steps", e.get("steps")),
            "training l_k": e["final"]["train_distillation"], "held-out l_k": e["heldout"]["distillation"],
            "validated as": name or "–", "sources": len(v["rows"]) if v else None,
            "AU-PRO": v["mean"]["AU-PRO"] if v else None,
            "strongest local": _mean(_row_local(r, val) for r in _ok_rows(v)) if v else None,
            "_sha": e["sha256"]})
    ref = next((per_source.get(e["sha256"]) for e in nets if e.get("_shipped")), None)
    for r in rows:
        mine = per_source.get(r["_sha"])
        if ref and mine and mine is not ref:
            src, d = min(((s, mine[s] - ref[s]) for s in mine if s in ref and mine[s] is not None and ref[s] is not None),
                         key=lambda x: x[1], default=(None, None))
            r["largest loss vs shipped"] = f"{src}: {d:+.3f}" if src else "–"
        else:
            r["largest loss vs shipped"] = "–"
        del r["_sha"]
    df = pd.DataFrame(rows)
    if rows:
        df["sources"] = df["sources"].astype("Int64")  # a count, "–" where a net has no validation
        df = df.set_index("Local-Net")
    return df
