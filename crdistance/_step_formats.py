"""How each estimator of a saved model is stored and restored.

A step is stored as JSON (its ``get_params`` and its fitted scalars) and
float64 arrays named ``<step name>.<attribute>``. Restoring validates every
field against the estimator's parameter constraints and the feature count d,
then sets the fitted attributes, as unpickling would. See
:mod:`crdistance.persistence` for the file around the steps.
"""

import math
import os

import numpy as np
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from crdistance._detector import CRDetector
from crdistance._linalg import penalties

__all__ = ["build_step", "check_keys", "check_type", "encode_step"]

TOLERANCE = 1e-8
"""Relative asymmetry, and excess of the residual operator's diagonal over
[0, 1], accepted as rounding."""
_STEP_KEYS = {"name", "class", "params", "fitted"}


def encode_step(name, estimator):
    """The header entry of a fitted estimator and its arrays, by array name."""
    step_format = _format_of(name, estimator)
    check_is_fitted(estimator)
    step = {
        "name": name,
        "class": step_format.class_name,
        "params": _plain(estimator.get_params(deep=False)),
        "fitted": step_format.fitted(estimator),
    }
    arrays = {f"{name}.{attribute}": array
              for attribute, array in step_format.arrays(estimator).items()}
    return step, arrays


def build_step(step, arrays):
    """Estimator of one step with its fitted state; its (input, output) widths."""
    check_keys(step, _STEP_KEYS, "a step")
    name = step["name"]
    if not isinstance(name, str) or not name or "__" in name:
        raise ValueError(f"step name {name!r} is not a non-empty str without '__'.")
    step_format = _STEP_FORMATS.get(step["class"]) if isinstance(
        step["class"], str) else None
    if step_format is None:
        raise ValueError(
            f"step {name!r} has class {step['class']!r}; the format holds "
            f"{sorted(_STEP_FORMATS)}."
        )
    where = f"step {name!r} ({step['class']})"
    params, fitted = step["params"], step["fitted"]
    check_type(params, dict, f"{where} params")
    estimator_class = step_format.estimator_class()
    check_keys(params, set(estimator_class().get_params(deep=False)),
                f"{where} params")
    estimator = estimator_class(**step_format.decode_params(params))
    try:
        estimator._validate_params()
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    check_type(fitted, dict, f"{where} fitted")
    check_keys(fitted, step_format.fitted_keys, f"{where} fitted")

    def take(attribute, shape):
        key = f"{name}.{attribute}"
        if key not in arrays:
            raise ValueError(f"{where} needs the array {key!r}.")
        array = arrays.pop(key)
        if array.shape != shape:
            raise ValueError(
                f"array {key!r} has shape {array.shape}, but n_features_in_ "
                f"gives {shape}."
            )
        if not np.all(np.isfinite(array)):
            raise ValueError(f"array {key!r} holds NaN or infinity.")
        return array

    return name, estimator, step_format.restore(estimator, fitted, take, where)


def _format_of(name, estimator):
    step_format = _STEP_FORMATS.get(type(estimator).__name__)
    if step_format is None or type(estimator) is not step_format.estimator_class():
        raise TypeError(
            f"Step {name!r} is a {type(estimator).__name__}; save supports "
            f"{sorted(_STEP_FORMATS)} (joblib saves any estimator, as a file "
            "that runs code when loaded)."
        )
    return step_format


class _StepFormat:
    """How one estimator class is stored.

    A subclass names the class (``class_name``, ``estimator_class()``) and its
    fitted scalars (``fitted_keys``, ``fitted(estimator)``), gives its arrays
    and ``restore(estimator, fitted, take, where)``, which validates and sets
    the fitted state and returns the step's (input, output) feature counts,
    None for images.
    """

    @staticmethod
    def decode_params(params):
        return params

    @staticmethod
    def arrays(estimator):
        return {}


class _DetectorFormat(_StepFormat):
    class_name = "CRDetector"
    fitted_keys = {"lam_", "n_features_in_", "n_samples_seen_",
                   "patches_per_sample_", "offset_", "solver_", "feature_names_in_"}

    @staticmethod
    def estimator_class():
        return CRDetector

    @staticmethod
    def fitted(detector):
        return {
            **_input_fields(detector),
            "lam_": float(detector.lam_),
            "patches_per_sample_": int(detector.patches_per_sample_),
            "offset_": float(detector.offset_),
            "solver_": detector.solver_,
        }

    @staticmethod
    def arrays(detector):
        return {"gram_": detector.gram_,
                "residual_operator_": detector.residual_operator_}

    @staticmethod
    def restore(detector, fitted, take, where):
        d = _restore_input(detector, fitted, where)
        gram = _symmetric(take("gram_", (d, d)), f"{where} gram_")
        operator = _symmetric(
            take("residual_operator_", (d, d)), f"{where} residual_operator_"
        )
        if np.any(np.diag(gram) < 0):
            raise ValueError(f"{where} gram_ has a negative diagonal entry.")
        if not np.all(np.abs(np.diag(operator) - 0.5) <= 0.5 + TOLERANCE):
            raise ValueError(
                f"{where} residual_operator_ has a diagonal entry outside [0, 1]."
            )
        lam = _real(fitted, "lam_", where)
        if lam <= 0 or not math.isclose(
            lam, float(penalties(detector.lam, gram, detector.lam_scale)),
            rel_tol=TOLERANCE,
        ):
            raise ValueError(
                f"{where} lam_={lam!r} is not the penalty of lam={detector.lam!r} "
                f"and lam_scale={detector.lam_scale!r} for gram_."
            )
        offset = _real(fitted, "offset_", where)
        if offset > 0:
            raise ValueError(f"{where} offset_={offset!r} is positive.")
        if fitted["solver_"] not in ("cholesky", "eigh"):
            raise ValueError(f"{where} solver_={fitted['solver_']!r} is unknown.")
        detector.gram_, detector.residual_operator_ = gram, operator
        detector.lam_, detector.offset_ = lam, offset
        detector.solver_ = fitted["solver_"]
        detector.patches_per_sample_ = _count(fitted, "patches_per_sample_", where)
        return d, None


class _ScalerFormat(_StepFormat):
    class_name = "StandardScaler"
    fitted_keys = {"n_features_in_", "n_samples_seen_", "feature_names_in_"}

    @staticmethod
    def estimator_class():
        return StandardScaler

    @staticmethod
    def fitted(scaler):
        return _input_fields(scaler)

    @staticmethod
    def arrays(scaler):
        names = ["mean_"] if scaler.with_mean else []
        if scaler.with_std:
            names += ["var_", "scale_"]
        return {name: getattr(scaler, name) for name in names}

    @staticmethod
    def restore(scaler, fitted, take, where):
        d = _restore_input(scaler, fitted, where)
        scaler.mean_ = take("mean_", (d,)) if scaler.with_mean else None
        scaler.var_ = scaler.scale_ = None
        if scaler.with_std:
            scaler.var_, scaler.scale_ = take("var_", (d,)), take("scale_", (d,))
            if np.any(scaler.var_ < 0) or np.any(scaler.scale_ <= 0):
                raise ValueError(f"{where} var_ < 0 or scale_ <= 0.")
        return d, d


class _FeaturizerFormat(_StepFormat):
    """PatchFeaturizer: parameters and layers; the weights come from ``weights``."""

    class_name = "PatchFeaturizer"
    fitted_keys = {"layers_", "n_features_out_"}

    @staticmethod
    def estimator_class():
        from crdistance.featurizer import PatchFeaturizer  # needs torch

        return PatchFeaturizer

    @staticmethod
    def decode_params(params):
        return {name: tuple(value) if name in ("resize", "crop_size")
                and isinstance(value, list) else value
                for name, value in params.items()}

    @staticmethod
    def fitted(featurizer):
        return {"layers_": list(featurizer.layers_),
                "n_features_out_": int(featurizer.n_features_out_)}

    @staticmethod
    def restore(featurizer, fitted, take, where):
        from crdistance._backbones import check_backbone_name, default_layers

        check_backbone_name(featurizer.backbone)
        layers = (default_layers(featurizer.backbone) if featurizer.layers is None
                  else tuple(featurizer.layers))
        if fitted["layers_"] != list(layers):
            raise ValueError(
                f"{where} layers_={fitted['layers_']!r} are not the layers "
                f"{list(layers)} its parameters give."
            )
        featurizer.layers_ = layers
        featurizer.n_features_out_ = _count(fitted, "n_features_out_", where)
        return None, featurizer.n_features_out_


_STEP_FORMATS = {step_format.class_name: step_format
                 for step_format in (_DetectorFormat, _ScalerFormat, _FeaturizerFormat)}


def _input_fields(estimator):
    """What an estimator fitted on rows knows of its input."""
    names = getattr(estimator, "feature_names_in_", None)
    return {
        "n_features_in_": int(estimator.n_features_in_),
        "n_samples_seen_": int(estimator.n_samples_seen_),
        "feature_names_in_": None if names is None else [str(n) for n in names],
    }


def _restore_input(estimator, fitted, where):
    """Validate and set the fields of :func:`_input_fields`; return d."""
    d = estimator.n_features_in_ = _count(fitted, "n_features_in_", where)
    estimator.n_samples_seen_ = _count(fitted, "n_samples_seen_", where)
    names = fitted["feature_names_in_"]
    if names is not None:
        if not (isinstance(names, list) and len(names) == d
                and all(isinstance(name, str) for name in names)):
            raise ValueError(f"{where} feature_names_in_ is not a list of {d} str.")
        estimator.feature_names_in_ = np.asarray(names, dtype=object)
    return d


def _symmetric(matrix, where):
    if np.max(np.abs(matrix - matrix.T)) > TOLERANCE * np.max(np.abs(matrix)):
        raise ValueError(f"{where} is not symmetric.")
    return matrix


def _count(fitted, key, where):
    value = fitted[key]
    if type(value) is not int or value < 1:
        raise ValueError(f"{where} {key} must be an int >= 1, got {value!r}.")
    return value


def _real(fitted, key, where):
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


def _plain(value):
    """JSON value of a parameter: NumPy scalars as Python ones, tuples as lists,
    paths as str."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
