"""Split conformal prediction on the anomaly distances of held-out normal samples.

With n calibration distances s_1..s_n of normal samples and a new distance s,
exchangeable with them (the same process, no drift, calibration samples not
used in the fit), the threshold t = s_(k), the k-th smallest with
k = ceil((n + 1)(1 - alpha)), gives P(s > t) <= alpha, and the p-value
p(s) = (1 + #{i : s_i >= s}) / (n + 1) gives P(p(s) <= alpha) <= alpha:
``s > t`` exactly when ``p(s) <= alpha``. For continuous distances the false-
alarm rate also stays above alpha - 1 / (n + 1). The guarantee is marginal
(averaged over calibration sets) and needs k <= n, that is
alpha >= 1 / (n + 1).
"""

import math

import numpy as np

__all__ = ["calibration_scores", "conformal_p_values", "conformal_threshold",
           "smallest_false_alarm_rate"]


def smallest_false_alarm_rate(n_calibration):
    """The smallest rate n calibration samples can guarantee: 1 / (n + 1).

    Parameters
    ----------
    n_calibration : int
        Number of held-out normal samples.

    Returns
    -------
    rate : float
        ``1 / (n_calibration + 1)``: the rate of the largest calibration
        distance as threshold.

    Examples
    --------
    >>> from crdistance.calibration import smallest_false_alarm_rate
    >>> smallest_false_alarm_rate(99)
    0.01
    """
    return 1.0 / (n_calibration + 1)


def calibration_scores(distances, where="calibration"):
    """Sorted float64 copy of a 1-D set of finite distances; ValueError else."""
    scores = np.asarray(distances, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(
            f"{where} needs one distance per sample (1-D), got shape {scores.shape}.")
    if scores.size == 0:
        raise ValueError(f"{where} needs at least one held-out normal sample.")
    if not np.all(np.isfinite(scores)):
        raise ValueError(
            f"{where}: {int(np.sum(~np.isfinite(scores)))} of {scores.size} "
            "calibration distances are NaN or infinite."
        )
    if np.any(scores < 0):
        raise ValueError(
            f"{where}: {int(np.sum(scores < 0))} calibration distances are "
            "negative; distances are >= 0 (pass -score_samples, not score_samples)."
        )
    return np.sort(scores)


def conformal_threshold(sorted_scores, false_alarm_rate):
    """The ceil((n + 1)(1 - alpha))-th smallest of the sorted calibration scores.

    Parameters
    ----------
    sorted_scores : ndarray of shape (n,)
        Distances of held-out normal samples, in increasing order.
    false_alarm_rate : float
        The rate alpha in ``[1 / (n + 1), 1)`` to bound.

    Returns
    -------
    threshold : float
        A new exchangeable normal sample's distance exceeds it with
        probability at most alpha.

    Raises
    ------
    ValueError
        When the calibration set is too small for the rate (the message
        names the smallest possible one, ``1 / (n + 1)``).

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.calibration import conformal_threshold
    >>> scores = np.arange(1.0, 20.0)   # 19 held-out distances
    >>> conformal_threshold(scores, 0.05), conformal_threshold(scores, 0.2)
    (19.0, 16.0)
    """
    alpha = _rate(false_alarm_rate)
    n = len(sorted_scores)
    k = math.ceil((n + 1) * (1.0 - alpha) - 1e-12)
    if k > n:
        needed = math.ceil(1.0 / alpha - 1.0 - 1e-9)
        raise ValueError(
            f"false_alarm_rate={alpha:g} needs at least {needed} calibration "
            f"samples; with {n}, the smallest rate is 1/(n+1) = "
            f"{smallest_false_alarm_rate(n):.4g}."
        )
    return float(sorted_scores[max(k, 1) - 1])


def conformal_p_values(sorted_scores, distances):
    """(1 + #{calibration scores >= s}) / (n + 1) for each distance s.

    Parameters
    ----------
    sorted_scores : ndarray of shape (n,)
        Distances of held-out normal samples, in increasing order.
    distances : array-like
        Distances of query samples.

    Returns
    -------
    p_values : ndarray of the shape of `distances`
        In ``[1 / (n + 1), 1]`` (NaN for a NaN distance); for a normal query
        ``P(p <= alpha) <= alpha``, and ``p <= alpha`` exactly when the
        distance exceeds ``conformal_threshold(sorted_scores, alpha)``.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.calibration import conformal_p_values
    >>> conformal_p_values(np.arange(1.0, 20.0), [0.5, 16.5, 25.0])
    array([1.  , 0.2 , 0.05])
    """
    distances = np.asarray(distances, dtype=np.float64)
    n = len(sorted_scores)
    at_least = n - np.searchsorted(sorted_scores, distances, side="left")
    p_values = (1.0 + at_least) / (n + 1.0)
    # NaN distances are not evidence of normality: p-value NaN, not 1.
    return np.where(np.isnan(distances), np.nan, p_values)


def _rate(false_alarm_rate):
    if isinstance(false_alarm_rate, bool) or not isinstance(
            false_alarm_rate, int | float | np.floating | np.integer):
        raise TypeError(
            f"false_alarm_rate must be a number in (0, 1), got "
            f"{type(false_alarm_rate).__name__}."
        )
    alpha = float(false_alarm_rate)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"false_alarm_rate must lie in (0, 1), got {alpha!r}.")
    return alpha
