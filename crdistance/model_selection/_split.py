"""One-class cross-validation: labels, the splitter and the scorer.

Labels are +1 normal / -1 anomaly (scikit-learn's outlier convention, what
``predict`` returns) or 0 normal / 1 anomaly (ODDS, MVTec AD,
``roc_auc_score``), chosen by a ``label_convention`` parameter.
"""

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold
from sklearn.utils.validation import check_consistent_length, column_or_1d

from crdistance._array_api import to_numpy

__all__ = ["LABELS", "NoveltyKFold", "anomaly_auroc", "anomaly_mask"]

LABELS = {
    "outlier": {"normal": 1, "anomaly": -1},
    "binary": {"normal": 0, "anomaly": 1},
}


def anomaly_mask(y, label_convention):
    """Which samples are anomalies, with the labels checked against the convention.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Labels in ``label_convention``.
    label_convention : {"outlier", "binary"}
        ``"outlier"``: +1 normal, -1 anomaly. ``"binary"``: 0 normal, 1 anomaly.

    Returns
    -------
    is_anomaly : ndarray of shape (n_samples,), bool
    """
    y = column_or_1d(y, warn=True)
    labels = LABELS[label_convention]
    unexpected = np.setdiff1d(np.unique(y), list(labels.values()))
    if unexpected.size:
        other = next(name for name in LABELS if name != label_convention)
        raise ValueError(
            f"With label_convention={label_convention!r} the labels must be "
            f"{labels['normal']} (normal) or {labels['anomaly']} (anomaly), got "
            f"{unexpected.tolist()}. Pass label_convention={other!r} for "
            f"{LABELS[other]['normal']}/{LABELS[other]['anomaly']} labels."
        )
    is_anomaly = y == labels["anomaly"]
    if is_anomaly.all():
        raise ValueError(
            "y holds no normal sample: a one-class detector needs normal samples "
            f"(label {labels['normal']}) to train on."
        )
    return is_anomaly


def anomaly_auroc(estimator, X, y):
    """Area under the ROC curve of ``-score_samples`` against "is an anomaly".

    A scorer (``scoring=anomaly_auroc``) for outlier detectors. The labels may be
    +1 normal / -1 anomaly or 0 normal / 1 anomaly: with both classes present the
    two sets of values cannot be confused.

    Parameters
    ----------
    estimator : fitted outlier detector
        Has ``score_samples`` (the higher, the more normal).
    X : array-like
        Test samples (rows, or patch sets scored per image).
    y : array-like of shape (n_samples,)
        Labels, both classes present.

    Returns
    -------
    auroc : float
        Probability that an anomaly is scored as less normal than a normal sample.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance import CRDetector
    >>> from crdistance.model_selection import anomaly_auroc
    >>> rng = np.random.default_rng(0)
    >>> normal = rng.normal(size=(100, 3)) * [1.0, 1.0, 0.01]
    >>> detector = CRDetector(lam=1.0).fit(normal)
    >>> X_test = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    >>> anomaly_auroc(detector, X_test, [1, -1])
    1.0
    """
    y = column_or_1d(y, warn=True)
    present = set(np.unique(y).tolist())
    convention = next((name for name, labels in LABELS.items()
                       if present == set(labels.values())), None)
    if convention is None:
        raise ValueError(
            "anomaly_auroc needs normal and anomalous samples, labelled +1/-1 or "
            f"0/1; got the labels {sorted(present)}."
        )
    scores = to_numpy(estimator.score_samples(X))
    return float(roc_auc_score(anomaly_mask(y, convention), -scores))


class NoveltyKFold(KFold):
    """K-fold cross-validation for one-class detectors: train on normal samples only.

    The normal samples are split into ``n_splits`` folds as by :class:`KFold`.
    Split k trains on the normal samples outside fold k and tests on fold k
    plus *every* anomaly: anomalies never train, so each test fold can use all
    of them (test folds overlap; scores are per split, as ``GridSearchCV``
    needs).

    Without anomalies (``y`` None or all normal) the test folds hold the
    held-out normal samples only, as :class:`CRDetectorCV` uses them with
    synthetic anomalies; a ranking scorer such as :func:`anomaly_auroc` then
    fails with a message saying so.

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds of the normal samples, at least 2.
    label_convention : {"outlier", "binary"}, default="outlier"
        Meaning of ``y``: ``"outlier"`` is scikit-learn's, +1 normal and -1
        anomaly; ``"binary"`` is 0 normal and 1 anomaly. Other values raise.
    shuffle : bool, default=False
        Whether to shuffle the normal samples before splitting them.
    random_state : int, RandomState instance or None, default=None
        Seeds the shuffle when ``shuffle=True``.

    See Also
    --------
    CRDetectorCV : Chooses lam over these folds from one eigendecomposition each.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.model_selection import NoveltyKFold
    >>> y = np.array([1, 1, 1, 1, -1, 1, -1])
    >>> for train, test in NoveltyKFold(n_splits=2).split(np.zeros((7, 3)), y):
    ...     print(train, test)
    [3 5] [0 1 2 4 6]
    [0 1 2] [3 4 5 6]
    """

    def __init__(
        self,
        n_splits=5,
        *,
        label_convention="outlier",
        shuffle=False,
        random_state=None,
    ):
        super().__init__(n_splits=n_splits, shuffle=shuffle, random_state=random_state)
        if label_convention not in LABELS:
            raise ValueError(
                "label_convention must be 'outlier' or 'binary', got "
                f"{label_convention!r}."
            )
        self.label_convention = label_convention

    def split(self, X, y=None, groups=None):
        """Generate training (normal) and test (normal + anomaly) indices.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Samples; only their number is used (patch sets are split by image).
        y : array-like of shape (n_samples,) or None, default=None
            Labels in ``label_convention``; None means all samples are normal.
        groups : None
            Ignored, present for API consistency.

        Yields
        ------
        train : ndarray
            Indices of the normal samples to train on.
        test : ndarray
            Sorted indices of the held-out normal samples and of all anomalies.
        """
        if y is None:
            is_anomaly = np.zeros(len(X), dtype=bool)
        else:
            is_anomaly = anomaly_mask(y, self.label_convention)
            check_consistent_length(X, is_anomaly)
        normal = np.flatnonzero(~is_anomaly)
        anomalies = np.flatnonzero(is_anomaly)
        for train, held_out in super().split(normal, groups=groups):
            yield normal[train], np.sort(np.concatenate([normal[held_out], anomalies]))


