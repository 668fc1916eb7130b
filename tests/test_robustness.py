"""Numerical robustness: rank deficiency, extreme lam and magnitudes, tiny data."""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose

from crdistance import CRDetector


def assert_valid_distances(distances):
    assert np.all(np.isfinite(distances)) and np.all(distances >= 0)


@pytest.mark.parametrize(
    "make_train",
    [
        lambda rng: rng.normal(size=(5, 40)),  # d > N
        lambda rng: np.repeat(rng.normal(size=(50, 4)), 3, axis=1),  # duplicated
        lambda rng: np.hstack([rng.normal(size=(50, 4)), np.ones((50, 3))]),
        lambda rng: rng.normal(size=(1, 6)),  # a single training sample
    ],
    ids=["d>N", "duplicated-features", "constant-features", "one-sample"],
)
def test_rank_deficient_training_data(rng, make_train):
    X_train = make_train(rng)
    queries = rng.normal(size=(10, X_train.shape[1]))
    detector = CRDetector(lam=1e-3).fit(X_train)
    assert detector.solver_ == "cholesky"
    assert_valid_distances(detector.score_patches(queries))
    assert_valid_distances(-detector.score_samples(X_train))
    assert np.isfinite(detector.threshold_)


@pytest.mark.parametrize("lam", [1e-8, 1e-4, 1.0, 1e4, 1e8])
def test_lam_over_sixteen_decades(rng, lam):
    X_train = rng.normal(size=(200, 30)) @ rng.normal(size=(30, 30))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny lam may take the eigh fallback
        detector = CRDetector(lam=lam).fit(X_train)
    assert_valid_distances(detector.score_patches(rng.normal(size=(20, 30))))
    assert np.isfinite(detector.threshold_) and detector.threshold_ >= 0


@pytest.mark.parametrize("magnitude", [1e-20, 1e20])
def test_extreme_magnitudes_with_scale_free_lam(rng, magnitude):
    X_train, queries = rng.normal(size=(300, 8)), rng.normal(size=(10, 8))
    reference = CRDetector(lam=0.1, lam_scale="trace").fit(X_train)
    scaled = CRDetector(lam=0.1, lam_scale="trace").fit(magnitude * X_train)
    assert_allclose(scaled.score_patches(magnitude * queries) / magnitude**2,
                    reference.score_patches(queries), rtol=1e-8)


def test_float32_overflow_is_an_error_not_infinity(rng):
    # Training rows span the first 4 axes; the queries leave that span, so
    # their CRD is about ||y||^2 ~ 1e40, beyond float32.
    X_train = np.zeros((300, 8), dtype=np.float32)
    X_train[:, :4] = rng.normal(size=(300, 4)) * 1e20
    queries = np.zeros((5, 8), dtype=np.float32)
    queries[:, 4:] = rng.normal(size=(5, 4)) * 1e20
    detector = CRDetector(lam=1.0).fit(X_train)
    assert np.all(np.isfinite(detector.gram_))
    with pytest.raises(ValueError, match="compute_dtype='float64'"):
        detector.score_samples(queries)
    precise = CRDetector(lam=1.0, compute_dtype="float64").fit(X_train)
    assert_valid_distances(precise.score_patches(queries))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_float64_gram_overflow_is_an_error(rng):
    with pytest.raises(ValueError, match="overflowed float64"):
        CRDetector().fit(rng.normal(size=(10, 3)) * 1e160)


def test_half_precision_numpy_is_scored_in_float32(rng):
    X_train = rng.normal(size=(100, 6)).astype(np.float16)
    detector = CRDetector().fit(X_train)
    scores = detector.score_samples(X_train)
    assert scores.dtype == np.float32
    assert_valid_distances(-scores)
