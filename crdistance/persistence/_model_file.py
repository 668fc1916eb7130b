"""save and load: model files that cannot run code when read.

:func:`save` writes a fitted :class:`~crdistance.CRDetector`,
:class:`~crdistance.LocalCRDetector`, :class:`~crdistance.kmeans.KMeansDetector`,
:class:`~crdistance.grad.GRADDetector` or
:class:`~crdistance.categories.PerCategoryDetector` (of detectors of the first
four classes), or a fitted ``Pipeline`` of
:class:`~sklearn.preprocessing.StandardScaler`,
:class:`~sklearn.kernel_approximation.RBFSampler`,
:class:`~crdistance.featurizer.PatchFeaturizer` and
:class:`~crdistance.featurizer.ContrastiveEmbedder` steps ending in one of them,
to one ``.npz`` archive: a ``header.json`` member and one ``.npy`` member per
array. :func:`load` reads it back after validating every field and a SHA-256
checksum. Reading parses JSON and the fixed ``.npy`` header, nothing else: no
pickle, no import named by the file. The format is specified in
:doc:`docs/security.md </security>`.

joblib and pickle also save any estimator but run code from the file while
loading it: use them only for files you trust.
"""

import os
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline

from crdistance._array_api import to_numpy
from crdistance._version import __version__
from crdistance.persistence._archive import (
    ARRAY_DTYPE,
    FORMAT_NAME,
    FORMAT_VERSION,
    check_header,
    checksum,
    read_archive,
    write_archive,
)
from crdistance.persistence._fields import check_type
from crdistance.persistence._steps import (
    DETECTORS,
    build_step,
    check_model,
    encode_step,
)

__all__ = ["load", "save"]


def save(model, path):
    """Write a fitted detector or pipeline to a file that is safe to load.

    Parameters
    ----------
    model : CRDetector, LocalCRDetector, KMeansDetector, GRADDetector, \
PerCategoryDetector or Pipeline
        A fitted :class:`~crdistance.CRDetector`,
        :class:`~crdistance.LocalCRDetector`,
        :class:`~crdistance.kmeans.KMeansDetector`,
        :class:`~crdistance.grad.GRADDetector` or
        :class:`~crdistance.categories.PerCategoryDetector` (whose detectors
        are of the first four classes, with str or int category labels), or a
        fitted ``Pipeline`` whose last step is one and whose other steps are
        :class:`~sklearn.preprocessing.StandardScaler`,
        :class:`~sklearn.kernel_approximation.RBFSampler`,
        :class:`~crdistance.featurizer.PatchFeaturizer` or
        :class:`~crdistance.featurizer.ContrastiveEmbedder`. Arrays on a GPU or
        of torch are stored as NumPy float64.
    path : str or path-like
        File written (``.npz`` by convention), replaced atomically: a reader
        never sees a half-written model.

    Raises
    ------
    TypeError
        If the model or one of its steps (or a PerCategoryDetector's detector)
        is of another type, a parameter is not JSON (a ``random_state`` that is
        a RandomState), or a PerCategoryDetector's labels are not all str or
        all int; joblib saves those, as files that run code when loaded.
    ValueError
        If a pipeline does not end in its only detector, two steps would store
        an array of the same name, or the model fails the validation of
        :func:`load`.
    sklearn.exceptions.NotFittedError
        If a step is not fitted.

    See Also
    --------
    load : Read the file back.

    Notes
    -----
    The featurizer's backbone weights are not stored: as after unpickling, they
    are loaded from its ``weights`` parameter on first use. A
    ContrastiveEmbedder is stored whole: its layers, its frozen decoder and its
    loss curves; a GRADDetector with its network's state (loading one needs
    torch); a PerCategoryDetector with each fitted detector as a step of its
    own. The pipeline's
    ``memory`` and ``verbose`` are not stored either. The same model always
    gives the same bytes.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from crdistance import CRDetector
    >>> from crdistance.persistence import load, save
    >>> X = np.random.default_rng(0).normal(size=(100, 4))
    >>> detector = CRDetector(lam=1.0).fit(X)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     save(detector, Path(folder) / "model.npz")
    ...     loaded = load(Path(folder) / "model.npz")
    >>> bool(np.array_equal(loaded.score_samples(X), detector.score_samples(X)))
    True
    """
    if isinstance(model, Pipeline):
        kind, named_steps = "Pipeline", model.steps
    elif type(model).__name__ in DETECTORS:
        kind = type(model).__name__
        named_steps = [(kind.lower(), model)]
    else:
        raise TypeError(
            f"save writes a fitted {' or '.join(DETECTORS)}, or a Pipeline ending "
            f"in one, got {type(model).__name__}."
        )
    steps, arrays = [], {}
    for name, estimator in named_steps:
        step, step_arrays = encode_step(name, estimator)
        steps.append(step)
        for array_name, array in step_arrays.items():
            if array_name in arrays:
                raise ValueError(
                    f"two steps store the array {array_name!r}: rename step "
                    f"{name!r}."
                )
            # order="C" keeps 0-d arrays (batch counters) 0-d.
            arrays[array_name] = np.asarray(to_numpy(array), dtype=ARRAY_DTYPE,
                                            order="C")
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "crdistance_version": __version__,
        "model": kind,
        "steps": steps,
        "arrays": {name: {"dtype": "float64", "shape": list(array.shape)}
                   for name, array in arrays.items()},
    }
    header["sha256"] = checksum(header, arrays)
    check_header(header)
    _build(header, dict(arrays))  # refuse to write what load would refuse
    write_archive(Path(path), header, arrays)


def load(path):
    """Read a model written by :func:`save`, refusing any file that is not intact.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`save`.

    Returns
    -------
    model : CRDetector, LocalCRDetector, KMeansDetector, GRADDetector, \
PerCategoryDetector or Pipeline
        The fitted model, with its arrays in NumPy; it scores exactly as the
        saved one did.

    Raises
    ------
    ValueError
        If the file is not a zip archive (for instance a pickle or joblib file,
        which is never unpickled), is truncated or corrupted, has another
        format version, or holds a field of the wrong type or range, arrays of
        shapes other than its ``n_features_in_`` gives, NaN or infinity, a
        non-symmetric matrix, or a checksum that does not match its content.
        The message names the problem.
    ImportError
        If the file holds a GRADDetector and torch is not installed.

    See Also
    --------
    save : Write the file.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from crdistance import CRDetector
    >>> from crdistance.persistence import load, save
    >>> X = np.random.default_rng(0).normal(size=(100, 4))
    >>> model = make_pipeline(StandardScaler(), CRDetector(lam=1.0)).fit(X)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     save(model, Path(folder) / "model.npz")
    ...     loaded = load(Path(folder) / "model.npz")
    >>> loaded
    Pipeline(steps=[('standardscaler', StandardScaler()),
                    ('crdetector', CRDetector(lam=1.0))])
    >>> bool(np.array_equal(loaded.score_samples(X), model.score_samples(X)))
    True
    >>> with tempfile.TemporaryDirectory() as folder:  # doctest: +ELLIPSIS
    ...     _ = Path(folder, "model.npz").write_bytes(b"not a model")
    ...     load(Path(folder) / "model.npz")
    Traceback (most recent call last):
    ...
    ValueError: ... is not a valid crdistance model file: it is not an intact \
zip archive (File is not a zip file)...
    """
    try:
        header, arrays = read_archive(Path(path))
        return _build(header, arrays)
    except ValueError as exc:
        raise ValueError(
            f"{os.fspath(path)} is not a valid crdistance model file: {exc}"
        ) from exc


def _build(header, arrays):
    """The model described by a checked header and its arrays, validated."""
    if checksum(header, arrays) != header["sha256"]:
        raise ValueError(
            "its SHA-256 checksum does not match its content: the file was "
            "modified or corrupted."
        )
    steps = header["steps"]
    if not isinstance(steps, list) or not steps:
        raise ValueError("its header has no steps.")
    for step in steps:
        check_type(step, dict, "a step")
    check_model(header["model"], [step.get("class") for step in steps])
    built, widths = [], []
    for step in steps:
        if step.get("name") in [name for name, _ in built]:
            raise ValueError(f"two steps are named {step['name']!r}.")
        name, estimator, width = build_step(step, arrays)
        if built and width[0] != widths[-1][1]:
            takes = "images" if width[0] is None else f"{width[0]} features"
            raise ValueError(
                f"step {name!r} takes {takes} but step {built[-1][0]!r} gives "
                f"{widths[-1][1]} features."
            )
        built.append((name, estimator))
        widths.append(width)
    if arrays:
        raise ValueError(f"arrays {sorted(arrays)} belong to no step.")
    if header["model"] == "Pipeline":
        return Pipeline(built)
    return built[0][1]
