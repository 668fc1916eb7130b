"""Thresholds with a guarantee: split conformal calibration of a fitted model.

A detector's ``"auto"`` threshold is set on its own training samples, whose
distances are smaller than those of new normal samples, so it flags more than
it promises. Calibration sets it instead on *held-out* normal samples: with n
of them and a rate alpha, the threshold is the ``ceil((n + 1)(1 - alpha))``-th
smallest of their distances, and a new normal sample exchangeable with them is
flagged with probability at most alpha (split conformal prediction, Vovk et
al. 2005; Bates et al. 2023 for anomaly detection). Each query also gets a
conformal p-value, ``(1 + #{calibration distances >= d}) / (n + 1)``.

The functions here take a fitted detector or a Pipeline ending in one
(features or images in, as its ``predict`` takes them); the detectors' own
``calibrate``, ``p_values`` and ``threshold_at`` methods do the same on
features. Exchangeability is the assumption: calibration samples from the
same process as the ones scored, not used in the fit; a change of camera,
lighting or product needs a new calibration.

Examples
--------
>>> import numpy as np
>>> from sklearn.pipeline import make_pipeline
>>> from sklearn.preprocessing import StandardScaler
>>> from crdistance import CRDetector
>>> from crdistance.calibration import calibrate, p_values, threshold_at
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(1000, 4))
>>> model = make_pipeline(StandardScaler(), CRDetector(lam=1.0)).fit(X[:400])
>>> model = calibrate(model, X[400:900], false_alarm_rate=0.05)
>>> model[-1].false_alarm_rate_, len(model[-1].calibration_scores_)
(0.05, 500)
>>> bool(np.mean(model.predict(X[900:]) == -1) <= 0.15)
True
>>> bool(threshold_at(model, 0.01) > threshold_at(model, 0.05))
True
>>> pvalues = p_values(model, X[900:])
>>> bool(np.all((pvalues <= 0.05) == (model.predict(X[900:]) == -1)))
True
"""

import inspect

from sklearn.pipeline import Pipeline

from crdistance._conformal import (
    conformal_p_values,
    conformal_threshold,
    smallest_false_alarm_rate,
)

__all__ = [
    "calibrate",
    "conformal_p_values",
    "conformal_threshold",
    "p_values",
    "smallest_false_alarm_rate",
    "threshold_at",
]


def calibrate(model, X, y=None, *, false_alarm_rate=0.01):
    """Set a fitted model's threshold on held-out normal samples.

    Parameters
    ----------
    model : detector or Pipeline
        A fitted detector of this library (one with ``calibrate``), or a
        fitted Pipeline ending in one.
    X : array-like or list of images
        Normal samples (or images) held out of the fit, as ``model.predict``
        takes them.
    y : array-like of shape (n_samples,), or None
        Category labels, for a :class:`~crdistance.categories.PerCategoryDetector`
        (Mondrian calibration: one threshold per category); None otherwise.
    false_alarm_rate : float, default=0.01
        The rate alpha in (0, 1) to bound; needs at least ``ceil(1 / alpha - 1)``
        samples (per category).

    Returns
    -------
    model : detector or Pipeline
        The same object, its detector calibrated (``calibration_scores_``,
        ``false_alarm_rate_`` and ``offset_`` set).

    See Also
    --------
    crdistance.CRDetector.calibrate : The method on features.
    """
    detector, features = _detector_and_features(model, X)
    if y is None:
        detector.calibrate(features, false_alarm_rate=false_alarm_rate)
    else:
        if "y" not in _arguments(detector.calibrate):
            raise TypeError(
                f"{type(detector).__name__}.calibrate takes no category labels "
                "y; pass y only for a PerCategoryDetector."
            )
        detector.calibrate(features, y, false_alarm_rate=false_alarm_rate)
    return model


def p_values(model, X):
    """Conformal p-value of each sample (or image) of a calibrated model.

    Parameters
    ----------
    model : detector or Pipeline
        Calibrated by :func:`calibrate` (or by the detector's method).
    X : array-like or list of images
        Query samples, as ``model.predict`` takes them.

    Returns
    -------
    p_values : ndarray of shape (n_samples,)
        In ``[1 / (n + 1), 1]``; small means anomalous, and a sample is an
        outlier at the calibrated rate exactly when its p-value is at most
        ``false_alarm_rate_``.
    """
    detector, features = _detector_and_features(model, X)
    return detector.p_values(features)


def threshold_at(model, false_alarm_rate):
    """The calibrated threshold of a model for another false-alarm rate.

    Parameters
    ----------
    model : detector or Pipeline
        Calibrated by :func:`calibrate` (or by the detector's method).
    false_alarm_rate : float
        A rate in ``[1 / (n + 1), 1)`` for n calibration samples.

    Returns
    -------
    threshold : float or dict
        A distance (``-score_samples`` units); for a PerCategoryDetector a
        dict of one threshold per category, in its normalised units.
    """
    detector = model[-1] if isinstance(model, Pipeline) else model
    _check_detector(detector)
    return detector.threshold_at(false_alarm_rate)


def _detector_and_features(model, X):
    if isinstance(model, Pipeline):
        detector = model[-1]
        _check_detector(detector)
        if len(model) > 1:
            X = model[:-1].transform(X)
        return detector, X
    _check_detector(model)
    return model, X


def _check_detector(detector):
    if not all(hasattr(detector, name) for name in ("calibrate", "p_values",
                                                     "threshold_at")):
        raise TypeError(
            f"{type(detector).__name__} cannot be calibrated: calibration needs a "
            "detector of crdistance (CRDetector, LocalCRDetector, KMeansDetector, "
            "GRADDetector, PerCategoryDetector) or a Pipeline ending in one."
        )


def _arguments(method):
    return inspect.signature(method).parameters
