"""The fitted glance-lite model: Local-Net, Global-Net and DAD head, saved and loaded as one run.

A *run folder* (written by :func:`glance_lite.train.training.fit` and the ``glance-lite fit`` command) holds

* ``config.json``  -- preset, teacher, category, data root, git commit, hardware, dates;
* ``model.pt``     -- the state dicts of the three networks (loaded with ``weights_only=True``);
* ``history.json`` -- the loss curves of every training stage, and ``losses.png``;
* ``checkpoints/`` -- resumable checkpoints of each stage.

Defined in :doc:`/notebooks/03_heads_and_training`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..common.fileio import GlanceError, load_torch, save_torch
from .global_net import GlobalNet
from .heads import DADHead
from .local_net import LocalNet
from ..common.presets import Preset

__all__ = ["GlanceModel"]


class GlanceModel(nn.Module):
    """Local-Net L (frozen after pre-training), Global-Net G and DAD classifier C."""

    def __init__(self, preset: Preset, teacher: str = "unknown") -> None:
        super().__init__()
        self.preset = preset
        self.teacher = teacher
        self.local_net = LocalNet(patch_size=preset.patch_size, dim=preset.descriptor_dim)
        self.global_net = GlobalNet.from_preset(preset)
        self.dad = DADHead(dim=preset.descriptor_dim, hidden=preset.dad_hidden)

    def freeze_local(self) -> None:
        """Fix the Local-Net's parameters (Sec. 3.1: 'parameters of the Local-Net are fixed')."""
        self.local_net.eval()
        for p in self.local_net.parameters():
            p.requires_grad_(False)

    def save(self, run_dir: str | Path) -> Path:
        """Write ``model.pt`` atomically into ``run_dir``."""
        payload: dict[str, Any] = {
            "preset": json.dumps(self.preset.to_dict()),
            "teacher": self.teacher,
            "local_net": self.local_net.state_dict(),
            "global_net": self.global_net.state_dict(),
            "dad": self.dad.state_dict(),
        }
        return save_torch(Path(run_dir) / "model.pt", payload)

    @classmethod
    def load(cls, run_dir: str | Path, map_location: Any = "cpu") -> "GlanceModel":
        """Load ``run_dir/model.pt``; a missing run raises :class:`GlanceError` naming the folder."""
        run_dir = Path(run_dir)
        path = run_dir / "model.pt"
        if not run_dir.is_dir():
            raise GlanceError(f"{run_dir}: no such run folder")
        if not path.is_file():
            raise GlanceError(f"{run_dir}: not a finished run (no model.pt); run `glance-lite fit` first")
        payload = load_torch(path, map_location=map_location)
        try:
            preset = Preset.from_dict(json.loads(payload["preset"]))
            model = cls(preset, teacher=str(payload.get("teacher", "unknown")))
            model.local_net.load_state_dict(payload["local_net"])
            model.global_net.load_state_dict(payload["global_net"])
            model.dad.load_state_dict(payload["dad"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise GlanceError(f"{path}: not a glance-lite model ({e})") from e
        model.freeze_local()
        model.eval()
        return model
