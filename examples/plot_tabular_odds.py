"""
CRD on tabular data: when a kernel feature map helps
====================================================

CRD is a linear-subspace model: a sample is normal when a ridge regression on
the normal training samples reconstructs it, i.e. when it lies near their
linear span. Deep image embeddings are high-dimensional and the normal ones
fill only part of the space, so that is a good model there. Low-dimensional
tabular data is another matter: its normal samples span the whole space, so
the anomalies do too. A nonlinear feature map such as random Fourier features
of an RBF kernel (:class:`~sklearn.kernel_approximation.RBFSampler`) lifts the
data to a space where the normal samples occupy a small part again.

We compare pipelines on a few datasets of the ODDS library (Rayana, 2016),
with :class:`~sklearn.neighbors.LocalOutlierFactor` as a reference.
"""

# %%
# Novelty-detection protocol
# --------------------------
# :class:`~crdistance.model_selection.NoveltyKFold` trains on inliers only and
# tests on the held-out inliers plus every outlier; the scorer
# :func:`~crdistance.model_selection.anomaly_auroc` is the ROC AUC of
# ``-score_samples``. Scaling and feature maps are fitted inside each fold.
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.kernel_approximation import RBFSampler
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import LocalOutlierFactor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from crdistance import CRDetector
from crdistance.datasets import list_odds, load_odds
from crdistance.model_selection import NoveltyKFold, anomaly_auroc

# ../shared beside the repository holds the data. sphinx-gallery runs an
# example from its folder and without ``__file__``.
HERE = Path(__file__).parent if "__file__" in globals() else Path.cwd()
DATA = HERE.resolve().parent.parent / "shared" / "data"
print("ODDS datasets available:", ", ".join(list_odds(DATA)))
DATASETS = ["glass", "pendigits", "cardio", "ionosphere", "satimage-2", "optdigits"]


def crd():
    return CRDetector(lam=0.01, lam_scale="trace")  # lam relative to trace(G) / d


models = {
    "CRD": crd(),
    "scaler + CRD": make_pipeline(StandardScaler(), crd()),
    "scaler + RBF features + CRD": make_pipeline(
        StandardScaler(), RBFSampler(gamma="scale", n_components=200, random_state=0),
        crd(),
    ),
    "scaler + LOF (reference)": make_pipeline(
        StandardScaler(), LocalOutlierFactor(novelty=True)
    ),
}
cv = NoveltyKFold(n_splits=5, label_convention="binary", shuffle=True, random_state=0)

# %%
# Cross-validated AUROC
# ---------------------
auroc = {name: [] for name in models}
labels = []
for dataset in DATASETS:
    X, y = load_odds(dataset, data_home=DATA)  # y == 1: outlier
    labels.append(f"{dataset}\nd = {X.shape[1]}")
    for name, model in models.items():
        auroc[name].append(
            cross_val_score(model, X, y, cv=cv, scoring=anomaly_auroc).mean()
        )
    print(f"{dataset:>10} ({X.shape[0]} x {X.shape[1]}, {y.mean():.0%} outliers): "
          + ", ".join(f"{name} {values[-1]:.3f}" for name, values in auroc.items()))

# %%
# Plain CRD does well where the outliers leave the span of the inliers, and
# poorly on glass, pendigits and optdigits, whose outliers stay close to it. The
# RBF features improve CRD on every dataset here, to LOF's level or beyond on
# all but optdigits. The price is a wider model (200 features here), still a
# single 200 x 200 matrix whatever the number of training samples.
fig, ax = plt.subplots(figsize=(10, 4))
width = 0.8 / len(models)
for k, (name, values) in enumerate(auroc.items()):
    ax.bar(np.arange(len(DATASETS)) + (k - (len(models) - 1) / 2) * width, values,
           width, label=name)
ax.set_xticks(np.arange(len(DATASETS)), labels)
ax.set(ylabel="AUROC (5-fold novelty CV)", ylim=(0.4, 1.02))
ax.axhline(0.5, color="grey", linewidth=0.8)
ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=4, fontsize="small")
fig.tight_layout()
plt.show()
