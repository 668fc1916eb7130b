"""
Quickstart: CRD on a real tabular dataset
=========================================

Benign tumours of scikit-learn's breast-cancer dataset are the normal class;
malignant ones are the anomalies. The detector is fitted on benign samples
only, after standardising the features, and ranks held-out benign and
malignant samples by their Collaborative Representation Distance: how badly
a ridge regression on all the normal training samples reconstructs them.
"""

# %%
# Fit on normal samples only
# --------------------------
# ``CRDetector`` is a scikit-learn outlier detector: it goes in a pipeline, and
# ``score_samples`` is higher for more normal samples.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import RocCurveDisplay, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from crdistance import CRDetector

X, y = load_breast_cancer(return_X_y=True)  # y == 1: benign (normal)
normal, malignant = X[y == 1], X[y == 0]
model = make_pipeline(StandardScaler(), CRDetector(lam=1.0)).fit(normal[:200])

test = np.vstack([normal[200:], malignant])
is_anomaly = np.r_[np.zeros(len(normal) - 200), np.ones(len(malignant))]
distance = -model.score_samples(test)  # the CRD: larger = more anomalous
print(f"AUROC: {roc_auc_score(is_anomaly, distance):.3f}")

# %%
# Thresholding
# ------------
# ``predict`` flags samples whose CRD exceeds ``threshold_``. The default
# ``contamination="auto"`` sets it from the training Gram matrix alone, aiming
# at 1 % false alarms if the normal data were Gaussian. Real features have
# heavier tails, so more held-out benign samples are flagged than that.
threshold = model[-1].threshold_
print(f"threshold: {threshold:.3f}")
print(f"flagged: {np.mean(model.predict(normal[200:]) == -1):.1%} of held-out benign, "
      f"{np.mean(model.predict(malignant) == -1):.1%} of malignant")

# %%
# Score distributions and ROC curve
# ---------------------------------
# Malignant tumours are reconstructed badly from the benign ones: their CRD is
# typically ten times larger (note the logarithmic axis).
fig, (ax_hist, ax_roc) = plt.subplots(1, 2, figsize=(10, 4))
bins = np.geomspace(distance.min(), distance.max(), 40)
ax_hist.hist(distance[is_anomaly == 0], bins=bins, alpha=0.6, label="held-out benign")
ax_hist.hist(distance[is_anomaly == 1], bins=bins, alpha=0.6, label="malignant")
ax_hist.axvline(threshold, color="k", linestyle="--", label="threshold_")
ax_hist.set(xscale="log", xlabel="CRD", ylabel="samples", title="Anomaly scores")
ax_hist.legend()
RocCurveDisplay.from_predictions(is_anomaly, distance, name="CRD", ax=ax_roc)
ax_roc.set_title("ROC curve")
fig.tight_layout()
plt.show()
