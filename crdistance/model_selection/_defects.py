"""Synthetic defects on normal images, to configure a detector without labels.

A defect is a Perlin-noise blob (irregular, contiguous, as in DRAEM and CSE)
inside a random ellipse, filled by one of four processes that leave different
traces in CNN features:

- ``"texture"``: the blob shows a rotated region of *another* normal image (a
  foreign texture from the same product: a misplaced part, a contamination);
- ``"blur"``: the blob is blurred (CSE's blurry defects: a soft, low-contrast
  change that only the fine features see);
- ``"noise"``: the blob is covered by smooth random colour noise (a stain);
- ``"intensity"``: the blob is darkened or brightened (a hole, a spot, a scratch).

The fill is blended in with a random opacity, so defects range from faint to
plain. Everything is NumPy and SciPy on uint8 arrays: no torch.
"""

from numbers import Integral, Real

import numpy as np
from scipy.ndimage import gaussian_filter
from sklearn.utils import check_random_state

__all__ = [
    "DEFECT_KINDS", "foreground", "perlin_noise", "read_image", "synthesize_defects",
]

DEFECT_KINDS = ("texture", "blur", "noise", "intensity")


def perlin_noise(shape, scale, rng):
    """2-D Perlin gradient noise of ``shape``, about ``scale`` lattice cells a side.

    Parameters
    ----------
    shape : tuple of int (height, width)
        Output size.
    scale : int
        Lattice cells along the longer side (larger: finer blobs).
    rng : numpy.random.RandomState
        Source of the random gradients.

    Returns
    -------
    noise : ndarray of shape `shape`, float64
        Smooth noise, roughly in [-1, 1], zero on the lattice points.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.model_selection import perlin_noise
    >>> noise = perlin_noise((32, 48), 4, np.random.RandomState(0))
    >>> noise.shape, bool(np.abs(noise).max() <= 1.5)
    ((32, 48), True)
    """
    height, width = shape
    cells_y = max(1, round(scale * height / max(shape)))
    cells_x = max(1, round(scale * width / max(shape)))
    angles = rng.uniform(0, 2 * np.pi, (cells_y + 1, cells_x + 1))
    gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    y = np.linspace(0, cells_y, height, endpoint=False)[:, None]
    x = np.linspace(0, cells_x, width, endpoint=False)[None, :]
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = y - y0, x - x0

    def corner(dy, dx):
        g = gradients[y0 + dy, x0 + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t):
        return t * t * t * (t * (t * 6 - 15) + 10)

    wy, wx = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - wx) + corner(0, 1) * wx
    bottom = corner(1, 0) * (1 - wx) + corner(1, 1) * wx
    return np.sqrt(2) * (top * (1 - wy) + bottom * wy)


def foreground(image):
    """Where the object is, roughly: pixels that differ from the border colour.

    An object on a plain background (a screw, a tyre) differs from the median
    colour of the image border; a texture filling the image (a tile) does not
    separate, and then every pixel counts.

    Parameters
    ----------
    image : ndarray of shape (H, W) or (H, W, C)
        An image.

    Returns
    -------
    mask : ndarray of bool, shape (H, W)
        The object's pixels, or every pixel.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.model_selection import foreground
    >>> image = np.full((32, 32), 220, dtype=np.uint8)
    >>> image[8:24, 12:20] = 30
    >>> mask = foreground(image)
    >>> bool(mask[16, 16]), bool(mask[1, 1])
    (True, False)
    """
    gray = image.astype(np.float64)
    if gray.ndim == 3:
        gray = gray.mean(axis=2)
    gray = gaussian_filter(gray, 2.0)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    difference = np.abs(gray - np.median(border))
    mask = difference > max(12.0, 0.3 * np.percentile(difference, 99))
    share = mask.mean()
    return mask if 0.02 <= share <= 0.9 else np.ones_like(mask)


def _blob(shape, max_area, rng, where=None):
    """A non-empty boolean Perlin blob inside a random ellipse centred in
    ``where`` (a boolean mask; anywhere when None)."""
    height, width = shape
    candidates = None if where is None else np.flatnonzero(where)
    for _ in range(20):
        # An ellipse of at most max_area of the image, aspect ratio 1:2 to 2:1.
        area = rng.uniform(0.1, 1.0) * max_area * height * width
        aspect = np.exp(rng.uniform(-np.log(2), np.log(2)))
        ry = np.sqrt(area / (np.pi * aspect))
        rx = aspect * ry
        if candidates is None or candidates.size == 0:
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        else:
            cy, cx = np.unravel_index(candidates[rng.randint(candidates.size)], shape)
        yy, xx = np.ogrid[:height, :width]
        ellipse = ((yy - cy) / max(ry, 1)) ** 2 + ((xx - cx) / max(rx, 1)) ** 2 <= 1
        noise = perlin_noise(shape, int(rng.randint(4, 17)), rng)
        blob = ellipse & (noise > rng.uniform(-0.2, 0.3))
        if blob.sum() >= 4:
            return blob
    return ellipse | (np.hypot(yy - cy, xx - cx) <= 2)  # a small disc at worst


def _fill(kind, image, donor, rng):
    """The defect's content over the whole image (float, same shape)."""
    image = image.astype(np.float64)
    if kind == "texture":
        patch = np.rot90(donor, rng.randint(4))
        if patch.shape[:2] != image.shape[:2]:
            # Tile or crop the donor to the image's size.
            reps = (-(-image.shape[0] // patch.shape[0]),
                    -(-image.shape[1] // patch.shape[1]))
            patch = np.tile(patch, reps + (1,) * (patch.ndim - 2))
            patch = patch[: image.shape[0], : image.shape[1]]
        shift = (rng.randint(image.shape[0]), rng.randint(image.shape[1]))
        return np.roll(patch, shift, axis=(0, 1)).astype(np.float64)
    if kind == "blur":
        sigma = rng.uniform(2, 6) * max(image.shape[:2]) / 224
        return gaussian_filter(image, (sigma, sigma, 0)[: image.ndim])
    if kind == "noise":
        gray = image.ndim == 2 or bool(np.all(image == image[..., :1]))
        channels = 1 if gray else image.shape[2]
        noise = np.stack(
            [perlin_noise(image.shape[:2], int(rng.randint(8, 33)), rng)
             for _ in range(channels)], axis=-1,
        )
        noise = np.broadcast_to(noise, image.shape[:2] + (image.shape[2:] or (1,)))
        noise = noise.reshape(image.shape)
        return image.mean() + 128 * noise
    # intensity
    factor = rng.choice([rng.uniform(0.2, 0.6), rng.uniform(1.4, 2.0)])
    return image * factor + rng.uniform(-30, 30)


def synthesize_defects(images, *, kinds=DEFECT_KINDS, max_area=0.05,
                       opacity=(0.5, 1.0), placement="object", n_per_image=1,
                       random_state=None, kinds_out=False):
    """Defective copies of normal images, with their defect masks.

    Parameters
    ----------
    images : list of ndarray of shape (H, W) or (H, W, C), uint8
        Normal images (they may differ in size). At least two for the
        ``"texture"`` kind, whose donor is another image of the list.
    kinds : sequence of {"texture", "blur", "noise", "intensity"}, \
            default=DEFECT_KINDS
        Defect processes, drawn uniformly per defect (see the module docstring).
    max_area : float in (0, 1], default=0.05
        Largest share of an image the defect's bounding ellipse may cover; the
        blob inside covers less. Real defects are often smaller than 1 %.
    opacity : tuple (low, high), default=(0.5, 1.0)
        Range of the blending weight of the fill (1: the fill replaces the image).
    placement : {"object", "anywhere"}, default="object"
        ``"object"``: defects are centred on the object, where the image
        differs from its border colour (:func:`foreground`; the whole image
        when that finds no object, e.g. a texture); ``"anywhere"``: uniformly.
    n_per_image : int, default=1
        Defective copies of each image.
    random_state : int, RandomState instance or None, default=None
        Seeds the masks, kinds and fills.
    kinds_out : bool, default=False
        Also return the kind of each defect.

    Returns
    -------
    defective : list of ndarray, uint8
        ``n_per_image`` copies of each image in order, each with one defect.
    masks : list of ndarray of bool, shape (H, W) of its image
        Where each defect is.
    kinds : list of str
        Returned with ``kinds_out=True``: the process of each defect.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.model_selection import synthesize_defects
    >>> rng = np.random.default_rng(0)
    >>> normal = [rng.integers(100, 156, (64, 64), dtype=np.uint8) for _ in range(3)]
    >>> defective, masks = synthesize_defects(normal, random_state=0)
    >>> len(defective), defective[0].shape, bool(masks[0].any())
    (3, (64, 64), True)
    """
    rng = check_random_state(random_state)
    images = [np.asarray(image) for image in images]
    unknown = sorted(set(kinds) - set(DEFECT_KINDS))
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {DEFECT_KINDS}, "
                         f"got {list(kinds)}.")
    if not images:
        raise ValueError("Expected at least one normal image, got none.")
    if "texture" in kinds and len(images) < 2:
        raise ValueError("The 'texture' kind takes its fill from another image: "
                         "pass at least two images, or leave it out of kinds.")
    if not (isinstance(max_area, Real) and 0 < max_area <= 1):
        raise ValueError(f"max_area must be a share in (0, 1], got {max_area!r}.")
    if not isinstance(n_per_image, Integral) or n_per_image < 1:
        raise ValueError(
            f"n_per_image must be a positive integer, got {n_per_image!r}.")
    if placement not in ("object", "anywhere"):
        raise ValueError(
            f"placement must be 'object' or 'anywhere', got {placement!r}.")
    low, high = (tuple(opacity) + (None, None))[:2]
    if not (isinstance(low, Real) and isinstance(high, Real) and 0 < low <= high <= 1):
        raise ValueError(f"opacity must be (low, high) with 0 < low <= high <= 1, "
                         f"got {opacity}.")
    for index, image in enumerate(images):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
            min(image.shape[:2]) < 8
        ):
            raise ValueError(
                f"images[{index}] must be a uint8 array (H, W) or (H, W, C) of at "
                f"least 8 x 8 pixels, got {image.dtype} of shape {image.shape}."
            )
    defective, masks, drawn = [], [], []
    for index, image in enumerate(images):
        where = foreground(image) if placement == "object" else None
        for _ in range(n_per_image):
            kind = kinds[rng.randint(len(kinds))]
            donor = None
            if kind == "texture":
                other = (index + rng.randint(1, len(images))) % len(images)
                donor = _match_channels(images[other], image)
            mask = _blob(image.shape[:2], max_area, rng, where)
            fill = _fill(kind, image, donor, rng)
            alpha = rng.uniform(low, high) * gaussian_filter(mask.astype(np.float64), 1)
            if image.ndim == 3:
                alpha = alpha[..., None]
            out = (1 - alpha) * image + alpha * fill
            defective.append(np.clip(np.rint(out), 0, 255).astype(np.uint8))
            masks.append(mask)
            drawn.append(kind)
    return (defective, masks, drawn) if kinds_out else (defective, masks)


def _match_channels(donor, image):
    """``donor`` with the channel layout of ``image``."""
    if donor.ndim == image.ndim and donor.shape[2:] == image.shape[2:]:
        return donor
    gray = donor if donor.ndim == 2 else donor.mean(axis=2)
    if image.ndim == 2:
        return gray
    return np.repeat(gray[..., None], image.shape[2], axis=2)


def read_image(image):
    """A uint8 array of an image path or array (RGB for files).

    Parameters
    ----------
    image : path-like or ndarray of uint8
        An image file, or an image array (returned as it is).

    Returns
    -------
    array : ndarray of uint8, shape (H, W) or (H, W, C)
        The image; files are read and converted to RGB.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.model_selection import read_image
    >>> read_image(np.zeros((4, 4), dtype=np.uint8)).shape
    (4, 4)
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"Expected uint8 image arrays, got {image.dtype}.")
        return image
    from PIL import Image

    with Image.open(image) as opened:
        return np.asarray(opened.convert("RGB"))
