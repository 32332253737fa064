"""Benchmark of the fast score maps against the plain per-patch loop (Sec. 3.3).

``python -m glance_lite.experiments.bench [--presets smoke,cpu,paper] [--images N] [--loop-patches K] [--json PATH]``

For each preset it builds a *random-weight* :class:`~glance_lite.models.model.GlanceModel` and random
images of the preset's size -- the work done by the networks does not depend on the weights or the
pixels, so neither does the speed -- and measures, per image:

* **fast**: :func:`glance_lite.score.scoring.anomaly_maps` (Local-Net slid over the image, exact
  incremental Global-Net, IDW), steady state: one warm-up image first builds the geometry caches
  (its one-off cost is reported separately as ``setup``);
* **loop**: :func:`glance_lite.score.scoring.anomaly_maps_loop` (one Local-Net forward per cropped patch,
  one Global-Net forward per masked image, in a Python loop), after two warm-up patches.  With ``--loop-patches K`` (used for
  the paper preset by default) only the first K patches of each image are scored and the time is
  extrapolated to the whole grid (the output says so);
* wall-clock and process CPU seconds per image, and their ratios (loop / fast);
* peak memory: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of a *fresh* worker process, minus its
  value after the model and images are built (so each method's peak is measured on its own);
* whether the outputs agree: the largest absolute difference of the maps (smoke, cpu) or of the
  patch scores that the loop computed (extrapolated runs).

Each (preset, method) runs in its own subprocess, with one torch thread unless ``--threads`` says
otherwise: many small batch-1 operations (the loop) suffer far more than a few large ones when
threads wait for each other on a busy machine, so a single thread gives the fairer and steadier
comparison.  Wall times on a shared machine are noisy; CPU seconds are steadier.  This is a
benchmark, not a test.

Defined in :doc:`/notebooks/04_score_maps`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["run_benchmark", "main"]

_DEFAULT_LOOP_PATCHES = {"smoke": None, "cpu": None, "paper": 48}


def _maxrss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20  # Linux: KiB, macOS: bytes


def _worker(preset_name: str, method: str, n_images: int, loop_patches: int | None, out: str, seed: int,
            threads: int = 1) -> None:
    """One measurement in this (fresh) process; results saved with torch.save to ``out``."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)

    from ..common.fileio import save_torch
    from ..models.model import GlanceModel
    from ..common.presets import get_preset
    from ..score import idw, scoring

    preset = get_preset(preset_name)
    torch.manual_seed(seed)
    from ..common.devices import device_from_env

    model = GlanceModel(preset).eval().to(device_from_env())  # --device (GLANCE_DEVICE) of the parent
    gen = torch.Generator().manual_seed(seed + 1)
    s = preset.image_size
    images = torch.rand(n_images + 1, 3, s, s, generator=gen)  # image 0: warm-up (fast only)
    base = _maxrss_mb()
    res: dict[str, Any] = {"threads": torch.get_num_threads()}
    if method == "fast":
        idw.clear_idw_cache()
        t0, c0 = time.perf_counter(), time.process_time()
        scoring.anomaly_maps(model, images[:1])  # warm-up: builds the IDW and Global-Net geometry caches
        first_wall, first_cpu = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        sc = scoring.score_patches(model, images[1:])
        s_comb = preset.lambda_s * sc["s_iad"] + (1 - preset.lambda_s) * sc["s_dad"]
        maps = idw.idw_interpolate(s_comb, *scoring.patch_centres(sc["tops"], sc["lefts"], preset.patch_size),
                                   s, s, preset.idw_power, preset.idw_neighbours)
        res["wall"] = (time.perf_counter() - t0) / n_images
        res["cpu"] = (time.process_time() - c0) / n_images
        # the timed path equals the public anomaly_maps
        res["api_diff"] = float((scoring.anomaly_maps(model, images[1:2]) - maps[:1]).abs().max())
        res["setup_wall"] = max(0.0, first_wall - res["wall"])
        res["setup_cpu"] = max(0.0, first_cpu - res["cpu"])
        res.update(s_iad=sc["s_iad"], s_dad=sc["s_dad"], maps=maps, n_patches=int(sc["s_iad"][0].numel()))
    else:
        tops, lefts = scoring.patch_grid(s, s, preset.patch_size, preset.score_stride)
        n_patches = len(tops) * len(lefts)
        scoring.score_patches_loop(model, images[:1], max_patches=2)  # warm-up: first calls set up kernels
        t0, c0 = time.perf_counter(), time.process_time()
        sc = scoring.score_patches_loop(model, images[1:], max_patches=loop_patches)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        done = sc["n_done"]
        res["extrapolated_from"] = done if done < n_patches else None
        scale = n_patches / done
        t1, c1 = time.perf_counter(), time.process_time()
        if done == n_patches:
            s_comb = preset.lambda_s * sc["s_iad"] + (1 - preset.lambda_s) * sc["s_dad"]
            maps = idw.idw_interpolate(s_comb, *scoring.patch_centres(tops, lefts, preset.patch_size),
                                       s, s, preset.idw_power, preset.idw_neighbours)
        else:  # time the (score-independent) IDW step on dummy scores
            maps = None
            idw.idw_interpolate(torch.zeros(n_images, len(tops), len(lefts)),
                                *scoring.patch_centres(tops, lefts, preset.patch_size),
                                s, s, preset.idw_power, preset.idw_neighbours)
        idw_wall, idw_cpu = time.perf_counter() - t1, time.process_time() - c1
        res["wall"] = (wall * scale + idw_wall) / n_images
        res["cpu"] = (cpu * scale + idw_cpu) / n_images
        res.update(s_iad=sc["s_iad"], s_dad=sc["s_dad"], maps=maps, n_patches=n_patches)
    peak = _maxrss_mb()
    res["peak_mb"] = None if base is None or peak is None else peak - base
    save_torch(out, res)


def _run_worker(preset: str, method: str, n_images: int, loop_patches: int | None, seed: int,
                threads: int) -> dict[str, Any]:
    from ..common.fileio import GlanceError, load_torch

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "res.pt")
        cmd = [sys.executable, "-m", "glance_lite.experiments.bench", "--_worker", preset, method, str(n_images),
               str(loop_patches or 0), out, str(seed), str(threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise GlanceError(f"benchmark worker {preset}/{method} failed:\n{proc.stderr[-4000:]}")
        return load_torch(out)


def run_benchmark(presets: list[str], n_images: int = 1, loop_patches: int | None = -1, seed: int = 0,
                  threads: int = 1, verbose: bool = True) -> list[dict[str, Any]]:
    """Measure every preset; ``loop_patches=-1`` uses the defaults (all patches, 48 for paper);
    ``threads``: torch threads in the workers (0 = torch's default)."""
    from ..common.presets import get_preset
    from ..score.scoring import patch_grid

    rows = []
    for name in presets:
        p = get_preset(name)
        lp = _DEFAULT_LOOP_PATCHES.get(name) if loop_patches == -1 else loop_patches
        if verbose:
            print(f"[bench] {name}: fast ...", file=sys.stderr, flush=True)
        fast = _run_worker(name, "fast", n_images, None, seed, threads)
        if verbose:
            print(f"[bench] {name}: loop ...", file=sys.stderr, flush=True)
        loop = _run_worker(name, "loop", n_images, lp, seed, threads)
        tops, lefts = patch_grid(p.image_size, p.image_size, p.patch_size, p.score_stride)
        done = ~loop["s_iad"].isnan()
        s_f = p.lambda_s * fast["s_iad"] + (1 - p.lambda_s) * fast["s_dad"]
        s_l = p.lambda_s * loop["s_iad"] + (1 - p.lambda_s) * loop["s_dad"]
        score_diff = float((s_f[done] - s_l[done]).abs().max())
        map_diff = None if loop["maps"] is None else float((fast["maps"] - loop["maps"]).abs().max())
        rows.append(
            {
                "preset": name,
                "image": p.image_size,
                "patch": p.patch_size,
                "stride": p.score_stride,
                "grid": f"{len(tops)}x{len(lefts)}",
                "patches_per_image": len(tops) * len(lefts),
                "images": n_images,
                "fast_s_per_image": fast["wall"],
                "loop_s_per_image": loop["wall"],
                "ratio_wall": loop["wall"] / fast["wall"],
                "fast_cpu_s_per_image": fast["cpu"],
                "loop_cpu_s_per_image": loop["cpu"],
                "ratio_cpu": loop["cpu"] / fast["cpu"],
                "fast_setup_s": fast["setup_wall"],
                "fast_peak_mb": fast["peak_mb"],
                "loop_peak_mb": loop["peak_mb"],
                "max_abs_diff_scores": score_diff,
                "max_abs_diff_maps": map_diff,
                "fast_vs_api_diff": fast["api_diff"],
                "loop_extrapolated_from_patches": loop["extrapolated_from"],
                "threads": fast["threads"],
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The benchmark as a plain-text table, with footnotes."""
    head = ["preset", "image/patch/stride", "patches", "fast s/img", "loop s/img", "ratio(wall)",
            "ratio(cpu)", "fast peak MB", "loop peak MB", "max|diff|"]
    lines = []
    for r in rows:
        diff = r["max_abs_diff_maps"] if r["max_abs_diff_maps"] is not None else r["max_abs_diff_scores"]
        loop = f"{r['loop_s_per_image']:.2f}" + ("*" if r["loop_extrapolated_from_patches"] else "")
        mb = lambda v: "n/a" if v is None else f"{v:.0f}"  # noqa: E731
        lines.append([
            r["preset"], f"{r['image']}/{r['patch']}/{r['stride']}", str(r["patches_per_image"]),
            f"{r['fast_s_per_image']:.3f}", loop, f"{r['ratio_wall']:.1f}x", f"{r['ratio_cpu']:.1f}x",
            mb(r["fast_peak_mb"]), mb(r["loop_peak_mb"]), f"{diff:.1e}" + ("" if r["max_abs_diff_maps"] is not None else " (scores)"),
        ])
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines]
    notes = ["random-weight models and random images (speed does not depend on training or content);",
             "s/img: wall-clock seconds per image, steady state (fast: geometry caches built on a warm-up image,"
             " one-off setup " + ", ".join(f"{r['preset']} {r['fast_setup_s']:.2f}s" for r in rows) + ");",
             "peak MB: ru_maxrss of a fresh worker process above its value after building model and images;",
             "max|diff|: largest |fast - loop| of the maps (or of the loop's patch scores where marked);",
             f"torch threads: {rows[0]['threads'] if rows else '?'}."]
    for r in rows:
        if r["loop_extrapolated_from_patches"]:
            notes.append(f"* {r['preset']}: loop timed on the first {r['loop_extrapolated_from_patches']} of "
                         f"{r['patches_per_image']} patches per image and extrapolated to the full grid.")
    return "\n".join(out + [""] + notes)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--_worker":
        _, preset, method, n, lp, out, seed, threads = argv
        _worker(preset, method, int(n), int(lp) or None, out, int(seed), int(threads))
        return 0
    ap = argparse.ArgumentParser(prog="python -m glance_lite.experiments.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="smoke,cpu,paper", help="comma-separated presets (default: smoke,cpu,paper)")
    ap.add_argument("--images", type=int, default=1, help="timed images per preset (default 1)")
    ap.add_argument("--loop-patches", type=int, default=-1,
                    help="score only this many patches per image in the loop and extrapolate "
                         "(default: all for smoke/cpu, 48 for paper; 0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per measurement (default 1: a per-core comparison, and far steadier "
                         "timings on a shared machine; 0 = torch's default)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    ap.add_argument("--device", default=None, help="where the models run: auto, cpu, cuda or cuda:N")
    a = ap.parse_args(argv)
    if a.device:
        from ..common.devices import resolve_device

        os.environ["GLANCE_DEVICE"] = str(resolve_device(a.device))  # the workers inherit it
    from ..common.presets import describe, get_preset, hardware_info

    names = [s.strip() for s in a.presets.split(",") if s.strip()]
    for n in names:
        try:
            get_preset(n)
        except ValueError as e:
            ap.error(str(e))
    if a.images < 1:
        ap.error("--images must be >= 1")
    lp = a.loop_patches if a.loop_patches != 0 else None
    print(describe(get_preset(names[0])))
    rows = run_benchmark(names, a.images, lp, a.seed, a.threads)
    print(format_table(rows))
    if a.json:
        from ..common.fileio import atomic_write_json

        atomic_write_json(a.json, {"rows": rows, "hardware": hardware_info(),
                                   "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "table": format_table(rows)})
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
