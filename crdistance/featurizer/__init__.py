"""Patch features of images from a pretrained CNN, as a scikit-learn transformer.

:class:`PatchFeaturizer` turns images (paths, PIL images, arrays or tensors)
into ``(n_images, h, w, d)`` patch features that :class:`~crdistance.CRDetector`
and :class:`~crdistance.LocalCRDetector` fit and score. It needs torch,
torchvision and Pillow (``pip install 'crdistance[vision]'``); importing this
wing imports torch, ``import crdistance`` does not.

Behind this entrance: ``_featurizer`` (the estimator), ``_backbones``
(torchvision models, offline weights and the patch embedding module) and
``_images`` (reading and preprocessing images).
"""

from crdistance.featurizer._featurizer import PatchFeaturizer

__all__ = ["PatchFeaturizer"]
