"""to_onnx: a fitted detector, or a featurizer pipeline, as one ONNX graph.

onnx (and torch, for a pipeline) is imported when a model is written, so that
``crdistance.export`` imports where only onnxruntime is installed.
"""

from sklearn.pipeline import Pipeline

__all__ = ["to_onnx"]


def to_onnx(
    model, path, *, float16=False, input_ndim=None, image_size=None, sigma=None
):
    """Write a fitted detector, or a fitted featurizer-detector pipeline, to ONNX.

    Parameters
    ----------
    model : CRDetector, LocalCRDetector, KMeansDetector, GRADDetector or Pipeline
        A fitted :class:`~crdistance.CRDetector`,
        :class:`~crdistance.LocalCRDetector`,
        :class:`~crdistance.kmeans.KMeansDetector` or
        :class:`~crdistance.grad.GRADDetector`, or a fitted
        ``Pipeline(PatchFeaturizer, detector)`` or
        ``Pipeline(PatchFeaturizer, ContrastiveEmbedder, detector)`` with one of
        them as the detector.
    path : str or path-like
        File written.
    float16 : bool, default=False
        Store the weight arrays in float16, halving the file; the graph casts
        them back to float32 and computes in float32. The threshold, the cell
        centres of a LocalCRDetector and the ``mean_`` and ``scale_`` of a
        GRADDetector stay float32 (a KMeansDetector's centres are weights,
        stored in float16).
    input_ndim : {2, 3, 4} or None, default=None
        Detectors only. Input ``features`` of shape (n, d), a patch set
        (n, patches, d) or a patch map (n, height, width, d), every axis but d
        dynamic. None takes 2 for a CRDetector fitted on rows, 4 for one fitted
        on patch sets and for a LocalCRDetector or KMeansDetector (which do not
        record what they were fitted on). A GRADDetector's input has its fitted
        patch grid ``patch_shape_`` (h, w), only n dynamic: 4 always holds it,
        3 when w = 1 and 2 when h = w = 1; None takes the lowest that does.
    image_size : tuple (height, width) or None, default=None
        Pipeline only. Size of the input images; needed when the featurizer
        keeps the input size (``resize=None`` and ``crop_size=None``), and must
        otherwise match the size its preprocessing gives.
    sigma : float or None, default=None
        Pipeline only. Standard deviation of the anomaly maps' blur, as in
        :func:`crdistance.maps.anomaly_maps`; None takes its default, 4.

    Returns
    -------
    onnx_model : onnx.ModelProto
        The model written to `path`.

    See Also
    --------
    load_onnx : Read an exported model back into an :class:`OnnxDetector`.

    Notes
    -----
    The CRDetector head computes ``CRD(y) = ||y M||^2`` for every row or patch
    with the fitted residual operator M (initializer ``residual_operator``)
    and has three outputs:

    - ``crd``: float32 CRD of every row or patch, shape ``features.shape[:-1]``;
    - ``score``: float32 (n,), minus the largest CRD of each sample, as
      ``CRDetector.score_samples``;
    - ``label``: int64 (n,), +1 where ``score >= offset_``, -1 elsewhere, as
      ``CRDetector.predict``.

    Its file holds ``d^2`` weights (4 bytes each, 2 with `float16`) and about a
    kilobyte of graph and metadata, whatever the training set size.

    The LocalCRDetector head has the same outputs, ``crd`` being the local
    distance of ``LocalCRDetector.score_patches``. For each feature group g of
    size d_g (a ``Slice`` of the features) it computes the weighted CRD
    ``||y_g S_k||^2`` in all ``n_cells`` cells at once, by one product with the
    operators ``scoring_operators_[g]`` side by side (initializer
    ``scoring_operators/<g>``, d_g x n_cells d_g), takes with ``TopK`` the
    ``n_nearest_cells`` cells whose centres (``cell_centers/<g>``) are nearest
    and keeps the smallest of their CRDs (every cell's when ``n_nearest_cells
    >= n_cells``); the groups' distances are combined by their geometric mean.
    Of equally near centres, ``TopK`` keeps the cell of lowest index where
    NumPy's sort in Python may keep another: an exact tie between two centres
    (or one within float32 rounding) can give a row another cell's CRD. The file
    holds ``n_cells * sum(d_g^2)`` operator weights and, when ``n_nearest_cells
    < n_cells``, ``n_cells * (d + n_groups)`` float32 centre weights. Scoring
    every cell costs ``n_cells / n_nearest_cells`` times the multiply-adds of
    Python, which scores only the nearest cells, and an intermediate of
    ``n_cells * max(d_g)`` float32 per row: about 32 MB per 784-patch image with
    64 cells and d_g = 160, so score large batches in parts.

    The KMeansDetector head has the same outputs, ``crd`` being the distance to
    the nearest centre of ``KMeansDetector.score_patches``: the square root of
    the smallest ``ReduceSumSquare`` of the differences between a row and the
    centres (initializer ``cluster_centers``, ``n_clusters_ x d``), as Python
    computes it. Its file holds ``n_clusters_ * d`` weights; the differences
    are an intermediate of ``n_clusters_ * d`` float32 per row.

    The GRADDetector graph has the same outputs, ``crd`` being the distance
    of ``GRADDetector.score_patches``. Its standardisation (initializers
    ``standardization/mean`` and ``standardization/scale``), its network (the
    two grids, sampled by ``GridSample``, the coordinate MLPs and the fusion
    convolutions, their batch norms folded in), the feature refinement and the
    norm of the refined error per patch are the detector's public
    ``network_module()``, exported by ``torch.onnx.export`` (TorchScript
    exporter, torch needed to write), followed by the score and the label.
    The refinement's agreement test (a patch's mean squared error below
    ``refine_threshold``) is a step: a patch within float32 rounding of it can
    be refined otherwise than in Python, and with `float16` within the
    weights' rounding of it. The file holds the network's weights, most of
    them the global grid's ``G^2 d h w`` values.

    A pipeline graph takes ``images``, float32 (n, 3, H, W) with a dynamic n,
    preprocessed as ``PatchFeaturizer`` does: resized (and cropped) to
    ``image_size``, scaled to [0, 1], minus the ImageNet mean and divided by its
    standard deviation (``input_mean`` and ``input_std`` in the metadata). The
    backbone is exported by ``torch.onnx.export`` (TorchScript exporter),
    followed, in a pipeline with a
    :class:`~crdistance.featurizer.ContrastiveEmbedder`, by the embedder's
    ``embedding_module()`` (standardisation, two 1x1 convolutions, scaling to
    unit length) in the same export, and, in a pipeline ending in a
    GRADDetector, by its ``network_module()`` as above (the featurizer's patch
    grid must be the detector's ``patch_shape_``); the detector head follows as
    above with ``crd`` of shape (n, h, w), and a fourth output ``anomaly_map``
    (n, H, W) gives the maps of :func:`crdistance.maps.anomaly_maps`.

    The model's ``metadata_props`` hold ``crdistance_version``, ``model``,
    ``n_features``, ``threshold`` (``threshold_``) and ``weights_dtype``; for a
    CRDetector ``lam`` (the penalty used, ``lam_``), ``patches_per_sample`` and
    ``solver``; for a LocalCRDetector ``lam``, ``lam_scale``, ``n_cells``,
    ``n_cells_per_group`` (``n_cells_``),
    ``n_nearest_cells`` and ``feature_groups`` (its parameters and
    ``feature_groups_``); for a KMeansDetector ``n_clusters`` (the parameter)
    and ``n_clusters_fitted`` (``n_clusters_``); for a GRADDetector
    ``patch_shape`` (``patch_shape_``), ``local_grid_size``,
    ``global_grid_size``, ``hidden_channels``, ``n_blocks``, ``mse_weight``,
    ``cosine_weight`` and ``refine_threshold`` (its parameters); for pipelines
    also ``backbone``, ``layers``, ``image_size``, ``input_mean``, ``input_std`` and
    ``sigma``, and with an embedder ``embedder`` (its class),
    ``embedder_n_features_in`` (the featurizer's d) and
    ``embedder_n_components`` (the detector's d). The ONNX
    operator set is 17 (onnxruntime 1.13 or later).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from crdistance import CRDetector
    >>> from crdistance.export import load_onnx, to_onnx
    >>> rng = np.random.default_rng(0)
    >>> detector = CRDetector(lam=1.0).fit(rng.normal(size=(200, 16)))
    >>> X = rng.normal(size=(3, 16)).astype(np.float32)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     onnx_model = to_onnx(detector, Path(folder) / "crd.onnx")
    ...     scores = load_onnx(Path(folder) / "crd.onnx").score_samples(X)
    >>> [output.name for output in onnx_model.graph.output]
    ['crd', 'score', 'label']
    >>> bool(np.allclose(scores, detector.score_samples(X), rtol=1e-4))
    True

    A LocalCRDetector exports in the same way:

    >>> from crdistance import LocalCRDetector
    >>> local = LocalCRDetector(n_cells=4, n_nearest_cells=2, random_state=0)
    >>> local = local.fit(rng.normal(size=(200, 16)))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = to_onnx(local, Path(folder) / "local.onnx", input_ndim=2)
    ...     scores = load_onnx(Path(folder) / "local.onnx").score_samples(X)
    >>> bool(np.allclose(scores, local.score_samples(X), rtol=1e-4))
    True
    """
    # onnx (and torch for a pipeline or GRAD) are needed to write, not to read.
    from crdistance.export import _grad, _graph, _pipeline

    if isinstance(model, _graph.DETECTORS):
        _reject_options(image_size=image_size, sigma=sigma)
        onnx_model, metadata = _graph.head_model(model, input_ndim)
    elif _grad.is_grad(model):
        _reject_options(image_size=image_size, sigma=sigma)
        onnx_model, metadata = _grad.grad_head_model(model, input_ndim)
    elif isinstance(model, Pipeline):
        _reject_options(input_ndim=input_ndim)
        onnx_model, metadata = _pipeline.pipeline_model(model, image_size, sigma)
    else:
        raise TypeError(
            "to_onnx exports a fitted CRDetector, LocalCRDetector, KMeansDetector "
            "or GRADDetector, or a Pipeline(PatchFeaturizer, [ContrastiveEmbedder,] "
            f"detector) ending in one, got {type(model).__name__}."
        )
    if float16:
        _graph.store_float16(onnx_model.graph)
    metadata["weights_dtype"] = "float16" if float16 else "float32"
    return _graph.save(onnx_model, metadata, path)


def _reject_options(**options):
    for name, value in options.items():
        if value is not None:
            raise ValueError(f"{name} does not apply to this kind of model.")
