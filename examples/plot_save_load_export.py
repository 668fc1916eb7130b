"""
Saving, loading and exporting a detector
========================================

A fitted CRD detector is two d x d matrices and a threshold, whatever the
number of training samples. It can be saved three ways:

- ``joblib`` (pickle): any estimator, but loading a file runs code from it, so
  load only files you trust;
- :func:`crdistance.save` / :func:`crdistance.load`: a ``.npz`` archive of
  float64 arrays and a JSON header, validated and checksummed when read, which
  cannot run code;
- :func:`crdistance.export.to_onnx`: the scoring graph (one matrix product) in
  float32 or float16, for any ONNX runtime without Python; read back here with
  :func:`crdistance.export.load_onnx`.

A nearest-neighbour detector, by contrast, must keep its memory bank of
training samples. Data: the ``mnist`` dataset of the ODDS library (Rayana, 2016).
"""

# %%
# Fit, then save four ways
# ------------------------
import tempfile
from pathlib import Path

import joblib
import matplotlib.pyplot as plt
import numpy as np

import crdistance
from crdistance import CRDetector
from crdistance.baselines import NearestNeighborDetector
from crdistance.datasets import load_odds
from crdistance.export import load_onnx, to_onnx

# ../shared beside the repository holds the data. sphinx-gallery runs an
# example from its folder and without ``__file__``.
HERE = Path(__file__).parent if "__file__" in globals() else Path.cwd()
DATA = HERE.resolve().parent.parent / "shared" / "data"
X, y = load_odds("mnist", data_home=DATA)  # y == 1: anomaly
X_train, X_test = X[y == 0][:5000], np.vstack([X[y == 0][5000:], X[y == 1]])
detector = CRDetector(lam=0.01, lam_scale="trace").fit(X_train)
knn = NearestNeighborDetector(contamination=None).fit(X_train)  # for its size
print(f"fitted on {X_train.shape[0]} samples of d = {X_train.shape[1]}")

X_test32 = X_test.astype(np.float32)  # ONNX graphs take float32 features
with tempfile.TemporaryDirectory() as folder:
    paths = {name: Path(folder) / file for name, file in [
        ("joblib", "crd.joblib"), ("crdistance.save", "crd.npz"),
        ("ONNX float32", "crd.onnx"), ("ONNX float16", "crd16.onnx"),
        ("1-NN bank, joblib", "knn.joblib"),
    ]}
    joblib.dump(detector, paths["joblib"])
    crdistance.save(detector, paths["crdistance.save"])
    to_onnx(detector, paths["ONNX float32"])
    to_onnx(detector, paths["ONNX float16"], float16=True)
    joblib.dump(knn, paths["1-NN bank, joblib"])
    sizes = {name: path.stat().st_size for name, path in paths.items()}
    loaded = {
        "joblib": joblib.load(paths["joblib"]),
        "crdistance.save": crdistance.load(paths["crdistance.save"]),
        "ONNX float32": load_onnx(paths["ONNX float32"]),
        "ONNX float16": load_onnx(paths["ONNX float16"]),
    }
    scores = {name: model.score_samples(X_test32 if "ONNX" in name else X_test)
              for name, model in loaded.items()}

# %%
# Loaded models score as the fitted one
# -------------------------------------
# joblib and ``crdistance.save`` store the float64 arrays: identical scores.
# ONNX computes in float32 (and rounds the weights to float16 on request).
expected = detector.score_samples(X_test)
for name, model_scores in scores.items():
    difference = np.abs(model_scores - expected)
    relative = np.max(difference / np.abs(expected))
    print(f"{name:>16}: {sizes[name] / 1024:7.1f} KiB, score difference at most "
          f"{difference.max():.1e} ({relative:.1e} relative)")
print(f"{'1-NN bank':>16}: {sizes['1-NN bank, joblib'] / 1024:7.1f} KiB")

# %%
# File sizes
# ----------
fig, ax = plt.subplots(figsize=(7, 3.5))
bars = ax.barh(list(sizes), np.array(list(sizes.values())) / 1024)
ax.bar_label(bars, fmt="%.0f KiB", padding=3)
ax.set(xscale="log", xlabel="file size (KiB)", xlim=(10, 3e4),
       title=f"{X_train.shape[0]} training samples, d = {X_train.shape[1]}")
ax.invert_yaxis()
fig.tight_layout()
plt.show()
