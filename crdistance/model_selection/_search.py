"""CRDetectorCV: lam chosen by one-class cross-validation along a lam path."""

import warnings
from numbers import Integral

import numpy as np
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.metrics import get_scorer, get_scorer_names
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_consistent_length

from crdistance._array_api import to_numpy
from crdistance._base import PatchOutlierMixin
from crdistance._detector import CRDetector
from crdistance._sklearn_compat import HasMethods, Interval, StrOptions, fit_context
from crdistance._validation import validate_features
from crdistance.model_selection._lam_path import fold_distances, training_grams
from crdistance.model_selection._split import (
    LABELS,
    NoveltyKFold,
    anomaly_auroc,
    anomaly_mask,
)
from crdistance.model_selection._synthetic import inflate_variance

__all__ = ["CRDetectorCV"]

_DETECTOR_PARAMS = ("lam_scale", "contamination", "chunk_size", "compute_dtype")


class _PrecomputedScores(OutlierMixin, BaseEstimator):
    """Stand-in detector handing precomputed scores to a scorer (as RidgeCV does).

    ``decision_function`` is ``score_samples`` shifted by a constant in the
    refitted detector, so ranking metrics see the same order from both.
    """

    def score_samples(self, scores):
        return scores

    def decision_function(self, scores):
        return scores


class CRDetectorCV(PatchOutlierMixin, BaseEstimator):
    """CRD detector with lam chosen by one-class cross-validation.

    Every lam of ``lams`` is scored on the folds of ``cv`` (by default
    :class:`NoveltyKFold`: training folds hold normal samples only, test folds
    the held-out normal samples and the anomalies), from one eigendecomposition
    of the training Gram matrix per fold, as ``RidgeCV`` does for alpha. The lam
    with the best mean score is refitted as a :class:`CRDetector` on all
    normal samples, which scores, predicts and thresholds.

    Labels are opt-in: like every scikit-learn outlier detector,
    ``CRDetectorCV()`` takes all of ``X`` as normal (a ``y`` is ignored with a
    warning); ``label_convention="outlier"`` or ``"binary"`` reads ``y`` as
    labels. The anomalies of the test folds are then:

    - the anomalies labelled in ``y``, and ``X_synthetic`` if given;
    - else ``X_synthetic``, synthetic anomalies the user made (e.g. features of
      cut-paste or noise-corrupted normal images);
    - else, with normal data alone, **variance inflation** of each held-out
      normal sample (one patch per image for patch sets):
      ``x + (a - b) / sqrt(2)`` with ``a``, ``b`` two other held-out rows.
      The perturbation has the covariance of the normal data itself, so the
      synthetic anomalies vary along the same directions as normal samples, twice
      as strongly: a scale-free and parameter-free probe that weighs every
      direction by its normal spread (for Gaussian data the best detector of
      it is the Mahalanobis distance), where isotropic noise mostly probes
      the directions the normal data leaves empty and favours the smallest lam.
      It is a proxy: see ``benchmarks/bench_lam_selection.py`` for how close it
      lands to the best lam on real data.

    Parameters
    ----------
    lams : array-like of shape (n_lams,), default=(0.001, 0.01, ..., 1000.0)
        Candidate values of lam (> 0), in the unit of ``lam_scale``. Ties go to
        the first, as in ``GridSearchCV``.
    lam_scale : {"absolute", "trace"}, default="absolute"
        As in :class:`CRDetector`. With ``"trace"`` the penalty of each fold is
        ``lam * trace(G_fold) / d`` for that fold's training Gram matrix.
    cv : int or cross-validation splitter, default=5
        An int is the number of folds of ``NoveltyKFold(cv,
        label_convention=label_convention)``. A splitter must yield training
        parts made exactly of the normal samples not held out for testing.
    scoring : str, callable or None, default=None
        What ``GridSearchCV`` accepts: a scorer name of
        :func:`sklearn.metrics.get_scorer_names` (``"roc_auc"``,
        ``"average_precision"``, ...), a callable ``scorer(estimator, X, y)``
        (higher is better), or None for :func:`anomaly_auroc`. The scorer
        receives a stand-in detector whose ``score_samples(X)`` and
        ``decision_function(X)`` return the fold's scores (higher is more
        normal), so only ranking metrics apply; one that needs ``predict`` or
        ``predict_proba`` (``"accuracy"``, ``"neg_log_loss"``) raises a
        ``ValueError``. As in ``GridSearchCV``, a name scores the labels as
        given: with ``label_convention="outlier"`` (+1 normal) ``"roc_auc"``
        equals :func:`anomaly_auroc`, and ``"average_precision"`` is that of
        the normal class; with ``"binary"`` (1 = anomaly) both are inverted.
    label_convention : {"outlier", "binary"} or None, default=None
        Meaning of ``y``: ``"outlier"`` is +1 normal / -1 anomaly, ``"binary"``
        0 normal / 1 anomaly, other values raise. None: ``y`` is ignored and all
        samples are normal. The scorer sees test labels in this convention
        (``"outlier"``'s for None), synthetic anomalies labelled as anomalies.
    contamination : "auto", "max" or float in (0, 0.5], default="auto"
        Threshold rule of the refitted detector, see :class:`CRDetector`.
    chunk_size : int, default=4096
        Rows processed at once, in the path and in the refitted detector.
    compute_dtype : {"float32", "float64"} or None, default=None
        Scoring dtype of the refitted detector. The path is computed in float64.
    random_state : int, RandomState instance or None, default=None
        Seeds the variance-inflation anomalies (only used without anomalies).

    Attributes
    ----------
    best_lam_ : float
        The chosen value of ``lams``.
    lam_ : float
        Ridge penalty of the refitted detector: ``best_lam_``, or
        ``best_lam_ * trace(G) / d`` for ``lam_scale="trace"``.
    best_index_ : int
        Index of ``best_lam_`` in ``lams`` and in ``cv_results_``.
    best_score_ : float
        Mean cross-validated score of ``best_lam_``.
    cv_results_ : dict of ndarrays
        As ``GridSearchCV``'s: ``param_lam``, ``params``, ``split{k}_test_score``,
        ``mean_test_score``, ``std_test_score`` and ``rank_test_score``, one
        entry per lam.
    best_estimator_ : CRDetector
        The detector with lam ``best_lam_`` fitted on all normal samples.
    offset_ : float
        ``best_estimator_.offset_``: ``decision_function = score_samples - offset_``.
    n_splits_ : int
        Number of cross-validation splits.
    n_features_in_ : int
        Number of features d.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Feature names, when ``X`` had string column names.

    See Also
    --------
    CRDetector : The detector at a fixed lam.
    NoveltyKFold : The one-class splitter, usable with ``GridSearchCV``.

    Notes
    -----
    With the fold's training Gram matrix ``G = V S V^T``,
    ``CRD_lam(y) = sum_k (lam / (s_k + lam))^2 (v_k^T y)^2``. The test rows are
    projected once (``Z = Y V``) and the CRD for all lam is the product of
    ``Z * Z`` with the ``(d, n_lams)`` weight matrix. The Gram matrix of each
    held-out normal part is computed once, and a fold's training Gram matrix is
    the Gram matrix of all normal samples minus it. Cost: O(N d^2) for the
    Gram matrices, O(d^3) per fold for the eigendecomposition and O(n d^2 + n d
    L) to score n test rows for L values of lam, against L times a fit and a
    scoring pass per fold for ``GridSearchCV``.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.model_selection import CRDetectorCV
    >>> rng = np.random.default_rng(0)
    >>> normal = rng.normal(size=(200, 6)) * [3, 3, 3, 0.3, 0.3, 0.3]
    >>> anomalies = rng.normal(size=(10, 6)) * 1.5
    >>> X, y = np.vstack([normal, anomalies]), np.r_[np.ones(200), -np.ones(10)]
    >>> lams = [1.0, 100.0, 10000.0]
    >>> detector = CRDetectorCV(lams=lams, label_convention="outlier").fit(X, y)
    >>> detector.cv_results_["mean_test_score"].round(2)
    array([1.  , 1.  , 0.37])
    >>> detector.best_lam_
    1.0
    >>> detector.predict(anomalies[:4])
    array([-1, -1, -1, -1])

    Without labels, lam is chosen against variance-inflated normal samples:

    >>> CRDetectorCV(lams=lams, random_state=0).fit(normal).best_lam_
    100.0
    """

    _parameter_constraints: dict = {
        "lams": ["array-like"],
        "cv": [Interval(Integral, 2, None, closed="left"),
               HasMethods(["split", "get_n_splits"])],
        "scoring": [StrOptions(set(get_scorer_names())), callable, None],
        "label_convention": [StrOptions(set(LABELS)), None],
        "random_state": ["random_state"],
        **{name: CRDetector._parameter_constraints[name] for name in _DETECTOR_PARAMS},
    }

    def __init__(
        self,
        *,
        lams=(0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0),
        lam_scale="absolute",
        cv=5,
        scoring=None,
        label_convention=None,
        contamination="auto",
        chunk_size=4096,
        compute_dtype=None,
        random_state=None,
    ):
        self.lams = lams
        self.lam_scale = lam_scale
        self.cv = cv
        self.scoring = scoring
        self.label_convention = label_convention
        self.contamination = contamination
        self.chunk_size = chunk_size
        self.compute_dtype = compute_dtype
        self.random_state = random_state

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, X_synthetic=None):
        """Choose lam by cross-validation and fit the detector on the normal samples.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Normal samples, and the labelled anomalies if any.
        y : array-like of shape (n_samples,) or None, default=None
            Labels in ``label_convention`` (per image for patch sets). None, or
            ``label_convention=None``: all samples are normal (a ``y`` given
            then is ignored with a warning).
        X_synthetic : array-like of shape (n_synthetic, ...) or None, default=None
            Synthetic anomalies, features shaped like ``X`` (as this estimator
            receives them, i.e. after any preceding pipeline step), added to
            every test fold. Never trained on.

        Returns
        -------
        self : CRDetectorCV
            The fitted detector.
        """
        lams = _check_lams(self.lams)
        X = _numpy_features(self, X, reset=True)
        samples = _as_samples(X)
        if self.label_convention is None and y is not None:
            warnings.warn(
                "y is ignored since label_convention=None: all samples are taken "
                "as normal and lam is chosen against synthetic anomalies. Pass "
                "label_convention='outlier' (+1/-1) or 'binary' (0/1) to use y.",
                UserWarning,
                stacklevel=3,
            )
            y = None
        convention = self.label_convention or "outlier"
        if y is None:
            is_anomaly = np.zeros(samples.shape[0], dtype=bool)
        else:
            is_anomaly = anomaly_mask(y, convention)
            check_consistent_length(samples, is_anomaly)
        if X_synthetic is not None:
            X_synthetic = _as_samples(self._check_synthetic(X_synthetic, X.ndim))
        cv = (NoveltyKFold(self.cv, label_convention=convention)
              if isinstance(self.cv, Integral) else self.cv)
        folds = list(cv.split(samples, y))
        scores = self._path_scores(
            samples, is_anomaly, folds, X_synthetic, lams, LABELS[convention]
        )
        self._store_results(lams, scores)
        self.best_estimator_ = CRDetector(
            lam=self.best_lam_,
            **{name: getattr(self, name) for name in _DETECTOR_PARAMS},
        ).fit(X[~is_anomaly])
        self.lam_ = self.best_estimator_.lam_
        self.offset_ = self.best_estimator_.offset_
        self._forget_calibration()
        return self

    def _check_synthetic(self, X_synthetic, ndim):
        X_synthetic = _numpy_features(self, X_synthetic, reset=False)
        if (X_synthetic.ndim == 2) != (ndim == 2):
            raise ValueError(
                "X_synthetic must be shaped like X: rows for rows, patch sets for "
                "patch sets."
            )
        return X_synthetic

    def _path_scores(self, samples, is_anomaly, folds, synthetic, lams, labels):
        """Score of every lam on every fold, shape (n_lams, n_folds)."""
        scorer = _scorer(self.scoring)
        precomputed = _PrecomputedScores()
        rng = check_random_state(self.random_state)
        use_inflation = synthetic is None and not is_anomaly.any()
        scores = np.empty((lams.size, len(folds)))
        fold_grams = training_grams(samples, is_anomaly, folds, self.chunk_size)
        for k, ((_, test), G) in enumerate(zip(folds, fold_grams, strict=True)):
            queries = [samples[test]]
            if synthetic is not None:
                queries.append(synthetic)
            if use_inflation:
                queries.append(inflate_variance(samples[test], rng))
            distances = fold_distances(
                G, queries, lams, self.lam_scale, self.chunk_size
            )
            y_test = np.where(
                np.concatenate([is_anomaly[test],
                                np.ones(distances.shape[0] - test.size, dtype=bool)]),
                labels["anomaly"],
                labels["normal"],
            )
            for j in range(lams.size):
                scores[j, k] = _score(scorer, precomputed, -distances[:, j], y_test,
                                      self.scoring)
        return scores

    def _store_results(self, lams, scores):
        mean = scores.mean(axis=1)
        self.cv_results_ = {
            "param_lam": lams,
            "params": [{"lam": float(lam)} for lam in lams],
            **{f"split{k}_test_score": scores[:, k] for k in range(scores.shape[1])},
            "mean_test_score": mean,
            "std_test_score": scores.std(axis=1),
            "rank_test_score": rankdata(-mean, method="min").astype(np.int32),
        }
        self.n_splits_ = scores.shape[1]
        self.best_index_ = int(np.argmin(self.cv_results_["rank_test_score"]))
        self.best_lam_ = float(lams[self.best_index_])
        self.best_score_ = float(mean[self.best_index_])

    def _distances(self, X_rows):
        return self.best_estimator_.score_patches(X_rows)


def _scorer(scoring):
    """The scorer for ``scoring``: anomaly_auroc for None, a named scikit-learn
    scorer for a string, the callable itself otherwise."""
    if scoring is None:
        return anomaly_auroc
    if isinstance(scoring, str):
        return get_scorer(scoring)
    return scoring


def _score(scorer, precomputed, scores, y_test, scoring):
    try:
        return scorer(precomputed, scores, y_test)
    except AttributeError as exc:
        raise ValueError(
            f"scoring={scoring!r} needs a method of a fitted detector other than "
            "score_samples and decision_function (predict, predict_proba); "
            "CRDetectorCV scores a whole lam path from one factorisation and "
            "supports ranking metrics only, e.g. 'roc_auc' or "
            "'average_precision'."
        ) from exc


def _check_lams(lams):
    """The candidate values of lam as a float64 vector, all positive and finite."""
    values = np.asarray(lams, dtype=np.float64)
    positive = np.all(np.isfinite(values) & (values > 0))
    if values.ndim != 1 or values.size == 0 or not positive:
        raise ValueError(
            f"lams must be a non-empty 1-D sequence of positive numbers, got {lams!r}."
        )
    return values


def _numpy_features(estimator, X, *, reset):
    """Checked features as a NumPy array of X's shape (rows or patch sets)."""
    X_rows, patch_shape = validate_features(estimator, X, reset=reset)
    return to_numpy(X_rows).reshape(*(patch_shape or (-1,)), X_rows.shape[-1])


def _as_samples(X):
    """(n_samples, rows per sample, d): one row per sample, or its patches."""
    return X.reshape(X.shape[0], -1, X.shape[-1])
