"""The ``glance-lite`` command line: data tools, fit, evaluate, predict, reproduce.

Every user-facing error (a missing run, a wrong category, an unreadable image, a broken dataset)
is printed as one line on stderr with a non-zero exit status, never as a traceback.

Defined in :doc:`/book/cli`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from .common.fileio import GlanceError
from .common.presets import TEACHER_NAMES

__all__ = ["main", "build_parser"]


def _device_option(p: argparse.ArgumentParser) -> None:
    from .common.devices import DEVICE_HELP

    p.add_argument("--device", default=None, help=f"where to run: {DEVICE_HELP} (default: $GLANCE_DEVICE or auto)")


def _variant_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=None, metavar="FIELD=VALUE",
                   help="change one preset field (repeatable), e.g. --set global_steps=3000")
    p.add_argument("--name", default=None,
                   help="name of the changed preset (default: <preset>-custom); results and runs go "
                        "under this name, so a variant never overwrites the preset's own files")


def _preset_from_args(args: argparse.Namespace):
    from .common.presets import PRESETS, get_preset, parse_overrides

    try:
        changes = parse_overrides(args.overrides)
    except ValueError as e:
        raise GlanceError(str(e)) from None
    p = get_preset(args.preset)
    if args.name is not None and (not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.name)
                                  or (changes and args.name in PRESETS)):
        raise GlanceError(f"--name {args.name!r}: use letters, digits, '.', '_' or '-', and not the name "
                          f"of a built-in preset ({', '.join(sorted(PRESETS))}) for a changed preset")
    if changes or args.name:
        try:  # a value that makes no sense (global_steps=-5, lr=nan): one line naming the field
            p = p.replace(name=args.name or f"{p.name}-custom", **changes)
        except ValueError as e:
            raise GlanceError(f"--set: {e}") from None
    return p


def _controls(spec: str | None) -> tuple[str, ...] | None:
    from .baselines.controls import CONTROLS

    if spec is None:
        return None
    names = tuple(c.strip() for c in spec.split(",") if c.strip())
    bad = [c for c in names if c not in CONTROLS]
    if bad or not names:
        raise GlanceError(f"--controls {spec!r}: choose among {', '.join(CONTROLS)}")
    return names


def _preset_from_file(path: str):
    from .common.presets import Preset

    try:
        return Preset.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise GlanceError(f"{path}: not a preset JSON file ({e})") from None


class _ranks:
    """``with _ranks(device) as (ctx, dev)``: join torchrun's process group when there is one
    (:func:`glance_lite.common.distributed.init_from_env`), turn a broken group into a one-line error, leave it."""

    def __init__(self, device: str | None) -> None:
        self.device = device

    def __enter__(self):
        from .common.distributed import init_from_env

        self.ctx, dev = init_from_env(self.device)
        return self.ctx, dev

    def __exit__(self, kind, err, tb) -> bool:
        from .common.distributed import DistError, shutdown

        try:
            if self.ctx.active and isinstance(err, RuntimeError) and not isinstance(err, GlanceError):
                line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise DistError(f"rank {self.ctx.rank} of {self.ctx.world}: the process group failed "
                                f"(another rank died or timed out): {line}") from err
        finally:
            if not self.ctx.active or err is None:
                shutdown()
        return False


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="glance-lite", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    info = sub.add_parser("info", help="print the preset and the hardware")
    info.add_argument("--preset", default=None)

    data = sub.add_parser("data", help="dataset tools")
    dsub = data.add_subparsers(dest="data_cmd", required=True)
    ins = dsub.add_parser("inspect", help="check a dataset category and print a JSON summary")
    ins.add_argument("root")
    ins.add_argument("category")
    mk = dsub.add_parser("make-offline", help="generate the offline default dataset")
    mk.add_argument("--out", required=True)
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--size", type=int, default=256)
    dp = dsub.add_parser("debian-photos", help="the 50 photographs of pretrain's --extra-corpus, from Debian packages")
    dp.add_argument("--out", required=True, help="folder to write (e.g. data/corpus/debian)")
    dp.add_argument("--debs", default=None, help="folder already holding the .deb files (default: apt-get download)")
    dl = dsub.add_parser("download", help="download MVTec AD (online users)")
    dl.add_argument("dataset", choices=["mvtec"])
    dl.add_argument("--out", required=True)
    dl.add_argument("--category", action="append", default=None, help="repeatable; default: all")

    pt = sub.add_parser("pretrain", help="the long Local-Net distillation on natural images (shipped weights)")
    pt.add_argument("--out", required=True, help="work folder (resumes if it exists)")
    pt.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "paper"],
                    help="gives the patch size, descriptor dimension and teacher input size")
    pt.add_argument("--teacher", default="auto", choices=["auto", *TEACHER_NAMES])
    pt.add_argument("--patch-size", type=int, default=None, choices=[17, 33, 65],
                    help="patch side of the Local-Net (default: the preset's)")
    pt.add_argument("--corpus", default=None, help="ImageNet-style folder (default: the bundled photographs)")
    pt.add_argument("--extra-corpus", default=None,
                    help="folder of further photographs for the training split only (the held-out photographs "
                         "stay --corpus's, so held-out l_k stays comparable)")
    pt.add_argument("--steps", type=int, default=5_000)
    pt.add_argument("--patches", type=int, default=60_000, help="training patches (teacher features cached)")
    pt.add_argument("--batch-size", type=int, default=64)
    pt.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (warm-up, cosine decay to a tenth)")
    pt.add_argument("--eval-every", type=int, default=1000, help="steps between held-out evaluations")
    pt.add_argument("--init", default=None,
                    help="continue from earlier weights: 'shipped' or a weights file (default: random weights)")
    pt.add_argument("--ship", action="store_true", help="copy the result into glance_lite/weights/")
    _device_option(pt)
    pt.add_argument("--quiet", action="store_true")

    fit = sub.add_parser("fit", help="train Local-Net, Global-Net and DAD head on one category")
    fit.add_argument("--data", required=True, help="dataset root (holds the category folder)")
    fit.add_argument("--category", required=True)
    fit.add_argument("--out", required=True, help="run folder (resumes if it exists)")
    fit.add_argument("--preset", default=None, choices=["smoke", "cpu", "paper"])
    fit.add_argument("--teacher", default="auto", choices=["auto", *TEACHER_NAMES])
    fit.add_argument("--corpus", default=None, help="ImageNet-style folder for Local-Net distillation")
    fit.add_argument("--pretrained", default=None, choices=["shipped", "none"],
                     help="start from the Local-Net shipped in the package (default for cpu) or distil here")
    fit.add_argument("--quiet", action="store_true")
    _device_option(fit)
    _variant_options(fit)

    ev = sub.add_parser("evaluate", help="score the test split and write metrics, maps and overlays")
    ev.add_argument("run")
    ev.add_argument("--data", required=True)
    ev.add_argument("--category", required=True)
    ev.add_argument("--overlays", type=int, default=None, help="max overlay PNGs per defect type")
    ev.add_argument("--quiet", action="store_true")
    _device_option(ev)

    pr = sub.add_parser("predict", help="anomaly maps for images without labels")
    pr.add_argument("run")
    pr.add_argument("inputs", nargs="+", help="image files or folders")
    pr.add_argument("--out", required=True)
    pr.add_argument("--quiet", action="store_true")
    _device_option(pr)

    rp = sub.add_parser("reproduce", help="fit + evaluate every category present; write results files")
    rp.add_argument("--out", default="results")
    rp.add_argument("--data", action="append", default=None,
                    help="dataset root(s); default: shared MVTec AD if present, and the offline set")
    rp.add_argument("--preset", default=None, choices=["smoke", "cpu", "paper"])
    rp.add_argument("--teacher", default="auto")
    rp.add_argument("--runs", default=None, help="where run folders go (default data/runs)")
    rp.add_argument("--category", action="append", default=None)
    rp.add_argument("--no-ts", action="store_true", help="skip the local-only controls (TS and nearest neighbours)")
    rp.add_argument("--controls", default=None, help="which local-only controls to run, comma-separated among "
                                                     "ts, knn (default: both)")
    rp.add_argument("--devices", default=None,
                    help="comma-separated devices, e.g. cuda:0,cuda:1 (or cpu,cpu): one category per device "
                         "at a time, each in its own process with its log in RUNS/logs/")
    rp.add_argument("--shard", default=None, metavar="I/N",
                    help="only the I-th of N equal shares of the categories (0-based), e.g. one machine of N")
    rp.add_argument("--redo", action="store_true",
                    help="score again categories whose results files are complete (default: skip them)")
    rp.add_argument("--preset-file", default=None,
                    help="a preset as JSON (e.g. the preset_fields of a results file) instead of --preset/--set")
    rp.add_argument("--quiet", action="store_true")
    _device_option(rp)
    _variant_options(rp)

    ts = sub.add_parser("ts", help="the TS baseline (Uninformed Students) on a fitted run: train students, evaluate")
    ts.add_argument("run")
    ts.add_argument("--data", required=True)
    ts.add_argument("--category", required=True)
    ts.add_argument("--students", type=int, default=None,
                    help="number of students (default: the TS baseline's, students.DEFAULT_STUDENTS)")
    ts.add_argument("--steps", type=int, default=None,
                    help="train each student exactly this many steps (default: until its held-out error "
                         "stops falling, with at least the joint stage's steps in all; students.stop_rule)")
    ts.add_argument("--no-eval", action="store_true", help="train the students only")
    ts.add_argument("--quiet", action="store_true")
    _device_option(ts)

    nn = sub.add_parser("knn", help="the nearest-neighbour control on a fitted run: each test patch scored by "
                                    "the distance of its Local-Net descriptor to the nearest training patches "
                                    "(no training); writes RUN/metrics_knn.json")
    nn.add_argument("run")
    nn.add_argument("--data", required=True)
    nn.add_argument("--category", required=True)
    nn.add_argument("--k", type=int, default=None, help="neighbours averaged per patch (default: knn.DEFAULT_K)")
    nn.add_argument("--max-bank", type=int, default=None,
                    help="most training descriptors kept, a seeded random subset above it (default: knn.MAX_BANK)")
    nn.add_argument("--quiet", action="store_true")
    _device_option(nn)

    va = sub.add_parser("validate", help="choose settings without the test split: fit + evaluate + TS on "
                                         "held-out training images with synthetic defects (see validation.py)")
    va.add_argument("--source", action="append", default=None, metavar="ROOT:CATEGORY[:heldout|test]",
                    help="repeatable; ROOT 'offline' is the offline set; default: offline categories, "
                         "hazelnut toy, held-out MVTec AD bottle and screw (those present)")
    va.add_argument("--out", required=True, help="folder for held-out sets, runs and <preset>/validation.json")
    va.add_argument("--preset", default=None, choices=["smoke", "cpu", "paper"])
    va.add_argument("--teacher", default="auto", choices=["auto", *TEACHER_NAMES])
    va.add_argument("--results", default=None,
                    help="folder for <preset>/validation.json (default: --out), e.g. glance_lite/results/validation")
    va.add_argument("--no-ts", action="store_true", help="skip the local-only controls (TS and nearest neighbours)")
    va.add_argument("--controls", default=None, help="which local-only controls to run, comma-separated among "
                                                     "ts, knn (default: both)")
    va.add_argument("--reuse", action="append", default=None, metavar="VALIDATION_JSON",
                    help="repeatable; take the finished rows of another validation.json with the same settings "
                         "(all preset fields but the name) as they are, e.g. to join sources run as separate jobs")
    va.add_argument("--quiet", action="store_true")
    _device_option(va)
    _variant_options(va)
    return ap


def _run(args: argparse.Namespace) -> int:
    from .common.presets import describe, get_preset

    if getattr(args, "device", None):  # a missing GPU is a one-line error before anything starts
        from .common.devices import resolve_device

        resolve_device(args.device)

    if args.cmd == "info":
        p = get_preset(args.preset)
        print(describe(p))
        print(json.dumps(p.to_dict(), indent=2))
        return 0
    if args.cmd == "data":
        if args.data_cmd == "inspect":
            from .data.mvtec import inspect_category

            print(json.dumps(inspect_category(args.root, args.category)))
            return 0
        if args.data_cmd == "make-offline":
            from .data.offline_data import make_offline

            root = make_offline(args.out, seed=args.seed, size=args.size, progress=True)
            print(root)
            return 0
        if args.data_cmd == "debian-photos":
            from .data.debian_photos import fetch_debian_photos

            files = fetch_debian_photos(args.out, debs=args.debs)
            print(json.dumps({"out": args.out, "n_photos": len(files)}))
            return 0
        if args.data_cmd == "download":
            from .data.download import download_mvtec

            print(download_mvtec(args.out, categories=args.category))
            return 0
    if args.cmd == "pretrain":
        from .train.distil import DistilSettings, distil

        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # N independent copies would race on one folder
            raise GlanceError("pretrain runs in one process; start it without torchrun (fit, under torchrun, "
                              "distils a Local-Net data-parallel when no shipped one fits)")

        st = DistilSettings(steps=args.steps, n_patches=args.patches, batch_size=args.batch_size, lr=args.lr,
                            eval_every=args.eval_every)
        p = get_preset(args.preset)
        if args.patch_size is not None:
            p = p.replace(patch_size=args.patch_size)
        print(describe(p), file=sys.stderr)
        prov = distil(p, args.out, st, teacher=args.teacher, corpus_folder=args.corpus, ship=args.ship,
                      progress=not args.quiet, command="glance-lite " + " ".join(sys.argv[1:]), device=args.device,
                      init=args.init, extra_corpus=args.extra_corpus)
        print(json.dumps({k: prov[k] for k in ("name", "steps", "heldout", "final", "size_bytes", "sha256")}))
        return 0
    if args.cmd == "fit":
        from .train.training import fit

        if args.pretrained is not None:
            args.overrides = (args.overrides or []) + [f"pretrained={args.pretrained}"]
        p = _preset_from_args(args)
        with _ranks(args.device) as (ctx, dev):
            if ctx.is_main:
                print(describe(p) + (f"; {ctx.world} ranks" if ctx.active else ""), file=sys.stderr)
            fit(args.data, args.category, args.out, p, teacher=args.teacher, progress=not args.quiet and ctx.is_main,
                corpus_folder=args.corpus, device=dev)
        if ctx.is_main:
            print(Path(args.out) / "model.pt")
        return 0
    if args.cmd == "ts":
        from .baselines.students import DEFAULT_STUDENTS, evaluate_students, fit_students

        n = DEFAULT_STUDENTS if args.students is None else args.students
        with _ranks(args.device) as (ctx, dev):
            fit_students(args.run, args.data, args.category, n_students=n, steps=args.steps,
                         progress=not args.quiet and ctx.is_main, device=dev)
        if ctx.is_main and not args.no_eval:
            res = evaluate_students(args.run, args.data, args.category, progress=not args.quiet, device=dev)
            print(json.dumps({k: res.get(k) for k in ("category", "image_AUROC", "pixel_AUROC", "AU-PRO")}))
        return 0
    if args.cmd == "knn":
        from .baselines.knn import DEFAULT_K, MAX_BANK, evaluate_knn

        res = evaluate_knn(args.run, args.data, args.category, k=DEFAULT_K if args.k is None else args.k,
                           max_bank=MAX_BANK if args.max_bank is None else args.max_bank,
                           progress=not args.quiet, device=args.device)
        print(json.dumps({k: res.get(k) for k in ("category", "image_AUROC", "pixel_AUROC", "AU-PRO", "k",
                                                   "bank_size")}))
        return 0
    if args.cmd == "evaluate":
        from .evaluate.evaluation import evaluate_run

        res = evaluate_run(args.run, args.data, args.category, progress=not args.quiet, overlays=args.overlays,
                           device=args.device)
        print(json.dumps({k: res[k] for k in ("category", "image_AUROC", "pixel_AUROC", "AU-PRO",
                                              "seconds_per_image", "preset")}))
        return 0
    if args.cmd == "predict":
        from .evaluate.evaluation import predict

        recs = predict(args.run, args.inputs, args.out, progress=not args.quiet, device=args.device)
        for r in recs:
            print(f"{r['score']:.6f}\t{r['image']}")
        return 0
    if args.cmd == "reproduce":
        from .experiments.reproduce import reproduce, reproduce_parallel

        p = _preset_from_args(args) if args.preset_file is None else _preset_from_file(args.preset_file)
        if args.devices:
            failed = reproduce_parallel(args.devices, args.out, data_roots=args.data, preset=p, teacher=args.teacher,
                                        runs=args.runs, categories=args.category, ts=not args.no_ts, shard=args.shard,
                                        redo=args.redo, progress=not args.quiet, controls=_controls(args.controls))
            return 1 if failed else 0
        reproduce(args.out, data_roots=args.data, preset=p, teacher=args.teacher, runs=args.runs,
                  categories=args.category, ts=not args.no_ts, device=args.device, shard=args.shard, redo=args.redo,
                  controls=_controls(args.controls),
                  progress=not args.quiet)
        return 0
    if args.cmd == "validate":
        from .experiments.validation import run_cli

        p = _preset_from_args(args)
        print(describe(p), file=sys.stderr)
        return run_cli(args.source, args.out, p, teacher=args.teacher, ts=not args.no_ts, progress=not args.quiet,
                       results=args.results, device=args.device, reuse=args.reuse,
                       controls=_controls(args.controls))
    raise AssertionError(args.cmd)  # pragma: no cover


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``glance-lite`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except GlanceError as e:
        print(f"glance-lite: error: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, NotADirectoryError, PermissionError) as e:
        print(f"glance-lite: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("glance-lite: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
