"""Mondrian conformal calibration of a routed detector: one threshold per category.

:class:`MondrianCalibrationMixin` gives
:class:`~crdistance.categories.PerCategoryDetector` its ``calibrate``,
``calibrate_distances``, ``p_values`` and ``threshold_at``: the held-out
samples of each category calibrate that category's detector alone (see
:mod:`crdistance.calibration`), so that the false-alarm rate is bounded in
every category, not only on average over them (Vovk et al. 2005, "Mondrian"
conformal prediction). The class using it has ``categories_``, ``detectors_``,
``_route(X_rows, patch_shape)`` and ``_by_category(X_rows, patch_shape, codes,
score, normalise)``.
"""

import copy

import numpy as np
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from crdistance._array_api import to_numpy
from crdistance._routing import category_threshold, label_codes
from crdistance._validation import validate_features

__all__ = ["MondrianCalibrationMixin"]


class MondrianCalibrationMixin:
    """Per-category conformal calibration, for a detector of routed categories."""

    def calibrate(self, X, y=None, *, false_alarm_rate=0.01):
        """Calibrate each category's detector on its own held-out normal samples.

        Mondrian split conformal prediction: each category's samples set its
        threshold (see :meth:`CRDetector.calibrate
        <crdistance.CRDetector.calibrate>`), which bounds the false-alarm rate
        per category, not only on average.

        Parameters
        ----------
        X : array-like, shaped as for :meth:`fit`
            Normal features held out of the fit.
        y : array-like of shape (n_samples,) or (n_images,), or None
            Labels of ``categories_``; None routes the samples instead.
        false_alarm_rate : float, default=0.01
            The rate in (0, 1) to bound in every category.

        Returns
        -------
        self : PerCategoryDetector
            With every detector calibrated and ``false_alarm_rate_`` set.
        """
        check_is_fitted(self)
        X_rows, patch_shape = validate_features(self, X, reset=False)
        codes = (self._route(X_rows, patch_shape)[0] if y is None else
                 label_codes(y, self.categories_, X_rows, patch_shape))
        distances = to_numpy(self._by_category(X_rows, patch_shape, codes,
                                               _distances, normalise=False))
        return self._calibrate_codes(distances, codes, false_alarm_rate)

    def calibrate_distances(self, distances, y, *, false_alarm_rate=0.01):
        """:meth:`calibrate` from distances already computed, per category.

        Parameters
        ----------
        distances : array-like of shape (n_samples,)
            Each held-out sample's distance by its own category's detector
            (``-detectors_[c].score_samples``, not normalised).
        y : array-like of shape (n_samples,)
            The category of each, a label of ``categories_``.
        false_alarm_rate : float, default=0.01
            The rate in (0, 1) to bound in every category.

        Returns
        -------
        self : PerCategoryDetector
            The calibrated detector.
        """
        check_is_fitted(self)
        distances = to_numpy(distances)
        codes = label_codes(y, self.categories_, distances, None)
        return self._calibrate_codes(distances, codes, false_alarm_rate)

    def _calibrate_codes(self, distances, codes, false_alarm_rate):
        missing = [category for code, category in enumerate(self.categories_)
                   if not np.any(codes == code)]
        if missing:
            raise ValueError(
                f"calibrate has no samples of the categories {missing}: every "
                "category needs its own held-out normal samples."
            )
        calibrated = []  # shallow copies: all categories change, or none
        for code, (detector, category) in enumerate(
                zip(self.detectors_, self.categories_, strict=True)):
            try:
                detector = copy.copy(detector).calibrate_distances(
                    distances[codes == code], false_alarm_rate=false_alarm_rate)
            except ValueError as error:
                raise ValueError(f"category {category!r}: {error}") from None
            category_threshold(detector, category)
            calibrated.append(detector)
        self.detectors_ = calibrated
        self.false_alarm_rate_ = float(false_alarm_rate)
        return self

    def p_values(self, X):
        """Conformal p-value of each sample against its routed category.

        Parameters
        ----------
        X : array-like, shaped as for :meth:`fit`
            Query features.

        Returns
        -------
        p_values : ndarray of shape (n_samples,) or (n_images,)
            The routed detector's ``p_values`` (NumPy float64).
        """
        self._calibrated()
        X_rows, patch_shape = validate_features(self, X, reset=False)
        codes, _ = self._route(X_rows, patch_shape)
        return to_numpy(self._by_category(X_rows, patch_shape, codes, _p_values,
                                             normalise=False))

    def threshold_at(self, false_alarm_rate):
        """Each category's calibrated threshold for another false-alarm rate.

        Parameters
        ----------
        false_alarm_rate : float
            A rate every category's calibration set allows.

        Returns
        -------
        thresholds : dict
            Per category label, the threshold in the units of
            :meth:`score_samples` (1.0 at ``false_alarm_rate_``).
        """
        self._calibrated()
        return {category: detector.threshold_at(false_alarm_rate)
                / category_threshold(detector, category)
                for detector, category in zip(self.detectors_, self.categories_,
                                              strict=True)}

    def _calibrated(self):
        check_is_fitted(self)
        if getattr(self, "false_alarm_rate_", None) is None:
            raise NotFittedError(
                "This PerCategoryDetector is not calibrated: call "
                "calibrate(X_normal_held_out, y) first."
            )



def _p_values(detector, items):
    return detector.p_values(items)


def _distances(detector, items):
    return -detector.score_samples(items)
