"""Choosing lam: one-class cross-validation, a fast lam path and a normal-only rule.

An outlier detector must be trained on normal samples only. A plain ``KFold``
puts labelled anomalies into the training folds, which teaches the detector the
very defects it must find. :class:`NoveltyKFold` trains on normal samples only
and tests on the held-out normal samples plus all anomalies. With labels
``y`` (+1 normal / -1 anomaly, or 0 / 1 with ``label_convention="binary"``)::

    search = GridSearchCV(
        CRDetector(), {"lam": lams}, cv=NoveltyKFold(), scoring=anomaly_auroc,
        refit=False,
    ).fit(X, y)
    detector = CRDetector(**search.best_params_).fit(X[y == 1])

A pipeline is tuned the same way (``{"crdetector__lam": lams}``; each fold's
preprocessing is fitted on normal samples only), and so are patch sets
``(n_images, h, w, d)`` with one label per image. ``refit=False`` matters:
``GridSearchCV`` refits on *all* of ``X``, anomalies included.

:class:`CRDetectorCV` does the same search much faster, from one
eigendecomposition per fold for all values of lam, and refits on the normal
samples. Without labelled anomalies it chooses lam against synthetic anomalies
(``X_synthetic`` given by the user, or variance-inflated normal samples).

For images, :func:`select_pipeline` chooses the detector (CRD or local CRD,
penalty, cells, cell weights, feature groups) from normal images alone:
held-out normal images and copies of them with synthetic defects
(:func:`synthesize_defects`: Perlin-noise blobs filled with foreign texture,
blur, noise or an intensity change).
"""

from crdistance.model_selection._configure import (
    FAINT_DEFECTS,
    default_candidates,
    rank_detectors,
    select_pipeline,
    synthetic_holdout,
)
from crdistance.model_selection._defects import (
    DEFECT_KINDS,
    foreground,
    perlin_noise,
    read_image,
    synthesize_defects,
)
from crdistance.model_selection._search import CRDetectorCV
from crdistance.model_selection._split import NoveltyKFold, anomaly_auroc
from crdistance.model_selection._training_set import defect_training_set, patch_masks

__all__ = [
    "DEFECT_KINDS",
    "FAINT_DEFECTS",
    "CRDetectorCV",
    "NoveltyKFold",
    "anomaly_auroc",
    "default_candidates",
    "defect_training_set",
    "foreground",
    "patch_masks",
    "perlin_noise",
    "rank_detectors",
    "read_image",
    "select_pipeline",
    "synthesize_defects",
    "synthetic_holdout",
]
