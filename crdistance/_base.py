"""The outlier-detection API shared by CRD and the baseline detectors.

A detector provides ``_distances(X_rows)``, the positive anomaly distance of
each row of features. This mixin turns it into scikit-learn's outlier contract
(``score_samples``, ``decision_function``, ``predict``) and into per-patch maps.
A patch set (one image's patches) is scored by its worst patch.
"""

import numpy as np
from sklearn.base import OutlierMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from crdistance._array_api import namespace_and_device, to_numpy
from crdistance._conformal import (
    calibration_scores,
    conformal_p_values,
    conformal_threshold,
)
from crdistance._validation import validate_features

__all__ = ["PatchOutlierMixin"]


class PatchOutlierMixin(OutlierMixin):
    """Outlier API over a per-row distance, with patch sets scored by their maximum.

    Subclasses implement ``_distances(X_rows)`` and call ``_fit_offset`` at the end
    of ``fit``; ``offset_`` is then on the scale of what ``fit`` received (rows
    for 2-D input, images for patch sets). :meth:`calibrate` replaces that
    threshold by a conformal one set on held-out normal samples, and gives
    :meth:`p_values` and :meth:`threshold_at`; fitting again forgets it. They
    support the Array API (the ``array_api_support`` tag), and the fitted arrays
    they list in ``_device_attributes`` are pickled as NumPy arrays, so that a
    model fitted on a GPU loads where neither torch nor CuPy is installed.
    """

    _device_attributes = ()

    def score_patches(self, X):
        """Anomaly distance of every row or patch, with the input's spatial shape.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Query features; NumPy, torch, CuPy or any Array API array.

        Returns
        -------
        distances : array of shape X.shape[:-1]
            Non-negative distance per row or patch (larger = more anomalous), in
            the input's namespace and on its device: an anomaly map per image for
            4-D input.
        """
        check_is_fitted(self)
        X_rows, patch_shape = validate_features(self, X, reset=False)
        distances = self._distances(X_rows)
        if patch_shape is None:
            return distances
        xp, _ = namespace_and_device(distances)
        return xp.reshape(distances, patch_shape)

    def score_samples(self, X):
        """Opposite of the anomaly distance: the higher, the more normal.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Query features. A patch set is scored by its most anomalous patch.

        Returns
        -------
        scores : array of shape (n_samples,) or (n_images,)
            Minus the distance, in the input's namespace and on its device.
        """
        check_is_fitted(self)
        X_rows, patch_shape = validate_features(self, X, reset=False)
        return -self._sample_distances(X_rows, patch_shape)

    def decision_function(self, X):
        """Shifted score: negative for outliers, non-negative for inliers.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Query features.

        Returns
        -------
        decision : array of shape (n_samples,) or (n_images,)
            ``score_samples(X) - offset_``.
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """Label each sample (or image) as inlier (+1) or outlier (-1).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Query features.

        Returns
        -------
        labels : integer array of shape (n_samples,) or (n_images,)
            +1 where ``decision_function(X) >= 0``, -1 elsewhere.
        """
        decision = self.decision_function(X)
        xp, device = namespace_and_device(decision)
        inlier = xp.asarray(1, device=device)
        return xp.where(decision < 0, -inlier, inlier)

    def calibrate(self, X, *, false_alarm_rate=0.01):
        """Set the threshold on held-out normal samples by split conformal prediction.

        The threshold becomes the ``ceil((n + 1)(1 - false_alarm_rate))``-th
        smallest distance of the n samples of `X`: a new sample exchangeable
        with them (normal, from the same process, and like them not used in
        the fit) is then flagged with probability at most `false_alarm_rate`.
        The sorted distances are kept for :meth:`p_values` and
        :meth:`threshold_at`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Features of normal samples (or images) held out of the fit.
        false_alarm_rate : float, default=0.01
            The rate alpha in (0, 1) to bound; needs at least
            ``ceil(1 / alpha - 1)`` samples (99 for 0.01).

        Returns
        -------
        self : object
            The detector, with ``calibration_scores_``, ``false_alarm_rate_``
            and ``offset_`` set.

        Raises
        ------
        ValueError
            If `X` is too small for `false_alarm_rate` (the message names the
            smallest rate it allows, ``1 / (n + 1)``), or its distances are
            not finite.

        See Also
        --------
        crdistance.calibration.calibrate : The same for a Pipeline.

        Notes
        -----
        The guarantee is marginal, over the draw of the calibration set, and
        holds only while the data stay exchangeable: recalibrate after a
        change of camera, lighting or product. Calibrating on training
        samples gives too low a threshold (their distances are smaller).

        Examples
        --------
        >>> import numpy as np
        >>> from crdistance import CRDetector
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(600, 5))
        >>> detector = CRDetector(lam=1.0).fit(X[:300])
        >>> detector = detector.calibrate(X[300:500], false_alarm_rate=0.05)
        >>> float(np.mean(detector.predict(X[500:]) == -1)) <= 0.1
        True
        >>> detector.p_values(X[500:503]).round(3)
        array([0.065, 0.915, 0.473])
        """
        check_is_fitted(self)
        X_rows, patch_shape = validate_features(self, X, reset=False)
        return self.calibrate_distances(
            to_numpy(self._sample_distances(X_rows, patch_shape)),
            false_alarm_rate=false_alarm_rate)

    def calibrate_distances(self, distances, *, false_alarm_rate=0.01):
        """:meth:`calibrate` from distances already computed.

        For held-out samples scored in batches (as ``crdistance fit`` does with
        its held-out images): the same threshold as :meth:`calibrate` on them.

        Parameters
        ----------
        distances : array-like of shape (n_samples,)
            ``-score_samples`` of the held-out normal samples (or images).
        false_alarm_rate : float, default=0.01
            The rate alpha in (0, 1) to bound.

        Returns
        -------
        self : object
            The calibrated detector.
        """
        check_is_fitted(self)
        scores = calibration_scores(
            to_numpy(distances), f"{type(self).__name__}.calibrate")
        threshold = conformal_threshold(scores, false_alarm_rate)
        self.calibration_scores_ = scores
        self.false_alarm_rate_ = float(false_alarm_rate)
        self.offset_ = -threshold
        return self

    def p_values(self, X):
        """Conformal p-value of each sample (or image) against the calibration set.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Query features.

        Returns
        -------
        p_values : ndarray of shape (n_samples,) or (n_images,)
            ``(1 + #{calibration distances >= d}) / (n + 1)`` for a sample of
            distance d (NumPy float64, in ``[1 / (n + 1), 1]``): small means
            anomalous; for a normal sample ``P(p <= alpha) <= alpha``, and
            ``p <= false_alarm_rate_`` exactly when :meth:`predict` says -1.
        """
        scores = self._calibration()
        X_rows, patch_shape = validate_features(self, X, reset=False)
        return conformal_p_values(
            scores, to_numpy(self._sample_distances(X_rows, patch_shape)))

    def threshold_at(self, false_alarm_rate):
        """The calibrated distance threshold for another false-alarm rate.

        Parameters
        ----------
        false_alarm_rate : float
            A rate in ``[1 / (n + 1), 1)`` for n calibration samples.

        Returns
        -------
        threshold : float
            Samples of larger distance are outliers at that rate.
        """
        return conformal_threshold(self._calibration(), false_alarm_rate)

    def _calibration(self):
        check_is_fitted(self)
        scores = getattr(self, "calibration_scores_", None)
        if scores is None:
            raise NotFittedError(
                f"This {type(self).__name__} is not calibrated: call "
                "calibrate(X_normal_held_out) first."
            )
        return scores

    @property
    def threshold_(self):
        """Distance above which a sample (or image) is an outlier: ``-offset_``."""
        return -self.offset_

    def _sample_distances(self, X_rows, patch_shape):
        """Row distances, or the largest patch distance of each image."""
        distances = self._distances(X_rows)
        if patch_shape is None:
            return distances
        xp, _ = namespace_and_device(distances)
        return xp.max(xp.reshape(distances, (patch_shape[0], -1)), axis=1)

    def _fit_offset(self, X_rows, patch_shape, contamination):
        """Set ``offset_`` from the training scores (see ``_set_offset``)."""
        self._set_offset(self._sample_distances(X_rows, patch_shape), contamination)

    def _set_offset(self, sample_distances, contamination):
        """``offset_`` from the distances of the training samples.

        ``contamination="max"`` puts the threshold at the largest training distance
        (no training sample is an outlier); a float puts that share of the
        training samples beyond it.
        """
        distances = to_numpy(sample_distances)
        self._forget_calibration()
        if contamination == "max":
            self.offset_ = -float(np.max(distances))
        else:
            self.offset_ = float(np.percentile(-distances, 100.0 * contamination))

    def _forget_calibration(self):
        """Drop the calibration of an earlier fit: a new fit makes it stale."""
        self.__dict__.pop("calibration_scores_", None)
        self.__dict__.pop("false_alarm_rate_", None)

    def __getstate__(self):
        state = super().__getstate__()
        for name in self._device_attributes:
            if state.get(name) is not None:
                state[name] = to_numpy(state[name])
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.array_api_support = True
        return tags

