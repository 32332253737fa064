"""Evaluation metrics: the per-region-overlap (PRO) curve and its normalised area, pixel and image AUROC.

The paper (Wang et al., CVPR 2021, Sec. 4.2, Tab. 1 and Tab. 2; Sec. 4.3 for image AUROC) follows the
MVTec AD protocol of Bergmann et al. [6, 7]: *"we increase the threshold until the average per-pixel
false positive rate reaches 30%. For each threshold, we calculate the PRO value, i.e. the average
ratio of the area detected as anomalous in each anomaly connected component. And the final metric is
the normalized area under the PRO curve."*  The paper states no equation for it; written out, for a
threshold ``t`` and the binary prediction ``P_t = {pixels with score >= t}``::

    PRO(t) = 1/K * sum_k |P_t ∩ C_k| / |C_k|         (C_1..C_K: every defect region of every image)
    FPR(t) = |P_t ∩ N| / |N|                           (N: every normal pixel of every image)
    AU-PRO = 1/L * integral_0^L PRO d FPR               (L = 0.3)

Defined in :doc:`/notebooks/05_pro_metric`.

How the curve is computed (the reading of the official MVTec AD evaluation code, re-written here):

* defect regions are the 8-connected components of each ground-truth mask, labelled image by image
  (a region never spans two images);
* every distinct score is a threshold.  Instead of looping over thresholds, each anomalous pixel
  carries the weight ``1 / (K * |C_k|)`` and each normal pixel ``1 / |N|``; sorting all pixels by
  score (descending) and taking cumulative sums gives PRO and FPR for every threshold at once.
  Tied scores are one threshold: a point is emitted only at the last pixel of each run of equal scores;
* the curve starts at ``(0, 0)``;
* the area is integrated with the trapezoid rule up to ``FPR = limit``, interpolating PRO linearly
  between the two curve points around the limit, and divided by ``limit``.

Deviation: the paper says *"average per-pixel false positive rate"*.  We pool all normal pixels of
all test images (anomaly-free images included) into one FPR, as the official MVTec AD evaluation code
does, rather than averaging per-image FPRs.  Anomaly-free images therefore change only the FPR axis.

Deviation: some public re-implementations cut the curve at the last threshold with FPR <= 0.3 and
then rescale the FPR axis by its maximum before integrating.  We do not: PRO is interpolated at
exactly FPR = 0.3 and the area is divided by 0.3, as in the official evaluation code.  The two
readings differ slightly on coarse curves.

Bad input (NaN/inf scores, mismatched shapes, masks not in {0, 1}, no defect pixel, a single class
of image labels) raises :class:`MetricError`, which is both a :class:`~glance_lite.common.fileio.GlanceError`
and a :class:`ValueError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from glance_lite.common.fileio import GlanceError

__all__ = [
    "MetricError",
    "pro_curve",
    "au_pro",
    "pixel_auroc",
    "image_scores",
    "image_auroc",
    "summary_metrics",
]


class MetricError(GlanceError, ValueError):
    """Bad input to a metric (wrong shape, non-finite score, mask not binary, a missing class)."""


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """``x`` (numpy array, torch tensor, list) as a numpy array, without copying when possible."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    try:
        arr = np.asarray(x)
    except Exception as e:  # noqa: BLE001 - re-raised with the argument name
        raise MetricError(f"{name}: cannot be read as an array ({type(e).__name__}: {e})") from e
    if arr.dtype == object:
        raise MetricError(f"{name}: ragged or non-numeric input (dtype object); give an (N, H, W) array")
    return arr


def _as_stack(arr: np.ndarray, name: str) -> np.ndarray:
    """Bring ``arr`` to shape (N, H, W): (H, W) -> (1, H, W); (N, 1, H, W) -> (N, H, W)."""
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise MetricError(
            f"{name}: expected shape (N, H, W), (N, 1, H, W) or (H, W), got {tuple(arr.shape)}"
        )
    if arr.size == 0:
        raise MetricError(f"{name}: empty array of shape {tuple(arr.shape)}")
    return arr


def _check_scores(arr: np.ndarray, name: str) -> np.ndarray:
    """Scores as a floating array; NaN or infinite values raise."""
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.number):
        raise MetricError(f"{name}: scores must be numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise MetricError(f"{name}: scores must be real numbers, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        bad = arr[~finite]
        kind = "NaN" if np.isnan(bad).any() else "infinite"
        raise MetricError(f"{name}: {bad.size} {kind} score(s); every score must be finite")
    return arr


def _check_binary(arr: np.ndarray, name: str) -> np.ndarray:
    """A {0, 1} array (bool, int or float) as bool; any other value raises."""
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise MetricError(f"{name}: must hold 0 and 1, got dtype {arr.dtype}")
    ok = (arr == 0) | (arr == 1)
    if not ok.all():
        bad = np.unique(arr[~ok])[:5]
        hint = " (divide 0/255 masks by 255)" if np.any(bad == 255) else ""
        raise MetricError(f"{name}: values must be 0 or 1, found {bad.tolist()}{hint}")
    return arr == 1


def _prepare(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(scores (N,H,W) float, masks (N,H,W) bool)``."""
    m = _as_stack(_to_numpy(maps, "maps"), "maps")
    g = _as_stack(_to_numpy(masks, "masks"), "masks")
    if m.shape != g.shape:
        raise MetricError(f"maps have shape {tuple(m.shape)} but masks have shape {tuple(g.shape)}")
    return _check_scores(m, "maps"), _check_binary(g, "masks")


# --------------------------------------------------------------------------------------------
# PRO
# --------------------------------------------------------------------------------------------


def _label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of each image of a (N, H, W) bool stack, numbered across the stack.

    One ``scipy.ndimage.label`` call on the whole stack with a structuring element that connects
    the 8 neighbours inside an image and nothing across images; labels are 1..K, 0 is background.
    """
    from scipy import ndimage

    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 3x3 ones in the image plane: 8-connectivity, no link between images
    labels, k = ndimage.label(masks, structure=structure)
    return labels, int(k)


def pro_curve(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """The full PRO curve: ``(fpr, pro)`` for every distinct score as threshold, starting at (0, 0).

    Point ``i >= 1`` belongs to the ``i``-th largest distinct score ``t``: the prediction is
    ``maps >= t``.  ``fpr`` is non-decreasing and ends at 1; ``pro`` is non-decreasing and ends at 1.

    Args:
        maps: anomaly scores, (N, H, W), (N, 1, H, W) or (H, W); numpy or torch; higher = more anomalous.
        masks: ground truth of the same shape, values in {0, 1} (1 = defect).

    Returns:
        ``(fpr, pro)``, two float64 arrays of equal length (number of distinct scores + 1).

    Raises:
        MetricError: bad shapes or values, no defect pixel, or no normal pixel.
    """
    scores, gt = _prepare(maps, masks)
    labels, n_regions = _label_regions(gt)
    if n_regions == 0:
        raise MetricError("masks contain no anomalous pixel; the PRO curve needs at least one defect region")
    n_normal = int(gt.size - np.count_nonzero(gt))
    if n_normal == 0:
        raise MetricError("masks contain no normal pixel; the false-positive rate is undefined")

    region_size = np.bincount(labels.ravel(), minlength=n_regions + 1).astype(np.float64)
    # weight of each pixel for PRO: 1 / (K * |C_k|) inside region k, 0 on normal pixels
    region_weight = np.zeros(n_regions + 1, dtype=np.float64)
    region_weight[1:] = 1.0 / (region_size[1:] * n_regions)

    # Sort all pixels by score.  A full argsort of millions of pixels is slow, so we sort the
    # normal pixels' scores alone (a plain sort, no indices needed: they all carry weight 1/|N|),
    # argsort only the few defect pixels, and merge the two sorted lists by their ranks.
    flat_scores = scores.ravel()
    flat_labels = labels.ravel()
    is_defect = flat_labels > 0
    normal_sorted = np.sort(flat_scores[~is_defect])
    defect_scores = flat_scores[is_defect]
    order = np.argsort(defect_scores)
    defect_sorted = defect_scores[order]
    # where each defect pixel lands in the merged ascending list (ties: before equal normals)
    slot = np.searchsorted(normal_sorted, defect_sorted) + np.arange(defect_sorted.size)
    defect_slot = np.zeros(flat_scores.size, dtype=bool)
    defect_slot[slot] = True
    merged = np.empty(flat_scores.size, dtype=flat_scores.dtype)
    merged[slot] = defect_sorted
    merged[~defect_slot] = normal_sorted
    weight = np.zeros(flat_scores.size, dtype=np.float64)
    weight[slot] = region_weight[flat_labels[is_defect][order]]

    # descending order: the first k pixels are those above the k-th threshold
    sorted_scores = merged[::-1]
    fp = np.cumsum(~defect_slot[::-1], dtype=np.int64)  # integer counts: exact FPR numerators
    pro = np.cumsum(weight[::-1])

    # one point per distinct score: the last pixel of each run of equal scores
    last_of_run = np.empty(sorted_scores.size, dtype=bool)
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=last_of_run[:-1])
    last_of_run[-1] = True

    fpr = fp[last_of_run] / n_normal
    pro = np.clip(pro[last_of_run], 0.0, 1.0)  # cumulative sums may overshoot 1 by rounding
    return np.concatenate(([0.0], fpr)), np.concatenate(([0.0], pro))


def _area_to_limit(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under ``y(x)`` for ``x`` in [0, limit]; ``x`` non-decreasing from 0.

    If ``limit`` is not a curve point, ``y`` is interpolated linearly between the last point
    before it and the first point after it.
    """
    # first index with x > limit: points [0, i) lie within the limit
    i = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:i], y[:i]
    area = float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))
    if i < x.size and xs[-1] < limit:
        x0, y0, x1, y1 = xs[-1], ys[-1], x[i], y[i]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += (limit - x0) * (y0 + y_lim) / 2.0
    return area


def au_pro(maps: Any, masks: Any, limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``FPR = limit`` (paper Sec. 4.2, Tab. 1).

    ``1 / limit * integral_0^limit PRO d FPR`` with the curve of :func:`pro_curve`: 1.0 for a
    perfect map, 0.0 for a map that ranks every normal pixel above every defect pixel.

    Args:
        maps: anomaly scores, (N, H, W), (N, 1, H, W) or (H, W); numpy or torch.
        masks: ground truth of the same shape, values in {0, 1}.
        limit: the FPR integration limit, in (0, 1]; the paper uses 0.3.

    Raises:
        MetricError: bad input (see :func:`pro_curve`) or ``limit`` outside (0, 1].
    """
    limit = float(limit)
    if not (0.0 < limit <= 1.0):
        raise MetricError(f"limit must lie in (0, 1], got {limit}")
    fpr, pro = pro_curve(maps, masks)
    return _area_to_limit(fpr, pro, limit) / limit


# --------------------------------------------------------------------------------------------
# AUROC
# --------------------------------------------------------------------------------------------


def pixel_auroc(maps: Any, masks: Any) -> float:
    """Area under the ROC curve over all pixels of all images pooled (paper Sec. 4.2, Tab. 2).

    Raises:
        MetricError: bad shapes or values, or masks with only one class of pixel.
    """
    from sklearn.metrics import roc_auc_score

    scores, gt = _prepare(maps, masks)
    n_anom = int(np.count_nonzero(gt))
    if n_anom == 0:
        raise MetricError("masks contain no anomalous pixel; pixel AUROC needs both classes")
    if n_anom == gt.size:
        raise MetricError("masks contain no normal pixel; pixel AUROC needs both classes")
    return float(roc_auc_score(gt.ravel(), scores.ravel()))


def image_scores(maps: Any, reduce: str = "max") -> np.ndarray:
    """One anomaly score per image from its map: the maximum (default) or the mean.

    Args:
        maps: (N, H, W), (N, 1, H, W) or (H, W) scores.
        reduce: ``"max"`` or ``"mean"``.

    Returns:
        float array of shape (N,).
    """
    m = _check_scores(_as_stack(_to_numpy(maps, "maps"), "maps"), "maps")
    flat = m.reshape(m.shape[0], -1)
    if reduce == "max":
        return flat.max(axis=1).astype(np.float64)
    if reduce == "mean":
        return flat.mean(axis=1, dtype=np.float64)
    raise MetricError(f"reduce must be 'max' or 'mean', got {reduce!r}")


def image_auroc(scores: Any, labels: Any, reduce: str = "max") -> float:
    """Image-level AUROC (paper Sec. 4.3) from per-image scores and 0/1 labels (1 = anomalous).

    Args:
        scores: (N,) per-image scores, or maps ((N, H, W) / (N, 1, H, W)) reduced by
            :func:`image_scores` with ``reduce``.
        labels: (N,) values in {0, 1}.
        reduce: how maps are turned into image scores (ignored for 1-D scores).

    Raises:
        MetricError: non-finite scores, lengths that differ, labels not in {0, 1}, or one class only.
    """
    from sklearn.metrics import roc_auc_score

    s = _to_numpy(scores, "scores")
    if s.ndim >= 2:
        s = image_scores(s, reduce=reduce)
    elif s.ndim == 0:
        raise MetricError("scores: expected one score per image, got a scalar")
    s = _check_scores(s, "scores")
    y = _to_numpy(labels, "labels")
    if y.ndim != 1:
        raise MetricError(f"labels: expected shape (N,), got {tuple(y.shape)}")
    if s.shape[0] != y.shape[0]:
        raise MetricError(f"{s.shape[0]} scores but {y.shape[0]} labels")
    y = _check_binary(y, "labels")
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == y.size:
        which = "anomalous" if n_pos == y.size else "normal"
        raise MetricError(f"labels: all {y.size} images are {which}; image AUROC needs both classes")
    return float(roc_auc_score(y, s))


def summary_metrics(maps: Any, masks: Any | None, labels: Any) -> dict[str, float | None]:
    """anomalib's three metrics for a test set: ``image_AUROC`` (image score = max of the map),
    ``pixel_AUROC`` and ``AU-PRO`` (FPR limit 0.3).

    A metric that the data cannot define is ``None``: image AUROC without both good and defective
    images, the pixel metrics without masks or without both normal and anomalous pixels.
    """
    maps_a = np.asarray(maps)
    labels_a = np.asarray(labels)
    out: dict[str, float | None] = {"image_AUROC": None, "pixel_AUROC": None, "AU-PRO": None}
    if len(set(labels_a.tolist())) == 2:
        out["image_AUROC"] = image_auroc(maps_a.reshape(len(maps_a), -1).max(1), labels_a)
    if masks is not None:
        masks_a = np.asarray(masks)
        if masks_a.any() and not masks_a.all():
            out["pixel_AUROC"] = pixel_auroc(maps_a, masks_a)
            out["AU-PRO"] = au_pro(maps_a, masks_a, limit=0.3)
    return out
