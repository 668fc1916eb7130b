"""Assertions shared by several test modules."""

import pytest
from numpy.testing import assert_allclose


def assert_same_model(a, b):
    """Two fitted CRDetectors hold the same state, to float64 rounding."""
    assert a.n_samples_seen_ == b.n_samples_seen_
    assert_allclose(a.gram_, b.gram_, rtol=1e-12)
    assert_allclose(a.residual_operator_, b.residual_operator_, rtol=1e-9, atol=1e-14)
    assert a.offset_ == pytest.approx(b.offset_, rel=1e-9)
