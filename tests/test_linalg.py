"""The CRD formulas against their definitions (Han & Yan, eq. 3.6-3.8)."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from crdistance import CRDetector
from crdistance._linalg import (
    auto_threshold,
    gram_eigvalsh,
    residual_operator,
    residual_operators,
)
from crdistance.exceptions import NumericalWarning


def primal_crd(F, Y, lam):
    """||F (F^T F + lam I)^-1 F^T y - y||^2 with the N x N system, F = (d, N)."""
    n = F.shape[1]
    codes = np.linalg.solve(F.T @ F + lam * np.eye(n), F.T @ Y.T)
    return np.sum((F @ codes - Y.T) ** 2, axis=0)


@pytest.mark.parametrize("n_train, d", [(40, 12), (12, 40), (1, 5)])
@pytest.mark.parametrize("lam", [1e-3, 0.7, 5.0, 1e3])
def test_crd_equals_ridge_reconstruction_residual(rng, n_train, d, lam):
    X_train = rng.normal(size=(n_train, d))
    Y = rng.normal(size=(7, d))
    detector = CRDetector(lam=lam).fit(X_train)
    expected = primal_crd(X_train.T, Y, lam)
    assert_allclose(detector.score_patches(Y), expected, rtol=1e-8)
    assert_allclose(detector.score_samples(Y), -expected, rtol=1e-8)


def test_crd_of_span_vector_vanishes_as_lam_goes_to_zero(rng):
    X_train = rng.normal(size=(30, 10))
    y = X_train[:3].sum(axis=0, keepdims=True)
    distances = [CRDetector(lam=lam).fit(X_train).score_patches(y)[0] for lam in
                 (1.0, 1e-2, 1e-4)]
    assert distances[0] > distances[1] > distances[2]
    assert distances[2] < 1e-8 * np.sum(y**2)


def test_crd_tends_to_squared_norm_for_large_lam(rng):
    X_train = rng.normal(size=(30, 10))
    y = rng.normal(size=(4, 10))
    detector = CRDetector(lam=1e9).fit(X_train)
    assert_allclose(detector.score_patches(y), np.sum(y**2, axis=1), rtol=1e-6)


def test_residual_operator_falls_back_to_eigh_when_cholesky_fails(rng):
    # Rank 2 in 6 dimensions at magnitude 1e8: rounding in G (~1e16 * eps ~ 1)
    # swamps lam = 1e-6, so G + lam I is not numerically positive definite.
    basis = rng.normal(size=(2, 6)) * 1e8
    X_train = rng.normal(size=(50, 2)) @ basis
    with pytest.warns(NumericalWarning, match="not numerically positive definite"):
        detector = CRDetector(lam=1e-6).fit(X_train)
    assert detector.solver_ == "eigh"
    # A direction orthogonal to the training span keeps its whole norm.
    q, _ = np.linalg.qr(np.vstack([basis, rng.normal(size=(1, 6))]).T)
    outside = q[:, 2][None, :]
    assert_allclose(detector.score_patches(outside), [1.0], rtol=1e-6)
    inside = X_train[:5] / 1e8
    distances = detector.score_patches(inside)
    assert np.all(np.isfinite(distances)) and np.all(distances >= 0)
    assert np.all(distances < 1e-6 * np.sum(inside**2, axis=1))


def test_residual_operator_refuses_overflowed_gram():
    with pytest.raises(ValueError, match="overflowed float64"):
        residual_operator(np.full((3, 3), np.inf), 1.0)


def test_cholesky_path_is_used_for_well_posed_problems(rng):
    M, solver = residual_operator(np.cov(rng.normal(size=(5, 100))) * 100, 0.5)
    assert solver == "cholesky"
    assert_allclose(M, M.T)


def test_batched_operators_are_those_of_each_gram(rng):
    grams = np.stack([np.cov(rng.normal(size=(7, 50 + 10 * k))) for k in range(4)])
    lams = np.array([0.1, 1.0, 5.0, 0.02])
    expected = [
        residual_operator(G, lam)[0] for G, lam in zip(grams, lams, strict=True)
    ]
    assert_allclose(residual_operators(grams, lams), expected, rtol=1e-10)


def test_batched_operators_fall_back_per_cell_when_one_is_ill_posed(rng):
    # The second Gram matrix has rank 2 at scale 1e16: G + 1e-6 I is not
    # numerically positive definite, so it needs the eigenvalue fallback.
    basis = rng.normal(size=(2, 6)) * 1e8
    F = rng.normal(size=(50, 2)) @ basis
    grams = np.stack([np.cov(rng.normal(size=(6, 40))), F.T @ F])
    lams = np.array([0.5, 1e-6])
    with pytest.warns(NumericalWarning, match="not numerically positive definite"):
        M = residual_operators(grams, lams)
    assert_allclose(M[0], residual_operator(grams[0], 0.5)[0], rtol=1e-12)
    with pytest.warns(NumericalWarning):
        eigh_operator, solver = residual_operator(grams[1], 1e-6)
    assert solver == "eigh"
    assert_allclose(M[1], eigh_operator, rtol=1e-12)


def test_batched_operators_refuse_overflowed_grams():
    with pytest.raises(ValueError, match="overflowed float64"):
        residual_operators(np.full((2, 3, 3), np.inf), np.ones(2))


@pytest.mark.parametrize("rows_per_sample", [1, 16])
def test_auto_threshold_false_alarm_rate_on_gaussian_data(rng, rows_per_sample):
    d, n_train = 6, 20_000
    scales = np.array([3.0, 2.0, 1.0, 0.5, 0.2, 0.1])
    X_train = rng.normal(size=(n_train, d)) * scales
    detector = CRDetector(lam=50.0).fit(X_train)
    M = detector.residual_operator_
    threshold = auto_threshold(gram_eigvalsh(detector.gram_), 50.0, n_train,
                               rows_per_sample, 0.01)
    fresh = (rng.normal(size=(40_000 * rows_per_sample, d)) * scales) @ M
    distances = np.sum(fresh**2, axis=1).reshape(-1, rows_per_sample).max(axis=1)
    false_alarms = np.mean(distances > threshold)
    # The moment-matched chi-squared is an approximation of the exact law.
    assert 0.005 < false_alarms < 0.02


def test_trace_scaled_lam_is_scale_free(rng):
    X_train = rng.normal(size=(60, 9))
    Y = rng.normal(size=(5, 9))
    detector = CRDetector(lam=0.1, lam_scale="trace").fit(X_train)
    lam = 0.1 * np.trace(X_train.T @ X_train) / 9
    assert detector.lam_ == pytest.approx(lam)
    assert_allclose(detector.score_patches(Y), primal_crd(X_train.T, Y, lam), rtol=1e-8)
    # Rescaling features by 10 rescales CRD by 100, with the same lam value.
    rescaled = CRDetector(lam=0.1, lam_scale="trace").fit(10 * X_train)
    assert_allclose(rescaled.score_patches(10 * Y), 100 * detector.score_patches(Y),
                    rtol=1e-8)
    assert rescaled.threshold_ == pytest.approx(100 * detector.threshold_, rel=1e-8)


def test_trace_scaled_lam_needs_nonzero_features():
    with pytest.raises(ValueError, match="trace"):
        CRDetector(lam_scale="trace").fit(np.zeros((4, 3)))
