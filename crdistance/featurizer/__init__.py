"""Patch features of images from a pretrained CNN, as a scikit-learn transformer.

:class:`PatchFeaturizer` turns images (paths, PIL images, arrays or tensors)
into ``(n_images, h, w, d)`` patch features that :class:`~crdistance.CRDetector`
and :class:`~crdistance.LocalCRDetector` fit and score. It needs torch,
torchvision and Pillow (``pip install 'crdistance[vision]'``); importing this
wing imports torch, ``import crdistance`` does not.

:class:`ContrastiveEmbedder` is CSE's trained embedding of those features
(Thomine & Snoussi, 2024), composing as ``make_pipeline(PatchFeaturizer(),
ContrastiveEmbedder(), CRDetector())``.

Behind this entrance: ``_featurizer`` (the estimator), ``_backbones``
(torchvision models, offline weights and the patch embedding module),
``_efficientnet`` (EfficientNet-Lite), ``_images`` (reading and preprocessing
images), ``_contrastive`` (the CSE embedder) and ``_contrastive_net`` (its
networks and training loop).
"""

from crdistance.featurizer._contrastive import ContrastiveEmbedder
from crdistance.featurizer._featurizer import PatchFeaturizer

__all__ = ["ContrastiveEmbedder", "PatchFeaturizer"]
