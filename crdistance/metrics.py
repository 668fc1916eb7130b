"""Anomaly detection and localisation metrics: image AUROC, pixel AUROC, AUPRO.

Scores and maps are anomaly scores, the larger the more anomalous: pass
``-detector.score_samples(X)`` as image scores (score_samples is higher for
normal samples) and maps made from ``detector.score_patches(X)``.
"""

from numbers import Real

import numpy as np
from scipy import ndimage

from crdistance._array_api import to_numpy
from crdistance._validation import check_finite

__all__ = ["aupro", "image_auroc", "pixel_auroc", "pro_curve"]

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def image_auroc(labels, scores):
    """Area under the ROC curve of image-level anomaly scores.

    Parameters
    ----------
    labels : array-like of shape (n_images,)
        1 (or True) for defective images, 0 for good ones.
    scores : array-like of shape (n_images,)
        Anomaly scores, larger = more anomalous (NumPy, torch, ...).

    Returns
    -------
    auroc : float
        Probability that a defective image scores higher than a good one.

    Examples
    --------
    >>> from crdistance.metrics import image_auroc
    >>> image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    labels = _binary(np.ravel(to_numpy(labels)))
    scores = _finite(np.ravel(to_numpy(scores)), "scores")
    if labels.shape != scores.shape:
        raise ValueError(
            f"labels and scores must have the same length, got {labels.size} "
            f"and {scores.size}."
        )
    return _auroc(labels, scores, "images")


def pixel_auroc(masks, maps):
    """Area under the ROC curve of all pixels of all images pooled.

    Parameters
    ----------
    masks : sequence of n_images arrays of shape (height_i, width_i), or array
        of shape (n_images, height, width)
        Ground truth; non-zero pixels are defective.
    maps : sequence of n_images arrays, or array, of the masks' shapes
        Anomaly maps, larger = more anomalous.

    Returns
    -------
    auroc : float
        Probability that a defective pixel scores higher than a good one.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.metrics import pixel_auroc
    >>> mask = np.array([[0, 0], [0, 1]])
    >>> pixel_auroc([mask], [np.array([[0.1, 0.2], [0.3, 0.9]])])
    1.0
    """
    pairs = _checked_pairs(masks, maps)
    defective = np.concatenate([mask.ravel() for mask, _ in pairs])
    return _auroc(defective, _pooled_scores(pairs), "pixels")


def pro_curve(masks, maps):
    """Per-region overlap against false positive rate, at every threshold.

    A region is a connected component (8-connected) of a mask. At threshold t
    the per-region overlap (PRO) is the share of a region's pixels scoring at
    least t, averaged over all regions of all images; the false positive rate
    is the share of all good pixels scoring at least t (Bergmann et al., 2021).

    Parameters
    ----------
    masks : sequence of n_images arrays of shape (height_i, width_i), or array
        of shape (n_images, height, width)
        Ground truth; non-zero pixels are defective.
    maps : sequence of n_images arrays, or array, of the masks' shapes
        Anomaly maps, larger = more anomalous.

    Returns
    -------
    fpr : ndarray of shape (n_thresholds + 1,)
        Non-decreasing false positive rates, from 0 to 1.
    pro : ndarray of shape (n_thresholds + 1,)
        Per-region overlap at each false positive rate, from 0 to 1.

    Notes
    -----
    All pixels are sorted once by score; the curve is then a cumulative sum of
    per-pixel weights: 1 / n_good for a good pixel and 1 / (n_regions *
    region size) for a pixel of a region. Equal scores form one threshold. The
    cost is O(P log P) for P pixels, whatever the number of regions; float32
    (or float16) maps sort several times faster than other dtypes.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.metrics import pro_curve
    >>> mask = np.zeros((3, 4), dtype=bool)
    >>> mask[0, 0] = True  # region 1: one pixel
    >>> mask[2, 2:] = True  # region 2: two pixels
    >>> anomaly_map = np.zeros((3, 4))
    >>> anomaly_map[0, 0], anomaly_map[1, 1], anomaly_map[2, 2] = 1.0, 0.7, 0.5
    >>> fpr, pro = pro_curve([mask], [anomaly_map])
    >>> fpr.round(3)
    array([0.   , 0.   , 0.111, 0.111, 1.   ])
    >>> pro
    array([0.  , 0.5 , 0.5 , 0.75, 1.  ])
    """
    pairs = _checked_pairs(masks, maps)
    region_ids, n_regions = _region_ids([mask for mask, _ in pairs])
    _check_both_classes(region_ids != 0, "pixels")
    sizes = np.bincount(region_ids)
    is_good = np.zeros(n_regions + 1)
    is_good[0] = 1.0
    overlap_weights = np.zeros(n_regions + 1)
    overlap_weights[1:] = 1.0 / (n_regions * sizes[1:])
    false_positives, pro = _cumulative_at_thresholds(
        _pooled_scores(pairs), region_ids, [is_good, overlap_weights]
    )
    return false_positives / sizes[0], np.clip(pro, 0.0, 1.0)


def aupro(masks, maps, *, fpr_limit=0.3):
    """Area under the per-region overlap curve up to a false positive rate.

    The localisation metric of MVTec AD (Bergmann et al., 2021), as in its
    evaluation code and anomalib: the PRO curve of :func:`pro_curve`
    integrated (trapezoidal rule, interpolated at the limit) over the false
    positive rates from 0 to ``fpr_limit``, divided by ``fpr_limit``. Unlike
    pixel AUROC it weighs small and large defects alike.

    Parameters
    ----------
    masks : sequence of n_images arrays of shape (height_i, width_i), or array
        of shape (n_images, height, width)
        Ground truth; non-zero pixels are defective. At least one defective
        and one good pixel are needed; images may have no defect.
    maps : sequence of n_images arrays, or array, of the masks' shapes
        Anomaly maps, larger = more anomalous.
    fpr_limit : float in (0, 1], default=0.3
        Upper bound of the integration.

    Returns
    -------
    aupro : float
        Normalised area in [0, 1]; a random map scores about
        ``fpr_limit / 2``.

    References
    ----------
    .. [1] P. Bergmann, K. Batzner, M. Fauser, D. Sattlegger, C. Steger. "The
       MVTec Anomaly Detection Dataset: A Comprehensive Real-World Dataset for
       Unsupervised Anomaly Detection", IJCV 129, 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.metrics import aupro
    >>> mask = np.zeros((4, 4), dtype=bool)
    >>> mask[0, 0] = mask[3, 3] = True  # two regions
    >>> perfect = mask.astype(float)
    >>> aupro([mask], [perfect])
    1.0
    >>> one_region_found = np.full((4, 4), 0.5)
    >>> one_region_found[0, 0], one_region_found[3, 3] = 1.0, 0.0
    >>> round(aupro([mask], [one_region_found]), 3)
    0.5
    """
    if not isinstance(fpr_limit, Real) or not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be a float in (0, 1], got {fpr_limit!r}.")
    fpr, pro = pro_curve(masks, maps)
    inside = np.searchsorted(fpr, fpr_limit, side="right")
    if fpr[inside - 1] < fpr_limit:
        step = (fpr_limit - fpr[inside - 1]) / (fpr[inside] - fpr[inside - 1])
        pro_at_limit = pro[inside - 1] + step * (pro[inside] - pro[inside - 1])
        fpr = np.append(fpr[:inside], fpr_limit)
        pro = np.append(pro[:inside], pro_at_limit)
    else:
        fpr, pro = fpr[:inside], pro[:inside]
    return float(np.trapezoid(pro, fpr) / fpr_limit)


def _auroc(positive, scores, what):
    """ROC AUC by the trapezoidal rule over every distinct score."""
    _check_both_classes(positive, what)
    true_positives, false_positives = _cumulative_at_thresholds(
        scores, positive.astype(np.int64), [np.array([0.0, 1.0]), np.array([1.0, 0.0])]
    )
    tpr = true_positives / true_positives[-1]
    return float(np.trapezoid(tpr, false_positives / false_positives[-1]))


def _cumulative_at_thresholds(scores, ids, weights):
    """Sum of ``weight[id]`` over the pixels scoring >= t, at every distinct t.

    Parameters
    ----------
    scores : ndarray of shape (n_pixels,)
        Finite scores.
    ids : ndarray of shape (n_pixels,), int64
        Small non-negative integers (below 2^32) that index the weights.
    weights : list of ndarray of shape (max(ids) + 1,)
        Weight of each id.

    Returns
    -------
    sums : list of ndarray of shape (n_distinct_scores + 1,)
        For each weight, the sums for t above every score (0), then at each
        distinct score in decreasing order.
    """
    if scores.dtype.kind == "f" and scores.dtype.itemsize <= 4:
        # Sorting 64-bit keys, the score's bits above the pixel's id, is much
        # faster than an argsort. IEEE 754 floats order as unsigned integers
        # once negative ones have every bit flipped and the others their sign
        # bit set (adding 0 first turns -0.0 into 0.0); flipping every bit of
        # that reverses the order.
        bits = (scores.astype(np.float32) + np.float32(0.0)).view(np.uint32)
        descending = np.where(bits >> 31 == 1, bits, ~bits & np.uint32(2**31 - 1))
        keys = np.sort((descending.astype(np.uint64) << 32) | ids.astype(np.uint64))
        sorted_scores, sorted_ids = keys >> 32, keys & np.uint64(2**32 - 1)
    else:
        order = np.argsort(scores)[::-1]
        sorted_scores, sorted_ids = scores[order], ids[order]
    last_of_ties = np.append(np.flatnonzero(np.diff(sorted_scores)), scores.size - 1)
    return [
        np.insert(np.cumsum(weight[sorted_ids])[last_of_ties], 0, 0.0)
        for weight in weights
    ]


def _pooled_scores(pairs):
    return np.concatenate([anomaly_map.ravel() for _, anomaly_map in pairs])


def _region_ids(masks):
    """Id of each pixel of all masks: 0 if good, else 1 + the index of its
    region (8-connected component) among the regions of all masks."""
    ids, n_regions = [], 0
    for mask in masks:
        regions, n_regions_of_mask = ndimage.label(mask, structure=EIGHT_CONNECTED)
        ids.append(np.where(regions > 0, regions + n_regions, 0).ravel())
        n_regions += n_regions_of_mask
    return np.concatenate(ids).astype(np.int64), n_regions


def _checked_pairs(masks, maps):
    """(bool mask, finite float map) pairs of matching 2-D shapes."""
    if len(masks) != len(maps):
        raise ValueError(
            f"Got {len(masks)} masks but {len(maps)} anomaly maps; one map is "
            "needed per mask."
        )
    if len(masks) == 0:
        raise ValueError("Got no masks and no anomaly maps.")
    pairs = []
    for index, (mask, anomaly_map) in enumerate(zip(masks, maps, strict=True)):
        mask = np.asarray(to_numpy(mask))
        anomaly_map = _finite(np.asarray(to_numpy(anomaly_map)), "maps")
        if mask.ndim != 2 or mask.shape != anomaly_map.shape:
            raise ValueError(
                f"Mask and map {index} must be 2-D arrays of the same shape, got "
                f"{mask.shape} and {anomaly_map.shape}; resize the maps to the "
                "masks (crdistance.maps.anomaly_maps)."
            )
        pairs.append((mask != 0, anomaly_map))
    return pairs


def _check_both_classes(defective, what):
    n_defective = np.count_nonzero(defective)
    if n_defective in (0, defective.size):
        kind = "good" if n_defective else "defective"
        raise ValueError(f"Found no {kind} {what}; both kinds are needed.")


def _binary(labels):
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0/1 or boolean, got {np.unique(labels)}.")
    return labels.astype(bool)


def _finite(values, name):
    if values.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {values.dtype}.")
    return check_finite(values, f"{name} contain NaN or infinity.")
