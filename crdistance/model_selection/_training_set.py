"""Features of normal images and of synthetic defective copies, for training.

:class:`~crdistance.featurizer.ContrastiveEmbedder` (CSE) learns from normal
patches and from defective ones. :func:`defect_training_set` makes them the
way the CSE paper does: each normal image gets defective copies
(:func:`synthesize_defects`: Perlin-noise blobs filled with foreign texture,
blur, noise or an intensity change), every image and copy passes the backbone
once, and the defect masks are brought to the patch grid as shares
(:func:`patch_masks`).
"""

import numpy as np
from sklearn.utils import Bunch, check_random_state

from crdistance._validation import size_pair
from crdistance.model_selection._defects import read_image, synthesize_defects

__all__ = ["defect_training_set", "patch_masks"]


def patch_masks(masks, grid, *, resize=None, crop_size=None):
    """Defect masks of images as shares of each patch of a feature grid.

    Parameters
    ----------
    masks : list of ndarray of bool, shape (H_i, W_i)
        Pixel masks at each image's own size.
    grid : tuple (h, w)
        The featurizer's patch grid.
    resize, crop_size : int, tuple (height, width) or None
        The featurizer's preprocessing (``PatchFeaturizer.resize`` and
        ``crop_size``), so the masks follow the images.

    Returns
    -------
    shares : ndarray of shape (n_images, h, w), float64
        Share of each patch's pixels inside the defect.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.model_selection import patch_masks
    >>> mask = np.zeros((40, 40), dtype=bool)
    >>> mask[:10, :20] = True
    >>> patch_masks([mask], (2, 2), resize=32)[0]
    array([[0.5, 0. ],
           [0. , 0. ]])
    """
    from PIL import Image

    resize, crop_size = size_pair(resize, "resize"), size_pair(crop_size, "crop_size")
    shares = np.empty((len(masks), *grid))
    for index, mask in enumerate(masks):
        image = Image.fromarray(np.asarray(mask, dtype=np.float32))
        if resize is not None:
            image = image.resize(resize[::-1], Image.Resampling.BOX)
        if crop_size is not None:
            height, width = image.size[1], image.size[0]
            top, left = (height - crop_size[0]) // 2, (width - crop_size[1]) // 2
            image = image.crop((left, top, left + crop_size[1], top + crop_size[0]))
        shares[index] = np.asarray(image.resize(grid[::-1], Image.Resampling.BOX))
    return np.clip(shares, 0, 1)


def defect_training_set(images, featurizer, *, n_per_image=1, defects=None,
                        random_state=0):
    """Patch features of normal images and of defective copies of them.

    Parameters
    ----------
    images : list of path-like or ndarray (H, W[, C]) uint8
        Normal images; at least two (a defect may take its texture from
        another image).
    featurizer : fitted PatchFeaturizer
        Extracts the patch features.
    n_per_image : int, default=1
        Defective copies of each image.
    defects : dict or None, default=None
        Keyword arguments of :func:`synthesize_defects` (``kinds``,
        ``max_area``, ``opacity``, ``placement``); None takes its defaults.
    random_state : int, RandomState instance or None, default=0
        Seeds the defects.

    Returns
    -------
    training_set : sklearn.utils.Bunch
        ``normal``: the features (n_images, h, w, d) of `images`;
        ``defective``: those of the copies (n_images * n_per_image, h, w, d),
        ``n_per_image`` consecutive copies per image; ``shares``: each
        defective patch's share inside its defect, (n_copies, h, w);
        ``source``: the index into `images` of each copy. Pass ``defective``
        and ``shares`` to ``ContrastiveEmbedder.fit``.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.featurizer import PatchFeaturizer
    >>> from crdistance.model_selection import defect_training_set
    >>> rng = np.random.default_rng(0)
    >>> images = [rng.integers(90, 160, (64, 64), dtype=np.uint8) for _ in range(4)]
    >>> featurizer = PatchFeaturizer(backbone="resnet18", weights=None, resize=64,
    ...                              progress=False).fit(images)
    >>> train = defect_training_set(images, featurizer)
    >>> train.normal.shape, train.defective.shape, train.shares.shape
    ((4, 8, 8, 384), (4, 8, 8, 384), (4, 8, 8))
    """
    arrays = [read_image(image) for image in images]
    defects = {} if defects is None else dict(defects)
    for reserved in ("n_per_image", "random_state", "kinds_out"):
        if reserved in defects:
            raise ValueError(f"defects may not set {reserved!r}; it is a parameter "
                             "of defect_training_set or fixed by it.")
    defective, masks = synthesize_defects(
        arrays, n_per_image=n_per_image, random_state=check_random_state(
            random_state), **defects)
    normal = featurizer.transform(arrays)
    defective = featurizer.transform(defective)
    return Bunch(
        normal=normal, defective=defective,
        shares=patch_masks(masks, defective.shape[1:3], resize=featurizer.resize,
                           crop_size=featurizer.crop_size),
        source=np.repeat(np.arange(len(arrays)), n_per_image),
    )
