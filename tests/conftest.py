"""Shared fixtures. SciPy's Array API mode must be set before SciPy is imported
for scikit-learn's Array API checks to run."""

import os

os.environ.setdefault("SCIPY_ARRAY_API", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
"""``../shared`` beside the clone: real data and weights (CI always has it).
Tests reach it through the fixtures below, never directly, so that a checkout
without it skips them with the path that was looked for."""

MOBILENET_FILE = SHARED / "weights/hub/checkpoints/mobilenet_v2-b0353104.pth"


@pytest.fixture(scope="session")
def shared_data():
    """``../shared/data``: magnetic_tile, screw, tire and the ODDS tables."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (../shared beside the clone)")
    return path


@pytest.fixture(scope="session")
def shared_weights():
    """``../shared/weights``: a TORCH_HOME holding the ImageNet MobileNetV2 file."""
    if not MOBILENET_FILE.is_file():
        pytest.skip(f"ImageNet MobileNetV2 weights not found at {MOBILENET_FILE}")
    return SHARED / "weights"


@pytest.fixture
def rng():
    return np.random.default_rng(0)
