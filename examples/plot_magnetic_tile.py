"""
Visual inspection: heat maps of surface defects
===============================================

Defect-free images of magnetic tiles (Huang, Qiu and Yuan, 2020) train a
detector on the patch features of an ImageNet CNN; each test image is then
scored by its most anomalous patch, and the per-patch scores, upsampled to the
image, localise the defect. Plain CRD fits one linear model to all normal
patches; :class:`~crdistance.LocalCRDetector` fits one per k-means cell of
them, which suits the clustered features of a small backbone better.

The data are the MVTec-layout copy in ``../shared/data/magnetic_tile``; to keep
the example under a minute it uses a random subset of the images.
"""

# %%
# Patch features of a subset of the images
# ----------------------------------------
# MobileNetV2 features of five stages, all resampled to the 28 x 28 grid of the
# stride-8 stage, give a 376-dimensional feature per patch. The weights are
# read from ``$TORCH_HOME/hub/checkpoints``, never downloaded.
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from crdistance import CRDetector, LocalCRDetector
from crdistance.datasets import load_mvtec
from crdistance.featurizer import PatchFeaturizer
from crdistance.maps import anomaly_maps
from crdistance.metrics import image_auroc, pixel_auroc

# ../shared beside the repository holds the data and the weights. sphinx-gallery
# runs an example from its folder and without ``__file__``.
HERE = Path(__file__).parent if "__file__" in globals() else Path.cwd()
SHARED = HERE.resolve().parent.parent / "shared"
os.environ.setdefault("TORCH_HOME", str(SHARED / "weights"))

LAYERS = ["features.6", "features.3", "features.10", "features.13", "features.16"]
CHANNELS = [32, 24, 64, 96, 160]  # of each layer above

train = load_mvtec(SHARED / "data" / "magnetic_tile", "train")
test = load_mvtec(SHARED / "data" / "magnetic_tile", "test")
rng = np.random.default_rng(0)
train_idx = rng.choice(len(train.paths), 80, replace=False)
test_idx = np.sort(np.r_[
    rng.choice(np.flatnonzero(test.labels == 0), 25, replace=False),
    rng.choice(np.flatnonzero(test.labels == 1), 40, replace=False),
])
labels = test.labels[test_idx]
masks = [test.masks[i] for i in test_idx]

featurizer = PatchFeaturizer(backbone="mobilenet_v2", layers=LAYERS)
X_train = featurizer.fit_transform(train.paths[train_idx])
X_test = featurizer.transform(test.paths[test_idx])
print(f"training features {X_train.shape}, test features {X_test.shape} "
      f"({labels.sum()} defective images)")

# %%
# Fit, score, and upsample the patch scores to anomaly maps
# ---------------------------------------------------------
# Images of (h, w, d) patch features fit as one 4-D array. ``score_patches``
# returns the CRD of every patch, and an image scores its worst patch.
# :func:`~crdistance.maps.anomaly_maps` resizes each grid of patch scores to its
# image's size (the images differ in size) and blurs it. The local detector
# gives each backbone stage its own cells (``feature_groups``).
detectors = {
    "CRD": CRDetector(lam=0.01, lam_scale="trace"),
    "local CRD, 16 cells": LocalCRDetector(
        n_cells=16, feature_groups=CHANNELS, max_kmeans_samples=20_000, random_state=0
    ),
}
maps = {}
for name, detector in detectors.items():
    detector.fit(X_train)
    patch_scores = detector.score_patches(X_test)
    maps[name] = anomaly_maps(patch_scores, [m.shape for m in masks])
    image_scores = patch_scores.max(axis=(1, 2))  # = -detector.score_samples(X_test)
    print(f"{name:>20}: image AUROC {image_auroc(labels, image_scores):.3f}, "
          f"pixel AUROC {pixel_auroc(masks, maps[name]):.3f}")

# %%
# Heat maps of one defect of each kind
# ------------------------------------
# The first test image of each kind of defect. Each map is scaled to its own
# maximum: it shows *where* the detector looks, the AUROCs above how well its
# scores separate defective from good.
kinds = test.defect_types[test_idx]
shown = [np.flatnonzero(kinds == kind)[0] for kind in np.unique(kinds[labels == 1])]
fig, axes = plt.subplots(2 + len(maps), len(shown), figsize=(2.2 * len(shown), 9))
for column, i in enumerate(shown):
    axes[0, column].imshow(test.images[test_idx[i]], cmap="gray")
    axes[0, column].set_title(kinds[i])
    axes[1, column].imshow(masks[i], cmap="gray")
    for row, detector_maps in enumerate(maps.values(), start=2):
        axes[row, column].imshow(detector_maps[i], cmap="inferno")
for row, title in enumerate(["image", "ground truth", *maps]):
    axes[row, 0].set_ylabel(title)
for ax in axes.flat:
    ax.set(xticks=[], yticks=[])
fig.tight_layout()
plt.show()
