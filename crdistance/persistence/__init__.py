"""Model files that cannot run code when read: float64 arrays and a JSON header.

:func:`save` writes a fitted :class:`~crdistance.CRDetector`,
:class:`~crdistance.LocalCRDetector`, :class:`~crdistance.kmeans.KMeansDetector`,
:class:`~crdistance.grad.GRADDetector`,
:class:`~crdistance.categories.PerCategoryDetector` or a ``Pipeline`` ending in
one to one ``.npz`` archive; :func:`load` reads it
back after validating every field and a SHA-256 checksum. No pickle is read
and no import is named by the file; the format is specified in
:doc:`docs/security.md </security>`.

Behind this entrance: ``_archive`` (the zip of a JSON header and ``.npy``
members), ``_model_file`` (:func:`save`, :func:`load`), ``_steps`` (the step
registry and the formats of CRDetector, StandardScaler and PatchFeaturizer),
``_formats`` (LocalCRDetector and RBFSampler), ``_cse_formats``
(ContrastiveEmbedder and KMeansDetector), ``_grad_formats`` (GRADDetector),
``_category_formats`` (PerCategoryDetector) and ``_fields`` (the checks that
every format shares).
"""

from crdistance.persistence._archive import FORMAT_VERSION
from crdistance.persistence._model_file import load, save

__all__ = ["FORMAT_VERSION", "load", "save"]
