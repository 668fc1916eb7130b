"""The archive under a model file: a zip of a JSON header and float64 ``.npy`` members.

Reading parses JSON and the fixed ``.npy`` header, nothing else, and checks
every member's size before reading it, so that a hostile file can neither run
code nor make the reader allocate more than the file's size. The format is
specified in :doc:`docs/security.md </security>`.
"""

import hashlib
import io
import json
import math
import os
import zipfile

import numpy as np

from crdistance._version import __version__
from crdistance.persistence._fields import check_keys, check_type

__all__ = [
    "ARRAY_DTYPE", "FORMAT_NAME", "FORMAT_VERSION", "check_header", "checksum",
    "read_archive", "write_archive",
]

FORMAT_NAME = "crdistance-model"
FORMAT_VERSION = 1
HEADER_MEMBER = "header.json"
MAX_HEADER_BYTES = 1 << 20
ARRAY_DTYPE = np.dtype("<f8")
NPY_VERSION = (1, 0)
_HEADER_KEYS = {"format", "format_version", "crdistance_version", "model",
                "steps", "arrays", "sha256"}


def write_archive(path, header, arrays):
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


def read_archive(path):
    """Header and arrays of the archive, each member's size checked before reading."""
    file_size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            members = _check_members(archive.infolist(), file_size)
            if HEADER_MEMBER not in members:
                raise ValueError(f"it has no {HEADER_MEMBER}.")
            header = _parse_header(archive, members[HEADER_MEMBER])
            shapes = check_header(header)
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


def check_header(header):
    """Check the header's frame; return the declared array shapes by name."""
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ValueError(f"its header does not declare format {FORMAT_NAME!r}.")
    version = header.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ValueError(
            f"format version {version!r} is not supported: crdistance "
            f"{__version__} reads version {FORMAT_VERSION}."
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


def checksum(header, arrays):
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
