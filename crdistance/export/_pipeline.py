"""The ONNX graph of a fitted Pipeline(PatchFeaturizer, [embedder,] detector).

The featurizer's backbone, followed by the embedder's embedding when there is
one, is exported by ``torch.onnx.export``; the detector head of
:mod:`crdistance.export._graph` follows, then the anomaly maps as two matrix
products. A GRADDetector's scorer (:mod:`crdistance.export._grad`) is exported
with the backbone, in the same ``torch.onnx.export``, instead of a head.
"""

import copy
import sys

import numpy as np
from sklearn.utils.validation import check_is_fitted

from crdistance._validation import size_pair
from crdistance._version import __version__
from crdistance.export._grad import (
    check_grid,
    grad_metadata,
    grad_scorer,
    is_grad,
    trace_scorer,
)
from crdistance.export._graph import (
    DETECTORS,
    GraphBuilder,
    add_head,
    add_scores,
    detector_metadata,
)
from crdistance.export._trace import trace
from crdistance.maps import anomaly_maps

__all__ = ["pipeline_model"]

_DEFAULT_SIGMA = 4.0
"""Blur of the exported anomaly maps by default, that of ``anomaly_maps``."""


def pipeline_model(pipeline, image_size, sigma):
    """ONNX model and metadata of a fitted Pipeline(PatchFeaturizer, detector)
    or Pipeline(PatchFeaturizer, ContrastiveEmbedder, detector).

    The featurizer's backbone maps images (n, 3, H, W) to patch features
    (n, d, h, w), which the embedder, if any, maps to (n, n_components, h, w);
    the detector head (for a GRADDetector, its traced scorer and the score and
    label) and the anomaly maps (n, H, W) follow.
    """
    sigma = _DEFAULT_SIGMA if sigma is None else sigma
    featurizer, embedder, detector = _pipeline_steps(pipeline)
    from crdistance.featurizer._images import IMAGENET_MEAN, IMAGENET_STD  # torch

    height, width = _image_size(featurizer, image_size)
    onnx_model, grid = _embedding_model(featurizer, embedder, detector, height, width)
    del onnx_model.graph.output[:]
    graph = GraphBuilder(onnx_model.graph)
    if is_grad(detector):
        crd = "crd"
        add_scores(graph, crd, detector, ("n", *grid))
    else:
        features = graph.node("Transpose", "patch_features", perm=[0, 2, 3, 1])
        crd = add_head(graph, features, detector, ("n", *grid))
    rows, columns = _map_operators(grid, (height, width), sigma)
    upsampled = graph.node("MatMul", graph.constant("map/rows", rows), crd)
    graph.node(
        "MatMul", upsampled, graph.constant("map/columns", columns.T),
        output="anomaly_map",
    )
    graph.output("anomaly_map", ["n", height, width])
    onnx_model.producer_name, onnx_model.producer_version = "crdistance", __version__
    steps = ["PatchFeaturizer", *([] if embedder is None else
                                  [type(embedder).__name__]),
             type(detector).__name__]
    head_metadata = grad_metadata if is_grad(detector) else detector_metadata
    metadata = head_metadata(detector) | {
        "model": f"Pipeline({', '.join(steps)})",
        "backbone": (featurizer.backbone if isinstance(featurizer.backbone, str)
                     else type(featurizer.backbone).__name__),
        "layers": ",".join(featurizer.layers_),
        "image_size": f"{height},{width}",
        "input_mean": ",".join(map(str, IMAGENET_MEAN)),
        "input_std": ",".join(map(str, IMAGENET_STD)),
        "sigma": repr(float(sigma)),
    }
    if embedder is not None:
        metadata |= {
            "embedder": type(embedder).__name__,
            "embedder_n_features_in": str(embedder.n_features_in_),
            "embedder_n_components": str(embedder.n_features_out_),
        }
    return onnx_model, metadata


def _embedding_model(featurizer, embedder, detector, height, width):
    """The featurizer's patch embedding, images to ``patch_features``, in ONNX,
    and its patch grid (h, w) for images of this size (read from a forward pass:
    a backbone with "same" padding leaves the exported output shape dynamic).
    With an embedder, ``patch_features`` are its unit-length embeddings; with a
    GRADDetector, its scorer follows and the output is its distances ``crd``."""
    import torch

    embedding = featurizer.embedding_
    device = next(embedding.parameters()).device
    # Exporting ends with module.train(module.training), which would put the
    # batch norms of the featurizer's own module (not in eval mode at its top)
    # in training mode: export a copy in eval mode.
    embedding = copy.deepcopy(embedding).eval()
    if embedder is not None:
        embedding = torch.nn.Sequential(
            embedding, embedder.embedding_module().to(device)
        ).eval()
    probe = torch.zeros((1, 3, height, width), device=device)
    with torch.inference_mode():
        grid = tuple(int(size) for size in embedding(probe).shape[2:])
    if is_grad(detector):
        check_grid(detector, grid)
        scoring = torch.nn.Sequential(embedding, grad_scorer(detector, None, device))
        return trace_scorer(scoring.eval(), probe, "images", "1."), grid
    return trace(embedding, probe, "images", "patch_features"), grid


def _pipeline_steps(pipeline):
    """The featurizer, the embedder (None without one) and the detector."""
    steps = [step for _, step in pipeline.steps]
    # A PatchFeaturizer exists only once its module (and torch) is imported.
    featurizer_module = sys.modules.get("crdistance.featurizer")
    if (
        len(steps) in (2, 3)
        and featurizer_module is not None
        and isinstance(steps[0], featurizer_module.PatchFeaturizer)
        and (len(steps) == 2
             or isinstance(steps[1], featurizer_module.ContrastiveEmbedder))
        and (isinstance(steps[-1], DETECTORS) or is_grad(steps[-1]))
    ):
        for step in steps:
            check_is_fitted(step)
        return steps[0], (steps[1] if len(steps) == 3 else None), steps[-1]
    detectors = ", ".join([cls.__name__ for cls in DETECTORS] + ["GRADDetector"])
    raise TypeError(
        "to_onnx exports a Pipeline of exactly (PatchFeaturizer, detector) or "
        f"(PatchFeaturizer, ContrastiveEmbedder, detector), the detector one of "
        f"{detectors}; got ({', '.join(type(step).__name__ for step in steps)})."
    )


def _image_size(featurizer, image_size):
    """The (height, width) of the images the featurizer's backbone receives."""
    fixed = featurizer.image_size_
    if fixed is None:
        if image_size is None:
            raise ValueError(
                "The featurizer keeps the input size (resize=None, crop_size=None); "
                "pass image_size=(height, width)."
            )
        return size_pair(image_size, "image_size")
    if image_size is not None and size_pair(image_size, "image_size") != fixed:
        raise ValueError(
            f"image_size={image_size!r} differs from the size {fixed} the "
            "featurizer's resize and crop_size give."
        )
    return fixed


def _map_operators(grid, image_size, sigma):
    """Matrices R (H, h) and C (W, w) with ``anomaly_maps(S) = R S C^T``.

    Bilinear resizing and the Gaussian blur act on rows and columns separately
    and linearly, so R is read off :func:`~crdistance.maps.anomaly_maps` of the
    unit grids of one column, and C of those of one row.
    """
    (h, w), (height, width) = grid, image_size
    unit_columns = np.eye(h, dtype=np.float32)[:, :, None]
    unit_rows = np.eye(w, dtype=np.float32)[:, None, :]
    rows = anomaly_maps(unit_columns, (height, 1), sigma=sigma)[:, :, 0]
    columns = anomaly_maps(unit_rows, (1, width), sigma=sigma)[:, 0, :]
    return rows.T, columns.T
