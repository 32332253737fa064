"""Tests of glance_lite.evaluate.metrics: PRO curve, AU-PRO, pixel and image AUROC.

Hand-computed cases carry their arithmetic in comments.  Notation: a curve is listed as its points
(FPR, PRO), starting at (0, 0); "after 0.5" means the prediction ``map >= 0.5``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.measure import label as sk_label

from glance_lite.common.fileio import GlanceError
from glance_lite.evaluate.metrics import (
    MetricError,
    au_pro,
    image_auroc,
    image_scores,
    pixel_auroc,
    pro_curve,
)

# ---------------------------------------------------------------------------------------------
# hand-computed fixtures
# ---------------------------------------------------------------------------------------------

# Case A (2x3, one region of 2 pixels, 4 normal pixels, a tie across classes at 0.5)
A_MASK = np.array([[1, 1, 0],
                   [0, 0, 0]])
A_MAP = np.array([[0.9, 0.5, 0.5],
                  [0.5, 0.1, 0.0]])
# descending: 0.9 (defect)            -> FPR 0,    PRO 1/2
#             0.5 (1 defect, 2 normal) -> FPR 2/4,  PRO 1      (one point for the whole tie)
#             0.1 (normal)             -> FPR 3/4,  PRO 1
#             0.0 (normal)             -> FPR 1,    PRO 1
A_FPR = [0, 0, 0.5, 0.75, 1]
A_PRO = [0, 0.5, 1, 1, 1]
# AU-PRO(0.3): PRO(0.3) on the segment (0, .5)-(.5, 1) is 0.5 + 0.5 * 0.3/0.5 = 0.8;
#              area = 0.3 * (0.5 + 0.8) / 2 = 0.195;  / 0.3 = 0.65.
# (Splitting the tie instead would give 1.0 (defect first) or 0.5 (normals first).)

# Case B (3x4, non-square; a 4-pixel region and a 1-pixel region; 7 normal pixels)
B_MASK = np.array([[1, 1, 0, 0],
                   [1, 1, 0, 1],
                   [0, 0, 0, 0]])
B_MAP = np.array([[0.8, 0.8, 0.5, 0.2],
                  [0.8, 0.8, 0.1, 0.3],
                  [0.0, 0.0, 0.0, 0.0]])
# regions: R1 = the 2x2 block (4 px), R2 = pixel (1,3) (1 px); K = 2
# descending: 0.8 (all of R1)  -> FPR 0,   PRO (1 + 0)/2 = 1/2
#             0.5 (normal)     -> FPR 1/7, PRO 1/2
#             0.3 (R2)         -> FPR 1/7, PRO 1
#             0.2 (normal)     -> FPR 2/7, PRO 1
#             0.1 (normal)     -> FPR 3/7, PRO 1
#             0.0 (4 normal)   -> FPR 1,   PRO 1
B_FPR = [0, 0, 1 / 7, 1 / 7, 2 / 7, 3 / 7, 1]
B_PRO = [0, 0.5, 0.5, 1, 1, 1, 1]
# AU-PRO(0.3): area = (1/7)(1/2) [0..1/7] + 0 [vertical] + (2/7-1/7)*1 + (0.3-2/7)*1
#            = 1/14 + 0.3 - 1/7 = 0.3 - 1/14;  / 0.3 = 1 - 1/4.2 = 0.76190476...
B_AUPRO = (0.3 - 1 / 14) / 0.3
# pixel AUROC: 5 defect x 7 normal = 35 pairs; R1's four 0.8 beat all 7 normals (28),
#              R2's 0.3 beats 0.2, 0.1 and four 0.0 (6), loses to 0.5  -> 34/35.
B_PIXEL_AUROC = 34 / 35


def _close(a, b, tol=1e-12):
    return np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=0, atol=tol)


# ---------------------------------------------------------------------------------------------
# PRO curve and AU-PRO, by hand
# ---------------------------------------------------------------------------------------------


def test_ties_merge_into_one_point():
    fpr, pro = pro_curve(A_MAP, A_MASK)
    assert _close(fpr, A_FPR) and _close(pro, A_PRO)
    assert au_pro(A_MAP, A_MASK) == pytest.approx(0.65, abs=1e-12)


def test_limit_interpolation():
    # limit 0.25: PRO(0.25) = 0.5 + 0.5 * 0.25/0.5 = 0.75; area = 0.25 * (0.5 + 0.75)/2 = 0.15625
    assert au_pro(A_MAP, A_MASK, limit=0.25) == pytest.approx(0.15625 / 0.25, abs=1e-12)
    # limit 0.5 is a curve point: area = 0.5 * (0.5 + 1)/2 = 0.375 -> 0.75
    assert au_pro(A_MAP, A_MASK, limit=0.5) == pytest.approx(0.75, abs=1e-12)
    # limit 1: 0 + 0.375 + 0.25*1 + 0.25*1 = 0.875
    assert au_pro(A_MAP, A_MASK, limit=1.0) == pytest.approx(0.875, abs=1e-12)


def test_one_pixel_region_counts_as_much_as_a_big_one_non_square():
    fpr, pro = pro_curve(B_MAP, B_MASK)
    assert _close(fpr, B_FPR) and _close(pro, B_PRO)
    assert au_pro(B_MAP, B_MASK) == pytest.approx(B_AUPRO, abs=1e-12)
    assert pixel_auroc(B_MAP, B_MASK) == pytest.approx(B_PIXEL_AUROC, abs=1e-12)
    # the transposed problem (4x3) gives the same numbers
    assert au_pro(B_MAP.T, B_MASK.T) == pytest.approx(B_AUPRO, abs=1e-12)


def test_diagonal_neighbours_are_one_region():
    # (0,1) and (1,2) touch only at a corner: one 3-pixel region with 8-connectivity,
    # but {(0,0),(0,1)} (2 px) + {(1,2)} (1 px) with 4-connectivity.  6 normal pixels.
    mask = np.array([[1, 1, 0],
                     [0, 0, 1],
                     [0, 0, 0]])
    score = np.array([[0.2, 0.2, 0.5],
                      [0.0, 0.0, 0.9],
                      [0.0, 0.0, 0.0]])
    # 8-conn: 0.9 -> (0, 1/3); 0.5 -> (1/6, 1/3); 0.2 -> (1/6, 1); 0.0 -> (1, 1)
    # AU-PRO = [(1/6)(1/3) + (0.3 - 1/6)] / 0.3 = (0.3 - 1/9) / 0.3
    # (4-conn would give PRO 1/2 after 0.9 and (0.3 - 1/12)/0.3 = 0.7222)
    fpr, pro = pro_curve(score, mask)
    assert _close(fpr, [0, 0, 1 / 6, 1 / 6, 1]) and _close(pro, [0, 1 / 3, 1 / 3, 1, 1])
    assert au_pro(score, mask) == pytest.approx((0.3 - 1 / 9) / 0.3, abs=1e-12)


def test_regions_do_not_connect_across_images():
    # image 0: region {(0,0)} (1 px); image 1: region {(0,0),(0,1)} (2 px), same place.
    # Two regions (not one of 3 px): scoring only image 0's region high gives PRO 1/2, not 1/3.
    masks = np.zeros((2, 3, 3))
    masks[0, 0, 0] = 1
    masks[1, 0, :2] = 1
    maps = np.zeros((2, 3, 3))
    maps[0, 0, 0] = 1.0
    maps[1, 0, :2] = 0.5
    fpr, pro = pro_curve(maps, masks)
    assert _close(fpr[:3], [0, 0, 0]) and _close(pro[:3], [0, 0.5, 1.0])


def test_normal_only_image_changes_only_the_fpr():
    # Case A plus an anomaly-free 2x3 image scored 0.05 everywhere: 4 + 6 = 10 normal pixels.
    # 0.9 -> (0, 1/2); 0.5 -> (2/10, 1); 0.1 -> (3/10, 1); 0.05 -> (9/10, 1); 0.0 -> (1, 1)
    # AU-PRO: 0.3 is a curve point: area = 0.2 * (0.5 + 1)/2 + 0.1 * 1 = 0.25 -> 0.25/0.3
    maps = np.stack([A_MAP, np.full((2, 3), 0.05)])
    masks = np.stack([A_MASK, np.zeros((2, 3))])
    fpr, pro = pro_curve(maps, masks)
    assert _close(fpr, [0, 0, 0.2, 0.3, 0.9, 1]) and _close(pro, [0, 0.5, 1, 1, 1, 1])
    assert au_pro(maps, masks) == pytest.approx(0.25 / 0.3, abs=1e-12)
    # the PRO values (the set of regions) are unchanged by the extra image
    assert _close(np.unique(pro), np.unique(pro_curve(A_MAP, A_MASK)[1]))


def test_perfect_and_inverted_maps():
    rng = np.random.default_rng(1)
    masks = np.zeros((3, 10, 14))
    masks[0, 2:5, 3:9] = 1
    masks[1, 7, 7] = 1
    masks[1, 0:2, 0:2] = 1
    noise = rng.random(masks.shape) * 0.4
    perfect = masks + noise  # every defect pixel above every normal pixel
    assert au_pro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    assert au_pro(masks, masks) == pytest.approx(1.0, abs=1e-12)  # a binary map, all ties
    inverted = (1 - masks) + noise
    assert au_pro(inverted, masks) == pytest.approx(0.0, abs=1e-12)
    # a constant map is one threshold: the curve jumps from (0,0) to (1,1); area to 0.3 = 0.3 * 0.15
    assert au_pro(np.zeros_like(masks), masks) == pytest.approx(0.15, abs=1e-12)


def test_curve_is_monotone_and_ends_at_one():
    maps, masks = _random_problem(np.random.default_rng(5), n=4, h=20, w=17, levels=None)
    fpr, pro = pro_curve(maps, masks)
    assert fpr[0] == 0 and pro[0] == 0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-15)
    assert fpr[-1] == pytest.approx(1.0) and pro[-1] == pytest.approx(1.0)
    assert fpr.size == np.unique(maps).size + 1  # one point per distinct score


# ---------------------------------------------------------------------------------------------
# independent slow reference (loop over thresholds, scikit-image labels, segment-wise area)
# ---------------------------------------------------------------------------------------------


def _reference_au_pro(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    regions = []  # boolean (N, H, W) masks, one per region
    for i in range(maps.shape[0]):
        lab = sk_label(masks[i] > 0, connectivity=2)
        for r in range(1, lab.max() + 1):
            reg = np.zeros(maps.shape, dtype=bool)
            reg[i] = lab == r
            regions.append(reg)
    normal = masks == 0
    xs, ys = [0.0], [0.0]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        pred = maps >= t
        xs.append((pred & normal).sum() / normal.sum())
        ys.append(np.mean([(pred & reg).sum() / reg.sum() for reg in regions]))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_lim) / 2
    return area / limit


def _random_problem(rng, n, h, w, levels):
    """Blob-shaped masks (some images defect-free) and a noisy map that partly follows them."""
    masks = np.zeros((n, h, w))
    for i in range(n):
        if i % 3 == 2:
            continue  # an anomaly-free image
        blob = ndimage.gaussian_filter(rng.standard_normal((h, w)), 1.5)
        masks[i] = blob > np.quantile(blob, 0.85)
    maps = ndimage.gaussian_filter(masks, (0, 1, 1)) + 0.5 * rng.random(masks.shape)
    if levels is not None:  # quantise to create many ties
        maps = np.round(maps * levels) / levels
    return maps, masks


@pytest.mark.parametrize("seed,levels,limit", [(0, None, 0.3), (1, 8, 0.3), (2, 5, 0.3), (3, None, 0.1),
                                               (4, 20, 1.0)])
def test_matches_slow_reference(seed, levels, limit):
    maps, masks = _random_problem(np.random.default_rng(seed), n=4, h=11, w=13, levels=levels)
    assert masks.sum() > 0
    assert au_pro(maps, masks, limit=limit) == pytest.approx(
        _reference_au_pro(maps, masks, limit), abs=1e-10
    )


# ---------------------------------------------------------------------------------------------
# input formats
# ---------------------------------------------------------------------------------------------


def test_numpy_and_torch_agree():
    maps, masks = _random_problem(np.random.default_rng(7), n=3, h=16, w=16, levels=10)
    want = au_pro(maps, masks)
    assert au_pro(torch.from_numpy(maps), torch.from_numpy(masks)) == want
    assert au_pro(torch.from_numpy(maps), masks.astype(bool)) == want
    m32 = maps.astype(np.float32)
    assert au_pro(torch.from_numpy(m32), torch.from_numpy(masks).float()) == au_pro(m32, masks)
    # (N, 1, H, W) tensors as the pipeline produces them
    assert au_pro(torch.from_numpy(maps)[:, None], torch.from_numpy(masks)[:, None]) == want
    assert pixel_auroc(torch.from_numpy(maps), torch.from_numpy(masks)) == pixel_auroc(maps, masks)
    fa, pa = pro_curve(maps, masks)
    fb, pb = pro_curve(torch.from_numpy(maps), torch.from_numpy(masks))
    assert np.array_equal(fa, fb) and np.array_equal(pa, pb)


def test_single_image_2d_equals_stack_of_one():
    assert au_pro(B_MAP, B_MASK) == au_pro(B_MAP[None], B_MASK[None])
    assert pixel_auroc(B_MAP, B_MASK) == pixel_auroc(B_MAP[None], B_MASK[None])


# ---------------------------------------------------------------------------------------------
# AUROC
# ---------------------------------------------------------------------------------------------


def test_pixel_auroc_ties_count_half():
    # 2 defect pixels (0.5, 0.9) vs 2 normal (0.5, 0.1): pairs 0.5v0.5 tie (1/2), 0.5v0.1 win,
    # 0.9 wins both -> (0.5 + 1 + 2)/4 = 0.875
    maps = np.array([[0.5, 0.9], [0.5, 0.1]])
    masks = np.array([[1, 1], [0, 0]])
    assert pixel_auroc(maps, masks) == pytest.approx(0.875, abs=1e-12)


def test_image_auroc_and_image_scores():
    # scores [0.1, 0.4, 0.35, 0.8], labels [0, 0, 1, 1]: 0.35 beats 0.1, loses to 0.4; 0.8 beats
    # both -> 3/4
    assert image_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75, abs=1e-12)
    maps = np.zeros((4, 3, 5))
    maps[0, 1, 1] = 0.1
    maps[1, 2, 4] = 0.4
    maps[2, 0, 0] = 0.35
    maps[3, 1, 2] = 0.8
    assert np.allclose(image_scores(maps), [0.1, 0.4, 0.35, 0.8])
    assert np.allclose(image_scores(maps, reduce="mean"), [0.1 / 15, 0.4 / 15, 0.35 / 15, 0.8 / 15])
    assert image_auroc(maps, [0, 0, 1, 1]) == pytest.approx(0.75, abs=1e-12)
    assert image_auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    # PRO and AUROC see a perfect separation identically
    assert image_auroc([0.1, 0.2, 0.9], [0, 0, 1]) == 1.0


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "maps,masks,match",
    [
        (np.array([[np.nan, 0.1], [0.2, 0.3]]), np.array([[1, 0], [0, 0]]), "NaN"),
        (np.array([[np.inf, 0.1], [0.2, 0.3]]), np.array([[1, 0], [0, 0]]), "infinite"),
        (np.zeros((2, 3, 3)), np.zeros((2, 3, 4)), "shape"),
        (np.zeros((2, 3, 3)), np.zeros((3, 3, 3)), "shape"),
        (np.zeros(5), np.zeros(5), "shape"),
        (np.zeros((2, 2)), np.array([[2, 0], [0, 0]]), "0 or 1"),
        (np.zeros((2, 2)), np.array([[0.5, 0], [0, 0]]), "0 or 1"),
        (np.zeros((2, 2)), np.array([[255, 0], [0, 0]]), "255"),
        (np.zeros((2, 2)), np.zeros((2, 2)), "no anomalous pixel"),
        (np.zeros((2, 2)), np.ones((2, 2)), "no normal pixel"),
        (np.zeros((0, 2, 2)), np.zeros((0, 2, 2)), "empty"),
    ],
)
def test_bad_input_raises_clear_error(maps, masks, match):
    with pytest.raises(ValueError, match=match):
        au_pro(maps, masks)
    with pytest.raises(MetricError, match=match):
        pixel_auroc(maps, masks)


def test_errors_are_glance_errors_too():
    with pytest.raises(GlanceError):
        au_pro(np.zeros((2, 2)), np.zeros((2, 2)))


@pytest.mark.parametrize("limit", [0.0, -0.1, 1.5, float("nan")])
def test_bad_limit(limit):
    with pytest.raises(ValueError, match="limit"):
        au_pro(A_MAP, A_MASK, limit=limit)


@pytest.mark.parametrize(
    "scores,labels,match",
    [
        ([0.1, 0.2, 0.3], [0, 0, 0], "both classes"),
        ([0.1, 0.2, 0.3], [1, 1, 1], "both classes"),
        ([0.1, 0.2, 0.3], [0, 1], "3 scores but 2 labels"),
        ([0.1, float("nan"), 0.3], [0, 1, 1], "NaN"),
        ([0.1, 0.2, 0.3], [0, 2, 1], "0 or 1"),
    ],
)
def test_image_auroc_bad_input(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        image_auroc(scores, labels)


def test_image_scores_bad_reduce():
    with pytest.raises(ValueError, match="reduce"):
        image_scores(np.zeros((2, 3, 3)), reduce="median")


def test_summary_metrics_defines_only_what_the_data_allows():
    from glance_lite.evaluate.metrics import summary_metrics

    maps = np.zeros((3, 4, 4))
    maps[1, 1:3, 1:3] = 1.0
    masks = np.zeros((3, 4, 4), dtype=np.uint8)
    masks[1, 1:3, 1:3] = 1
    labels = np.array([0, 1, 0])
    m = summary_metrics(maps, masks, labels)
    assert m == {"image_AUROC": 1.0, "pixel_AUROC": 1.0, "AU-PRO": 1.0}
    # no masks: image level only; one class of images: no image AUROC
    assert summary_metrics(maps, None, labels) == {"image_AUROC": 1.0, "pixel_AUROC": None, "AU-PRO": None}
    assert summary_metrics(maps, masks, np.array([1, 1, 1]))["image_AUROC"] is None
