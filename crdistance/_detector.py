"""The Collaborative Representation Distance detector."""

import math
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted

from crdistance._array_api import move_to, namespace_and_device, to_numpy
from crdistance._base import PatchOutlierMixin
from crdistance._linalg import (
    auto_threshold,
    crd,
    gram,
    gram_eigvalsh,
    penalties,
    residual_operator,
)
from crdistance._sklearn_compat import Interval, StrOptions, fit_context
from crdistance._validation import validate_features

__all__ = ["CRDetector", "merge"]

AUTO_FALSE_ALARM_RATE = 0.01


class CRDetector(PatchOutlierMixin, BaseEstimator):
    """Anomaly detection by Collaborative Representation Distance (CRD).

    A query y is reconstructed from all normal training features at once by ridge
    regression, and its distance is the squared residual (Han & Yan, eq. 3.6-3.8):

    ``CRD(y) = ||F (F^T F + lam I)^-1 F^T y - y||^2 = lam^2 y^T (G + lam I)^-2 y``

    where the columns of F are the N training features and G = F F^T their
    ``d x d`` Gram matrix. Fitting streams the data once into G and factorises
    ``G + lam I``; scoring is one matrix product. Time and memory do not grow
    with N, unlike nearest-neighbour search over a memory bank.

    Read more in the :doc:`User Guide </crd>`.

    Parameters
    ----------
    lam : float, default=5.0
        Ridge penalty lambda (> 0). The paper uses 5 with WideResNet50 features.
        Small lam lets the normal features reconstruct more of a query (CRD tends
        to the distance to their linear span); large lam tends to ||y||^2. Its
        scale is that of the Gram eigenvalues, so rescaled features need another
        lam.
    lam_scale : {"absolute", "trace"}, default="absolute"
        Unit of ``lam``. ``"absolute"`` is the paper's: the penalty is ``lam``.
        ``"trace"`` makes it scale-free: the penalty is ``lam * trace(G) / d``,
        ``lam`` times the mean eigenvalue of G, so one value transfers across
        feature scales and training-set sizes (0.01 to 1 are typical). The
        penalty used is ``lam_``.
    contamination : "auto", "max" or float in (0, 0.5], default="auto"
        How the threshold ``offset_`` is set.

        - ``"auto"``: from the Gram matrix alone (no second pass over the data,
          identical for ``fit`` and ``partial_fit``): the CRD that a fresh normal
          sample exceeds with probability 1 % under a Gaussian reference model
          of the training features, corrected for the optimism of training
          residuals (see Notes).
        - ``"max"``: the paper's rule, the largest CRD of a training sample, so
          that no training sample is an outlier.
        - float: that share of the training samples lies beyond the threshold.

        ``"max"`` and floats score the training data a second time (with
        ``partial_fit``: the samples of the last call). For patch sets the
        threshold applies to image scores (the largest patch CRD).
    chunk_size : int, default=4096
        Rows processed at once. Fitting holds one ``(chunk_size, d)`` float64
        chunk and scoring one ``(chunk_size, d)`` product next to the data.
    compute_dtype : {"float32", "float64"} or None, default=None
        Floating dtype of scoring and of its results. None keeps the input's:
        float32 in gives float32 out (float16 and bfloat16 are scored in
        float32, integers in float64). The Gram matrix is always accumulated in
        float64.

    Attributes
    ----------
    gram_ : array of shape (`n_features_in_`, `n_features_in_`)
        Float64 Gram matrix ``G`` of all training rows seen, in the namespace and
        on the device of the last fitted input.
    lam_ : float
        Ridge penalty used: ``lam``, or ``lam * trace(G) / d`` for
        ``lam_scale="trace"``.
    residual_operator_ : array of shape (`n_features_in_`, `n_features_in_`)
        Float64 ``M = lam_ (G + lam_ I)^-1``, so that ``CRD(y) = ||M y||^2``.
    n_samples_seen_ : int
        Training rows in ``gram_``: samples, or patches for patch sets.
    patches_per_sample_ : int
        Rows per sample in the last fitted input: 1 for 2-D input, patches per
        image for patch sets. The ``"auto"`` threshold is for such samples.
    offset_ : float
        ``decision_function = score_samples - offset_``; ``-offset_`` is the
        CRD threshold, also available as ``threshold_``.
    solver_ : {"cholesky", "eigh"}
        How ``M`` was computed: ``"eigh"`` when ``G + lam I`` was not numerically
        positive definite (a :class:`NumericalWarning` is raised then).
    n_features_in_ : int
        Number of features d.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Feature names, when ``X`` had string column names.

    See Also
    --------
    sklearn.covariance.EllipticEnvelope : Gaussian (Mahalanobis) outlier detector.
    sklearn.neighbors.LocalOutlierFactor : Nearest-neighbour outlier detector.

    Notes
    -----
    Fitting costs O(N d^2) for G plus O(d^3) for the factorisation, scoring
    O(n d^2), and the fitted state is two d x d matrices whatever N is.

    Input may be NumPy, torch, CuPy or any Array API array: G is accumulated and
    queries are scored in the input's namespace and on its device, and results
    come back there. The d x d factorisation runs in float64 on the host. The
    fitted state follows the data: scoring an input from another namespace or
    device copies the d x d operator there, and a pickled detector holds NumPy
    arrays, so a model fitted on a GPU loads and scores where neither torch nor
    CuPy is installed.

    2-D input holds one sample per row. A 3-D ``(n_images, n_patches, d)`` or
    4-D ``(n_images, h, w, d)`` patch set is fitted on all its patches and each
    image is scored by its largest patch CRD; :meth:`score_patches` returns the
    per-patch CRD as anomaly maps.

    The ``"auto"`` threshold models normal rows as y ~ N(0, G/N). CRD(y) is then
    a weighted sum of chi-squared variables, matched in mean and variance by a
    scaled chi-squared, whose 99 % point (per image: per patch
    1 - 0.99^(1/n_patches)) is the threshold. The weights are inflated by the
    generalised cross-validation factor 1 / (1 - df/N)^2,
    df = tr(G (G + lam I)^-1), since training rows are part of G. Real features
    are rarely Gaussian: heavy tails give more false alarms than 1 %; calibrate
    with ``contamination`` when normal data can be scored.

    CRD models the normal data by the linear span of its features (a ridge
    regression on all of them at once). Data whose normal set is a union of
    clusters or a curved manifold in a low dimension is better served by a
    nonlinear feature map (e.g. :class:`sklearn.kernel_approximation.RBFSampler`)
    in front of the detector.

    References
    ----------
    .. [1] J. Han, X. Yan. "Collaborative Representation Distance for
       anomaly detection", arXiv:2401.09443, 2024.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance import CRDetector
    >>> rng = np.random.default_rng(0)
    >>> normal = rng.normal(size=(500, 8)) @ np.diag([3, 3, 3, 3, 0, 0, 0, 0])
    >>> detector = CRDetector(lam=1.0).fit(normal)
    >>> queries = np.zeros((2, 8))
    >>> queries[1, 7] = 2.0  # leaves the span of the normal data
    >>> detector.predict(queries)
    array([ 1, -1])
    >>> detector.score_samples(queries).round(2)
    array([-0., -4.])
    """

    _device_attributes = ("gram_", "residual_operator_")

    _parameter_constraints: dict = {
        "lam": [Interval(Real, 0, None, closed="neither")],
        "lam_scale": [StrOptions({"absolute", "trace"})],
        "contamination": [
            StrOptions({"auto", "max"}),
            Interval(Real, 0, 0.5, closed="right"),
        ],
        "chunk_size": [Interval(Integral, 1, None, closed="left")],
        "compute_dtype": [StrOptions({"float32", "float64"}), None],
    }

    def __init__(
        self,
        *,
        lam=5.0,
        lam_scale="absolute",
        contamination="auto",
        chunk_size=4096,
        compute_dtype=None,
    ):
        self.lam = lam
        self.lam_scale = lam_scale
        self.contamination = contamination
        self.chunk_size = chunk_size
        self.compute_dtype = compute_dtype

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the detector on normal features.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Normal training features: NumPy, torch, CuPy or any Array API array.
        y : None
            Ignored, present for API consistency.

        Returns
        -------
        self : CRDetector
            The fitted detector.
        """
        return self._update(X, first_pass=True)

    @fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """Add normal features to the detector; usable after every call.

        The Gram matrix is a sum, so partial fits on chunks give the model (and
        the ``"auto"`` threshold) of a single fit on their concatenation. With
        ``contamination="max"`` or a float, the threshold comes from the samples
        of this call, scored by the updated model: a stream cannot be revisited.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Normal training features.
        y : None
            Ignored, present for API consistency.

        Returns
        -------
        self : CRDetector
            The updated detector.
        """
        return self._update(X, first_pass=not hasattr(self, "gram_"))

    def _update(self, X, first_pass):
        """Add X's Gram to the state (or start it), refactorise, set the threshold."""
        X_rows, patch_shape = validate_features(self, X, reset=first_pass)
        batch_gram = gram(X_rows, self.chunk_size)
        if first_pass:
            self.gram_, self.n_samples_seen_ = batch_gram, 0
        else:
            xp, device = namespace_and_device(batch_gram)
            self.gram_ = move_to(self.gram_, xp, device) + batch_gram
        self.n_samples_seen_ += X_rows.shape[0]
        self.patches_per_sample_ = 1
        if patch_shape is not None:
            self.patches_per_sample_ = math.prod(patch_shape[1:])
        self._factorize()
        if self.contamination == "auto":
            self._set_auto_offset()
        else:
            self._fit_offset(X_rows, patch_shape, self.contamination)
        return self

    def _factorize(self):
        """Residual operator from ``gram_``, factorised on the host in float64."""
        G = to_numpy(self.gram_)
        self.lam_ = float(penalties(self.lam, G, self.lam_scale))
        M, self.solver_ = residual_operator(G, self.lam_)
        xp, device = namespace_and_device(self.gram_)
        self.residual_operator_ = xp.asarray(M, device=device)

    def _set_auto_offset(self):
        self._forget_calibration()
        self.offset_ = -auto_threshold(
            gram_eigvalsh(to_numpy(self.gram_)),
            self.lam_,
            self.n_samples_seen_,
            self.patches_per_sample_,
            AUTO_FALSE_ALARM_RATE,
        )

    def _distances(self, X_rows):
        xp, device = namespace_and_device(X_rows)
        M = move_to(self.residual_operator_, xp, device)
        return crd(X_rows, M, self.chunk_size, self._dtype(xp, X_rows.dtype))

    def _dtype(self, xp, input_dtype):
        if self.compute_dtype is not None:
            return getattr(xp, self.compute_dtype)
        if input_dtype == xp.float64:
            return xp.float64
        return xp.float32



def merge(detectors):
    """Combine detectors fitted on disjoint data into the detector of their union.

    The Gram matrix is a sum over samples, so the merged detector is the one a
    single ``fit`` on all the data would give (to float64 rounding): the building
    block for fitting per production line, per worker or federated, and for
    resuming an interrupted fit.

    Parameters
    ----------
    detectors : iterable of CRDetector
        Fitted detectors with the same ``lam``, ``lam_scale`` and
        ``contamination="auto"``, the same number of features and, for patch
        sets, the same number of patches per image.

    Returns
    -------
    merged : CRDetector
        A new fitted detector with the parameters of the first one; its state is
        held in NumPy.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance import CRDetector, merge
    >>> X = np.random.default_rng(0).normal(size=(100, 4))
    >>> merged = merge([CRDetector().fit(X[:60]), CRDetector().fit(X[60:])])
    >>> bool(np.allclose(merged.gram_, CRDetector().fit(X).gram_))
    True
    """
    detectors = list(detectors)
    if not detectors:
        raise ValueError("merge needs at least one fitted CRDetector.")
    for detector in detectors:
        if not isinstance(detector, CRDetector):
            raise TypeError(f"merge takes CRDetector instances, got {detector!r}.")
        check_is_fitted(detector)
    first = detectors[0]
    if first.contamination != "auto":
        raise ValueError(
            f"contamination={first.contamination!r} thresholds training scores, "
            "which cannot be merged; merge detectors with contamination='auto'."
        )
    for detector in detectors[1:]:
        for name in ("lam", "lam_scale", "contamination", "n_features_in_",
                     "patches_per_sample_"):
            if getattr(detector, name) != getattr(first, name):
                raise ValueError(
                    f"Cannot merge detectors with different {name}: "
                    f"{getattr(first, name)!r} and {getattr(detector, name)!r}."
                )
        if not np.array_equal(getattr(detector, "feature_names_in_", None),
                              getattr(first, "feature_names_in_", None)):
            raise ValueError(
                "Cannot merge detectors fitted on different feature names."
            )
    merged = clone(first)
    merged.gram_ = sum(to_numpy(detector.gram_) for detector in detectors)
    merged.n_samples_seen_ = sum(detector.n_samples_seen_ for detector in detectors)
    merged.n_features_in_ = first.n_features_in_
    merged.patches_per_sample_ = first.patches_per_sample_
    if hasattr(first, "feature_names_in_"):
        merged.feature_names_in_ = first.feature_names_in_
    merged._factorize()
    merged._set_auto_offset()
    return merged
