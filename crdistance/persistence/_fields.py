"""Checks of the fields of a saved step, shared by the step formats.

Every check raises a ValueError whose message names the field; ``where``
names the step (``"step 'crdetector' (CRDetector)"``).
"""

import math
import os

import numpy as np

__all__ = ["TOLERANCE", "StepFormat", "check_keys", "check_operators", "check_type",
           "count", "input_fields", "offset", "plain", "real", "restore_input"]

TOLERANCE = 1e-8
"""Relative asymmetry, and excess of the residual operator's diagonal over
[0, 1], accepted as rounding."""


class StepFormat:
    """How one estimator class is stored.

    A subclass names the class (``class_name``, ``estimator_class()``), its
    fitted scalars (``fitted_keys``, ``fitted(estimator)``) and its arrays
    (``array_attributes``, or ``arrays(estimator)``), and gives
    ``restore(estimator, fitted, take, where)``, which validates and sets
    the fitted state and returns the step's (input, output) feature counts,
    None for images. ``take(attribute, shape, given_by="n_features_in_ gives")``
    pops the step's array of that attribute, checked to be finite and of that
    shape (``given_by`` says where the shape comes from, in error messages).
    """

    array_attributes = ()

    @staticmethod
    def decode_params(params):
        return params

    @classmethod
    def arrays(cls, estimator):
        return {name: getattr(estimator, name) for name in cls.array_attributes}


def input_fields(estimator, *, counted=True):
    """What an estimator fitted on rows knows of its input; ``counted`` adds
    ``n_samples_seen_``."""
    names = getattr(estimator, "feature_names_in_", None)
    fields = {
        "n_features_in_": int(estimator.n_features_in_),
        "feature_names_in_": None if names is None else [str(n) for n in names],
    }
    if counted:
        fields["n_samples_seen_"] = int(estimator.n_samples_seen_)
    return fields


def restore_input(estimator, fitted, where):
    """Validate and set the fields of :func:`input_fields`; return d."""
    d = estimator.n_features_in_ = count(fitted, "n_features_in_", where)
    if "n_samples_seen_" in fitted:
        estimator.n_samples_seen_ = count(fitted, "n_samples_seen_", where)
    names = fitted["feature_names_in_"]
    if names is not None:
        if not (isinstance(names, list) and len(names) == d
                and all(isinstance(name, str) for name in names)):
            raise ValueError(f"{where} feature_names_in_ is not a list of {d} str.")
        estimator.feature_names_in_ = np.asarray(names, dtype=object)
    return d


def check_operators(grams, operators, gram_name, operator_name):
    """Check Gram matrices and residual operators ``lam (G + lam I)^-1``, of shape
    (..., d, d) and named in messages as given: symmetric, Gram diagonals >= 0,
    operator diagonals in [0, 1] (the range of the operator's eigenvalues)."""
    _check_symmetric(grams, gram_name)
    _check_symmetric(operators, operator_name)
    if np.any(np.diagonal(grams, axis1=-2, axis2=-1) < 0):
        raise ValueError(f"{gram_name} has a negative diagonal entry.")
    diagonals = np.diagonal(operators, axis1=-2, axis2=-1)
    if not np.all(np.abs(diagonals - 0.5) <= 0.5 + TOLERANCE):
        raise ValueError(f"{operator_name} has a diagonal entry outside [0, 1].")


def _check_symmetric(matrices, where):
    """Each matrix of the stack symmetric up to TOLERANCE times its largest entry."""
    asymmetry = np.abs(matrices - np.swapaxes(matrices, -1, -2)).max(axis=(-2, -1))
    if np.any(asymmetry > TOLERANCE * np.abs(matrices).max(axis=(-2, -1))):
        raise ValueError(f"{where} is not symmetric.")


def offset(fitted, where):
    """``offset_``: a finite number <= 0 (the threshold is a distance)."""
    value = real(fitted, "offset_", where)
    if value > 0:
        raise ValueError(f"{where} offset_={value!r} is positive.")
    return value


def count(fitted, key, where):
    value = fitted[key]
    if type(value) is not int or value < 1:
        raise ValueError(f"{where} {key} must be an int >= 1, got {value!r}.")
    return value


def real(fitted, key, where):
    value = fitted[key]
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"{where} {key} must be a finite number, got {value!r}.")
    return float(value)


def check_type(value, expected, where):
    if not isinstance(value, expected):
        raise ValueError(f"{where} must be a {expected.__name__}, got {value!r}.")


def check_keys(mapping, expected, where):
    if set(mapping) != set(expected):
        missing, unknown = set(expected) - set(mapping), set(mapping) - set(expected)
        raise ValueError(
            f"{where} has unknown fields {sorted(unknown)} and lacks "
            f"{sorted(missing)}."
        )


def plain(value, where):
    """JSON value of a parameter: NumPy scalars as Python ones, tuples as lists,
    paths as str; TypeError for anything else JSON cannot hold (a RandomState)."""
    if isinstance(value, dict):
        return {key: plain(item, where) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item, where) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(
        f"{where} is a {type(value).__name__}, which the model file cannot hold: "
        "it stores parameters as JSON (numbers, strings, lists, None) and never "
        "code. Set it to such a value (a random_state only matters while "
        "fitting), or save with joblib (which runs code when loading: trusted "
        "files only); a pipeline with a torch.nn.Module backbone also exports "
        "to ONNX."
    )
