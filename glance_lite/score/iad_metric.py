"""The metric of the inconsistency score (Eq. 11): Euclidean, as in the paper, or whitened (ours).

Eq. 11 scores a patch by ``s_IAD = (1/n) ||Z_l - Z_g||^2``: every direction of the residual
``r = Z_l - Z_g`` counts the same.  On a normal image the residual is not isotropic.  Where the
image around a hole cannot tell what the hole holds (the phase of a fine weave, the exact angle of a
thread, lighting), the Global-Net errs on *every* normal image, always along the same few
directions of the descriptor space.  In plain Euclidean distance those errors are as large as an
anomaly, and the map shows the Global-Net's own uncertainty instead of the defect.

The whitened metric measures the residual against the residuals of normal patches:

    s_IAD_w = (1/n) (r - mu)^T  Sigma^{-1}  (r - mu),

with ``mu`` and ``Sigma`` the mean and covariance of the residuals over every grid patch of (up to
16) *training* images, ``Sigma`` shrunk towards a scaled identity with the Ledoit-Wolf estimator
(:class:`sklearn.covariance.LedoitWolf`: with n = 128 dimensions and a few thousand residuals the
plain sample covariance would be noisy in its small directions).  Directions where the Global-Net
always errs count little; an error in a direction it never makes counts a lot.  It is the
Mahalanobis distance of the residual, the same idea as a Gaussian model of normal features (PaDiM),
applied to the *disagreement between the local and the global view* rather than to the local
feature: the score stays a global-local comparison.  With ``mu = 0`` and ``Sigma = I`` it is Eq. 11
exactly (tested).

Deviation: the paper's Eq. 11 is Euclidean; the whitened metric is ours, selected by the preset
field ``iad_metric`` (``euclidean`` for the ``paper`` preset, ``mahalanobis`` for ``cpu``, chosen on
the validation protocol, see chapter 08 and the errata page).  Fitted on training images only, like
the score normaliser, so the residuals it learns from are, if anything, smaller than those of new
normal images.

Taught in :doc:`/notebooks/04_score_maps` (section "Whitening the inconsistency").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..common.fileio import load_torch, save_torch

__all__ = ["IADWhitener", "fit_iad_whitener", "iad_scores", "residual_scores", "save_whitener", "load_whitener", "IAD_METRICS"]

IAD_METRICS = ("euclidean", "mahalanobis")
"""The values of the preset field ``iad_metric``."""


@dataclasses.dataclass
class IADWhitener:
    """Mean ``mu`` (n,) and precision ``Sigma^{-1}`` (n, n) of training residuals ``Z_l - Z_g``."""

    mean: Tensor
    precision: Tensor
    n_samples: int
    shrinkage: float

    def __post_init__(self) -> None:
        n = self.mean.shape[-1]
        if self.mean.dim() != 1 or tuple(self.precision.shape) != (n, n):
            raise ValueError(f"IADWhitener: mean {tuple(self.mean.shape)} and precision "
                             f"{tuple(self.precision.shape)} do not fit together")

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def identity(cls, n: int) -> "IADWhitener":
        """``mu = 0``, ``Sigma = I``: the whitened score equals the Euclidean Eq. 11."""
        return cls(torch.zeros(n), torch.eye(n), 0, 0.0)


def fit_iad_whitener(residuals: Tensor) -> IADWhitener:
    """Fit mean and Ledoit-Wolf-shrunk precision of residuals ``(N, n)`` (``Z_l - Z_g`` of normal patches).

    Raises ``ValueError`` with fewer than two residuals or non-finite values.
    """
    from sklearn.covariance import LedoitWolf

    x = torch.as_tensor(residuals).detach().reshape(-1, residuals.shape[-1]).double().cpu().numpy()
    if x.shape[0] < 2:
        raise ValueError(f"fit_iad_whitener: needs at least 2 residuals, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError("fit_iad_whitener: the residuals contain NaN or inf")
    lw = LedoitWolf().fit(x)
    return IADWhitener(torch.as_tensor(lw.location_, dtype=torch.float32),
                       torch.as_tensor(lw.precision_, dtype=torch.float32), int(x.shape[0]), float(lw.shrinkage_))


def iad_scores(z_l: Tensor, z_g: Tensor, whitener: IADWhitener | None = None) -> Tensor:
    """Eq. 11 per row of ``(N, n)`` features: Euclidean ``(1/n)||r||^2`` (``whitener=None``) or
    whitened ``(1/n)(r - mu)^T P (r - mu)``, ``r = Z_l - Z_g``."""
    if z_l.shape != z_g.shape:
        raise ValueError(f"Z_l {tuple(z_l.shape)} and Z_g {tuple(z_g.shape)} differ in shape")
    return residual_scores(z_l - z_g, whitener)


def residual_scores(r: Tensor, whitener: IADWhitener | None = None) -> Tensor:
    """:func:`iad_scores` of residuals ``r = Z_l - Z_g`` given directly, over their last dimension."""
    if whitener is None:
        return r.pow(2).mean(dim=-1)
    if r.shape[-1] != whitener.dim:
        raise ValueError(f"the whitener was fitted on {whitener.dim}-d features, these are {r.shape[-1]}-d")
    c = r - whitener.mean.to(r)
    return (c @ whitener.precision.to(r) * c).sum(dim=-1) / r.shape[-1]


def save_whitener(path: str | Path, w: IADWhitener) -> Path:
    """Write atomically (CPU tensors, :func:`glance_lite.common.fileio.save_torch`)."""
    return save_torch(path, {"mean": w.mean, "precision": w.precision, "n_samples": w.n_samples,
                             "shrinkage": w.shrinkage})


def load_whitener(path: str | Path) -> IADWhitener:
    """Read a whitener written by :func:`save_whitener` (``weights_only=True``)."""
    d = load_torch(path)
    try:
        return IADWhitener(d["mean"], d["precision"], int(d["n_samples"]), float(d["shrinkage"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not an IAD whitener ({e})") from e
