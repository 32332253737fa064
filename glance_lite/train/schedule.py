"""Learning-rate schedules of the training stages (chapters 01 and 03).

One schedule serves both places that use one: the long Local-Net distillation (``glance-lite
pretrain``, :mod:`.distil`) and, when the preset asks for it (``global_schedule = "cosine"``), the
joint Global-Net + DAD stage of Eq. 10 (:func:`.training.train_global`).  The paper states no schedule
(its re-implementation keeps Adam at a constant 1e-4); a linear warm-up followed by a cosine decay is
ours, and it is a pure function of the step, so a stage resumed from a checkpoint continues exactly.
"""

from __future__ import annotations

import math

__all__ = ["lr_schedule", "warmup_steps"]


def lr_schedule(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay from ``lr`` to ``lr / 10`` at ``steps``."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))


def warmup_steps(steps: int, fraction: float = 0.05) -> int:
    """The warm-up length the joint stage uses: ``fraction`` of its steps (at least one)."""
    return max(1, int(round(fraction * steps)))
