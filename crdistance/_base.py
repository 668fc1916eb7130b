"""The outlier-detection API shared by CRD and the baseline detectors.

A detector provides ``_distances(X_rows)``, the positive anomaly distance of
each row of features. This mixin turns it into scikit-learn's outlier contract
(``score_samples``, ``decision_function``, ``predict``) and into per-patch maps.
A patch set (one image's patches) is scored by its worst patch.
"""

import numpy as np
from sklearn.base import OutlierMixin
from sklearn.utils.validation import check_is_fitted

from crdistance._array_api import namespace_and_device, to_numpy
from crdistance._validation import validate_features

__all__ = ["PatchOutlierMixin"]


class PatchOutlierMixin(OutlierMixin):
    """Outlier API over a per-row distance, with patch sets scored by their maximum.

    Subclasses implement ``_distances(X_rows)`` and call ``_fit_offset`` at the end
    of ``fit``; ``offset_`` is then on the scale of what ``fit`` received (rows
    for 2-D input, images for patch sets). They support the Array API (the
    ``array_api_support`` tag), and the fitted arrays they list in
    ``_device_attributes`` are pickled as NumPy arrays, so that a model fitted on
    a GPU loads where neither torch nor CuPy is installed.
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
        if contamination == "max":
            self.offset_ = -float(np.max(distances))
        else:
            self.offset_ = float(np.percentile(-distances, 100.0 * contamination))

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

