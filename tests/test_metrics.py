import time

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from crdistance import metrics
from crdistance.metrics import aupro, image_auroc, pixel_auroc, pro_curve


def reference_aupro(masks, maps, fpr_limit):
    """Slow AUPRO: a loop over thresholds, then over the regions of each image."""
    labeled = [ndimage.label(mask, structure=np.ones((3, 3))) for mask in masks]
    regions = [
        anomaly_map[regions_of_image == k]
        for (regions_of_image, n_regions), anomaly_map in zip(
            labeled, maps, strict=True
        )
        for k in range(1, n_regions + 1)
    ]
    good = np.concatenate([m[~mask] for mask, m in zip(masks, maps, strict=True)])
    points = [(0.0, 0.0)]
    for threshold in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        overlaps = [np.mean(region >= threshold) for region in regions]
        points.append((np.mean(good >= threshold), np.mean(overlaps)))
    area = 0.0
    for (fpr0, pro0), (fpr1, pro1) in zip(points, points[1:], strict=False):
        if fpr0 >= fpr_limit:
            break
        if fpr1 > fpr_limit:
            pro1 = pro0 + (fpr_limit - fpr0) / (fpr1 - fpr0) * (pro1 - pro0)
            fpr1 = fpr_limit
        area += (fpr1 - fpr0) * (pro0 + pro1) / 2
    return area / fpr_limit


def random_masks_and_maps(rng, shapes, decimals=None, dtype=np.float64):
    """Blob-like masks (several regions, some touching diagonally) and maps of
    both signs that favour them; ``decimals`` rounds the maps to create ties
    (and both -0.0 and 0.0)."""
    masks, maps = [], []
    for shape in shapes:
        noise = ndimage.gaussian_filter(rng.normal(size=shape), 1.0)
        mask = noise > np.quantile(noise, 0.8)
        anomaly_map = rng.random(shape) + 0.5 * mask - 0.5
        if decimals is not None:
            anomaly_map = np.round(anomaly_map, decimals)
        masks.append(mask)
        maps.append(anomaly_map.astype(dtype))
    return masks, maps


# float32 and float16 maps are sorted by their bits, others by an argsort.
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_matches_brute_force_reference(rng, decimals, fpr_limit, dtype):
    shapes = [(12, 15), (10, 10), (8, 20)]
    masks, maps = random_masks_and_maps(rng, shapes, decimals, dtype)
    masks[1][:] = False  # an image without defects contributes good pixels only
    expected = reference_aupro(masks, maps, fpr_limit)
    assert aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-9)


def test_pro_curve_runs_from_origin_to_one(rng):
    masks, maps = random_masks_and_maps(rng, [(16, 16)] * 3, decimals=2)
    fpr, pro = pro_curve(masks, maps)
    assert (fpr[0], pro[0]) == (0.0, 0.0)
    assert fpr[-1] == 1.0 and pro[-1] == pytest.approx(1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)
    assert len(fpr) == len(np.unique(np.stack(maps))) + 1


def test_aupro_extremes():
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:3, 1:3] = True
    assert aupro([mask], [mask.astype(float)]) == 1.0
    assert aupro([mask], [(~mask).astype(float)]) == 0.0
    # One threshold: the curve is the diagonal, whose area is limit^2 / 2.
    assert aupro([mask], [np.ones((6, 6))], fpr_limit=0.3) == pytest.approx(0.15)


def test_aupro_weighs_regions_alike_unlike_pixel_auroc():
    mask = np.zeros((10, 10), dtype=bool)
    mask[0, 0] = True  # 1 pixel
    mask[5:9, 5:9] = True  # 16 pixels
    small_found, large_found = np.full((10, 10), 0.5), np.full((10, 10), 0.5)
    small_found[0, 0], small_found[5:9, 5:9] = 1.0, 0.0
    large_found[0, 0], large_found[5:9, 5:9] = 0.0, 1.0
    assert aupro([mask], [small_found]) == pytest.approx(aupro([mask], [large_found]))
    assert pixel_auroc([mask], [large_found]) > pixel_auroc([mask], [small_found])


def test_aupro_regions_are_eight_connected():
    mask = np.zeros((5, 5), dtype=bool)
    mask[1, 1] = mask[2, 2] = True  # touch at a corner: one region
    anomaly_map = np.full((5, 5), 0.5)
    anomaly_map[1, 1], anomaly_map[2, 2] = 1.0, 0.0
    # Half of the one region is found at FPR 0, the rest only at FPR 1.
    assert aupro([mask], [anomaly_map]) == pytest.approx(0.5)


def test_maps_as_list_array_and_torch_agree(rng):
    torch = pytest.importorskip("torch")
    masks, maps = random_masks_and_maps(rng, [(9, 11)] * 4)
    expected = aupro(masks, maps)
    assert aupro(np.stack(masks), np.stack(maps)) == expected
    assert aupro(masks, [torch.from_numpy(m) for m in maps]) == expected
    assert pixel_auroc(np.stack(masks), torch.from_numpy(np.stack(maps))) == (
        pixel_auroc(masks, maps)
    )


def test_mask_values_are_binarised(rng):
    masks, maps = random_masks_and_maps(rng, [(9, 11)] * 2)
    as_255 = [mask.astype(np.uint8) * 255 for mask in masks]
    assert aupro(as_255, maps) == aupro(masks, maps)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
@pytest.mark.parametrize("decimals", [None, 1])
def test_pixel_and_image_auroc_match_sklearn(rng, decimals, dtype):
    masks, maps = random_masks_and_maps(rng, [(12, 15), (7, 9)], decimals)
    maps = [(m * 10).astype(dtype) for m in maps]
    pooled_masks = np.concatenate([mask.ravel() for mask in masks])
    pooled_maps = np.concatenate([m.ravel() for m in maps])
    assert pixel_auroc(masks, maps) == pytest.approx(
        roc_auc_score(pooled_masks, pooled_maps), abs=1e-12
    )
    labels = rng.integers(0, 2, 40)
    scores = np.round(rng.random(40) + 0.3 * labels, decimals or 8).astype(dtype)
    assert image_auroc(labels, scores) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-12
    )
    assert image_auroc(labels.astype(bool), list(scores)) == image_auroc(labels, scores)


def test_aupro_is_fast_on_hundreds_of_maps(rng):
    n_images, size = 100, 224
    masks = np.zeros((n_images, size, size), dtype=bool)
    for index, (row, col) in enumerate(rng.integers(10, size - 10, (n_images, 2))):
        masks[index, row - 5 : row + 5, col - 3 : col + 3] = index % 2 == 0
    maps = rng.random(masks.shape, dtype=np.float32) + np.float32(0.2) * masks
    start = time.perf_counter()
    value = aupro(masks, maps)
    # A loop over thresholds would take minutes; sorting takes about a second.
    assert time.perf_counter() - start < 10.0
    # Good pixels ~ U(0, 1), region pixels ~ U(0.2, 1.2): at FPR f the
    # threshold is 1 - f and the overlap f + 0.2, so the area is 0.105 / 0.3.
    assert value == pytest.approx(0.35, abs=0.01)


MASK = np.array([[0, 1], [0, 0]])
MAP = np.array([[0.1, 0.9], [0.2, 0.3]])


@pytest.mark.parametrize(
    ("masks", "maps", "error", "match"),
    [
        ([MASK, MASK], [MAP], ValueError, "2 masks but 1 anomaly maps"),
        ([], [], ValueError, "no masks"),
        ([MASK], [MAP[:, :1]], ValueError, "Mask and map 0 must be 2-D"),
        ([MASK[None]], [MAP[None]], ValueError, "Mask and map 0 must be 2-D"),
        ([np.zeros((2, 2))], [MAP], ValueError, "no defective pixels"),
        ([np.ones((2, 2))], [MAP], ValueError, "no good pixels"),
        ([MASK], [np.full((2, 2), np.nan)], ValueError, "NaN or infinity"),
        ([MASK], [MAP.astype(complex)], TypeError, "real numbers"),
    ],
)
@pytest.mark.parametrize("metric", [aupro, pixel_auroc])
def test_pixel_metrics_reject_bad_input(metric, masks, maps, error, match):
    with pytest.raises(error, match=match):
        metric(masks, maps)


@pytest.mark.parametrize("fpr_limit", [0.0, 1.5, -0.1, "0.3"])
def test_aupro_rejects_bad_fpr_limit(fpr_limit):
    with pytest.raises(ValueError, match="fpr_limit must be a float in"):
        aupro([MASK], [MAP], fpr_limit=fpr_limit)


@pytest.mark.parametrize(
    ("labels", "scores", "match"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "must be 0/1 or boolean"),
        ([0, 1], [0.1, 0.2, 0.3], "same length"),
        ([1, 1], [0.1, 0.2], "no good images"),
        ([0, 0], [0.1, 0.2], "no defective images"),
        ([0, 1], [0.1, np.inf], "NaN or infinity"),
    ],
)
def test_image_auroc_rejects_bad_input(labels, scores, match):
    with pytest.raises(ValueError, match=match):
        image_auroc(labels, scores)


def test_all_and_doctests():
    import doctest

    public = ["aupro", "image_auroc", "pixel_auroc", "pro_curve"]
    assert sorted(metrics.__all__) == public
    assert doctest.testmod(metrics).failed == 0
