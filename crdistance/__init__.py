"""Collaborative Representation Distance (CRD) anomaly detection.

CRD (Han & Yan, arXiv 2401.09443) scores a query by its ridge reconstruction
residual from the normal training features. Fitting is a streaming sum of a
``d x d`` Gram matrix and one Cholesky factorisation; scoring is one matrix
product, whatever the number of training samples.
"""

from crdistance._detector import CRDetector, merge
from crdistance._local import LocalCRDetector
from crdistance.persistence import load, save

__version__ = "0.1.0.dev0"

__all__ = ["CRDetector", "LocalCRDetector", "load", "merge", "save", "__version__"]
