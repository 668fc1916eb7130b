"""Step format of GRAD, the grid-based continuous normal representation.

:class:`~crdistance.grad.GRADDetector` is stored with its standardisation
(``mean_``, ``scale_``), its patch grid and training record as JSON, and its
network's ``state_dict`` as one array per key, ``network_state_.<key>``. The
float32 tensors are stored exactly as float64 and restored as float32
(``num_batches_tracked`` as int64), so that a loaded detector scores exactly
as the saved one. See :mod:`crdistance.persistence._steps` for the other steps.

Importing the estimator does not import torch; restoring one does, to build
the network whose keys and shapes the file must match, after its size has been
bounded from the parameters, so that a small file cannot make the reader
allocate more than MAX_NETWORK_VALUES values.
"""

import numpy as np

from crdistance.persistence._fields import (
    StepFormat,
    curve,
    epochs,
    input_fields,
    offset,
    restore_input,
)

__all__ = ["MAX_BLOCKS", "MAX_NETWORK_VALUES", "GRADDetectorFormat"]

MAX_NETWORK_VALUES = 1 << 28
"""Most values the network of a loaded GRAD model may have (the global grid
``G^2 C H W`` is most of them): 1 GiB as float32, 2 GiB stored as float64.
Ample: 28 x 28 patches of 1536 features on an 8 x 8 global grid are 77 M."""
MAX_BLOCKS = 1024
"""Most residual blocks: 12 arrays each, whose declarations alone would take
more than the 1 MiB a header may have beyond about 1300 blocks."""
_NETWORK = "network_state_"
_CURVES = ("loss_curve_", "validation_loss_curve_")
_COUNTERS = "num_batches_tracked"
"""Batch-norm buffers that count batches: int64 scalars."""


def _grad_detector():
    from crdistance.grad import GRADDetector  # does not import torch

    return GRADDetector


class GRADDetectorFormat(StepFormat):
    """GRADDetector: arrays ``mean_``, ``scale_`` and ``network_state_.<key>``
    for every key of the network's ``state_dict``; ``patch_shape_``, the loss
    curves, epochs and ``offset_`` in ``fitted``."""

    class_name = "GRADDetector"
    fitted_keys = {"n_features_in_", "feature_names_in_", "patch_shape_",
                   "n_iter_", "best_epoch_", "offset_", *_CURVES}

    @staticmethod
    def estimator_class():
        return _grad_detector()

    @staticmethod
    def fitted(detector):
        return {
            **input_fields(detector, counted=False),
            "patch_shape_": [int(size) for size in detector.patch_shape_],
            "n_iter_": int(detector.n_iter_),
            "best_epoch_": int(detector.best_epoch_),
            "offset_": float(detector.offset_),
            **{name: [float(value) for value in getattr(detector, name)]
               for name in _CURVES},
        }

    @staticmethod
    def arrays(detector):
        return {"mean_": detector.mean_, "scale_": detector.scale_,
                **{f"{_NETWORK}.{key}": np.asarray(value)
                   for key, value in detector.network_state_.items()}}

    @staticmethod
    def restore(detector, fitted, take, where):
        d = restore_input(detector, fitted, where)
        height, width = _patch_shape(fitted, where)
        _check_sizes(detector, d, height, width, where)
        shapes = _network_shapes(detector, d, height, width)
        mean = take("mean_", (d,))
        scale = take("scale_", (d,))
        if np.any(scale <= 0):
            raise ValueError(f"{where} scale_ is not all > 0.")
        given_by = ("n_features_in_, patch_shape_ and the network parameters "
                    "give")
        state = {key: _network_array(take(f"{_NETWORK}.{key}", shape, given_by),
                                     key, where)
                 for key, shape in shapes.items()}
        n_iter, best_epoch = epochs(fitted, detector.max_epochs, where)
        curves = {name: curve(fitted, name, n_iter, where) for name in _CURVES}
        detector.mean_, detector.scale_ = mean, scale
        detector.patch_shape_ = (height, width)
        detector.network_state_ = state
        for name, values in curves.items():
            setattr(detector, name, values)
        detector.n_iter_, detector.best_epoch_ = n_iter, best_epoch
        detector.offset_ = offset(fitted, where)
        return d, None


def _patch_shape(fitted, where):
    shape = fitted["patch_shape_"]
    if not (isinstance(shape, list) and len(shape) == 2
            and all(type(size) is int and size >= 1 for size in shape)):
        raise ValueError(
            f"{where} patch_shape_={shape!r} must be a list of two ints >= 1."
        )
    return tuple(shape)


def _check_sizes(detector, d, height, width, where):
    """At most MAX_BLOCKS blocks and MAX_NETWORK_VALUES values in the network
    the parameters give, checked before it is built (it then takes at most
    1 GiB, whatever the file's size). The count follows GRADNet's layers; it
    is a bound only: the built network's own shapes are then compared."""
    if detector.n_blocks > MAX_BLOCKS:
        raise ValueError(
            f"{where} n_blocks={detector.n_blocks} is over {MAX_BLOCKS}, more "
            "than a model file's header can declare the arrays of."
        )
    grid, local = detector.global_grid_size, detector.local_grid_size
    hidden = detector.hidden_channels
    parts = {
        "global grid (global_grid_size^2 * n_features_in_ * patch_shape_)":
            grid * grid * d * height * width,
        "local grid (n_features_in_ * local_grid_size^2)": d * local * local,
        "coordinate layers": 2 * (d * d + 3 * d + 2),
        "fusion and output layers": 3 * d * hidden + 4 * hidden,
        "blocks (n_blocks * 18 * hidden_channels^2)":
            detector.n_blocks * (18 * hidden * hidden + 8 * hidden),
    }
    total = sum(parts.values())
    if total > MAX_NETWORK_VALUES:
        largest = max(parts, key=parts.get)
        raise ValueError(
            f"{where} gives a network of {total} values, over the "
            f"{MAX_NETWORK_VALUES} a model file may hold; its {largest} has "
            f"{parts[largest]} (n_features_in_={d}, patch_shape_=[{height}, "
            f"{width}], local_grid_size={local}, global_grid_size={grid}, "
            f"hidden_channels={hidden}, n_blocks={detector.n_blocks})."
        )


def _network_shapes(detector, d, height, width):
    """Shape of each key of the state_dict of the network the parameters give,
    from a freshly built one."""
    try:
        from crdistance.grad._network import GRADNet  # imports torch
    except ImportError as exc:
        raise ImportError(
            "Loading a GRADDetector model needs torch; install it with "
            "pip install 'crdistance[vision]'."
        ) from exc
    net = GRADNet(d, height, width, local_grid_size=detector.local_grid_size,
                  global_grid_size=detector.global_grid_size,
                  hidden_channels=detector.hidden_channels,
                  n_blocks=detector.n_blocks)
    return {key: tuple(value.shape) for key, value in net.state_dict().items()}


def _network_array(array, key, where):
    """A stored network tensor as the float32 (int64 for batch counters) array
    it was, checked to be one."""
    name = f"{where} {_NETWORK}.{key}"
    if key.rpartition(".")[2] == _COUNTERS:
        if not np.all((array >= 0) & (array == np.round(array)) & (array < 2.0**53)):
            raise ValueError(f"{name}={array!r} is not an integer >= 0.")
        return array.astype(np.int64)
    with np.errstate(over="ignore"):  # beyond float32: inf, refused
        single = array.astype(np.float32)
    if not np.array_equal(single, array):
        raise ValueError(f"{name} holds values float32 cannot represent.")
    if key.rpartition(".")[2] == "running_var" and np.any(array < 0):
        raise ValueError(f"{name} (a variance) has a negative entry.")
    return single
