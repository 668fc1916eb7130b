"""Properties of CRD for random shapes and data (hypothesis).

Data are drawn as float64 entries in [-100, 100], which includes zero rows,
repeated values and rank-deficient matrices; lam stays in [1e-2, 1e2], where
``cond(G + lam I) <= 2e8`` bounds float64 rounding in the residual operator by
about 1e-7 of its norm. CRD(y) is compared with tolerances relative to ||y||^2.
"""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_allclose
from scipy.stats import chi2

from crdistance import CRDetector
from crdistance._linalg import gram_eigh

MAX_ROWS, MAX_FEATURES = 30, 6
PROPERTY_SETTINGS = settings(deadline=None, max_examples=150)

entries = st.floats(-100, 100, allow_subnormal=False)
lams = st.floats(1e-2, 1e2)


@st.composite
def data(draw, n_queries=5):
    """Training rows (n, d) and query rows (m, d)."""
    n = draw(st.integers(1, MAX_ROWS))
    d = draw(st.integers(1, MAX_FEATURES))
    X = draw(hnp.arrays(np.float64, (n, d), elements=entries))
    Y = draw(hnp.arrays(np.float64, (draw(st.integers(1, n_queries)), d),
                        elements=entries))
    return X, Y


def assert_same_crd(actual, expected, Y):
    """Equal CRD up to float64 rounding of a residual operator with cond <= 2e8."""
    scale = np.sum(Y**2, axis=1) + 1e-300
    assert_allclose(actual / scale, expected / scale, rtol=1e-6, atol=1e-6)


def primal_crd(X, Y, lam):
    """Han & Yan eq. 3.6-3.8 as written: an N x N ridge code per query."""
    F = X.T
    codes = np.linalg.solve(F.T @ F + lam * np.eye(F.shape[1]), F.T @ Y.T)
    return np.sum((F @ codes - Y.T) ** 2, axis=0)


@PROPERTY_SETTINGS
@given(data(), lams, st.lists(st.integers(1, MAX_ROWS), max_size=4))
def test_partial_fit_in_chunks_equals_fit(X_Y, lam, cuts):
    """The "auto" ``threshold_`` is a function of ``gram_`` alone; its own
    sensitivity to rounding is test_auto_threshold_of_rank_deficient_data."""
    X, Y = X_Y
    whole = CRDetector(lam=lam).fit(X)
    streamed = CRDetector(lam=lam)
    for chunk in np.split(X, sorted({cut for cut in cuts if cut < len(X)})):
        streamed.partial_fit(chunk)
    assert streamed.n_samples_seen_ == whole.n_samples_seen_
    assert_allclose(streamed.gram_, whole.gram_, rtol=1e-12,
                    atol=1e-12 * np.abs(whole.gram_).max())
    assert_same_crd(streamed.score_patches(Y), whole.score_patches(Y), Y)


@PROPERTY_SETTINGS
@given(data(), lams)
def test_crd_equals_the_explicit_ridge_residual(X_Y, lam):
    X, Y = X_Y
    detector = CRDetector(lam=lam).fit(X)
    assert_same_crd(detector.score_patches(Y), primal_crd(X, Y, lam), Y)


@PROPERTY_SETTINGS
@given(
    st.integers(1, MAX_ROWS), st.integers(1, MAX_FEATURES),
    st.integers(0, 2**32 - 1),
)
def test_crd_of_a_training_span_vector_vanishes_as_lam_goes_to_zero(n, d, seed):
    """In G's eigenbasis CRD(y) = sum_k (lam / (s_k + lam))^2 (v_k^T y)^2; for y
    in the span only s_k > 0 count, so CRD(y) <= (lam / s_min)^2 ||y||^2."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    eigenvalues = np.linalg.eigvalsh(X.T @ X)
    span_eigenvalues = eigenvalues[eigenvalues > 1e-9 * eigenvalues[-1]]
    s_min = span_eigenvalues[0]
    assume(s_min > 1e-6 * eigenvalues[-1])  # a well-defined span
    y = rng.normal(size=n) @ X
    relative_crd = [
        CRDetector(lam=ratio * s_min).fit(X).score_patches(y[None])[0] / (y @ y)
        for ratio in (1e-1, 1e-3, 1e-5)
    ]
    assert relative_crd[0] <= 1e-2
    assert relative_crd[1] <= 1e-6
    assert relative_crd[2] <= 1e-10
    assert relative_crd[2] <= relative_crd[1] <= relative_crd[0]


@PROPERTY_SETTINGS
@given(data(n_queries=20), lams, st.integers(1, 40), st.integers(1, 40))
def test_scores_are_invariant_to_chunk_size(X_Y, lam, chunk_a, chunk_b):
    X, Y = X_Y
    detector_a = CRDetector(lam=lam, chunk_size=chunk_a).fit(X)
    detector_b = CRDetector(lam=lam, chunk_size=chunk_b).fit(X)
    assert_same_crd(detector_a.score_patches(Y), detector_b.score_patches(Y), Y)
    rescored = detector_a.set_params(chunk_size=chunk_b).score_patches(Y)
    assert_same_crd(rescored, detector_b.score_patches(Y), Y)


@PROPERTY_SETTINGS
@given(data(), lams, st.randoms(use_true_random=False))
def test_scores_are_invariant_to_the_order_of_training_samples(X_Y, lam, random):
    X, Y = X_Y
    order = list(range(len(X)))
    random.shuffle(order)
    original = CRDetector(lam=lam).fit(X)
    shuffled = CRDetector(lam=lam).fit(X[order])
    assert_same_crd(shuffled.score_patches(Y), original.score_patches(Y), Y)


@PROPERTY_SETTINGS
@given(
    data(), st.floats(1e-8, 1e8), st.sampled_from(["absolute", "trace"]),
    st.sampled_from([np.float32, np.float64]),
)
@pytest.mark.filterwarnings("ignore::crdistance.exceptions.NumericalWarning")
def test_scores_and_threshold_are_finite_and_non_negative(X_Y, lam, lam_scale, dtype):
    X, Y = X_Y
    X = X.astype(dtype)
    assume(lam_scale == "absolute" or np.any(X.astype(np.float64) ** 2))  # G != 0
    detector = CRDetector(lam=lam, lam_scale=lam_scale).fit(X)
    distances = detector.score_patches(Y.astype(dtype))
    assert distances.dtype == dtype
    assert np.all(np.isfinite(distances)) and np.all(distances >= 0)
    assert np.isfinite(detector.threshold_) and detector.threshold_ >= 0


def test_auto_threshold_of_rank_deficient_data():
    """The "auto" threshold against its formula on G's eigenvalues s_k, with
    rounding-level ones set to 0 as ``gram_eigh`` does: weights
    w_k = lam s_k / (s_k + lam)^2 and df = sum s_k / (s_k + lam)."""
    rng = np.random.default_rng(6)
    X = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 10)) * 10  # rank 5, d = 10
    detector = CRDetector(lam=1e-4).fit(X)
    s, _ = gram_eigh(X.T @ X)
    lam, n = detector.lam_, len(X)
    weights = lam * s / (s + lam) ** 2
    inflation = 1 / (1 - np.sum(s / (s + lam)) / n) ** 2
    mean = inflation * lam * weights.sum() / n
    variance = 2 * (inflation * lam / n) ** 2 * np.sum(weights**2)
    expected = variance / (2 * mean) * chi2.isf(0.01, 2 * mean**2 / variance)
    assert_allclose(detector.threshold_, expected, rtol=1e-6)
    assert np.mean(detector.predict(X) == -1) < 0.05
