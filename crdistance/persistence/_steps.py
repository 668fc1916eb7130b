"""How each estimator of a saved model is stored and restored.

A step is stored as JSON (its ``get_params`` and its fitted scalars) and
float64 arrays named ``<step name>.<attribute>``. Restoring validates every
field against the estimator's parameter constraints and the feature count d,
then sets the fitted attributes, as unpickling would. See
:mod:`crdistance.persistence` for the file around the steps,
:mod:`crdistance.persistence._formats` for the LocalCRDetector and
RBFSampler steps, :mod:`crdistance.persistence._cse_formats` for the
ContrastiveEmbedder and KMeansDetector steps,
:mod:`crdistance.persistence._grad_formats` for GRADDetector,
:mod:`crdistance.persistence._category_formats` for PerCategoryDetector (whose
fitted detectors are steps inside its step) and
:mod:`crdistance.persistence._calibration` for the conformal calibration any
detector step may carry and :mod:`crdistance.persistence._fields` for the
shared checks.
"""

import math

import numpy as np
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from crdistance._detector import CRDetector
from crdistance._linalg import penalties
from crdistance._sklearn_compat import validate_params
from crdistance._validation import check_finite
from crdistance.persistence._calibration import (
    calibration_fields,
    restore_calibration,
    split_calibration,
)
from crdistance.persistence._category_formats import PerCategoryDetectorFormat
from crdistance.persistence._cse_formats import (
    ContrastiveEmbedderFormat,
    KMeansDetectorFormat,
)
from crdistance.persistence._fields import (
    TOLERANCE,
    StepFormat,
    check_keys,
    check_operators,
    check_type,
    count,
    input_fields,
    offset,
    plain,
    real,
    restore_input,
)
from crdistance.persistence._formats import LocalDetectorFormat, RBFSamplerFormat
from crdistance.persistence._grad_formats import GRADDetectorFormat

__all__ = ["DETECTORS", "build_step", "check_model", "encode_step"]

DETECTORS = ("CRDetector", "LocalCRDetector", "KMeansDetector", "GRADDetector",
             "PerCategoryDetector")
"""Classes a model ends in: alone, or as the last step of a Pipeline."""
_STEP_KEYS = {"name", "class", "params", "fitted"}


def encode_step(name, estimator):
    """The header entry of a fitted estimator and its arrays, by array name."""
    step_format = _format_of(name, estimator)
    check_is_fitted(estimator)
    params = step_format.encode_params(estimator.get_params(deep=False))
    step = {
        "name": name,
        "class": step_format.class_name,
        "params": {key: plain(value, f"Step {name!r} parameter {key!r}")
                   for key, value in params.items()},
        "fitted": step_format.fitted(estimator),
    }
    calibration, calibration_arrays = calibration_fields(
        estimator, step_format.substeps)
    step["fitted"].update(calibration)
    arrays = {f"{name}.{attribute}": array
              for attribute, array in (step_format.arrays(estimator)
                                       | calibration_arrays).items()}
    if step_format.substeps is not None:
        entries = []
        for index, sub in enumerate(getattr(estimator, step_format.substeps)):
            sub_name = f"{name}.{step_format.substep_prefix}{index}"
            if type(sub).__name__ not in step_format.substep_classes:
                raise TypeError(
                    f"Step {sub_name!r} is a {type(sub).__name__}; a "
                    f"{step_format.class_name} is saved with "
                    f"{list(step_format.substep_classes)}."
                )
            entry, sub_arrays = encode_step(sub_name, sub)
            entries.append(entry)
            arrays.update(sub_arrays)
        step["fitted"][step_format.substeps] = entries
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
    try:
        estimator = estimator_class(**step_format.decode_params(params))
        validate_params(estimator)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    check_type(fitted, dict, f"{where} fitted")
    fitted, calibration = split_calibration(fitted)
    check_keys(fitted, step_format.fitted_keys, f"{where} fitted")
    if step_format.substeps is not None:
        fitted = {**fitted, step_format.substeps: _build_substeps(
            step_format, name, fitted[step_format.substeps], arrays, where)}

    def take(attribute, shape, given_by="n_features_in_ gives"):
        key = f"{name}.{attribute}"
        if key not in arrays:
            raise ValueError(f"{where} needs the array {key!r}.")
        array = arrays.pop(key)
        if array.shape != shape:
            raise ValueError(
                f"array {key!r} has shape {array.shape}, but {given_by} "
                f"{shape}."
            )
        return check_finite(array, f"array {key!r} holds NaN or infinity.")

    widths = step_format.restore(estimator, fitted, take, where)
    restore_calibration(estimator, calibration, take, where, step_format.substeps)
    return name, estimator, widths


def _build_substeps(step_format, name, entries, arrays, where):
    """The steps a step holds (a PerCategoryDetector's detectors), built, with
    their widths: named ``<name>.<prefix><i>``, of the classes it allows."""
    key = step_format.substeps
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where} {key} must be a non-empty list of steps.")
    built = []
    for index, entry in enumerate(entries):
        check_type(entry, dict, f"{where} {key}[{index}]")
        expected = f"{name}.{step_format.substep_prefix}{index}"
        if entry.get("name") != expected:
            raise ValueError(
                f"{where} {key}[{index}] is named {entry.get('name')!r}, not "
                f"{expected!r}."
            )
        if entry.get("class") not in step_format.substep_classes:
            raise ValueError(
                f"{where} {key}[{index}] has class {entry.get('class')!r}; a "
                f"{step_format.class_name} holds {list(step_format.substep_classes)}."
            )
        _, estimator, width = build_step(entry, arrays)
        built.append((estimator, width))
    return built


def check_model(model, classes):
    """Check that the header's ``model`` and its steps' classes make a detector
    of :data:`DETECTORS` alone, or a Pipeline ending in its only detector."""
    is_detector = [name in DETECTORS for name in classes]  # no hashing: any JSON
    if model in DETECTORS:
        if classes != [model]:
            raise ValueError(f"a {model} model has the steps {classes}.")
    elif model != "Pipeline" or not is_detector[-1] or any(is_detector[:-1]):
        raise ValueError(
            f"model {model!r} with steps {classes} is not one of "
            f"{list(DETECTORS)} or a Pipeline ending in its only detector."
        )


def _format_of(name, estimator):
    step_format = _STEP_FORMATS.get(type(estimator).__name__)
    if step_format is None or type(estimator) is not step_format.estimator_class():
        raise TypeError(
            f"Step {name!r} is a {type(estimator).__name__}; save supports "
            f"{sorted(_STEP_FORMATS)} (joblib saves any estimator, as a file "
            "that runs code when loaded)."
        )
    return step_format


class _DetectorFormat(StepFormat):
    class_name = "CRDetector"
    array_attributes = ("gram_", "residual_operator_")
    fitted_keys = {"lam_", "n_features_in_", "n_samples_seen_",
                   "patches_per_sample_", "offset_", "solver_", "feature_names_in_"}

    @staticmethod
    def estimator_class():
        return CRDetector

    @staticmethod
    def fitted(detector):
        return {
            **input_fields(detector),
            "lam_": float(detector.lam_),
            "patches_per_sample_": int(detector.patches_per_sample_),
            "offset_": float(detector.offset_),
            "solver_": detector.solver_,
        }

    @staticmethod
    def restore(detector, fitted, take, where):
        d = restore_input(detector, fitted, where)
        gram = take("gram_", (d, d))
        operator = take("residual_operator_", (d, d))
        check_operators(gram, operator, f"{where} gram_",
                        f"{where} residual_operator_")
        lam = real(fitted, "lam_", where)
        if lam <= 0 or not math.isclose(
            lam, float(penalties(detector.lam, gram, detector.lam_scale)),
            rel_tol=TOLERANCE,
        ):
            raise ValueError(
                f"{where} lam_={lam!r} is not the penalty of lam={detector.lam!r} "
                f"and lam_scale={detector.lam_scale!r} for gram_."
            )
        if fitted["solver_"] not in ("cholesky", "eigh"):
            raise ValueError(f"{where} solver_={fitted['solver_']!r} is unknown.")
        detector.gram_, detector.residual_operator_ = gram, operator
        detector.lam_, detector.offset_ = lam, offset(fitted, where)
        detector.solver_ = fitted["solver_"]
        detector.patches_per_sample_ = count(fitted, "patches_per_sample_", where)
        return d, None


class _ScalerFormat(StepFormat):
    class_name = "StandardScaler"
    fitted_keys = {"n_features_in_", "n_samples_seen_", "feature_names_in_"}

    @staticmethod
    def estimator_class():
        return StandardScaler

    @staticmethod
    def fitted(scaler):
        return input_fields(scaler)

    @staticmethod
    def arrays(scaler):
        names = ["mean_"] if scaler.with_mean else []
        if scaler.with_std:
            names += ["var_", "scale_"]
        return {name: getattr(scaler, name) for name in names}

    @staticmethod
    def restore(scaler, fitted, take, where):
        d = restore_input(scaler, fitted, where)
        scaler.mean_ = take("mean_", (d,)) if scaler.with_mean else None
        scaler.var_ = scaler.scale_ = None
        if scaler.with_std:
            scaler.var_, scaler.scale_ = take("var_", (d,)), take("scale_", (d,))
            if np.any(scaler.var_ < 0) or np.any(scaler.scale_ <= 0):
                raise ValueError(f"{where} var_ < 0 or scale_ <= 0.")
        return d, d


class _FeaturizerFormat(StepFormat):
    """PatchFeaturizer: parameters and layers; the weights come from ``weights``."""

    class_name = "PatchFeaturizer"
    fitted_keys = {"layers_", "layer_channels_", "n_features_out_"}

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
                "layer_channels_": list(featurizer.layer_channels_),
                "n_features_out_": int(featurizer.n_features_out_)}

    @staticmethod
    def restore(featurizer, fitted, take, where):
        from crdistance.featurizer._backbones import check_backbone_name, default_layers

        check_backbone_name(featurizer.backbone)
        layers = (default_layers(featurizer.backbone) if featurizer.layers is None
                  else tuple(featurizer.layers))
        if fitted["layers_"] != list(layers):
            raise ValueError(
                f"{where} layers_={fitted['layers_']!r} are not the layers "
                f"{list(layers)} its parameters give."
            )
        channels = fitted["layer_channels_"]
        n_features = count(fitted, "n_features_out_", where)
        if not (
            isinstance(channels, list)
            and len(channels) == len(layers)
            and all(type(size) is int and size >= 1 for size in channels)
            and sum(channels) == n_features
        ):
            raise ValueError(
                f"{where} layer_channels_={channels!r} must be one int >= 1 per "
                f"layer of {list(layers)}, adding up to n_features_out_={n_features}."
            )
        featurizer.layers_ = layers
        featurizer.layer_channels_ = tuple(channels)
        featurizer.n_features_out_ = n_features
        return None, n_features


_STEP_FORMATS = {step_format.class_name: step_format for step_format in (
    _DetectorFormat, LocalDetectorFormat, KMeansDetectorFormat, GRADDetectorFormat,
    PerCategoryDetectorFormat, _ScalerFormat, RBFSamplerFormat, _FeaturizerFormat,
    ContrastiveEmbedderFormat,
)}
