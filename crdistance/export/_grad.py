"""The GRADDetector part of the exported graphs, traced from torch.

A :class:`~crdistance.grad.GRADDetector` scores a patch with a torch network,
not with the dense operators of :mod:`crdistance.export._graph`: its
standardisation (``mean_``, ``scale_``), the network, the feature refinement
and the norm of the refined error per patch, the module of its public
``network_module()``, are exported by ``torch.onnx.export`` (alone for a
detector, behind the backbone for a pipeline), and the score and label of
:func:`~crdistance.export._graph.add_scores` follow.

This wing does not import the grad wing (docs/architecture.md): a
GRADDetector is recognised through ``sys.modules``, where its wing is whenever
one exists. torch is imported when a model is written.
"""

import sys

from sklearn.utils.validation import check_is_fitted

from crdistance.export._graph import (
    STANDARDIZATION,
    GraphBuilder,
    add_scores,
    base_metadata,
)
from crdistance.export._trace import trace

__all__ = [
    "check_grid", "grad_head_model", "grad_metadata", "grad_scorer", "is_grad",
    "trace_scorer",
]


def is_grad(model):
    """Whether `model` is a GRADDetector (without importing its wing)."""
    grad = sys.modules.get("crdistance.grad")
    return grad is not None and isinstance(model, grad.GRADDetector)


def grad_scorer(detector, input_ndim, device="cpu"):
    """The detector's patch distances as a torch module in eval mode.

    With ``input_ndim=None`` it maps a backbone's channels-first patch
    features (n, d, h, w) to distances (n, h, w); with 2, 3 or 4 it maps
    features (n, d), (n, h, d) or (n, h, w, d), as ``score_patches`` takes
    them, to distances of shape ``features.shape[:-1]``.
    """
    import torch

    class GRADScorer(torch.nn.Module):
        """Features to patch distances: standardisation, then the network,
        the refinement and the norm of ``network_module()``."""

        def __init__(self):
            super().__init__()
            d = detector.n_features_in_
            mean, scale = (
                torch.tensor(values, dtype=torch.float32).reshape(
                    (d, 1, 1) if input_ndim is None else (d,))
                for values in (detector.mean_, detector.scale_)
            )
            self.register_buffer("mean", mean)
            self.register_buffer("scale", scale)
            self.distances = detector.network_module()

        def forward(self, x):
            if input_ndim is None:
                return self.distances((x - self.mean) / self.scale)
            h, w = detector.patch_shape_
            d = detector.n_features_in_
            maps = (x.reshape(-1, h, w, d) - self.mean) / self.scale
            distances = self.distances(maps.permute(0, 3, 1, 2))
            return distances.reshape(-1, *(h, w)[: input_ndim - 2])

    # Eval mode at the top, as torch.onnx.export restores the top's mode.
    return GRADScorer().to(device).eval()


def trace_scorer(module, probe, input_name, scorer_path=""):
    """The ONNX model of `module`, ending in a :func:`grad_scorer` at
    `scorer_path` (the prefix of its state-dict keys in `module`), whose
    output is ``crd``; the standardisation's initializers are renamed
    ``standardization/mean`` and ``standardization/scale``, which float16
    export keeps in float32."""
    onnx_model = trace(module, probe, input_name, "crd")
    names = {f"{scorer_path}{name}": f"{STANDARDIZATION}{name}"
             for name in ("mean", "scale")}
    graph = onnx_model.graph
    for initializer in graph.initializer:
        initializer.name = names.get(initializer.name, initializer.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = names.get(name, name)
    return onnx_model


def check_grid(detector, grid):
    """Raise unless the backbone's patch grid is the detector's."""
    if tuple(grid) != tuple(detector.patch_shape_):
        raise ValueError(
            f"The featurizer gives a patch grid {tuple(grid)} for this image "
            f"size, but the GRADDetector was fitted on {tuple(detector.patch_shape_)}"
            ": export with the image size it was fitted on."
        )


def grad_metadata(detector):
    """Metadata of a fitted GRADDetector (see :func:`to_onnx`)."""
    return base_metadata(detector) | {
        "patch_shape": ",".join(map(str, detector.patch_shape_)),
        **{name: str(detector.get_params()[name]) for name in (
            "local_grid_size", "global_grid_size", "hidden_channels", "n_blocks")},
        **{name: repr(float(detector.get_params()[name])) for name in (
            "mse_weight", "cosine_weight", "refine_threshold")},
    }


def grad_head_model(detector, input_ndim):
    """ONNX model and metadata of a fitted GRADDetector: features of its patch
    grid to distances, score and label."""
    import torch

    check_is_fitted(detector)
    h, w = detector.patch_shape_
    fits = {2: (h, w) == (1, 1), 3: w == 1, 4: True}
    if input_ndim is None:
        input_ndim = next(ndim for ndim in (2, 3, 4) if fits[ndim])
    if input_ndim not in fits:
        raise ValueError(f"input_ndim must be 2, 3, 4 or None, got {input_ndim!r}.")
    if not fits[input_ndim]:
        raise ValueError(
            f"input_ndim={input_ndim} cannot hold the patch grid {(h, w)} the "
            "GRADDetector was fitted on; use input_ndim=4 (or None)."
        )
    grid = (h, w)[: input_ndim - 2]
    probe = torch.zeros((1, *grid, detector.n_features_in_))
    onnx_model = trace_scorer(grad_scorer(detector, input_ndim), probe, "features")
    del onnx_model.graph.output[:]
    add_scores(GraphBuilder(onnx_model.graph), "crd", detector, ("n", *grid))
    return onnx_model, grad_metadata(detector)
