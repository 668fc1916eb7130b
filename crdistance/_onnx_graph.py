"""ONNX graphs of fitted detectors, built with onnx.helper (no torch for a head).

The detector head maps features (n, ..., d) to the CRD of every row or patch,
``CRD(y) = ||y M||^2`` with the fitted residual operator M, the score of every
sample (minus its largest CRD) and its label (+1 / -1 at the fitted threshold).
A pipeline graph puts the featurizer's backbone, exported by
``torch.onnx.export``, in front of the same head, and appends the anomaly maps
as two matrix products.
"""

import copy
import io
import sys
import warnings

import numpy as np
from sklearn.utils.validation import check_is_fitted

from crdistance import __version__
from crdistance._array_api import to_numpy
from crdistance._detector import CRDetector
from crdistance.maps import anomaly_maps

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError as exc:
    if exc.name != "onnx":
        raise
    raise ImportError(
        "Writing ONNX models needs onnx; install it with pip install "
        "'crdistance[onnx]'."
    ) from exc

__all__ = ["OPSET", "head_model", "pipeline_model", "save", "store_float16"]

OPSET = 17
"""ONNX operator set of the exported graphs (onnxruntime 1.13 or later)."""

# Axes before the feature axis of the detector head's input, by its ndim.
_LEADING_AXES = {2: ("n",), 3: ("n", "patches"), 4: ("n", "height", "width")}

_DEFAULT_SIGMA = 4.0
"""Blur of the exported anomaly maps by default, that of ``anomaly_maps``."""


class _GraphBuilder:
    """Appends nodes and initializers to an ONNX graph, naming their outputs."""

    def __init__(self, graph):
        self.graph = graph

    def constant(self, name, value):
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op_type, *inputs, output=None, **attributes):
        output = output or f"crd/{op_type}_{len(self.graph.node)}"
        self.graph.node.append(
            helper.make_node(op_type, list(inputs), [output], name=output, **attributes)
        )
        return output

    def output(self, name, shape, elem_type=TensorProto.FLOAT):
        self.graph.output.append(helper.make_tensor_value_info(name, elem_type, shape))


def _add_crd_head(graph, features, detector, leading_axes):
    """Outputs ``crd`` (features.shape[:-1]), ``score`` and ``label`` (n,)."""
    d = detector.n_features_in_
    rows_shape = graph.constant("crd/rows_shape", np.array([-1, d], dtype=np.int64))
    rows = graph.node("Reshape", features, rows_shape)
    operator = graph.constant(
        "residual_operator", to_numpy(detector.residual_operator_).astype(np.float32)
    )
    residuals = graph.node("MatMul", rows, operator)
    row_crd = graph.node("ReduceSumSquare", residuals, axes=[1], keepdims=0)
    patch_shape = graph.node("Shape", features, end=-1)
    crd = graph.node("Reshape", row_crd, patch_shape, output="crd")
    per_sample = graph.node("Flatten", crd, axis=1)
    worst = graph.node("ReduceMax", per_sample, axes=[1], keepdims=0)
    score = graph.node("Neg", worst, output="score")
    offset = graph.constant("offset", np.float32(detector.offset_))
    inlier = graph.node("GreaterOrEqual", score, offset)
    inlier_label = graph.constant("crd/inlier_label", np.int64(1))
    outlier_label = graph.constant("crd/outlier_label", np.int64(-1))
    graph.node("Where", inlier, inlier_label, outlier_label, output="label")
    graph.output("crd", list(leading_axes))
    graph.output("score", ["n"])
    graph.output("label", ["n"], TensorProto.INT64)
    return crd


def _detector_metadata(detector):
    return {
        "crdistance_version": __version__,
        "model": "CRDetector",
        "lam": repr(float(detector.lam_)),
        "n_features": str(detector.n_features_in_),
        "threshold": repr(float(detector.threshold_)),
        "patches_per_sample": str(detector.patches_per_sample_),
        "solver": detector.solver_,
    }


def head_model(detector, input_ndim):
    """ONNX model and metadata of a fitted CRDetector: features to CRD."""
    check_is_fitted(detector)
    if input_ndim is None:
        input_ndim = 2 if detector.patches_per_sample_ == 1 else 4
    if input_ndim not in _LEADING_AXES:
        raise ValueError(f"input_ndim must be 2, 3, 4 or None, got {input_ndim!r}.")
    leading_axes = _LEADING_AXES[input_ndim]
    features = helper.make_tensor_value_info(
        "features", TensorProto.FLOAT, [*leading_axes, detector.n_features_in_]
    )
    graph = helper.make_graph([], "crdistance_head", [features], [])
    _add_crd_head(_GraphBuilder(graph), "features", detector, leading_axes)
    return _make_model(graph), _detector_metadata(detector)


def _make_model(graph):
    opset = helper.make_opsetid("", OPSET)
    return helper.make_model(
        graph,
        opset_imports=[opset],
        ir_version=helper.find_min_ir_version_for([opset]),
        producer_name="crdistance",
        producer_version=__version__,
    )


def pipeline_model(pipeline, image_size, sigma):
    """ONNX model and metadata of a fitted Pipeline(PatchFeaturizer, CRDetector).

    The featurizer's backbone maps images (n, 3, H, W) to patch features
    (n, d, h, w); the CRD head and the anomaly maps (n, H, W) follow.
    """
    sigma = _DEFAULT_SIGMA if sigma is None else sigma
    featurizer, detector = _pipeline_steps(pipeline)
    from crdistance._images import IMAGENET_MEAN, IMAGENET_STD

    height, width = _image_size(featurizer, image_size)
    onnx_model = _embedding_model(featurizer, height, width)
    output_dims = onnx_model.graph.output[0].type.tensor_type.shape.dim
    grid = tuple(dim.dim_value for dim in output_dims[2:])
    del onnx_model.graph.output[:]
    graph = _GraphBuilder(onnx_model.graph)
    features = graph.node("Transpose", "patch_features", perm=[0, 2, 3, 1])
    crd = _add_crd_head(graph, features, detector, ("n", *grid))
    rows, columns = _map_operators(grid, (height, width), sigma)
    upsampled = graph.node("MatMul", graph.constant("map/rows", rows), crd)
    graph.node(
        "MatMul", upsampled, graph.constant("map/columns", columns.T),
        output="anomaly_map",
    )
    graph.output("anomaly_map", ["n", height, width])
    onnx_model.producer_name, onnx_model.producer_version = "crdistance", __version__
    metadata = _detector_metadata(detector) | {
        "model": "Pipeline(PatchFeaturizer, CRDetector)",
        "backbone": featurizer.backbone,
        "layers": ",".join(featurizer.layers_),
        "image_size": f"{height},{width}",
        "input_mean": ",".join(map(str, IMAGENET_MEAN)),
        "input_std": ",".join(map(str, IMAGENET_STD)),
        "sigma": repr(float(sigma)),
    }
    return onnx_model, metadata


def _embedding_model(featurizer, height, width):
    """The featurizer's patch embedding, images to ``patch_features``, in ONNX."""
    import torch

    embedding, device = featurizer._embedding()
    # Exporting ends with module.train(module.training), which would put the
    # batch norms of the featurizer's own module (not in eval mode at its top)
    # in training mode: export a copy in eval mode.
    embedding = copy.deepcopy(embedding).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter needs no onnxscript; it warns it is deprecated.
        warnings.simplefilter("ignore", DeprecationWarning)
        # Shape comparisons in the embedding are fixed by the image size.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            embedding,
            (torch.zeros((1, 3, height, width), device=device),),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=["images"],
            output_names=["patch_features"],
            dynamic_axes={"images": {0: "n"}, "patch_features": {0: "n"}},
        )
    return onnx.load_model_from_string(buffer.getvalue())


def _pipeline_steps(pipeline):
    steps = [step for _, step in pipeline.steps]
    # A PatchFeaturizer exists only once its module (and torch) is imported.
    featurizer_module = sys.modules.get("crdistance.featurizer")
    if (
        len(steps) == 2
        and featurizer_module is not None
        and isinstance(steps[0], featurizer_module.PatchFeaturizer)
        and isinstance(steps[1], CRDetector)
    ):
        for step in steps:
            check_is_fitted(step)
        return steps
    raise TypeError(
        "to_onnx exports a Pipeline of exactly (PatchFeaturizer, CRDetector), got "
        f"({', '.join(type(step).__name__ for step in steps)})."
    )


def _image_size(featurizer, image_size):
    """The (height, width) of the images the featurizer's backbone receives."""
    from crdistance.featurizer import _size_pair

    fixed = featurizer.resize if featurizer.crop_size is None else featurizer.crop_size
    if fixed is None:
        if image_size is None:
            raise ValueError(
                "The featurizer keeps the input size (resize=None, crop_size=None); "
                "pass image_size=(height, width)."
            )
        return _size_pair(image_size, "image_size")
    fixed = _size_pair(fixed, "resize")
    if image_size is not None and _size_pair(image_size, "image_size") != fixed:
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


def store_float16(graph):
    """Store float32 weight arrays in float16, each cast back by a leading node.

    Scalars, such as the threshold, stay float32.
    """
    casts = []
    for initializer in graph.initializer:
        if initializer.data_type != TensorProto.FLOAT or not initializer.dims:
            continue
        values = numpy_helper.to_array(initializer)
        if np.any(np.abs(values) > np.finfo(np.float16).max):
            raise ValueError(
                f"Weights {initializer.name!r} exceed the float16 range; export "
                "with float16=False."
            )
        name = initializer.name
        initializer.CopyFrom(numpy_helper.from_array(values.astype(np.float16), name))
        initializer.name = f"{name}/float16"
        casts.append(
            helper.make_node("Cast", [initializer.name], [name], to=TensorProto.FLOAT)
        )
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)




def save(onnx_model, metadata, path):
    """Set the metadata, check the model and write it to `path`."""
    helper.set_model_props(onnx_model, metadata)
    onnx.checker.check_model(onnx_model)
    onnx.save_model(onnx_model, path)
    return onnx_model
