"""ONNX export of fitted detectors, and a checking reader of the exported files.

The server fits; an edge device needs only the d x d residual operator and one
matrix product (for local CRD, the cells' centres and operators). :func:`to_onnx`
writes a fitted :class:`~crdistance.CRDetector` or
:class:`~crdistance.LocalCRDetector`, or a whole ``Pipeline(PatchFeaturizer,
detector)``, as one ONNX graph that any ONNX runtime runs without Python;
:func:`load_onnx` reads such a file back into an :class:`OnnxDetector` that
checks every input against the graph.

Writing needs the onnx package (and torch for a pipeline), reading only
onnxruntime: each is imported when needed.
"""

from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline

__all__ = ["OnnxDetector", "load_onnx", "to_onnx"]


def to_onnx(
    model, path, *, float16=False, input_ndim=None, image_size=None, sigma=None
):
    """Write a fitted detector, or a fitted featurizer-detector pipeline, to ONNX.

    Parameters
    ----------
    model : CRDetector, LocalCRDetector or Pipeline
        A fitted :class:`~crdistance.CRDetector` or
        :class:`~crdistance.LocalCRDetector`, or a fitted
        ``Pipeline(PatchFeaturizer, CRDetector)`` or
        ``Pipeline(PatchFeaturizer, LocalCRDetector)``.
    path : str or path-like
        File written.
    float16 : bool, default=False
        Store the weight arrays in float16, halving the file; the graph casts
        them back to float32 and computes in float32. The threshold, and the
        cell centres of a LocalCRDetector, stay float32.
    input_ndim : {2, 3, 4} or None, default=None
        Detectors only. Input ``features`` of shape (n, d), a patch set
        (n, patches, d) or a patch map (n, height, width, d), every axis but d
        dynamic. None takes 2 for a CRDetector fitted on rows, 4 for one fitted
        on patch sets and for a LocalCRDetector (which does not record what it
        was fitted on).
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

    A pipeline graph takes ``images``, float32 (n, 3, H, W) with a dynamic n,
    preprocessed as ``PatchFeaturizer`` does: resized (and cropped) to
    ``image_size``, scaled to [0, 1], minus the ImageNet mean and divided by its
    standard deviation (``input_mean`` and ``input_std`` in the metadata). The
    backbone is exported by ``torch.onnx.export`` (TorchScript exporter), the
    detector head follows as above with ``crd`` of shape (n, h, w), and a
    fourth output ``anomaly_map`` (n, H, W) gives the maps of
    :func:`crdistance.maps.anomaly_maps`.

    The model's ``metadata_props`` hold ``crdistance_version``, ``model``,
    ``n_features``, ``threshold`` (``threshold_``) and ``weights_dtype``; for a
    CRDetector ``lam`` (the penalty used, ``lam_``), ``patches_per_sample`` and
    ``solver``; for a LocalCRDetector ``lam``, ``lam_scale``, ``n_cells``,
    ``n_nearest_cells`` and ``feature_groups`` (its parameters and
    ``feature_groups_``); for pipelines also ``backbone``, ``layers``,
    ``image_size``, ``input_mean``, ``input_std`` and ``sigma``. The ONNX
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
    from crdistance import _onnx_graph  # onnx: needed to write, not to read

    if isinstance(model, _onnx_graph.DETECTORS):
        _reject_options(image_size=image_size, sigma=sigma)
        onnx_model, metadata = _onnx_graph.head_model(model, input_ndim)
    elif isinstance(model, Pipeline):
        _reject_options(input_ndim=input_ndim)
        onnx_model, metadata = _onnx_graph.pipeline_model(model, image_size, sigma)
    else:
        raise TypeError(
            "to_onnx exports a fitted CRDetector, LocalCRDetector or "
            "Pipeline(PatchFeaturizer, CRDetector or LocalCRDetector), got "
            f"{type(model).__name__}."
        )
    if float16:
        _onnx_graph.store_float16(onnx_model.graph)
    metadata["weights_dtype"] = "float16" if float16 else "float32"
    return _onnx_graph.save(onnx_model, metadata, path)


def _reject_options(**options):
    for name, value in options.items():
        if value is not None:
            raise ValueError(f"{name} does not apply to this kind of model.")


def load_onnx(path, *, providers=("CPUExecutionProvider",)):
    """Read a model written by :func:`to_onnx` for scoring with onnxruntime.

    Parameters
    ----------
    path : str or path-like
        An ONNX file written by :func:`to_onnx`.
    providers : sequence of str, default=("CPUExecutionProvider",)
        onnxruntime execution providers, in order of preference.

    Returns
    -------
    detector : OnnxDetector
        Scores inputs after checking them against the model's input.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from crdistance import CRDetector
    >>> from crdistance.export import load_onnx, to_onnx
    >>> rng = np.random.default_rng(0)
    >>> patches = rng.normal(size=(20, 4, 4, 8))  # 20 images, 4 x 4 patches
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = to_onnx(CRDetector(lam=1.0).fit(patches), Path(folder) / "crd.onnx")
    ...     detector = load_onnx(Path(folder) / "crd.onnx")
    >>> detector.input_shape
    (None, None, None, 8)
    >>> detector.score_patches(np.zeros((2, 3, 5, 8), dtype=np.float32)).shape
    (2, 3, 5)
    >>> detector.predict(np.zeros((1, 4, 4, 7), dtype=np.float32))
    Traceback (most recent call last):
    ...
    ValueError: X has shape (1, 4, 4, 7), but the model's input 'features' has \
shape (n, height, width, 8): axis 3 has 7 entries instead of 8.
    """
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            "load_onnx needs onnxruntime; install it with pip install "
            "'crdistance[onnx]'."
        ) from exc
    if not Path(path).is_file():
        raise FileNotFoundError(f"No ONNX model file at {path}.")
    return OnnxDetector(
        onnxruntime.InferenceSession(str(path), providers=list(providers))
    )


class OnnxDetector:
    """Scores with an exported crdistance model, checking every input first.

    Inputs must be float32 arrays of the model's input rank with its fixed axis
    sizes (the feature count d; for pipelines 3 channels and the image size);
    anything else raises a ``ValueError`` naming the problem before
    onnxruntime sees it.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
        A session of a file written by :func:`to_onnx`, e.g. with tuned
        ``SessionOptions`` or other execution providers.

    Attributes
    ----------
    session : onnxruntime.InferenceSession
        The session scoring the inputs.
    metadata : dict of str to str
        The model's ``metadata_props`` (see :func:`to_onnx`).
    input_name : str
        ``"features"`` for a detector head, ``"images"`` for a pipeline.
    input_shape : tuple of int or None
        Shape of the input, None for dynamic axes.
    threshold_ : float
        Distance above which a sample is an outlier, from the fitted detector.
    offset_ : float
        ``decision_function = score_samples - offset_``, i.e. ``-threshold_``.

    See Also
    --------
    load_onnx : Create an OnnxDetector from a file.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> import onnxruntime
    >>> from crdistance import CRDetector
    >>> from crdistance.export import OnnxDetector, to_onnx
    >>> rng = np.random.default_rng(0)
    >>> detector = CRDetector(lam=1.0, contamination=0.1).fit(rng.normal(size=(200, 4)))
    >>> options = onnxruntime.SessionOptions()
    >>> options.intra_op_num_threads = 1
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = Path(folder) / "crd.onnx"
    ...     _ = to_onnx(detector, path)
    ...     session = onnxruntime.InferenceSession(
    ...         path, options, providers=["CPUExecutionProvider"]
    ...     )
    >>> onnx_detector = OnnxDetector(session)
    >>> onnx_detector.predict(np.array([[0, 0, 0, 0], [9, 0, 0, 0]], dtype=np.float32))
    array([ 1, -1])
    """

    def __init__(self, session):
        metadata = session.get_modelmeta().custom_metadata_map
        if "crdistance_version" not in metadata:
            raise ValueError(
                "The ONNX model was not written by crdistance.export.to_onnx: its "
                "metadata has no 'crdistance_version'."
            )
        (model_input,) = session.get_inputs()
        self.session = session
        self.metadata = dict(metadata)
        self.input_name = model_input.name
        self.input_shape = tuple(
            dim if isinstance(dim, int) else None for dim in model_input.shape
        )
        self._shape_text = "(" + ", ".join(map(str, model_input.shape)) + ")"
        self._outputs = tuple(output.name for output in session.get_outputs())
        missing = {"crd", "score", "label"}.difference(self._outputs)
        if missing:
            raise ValueError(f"The ONNX model lacks the outputs {sorted(missing)}.")
        self.threshold_ = float(metadata["threshold"])
        self.offset_ = -self.threshold_

    def run(self, X):
        """Every output of the model in one pass.

        Parameters
        ----------
        X : ndarray of float32
            Features (n, d), (n, patches, d) or (n, height, width, d) for a
            detector head, images (n, 3, H, W) for a pipeline.

        Returns
        -------
        outputs : dict of str to ndarray
            ``crd``, ``score`` and ``label``, and ``anomaly_map`` for a pipeline.
        """
        outputs = self.session.run(list(self._outputs), self._feed(X))
        return dict(zip(self._outputs, outputs, strict=True))

    def score_patches(self, X):
        """CRD (for local CRD, the local distance) of every row or patch.

        Parameters
        ----------
        X : ndarray of float32
            Input of the model's shape, as for :meth:`run`.

        Returns
        -------
        distances : ndarray of float32
            Shape (n,), (n, patches) or (n, height, width) for features, the
            patch grid (n, h, w) for images.
        """
        return self._output("crd", X)

    def score_samples(self, X):
        """Opposite of the largest distance of each sample: the higher, the more normal.

        Parameters
        ----------
        X : ndarray of float32
            Input of the model's shape, as for :meth:`run`.

        Returns
        -------
        scores : ndarray of float32 of shape (n,)
            Minus the largest distance of each sample, as the detector's
            ``score_samples``.
        """
        return self._output("score", X)

    def decision_function(self, X):
        """Shifted score: negative for outliers, non-negative for inliers.

        Parameters
        ----------
        X : ndarray of float32
            Input of the model's shape, as for :meth:`run`.

        Returns
        -------
        decision : ndarray of float32 of shape (n,)
            ``score_samples(X) - offset_``.
        """
        return self.score_samples(X) - np.float32(self.offset_)

    def predict(self, X):
        """Label each sample as inlier (+1) or outlier (-1).

        Parameters
        ----------
        X : ndarray of float32
            Input of the model's shape, as for :meth:`run`.

        Returns
        -------
        labels : ndarray of int64 of shape (n,)
            +1 where ``decision_function(X) >= 0``, -1 elsewhere.
        """
        # onnxruntime's int64 arrays have dtype long long; CRDetector's have int_.
        return self._output("label", X).astype(np.int64)

    def anomaly_maps(self, X):
        """Anomaly maps of images at their resolution; pipelines only.

        Parameters
        ----------
        X : ndarray of float32 of shape (n, 3, H, W)
            Normalised images, see :func:`to_onnx`.

        Returns
        -------
        maps : ndarray of float32 of shape (n, H, W)
            As :func:`crdistance.maps.anomaly_maps` of the patch distances.
        """
        if "anomaly_map" not in self._outputs:
            raise ValueError(
                "This model is a detector head without anomaly maps; export a "
                "Pipeline(PatchFeaturizer, detector) for them."
            )
        return self._output("anomaly_map", X)

    def _output(self, name, X):
        return self.session.run([name], self._feed(X))[0]

    def _feed(self, X):
        """Check X against the model's input; the onnxruntime feed."""
        X = np.asarray(X)
        expected = f"the model's input {self.input_name!r} has shape {self._shape_text}"
        if X.dtype != np.float32:
            raise ValueError(
                f"X has dtype {X.dtype}, but {expected} and dtype float32; pass "
                "X.astype(np.float32)."
            )
        if X.ndim != len(self.input_shape):
            raise ValueError(
                f"X has {X.ndim} dimensions (shape {X.shape}), but {expected}."
            )
        axes = zip(X.shape, self.input_shape, strict=True)
        for axis, (size, required) in enumerate(axes):
            if required is not None and size != required:
                raise ValueError(
                    f"X has shape {X.shape}, but {expected}: axis {axis} has "
                    f"{size} entries instead of {required}."
                )
        if X.size == 0:
            raise ValueError(f"X is empty (shape {X.shape}).")
        if not np.isfinite(X).all():
            raise ValueError("Input X contains NaN or infinity.")
        return {self.input_name: np.ascontiguousarray(X)}
