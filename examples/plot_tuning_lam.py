"""
Tuning lam: GridSearchCV and the fast CRDetectorCV
==================================================

The ridge penalty ``lam`` trades how much of a query the normal samples may
reconstruct (small lam: only what leaves their span is anomalous) against a
plain norm (large lam). It is worth tuning when a few labelled anomalies are
available. Two things differ from supervised tuning: the detector must be
trained on normal samples only, which
:class:`~crdistance.model_selection.NoveltyKFold` ensures, and a scorer must
rank anomalies, which :func:`~crdistance.model_selection.anomaly_auroc` does.

:class:`~crdistance.model_selection.CRDetectorCV` runs the same search from
one eigendecomposition per fold for all values of lam, as ``RidgeCV`` does
for alpha. Data: the ``optdigits`` dataset of the ODDS library (Rayana, 2016).
"""

# %%
# The same search, two ways
# -------------------------
# ``refit=False`` matters: ``GridSearchCV`` would refit on all of ``X``,
# anomalies included. We refit on the normal samples ourselves.
from pathlib import Path
from time import perf_counter

import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import GridSearchCV

from crdistance import CRDetector
from crdistance.datasets import load_odds
from crdistance.model_selection import CRDetectorCV, NoveltyKFold, anomaly_auroc

# ../shared beside the repository holds the data. sphinx-gallery runs an
# example from its folder and without ``__file__``.
HERE = Path(__file__).parent if "__file__" in globals() else Path.cwd()
DATA = HERE.resolve().parent.parent / "shared" / "data"
X, y = load_odds("optdigits", data_home=DATA)  # y == 1: anomaly
print(f"{X.shape[0]} samples, {X.shape[1]} features, {y.sum()} anomalies")
lams = np.logspace(-4, 2, 13)
cv = NoveltyKFold(n_splits=5, label_convention="binary", shuffle=True, random_state=0)

start = perf_counter()
search = GridSearchCV(
    CRDetector(lam_scale="trace"), {"lam": lams}, cv=cv, scoring=anomaly_auroc,
    refit=False,
).fit(X, y)
grid_time = perf_counter() - start
detector = CRDetector(lam_scale="trace", **search.best_params_).fit(X[y == 0])

start = perf_counter()
fast = CRDetectorCV(lams=lams, lam_scale="trace", cv=cv, label_convention="binary")
fast.fit(X, y)  # refits itself on the normal samples: fast.best_estimator_
fast_time = perf_counter() - start

grid_scores = search.cv_results_["mean_test_score"]
fast_scores = fast.cv_results_["mean_test_score"]
print(f"GridSearchCV: lam = {search.best_params_['lam']:.3g} in {grid_time:.2f} s")
print(f"CRDetectorCV: lam = {fast.best_lam_:.3g} in {fast_time:.2f} s "
      f"({grid_time / fast_time:.0f} times faster)")
print("largest difference of the mean AUROCs: "
      f"{np.abs(grid_scores - fast_scores).max():.1e}")
print("same refitted detector:",
      np.allclose(detector.score_samples(X), fast.score_samples(X)))

# %%
# Cross-validated AUROC against lam
# ---------------------------------
# Too small a lam lets the normal digits reconstruct the anomalous ones; too
# large a lam scores the plain norm of a sample. The curves coincide.
std = search.cv_results_["std_test_score"]
fig, ax = plt.subplots(figsize=(7, 4))
ax.fill_between(lams, grid_scores - std, grid_scores + std, alpha=0.2)
ax.plot(lams, grid_scores, "o", label=f"GridSearchCV ({grid_time:.1f} s)")
ax.plot(lams, fast_scores, "-", label=f"CRDetectorCV ({fast_time:.2f} s)")
ax.axvline(fast.best_lam_, color="k", linestyle="--", label="best lam")
ax.set(xscale="log", xlabel="lam (unit: trace(G) / d)",
       ylabel="AUROC (5-fold novelty CV)")
ax.legend()
fig.tight_layout()
plt.show()
