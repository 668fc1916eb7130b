"""Local CRD: one Gram matrix per k-means cell, per group of features."""

import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.cluster import KMeans
from sklearn.utils import check_random_state, gen_batches

from crdistance._array_api import move_to, namespace_and_device, to_numpy
from crdistance._base import PatchOutlierMixin
from crdistance._cells import (
    blocks_by_cell,
    cells_for,
    group_distances,
    nearest_cells,
    weighted_operators,
)
from crdistance._linalg import gram, penalties, residual_operators
from crdistance._sklearn_compat import Interval, StrOptions, fit_context
from crdistance._validation import validate_features

__all__ = ["LocalCRDetector"]


class LocalCRDetector(PatchOutlierMixin, BaseEstimator):
    """CRD with a separate linear model per k-means cell of the normal features.

    Plain CRD fits one linear subspace model to all normal features. Normal patch
    features form clusters (surface, edge, texture...), so one subspace is too
    coarse on small backbones. This detector partitions the features with
    k-means (fitted once, on a sample of the first batch), accumulates one Gram
    matrix per cell, and scores a query by its smallest cell CRD over the
    ``n_nearest_cells`` cells with the nearest centres. The features may be split
    into groups (e.g. one per backbone layer), each with its own cells; the
    group scores are combined by their geometric mean.

    Time and memory stay independent of the number of training samples: the
    state is ``n_cells`` d_g x d_g matrices per group g, and scoring is
    ``n_nearest_cells`` matrix products per group. With ``n_cells=1`` and one
    group it is :class:`CRDetector` (same scores).

    Parameters
    ----------
    n_cells : int, default=16
        Number of k-means cells per feature group, at most: a group of d_g
        features gets at most one cell per d_g rows of the first batch (with a
        warning when that is fewer), so that a cell of average size can fit its
        d_g x d_g model. One cell is plain CRD.
    n_nearest_cells : int, default=3
        A query is scored against the cells with the nearest centres only.
    feature_groups : list of int or None, default=None
        Sizes of consecutive feature blocks modelled separately (they must add
        up to the number of features), e.g. the channel counts of the backbone
        layers. None models all features together.
    cell_weights : {"balanced"} or None, default="balanced"
        ``"balanced"``: each cell's CRD is divided by its mean training CRD
        (relative to the geometric mean over the group's cells), so that
        cells of tight and of loose normal data are compared on one scale.
        None: raw cell CRDs, as distances, like nearest-neighbour search.
        Balancing helps where tight cells hold fine structure (thin threads)
        and hurts where tight cells are plain background, whose small
        variations it magnifies; :func:`~crdistance.model_selection.select_pipeline`
        chooses between them without labels.
    lam : float, default=0.01
        Ridge penalty of every cell, in the unit given by ``lam_scale``.
    lam_scale : {"trace", "absolute"}, default="trace"
        ``"trace"``: each cell's penalty is ``lam * trace(G_k) / d`` (scale-free,
        so cells of different sizes get comparable penalties); ``"absolute"``:
        ``lam``.
    contamination : "max" or float in (0, 0.5], default=0.01
        Threshold from the training scores, as in :class:`CRDetector`. Training
        samples sit in their cells' Gram matrices, so their scores are
        optimistic: prefer calibrating on held-out normal data.
    chunk_size : int, default=4096
        Rows processed at once.
    max_kmeans_samples : int, default=50000
        Rows of the first batch sampled to fit k-means.
    random_state : int, RandomState instance or None, default=None
        Seeds the k-means sample and initialisation.

    Attributes
    ----------
    feature_groups_ : list of int
        Sizes d_g of the feature groups: `feature_groups`, or all features.
    n_cells_ : list of int
        Cells of each feature group: `n_cells`, or fewer when the first batch
        has fewer than ``n_cells * d_g`` rows.
    group_slices_ : list of slice
        Columns of each feature group, from `feature_groups_` (read-only).
    cell_centers_ : list of ndarray of shape (n_cells_[g], d_g)
        k-means centres of each feature group.
    cell_grams_ : list of ndarray of shape (n_cells_[g], d_g, d_g)
        Float64 Gram matrix of the training rows of each cell.
    cell_counts_ : list of ndarray of shape (n_cells_[g],)
        Training rows in each cell.
    residual_operators_ : list of ndarray of shape (n_cells_[g], d_g, d_g)
        ``M_k = lam_k (G_k + lam_k I)^-1`` of each cell, so CRD_k(y) = ||M_k y||^2.
    cell_weights_ : list of ndarray of shape (n_cells_[g],)
        Factor of each cell's CRD. With ``cell_weights="balanced"``: the
        geometric mean over the group's cells of the mean training CRD,
        divided by this cell's, so that cells with tight and loose normal data
        are compared on one scale; with None: ones.
    scoring_operators_ : list of ndarray of shape (n_cells_[g], d_g, d_g), float32
        ``sqrt(w_k) M_k``, so the weighted CRD of a cell is one product and a
        squared norm; what float32 queries are scored with (float64 queries use
        ``residual_operators_`` and ``cell_weights_``).
    n_samples_seen_ : int
        Training rows seen.
    offset_ : float
        ``decision_function = score_samples - offset_``.
    n_features_in_ : int
        Number of features.

    See Also
    --------
    CRDetector : One global model; the paper's detector.

    Notes
    -----
    Cells are fixed by the first ``fit`` or ``partial_fit`` call; later calls add
    to the cells' Gram matrices, so partial fits give the model of a single fit
    on their concatenation once the cells are set. The mean training CRD of a
    cell, ``tr(M_k^2 G_k) / N_k``, comes from its Gram matrix alone.

    A cell of N_k rows in d_g dimensions reconstructs its own training rows
    exactly when N_k < d_g, so its mean training CRD, hence its weight, says
    nothing about new rows. The number of cells is therefore capped at one per
    d_g rows of the first batch (a warning says so), and ``fit`` warns when
    k-means leaves cells with fewer rows than features.

    Input may be NumPy, torch, CuPy or any Array API array. Fitting (k-means and
    the cells' Gram matrices) runs on the host with NumPy, and the fitted state
    stays in NumPy. Scoring runs in the input's namespace and on its device (in
    float32 for float32 and half-precision input, float64 for float64): each
    call copies the centres and operators there, and results come back there.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance import LocalCRDetector
    >>> rng = np.random.default_rng(0)
    >>> centres = np.array([[5.0, 0, 0], [0, 5.0, 0]])
    >>> normal = centres[rng.integers(0, 2, 400)] + rng.normal(0, 0.1, (400, 3))
    >>> detector = LocalCRDetector(n_cells=2, random_state=0).fit(normal)
    >>> detector.predict([[5.0, 0, 0], [2.5, 2.5, 0]])
    array([ 1, -1])
    """

    _parameter_constraints: dict = {
        "n_cells": [Interval(Integral, 1, None, closed="left")],
        "n_nearest_cells": [Interval(Integral, 1, None, closed="left")],
        "feature_groups": [list, None],
        "cell_weights": [StrOptions({"balanced"}), None],
        "lam": [Interval(Real, 0, None, closed="neither")],
        "lam_scale": [StrOptions({"absolute", "trace"})],
        "contamination": [StrOptions({"max"}), Interval(Real, 0, 0.5, closed="right")],
        "chunk_size": [Interval(Integral, 1, None, closed="left")],
        "max_kmeans_samples": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        n_cells=16,
        n_nearest_cells=3,
        feature_groups=None,
        cell_weights="balanced",
        lam=0.01,
        lam_scale="trace",
        contamination=0.01,
        chunk_size=4096,
        max_kmeans_samples=50_000,
        random_state=None,
    ):
        self.n_cells = n_cells
        self.n_nearest_cells = n_nearest_cells
        self.feature_groups = feature_groups
        self.cell_weights = cell_weights
        self.lam = lam
        self.lam_scale = lam_scale
        self.contamination = contamination
        self.chunk_size = chunk_size
        self.max_kmeans_samples = max_kmeans_samples
        self.random_state = random_state

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit cells and their Gram matrices on normal features.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Normal training features.
        y : None
            Ignored, present for API consistency.

        Returns
        -------
        self : LocalCRDetector
            The fitted detector.
        """
        self._update(X, first_pass=True)
        self._warn_small_cells()
        return self

    @fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """Add normal features; the first call also fixes the cells.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Normal training features; the first call needs at least ``n_cells``
            rows.
        y : None
            Ignored, present for API consistency.

        Returns
        -------
        self : LocalCRDetector
            The updated detector.
        """
        return self._update(X, first_pass=not hasattr(self, "cell_centers_"))

    def _update(self, X, first_pass):
        X_rows, patch_shape = validate_features(self, X, reset=first_pass)
        xp, _ = namespace_and_device(X_rows)
        if X_rows.dtype not in (xp.float32, xp.float64):  # float16, bfloat16
            X_rows = xp.astype(X_rows, xp.float32)
        rows = to_numpy(X_rows)  # cells and Gram matrices are fitted on the host
        if first_pass:
            self._start(rows)
        for group, columns in enumerate(self.group_slices_):
            features = rows[:, columns]
            cells = nearest_cells(
                features, *self._centers(group, features.dtype), 1
            ).ravel()
            order, bounds = blocks_by_cell(cells, self.n_cells_[group])
            grouped = features[order]
            for cell in np.flatnonzero(np.diff(bounds)):
                self.cell_grams_[group][cell] += gram(
                    grouped[bounds[cell] : bounds[cell + 1]], self.chunk_size
                )
            self.cell_counts_[group] += np.diff(bounds)
        self.n_samples_seen_ += rows.shape[0]
        self._factorize()
        self._fit_offset(X_rows, patch_shape, self.contamination)
        return self

    def _start(self, rows):
        sizes = self.feature_groups or [rows.shape[1]]
        if sum(sizes) != rows.shape[1] or min(sizes) < 1:
            raise ValueError(
                f"feature_groups={self.feature_groups} must be positive sizes adding "
                f"up to the {rows.shape[1]} features."
            )
        self.feature_groups_ = list(sizes)
        self.n_cells_ = [cells_for(rows.shape[0], d, self.n_cells) for d in sizes]
        if min(self.n_cells_) < self.n_cells:
            warnings.warn(
                f"n_cells={self.n_cells} needs about n_cells x d_g rows to fit each "
                f"cell's d_g x d_g model, and the first batch has {rows.shape[0]} "
                f"rows for feature groups of {sizes} features: fitted "
                f"{self.n_cells_} cells instead (one cell is plain CRD). Pass more "
                "rows in the first batch, or fewer cells.",
                UserWarning,
                stacklevel=5,
            )
        random_state = check_random_state(self.random_state)
        sample = rows
        if rows.shape[0] > self.max_kmeans_samples:
            sample = rows[random_state.choice(rows.shape[0], self.max_kmeans_samples,
                                              replace=False)]
        self.cell_centers_ = []
        for columns, n_cells in zip(self.group_slices_, self.n_cells_, strict=True):
            kmeans = KMeans(n_cells, n_init=1, random_state=random_state)
            # float64: scikit-learn's k-means++ runs several times slower on float32
            # with the OpenBLAS measured here.
            kmeans.fit(sample[:, columns].astype(np.float64))
            self.cell_centers_.append(kmeans.cluster_centers_)
        self.cell_grams_ = [
            np.zeros((n_cells, d, d))
            for n_cells, d in zip(self.n_cells_, self.feature_groups_, strict=True)
        ]
        self.cell_counts_ = [np.zeros(n_cells, dtype=np.int64)
                             for n_cells in self.n_cells_]
        self.n_samples_seen_ = 0

    def _warn_small_cells(self):
        """Warn when cells hold fewer rows than their features (see Notes)."""
        small = [
            (int(np.sum((counts > 0) & (counts < d))), len(counts), d)
            for counts, d in zip(self.cell_counts_, self.feature_groups_, strict=True)
        ]
        if any(n_small for n_small, _, _ in small):
            shown = ", ".join(f"{n_small} of {n} (d_g={d})"
                              for n_small, n, d in small if n_small)
            warnings.warn(
                f"Cells with fewer training rows than features: {shown}. Such a "
                "cell reconstructs its own rows exactly, so its CRD and its weight "
                "are unreliable; fit on more rows or with fewer cells.",
                UserWarning,
                stacklevel=4,
            )

    @property
    def group_slices_(self):
        """Columns of each feature group, in order, as a list of slices."""
        ends = np.cumsum(self.feature_groups_)
        return [
            slice(int(end) - size, int(end))
            for size, end in zip(self.feature_groups_, ends, strict=True)
        ]

    def _factorize(self):
        """Residual operator and weight of every cell, from its Gram matrix."""
        self.residual_operators_, self.cell_weights_ = [], []
        for grams, counts in zip(self.cell_grams_, self.cell_counts_, strict=True):
            visited = counts > 0
            visited_grams = grams[visited]
            lams = np.array(
                [penalties(self.lam, G, self.lam_scale) for G in visited_grams]
            )
            visited_operators = residual_operators(visited_grams, lams)
            # A cell never visited leaves all of a query as residual.
            operators = np.broadcast_to(np.eye(grams.shape[1]), grams.shape).copy()
            operators[visited] = visited_operators
            mean_crd = np.full(len(grams), np.nan)
            mean_crd[visited] = np.sum(
                (visited_operators @ visited_operators) * visited_grams, axis=(1, 2)
            ) / counts[visited]
            # Cells whose normal rows are all reproduced exactly keep weight 1.
            positive = np.isfinite(mean_crd) & (mean_crd > 0)
            if self.cell_weights is None:
                positive[:] = False
            reference = (
                np.exp(np.mean(np.log(mean_crd[positive]))) if positive.any() else 1
            )
            weights = np.ones(len(grams))
            weights[positive] = reference / mean_crd[positive]
            self.residual_operators_.append(operators)
            self.cell_weights_.append(weights)
        self.scoring_operators_ = [
            operators.astype(np.float32)
            for operators in weighted_operators(
                self.residual_operators_, self.cell_weights_
            )
        ]

    def _distances(self, X_rows):
        xp, device = namespace_and_device(X_rows)
        float64 = X_rows.dtype == xp.float64
        dtype = xp.float64 if float64 else xp.float32
        state = self._scoring_state(xp, device, float64)
        # Geometric mean over groups (the identity for one group).
        exponent = 1 / len(self.feature_groups_)
        parts = []
        for batch in gen_batches(X_rows.shape[0], self.chunk_size):
            distances = None
            for columns, group_state in zip(self.group_slices_, state, strict=True):
                features = xp.astype(X_rows[batch, columns], dtype, copy=False)
                part = group_distances(
                    features, *group_state, self.n_nearest_cells
                ) ** exponent
                distances = part if distances is None else distances * part
            parts.append(distances)
        return parts[0] if len(parts) == 1 else xp.concat(parts)

    def _scoring_state(self, xp, device, float64):
        """Per group: centres, their float64 squared norms and weighted operators,
        in ``xp`` on ``device``, centres and operators in the compute dtype."""
        dtype = np.float64 if float64 else np.float32
        operators = (
            weighted_operators(self.residual_operators_, self.cell_weights_)
            if float64 else self.scoring_operators_
        )
        return [
            tuple(
                move_to(a, xp, device)
                for a in (*self._centers(group, dtype),
                          operators[group].astype(dtype, copy=False))
            )
            for group in range(len(self.feature_groups_))
        ]

    def _centers(self, group, dtype):
        centers = self.cell_centers_[group]
        return centers.astype(dtype), np.sum(centers**2, axis=1)
