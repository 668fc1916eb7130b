"""
Torch tensors in, torch tensors out
===================================

:class:`~crdistance.CRDetector` follows the Array API: it fits and scores
NumPy arrays, torch tensors or CuPy arrays in their own library and on their
own device, and answers in kind. Embeddings computed by a torch model need no
copy to NumPy, and on a GPU they never leave it. Here the device is the GPU
when one is available and the CPU otherwise; the code is the same.

Data: scikit-learn's 8 x 8 handwritten digits, with the zeros as the normal
class and every other digit as an anomaly.
"""

# %%
# Fit and score tensors
# ---------------------
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from crdistance import CRDetector

device = "cuda" if torch.cuda.is_available() else "cpu"
digits, target = load_digits(return_X_y=True)
X = torch.as_tensor(digits / 16, dtype=torch.float32, device=device)
is_zero = torch.as_tensor(target == 0, device=device)
train, test = X[is_zero][:120], torch.cat([X[is_zero][120:], X[~is_zero]])
is_anomaly = np.r_[np.zeros(int(is_zero.sum()) - 120), np.ones(int((~is_zero).sum()))]

detector = CRDetector(lam=0.1, lam_scale="trace").fit(train)
scores = detector.score_samples(test)
print(f"input:  {type(test).__name__} {test.dtype} on {test.device}")
print(f"scores: {type(scores).__name__} {scores.dtype} on {scores.device}")
print(f"fitted Gram matrix: {type(detector.gram_).__name__} {detector.gram_.dtype} "
      f"on {detector.gram_.device}")
print(f"AUROC: {roc_auc_score(is_anomaly, -scores.cpu().numpy()):.3f}")

# %%
# float32 or float64 scoring
# --------------------------
# The Gram matrix is always accumulated and factorised in float64. Scoring
# runs in the input's dtype unless ``compute_dtype`` says otherwise: float32
# halves the memory of the scoring pass, is faster on most hardware (GPUs
# especially) and is accurate enough to rank samples.
# The same detector also scores NumPy input, returning NumPy.
scores64 = CRDetector(lam=0.1, lam_scale="trace", compute_dtype="float64").fit(
    train).score_samples(test)
numpy_scores = detector.score_samples(test.cpu().numpy().astype(np.float64))
print(f"compute_dtype='float64': {scores64.dtype}; NumPy float64 input: "
      f"{type(numpy_scores).__name__} {numpy_scores.dtype}")
relative = ((scores - scores64) / scores64).abs().cpu().numpy()
print(f"float32 vs float64 scores: largest relative difference {relative.max():.1e}")

# %%
# The CRD of the anomalies is larger by an order of magnitude, far beyond the
# float32 rounding errors.
fig, (ax_hist, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
distance = -scores64.cpu().numpy()
bins = np.geomspace(distance.min(), distance.max(), 40)
for label, name in [(0, "held-out zeros"), (1, "other digits")]:
    group = distance[is_anomaly == label]
    ax_hist.hist(group, bins=bins, weights=np.full(group.size, 1 / group.size),
                 alpha=0.6, label=name)
ax_hist.set(xscale="log", xlabel="CRD (float64)", ylabel="share of the group")
ax_hist.legend()
ax_err.loglog(distance, relative, ".", markersize=3)  # exact ones are not shown
ax_err.set(xlabel="CRD (float64)", ylabel="relative difference of float32",
           title="float32 vs float64 scoring")
fig.tight_layout()
plt.show()
