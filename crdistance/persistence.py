"""Model files that cannot run code when read: float64 arrays and a JSON header.

:func:`save` writes a fitted :class:`~crdistance.CRDetector` or
:class:`~crdistance.LocalCRDetector`, or a fitted ``Pipeline`` of
:class:`~sklearn.preprocessing.StandardScaler`,
:class:`~sklearn.kernel_approximation.RBFSampler` and
:class:`~crdistance.featurizer.PatchFeaturizer` steps ending in one of them, to
one ``.npz`` archive: a ``header.json`` member and one ``.npy`` member per
array. :func:`load` reads it back after validating every field and a SHA-256
checksum. Reading parses JSON and the fixed ``.npy`` header, nothing else: no
pickle, no import named by the file. The format is specified in
:doc:`docs/security.md </security>`.

joblib and pickle also save any estimator but run code from the file while
loading it: use them only for files you trust.
"""

import hashlib
import io
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline

import crdistance
from crdistance._array_api import to_numpy
from crdistance._format_fields import check_keys, check_type
from crdistance._step_formats import DETECTORS, build_step, check_model, encode_step

__all__ = ["FORMAT_VERSION", "load", "save"]

FORMAT_NAME = "crdistance-model"
FORMAT_VERSION = 1
HEADER_MEMBER = "header.json"
MAX_HEADER_BYTES = 1 << 20
ARRAY_DTYPE = np.dtype("<f8")
NPY_VERSION = (1, 0)
_HEADER_KEYS = {"format", "format_version", "crdistance_version", "model",
                "steps", "arrays", "sha256"}


def save(model, path):
    """Write a fitted detector or pipeline to a file that is safe to load.

    Parameters
    ----------
    model : CRDetector, LocalCRDetector or Pipeline
        A fitted :class:`~crdistance.CRDetector` or
        :class:`~crdistance.LocalCRDetector`, or a fitted ``Pipeline`` whose
        last step is one and whose other steps are
        :class:`~sklearn.preprocessing.StandardScaler`,
        :class:`~sklearn.kernel_approximation.RBFSampler` or
        :class:`~crdistance.featurizer.PatchFeaturizer`. Arrays on a GPU or of
        torch are stored as NumPy float64.
    path : str or path-like
        File written (``.npz`` by convention), replaced atomically: a reader
        never sees a half-written model.

    Raises
    ------
    TypeError
        If the model or one of its steps is of another type, or a parameter
        is not JSON (a ``random_state`` that is a RandomState); joblib saves
        those, as files that run code when loaded.
    ValueError
        If a pipeline does not end in its only detector, or the model fails
        the validation of :func:`load`.
    sklearn.exceptions.NotFittedError
        If a step is not fitted.

    See Also
    --------
    load : Read the file back.

    Notes
    -----
    The featurizer's backbone weights are not stored: as after unpickling, they
    are loaded from its ``weights`` parameter on first use. The pipeline's
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
        arrays.update({
            array_name: np.ascontiguousarray(to_numpy(array), dtype=ARRAY_DTYPE)
            for array_name, array in step_arrays.items()
        })
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "crdistance_version": crdistance.__version__,
        "model": kind,
        "steps": steps,
        "arrays": {name: {"dtype": "float64", "shape": list(array.shape)}
                   for name, array in arrays.items()},
    }
    header["sha256"] = _checksum(header, arrays)
    _check_header(header)
    _build(header, dict(arrays))  # refuse to write what load would refuse
    _write_archive(Path(path), header, arrays)


def load(path):
    """Read a model written by :func:`save`, refusing any file that is not intact.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`save`.

    Returns
    -------
    model : CRDetector, LocalCRDetector or Pipeline
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
        header, arrays = _read_archive(Path(path))
        return _build(header, arrays)
    except ValueError as exc:
        raise ValueError(
            f"{os.fspath(path)} is not a valid crdistance model file: {exc}"
        ) from exc


def _write_archive(path, header, arrays):
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED) as archive:
            header_text = json.dumps(
                header, indent=2, sort_keys=True, allow_nan=False
            ) + "\n"
            archive.writestr(_member(HEADER_MEMBER), header_text.encode())
            for name in sorted(arrays):
                buffer = io.BytesIO()
                np.lib.format.write_array(
                    buffer, arrays[name], version=NPY_VERSION, allow_pickle=False
                )
                archive.writestr(_member(f"{name}.npy"), buffer.getvalue())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _member(name):
    """Zip entry with a fixed date, so that a model always gives the same bytes."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = 0o644 << 16
    return info


def _read_archive(path):
    """Header and arrays of the archive, each member's size checked before reading."""
    file_size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            members = _check_members(archive.infolist(), file_size)
            if HEADER_MEMBER not in members:
                raise ValueError(f"it has no {HEADER_MEMBER}.")
            header = _parse_header(archive, members[HEADER_MEMBER])
            shapes = _check_header(header)
            expected = {HEADER_MEMBER, *(f"{name}.npy" for name in shapes)}
            if set(members) != expected:
                raise ValueError(
                    f"its members {sorted(members)} are not the header and the "
                    f"arrays it declares, {sorted(expected)}."
                )
            arrays = {name: _read_array(archive, members[f"{name}.npy"], shape)
                      for name, shape in shapes.items()}
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(
            f"it is not an intact zip archive ({exc}); it may be truncated or "
            "corrupted. Pickle and joblib files are never read by load."
        ) from exc
    return header, arrays


def _check_members(infos, file_size):
    """Members by name: uncompressed, unencrypted, unique, and together no larger
    than the file, so that reading them all takes at most the file's size."""
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        raise ValueError("the archive holds two members with the same name.")
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise ValueError(f"member {info.filename!r} is compressed or encrypted.")
        if info.compress_size != info.file_size:
            raise ValueError(f"member {info.filename!r} has inconsistent sizes.")
    claimed = sum(info.file_size for info in infos)
    if claimed > file_size:
        raise ValueError(
            f"its members claim {claimed} bytes in a file of {file_size} bytes."
        )
    return dict(zip(names, infos, strict=True))


def _parse_header(archive, info):
    """The JSON header: NaN, infinity and repeated keys are refused."""
    if info.file_size > MAX_HEADER_BYTES:
        raise ValueError(f"its header has {info.file_size} bytes, over 1 MiB.")
    with archive.open(info) as member:
        raw = member.read(MAX_HEADER_BYTES + 1)
    try:
        return json.loads(
            raw.decode("utf-8"),
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except RecursionError as exc:
        raise ValueError("its header is nested too deeply.") from exc


def _refuse_constant(name):
    raise ValueError(f"its header holds {name}, not a finite number.")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"its header holds {text}, which overflows float64.")
    return value


def _unique_keys(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"its header repeats a key among {keys}.")
    return dict(pairs)


def _check_header(header):
    """Check the header's frame; return the declared array shapes by name."""
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ValueError(f"its header does not declare format {FORMAT_NAME!r}.")
    version = header.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ValueError(
            f"format version {version!r} is not supported: crdistance "
            f"{crdistance.__version__} reads version {FORMAT_VERSION}."
        )
    check_keys(header, _HEADER_KEYS, "the header")
    check_type(header["crdistance_version"], str, "crdistance_version")
    check_type(header["sha256"], str, "sha256")
    check_type(header["arrays"], dict, "arrays")
    shapes = {}
    for name, declaration in header["arrays"].items():
        check_type(declaration, dict, f"arrays[{name!r}]")
        check_keys(declaration, {"dtype", "shape"}, f"arrays[{name!r}]")
        shape = declaration["shape"]
        if declaration["dtype"] != "float64" or not (
            isinstance(shape, list) and all(type(n) is int and n >= 1 for n in shape)
        ):
            raise ValueError(
                f"array {name!r} is declared {declaration}, not float64 of a "
                "shape of positive integers."
            )
        shapes[name] = tuple(shape)
    return shapes


def _read_array(archive, info, shape):
    """Read a float64 ``.npy`` member of a known shape; no other dtype is read."""
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version != NPY_VERSION:
            raise ValueError(f"{info.filename!r} has .npy version {version}.")
        stored_shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(
            member
        )
        if (stored_shape, fortran_order, dtype) != (shape, False, ARRAY_DTYPE):
            raise ValueError(
                f"{info.filename!r} holds {dtype} of shape {stored_shape} in "
                f"{'Fortran' if fortran_order else 'C'} order; the header "
                f"declares float64 of shape {shape} in C order."
            )
        n_bytes = ARRAY_DTYPE.itemsize * math.prod(shape)
        data = member.read(n_bytes + 1)
    if len(data) != n_bytes:
        raise ValueError(
            f"{info.filename!r} has {len(data)} bytes of data instead of {n_bytes}."
        )
    return np.frombuffer(bytearray(data), dtype=ARRAY_DTYPE).reshape(shape)


def _checksum(header, arrays):
    """SHA-256 of the canonical header without ``sha256``, then of every array's
    little-endian float64 bytes in C order, arrays sorted by name."""
    content = {key: value for key, value in header.items() if key != "sha256"}
    digest = hashlib.sha256(
        json.dumps(
            content, sort_keys=True, separators=(",", ":"), allow_nan=False
        ).encode()
    )
    for name in sorted(arrays):
        digest.update(arrays[name].tobytes())
    return digest.hexdigest()


def _build(header, arrays):
    """The model described by a checked header and its arrays, validated."""
    if _checksum(header, arrays) != header["sha256"]:
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


