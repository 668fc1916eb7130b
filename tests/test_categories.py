"""PerCategoryDetector: one detector per product category behind a router."""

import pickle
import re

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.ensemble import IsolationForest
from sklearn.mixture import GaussianMixture
from sklearn.utils.estimator_checks import parametrize_with_checks

from crdistance import CRDetector
from crdistance._sklearn_compat import InvalidParameterError
from crdistance.categories import PerCategoryDetector
from crdistance.kmeans import KMeansDetector

D = 8
SUBSPACES = {"bolt": slice(0, 4), "nut": slice(4, 8)}
ROUTINGS = ["nearest_mean", "min_score"]

SAME_NAMESPACE = "by design the fitted state moves to the input's namespace and device"
AUTO_FLAGS_NO_TRAINING_SAMPLE = (
    "the default CRDetector's contamination='auto' is the 99 % point of a Gaussian "
    "reference model; no training sample of make_blobs exceeds it. Tested with "
    "CRDetector(contamination=0.1)."
)
ESTIMATORS_AND_EXPECTED_FAILURES = [
    (PerCategoryDetector(), {
        "check_array_api_same_namespace": SAME_NAMESPACE,
        "check_outliers_fit_predict": AUTO_FLAGS_NO_TRAINING_SAMPLE,
        "check_outliers_train": AUTO_FLAGS_NO_TRAINING_SAMPLE,
    }),
    (PerCategoryDetector(CRDetector(contamination=0.1)), {
        "check_array_api_same_namespace": SAME_NAMESPACE,
    }),
    (PerCategoryDetector(CRDetector(contamination=0.1), routing="min_score"), {
        "check_array_api_same_namespace": SAME_NAMESPACE,
    }),
]
EXPECTED_FAILED_CHECKS = {
    repr(estimator): failures
    for estimator, failures in ESTIMATORS_AND_EXPECTED_FAILURES
}


def _needs_missing_cuda(check):
    """A CUDA build of torch on a machine without a usable GPU must skip."""
    devices = [str(value) for value in getattr(check, "keywords", {}).values()]
    if not any("cuda" in device for device in devices):
        return False
    torch = pytest.importorskip("torch")
    return not torch.cuda.is_available()


@parametrize_with_checks(
    [estimator for estimator, _ in ESTIMATORS_AND_EXPECTED_FAILURES],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS[repr(est)],
)
def test_sklearn_compatible_estimator(estimator, check):
    if _needs_missing_cuda(check):
        pytest.skip("no CUDA device")
    check(estimator)


def product(rng, name, shape, scale=1.0):
    """Normal features of one product: Gaussian in its own 4-D subspace around
    3, with a 0.01 floor of noise in the other features."""
    X = 0.01 * rng.normal(size=(*shape, D))
    X[..., SUBSPACES[name]] += 3 + rng.normal(size=(*shape, 4))
    return scale * X


def training_set(rng, shape, scales=(1.0, 1.0)):
    parts = [product(rng, name, shape, scale)
             for name, scale in zip(SUBSPACES, scales, strict=True)]
    return np.concatenate(parts), np.repeat(list(SUBSPACES), shape[0])


def with_defect(X, index):
    """A copy of bolt samples with a patch (or row) leaving the bolt subspace."""
    X = X.copy()
    X[(slice(None), *index, 5)] += 3.0
    return X


@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("shape", [(300,), (40, 4, 4)], ids=["rows", "patch_maps"])
def test_routes_each_product_to_its_category_and_flags_a_defect(rng, routing, shape):
    X, y = training_set(rng, shape)
    model = PerCategoryDetector(routing=routing).fit(X, y)
    assert model.categories_ == ["bolt", "nut"]
    assert model.category_means_.shape == (2, D)
    assert_allclose(model.category_means_[0, :4], 3, atol=0.1)
    assert_allclose(model.category_means_[0, 4:], 0, atol=0.01)

    bolts, nuts = (product(rng, name, (10, *shape[1:])) for name in SUBSPACES)
    defect_at = (2, 1) if len(shape) == 3 else ()
    defective = with_defect(bolts[:5], defect_at)
    queries = np.concatenate([bolts, nuts, defective])
    expected = ["bolt"] * 10 + ["nut"] * 10 + ["bolt"] * 5
    assert_array_equal(model.route(queries), expected)
    assert_array_equal(model.predict(queries), [1] * 20 + [-1] * 5)
    scores = -model.score_samples(queries)
    assert scores[:20].max() < 1 < 10 < scores[20:].min()
    if len(shape) == 3:  # the anomaly map peaks at the defect
        maps = model.score_patches(defective)
        assert maps.shape == (5, 4, 4)
        peaks = maps.reshape(5, -1).argmax(axis=1)
        assert_array_equal(peaks, np.ravel_multi_index(defect_at, (4, 4)))


@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("shape", [(200,), (30, 3, 5)], ids=["rows", "patch_maps"])
def test_scores_are_the_routed_detector_distances_over_its_threshold(
    rng, routing, shape
):
    # Nuts 10 times larger: thresholds 100 times apart.
    X, y = training_set(rng, shape, scales=(1.0, 10.0))
    model = PerCategoryDetector(routing=routing).fit(X, y)
    thresholds = [detector.threshold_ for detector in model.detectors_]
    assert thresholds[1] > 50 * thresholds[0]
    # Shuffled products and ambiguous queries, so that routing decides.
    queries = np.concatenate([
        product(rng, "bolt", (6, *shape[1:])),
        product(rng, "nut", (6, *shape[1:]), scale=10.0),
        3 * rng.normal(size=(12, *shape[1:], D)),
    ])[rng.permutation(24)]
    routes = model.route(queries)
    codes = np.searchsorted(model.categories_, routes)
    expected_scores = np.array([
        model.detectors_[c].score_samples(queries[i:i + 1])[0] / thresholds[c]
        for i, c in enumerate(codes)
    ])
    assert_allclose(model.score_samples(queries), expected_scores, rtol=1e-10)
    assert_allclose(model.decision_function(queries), expected_scores + 1)
    assert model.offset_ == -1.0 and model.threshold_ == 1.0
    expected_maps = np.concatenate([
        model.detectors_[c].score_patches(queries[i:i + 1]) / thresholds[c]
        for i, c in enumerate(codes)
    ])
    assert_allclose(model.score_patches(queries), expected_maps, rtol=1e-10)

    all_scores = np.stack([detector.score_samples(queries) for detector
                           in model.detectors_])
    if routing == "min_score":  # the best *normalised* score wins
        normalised = all_scores / np.array(thresholds)[:, None]
        assert_array_equal(codes, normalised.argmax(axis=0))
        assert (codes != all_scores.argmax(axis=0)).any()  # raw scores differ
    else:
        means = queries.reshape(24, -1, D).mean(axis=1)
        gaps = np.linalg.norm(means[:, None] - model.category_means_, axis=2)
        assert_array_equal(codes, gaps.argmin(axis=1))
    assert_array_equal(np.unique(codes), [0, 1])


@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("shape", [(200,), (20, 4, 4)], ids=["rows", "patch_maps"])
@pytest.mark.parametrize("labels", [None, "one"])
def test_one_category_is_the_detector_over_its_threshold(rng, routing, shape, labels):
    X, _ = training_set(rng, shape)
    y = None if labels is None else ["part"] * X.shape[0]
    model = PerCategoryDetector(routing=routing).fit(X, y)
    reference = CRDetector(lam=0.01, lam_scale="trace").fit(X)
    threshold = reference.threshold_
    queries = with_defect(np.concatenate([X[:5], X[-5:]]),
                          (1, 1) if len(shape) == 3 else ())
    assert model.categories_ == [None if labels is None else "part"]
    assert model.detectors_[0].threshold_ == threshold
    assert_array_equal(model.score_samples(queries),
                       reference.score_samples(queries) / threshold)
    assert_array_equal(model.score_patches(queries),
                       reference.score_patches(queries) / threshold)
    assert_array_equal(model.predict(queries), reference.predict(queries))
    assert_array_equal(model.route(queries), [model.categories_[0]] * 10)


def test_the_default_detector_is_the_benchmarks_crd():
    model = PerCategoryDetector().fit(np.eye(4) + 1)
    assert model.detectors_[0].get_params() == CRDetector(
        lam=0.01, lam_scale="trace").get_params()


def test_fit_predict_passes_the_categories_on(rng):
    X, y = training_set(rng, (100,))
    model = PerCategoryDetector(CRDetector(contamination=0.1))
    labels = model.fit_predict(X, y)
    assert model.categories_ == ["bolt", "nut"]
    assert_array_equal(labels, model.predict(X))
    assert np.mean(labels == -1) == pytest.approx(0.1, abs=0.02)


@pytest.mark.parametrize("detector", [
    KMeansDetector(n_clusters=8, random_state=0),
    IsolationForest(random_state=0),
], ids=["kmeans", "isolation_forest"])
def test_other_detectors_are_normalised_by_their_own_threshold(rng, detector):
    X, y = training_set(rng, (300,))
    model = PerCategoryDetector(detector).fit(X, y)
    queries = np.concatenate([product(rng, "nut", (5,)),
                              10 * with_defect(product(rng, "bolt", (5,)), ())])
    assert_array_equal(model.route(queries), ["nut"] * 5 + ["bolt"] * 5)
    nut, bolt = model.detectors_[1], model.detectors_[0]
    expected = np.concatenate([nut.score_samples(queries[:5]) / -nut.offset_,
                               bolt.score_samples(queries[5:]) / -bolt.offset_])
    assert_allclose(model.score_samples(queries), expected)
    assert_allclose(model.score_patches(queries), -expected)  # rows: distances
    assert (model.predict(queries[5:]) == -1).all()


def test_integer_labels_and_clone_and_pickle_round_trip(rng):
    X, _ = training_set(rng, (20, 4, 4))
    y = np.repeat([7, 3], 20)
    model = PerCategoryDetector(routing="min_score").fit(X, y)
    assert model.categories_ == [3, 7]
    assert_allclose(model.category_means_[1, :4], 3, atol=0.2)  # 7: the bolts
    queries = with_defect(X[::7], (0, 3))

    copy = pickle.loads(pickle.dumps(model))
    assert copy.categories_ == [3, 7]
    assert_array_equal(copy.route(queries), model.route(queries))
    assert_array_equal(copy.score_patches(queries), model.score_patches(queries))

    fresh = clone(model)
    assert fresh.get_params() == model.get_params()
    assert not hasattr(fresh, "detectors_")
    assert_array_equal(fresh.fit(X, y).score_samples(queries),
                       model.score_samples(queries))


def test_torch_input_is_scored_in_torch(rng):
    torch = pytest.importorskip("torch")
    X, y = training_set(rng, (20, 4, 4))
    queries = with_defect(X[::5], (1, 1))
    reference = PerCategoryDetector().fit(X, y)
    model = PerCategoryDetector().fit(torch.asarray(X), y)
    assert isinstance(model.category_means_, torch.Tensor)
    scores = model.score_samples(torch.asarray(queries))
    assert isinstance(scores, torch.Tensor)
    assert_allclose(scores.numpy(), reference.score_samples(queries), rtol=1e-10)
    assert_array_equal(model.route(torch.asarray(queries)), reference.route(queries))
    assert isinstance(pickle.loads(pickle.dumps(model)).category_means_, np.ndarray)


@pytest.mark.parametrize(("X_shape", "n_labels", "what"), [
    ((10, 3), 9, "10 samples"),
    ((4, 5, 3), 20, "4 images"),  # one label per patch instead of per image
])
def test_y_must_have_one_label_per_sample_or_image(X_shape, n_labels, what):
    X = np.random.default_rng(0).normal(size=X_shape)
    with pytest.raises(ValueError, match=f"{n_labels} category labels but X holds "
                       f"{what}"):
        PerCategoryDetector().fit(X, np.arange(n_labels) % 2)


@pytest.mark.parametrize(("y", "error", "message"), [
    ([0.0, 1.0, np.nan, 1.0], ValueError, "y contains NaN"),
    (np.array(["a", None, "b", "a"], dtype=object), ValueError, "y contains None"),
    ([0.5, 1.25, 2.5, 0.75], ValueError, "continuous values"),
    (np.array(["a", 1, "b", 2], dtype=object), TypeError, "mixes label types"),
    (np.zeros((4, 2)), ValueError, "1d array"),
])
def test_bad_labels_are_refused(y, error, message):
    X = np.random.default_rng(0).normal(size=(4, 3))
    with pytest.raises(error, match=message):
        PerCategoryDetector().fit(X, y)


def test_bad_parameters_are_refused():
    X = np.ones((4, 3))
    with pytest.raises(InvalidParameterError, match="routing"):
        PerCategoryDetector(routing="nearest").fit(X)
    with pytest.raises(InvalidParameterError, match="detector"):
        PerCategoryDetector(detector="crd").fit(X)
    with pytest.raises(TypeError, match="category 'a'.*has no offset_"):
        PerCategoryDetector(GaussianMixture()).fit(
            np.random.default_rng(0).normal(size=(8, 2)), list("aaaabbbb"))


def test_a_category_without_a_positive_threshold_is_named(rng):
    # Category "flat": identical samples sit on the single k-means centre.
    X = np.concatenate([rng.normal(size=(20, 3)), np.ones((5, 3))])
    y = ["noisy"] * 20 + ["flat"] * 5
    with pytest.raises(ValueError, match=re.escape(
            "category 'flat' has the threshold 0.0")):
        PerCategoryDetector(KMeansDetector(n_clusters=1)).fit(X, y)


def test_a_failing_category_fit_is_named(rng):
    X = np.concatenate([rng.normal(size=(20, 3)), np.zeros((5, 3))])
    y = ["good"] * 20 + ["blank"] * 5
    with pytest.raises(ValueError, match="trace") as info:
        PerCategoryDetector().fit(X, y)
    assert "category 'blank'" in " ".join(info.value.__notes__)


def test_scoring_checks_fitting_and_width(rng):
    model = PerCategoryDetector()
    with pytest.raises(Exception, match="not fitted"):
        model.route(np.ones((2, 3)))
    model.fit(*training_set(rng, (50,)))
    with pytest.raises(ValueError, match="X has 3 features"):
        model.score_samples(np.ones((2, 3)))
