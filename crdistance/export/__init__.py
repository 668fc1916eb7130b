"""ONNX export of fitted detectors, and a checking reader of the exported files.

The server fits; an edge device needs only the d x d residual operator and one
matrix product (for local CRD, the cells' centres and operators; for k-means,
the centres; for GRAD, its network). :func:`to_onnx` writes a fitted
:class:`~crdistance.CRDetector`, :class:`~crdistance.LocalCRDetector`,
:class:`~crdistance.kmeans.KMeansDetector` or
:class:`~crdistance.grad.GRADDetector`, or a whole
``Pipeline(PatchFeaturizer, detector)`` or
``Pipeline(PatchFeaturizer, ContrastiveEmbedder, detector)``, as one ONNX graph
that any ONNX runtime runs without Python; :func:`load_onnx` reads such a file
back into an :class:`OnnxDetector` that checks every input against the graph.

Writing needs the onnx package (and torch for a pipeline or GRAD), reading
only onnxruntime: each is imported when needed. Behind this entrance:
``_write`` (:func:`to_onnx`), ``_pipeline`` (the pipeline graph, needs onnx and
torch), ``_graph`` (the detector heads, needs onnx), ``_grad`` (GRAD's traced
scorer, needs onnx and torch), ``_trace`` (``torch.onnx.export`` with the
graphs' settings) and ``_runtime`` (:func:`load_onnx`, :class:`OnnxDetector`,
needs onnxruntime).
"""

from crdistance.export._runtime import OnnxDetector, load_onnx
from crdistance.export._write import to_onnx

__all__ = ["OnnxDetector", "load_onnx", "to_onnx"]
