"""Putting the two heads on one scale (ours): the score normalisations of Eq. 13's inputs.

``s_IAD`` is a squared feature distance (Eq. 11), ``s_DAD`` a probability in [0, 1] (Eq. 12); the
paper adds them as they are (Eq. 13, normalisation ``none``).  We also offer to standardise each
head with statistics of its patch scores over *training* images, fitted by
:func:`glance_lite.score.scoring.fit_score_normaliser` from the scores that :func:`normaliser_from_scores`
summarises here:

* ``zscore``: ``(s - mean) / std`` per head;
* ``p99``: ``s / p99``;
* ``position``: the head's mean score at each grid position subtracted, then divided by the std of
  what is left (the ``cpu`` preset's choice, made on the validation protocol).

Every normalisation is affine per head and grid position, so it commutes with IDW.  Never fit one on
test images.  Deviation: the normalisations are ours; the paper's plain Eq. 13 is ``none``, and every
evaluation reports all of them.

Taught in :doc:`/notebooks/04_score_maps`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from .idw import ScoringError

__all__ = ["NORMALISATIONS", "normalise_scores", "normaliser_from_scores"]


NORMALISATIONS = ("none", "zscore", "p99", "position")
"""The score normalisations: the paper's plain Eq. 13 and three ways of putting the heads on one scale."""


def normalise_scores(s_iad: Tensor, s_dad: Tensor, stats: Mapping[str, Any] | None,
                     method: str | None = None) -> tuple[Tensor, Tensor]:
    """Apply a normaliser from :func:`glance_lite.score.scoring.fit_score_normaliser` to each head's patch scores.

    ``method`` (default ``stats["method"]``):

    * ``"none"`` (or ``stats=None``): unchanged, the paper's plain Eq. 13;
    * ``"zscore"``: ``(s - mean) / std`` per head;
    * ``"p99"``: ``s / p99``;
    * ``"position"``: ``(s - mean_ij) / std_res``, where ``mean_ij`` is the head's mean score at grid
      position (i, j) over the training images and ``std_res`` the standard deviation of what is
      left.  It removes what the heads get wrong at a *place* on every normal image (for IAD: where
      the Global-Net cannot predict Z_l even on good images, e.g. at the border or on a part that
      varies), so that only what differs from the normal images at that place remains.  Needs the
      scores on the grid they were fitted on (same image size and stride).

    All are affine per head and grid position, so they commute with IDW.
    """
    method = (stats or {}).get("method", "none") if method is None else method
    if method == "none":
        return s_iad, s_dad
    if stats is None:
        raise ScoringError(f"normalisation {method!r} needs statistics from fit_score_normaliser")
    out = []
    try:
        for s, st in ((s_iad, stats["iad"]), (s_dad, stats["dad"])):
            if method == "zscore":
                out.append((s - st["mean"]) / st["std"])
            elif method == "p99":
                out.append(s / st["p99"])
            elif method == "position":
                mu = torch.as_tensor(st["position_mean"], dtype=s.dtype)
                if tuple(mu.shape) != tuple(s.shape[-2:]):
                    raise ScoringError(f"position normaliser fitted on a {tuple(mu.shape)} grid, scores are on "
                                       f"{tuple(s.shape[-2:])}")
                out.append((s - mu) / st["position_std"])
            else:
                raise ScoringError(f"unknown normalisation method {method!r}; use one of {NORMALISATIONS}")
    except (KeyError, TypeError) as e:
        raise ScoringError(f"not a score normaliser (from fit_score_normaliser): missing {e}") from e
    return out[0], out[1]


def normaliser_from_scores(s_iad: Tensor, s_dad: Tensor, method: str = "zscore") -> dict[str, Any]:
    """Statistics of each head's patch scores ``(B, gh, gw)`` over training images, for every method of
    :func:`normalise_scores` (``method`` is the default one).

    Returns ``{"method", "iad": {"mean", "std", "p99", "position_mean" (gh x gw lists),
    "position_std"}, "dad": {...}, "n_images", "n_patches"}`` (plain floats and lists, JSON-friendly).
    """
    if method not in NORMALISATIONS or method == "none":
        raise ScoringError(f"unknown normalisation method {method!r}; use one of {NORMALISATIONS[1:]}")
    out: dict[str, Any] = {"method": method}
    for head, sc in (("iad", s_iad), ("dad", s_dad)):
        s = sc.double()
        v = s.reshape(-1)
        mu = s.mean(0)
        res = (s - mu).reshape(-1)
        out[head] = {
            "mean": float(v.mean()),
            "std": float(v.std().clamp_min(1e-12)) if len(v) > 1 else 1.0,
            "p99": float(torch.quantile(v, 0.99).clamp_min(1e-12)),
            "position_mean": mu.tolist(),
            "position_std": float(res.std().clamp_min(1e-12)) if len(res) > 1 else 1.0,
        }
    out.update(n_images=int(s_iad.shape[0]), n_patches=int(s_iad.numel()))
    return out
