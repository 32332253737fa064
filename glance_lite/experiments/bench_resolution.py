"""What 256-pixel images would cost the ``cpu`` preset: one run, two resolutions, their ratios.

``python -m glance_lite.experiments.bench_resolution [--sizes 128,256] [--steps 6] [--images 2] [--threads N]``

The paper works at 256 px; the ``cpu`` preset at 128 px.  The stages whose cost grows with the image
are the joint Global-Net + DAD stage (one Global-Net pass per masked copy), the Local-Net grid cache,
and scoring (a grid of patches per test image, for glance-lite and for TS).  Fine-tuning and the TS
students train on patches, whose cost does not depend on the image size.  For each size this script
builds a random-weight model of the ``cpu`` preset at that size (speed does not depend on the
weights), and measures, in the same process:

* the Local-Net grid cache, seconds per training image;
* the joint stage, seconds per optimiser step (``preset.batch_size`` masked copies);
* scoring, seconds per test image (every grid patch, both heads, exact incremental Global-Net);

then prints the ratios to the first size and the time these three stages would take for one
category with ``--train``/``--test`` images at the preset's ``global_steps``.  This is a benchmark,
not a test; on a shared machine the ratios are steadier than the seconds.

Defined in :doc:`/book/cli`.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

__all__ = ["measure", "main"]


def measure(size: int, steps: int = 6, n_images: int = 2, n_cache: int = 8) -> dict[str, float]:
    """Seconds per unit of each size-dependent stage at ``size`` pixels (``cpu`` preset otherwise)."""
    from ..models.model import GlanceModel
    from ..common.presets import get_preset
    from ..score.scoring import normalised_head_maps
    from ..train.training import grid_local_cache, train_global

    p = get_preset("cpu").replace(image_size=int(size), global_steps=int(steps), checkpoint_every=10 ** 6)
    torch.manual_seed(0)
    model = GlanceModel(p)
    imgs = torch.rand(max(n_cache, n_images), 3, size, size, generator=torch.Generator().manual_seed(1))
    t0 = time.perf_counter()
    cache = grid_local_cache(model, imgs[:n_cache], progress=False)
    t_cache = (time.perf_counter() - t0) / n_cache
    with tempfile.TemporaryDirectory() as d:
        hist = train_global(model, imgs[:n_cache], d, progress=False, local_cache=cache)
    normalised_head_maps(model, imgs[:1], None, ("none",))  # warm the geometry caches
    t0 = time.perf_counter()
    normalised_head_maps(model, imgs[:n_images], None, ("none",))
    t_score = (time.perf_counter() - t0) / n_images
    return {"size": int(size), "cache_s_per_image": t_cache, "global_s_per_step": hist.seconds / steps,
            "score_s_per_image": t_score}


def main(argv: list[str] | None = None) -> int:
    from ..common.presets import get_preset, hardware_info

    ap = argparse.ArgumentParser(prog="python -m glance_lite.experiments.bench_resolution",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="128,256")
    ap.add_argument("--steps", type=int, default=6, help="joint-stage steps timed per size")
    ap.add_argument("--images", type=int, default=2, help="test images scored per size")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--train", type=int, default=209, help="training images of the category (bottle: 209)")
    ap.add_argument("--test", type=int, default=83, help="test images of the category (bottle: 83)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cpu = get_preset("cpu")
    rows = [measure(int(s), a.steps, a.images) for s in a.sizes.split(",")]
    base = rows[0]
    print(f"cpu preset, {torch.get_num_threads()} torch thread(s), {hardware_info().get('cpu_count')} cores")
    print(f"{'size':>5} {'cache s/img':>12} {'joint s/step':>13} {'score s/img':>12} {'ratios (cache, joint, score)':>30}"
          f" {'est. min/category':>18}")
    for r in rows:
        # glance-lite: grid cache + joint stage + scoring; TS scoring: 4 Local-Net grid passes per test
        # image (3 students and the teacher), each about one grid-cache pass
        est = (r["cache_s_per_image"] * a.train + r["global_s_per_step"] * cpu.global_steps
               + r["score_s_per_image"] * a.test + 4 * r["cache_s_per_image"] * a.test) / 60
        r["estimated_minutes_size_dependent"] = est
        ratios = ", ".join(f"{r[k] / base[k]:.1f}x" for k in ("cache_s_per_image", "global_s_per_step", "score_s_per_image"))
        print(f"{r['size']:>5} {r['cache_s_per_image']:>12.3f} {r['global_s_per_step']:>13.3f} {r['score_s_per_image']:>12.3f}"
              f" {ratios:>30} {est:>18.1f}")
    print("est. = grid cache of the training images + the joint stage at the preset's steps + glance-lite scoring "
          "of every test image + TS scoring (4 Local-Net grid passes per test image); fine-tuning and TS training "
          "do not depend on the size and are not included")
    if a.json:
        from ..common.fileio import atomic_write_json

        atomic_write_json(a.json, {"rows": rows, "hardware": hardware_info(), "threads": torch.get_num_threads()})
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
