"""Input validation for feature rows and per-image patch sets."""

import math
from numbers import Integral

import array_api_compat
import numpy as np
from sklearn.utils.validation import validate_data

from crdistance._array_api import is_array_api_array, namespace_and_device

__all__ = ["check_finite", "size_pair", "validate_features"]

_NOT_FINITE = "Input X contains NaN or infinity."
_NDIM_HELP = (
    "a 2-D array (n_samples, n_features), a 3-D patch set "
    "(n_images, n_patches, n_features) or a 4-D patch map "
    "(n_images, height, width, n_features)"
)


def validate_features(estimator, X, *, reset):
    """Check ``X`` and flatten patch sets to rows of features.

    NumPy input (and anything NumPy can convert: lists, DataFrames) goes through
    scikit-learn's ``validate_data``; arrays of other Array API libraries (torch,
    CuPy, ...) are checked in their own namespace and stay on their device.

    Parameters
    ----------
    estimator : estimator instance
        Receives ``n_features_in_`` (and ``feature_names_in_``) when ``reset``.
    X : array-like of shape (n_samples, n_features), (n_images, n_patches,
        n_features) or (n_images, height, width, n_features)
        Features; the last axis is the feature axis.
    reset : bool
        Whether to record the number of features (``fit``) or check it.

    Returns
    -------
    X_rows : array of shape (n_rows, n_features)
        Finite floating-point rows: samples, or all patches of all images.
    patch_shape : tuple of int or None
        ``X.shape[:-1]`` for patch sets, ``None`` for 2-D input.
    """
    ndim = getattr(X, "ndim", None)
    patch_shape = None
    if ndim is not None and ndim not in (1, 2, 3, 4):
        raise ValueError(f"Expected {_NDIM_HELP}, got an array with ndim={ndim}.")
    if ndim in (3, 4):
        patch_shape = tuple(X.shape[:-1])
        if 0 in patch_shape:
            raise ValueError(f"Found an empty patch set of shape {tuple(X.shape)}.")
    if is_array_api_array(X) and not isinstance(X, np.ndarray):
        return _validate_array_api(estimator, X, reset=reset), patch_shape
    if patch_shape is not None:
        X = np.reshape(X, (-1, X.shape[-1]))
    # float16 is widened to float32, as for the other namespaces.
    dtype = np.float32 if getattr(X, "dtype", None) == np.float16 else [
        np.float64, np.float32]
    X = validate_data(estimator, X, reset=reset, dtype=dtype)
    return X, patch_shape


def _validate_array_api(estimator, X, *, reset):
    """The checks of ``validate_data`` for a non-NumPy Array API array."""
    xp, _ = namespace_and_device(X)
    if X.ndim == 1:
        raise ValueError(
            f"Expected {_NDIM_HELP}, got a 1-D array of shape {tuple(X.shape)}. "
            "Reshape it with X.reshape(-1, 1) for a single feature or "
            "X.reshape(1, -1) for a single sample."
        )
    if xp.isdtype(X.dtype, ("integral", "bool")):
        X = xp.astype(X, xp.float64)
    elif not xp.isdtype(X.dtype, "real floating"):
        raise TypeError(f"X must hold real numbers, got dtype {X.dtype}.")
    if math.isnan(math.prod(X.shape)):
        raise ValueError(
            f"X has unknown chunk sizes (shape {X.shape}); call "
            "X.compute_chunk_sizes() first."
        )
    X = xp.reshape(X, (-1, X.shape[-1]))
    n_rows, n_features = X.shape
    if n_rows == 0 or n_features == 0:
        raise ValueError(
            f"Found array with {n_rows} sample(s) and {n_features} feature(s) "
            f"(shape={tuple(X.shape)}) while at least 1 of each is required."
        )
    X = check_finite(X, _NOT_FINITE)
    name = type(estimator).__name__
    if reset:
        estimator.n_features_in_ = n_features
    elif n_features != estimator.n_features_in_:
        raise ValueError(
            f"X has {n_features} features, but {name} is expecting "
            f"{estimator.n_features_in_} features as input."
        )
    return X


def check_finite(X, message):
    """Raise ``ValueError(message)`` if ``X`` holds NaN or infinity.

    A Dask array is checked lazily, block by block, in the pass that computes
    it; any other array at once.
    """
    if array_api_compat.is_dask_array(X):
        return X.map_blocks(_finite_block, message, dtype=X.dtype)
    xp, _ = namespace_and_device(X)
    if not bool(xp.all(xp.isfinite(X))):
        raise ValueError(message)
    return X


def _finite_block(block, message):
    if not np.all(np.isfinite(block)):
        raise ValueError(message)
    return block


def size_pair(size, name):
    """Return an image size as ``(height, width)``, or None for None.

    An int gives a square; a pair must hold two positive ints. Anything else
    raises a ``ValueError`` naming the parameter ``name``.
    """
    if size is None:
        return None
    if isinstance(size, Integral) and not isinstance(size, bool) and size >= 1:
        return (int(size), int(size))
    if (
        isinstance(size, tuple | list)
        and len(size) == 2
        and all(isinstance(s, Integral) and not isinstance(s, bool) and s >= 1
                for s in size)
    ):
        return tuple(int(s) for s in size)
    raise ValueError(
        f"{name} must be a positive int, a (height, width) tuple of positive ints "
        f"or None; got {size!r}."
    )

