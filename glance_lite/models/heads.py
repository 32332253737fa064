"""The two anomaly-detection heads of Sec. 3.2: IAD (Eq. 7, 11) and DAD (Eq. 8, 9, 12).

**IAD head** -- the inconsistency between the local feature Z_l of a patch and the global feature
Z_g of its surroundings, ``(1/n) ||Z_l - Z_g||^2`` (Eq. 7 as a loss, Eq. 11 as a score).

**DAD head** -- a small MLP classifier ``C(Z*, Z_g)`` on the concatenation ``[Z*, Z_g]``.

Label convention (a deviation, see :doc:`/book/errata`).  Eq. 9 labels the positive (clean) patch
``y = 0`` and the stained negative patch ``y = 1``, so a classifier trained with Eq. 9 outputs the
probability that the patch is *stained*.  Eq. 12 then writes ``s_DAD = 1 - C(Z_l, Z_g)``, which with
that labelling would be *low* for stained patches -- the opposite of an anomaly score.  We keep
Eq. 9 exactly as written (``C`` = probability of being stained/anomalous) and read Eq. 12 as
``s_DAD = 1 - P(normal) = C(Z_l, Z_g)``, so that the DAD score, like the IAD score, is high for
anomalous patches.  This is the only reading under which Eq. 13 adds two scores that agree in sign.

Defined in :doc:`/notebooks/03_heads_and_training`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["iad_score", "DADHead", "dad_loss", "dad_score", "combined_score"]


def iad_score(z_l: torch.Tensor, z_g: torch.Tensor) -> torch.Tensor:
    """Eq. 7 / Eq. 11: ``(1/n) ||Z_l - Z_g||_2^2`` per sample, shape (B,)."""
    if z_l.shape != z_g.shape:
        raise ValueError(f"Z_l {tuple(z_l.shape)} and Z_g {tuple(z_g.shape)} differ in shape")
    return (z_l - z_g).pow(2).mean(dim=1)


class DADHead(nn.Module):
    """Eq. 8: ``p = C(Z*, Z_g)``, the probability that ``Z*`` comes from a stained (anomalous) patch.

    Architecture (ours; the paper says only "a number of fully-connected layers"):
    ``[Z*, Z_g] (2n) -> hidden -> hidden -> 1`` with LeakyReLU(0.2) between the layers.
    """

    def __init__(self, dim: int = 128, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * dim, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def logits(self, z_star: torch.Tensor, z_g: torch.Tensor) -> torch.Tensor:
        """The pre-sigmoid output, shape (B,)."""
        return self.net(torch.cat([z_star, z_g], dim=1)).squeeze(1)

    def forward(self, z_star: torch.Tensor, z_g: torch.Tensor) -> torch.Tensor:
        """The probability (B,) that the local feature belongs to a stained patch."""
        return torch.sigmoid(self.logits(z_star, z_g))


def dad_loss(head: DADHead, z_star: torch.Tensor, z_g: torch.Tensor, y: torch.Tensor,
             reduction: str = "mean") -> torch.Tensor:
    """Eq. 9, binary cross-entropy with ``y = 1`` for the stained patch p^- and ``y = 0`` for p.

    Computed from logits for numerical stability; equal to
    ``-(y log p + (1 - y) log(1 - p))`` averaged over the batch (``reduction="none"``: per sample).
    """
    return F.binary_cross_entropy_with_logits(head.logits(z_star, z_g), y.to(z_star.dtype), reduction=reduction)


def dad_score(head: DADHead, z_l: torch.Tensor, z_g: torch.Tensor) -> torch.Tensor:
    """Eq. 12 in our consistent reading: ``s_DAD = C(Z_l, Z_g)``, high for anomalous patches."""
    return head(z_l, z_g)


def combined_score(s_iad: torch.Tensor, s_dad: torch.Tensor, lambda_s: float = 0.8) -> torch.Tensor:
    """Eq. 13: ``s = lambda_s * s_IAD + (1 - lambda_s) * s_DAD`` (paper: lambda_s = 0.8)."""
    if not 0.0 <= lambda_s <= 1.0:
        raise ValueError(f"lambda_s must lie in [0, 1], got {lambda_s}")
    return lambda_s * s_iad + (1.0 - lambda_s) * s_dad
