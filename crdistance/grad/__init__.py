"""GRAD: a grid-based continuous normal representation (Lee et al., 2024).

:class:`GRADDetector` learns, from normal patch features, a global grid (one
feature map per point, indexed by a coordinate per image) and a local grid (a
feature per point, indexed by a coordinate per patch), fuses the two samples
into a reconstruction of the input and scores a patch by the error of that
reconstruction after feature refinement. One model serves many products.

Training and scoring need torch (``pip install 'crdistance[vision]'``); this
wing imports it only inside :meth:`GRADDetector.fit` and the scoring methods,
so the estimator can be imported, cloned and loaded without it.

Behind this entrance: ``_detector`` (the estimator) and ``_network`` (the
torch network, the refinement and the training loop).
"""

from crdistance.grad._detector import GRADDetector

__all__ = ["GRADDetector"]
