"""
Quickstart: CRD on a real tabular dataset
=========================================

Benign tumours of scikit-learn's breast-cancer dataset are the normal class;
malignant ones are the anomalies. The detector is fitted on benign samples
only, after standardising the features, and ranks held-out benign and
malignant samples.
"""

# %%
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from crdistance import CRDetector

X, y = load_breast_cancer(return_X_y=True)  # y == 1: benign (normal)
normal, malignant = X[y == 1], X[y == 0]
model = make_pipeline(StandardScaler(), CRDetector(lam=1.0)).fit(normal[:200])

test = np.vstack([normal[200:], malignant])
is_anomaly = np.r_[np.zeros(len(normal) - 200), np.ones(len(malignant))]
print(f"AUROC: {roc_auc_score(is_anomaly, -model.score_samples(test)):.3f}")
print(f"flagged: {np.mean(model.predict(normal[200:]) == -1):.1%} of held-out benign, "
      f"{np.mean(model.predict(malignant) == -1):.1%} of malignant")
