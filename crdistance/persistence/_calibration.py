"""The conformal calibration of a saved detector, and its checks at load.

A calibrated detector (see :meth:`crdistance.CRDetector.calibrate`) adds to its
step the fitted scalars ``false_alarm_rate_`` and ``n_calibration_`` and the
array ``<step name>.calibration_scores_`` of shape ``(n_calibration_,)``; a
calibrated :class:`~crdistance.categories.PerCategoryDetector` adds only
``false_alarm_rate_``, its detectors (sub-steps) hold the scores. Any step
format may carry them. At load the scores must be finite, >= 0 and sorted,
the rate in ``[1 / (n + 1), 1)``, and the step's threshold ``-offset_`` the
conformal one of the scores at that rate: a file whose threshold and scores
disagree (one edited without the other) is refused.
"""

import math

import numpy as np

from crdistance._conformal import conformal_threshold, smallest_false_alarm_rate
from crdistance.persistence._fields import TOLERANCE, count, real

__all__ = ["calibration_fields", "restore_calibration", "split_calibration"]

RATE = "false_alarm_rate_"
COUNT = "n_calibration_"
SCORES = "calibration_scores_"


def calibration_fields(estimator, substeps):
    """The fitted scalars and arrays (by attribute) of a calibrated estimator;
    two empty dicts when it is not calibrated."""
    rate = getattr(estimator, RATE, None)
    if rate is None:
        return {}, {}
    if substeps is not None:
        return {RATE: float(rate)}, {}
    scores = np.asarray(getattr(estimator, SCORES), dtype=np.float64)
    return {RATE: float(rate), COUNT: int(scores.shape[0])}, {SCORES: scores}


def split_calibration(fitted):
    """``fitted`` without the calibration fields, and those fields."""
    rest = {key: value for key, value in fitted.items() if key not in (RATE, COUNT)}
    return rest, {key: fitted[key] for key in (RATE, COUNT) if key in fitted}


def restore_calibration(estimator, calibration, take, where, substeps):
    """Check the calibration fields of a built step and set them.

    ``substeps`` is the list attribute of the detectors a step holds (None
    for a plain detector): each of them must then be calibrated at the rate.
    """
    if not calibration:
        if substeps is not None and any(
                getattr(sub, RATE, None) is not None
                for sub in getattr(estimator, substeps)):
            raise ValueError(
                f"{where} has calibrated detectors but no {RATE}: a "
                "calibration covers every category or none."
            )
        return
    if RATE not in calibration:
        raise ValueError(f"{where} has {COUNT} but no {RATE}.")
    rate = real(calibration, RATE, where)
    if not 0 < rate < 1:
        raise ValueError(f"{where} {RATE}={rate!r} is not in (0, 1).")
    if substeps is not None:
        if COUNT in calibration:
            raise ValueError(f"{where} has {COUNT}; its detectors hold the counts.")
        for index, sub in enumerate(getattr(estimator, substeps)):
            sub_rate = getattr(sub, RATE, None)
            if sub_rate is None or not math.isclose(sub_rate, rate, rel_tol=1e-12):
                raise ValueError(
                    f"{where} {RATE}={rate!r}, but its detector {index} is "
                    f"calibrated at {sub_rate!r}: all share one rate."
                )
        setattr(estimator, RATE, rate)
        return
    if COUNT not in calibration:
        raise ValueError(f"{where} has {RATE} but no {COUNT}.")
    n = count(calibration, COUNT, where)
    scores = take(SCORES, (n,), f"{COUNT}={n} gives")
    if np.any(scores < 0) or np.any(np.diff(scores) < 0):
        raise ValueError(
            f"{where} {SCORES} must be distances >= 0 in increasing order.")
    if rate < smallest_false_alarm_rate(n) * (1 - 1e-12):
        raise ValueError(
            f"{where} {RATE}={rate!r} is below 1 / (n + 1) for its {n} "
            "calibration scores.")
    threshold = conformal_threshold(scores, rate)
    stored = -float(estimator.offset_)
    if not math.isclose(stored, threshold, rel_tol=TOLERANCE, abs_tol=0.0):
        raise ValueError(
            f"{where} has the threshold {stored!r} (-offset_), but its calibration "
            f"scores give {threshold!r} at {RATE}={rate!r}: the file was edited "
            "inconsistently."
        )
    setattr(estimator, SCORES, scores)
    setattr(estimator, RATE, rate)
