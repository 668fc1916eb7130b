"""Checks of the fields of a saved step, shared by the step formats.

Every check raises a ValueError whose message names the field; ``where``
names the step (``"step 'crdetector' (CRDetector)"``).
"""

import math
import os

import numpy as np

__all__ = ["TOLERANCE", "StepFormat", "check_keys", "check_operators", "check_type",
           "count", "curve", "epochs", "input_fields", "offset", "plain", "real",
           "restore_input"]

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

    ``encode_params`` and ``decode_params`` turn ``get_params`` into JSON and
    back, where a parameter is not JSON as is. A format whose estimator holds
    other fitted estimators names their list attribute in ``substeps``: each is
    stored as a step of its own named ``<step name>.<substep_prefix><i>``, of
    a class among ``substep_classes``, in ``fitted[substeps]``, and ``restore``
    finds there the built sub-steps as ``(estimator, (input, output))`` pairs.
    """

    array_attributes = ()
    substeps = None
    substep_prefix = ""
    substep_classes = ()

    @staticmethod
    def encode_params(params):
        return params

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


def epochs(fitted, max_epochs, where):
    """``n_iter_`` and ``best_epoch_`` of a network trained for at most
    ``max_epochs``: 1 <= best_epoch_ <= n_iter_ <= max_epochs."""
    n_iter = count(fitted, "n_iter_", where)
    if n_iter > max_epochs:
        raise ValueError(f"{where} n_iter_={n_iter} exceeds max_epochs={max_epochs}.")
    best_epoch = fitted["best_epoch_"]
    if type(best_epoch) is not int or not 1 <= best_epoch <= n_iter:
        raise ValueError(
            f"{where} best_epoch_={best_epoch!r} must be an int in [1, "
            f"n_iter_={n_iter}]."
        )
    return n_iter, best_epoch


def curve(fitted, name, n_iter, where):
    """A loss curve: finite numbers, one per epoch (the validation curve may
    also be empty: no validation)."""
    values = fitted[name]
    lengths = (n_iter, 0) if name == "validation_loss_curve_" else (n_iter,)
    if not (
        isinstance(values, list) and len(values) in lengths
        and all(type(value) in (int, float) and math.isfinite(value)
                for value in values)
    ):
        allowed = " or ".join(map(str, lengths))
        raise ValueError(
            f"{where} {name} must be a list of {allowed} finite numbers "
            f"(n_iter_={n_iter}), got {values!r}."
        )
    return [float(value) for value in values]


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
