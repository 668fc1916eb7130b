"""CRDetector's estimator contract: fitting, thresholds, patch sets, bad input."""


import numpy as np
import pytest
from _assertions import assert_same_model
from numpy.testing import assert_allclose, assert_array_equal

from crdistance import CRDetector


@pytest.fixture
def normal_data(rng):
    return rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8))


def test_partial_fit_on_chunks_equals_fit_on_concatenation(normal_data):
    whole = CRDetector(lam=2.0).fit(normal_data)
    streamed = CRDetector(lam=2.0)
    for chunk in np.array_split(normal_data, 7):
        streamed.partial_fit(chunk)
    assert_same_model(whole, streamed)
    assert_allclose(
        streamed.score_samples(normal_data), whole.score_samples(normal_data)
    )


@pytest.mark.parametrize("chunk_size", [1, 17, 10_000])
def test_results_do_not_depend_on_chunk_size(normal_data, chunk_size):
    reference = CRDetector(lam=2.0).fit(normal_data)
    chunked = CRDetector(lam=2.0, chunk_size=chunk_size).fit(normal_data)
    assert_same_model(reference, chunked)
    assert_allclose(chunked.score_samples(normal_data),
                    reference.score_samples(normal_data), rtol=1e-10)


def test_detector_is_usable_after_every_partial_fit(normal_data):
    detector = CRDetector().partial_fit(normal_data[:10])
    first = detector.score_samples(normal_data)
    detector.partial_fit(normal_data[10:])
    assert not np.allclose(first, detector.score_samples(normal_data))


def test_outlier_contract(normal_data, rng):
    detector = CRDetector(lam=1.0).fit(normal_data)
    queries = np.vstack([normal_data[:5], 50 * rng.normal(size=(5, 8))])
    scores = detector.score_samples(queries)
    assert_allclose(scores, -detector.score_patches(queries))
    assert_allclose(detector.decision_function(queries), scores - detector.offset_)
    assert detector.threshold_ == -detector.offset_
    assert_array_equal(detector.predict(queries),
                       np.where(scores - detector.offset_ < 0, -1, 1))
    assert_array_equal(detector.predict(queries)[5:], -1)
    assert_array_equal(detector.fit_predict(normal_data), detector.predict(normal_data))


def test_max_contamination_is_the_papers_rule(normal_data):
    detector = CRDetector(contamination="max").fit(normal_data)
    assert detector.threshold_ == pytest.approx(
        detector.score_patches(normal_data).max()
    )
    assert np.all(detector.predict(normal_data) == 1)


@pytest.mark.parametrize("contamination", [0.05, 0.2])
def test_float_contamination_flags_that_share_of_training(normal_data, contamination):
    detector = CRDetector(contamination=contamination).fit(normal_data)
    flagged = np.mean(detector.predict(normal_data) == -1)
    assert flagged == pytest.approx(contamination, abs=1 / len(normal_data))


def test_partial_fit_with_float_contamination_thresholds_the_last_batch(normal_data):
    detector = CRDetector(contamination=0.1)
    detector.partial_fit(normal_data[:150]).partial_fit(normal_data[150:])
    last_batch = detector.predict(normal_data[150:])
    assert np.mean(last_batch == -1) == pytest.approx(0.1, abs=1 / 150)


def test_auto_threshold_is_stream_invariant(normal_data):
    streamed = (
        CRDetector().partial_fit(normal_data[:100]).partial_fit(normal_data[100:])
    )
    assert streamed.offset_ == pytest.approx(CRDetector().fit(normal_data).offset_)


@pytest.mark.parametrize("spatial", [(12,), (3, 4)])
def test_patch_sets_score_images_by_their_worst_patch(rng, spatial):
    d = 5
    images = rng.normal(size=(6, *spatial, d))
    detector = CRDetector(lam=0.5).fit(images)
    rows = images.reshape(-1, d)
    flat = CRDetector(lam=0.5).fit(rows)
    assert_allclose(detector.gram_, flat.gram_)
    maps = detector.score_patches(images)
    assert maps.shape == (6, *spatial)
    assert_allclose(maps.reshape(-1), flat.score_patches(rows))
    assert_allclose(detector.score_samples(images), -maps.reshape(6, -1).max(axis=1))
    np.testing.assert_array_equal(
        detector.predict(images),
        np.where(detector.score_samples(images) < detector.offset_, -1, 1),
    )


def test_auto_threshold_for_patch_sets_is_image_level(rng):
    images = rng.normal(size=(200, 16, 4))
    image_level = CRDetector().fit(images)
    row_level = CRDetector().fit(images.reshape(-1, 4))
    assert image_level.threshold_ > row_level.threshold_


@pytest.mark.parametrize(
    "X, match",
    [
        (np.array([[1.0, np.nan, 0.0, 1.0]]), "NaN"),
        (np.array([[1.0, np.inf, 0.0, 1.0]]), "infinity"),
        (np.ones((2, 3)), "X has 3 features, but CRDetector is expecting 4"),
        (np.ones((2, 2, 3)), "X has 3 features, but CRDetector is expecting 4"),
        (np.ones(4), "Expected 2D array"),
        (np.ones((1, 1, 1, 1, 4)), "ndim=5"),
        (np.ones((0, 4)), "0 sample"),
        (np.ones((0, 3, 4)), "empty patch set"),
    ],
)
def test_bad_input_is_rejected_with_a_named_problem(normal_data, X, match):
    detector = CRDetector().fit(normal_data[:, :4])
    with pytest.raises(ValueError, match=match):
        detector.score_samples(X)


@pytest.mark.parametrize("lam", [0, -1.0])
def test_non_positive_lam_is_rejected(normal_data, lam):
    with pytest.raises(ValueError, match="'lam' parameter of CRDetector must be"):
        CRDetector(lam=lam).fit(normal_data)


def test_fitting_bad_input_is_rejected(rng):
    with pytest.raises(ValueError, match="NaN"):
        CRDetector().fit(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(TypeError, match="Sparse data was passed"):
        import scipy.sparse

        CRDetector().fit(scipy.sparse.random(5, 3, density=0.5, format="csr"))


def test_unfitted_detector_says_so():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        CRDetector().score_patches(np.ones((1, 2)))


def test_float32_in_gives_float32_out(normal_data):
    X32 = normal_data.astype(np.float32)
    detector = CRDetector().fit(X32)
    assert detector.gram_.dtype == np.float64
    assert detector.score_samples(X32).dtype == np.float32
    assert_allclose(detector.score_samples(X32), detector.score_samples(normal_data),
                    rtol=1e-4)
    precise = CRDetector(compute_dtype="float64").fit(X32)
    assert precise.score_samples(X32).dtype == np.float64
