"""Shared fixtures. SciPy's Array API mode must be set before SciPy is imported
for scikit-learn's Array API checks to run."""

import os

os.environ.setdefault("SCIPY_ARRAY_API", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_data():
    """``../shared/data`` beside the clone (CI always has it)."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"real data not found at {path}")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)
