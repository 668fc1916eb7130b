"""Step formats of local CRD and of the random features of kernel CRD.

:class:`~crdistance.LocalCRDetector` is stored with what it scores with (per
feature group: cell centres, residual operators and weights) and what
``partial_fit`` adds to (Gram matrices, counts), as a CRDetector is;
scikit-learn's :class:`~sklearn.kernel_approximation.RBFSampler` with its
random projection. See :mod:`crdistance.persistence._steps` for the other steps.
"""

import numpy as np
from sklearn.kernel_approximation import RBFSampler

from crdistance._cells import weighted_operators
from crdistance._local import LocalCRDetector
from crdistance._sklearn_compat import rbf_sampler_gamma, restore_rbf_sampler
from crdistance.persistence._fields import (
    StepFormat,
    check_operators,
    input_fields,
    offset,
    real,
    restore_input,
)

__all__ = ["LocalDetectorFormat", "RBFSamplerFormat"]

_CELL_ARRAYS = ("cell_centers_", "cell_grams_", "cell_counts_",
                "residual_operators_", "cell_weights_")


class LocalDetectorFormat(StepFormat):
    """LocalCRDetector: per group g, arrays ``<attribute>.<g>``.

    ``feature_groups_`` follows from ``feature_groups`` and ``n_features_in_``;
    the float32 ``scoring_operators_`` are recomputed, elementwise, from the
    residual operators and cell weights.
    """

    class_name = "LocalCRDetector"
    fitted_keys = {"n_features_in_", "n_samples_seen_", "offset_",
                   "feature_names_in_", "n_cells_"}

    @staticmethod
    def estimator_class():
        return LocalCRDetector

    @staticmethod
    def fitted(detector):
        return {**input_fields(detector), "offset_": float(detector.offset_),
                "n_cells_": [int(n) for n in detector.n_cells_]}

    @staticmethod
    def arrays(detector):
        return {f"{attribute}.{group}": array for attribute in _CELL_ARRAYS
                for group, array in enumerate(getattr(detector, attribute))}

    @staticmethod
    def restore(detector, fitted, take, where):
        d = restore_input(detector, fitted, where)
        sizes = [d] if detector.feature_groups is None else detector.feature_groups
        if not all(type(size) is int and size >= 1 for size in sizes) or (
            sum(sizes) != d
        ):
            raise ValueError(
                f"{where} feature_groups={sizes!r} are not sizes >= 1 adding up "
                f"to n_features_in_={d}."
            )
        n_cells = fitted["n_cells_"]
        if not (
            isinstance(n_cells, list) and len(n_cells) == len(sizes)
            and all(type(n) is int and 1 <= n <= detector.n_cells for n in n_cells)
        ):
            raise ValueError(
                f"{where} n_cells_={n_cells!r} must be one int in [1, n_cells="
                f"{detector.n_cells}] per feature group of {sizes}."
            )
        state = {attribute: [] for attribute in _CELL_ARRAYS}
        for group, size in enumerate(sizes):
            cells = _take_cells(take, group, n_cells[group], size)
            check_operators(cells["cell_grams_"], cells["residual_operators_"],
                            f"{where} cell_grams_.{group}",
                            f"{where} residual_operators_.{group}")
            counts = cells["cell_counts_"]
            if np.any(counts < 0) or np.any(counts != np.round(counts)) or (
                counts.sum() != detector.n_samples_seen_
            ):
                raise ValueError(
                    f"{where} cell_counts_.{group} are not integers >= 0 adding "
                    f"up to n_samples_seen_={detector.n_samples_seen_}."
                )
            cells["cell_counts_"] = counts.astype(np.int64)
            if np.any(cells["cell_weights_"] <= 0):
                raise ValueError(f"{where} cell_weights_.{group} are not all > 0.")
            for attribute, array in cells.items():
                state[attribute].append(array)
        for attribute, arrays in state.items():
            setattr(detector, attribute, arrays)
        detector.feature_groups_ = list(sizes)
        detector.n_cells_ = list(n_cells)
        detector.offset_ = offset(fitted, where)
        detector.scoring_operators_ = [
            operators.astype(np.float32)
            for operators in weighted_operators(
                detector.residual_operators_, detector.cell_weights_
            )
        ]
        return d, None


def _take_cells(take, group, n_cells, size):
    """The cell arrays of one feature group of ``size`` features, by attribute."""
    shapes = {"cell_centers_": (n_cells, size), "cell_grams_": (n_cells, size, size),
              "cell_counts_": (n_cells,), "cell_weights_": (n_cells,)}
    shapes["residual_operators_"] = shapes["cell_grams_"]
    return {attribute: take(f"{attribute}.{group}", shapes[attribute],
                            given_by="n_cells_ and feature_groups give")
            for attribute in _CELL_ARRAYS}


class RBFSamplerFormat(StepFormat):
    """RBFSampler: the random projection, its resolved ``_gamma`` and its dtype.

    ``weights_dtype`` is that of a fit on float32 input, which keeps float32
    features float32; such arrays are stored exactly as float64.
    """

    class_name = "RBFSampler"
    array_attributes = ("random_weights_", "random_offset_")
    fitted_keys = {"n_features_in_", "feature_names_in_", "_gamma", "weights_dtype"}

    @staticmethod
    def estimator_class():
        return RBFSampler

    @staticmethod
    def fitted(sampler):
        return {**input_fields(sampler, counted=False),
                "_gamma": rbf_sampler_gamma(sampler),
                "weights_dtype": sampler.random_weights_.dtype.name}

    @staticmethod
    def restore(sampler, fitted, take, where):
        d = restore_input(sampler, fitted, where)
        gamma = real(fitted, "_gamma", where)
        if gamma <= 0 if sampler.gamma == "scale" else gamma != sampler.gamma:
            raise ValueError(
                f"{where} _gamma={gamma!r} is not the one gamma={sampler.gamma!r} "
                "gives (gamma itself, or a positive number for 'scale')."
            )
        n_components = sampler.n_components
        weights = take("random_weights_", (d, n_components),
                       given_by="n_features_in_ and n_components give")
        offsets = take("random_offset_", (n_components,), given_by="n_components gives")
        if np.any(offsets < 0) or np.any(offsets > 2 * np.pi):
            raise ValueError(f"{where} random_offset_ is not in [0, 2 pi].")
        dtype = fitted["weights_dtype"]
        if dtype not in ("float32", "float64"):
            raise ValueError(
                f"{where} weights_dtype={dtype!r} is not 'float32' or 'float64'."
            )
        if dtype == "float32" and not (
            np.array_equal(weights.astype(np.float32), weights)
            and np.array_equal(offsets.astype(np.float32), offsets)
        ):
            raise ValueError(
                f"{where} weights_dtype is 'float32' but its arrays hold values "
                "float32 cannot represent."
            )
        sampler.random_weights_ = weights.astype(dtype, copy=False)
        sampler.random_offset_ = offsets.astype(dtype, copy=False)
        restore_rbf_sampler(sampler, gamma, n_components)
        return d, n_components
