"""Local-Net weights shipped inside the package, with a checksum and a provenance file.

The paper distils its Local-Net once, on ImageNet patches, and fine-tunes it per category
(Sec. 4.2, after Uninformed Students).  We do the same: ``glance-lite pretrain`` (module
:mod:`glance_lite.train.distil`) runs the long distillation once, and its result sits in
``glance_lite/weights/`` as two files::

    localnet-p33-d128-efficientnet_lite0-t96.pt     Local-Net + decoder (float16), teacher statistics
    localnet-p33-d128-efficientnet_lite0-t96.json   provenance: command, steps, corpus, losses,
                                                    learning curve, commit, hardware, sha256, size

A weights file is *compatible* with a preset when it was distilled with the same patch size p,
descriptor dimension n, teacher and teacher input size: only then does fine-tuning regress the same
teacher targets.  :func:`find_shipped` picks it; ``preset.pretrained = "none"`` (``fit --pretrained
none``) ignores it and distils from scratch.  The checksum in the provenance file is verified on
every load, and the file is read with ``torch.load(weights_only=True)``.

Deviation: the weights are stored in float16 to keep them small enough for git (a few MB); they
are cast back to float32 on load.  The held-out loss in the provenance file is measured with the
float16-rounded weights, so it is the loss of what ships.

Defined in :doc:`/notebooks/01_local_net`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..common.fileio import GlanceError, load_torch
from ..common.paths import package_dir

__all__ = ["WEIGHTS_DIR", "weights_dir", "weights_name", "sha256_file", "shipped_entries", "find_shipped", "load_shipped",
           "learning_curve"]

WEIGHTS_DIR = package_dir() / "weights"
"""Where the shipped weights and their provenance files live (package data)."""


def weights_dir() -> Path:
    """The folder :func:`find_shipped` reads: ``$GLANCE_WEIGHTS`` when set (to try a distillation's
    output, e.g. ``data/pretrain/NAME``, before shipping it), else :data:`WEIGHTS_DIR`.  Every run
    records the file it started from and its SHA-256, so runs from other weights never mix."""
    env = os.environ.get("GLANCE_WEIGHTS")
    return Path(env) if env else WEIGHTS_DIR


def weights_name(patch_size: int, dim: int, teacher: str, teacher_input_size: int) -> str:
    """File stem of the weights for one compatibility key, e.g. ``localnet-p33-d128-efficientnet_lite0-t96``."""
    return f"localnet-p{int(patch_size)}-d{int(dim)}-{teacher}-t{int(teacher_input_size)}"


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shipped_entries(folder: str | Path | None = None) -> list[dict[str, Any]]:
    """The provenance dicts of every shipped weights file (each with ``path`` added)."""
    folder = Path(folder) if folder is not None else weights_dir()
    out = []
    for j in sorted(folder.glob("localnet-*.json")):
        try:
            d = json.loads(j.read_text())
        except (OSError, ValueError) as e:
            raise GlanceError(f"{j}: unreadable provenance file ({e})") from e
        d["path"] = str(j.with_suffix(".pt"))
        out.append(d)
    return out


def find_shipped(patch_size: int, dim: int, teacher: str, teacher_input_size: int,
                 folder: str | Path | None = None) -> Path | None:
    """The shipped weights compatible with these settings, or None."""
    folder = Path(folder) if folder is not None else weights_dir()
    stem = weights_name(patch_size, dim, teacher, teacher_input_size)
    pt, js = folder / f"{stem}.pt", folder / f"{stem}.json"
    return pt if pt.is_file() and js.is_file() else None


def load_shipped(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state, provenance)`` of a shipped weights file, after checking its SHA-256.

    ``state`` holds float32 ``local_net`` and ``decoder`` state dicts and the teacher ``mean`` and
    ``std``; a file whose checksum differs from its provenance raises GlanceError naming it.
    """
    path = Path(path)
    js = path.with_suffix(".json")
    if not js.is_file():
        raise GlanceError(f"{path}: no provenance file {js.name} beside it")
    prov = json.loads(js.read_text())
    digest = sha256_file(path)
    if digest != prov.get("sha256"):
        raise GlanceError(f"{path}: SHA-256 {digest[:12]}... does not match its provenance "
                          f"({str(prov.get('sha256'))[:12]}...); the file is damaged or was replaced")
    raw = load_torch(path)
    state = {
        "local_net": {k: v.float() for k, v in raw["local_net"].items()},
        "decoder": {k: v.float() for k, v in raw["decoder"].items()},
        "mean": raw["mean"].float(),
        "std": raw["std"].float(),
    }
    return state, prov


def learning_curve(prov: dict[str, Any]) -> list[dict[str, Any]]:
    """The whole learning curve of a distillation from its provenance: when it continued an earlier one
    (``pretrain --init``, provenance key ``init``), the earlier curve first and then this run's, its steps
    counted on from the earlier run's ``total_steps``.  Each point is marked with its ``run`` (0 = first)."""
    init = prov.get("init")
    earlier = learning_curve(init) if isinstance(init, dict) and "curve" in init else []
    offset = int(init.get("total_steps", 0)) if isinstance(init, dict) else 0
    run = (max(c["run"] for c in earlier) + 1) if earlier else 0
    return earlier + [dict(c, step=int(c["step"]) + offset, run=run) for c in prov.get("curve", [])]


def half_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with every floating tensor cast to float16 (for shipping)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
