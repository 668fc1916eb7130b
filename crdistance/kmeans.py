"""A k-means memory bank: CSE's scorer, with the outlier API of :class:`CRDetector`.

:class:`KMeansDetector` summarises the normal features by a few k-means
centres and scores a query by its distance to the nearest one. On the
embedding of :class:`~crdistance.featurizer.ContrastiveEmbedder` it is the
scorer of CSE (Thomine & Snoussi, 2024); on raw features it is a cheap,
constant-size alternative to a nearest-neighbour bank.
"""

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.cluster import KMeans
from sklearn.utils import check_random_state

from crdistance._array_api import move_to, namespace_and_device, to_numpy
from crdistance._base import PatchOutlierMixin
from crdistance._sklearn_compat import Interval, StrOptions, fit_context
from crdistance._validation import validate_features

__all__ = ["KMeansDetector"]

_BLOCK_ELEMENTS = 1 << 22
"""Elements of the (rows, centres, d) differences formed at once (16 MiB in float32)."""


class KMeansDetector(PatchOutlierMixin, BaseEstimator):
    """Anomaly detection by the distance to the nearest k-means centre.

    ``fit`` runs k-means on the normal training rows (samples, or every patch
    of every image) and keeps the ``n_clusters`` centres; a row's anomaly
    distance is its Euclidean distance to the nearest centre and an image
    scores its most anomalous patch. Fitted state and scoring cost are
    ``n_clusters x d``, whatever the number of training rows.

    Parameters
    ----------
    n_clusters : int, default=32
        Centres of the bank (fewer when there are fewer distinct training rows).
    max_fit_rows : int or None, default=100_000
        k-means runs on at most this many training rows, drawn at random
        without replacement; None uses all. The threshold is set from all rows.
    n_init : int, default=1
        k-means runs from different seeds; the one of least inertia is kept.
    contamination : "max" or float in (0, 0.5], default="max"
        How ``offset_`` is set from the training distances: ``"max"`` at the
        largest one (no training sample is an outlier); a float puts that share
        of the training samples beyond it.
    random_state : int, RandomState instance or None, default=None
        Seeds the subsample and k-means.

    Attributes
    ----------
    cluster_centers_ : array of shape (`n_clusters_`, `n_features_in_`)
        The bank, float64, in the namespace and on the device of the training
        input (pickled as NumPy).
    n_clusters_ : int
        Number of centres kept.
    offset_ : float
        ``decision_function = score_samples - offset_``; ``-offset_`` is the
        distance threshold, also ``threshold_``.
    n_features_in_ : int
        Number of features d.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Feature names, when ``X`` had string column names.

    See Also
    --------
    crdistance.baselines.NearestNeighborDetector : A bank of all (or a coreset
        of the) training rows.
    crdistance.featurizer.ContrastiveEmbedder : CSE's embedding, which this
        detector scores in the paper.

    Notes
    -----
    The centres are fitted on the training rows, so the training distances
    that set ``offset_`` are not held out; with far fewer centres than rows
    they are close to held-out ones. Scoring runs in the input's namespace and
    on its device (NumPy, torch, CuPy), in float32 unless the input is float64,
    as norms of differences (each row's distance independent of the batch).

    References
    ----------
    .. [1] S. Thomine, H. Snoussi. "CSE: Surface Anomaly Detection with
       Contrastively Selected Embedding", VISAPP 2024, arXiv 2403.01859.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.kmeans import KMeansDetector
    >>> rng = np.random.default_rng(0)
    >>> normal = np.concatenate([rng.normal(-3, 0.5, (200, 2)),
    ...                          rng.normal(3, 0.5, (200, 2))])
    >>> detector = KMeansDetector(n_clusters=2, random_state=0).fit(normal)
    >>> detector.cluster_centers_.shape
    (2, 2)
    >>> detector.predict([[-3.0, -3.0], [3.0, 3.0], [0.0, 0.0]])
    array([ 1,  1, -1])
    """

    _device_attributes = ("cluster_centers_",)

    _parameter_constraints: dict = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "max_fit_rows": [Interval(Integral, 1, None, closed="left"), None],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "contamination": [StrOptions({"max"}), Interval(Real, 0, 0.5, closed="right")],
        "random_state": ["random_state"],
    }

    def __init__(self, *, n_clusters=32, max_fit_rows=100_000, n_init=1,
                 contamination="max", random_state=None):
        self.n_clusters = n_clusters
        self.max_fit_rows = max_fit_rows
        self.n_init = n_init
        self.contamination = contamination
        self.random_state = random_state

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Cluster the normal features and set the threshold.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Normal training features: NumPy, torch, CuPy or any Array API array.
        y : None
            Ignored, present for API consistency.

        Returns
        -------
        self : KMeansDetector
            The fitted detector.
        """
        X_rows, patch_shape = validate_features(self, X, reset=True)
        rows = to_numpy(X_rows).astype(np.float64, copy=False)
        rng = check_random_state(self.random_state)
        if self.max_fit_rows is not None and rows.shape[0] > self.max_fit_rows:
            rows = rows[np.sort(rng.choice(rows.shape[0], self.max_fit_rows,
                                           replace=False))]
        n_distinct = np.unique(rows, axis=0).shape[0]
        self.n_clusters_ = int(min(self.n_clusters, n_distinct))
        kmeans = KMeans(self.n_clusters_, n_init=self.n_init,
                        random_state=rng.randint(np.iinfo(np.int32).max))
        xp, device = namespace_and_device(X_rows)
        self.cluster_centers_ = move_to(kmeans.fit(rows).cluster_centers_, xp, device)
        self._fit_offset(X_rows, patch_shape, self.contamination)
        return self

    def _distances(self, X_rows):
        """Distances computed as norms of differences, row by row, so that a
        row's distance does not depend on the other rows (no matrix product
        whose blocking varies with the batch)."""
        xp, device = namespace_and_device(X_rows)
        dtype = xp.float64 if X_rows.dtype == xp.float64 else xp.float32
        centers = xp.astype(move_to(self.cluster_centers_, xp, device), dtype)
        rows = xp.astype(X_rows, dtype, copy=False)
        step = max(1, _BLOCK_ELEMENTS // (centers.shape[0] * centers.shape[1]))
        blocks = []
        n_rows = rows.shape[0]
        for start in range(0, n_rows, step):
            block = rows[start:min(start + step, n_rows), :]
            differences = block[:, None, :] - centers[None, :, :]
            blocks.append(xp.min(xp.sum(differences * differences, axis=2), axis=1))
        return xp.sqrt(xp.concat(blocks))
