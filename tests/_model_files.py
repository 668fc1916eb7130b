"""Editing saved model files as an attacker would, for the persistence tests.

``rewrite`` rebuilds an archive from edited parts; with ``resign`` it
recomputes the checksum as docs/security.md specifies, so that the edit reaches
the validation behind the checksum.
"""

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest

from crdistance.persistence import load


def spec_checksum(header, arrays):
    content = {key: value for key, value in header.items() if key != "sha256"}
    digest = hashlib.sha256(
        json.dumps(content, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(arrays):
        digest.update(np.ascontiguousarray(arrays[name], dtype="<f8").tobytes())
    return digest.hexdigest()


def rewrite(path, edit=None, *, resign=True, members=None):
    with np.load(path, allow_pickle=False) as archive:
        header = json.loads(archive["header.json"])
        arrays = {name: archive[name] for name in archive.files
                  if name != "header.json"}
    if edit is not None:
        edit(header, arrays)
    if resign:
        header["sha256"] = spec_checksum(header, arrays)
    members = members or {}
    for name, array in arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, array)
        members.setdefault(f"{name}.npy", buffer.getvalue())
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("header.json", json.dumps(header))
        for name, data in members.items():
            archive.writestr(name, data)


def assert_refused(path, edit, match):
    """``load`` refuses the file with ``edit`` applied (and re-signed)."""
    rewrite(path, edit)
    with pytest.raises(ValueError, match=match) as error:
        load(path)
    assert str(error.value).startswith(f"{path} is not a valid crdistance")


def replace_array(header, arrays, name, array):
    """Put ``array`` in place of the array ``name`` and declare its shape."""
    arrays[name] = np.asarray(array, dtype=np.float64)
    header["arrays"][name]["shape"] = list(arrays[name].shape)
