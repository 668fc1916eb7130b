"""Collaborative Representation Distance (CRD) anomaly detection.

CRD (Han & Yan, arXiv 2401.09443) scores a query by its ridge reconstruction
residual from the normal training features. Fitting is a streaming sum of a
``d x d`` Gram matrix and one Cholesky factorisation; scoring is one matrix
product, whatever the number of training samples.

The detectors and their tools import with NumPy, SciPy and scikit-learn alone.
:class:`PatchFeaturizer` (torch, torchvision) is imported on first use, so that
``import crdistance`` does not import torch::

    from sklearn.pipeline import make_pipeline
    from crdistance import CRDetector, PatchFeaturizer

    model = make_pipeline(PatchFeaturizer(), CRDetector(lam=5))
"""

import importlib

from crdistance._detector import CRDetector, merge
from crdistance._local import LocalCRDetector
from crdistance._version import __version__
from crdistance.model_selection import CRDetectorCV
from crdistance.persistence import load, save

# Public names whose modules import torch: resolved on first access (PEP 562).
_LAZY = {"PatchFeaturizer": "crdistance.featurizer"}

__all__ = [
    "CRDetector",
    "CRDetectorCV",
    "LocalCRDetector",
    "PatchFeaturizer",
    "load",
    "merge",
    "save",
    "__version__",
]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'crdistance' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
