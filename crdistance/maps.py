"""Per-pixel anomaly maps from per-patch anomaly scores."""

from numbers import Integral, Real

import numpy as np
from scipy.ndimage import gaussian_filter

from crdistance._array_api import to_numpy

__all__ = ["anomaly_maps"]


def anomaly_maps(patch_scores, image_size, *, sigma=4.0):
    """Upsample per-patch scores to per-pixel anomaly maps of the images.

    Each (h, w) grid of patch scores is resized bilinearly to its image's
    size, then smoothed by a Gaussian blur, as PatchCore does.

    Parameters
    ----------
    patch_scores : array of shape (n_images, h, w)
        Per-patch anomaly scores (larger = more anomalous), e.g. the output of
        ``CRDetector.score_patches`` on ``PatchFeaturizer`` features. NumPy,
        torch (on any device) or CuPy.
    image_size : tuple (height, width) or sequence of n_images such tuples
        Size of the maps: one size for all images, or one per image for
        images of different sizes.
    sigma : float, default=4.0
        Standard deviation in pixels of the Gaussian blur (truncated at
        4 sigma, reflecting borders); 0 turns the blur off.

    Returns
    -------
    maps : ndarray of shape (n_images, height, width), or list of ndarrays
        A NumPy array for a single `image_size`, a list of ``n_images``
        arrays of shape (height_i, width_i) for a sequence of sizes. Floating
        point: float32 for float32 (or smaller) scores, float64 otherwise.

    Notes
    -----
    Bilinear resizing follows ``torch.nn.functional.interpolate`` with
    ``align_corners=False``: a patch score sits at the centre of the image
    region it covers and borders repeat the edge patch. The maps cover what the
    featurizer saw: after a centre crop, pass the crop's size and place the
    maps on the cropped region.

    References
    ----------
    .. [1] K. Roth et al., "Towards Total Recall in Industrial Anomaly
       Detection", CVPR 2022.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.maps import anomaly_maps
    >>> scores = np.zeros((2, 28, 28), dtype=np.float32)
    >>> scores[0, 7, 21] = 1.0
    >>> maps = anomaly_maps(scores, (224, 224))
    >>> maps.shape, maps.dtype
    ((2, 224, 224), dtype('float32'))
    >>> row, column = np.unravel_index(np.argmax(maps[0]), maps[0].shape)
    >>> int(row) // 8, int(column) // 8  # the 8 x 8 pixels of patch (7, 21)
    (7, 21)
    >>> [m.shape for m in anomaly_maps(scores, [(300, 200), (120, 160)])]
    [(300, 200), (120, 160)]
    """
    scores = _as_numpy_scores(patch_scores)
    if not isinstance(sigma, Real) or sigma < 0:
        raise ValueError(f"sigma must be a non-negative number, got {sigma!r}.")
    if _is_size(image_size):
        return _upsample_and_blur(scores, image_size, sigma)
    sizes = list(image_size) if isinstance(image_size, list | tuple) else None
    if sizes is None or not all(_is_size(size) for size in sizes):
        raise ValueError(
            "image_size must be a (height, width) tuple of positive ints or a "
            f"sequence of such tuples, got {image_size!r}."
        )
    if len(sizes) != len(scores):
        raise ValueError(
            f"Got {len(sizes)} image sizes for {len(scores)} score maps; pass one "
            "size per image or a single size."
        )
    return [
        _upsample_and_blur(grid[None], size, sigma)[0]
        for grid, size in zip(scores, sizes, strict=True)
    ]


def _as_numpy_scores(patch_scores):
    scores = to_numpy(patch_scores)
    if scores.ndim != 3 or 0 in scores.shape:
        raise ValueError(
            "patch_scores must be a non-empty array of shape (n_images, h, w), got "
            f"shape {scores.shape}."
        )
    return scores.astype(np.result_type(scores.dtype, np.float32), copy=False)


def _is_size(size):
    return (
        isinstance(size, list | tuple)
        and len(size) == 2
        and all(isinstance(s, Integral) and s >= 1 for s in size)
    )


def _upsample_and_blur(scores, size, sigma):
    """Resize (n, h, w) grids to (n, *size) bilinearly, then blur each map."""
    height, width = size
    rows = _bilinear_weights(height, scores.shape[1]).astype(scores.dtype)
    columns = _bilinear_weights(width, scores.shape[2]).astype(scores.dtype)
    maps = rows @ scores @ columns.T
    if sigma == 0:
        return maps
    return gaussian_filter(maps, sigma=(0, sigma, sigma))


def _bilinear_weights(n_out, n_in):
    """Matrix (n_out, n_in) of 1-D linear interpolation, half-pixel centres.

    Output pixel i samples input coordinate (i + 0.5) n_in / n_out - 0.5,
    clamped to [0, n_in - 1], between its two nearest input pixels.
    """
    source = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    source = np.clip(source, 0, n_in - 1)
    lower = np.floor(source).astype(int)
    upper = np.minimum(lower + 1, n_in - 1)
    fraction = source - lower
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), lower), 1 - fraction)
    np.add.at(weights, (np.arange(n_out), upper), fraction)
    return weights
