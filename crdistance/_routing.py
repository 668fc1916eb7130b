"""Category labels and the items they label, for routed detectors.

An *item* is what one label belongs to: a row of 2-D features, or an image of a
patch set. Used by :class:`crdistance.categories.PerCategoryDetector`.
"""

import math

import numpy as np
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import column_or_1d

from crdistance._array_api import namespace_and_device, to_numpy

__all__ = [
    "category_threshold",
    "encode_labels",
    "item_means",
    "items_of",
    "label_codes",
    "nearest",
    "patch_distances",
    "per_group",
]

BLOCK_ELEMENTS = 1 << 22
"""Elements of the (items, categories, d) differences formed at once in routing."""


def items_of(X_rows, patch_shape):
    """Rows for 2-D input, else the patch sets back in their shape."""
    if patch_shape is None:
        return X_rows
    xp, _ = namespace_and_device(X_rows)
    return xp.reshape(X_rows, (*patch_shape, X_rows.shape[1]))


def item_means(X_rows, patch_shape):
    """Each row, or each image's mean patch feature: (n_items, d)."""
    if patch_shape is None:
        return X_rows
    xp, _ = namespace_and_device(X_rows)
    return xp.mean(xp.reshape(X_rows, (patch_shape[0], -1, X_rows.shape[1])), axis=1)


def nearest(points, centers):
    """Index (NumPy) of the Euclidean-nearest centre of each point, in blocks."""
    xp, _ = namespace_and_device(points)
    step = max(1, BLOCK_ELEMENTS // (centers.shape[0] * centers.shape[1]))
    codes = []
    for start in range(0, points.shape[0], step):
        block = points[start:min(start + step, points.shape[0]), :]
        differences = block[:, None, :] - centers[None, :, :]
        squared = xp.sum(differences * differences, axis=2)
        codes.append(to_numpy(xp.argmin(squared, axis=1)))
    return np.concatenate(codes)


def encode_labels(y, n_items, patch_shape):
    """Sorted distinct labels (a list) and the index of each item's label."""
    y = column_or_1d(to_numpy(y), warn=True)
    if y.shape[0] != n_items:
        what = "images of the patch set" if patch_shape is not None else "samples"
        raise ValueError(
            f"y has {y.shape[0]} category labels but X holds {n_items} {what}: "
            "give one label per sample (per image for patch sets)."
        )
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN or infinity: every sample needs a category.")
    if y.dtype.kind == "O" and any(label is None or label != label for label in y):
        raise ValueError("y contains None or NaN: every sample needs a category.")
    try:
        categories, codes = np.unique(y, return_inverse=True)
    except TypeError as error:
        raise TypeError(
            "y mixes label types that cannot be sorted (e.g. strings and numbers); "
            "use one type for the category labels."
        ) from error
    if type_of_target(y, input_name="y") == "continuous":
        raise ValueError(
            "y holds continuous values; it must hold category labels (strings or "
            "integers), one per sample."
        )
    return categories.tolist(), codes.reshape(-1)


def label_codes(y, categories, X_rows, patch_shape):
    """Index in `categories` of each item's label in `y`; unknown labels raise."""
    n_items = X_rows.shape[0] if patch_shape is None else patch_shape[0]
    labels, codes = encode_labels(y, n_items, patch_shape)
    unknown = sorted(set(labels) - set(categories), key=str)
    if unknown:
        raise ValueError(f"y holds categories {unknown} that were not fitted "
                         f"(categories_ = {categories}).")
    index = {category: code for code, category in enumerate(categories)}
    return np.asarray([index[label] for label in labels])[codes]


def patch_distances(detector, items):
    """The detector's per-patch distances, or its row distances for 2-D input."""
    if hasattr(detector, "score_patches"):
        return detector.score_patches(items)
    if items.ndim != 2:
        raise TypeError(
            f"{type(detector).__name__} has no score_patches, so it cannot give "
            "per-patch distances of patch sets."
        )
    return -detector.score_samples(items)


def category_threshold(detector, category):
    """The detector's distance threshold ``-offset_``, checked positive."""
    offset = getattr(detector, "offset_", None)
    if offset is None:
        raise TypeError(
            f"The detector of category {category!r} ({type(detector).__name__}) "
            "has no offset_ after fit: PerCategoryDetector divides distances by "
            "the threshold -offset_ of the outlier API."
        )
    threshold = -float(offset)
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(
            f"The detector of category {category!r} has the threshold "
            f"{threshold!r} (-offset_), but PerCategoryDetector needs a positive, "
            "finite one to normalise its distances: its training samples may all "
            "score 0 (too few distinct samples?)."
        )
    return threshold


def per_group(items, codes, score):
    """``score(code, items[codes == code])`` for each code present, concatenated
    back in the order of the items."""
    xp, device = namespace_and_device(items)
    parts, order = [], []
    for code in np.unique(codes):
        members = np.flatnonzero(codes == code)
        subset = items if members.size == codes.size else xp.take(
            items, xp.asarray(members, device=device), axis=0)
        parts.append(score(int(code), subset))
        order.append(members)
    if len(parts) == 1:
        return parts[0]
    inverse = np.argsort(np.concatenate(order), kind="stable")
    return xp.take(xp.concat(parts, axis=0), xp.asarray(inverse, device=device),
                   axis=0)
