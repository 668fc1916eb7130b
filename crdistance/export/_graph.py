"""ONNX graphs of fitted detectors, built with onnx.helper (no torch for a head).

The detector head maps features (n, ..., d) to the distance of every row or
patch, the score of every sample (minus its largest distance) and its label
(+1 / -1 at the fitted threshold). The distance is ``CRD(y) = ||y M||^2`` with
the fitted residual operator M for a CRDetector, the local CRD of
:class:`~crdistance.LocalCRDetector` for one: per feature group, the smallest
weighted cell CRD over the nearest cells, every cell's CRD coming from one
matrix product with the cells' operators side by side, and the distance to the
nearest centre for a :class:`~crdistance.kmeans.KMeansDetector`. A pipeline
graph puts the featurizer's backbone (and a ContrastiveEmbedder's embedding),
exported by ``torch.onnx.export``, in front of the same head, and appends the
anomaly maps as two matrix products.
"""

from collections import namedtuple

import numpy as np
from sklearn.utils.validation import check_is_fitted

from crdistance._array_api import to_numpy
from crdistance._detector import CRDetector
from crdistance._local import LocalCRDetector
from crdistance._version import __version__
from crdistance.kmeans import KMeansDetector

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

__all__ = [
    "DETECTORS", "OPSET", "STANDARDIZATION", "GraphBuilder", "add_head",
    "add_scores", "base_metadata", "detector_metadata", "head_model", "save",
    "store_float16",
]

OPSET = 17
"""ONNX operator set of the exported graphs (onnxruntime 1.13 or later)."""

STANDARDIZATION = "standardization/"
"""Prefix of the names of a GRADDetector's ``mean_`` and ``scale_`` in a graph."""

_FLOAT32_PREFIXES = ("cell_centers/", STANDARDIZATION)
"""Initializers :func:`store_float16` keeps in float32, by name."""

# Axes before the feature axis of the detector head's input, by its ndim.
_LEADING_AXES = {2: ("n",), 3: ("n", "patches"), 4: ("n", "height", "width")}

class GraphBuilder:
    """Appends nodes and initializers to an ONNX graph, naming their outputs."""

    def __init__(self, graph):
        self.graph = graph

    def constant(self, name, value):
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op_type, *inputs, output=None, **attributes):
        (output,) = self.outputs(op_type, *inputs, names=[output], **attributes)
        return output

    def outputs(self, op_type, *inputs, names, **attributes):
        """Append a node; the names of its outputs, those None in `names` named
        after the node, itself named after its first output."""
        node_name = names[0] or f"crd/{op_type}_{len(self.graph.node)}"
        names = [node_name] + [
            name or f"{node_name}/{i}" for i, name in enumerate(names[1:], 1)
        ]
        self.graph.node.append(
            helper.make_node(op_type, list(inputs), names, name=node_name, **attributes)
        )
        return names

    def output(self, name, shape, elem_type=TensorProto.FLOAT):
        self.graph.output.append(helper.make_tensor_value_info(name, elem_type, shape))


def add_head(graph, features, detector, leading_axes):
    """Outputs ``crd`` (features.shape[:-1]), ``score`` and ``label`` (n,)."""
    d = detector.n_features_in_
    rows_shape = graph.constant("crd/rows_shape", np.array([-1, d], dtype=np.int64))
    rows = graph.node("Reshape", features, rows_shape)
    row_distances = _head(detector).distances(graph, rows, detector)
    patch_shape = graph.node("Shape", features, end=-1)
    crd = graph.node("Reshape", row_distances, patch_shape, output="crd")
    add_scores(graph, crd, detector, leading_axes)
    return crd


def add_scores(graph, crd, detector, crd_axes):
    """Outputs ``crd`` (of axes `crd_axes`), ``score`` and ``label`` (n,) from
    the tensor ``crd`` of distances, the largest of each sample scoring it."""
    per_sample = graph.node("Flatten", crd, axis=1)
    worst = graph.node("ReduceMax", per_sample, axes=[1], keepdims=0)
    score = graph.node("Neg", worst, output="score")
    offset = graph.constant("offset", np.float32(detector.offset_))
    inlier = graph.node("GreaterOrEqual", score, offset)
    inlier_label = graph.constant("crd/inlier_label", np.int64(1))
    outlier_label = graph.constant("crd/outlier_label", np.int64(-1))
    graph.node("Where", inlier, inlier_label, outlier_label, output="label")
    graph.output("crd", list(crd_axes))
    graph.output("score", ["n"])
    graph.output("label", ["n"], TensorProto.INT64)


def _cell_crd(graph, features, operators, name):
    """CRD ``||y S_k||^2`` of every row y (n_rows, d) in every cell k, (n_rows,
    n_cells), from one product with the operators S_k side by side: the
    initializer `name`, (d, n_cells * d)."""
    n_cells, d = operators.shape[:2]
    stacked = operators.transpose(1, 0, 2).reshape(d, n_cells * d)
    residuals = graph.node(
        "MatMul", features, graph.constant(name, stacked.astype(np.float32))
    )
    cells_shape = graph.constant(
        f"{name}/cells_shape", np.array([0, n_cells, d], dtype=np.int64)
    )
    cells = graph.node("Reshape", residuals, cells_shape)
    return graph.node("ReduceSumSquare", cells, axes=[2], keepdims=0)


def _crd_distances(graph, rows, detector):
    """``||y M||^2`` of every row, (n_rows, 1): the CRD of a single cell."""
    operator = to_numpy(detector.residual_operator_)[None]
    return _cell_crd(graph, rows, operator, "residual_operator")


def _local_distances(graph, rows, detector):
    """Local CRD of every row, (n_rows,): the geometric mean over the feature
    groups of each group's smallest weighted cell CRD over its nearest cells."""
    groups = detector.group_slices_
    if len(groups) == 1:
        return _group_distances(graph, rows, detector, 0)
    exponent = graph.constant("group/exponent", np.float32(1 / len(groups)))
    distances = None
    for group, columns in enumerate(groups):
        bounds = [
            graph.constant(f"group/{group}/{name}", np.array([value], dtype=np.int64))
            for name, value in (("start", columns.start), ("stop", columns.stop),
                                ("axis", 1))
        ]
        features = graph.node("Slice", rows, *bounds)
        group_distances = graph.node(
            "Pow", _group_distances(graph, features, detector, group), exponent
        )
        distances = (group_distances if distances is None
                     else graph.node("Mul", distances, group_distances))
    return distances


def _group_distances(graph, features, detector, group):
    """Smallest weighted cell CRD of each row over its nearest cells, (n_rows,).

    TopK of the distances to the centres picks the ``n_nearest_cells`` cells;
    of equally near centres it keeps the lowest cell index.
    """
    operators = detector.scoring_operators_[group]
    crd = _cell_crd(graph, features, operators, f"scoring_operators/{group}")
    if detector.n_nearest_cells < len(operators):
        centers = detector.cell_centers_[group]
        center_norms = np.sum(centers**2, axis=1)
        centers = centers.astype(np.float32)
        # Squared distances up to the row's own squared norm, as in Python.
        center_distances = graph.node(
            "Gemm", features, graph.constant(f"cell_centers/{group}", centers),
            graph.constant(f"cell_centers/{group}/norms",
                           center_norms.astype(np.float32)),
            alpha=-2.0, transB=1,
        )
        k = graph.constant(
            f"cell_centers/{group}/n_nearest",
            np.array([detector.n_nearest_cells], dtype=np.int64),
        )
        _, nearest = graph.outputs(
            "TopK", center_distances, k, names=[None, None], largest=0
        )
        crd = graph.node("GatherElements", crd, nearest, axis=1)
    return graph.node("ReduceMin", crd, axes=[1], keepdims=0)


def _kmeans_distances(graph, rows, detector):
    """Distance of every row to its nearest centre, (n_rows,): the norm of the
    differences, as in Python (no expansion of the square, whose cancellation
    would blur the small distances), over an (n_rows, n_clusters, d)
    intermediate."""
    centers = to_numpy(detector.cluster_centers_).astype(np.float32)
    axes = graph.constant("cluster_centers/row_axis", np.array([1], dtype=np.int64))
    differences = graph.node(
        "Sub", graph.node("Unsqueeze", rows, axes),
        graph.constant("cluster_centers", centers),
    )
    squared = graph.node("ReduceSumSquare", differences, axes=[2], keepdims=0)
    nearest = graph.node("ReduceMin", squared, axes=[1], keepdims=0)
    return graph.node("Sqrt", nearest)


def _crd_metadata(detector):
    return {
        "lam": repr(float(detector.lam_)),
        "patches_per_sample": str(detector.patches_per_sample_),
        "solver": detector.solver_,
    }


def _local_metadata(detector):
    return {
        "lam": repr(float(detector.lam)),
        "lam_scale": detector.lam_scale,
        "n_cells": str(detector.n_cells),
        "n_cells_per_group": ",".join(map(str, detector.n_cells_)),
        "n_nearest_cells": str(detector.n_nearest_cells),
        "feature_groups": ",".join(map(str, detector.feature_groups_)),
    }


def _kmeans_metadata(detector):
    return {
        "n_clusters": str(detector.n_clusters),
        "n_clusters_fitted": str(detector.n_clusters_),
    }


_Head = namedtuple("_Head", ["distances", "metadata"])

_HEADS = {
    CRDetector: _Head(_crd_distances, _crd_metadata),
    LocalCRDetector: _Head(_local_distances, _local_metadata),
    KMeansDetector: _Head(_kmeans_distances, _kmeans_metadata),
}
"""The row distances and the metadata of each exportable detector class."""

DETECTORS = tuple(_HEADS)
"""The detector classes :func:`head_model` exports."""


def _head(detector):
    return next(head for cls, head in _HEADS.items() if isinstance(detector, cls))


def base_metadata(detector):
    """The metadata every exported detector has."""
    return {
        "crdistance_version": __version__,
        "model": type(detector).__name__,
        "n_features": str(detector.n_features_in_),
        "threshold": repr(float(detector.threshold_)),
    }


def detector_metadata(detector):
    return base_metadata(detector) | _head(detector).metadata(detector)


def head_model(detector, input_ndim):
    """ONNX model and metadata of a fitted detector: features to distances."""
    check_is_fitted(detector)
    if input_ndim is None:
        # A LocalCRDetector or KMeansDetector does not record whether it was
        # fitted on patch sets.
        fitted_on_rows = getattr(detector, "patches_per_sample_", None) == 1
        input_ndim = 2 if fitted_on_rows else 4
    if input_ndim not in _LEADING_AXES:
        raise ValueError(f"input_ndim must be 2, 3, 4 or None, got {input_ndim!r}.")
    leading_axes = _LEADING_AXES[input_ndim]
    features = helper.make_tensor_value_info(
        "features", TensorProto.FLOAT, [*leading_axes, detector.n_features_in_]
    )
    graph = helper.make_graph([], "crdistance_head", [features], [])
    add_head(GraphBuilder(graph), "features", detector, leading_axes)
    return _make_model(graph), detector_metadata(detector)


def _make_model(graph):
    opset = helper.make_opsetid("", OPSET)
    return helper.make_model(
        graph,
        opset_imports=[opset],
        ir_version=helper.find_min_ir_version_for([opset]),
        producer_name="crdistance",
        producer_version=__version__,
    )


def store_float16(graph):
    """Store float32 weight arrays in float16, each cast back by a leading node.

    Scalars, such as the threshold, stay float32, and so do the cell centres of
    a LocalCRDetector (a small part of its weights): rounding them would move
    the choice of the nearest cells, not only the distances; and so do a
    GRADDetector's ``mean_`` and ``scale_`` (2 d values): rounding a mean large
    against its scale would shift every standardised feature.
    """
    casts = []
    for initializer in graph.initializer:
        if (
            initializer.data_type != TensorProto.FLOAT
            or not initializer.dims
            or initializer.name.startswith(_FLOAT32_PREFIXES)
        ):
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
