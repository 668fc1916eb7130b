"""Torchvision backbones: name registry, weight loading and patch embedding.

Pretrained weights are only ever read from the torch hub cache
(``$TORCH_HOME/hub/checkpoints``) or from a local file: nothing here opens a
network connection.
"""

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

DEFAULT_LAYERS = {
    "wide_resnet50_2": ("layer2", "layer3"),
    "resnet18": ("layer2", "layer3"),
    "mobilenet_v2": ("features.6", "features.13"),
}
"""Layers tapped by default: the stride-8 and stride-16 stages of each backbone."""

RANDOM_INIT_SEED = 0


def default_layers(backbone):
    """Return the default layers of `backbone`, or raise a ValueError naming them."""
    check_backbone_name(backbone)
    if backbone not in DEFAULT_LAYERS:
        raise ValueError(
            f"Backbone {backbone!r} has no default layers; pass layers=[...] "
            f"(defaults exist for {', '.join(sorted(DEFAULT_LAYERS))})."
        )
    return DEFAULT_LAYERS[backbone]


def check_backbone_name(backbone):
    classifiers = list_models(module=torchvision.models)
    if backbone not in classifiers:
        raise ValueError(
            f"Unknown backbone {backbone!r}. Backbones with default layers: "
            f"{', '.join(sorted(DEFAULT_LAYERS))}; any other torchvision "
            "classification model (torchvision.models.list_models("
            "module=torchvision.models)) works with explicit layers=[...]."
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
    backbone : str
        A torchvision classification model name.
    weights : str, path-like or None
        A weights enum member name such as ``"IMAGENET1K_V1"`` or ``"DEFAULT"``
        (read from the torch hub cache only), a state-dict file, or None for a
        random initialisation seeded with ``RANDOM_INIT_SEED``.

    Returns
    -------
    model : torch.nn.Module
    """
    check_backbone_name(backbone)
    resolved = _resolve_weights(backbone, weights)
    if isinstance(resolved, WeightsEnum):
        _require_cached(backbone, resolved)
        return get_model(backbone, weights=resolved).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = get_model(backbone, weights=None)
    if isinstance(resolved, Path):
        _load_state_dict_file(model, resolved)
    return model.eval()


def _load_state_dict_file(model, path):
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a state dict of this backbone: {exc}") from exc


def _valid_layer_names(model):
    """Graph nodes of `model` and the module names that prefix them, 2 levels deep."""
    nodes = get_graph_node_names(model)[1]
    prefixes = {".".join(node.split(".")[:depth]) for node in nodes for depth in (1, 2)}
    return set(nodes) | prefixes, sorted(prefixes - {"x"})


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
            self.extractor = create_feature_extractor(backbone, list(self.layers))
        except ValueError as exc:
            valid, shown = _valid_layer_names(backbone)
            unknown = [layer for layer in self.layers if layer not in valid]
            raise ValueError(
                f"Unknown layer(s) {unknown}. Valid layers include: {', '.join(shown)}"
                " (any node of torchvision.models.feature_extraction."
                "get_graph_node_names(model)[1])."
            ) from exc
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
