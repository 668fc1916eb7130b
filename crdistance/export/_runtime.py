"""load_onnx and OnnxDetector: score with an exported file through onnxruntime.

Reading needs onnxruntime only (imported when a file is loaded); every input is
checked against the graph's declared shape and type before it runs.
"""

from pathlib import Path

import numpy as np

from crdistance._validation import check_finite

__all__ = ["OnnxDetector", "load_onnx"]


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
        """Distance of every row or patch, as the detector's ``score_patches``.

        The CRD for CRD, the local distance for local CRD, the distance to the
        nearest centre for k-means.

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
                "Pipeline(PatchFeaturizer, [ContrastiveEmbedder,] detector) for them."
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
        check_finite(X, "Input X contains NaN or infinity.")
        return {self.input_name: np.ascontiguousarray(X)}
