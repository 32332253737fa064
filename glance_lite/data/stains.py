"""Negative patches p^- for the DAD head: small random stains (Sec. 3.2, after Collin & De Vleeschouwer).

A stain is an irregular ellipse: about 20 points on an ellipse, each pushed radially by a random
factor, joined by a periodic cubic spline, rasterised, then filled with a random grey level plus light
Gaussian noise.  The stain lies entirely inside the patch and its size is a fraction of the patch side,
so the same recipe works for p = 17, 33 and 65.

Following Collin & De Vleeschouwer (2020), "Improved anomaly detection by training an autoencoder with
skip connections on images corrupted with stain-shaped noise"; the parameter ranges are ours
(the paper gives none) and are listed on the errata page.

Defined in :doc:`/notebooks/03_heads_and_training`.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.interpolate import CubicSpline
from skimage.draw import polygon

__all__ = ["stain_mask", "add_stain"]


def stain_mask(
    patch_size: int,
    rng: np.random.Generator,
    n_points: int = 20,
    min_axis: float = 0.12,
    max_axis: float = 0.3,
    jitter: float = 0.25,
) -> np.ndarray:
    """One irregular-ellipse stain mask, a (p, p) boolean array lying entirely inside the patch.

    The semi-axes are drawn in ``[min_axis, max_axis] * p``; each of ``n_points`` contour points
    is scaled radially by a factor in ``[1 - jitter, 1 + jitter]``; the points are joined by a
    periodic cubic spline.  The centre is drawn so that the whole contour fits in the patch.
    """
    p = int(patch_size)
    a, b = rng.uniform(min_axis, max_axis, size=2) * p
    theta = rng.uniform(0, np.pi)
    t = np.linspace(0, 2 * np.pi, n_points, endpoint=False)
    r = rng.uniform(1 - jitter, 1 + jitter, size=n_points)
    x, y = a * r * np.cos(t), b * r * np.sin(t)
    xr = x * np.cos(theta) - y * np.sin(theta)
    yr = x * np.sin(theta) + y * np.cos(theta)
    # periodic cubic curve through the jittered points
    tt = np.append(t, 2 * np.pi)
    sx = CubicSpline(tt, np.append(xr, xr[0]), bc_type="periodic")
    sy = CubicSpline(tt, np.append(yr, yr[0]), bc_type="periodic")
    ts = np.linspace(0, 2 * np.pi, 8 * n_points, endpoint=False)
    cx, cy = sx(ts), sy(ts)
    # place the centre so that the curve lies inside [0.5, p - 1.5]
    lo_x, hi_x = 0.5 - cx.min(), p - 1.5 - cx.max()
    lo_y, hi_y = 0.5 - cy.min(), p - 1.5 - cy.max()
    ox = rng.uniform(lo_x, hi_x) if hi_x > lo_x else (p - 1) / 2
    oy = rng.uniform(lo_y, hi_y) if hi_y > lo_y else (p - 1) / 2
    rr, cc = polygon(cy + oy, cx + ox, shape=(p, p))
    m = np.zeros((p, p), dtype=bool)
    m[rr, cc] = True
    if not m.any():  # degenerate tiny stain: at least the centre pixel
        m[int(np.clip(round(oy), 0, p - 1)), int(np.clip(round(ox), 0, p - 1))] = True
    return m


def add_stain(
    patches: torch.Tensor,
    rng: np.random.Generator | int,
    noise_std: float = 0.03,
    min_axis: float = 0.12,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stain every patch of a batch (B, 3, p, p) in [0, 1]; returns ``(stained, masks)``.

    ``masks`` is (B, 1, p, p) float {0, 1}.  Each stain gets one random grey level in [0, 1]
    plus N(0, ``noise_std``) noise per pixel; the result is clipped to [0, 1].  Pixels outside the
    stain are returned unchanged (bit for bit).  ``min_axis`` is the smallest semi-axis as a fraction of
    the patch side (:func:`stain_mask`; the largest stays 0.3): the preset field ``stain_min_axis``.
    """
    if isinstance(rng, (int, np.integer)):
        rng = np.random.default_rng(int(rng))
    if patches.dim() != 4 or patches.shape[-1] != patches.shape[-2]:
        raise ValueError(f"patches must be (B, C, p, p), got {tuple(patches.shape)}")
    b, c, p, _ = patches.shape
    masks = np.stack([stain_mask(p, rng, min_axis=min_axis) for _ in range(b)])
    grey = rng.uniform(0.0, 1.0, size=(b, 1, 1, 1))
    noise = rng.normal(0.0, noise_std, size=(b, 1, p, p))
    fill = torch.as_tensor(np.clip(grey + noise, 0, 1), dtype=patches.dtype, device=patches.device)
    m = torch.as_tensor(masks[:, None], dtype=patches.dtype, device=patches.device)
    stained = torch.where(m.bool(), fill.expand(b, c, p, p), patches)
    return stained, m
