"""One detector per product category behind a router: :class:`PerCategoryDetector`.

One model for a line that inspects several products: one clone of a detector
per category label, and a router that sends each query image (or row) to one of
them. Distances are in units of the routed category's threshold, so that one
threshold (1.0) holds for every category.
"""


import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.utils import get_tags
from sklearn.utils.validation import check_is_fitted

from crdistance._array_api import move_to, namespace_and_device, to_numpy
from crdistance._base import PatchOutlierMixin
from crdistance._detector import CRDetector
from crdistance._mondrian import MondrianCalibrationMixin
from crdistance._routing import (
    category_threshold,
    encode_labels,
    item_means,
    items_of,
    nearest,
    patch_distances,
    per_group,
)
from crdistance._sklearn_compat import HasMethods, StrOptions, fit_context
from crdistance._validation import validate_features

__all__ = ["PerCategoryDetector"]


class PerCategoryDetector(MondrianCalibrationMixin, PatchOutlierMixin, BaseEstimator):
    """One anomaly detector per category, with a router that picks one per query.

    ``fit`` fits one clone of `detector` on the samples of each category label
    ``y`` (rows of 2-D input, images of patch sets). A query is routed to one
    category, a whole image at a time for patch sets, and scored by that
    category's detector alone, divided by its threshold: a sample is an outlier
    when its distance exceeds its own category's threshold.

    Parameters
    ----------
    detector : estimator or None, default=None
        The outlier detector fitted per category (cloned), with ``fit``,
        ``score_samples`` and ``offset_``; ``score_patches`` too for patch
        sets. None is ``CRDetector(lam=0.01, lam_scale="trace")``, the
        ``crd`` of the benchmarks and the command line's default.
    routing : {"nearest_mean", "min_score"}, default="nearest_mean"
        How a query picks its category.

        - ``"nearest_mean"``: the category whose mean feature vector
          (``category_means_``) is nearest, in Euclidean distance, to the
          query's mean feature (its mean patch feature for an image, the row
          itself for 2-D input). One ``(n_categories, d)`` comparison.
        - ``"min_score"``: every category's detector scores the query and the
          category of lowest *normalised* distance (image distance divided by
          that detector's ``threshold_``) wins: the category that finds the
          query most normal relative to its own threshold. Costs one scoring
          per category.

        Ties go to the first category of ``categories_``.

    Attributes
    ----------
    categories_ : list of shape (n_categories,)
        The distinct labels of ``y``, sorted (Python scalars); ``[None]`` when
        ``fit`` had ``y=None`` (one category).
    detectors_ : list of shape (n_categories,)
        The fitted detectors; ``detectors_[i]`` is that of ``categories_[i]``.
    category_means_ : array of shape (n_categories, `n_features_in_`)
        Mean feature vector of each category's training samples (for patch
        sets the mean, over its images, of each image's mean patch feature),
        in the namespace and on the device of the training input (pickled as
        NumPy). Computed whatever ``routing`` is.
    offset_ : float
        -1.0: ``decision_function = score_samples + 1``, since scores are in
        units of the routed category's threshold (``threshold_`` is 1.0).
    n_features_in_ : int
        Number of features d.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Feature names, when ``X`` had string column names.

    See Also
    --------
    crdistance.CRDetector : The default per-category detector.
    crdistance.LocalCRDetector : One Gram matrix per k-means cell, for one
        category whose normal features form several clusters without labels.

    Notes
    -----
    The distance of a sample routed to category c is ``d_c(x) / t_c``, with
    ``d_c = -detectors_[c].score_samples`` and ``t_c = detectors_[c].threshold_``
    (``-offset_``); :meth:`score_patches` divides the routed detector's
    ``score_patches`` by ``t_c`` too. Distances and anomaly maps are thus in
    units of the category threshold, 1.0 is the decision boundary, and images of
    different categories compare. ``fit`` raises a ``ValueError`` naming the
    category when a threshold is not positive and finite. With ``y=None`` or a
    single category, scores are exactly the detector's divided by its threshold.

    The router never sees defects: a defective image may go to another
    category, where it is usually still an outlier. ``"min_score"`` picks the
    category that finds an image most normal, so it can only lower its score
    relative to routing by the true category; ``"nearest_mean"`` is cheaper.

    Input may be NumPy or any Array API array that the detector accepts
    (torch, CuPy, ...); scores come back in the input's namespace and on its
    device, and :meth:`route` returns NumPy labels. ``fit`` needs one label
    per row of 2-D input and one per image of a patch set; :meth:`fit_predict`
    passes ``y`` on to ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.categories import PerCategoryDetector
    >>> rng = np.random.default_rng(0)
    >>> bolts = np.zeros((200, 4))
    >>> bolts[:, :2] = rng.normal(size=(200, 2))  # bolts vary in features 0, 1
    >>> nuts = np.zeros((200, 4))
    >>> nuts[:, 2:] = 5 + rng.normal(size=(200, 2))  # nuts in features 2, 3
    >>> y = ["bolt"] * 200 + ["nut"] * 200
    >>> model = PerCategoryDetector().fit(np.concatenate([bolts, nuts]), y)
    >>> model.categories_
    ['bolt', 'nut']
    >>> queries = np.array([[1.0, -1.0, 0.0, 0.0],   # a normal bolt
    ...                     [0.0, 0.0, 5.0, 6.0],    # a normal nut
    ...                     [1.0, -1.0, 0.0, 3.0]])  # a bolt off its plane
    >>> model.route(queries)
    array(['bolt', 'nut', 'bolt'], dtype='<U4')
    >>> model.predict(queries)
    array([ 1,  1, -1])
    """

    _device_attributes = ("category_means_",)

    _parameter_constraints: dict = {
        "detector": [HasMethods(["fit", "score_samples"]), None],
        "routing": [StrOptions({"nearest_mean", "min_score"})],
    }

    def __init__(self, detector=None, *, routing="nearest_mean"):
        self.detector = detector
        self.routing = routing

    @fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        """Fit one detector per category on that category's samples.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Normal training features of all categories.
        y : array-like of shape (n_samples,) or (n_images,), or None
            Category label of each sample (each image for patch sets); None
            fits a single category.

        Returns
        -------
        self : PerCategoryDetector
            The fitted detector.
        """
        X_rows, patch_shape = validate_features(self, X, reset=True)
        xp, device = namespace_and_device(X_rows)
        items = items_of(X_rows, patch_shape)
        n_items = items.shape[0]
        if y is None:
            categories, codes = [None], np.zeros(n_items, dtype=np.intp)
        else:
            categories, codes = encode_labels(y, n_items, patch_shape)
        means_of_items = item_means(X_rows, patch_shape)
        detectors, means = [], []
        for code, category in enumerate(categories):
            members = xp.asarray(np.flatnonzero(codes == code), device=device)
            detector = clone(self._base_detector())
            try:
                detector.fit(xp.take(items, members, axis=0))
            except Exception as error:
                error.add_note(f"(fitting the detector of category {category!r})")
                raise
            category_threshold(detector, category)
            detectors.append(detector)
            means.append(xp.mean(xp.take(means_of_items, members, axis=0), axis=0))
        self.categories_ = categories
        self.detectors_ = detectors
        self.category_means_ = xp.stack(means)
        self.offset_ = -1.0
        self._forget_calibration()
        return self

    def fit_predict(self, X, y=None):
        """Fit on ``X`` with category labels ``y``, then label ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Normal training features.
        y : array-like of shape (n_samples,) or (n_images,), or None
            Category labels, as for :meth:`fit`.

        Returns
        -------
        labels : integer array of shape (n_samples,) or (n_images,)
            +1 for inliers, -1 for outliers.
        """
        return self.fit(X, y).predict(X)

    def route(self, X):
        """The category each sample (or image) is scored by.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Query features; a patch set is routed a whole image at a time.

        Returns
        -------
        categories : ndarray of shape (n_samples,) or (n_images,)
            A label of ``categories_`` per sample or image (NumPy).
        """
        check_is_fitted(self)
        X_rows, patch_shape = validate_features(self, X, reset=False)
        codes, _ = self._route(X_rows, patch_shape)
        return np.asarray(self.categories_)[codes]

    def score_patches(self, X):
        """Distance of every row or patch, in units of its category's threshold.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Query features.

        Returns
        -------
        distances : array of shape X.shape[:-1]
            The routed detector's ``score_patches`` divided by its
            ``threshold_`` (its ``-score_samples`` for 2-D input when it has no
            ``score_patches``), in the input's namespace and on its device.
        """
        check_is_fitted(self)
        X_rows, patch_shape = validate_features(self, X, reset=False)
        codes, _ = self._route(X_rows, patch_shape)
        return self._by_category(X_rows, patch_shape, codes, patch_distances)

    def score_samples(self, X):
        """Opposite of the normalised distance: the higher, the more normal.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Query features.

        Returns
        -------
        scores : array of shape (n_samples,) or (n_images,)
            The routed detector's ``score_samples`` divided by its
            ``threshold_``: below -1 for outliers of their category.
        """
        check_is_fitted(self)
        X_rows, patch_shape = validate_features(self, X, reset=False)
        codes, best = self._route(X_rows, patch_shape)
        if best is not None:
            return best
        return self._by_category(X_rows, patch_shape, codes, _sample_scores)

    def _base_detector(self):
        if self.detector is None:
            return CRDetector(lam=0.01, lam_scale="trace")
        return self.detector

    def _route(self, X_rows, patch_shape):
        """Category index of each item (NumPy), and for ``"min_score"`` the
        normalised scores of the chosen categories (None otherwise)."""
        n_items = X_rows.shape[0] if patch_shape is None else patch_shape[0]
        if len(self.detectors_) == 1:
            return np.zeros(n_items, dtype=np.intp), None
        xp, device = namespace_and_device(X_rows)
        if self.routing == "nearest_mean":
            centers = xp.astype(move_to(self.category_means_, xp, device),
                                X_rows.dtype)
            return nearest(item_means(X_rows, patch_shape), centers), None
        items = items_of(X_rows, patch_shape)
        scores = xp.stack([
            _sample_scores(detector, items) / category_threshold(detector, category)
            for detector, category in zip(
                self.detectors_, self.categories_, strict=True)
        ])
        return to_numpy(xp.argmax(scores, axis=0)), xp.max(scores, axis=0)

    def _by_category(self, X_rows, patch_shape, codes, score, normalise=True):
        """``score(detector, items)`` per category (divided by its threshold
        when `normalise`), put back in the order of the items."""
        def scored(code, subset):
            detector, category = self.detectors_[code], self.categories_[code]
            values = score(detector, subset)
            if normalise:
                values = values / category_threshold(detector, category)
            return values
        return per_group(items_of(X_rows, patch_shape), codes, scored)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        try:
            tags.array_api_support = get_tags(self._base_detector()).array_api_support
        except (AttributeError, TypeError):  # not an estimator: fit will say so
            tags.array_api_support = False
        return tags


def _sample_scores(detector, items):
    return detector.score_samples(items)

