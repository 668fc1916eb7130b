"""Nearest-neighbour baselines with the outlier API of :class:`CRDetector`.

:class:`NearestNeighborDetector` scores a query by its distance to a memory
bank of normal features: the full bank (exact k-NN), or PatchCore's greedy
k-center coreset of it (:func:`greedy_coreset`). Fed the same patch features
as CRD, it is the accuracy reference CRD is measured against.
"""

import math
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if

from crdistance._array_api import move_to, namespace_and_device, to_numpy
from crdistance._base import PatchOutlierMixin
from crdistance._neighbors import faiss_distances, faiss_installed, knn_distances
from crdistance._sklearn_compat import Interval, StrOptions, fit_context
from crdistance._validation import check_finite, validate_features

__all__ = ["NearestNeighborDetector", "greedy_coreset"]



def _has_threshold(detector):
    """Whether a threshold exists: ``decision_function`` and ``predict`` need one."""
    if detector.contamination is None:
        raise AttributeError(
            "This detector has contamination=None and sets no threshold; use "
            "contamination='max' or a float for decision_function and predict."
        )
    return True


class NearestNeighborDetector(PatchOutlierMixin, BaseEstimator):
    """Anomaly detection by the distance to the nearest normal features.

    A query's distance is the mean Euclidean distance to its ``n_neighbors``
    nearest rows of a memory bank of normal training features. With patch
    sets and ``n_neighbors=1`` this is PatchCore's scoring (Roth et al.,
    2022): an image scores its most anomalous patch. The bank holds every
    training row (exact nearest neighbour), or PatchCore's greedy k-center
    coreset of them when ``coreset_ratio`` is set.

    Parameters
    ----------
    n_neighbors : int, default=1
        Nearest bank rows averaged into a distance.
    coreset_ratio : float in (0, 1] or None, default=None
        Share of the training rows kept in the memory bank, chosen by
        :func:`greedy_coreset`: ``round(coreset_ratio * n_rows)`` rows, at
        least ``n_neighbors + 1``. PatchCore
        uses 0.01 to 0.25. None keeps every row.
    projection_dim : int or None, default=128
        Dimension of the random projection the coreset is selected in, as in
        PatchCore; the bank keeps the original features. None selects in the
        original space.
    contamination : "max", float in (0, 0.5] or None, default="max"
        How ``offset_`` is set from held-out training distances (see Notes).
        ``"max"``: at the largest one, so that no training sample is an outlier.
        A float: that share of the training samples lies beyond it. None: no
        threshold (``fit`` only builds the bank, as PatchCore does);
        ``decision_function`` and ``predict`` are then unavailable.
    algorithm : {"auto", "faiss", "brute"}, default="auto"
        Nearest-neighbour search. ``"faiss"``: a faiss ``IndexFlatL2`` on the
        host in float32. ``"brute"``: blocked matrix products in the input's
        namespace and on its device (NumPy, torch, CuPy, ...). ``"auto"``:
        faiss for NumPy input when faiss is installed, brute otherwise.
    random_state : int, RandomState instance or None, default=None
        Seeds the coreset's random projection and first center.

    Attributes
    ----------
    memory_bank_ : array of shape (n_bank, `n_features_in_`)
        The normal features searched, in the namespace, on the device and of
        the dtype of the training input: all training rows, or the coreset.
    coreset_indices_ : array of shape (n_bank,) or None
        Training rows (samples, or patches of all images in order) kept in the
        bank, in selection order; None without a coreset.
    offset_ : float
        ``decision_function = score_samples - offset_``; ``-offset_`` is the
        distance threshold, also ``threshold_``. Absent when
        ``contamination=None``.
    n_features_in_ : int
        Number of features d.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Feature names, when ``X`` had string column names.

    See Also
    --------
    crdistance.CRDetector : Fitted state of d x d, whatever the training size.
    sklearn.neighbors.LocalOutlierFactor : Density-based neighbour detector.

    Notes
    -----
    Brute-force search computes squared distances as
    ``||x||^2 - 2 x.b + ||b||^2``, one matrix product per block of queries
    (about 64 MiB of distances), in float64 for float64 input and float32
    otherwise. In float32 a distance near 0 is accurate to about
    ``3e-4 ||x||`` only. Scoring n rows costs O(n n_bank d) and the fitted
    state is the bank, n_bank x d: both grow with the training set, unlike
    CRD's.

    Scored against a bank that holds it, a training row is its own nearest
    neighbour at distance 0, so the threshold is set from held-out distances:
    each training row is searched without the bank rows of its own sample
    (itself for 2-D input, every patch of its image for patch sets). This
    costs a brute-force search of all training rows, O(n_rows n_bank d); pass
    ``contamination=None`` to skip it. For the same reason :meth:`predict` on
    the training data itself finds fewer outliers than ``contamination``.

    References
    ----------
    .. [1] K. Roth, L. Pemula, J. Zepeda, B. Schoelkopf, T. Brox, P. Gehler.
       "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.baselines import NearestNeighborDetector
    >>> rng = np.random.default_rng(0)
    >>> normal = rng.normal(size=(1000, 4))
    >>> detector = NearestNeighborDetector(coreset_ratio=0.1, random_state=0)
    >>> detector = detector.fit(normal)
    >>> detector.memory_bank_.shape
    (100, 4)
    >>> detector.predict([[0.0, 0.0, 0.0, 0.0], [6.0, 0.0, 0.0, 0.0]])
    array([ 1, -1])
    """

    _device_attributes = ("memory_bank_", "coreset_indices_")

    _parameter_constraints: dict = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "coreset_ratio": [Interval(Real, 0, 1, closed="right"), None],
        "projection_dim": [Interval(Integral, 1, None, closed="left"), None],
        "contamination": [
            StrOptions({"max"}),
            Interval(Real, 0, 0.5, closed="right"),
            None,
        ],
        "algorithm": [StrOptions({"auto", "faiss", "brute"})],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        n_neighbors=1,
        coreset_ratio=None,
        projection_dim=128,
        contamination="max",
        algorithm="auto",
        random_state=None,
    ):
        self.n_neighbors = n_neighbors
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.contamination = contamination
        self.algorithm = algorithm
        self.random_state = random_state

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Build the memory bank from normal features.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Normal training features: NumPy, torch, CuPy or any Array API array.
        y : None
            Ignored, present for API consistency.

        Returns
        -------
        self : NearestNeighborDetector
            The fitted detector.
        """
        if self.algorithm == "faiss" and not faiss_installed():
            raise ImportError("algorithm='faiss' needs the faiss package.")
        X_rows, patch_shape = validate_features(self, X, reset=True)
        n_rows = X_rows.shape[0]
        if n_rows <= self.n_neighbors:
            raise ValueError(
                f"Found n_samples={n_rows} training row(s); n_neighbors="
                f"{self.n_neighbors} needs at least {self.n_neighbors + 1}."
            )
        if self.coreset_ratio is None:
            self.coreset_indices_ = None
            self.memory_bank_ = X_rows
        else:
            n_centers = max(round(self.coreset_ratio * n_rows), self.n_neighbors + 1)
            self.coreset_indices_ = greedy_coreset(
                X_rows,
                min(n_centers, n_rows),
                projection_dim=self.projection_dim,
                random_state=self.random_state,
            )
            xp, _ = namespace_and_device(X_rows)
            self.memory_bank_ = xp.take(X_rows, self.coreset_indices_, axis=0)
        if self.contamination is not None:
            self._fit_held_out_offset(X_rows, patch_shape)
        return self

    # Without a threshold (contamination=None) these two do not exist, so that
    # hasattr tells the truth (as for LocalOutlierFactor's novelty methods).
    decision_function = available_if(_has_threshold)(
        PatchOutlierMixin.decision_function
    )
    predict = available_if(_has_threshold)(PatchOutlierMixin.predict)

    def _distances(self, X_rows):
        xp, device = namespace_and_device(X_rows)
        if self.algorithm == "faiss" or (
            self.algorithm == "auto"
            and isinstance(X_rows, np.ndarray)
            and faiss_installed()
        ):
            distances = faiss_distances(
                to_numpy(X_rows), to_numpy(self.memory_bank_), self.n_neighbors
            )
            return xp.asarray(distances, device=device)
        bank = move_to(self.memory_bank_, xp, device)
        return knn_distances(X_rows, bank, self.n_neighbors)

    def _fit_held_out_offset(self, X_rows, patch_shape):
        """``offset_`` from distances that leave out each training sample's rows."""
        xp, device = namespace_and_device(X_rows)
        n_rows = X_rows.shape[0]
        rows_per_sample = 1 if patch_shape is None else n_rows // patch_shape[0]
        groups = xp.arange(n_rows, device=device) // rows_per_sample
        bank_groups = groups
        if self.coreset_indices_ is not None:
            bank_groups = xp.take(groups, self.coreset_indices_, axis=0)
        distances = knn_distances(
            X_rows, self.memory_bank_, self.n_neighbors, (groups, bank_groups)
        )
        sample_distances = xp.max(xp.reshape(distances, (-1, rows_per_sample)), axis=1)
        check_finite(
            sample_distances,
            f"Some training samples have fewer than n_neighbors={self.n_neighbors} "
            "bank rows outside themselves; fit on more samples, raise "
            "coreset_ratio or use contamination=None.",
        )
        self._set_offset(sample_distances, self.contamination)



def greedy_coreset(X, n_centers, *, projection_dim=128, random_state=None):
    """Choose rows of X by greedy k-center selection, as PatchCore's coreset.

    Starting from a random row, each step adds the row farthest from all rows
    chosen so far (Gonzalez, 1985; Sener & Savarese, 2018). The largest
    distance of any row to its nearest chosen row (the coverage radius) is
    then at most twice the smallest possible with ``n_centers`` rows.
    Distances are measured after a Gaussian random projection to
    ``projection_dim`` dimensions, which preserves them approximately
    (Johnson-Lindenstrauss) at a fraction of the cost.

    Parameters
    ----------
    X : array of shape (n_rows, n_features)
        Features in any Array API namespace.
    n_centers : int
        Rows to choose, in [1, n_rows].
    projection_dim : int or None, default=128
        Dimension of the projection; None, or a value not below
        ``n_features``, selects in the original space.
    random_state : int, RandomState instance or None, default=None
        Seeds the projection and the first row.

    Returns
    -------
    indices : array of shape (n_centers,), int64
        Distinct row indices in selection order (each prefix is itself a
        greedy coreset), in X's namespace and on its device.

    Notes
    -----
    Each step is one matrix-vector product with the projected rows, so the
    selection costs O(n_centers n_rows projection_dim), computed in float32.
    The first row is drawn at random, where PatchCore starts from the mean
    distance to ten random rows.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.baselines import greedy_coreset
    >>> X = np.array([[0.0], [0.1], [5.0], [5.2], [10.0]])
    >>> sorted(greedy_coreset(X, 3, random_state=0).tolist())
    [0, 2, 4]
    """
    xp, device = namespace_and_device(X)
    n_rows, n_features = X.shape
    if not 1 <= n_centers <= n_rows:
        raise ValueError(f"n_centers must be in [1, {n_rows}], got {n_centers}.")
    rng = check_random_state(random_state)
    Z = xp.astype(X, xp.float32, copy=False)
    if projection_dim is not None and projection_dim < n_features:
        projection = rng.standard_normal((n_features, projection_dim))
        projection /= math.sqrt(projection_dim)
        Z = Z @ xp.asarray(projection, dtype=xp.float32, device=device)
    sq_norms = xp.sum(Z * Z, axis=1)
    nearest_sq = xp.full((n_rows,), math.inf, dtype=xp.float32, device=device)
    centers = [int(rng.randint(n_rows))]
    while True:
        center = centers[-1]
        center_sq = sq_norms - 2.0 * (Z @ Z[center, :]) + sq_norms[center]
        nearest_sq = xp.minimum(nearest_sq, center_sq)
        # Rounding can leave a chosen row (or a duplicate) slightly above 0.
        nearest_sq[center] = -1.0
        if len(centers) == n_centers:
            return xp.asarray(centers, dtype=xp.int64, device=device)
        centers.append(int(xp.argmax(nearest_sq)))
