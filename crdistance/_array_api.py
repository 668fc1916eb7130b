"""Array namespace helpers: NumPy, torch, CuPy and any Array API library.

The d x d state of a detector is tiny next to the data, so it follows the data:
it is moved to the namespace and device of each input instead of the input
being moved to it.
"""

import array_api_compat
import numpy as np

__all__ = ["is_array_api_array", "move_to", "namespace_and_device", "to_numpy"]


def is_array_api_array(X):
    """Whether ``X`` is an array of a library ``array_api_compat`` knows."""
    try:
        array_api_compat.array_namespace(X)
    except TypeError:
        return False
    return True


def namespace_and_device(X):
    """Return the Array API namespace and the device of ``X``."""
    return array_api_compat.array_namespace(X), array_api_compat.device(X)


def to_numpy(a):
    """Return ``a`` as a NumPy array on the host: arrays of any supported library
    are copied there, anything else (lists, scalars) goes through ``np.asarray``.
    The one array-to-NumPy helper of the package."""
    if array_api_compat.is_numpy_array(a):
        return a
    if array_api_compat.is_torch_array(a):
        return a.detach().cpu().numpy()
    if array_api_compat.is_cupy_array(a):
        return a.get()
    if array_api_compat.is_dask_array(a):
        return np.asarray(a.compute())
    if is_array_api_array(a):
        return np.from_dlpack(a)
    return np.asarray(a)


def move_to(a, xp, device):
    """Return ``a`` in namespace ``xp`` on ``device``, copying only when needed."""
    a_xp, a_device = namespace_and_device(a)
    if a_xp is xp and a_device == device:
        return a
    return xp.asarray(to_numpy(a), device=device)
