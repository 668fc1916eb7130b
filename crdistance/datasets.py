"""Loaders for anomaly-detection data on disk: the MVTec AD layout and ODDS.

Nothing is downloaded: the functions read folders a user already has.
"""

import os
from collections.abc import Sequence
from functools import partial
from numbers import Integral
from pathlib import Path

import numpy as np
import scipy.io
from sklearn.utils import Bunch

__all__ = ["LazyArrays", "list_odds", "load_mvtec", "load_odds"]

GOOD = "good"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
MASK_SUFFIX = "_mask.png"


class LazyArrays(Sequence):
    """A sequence of arrays read from disk only when accessed.

    ``arrays[i]`` reads and returns one array; ``arrays[a:b]`` or
    ``arrays[index_array]`` returns another :class:`LazyArrays` over the
    selected files, still unread. ``list(arrays)`` reads them all.

    Parameters
    ----------
    read : callable
        Turns one item into an array.
    items : ndarray of shape (n_items,) or (n_items, n_fields)
        What ``read`` receives: one row per array (file names).

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.datasets import LazyArrays
    >>> reads = []
    >>> def read(name):
    ...     reads.append(str(name))
    ...     return np.full(2, len(name))
    >>> arrays = LazyArrays(read, ["a.png", "bb.png", "ccc.png"])
    >>> subset = arrays[1:]
    >>> subset, reads
    (LazyArrays(<2 arrays read on access>), [])
    >>> subset[0], reads
    (array([6, 6]), ['bb.png'])
    """

    def __init__(self, read, items):
        self.read = read
        self.items = np.asarray(items)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        if isinstance(index, Integral):
            return self.read(self.items[index])
        return LazyArrays(self.read, self.items[index])

    def __repr__(self):
        return f"LazyArrays(<{len(self)} arrays read on access>)"


def load_mvtec(root, split="test", *, mode=None):
    """Load one category of an MVTec AD style dataset.

    The layout is that of MVTec AD (Bergmann et al., CVPR 2019)::

        root/train/good/*.png
        root/test/good/*.png
        root/test/<defect>/*.png
        root/ground_truth/<defect>/<stem>_mask.png

    Any image suffix among .png, .jpg, .jpeg, .bmp, .tif and .tiff is read;
    images may differ in size and be grayscale or colour.

    Parameters
    ----------
    root : str or path-like
        The category folder (e.g. ``mvtec_anomaly_detection/bottle``).
    split : {"train", "test"}, default="test"
        ``"train"`` reads ``train/good`` only; ``"test"`` reads every folder of
        ``test``.
    mode : str or None, default=None
        Pillow mode the images are converted to when read (``"RGB"`` for
        3-channel ``(height, width, 3)`` arrays, ``"L"`` for grayscale
        ``(height, width)``); None keeps each file's own mode.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Arrays in one order, sorted by defect type then file name:

        paths : ndarray of str, shape (n_images,)
            Image files.
        labels : ndarray of int, shape (n_images,)
            0 for ``good`` images, 1 for defective ones.
        defect_types : ndarray of str, shape (n_images,)
            Name of the image's folder (``"good"`` or the defect).
        mask_paths : ndarray of str, shape (n_images,)
            Ground-truth mask files, ``""`` for good images.
        images : :class:`LazyArrays`
            ``images[i]`` is image i as a uint8 array, read on access.
        masks : :class:`LazyArrays` or None
            ``masks[i]`` is the bool mask of image i, of the image's height and
            width (True = defective pixel), read on access; all False for good
            images. None for a test set with image-level labels only (no
            ``root/ground_truth`` folder at all).
        has_masks : bool
            Whether ``masks`` holds the ground truth: False for image-level
            test sets, on which only image metrics apply.
        image_sizes : :class:`LazyArrays`
            ``image_sizes[i]`` is ``(height, width)`` of image i, read from the
            file's header (the size of its anomaly map).

    Raises
    ------
    FileNotFoundError
        When ``root/<split>`` has no images, or when ``root/ground_truth``
        exists but a defective test image has no mask file in it.

    Notes
    -----
    A defective image whose mask file exists but is empty (all zero) keeps
    label 1 and gets an all-False mask: some datasets (4 images of
    ``magnetic_tile``) annotate a defect without marking pixels. Image metrics
    count such an image as defective; pixel metrics see only normal pixels in
    it and the per-region overlap has no region of it to average.

    Examples
    --------
    A category with one good and one cracked test image, written on the fly:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from PIL import Image
    >>> from crdistance.datasets import load_mvtec
    >>> def write(path, value):
    ...     path.parent.mkdir(parents=True, exist_ok=True)
    ...     Image.fromarray(np.full((6, 8), value, dtype=np.uint8)).save(path)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     root = Path(folder)
    ...     write(root / "train" / "good" / "000.png", 128)
    ...     write(root / "test" / "good" / "000.png", 128)
    ...     write(root / "test" / "crack" / "000.png", 40)
    ...     write(root / "ground_truth" / "crack" / "000_mask.png", 255)
    ...     test = load_mvtec(root, split="test")
    ...     print(test.defect_types, test.labels)
    ...     print(test.images[0].shape, test.masks[0].dtype, int(test.masks[0].sum()))
    ['crack' 'good'] [1 0]
    (6, 8) bool 48
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    root = Path(root)
    split_dir = root / split
    folders = [split_dir / GOOD] if split == "train" else _subfolders(split_dir)
    # A test set without any ground_truth folder has image-level labels only.
    has_masks = split == "train" or (root / "ground_truth").is_dir()
    paths, defect_types, mask_paths, missing = [], [], [], []
    for folder in folders:
        for path in sorted(p for p in folder.iterdir() if _is_image(p)):
            paths.append(str(path))
            defect_types.append(folder.name)
            if folder.name == GOOD or not has_masks:
                mask_paths.append("")
                continue
            mask_path = root / "ground_truth" / folder.name / (path.stem + MASK_SUFFIX)
            mask_paths.append(str(mask_path))
            if not mask_path.is_file():
                missing.append(str(mask_path))
    if not paths:
        raise FileNotFoundError(f"No images found in {split_dir}.")
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} defective image(s) have no ground-truth mask, "
            f"e.g. {missing[0]}."
        )
    paths = np.asarray(paths)
    mask_paths = np.asarray(mask_paths)
    defect_types = np.asarray(defect_types)
    return Bunch(
        paths=paths,
        labels=(defect_types != GOOD).astype(np.int64),
        defect_types=defect_types,
        mask_paths=mask_paths,
        images=LazyArrays(partial(_read_image, mode=mode), paths),
        masks=(LazyArrays(_read_mask, np.stack([mask_paths, paths], axis=1))
               if has_masks else None),
        has_masks=has_masks,
        image_sizes=LazyArrays(_read_size, paths),
    )


def list_odds(data_home=None):
    """Return the names of the ODDS datasets found in ``<data_home>/odds``.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Folder holding the ``odds`` folder of ``.mat`` files. None reads the
        environment variable ``CRDISTANCE_DATA``, else ``~/crdistance_data``.

    Returns
    -------
    names : list of str
        Sorted file stems, e.g. ``["arrhythmia", "cardio", ...]``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from scipy.io import savemat
    >>> from crdistance.datasets import list_odds
    >>> with tempfile.TemporaryDirectory() as home:
    ...     (Path(home) / "odds").mkdir()
    ...     for name in ("wbc", "cardio"):
    ...         savemat(Path(home) / "odds" / f"{name}.mat", {"X": [[0.0]], "y": [[0]]})
    ...     print(list_odds(home))
    ['cardio', 'wbc']
    """
    return sorted(path.stem for path in _odds_dir(data_home).glob("*.mat"))


def load_odds(name_or_path, *, data_home=None):
    """Load an ODDS outlier-detection dataset (Rayana, 2016).

    Parameters
    ----------
    name_or_path : str or path-like
        A name from :func:`list_odds` (``"cardio"``), or the path of a MATLAB v5
        ``.mat`` file holding ``X`` and ``y``.
    data_home : str or path-like, default=None
        Where names are looked up, as in :func:`list_odds`.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), float64
        The features.
    y : ndarray of shape (n_samples,), int64
        1 for outliers, 0 for inliers.

    Examples
    --------
    A dataset in ODDS's format (MATLAB ``X`` and ``y`` with y = 1 for
    outliers), written on the fly:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from scipy.io import savemat
    >>> from crdistance.datasets import load_odds
    >>> with tempfile.TemporaryDirectory() as home:
    ...     (Path(home) / "odds").mkdir()
    ...     mat = {"X": np.arange(12).reshape(4, 3), "y": [[0], [0], [0], [1]]}
    ...     savemat(Path(home) / "odds" / "toy.mat", mat)
    ...     X, y = load_odds("toy", data_home=home)
    >>> X.dtype, X.shape, y
    (dtype('float64'), (4, 3), array([0, 0, 0, 1]))
    """
    path = Path(name_or_path)
    if path.suffix != ".mat":
        odds_dir = _odds_dir(data_home)
        path = odds_dir / f"{name_or_path}.mat"
        if not path.is_file():
            raise FileNotFoundError(
                f"No ODDS dataset {name_or_path!r} in {odds_dir}; available: "
                f"{list_odds(data_home)}."
            )
    try:
        contents = scipy.io.loadmat(path)
    except NotImplementedError as error:
        raise ValueError(
            f"{path} is a MATLAB v7.3 (HDF5) file; read it with h5py."
        ) from error
    if "X" not in contents or "y" not in contents:
        raise ValueError(f"{path} must hold the variables 'X' and 'y'.")
    X = np.asarray(contents["X"], dtype=np.float64)
    y = np.ravel(contents["y"])
    if X.ndim != 2 or y.shape != (X.shape[0],) or not np.isin(y, (0, 1)).all():
        raise ValueError(
            f"{path}: expected X of shape (n_samples, n_features) and y of n_samples "
            f"values in {{0, 1}}, got X {X.shape} and y {contents['y'].shape}."
        )
    return X, y.astype(np.int64)


def _subfolders(folder):
    if not folder.is_dir():
        raise FileNotFoundError(f"No folder {folder}.")
    return sorted(p for p in folder.iterdir() if p.is_dir())


def _is_image(path):
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _read_image(path, mode):
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image if mode is None else image.convert(mode))


def _read_size(path):
    """(height, width) of an image, from its header only."""
    from PIL import Image

    with Image.open(path) as image:
        return (image.height, image.width)


def _read_mask(paths):
    """Bool mask of an image from ``(mask_path, image_path)``; "" = all False."""
    from PIL import Image

    mask_path, image_path = paths
    with Image.open(image_path) as image:
        shape = (image.height, image.width)
    if not mask_path:
        return np.zeros(shape, dtype=bool)
    with Image.open(mask_path) as mask_image:
        mask = np.asarray(mask_image.convert("L")) > 0
    if mask.shape != shape:
        raise ValueError(
            f"Mask {mask_path} has shape {mask.shape}, but its image {image_path} "
            f"has height and width {shape}."
        )
    return mask


def _odds_dir(data_home):
    if data_home is None:
        data_home = os.environ.get("CRDISTANCE_DATA", Path.home() / "crdistance_data")
    odds_dir = Path(data_home) / "odds"
    if not odds_dir.is_dir():
        raise FileNotFoundError(
            f"No ODDS folder at {odds_dir}: put the .mat files there, or pass "
            "data_home / set CRDISTANCE_DATA to the folder that holds 'odds'."
        )
    return odds_dir
