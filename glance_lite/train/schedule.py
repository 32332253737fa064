"""The learning-rate schedule of the long Local-Net distillation (``glance-lite pretrain``, :mod:`.distil`;
chapter 01).

The paper states no schedule (its re-implementation keeps Adam at a constant 1e-4, as the joint stage
of Eq. 10 does here); a linear warm-up followed by a cosine decay is ours, and it is a pure function of
the step, so a distillation resumed from a checkpoint continues exactly.
"""

from __future__ import annotations

import math

__all__ = ["lr_schedule"]


def lr_schedule(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay from ``lr`` to ``lr / 10`` at ``steps``."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))
