"""GRADDetector: estimator checks, training record, shapes, reproducibility,
persistence of the fitted state and detection on synthetic feature maps."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

torch = pytest.importorskip("torch")

from crdistance.grad import GRADDetector  # noqa: E402

SMALL = {"hidden_channels": 8, "n_blocks": 1, "max_epochs": 3, "progress": False}
TRAINED_ON_FIT_DATA = (
    "contamination='max' puts the threshold at the largest training distance: by "
    "design no training sample is an outlier. Tested with contamination=0.1."
)

FLOAT32_BATCHES = (
    "float32 convolutions block their sums by batch size, so a sample's score moves "
    "by ~1e-7 relative with the batch it is scored in (the check asks for 1e-7 "
    "absolute); test_batch_independence bounds it at 1e-5"
)


@parametrize_with_checks(
    [GRADDetector(**SMALL, random_state=0),
     GRADDetector(**SMALL, contamination=0.1, random_state=0)],
    expected_failed_checks=lambda est: {
        "check_methods_subset_invariance": FLOAT32_BATCHES,
        **({} if est.contamination != "max" else {
            "check_outliers_train": TRAINED_ON_FIT_DATA,
            "check_outliers_fit_predict": TRAINED_ON_FIT_DATA,
        })},
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


def _maps(n, rng, h=6, w=6, d=8, shift=0.0):
    """Smooth random feature maps: a per-image pattern of low rank plus noise."""
    basis = rng.normal(size=(3, d))
    weights = rng.normal(size=(n, h, w, 3))
    return (weights @ basis + shift + 0.05 * rng.normal(size=(n, h, w, d))).astype(
        np.float32)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    normal = _maps(48, rng)
    detector = GRADDetector(hidden_channels=16, max_epochs=8, random_state=0,
                            progress=False).fit(normal)
    return detector, normal


def test_fitted_attributes(fitted):
    detector, normal = fitted
    assert detector.patch_shape_ == (6, 6)
    assert detector.n_features_in_ == 8
    assert detector.mean_.shape == detector.scale_.shape == (8,)
    assert 1 <= detector.best_epoch_ <= detector.n_iter_ <= 8
    assert len(detector.loss_curve_) == detector.n_iter_
    assert len(detector.validation_loss_curve_) == detector.n_iter_
    assert detector.loss_curve_[-1] < detector.loss_curve_[0]
    assert detector.network_state_["global_grid"].shape == (1, 8 * 36, 4, 4)
    assert detector.network_state_["local_grid"].shape == (1, 8, 8, 8)
    assert all(v.dtype == np.float32 for k, v in detector.network_state_.items()
               if not k.endswith("num_batches_tracked"))


def test_shapes_and_consistency(fitted):
    detector, normal = fitted
    patches = detector.score_patches(normal[:5])
    assert patches.shape == (5, 6, 6) and patches.dtype == np.float64
    assert np.all(patches >= 0)
    np.testing.assert_allclose(detector.score_samples(normal[:5]),
                               -patches.max(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(detector.decision_function(normal[:5]),
                               detector.score_samples(normal[:5]) - detector.offset_)
    # contamination="max": no fitting image is an outlier.
    assert np.all(detector.predict(normal) == 1)
    # 3-D input: the same patches counted as (n, h*w, d) form another grid.
    with pytest.raises(ValueError, match="patch grid"):
        detector.score_patches(normal.reshape(48, 36, 8)[:2])


def test_batch_independence(fitted):
    detector, normal = fitted
    together = detector.score_patches(normal[:6])
    alone = np.concatenate([detector.score_patches(normal[i:i + 1])
                            for i in range(6)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


def test_localises_an_anomalous_patch(fitted):
    detector, normal = fitted
    rng = np.random.default_rng(1)
    queries = _maps(8, rng)
    queries = queries - queries.mean(axis=(0, 1, 2)) + normal.mean(axis=(0, 1, 2))
    defective = queries.copy()
    defective[:, 2, 3] += 8 * detector.scale_.astype(np.float32)
    scores = detector.score_patches(defective)
    assert np.all(scores.reshape(8, -1).argmax(axis=1) == 2 * 6 + 3)
    assert np.all(detector.score_samples(defective)
                  < detector.score_samples(queries))
    assert np.all(detector.predict(defective) == -1)


def test_reproducible_and_leaves_torch_seed(fitted):
    detector, normal = fitted
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    again = clone(detector).fit(normal)
    assert torch.rand(1) == expected
    for name, value in detector.network_state_.items():
        np.testing.assert_array_equal(value, again.network_state_[name], err_msg=name)
    assert again.offset_ == detector.offset_
    other = clone(detector).set_params(random_state=1).fit(normal)
    assert not np.array_equal(other.network_state_["local_grid"],
                              detector.network_state_["local_grid"])


def test_pickle_round_trip_and_rebuilt_network(fitted):
    detector, normal = fitted
    loaded = pickle.loads(pickle.dumps(detector))
    assert "_net" not in loaded.__dict__
    np.testing.assert_array_equal(loaded.score_patches(normal[:3]),
                                  detector.score_patches(normal[:3]))


def test_early_stopping_and_no_validation():
    rng = np.random.default_rng(2)
    normal = _maps(20, rng)
    stopped = GRADDetector(hidden_channels=8, max_epochs=50, n_iter_no_change=1,
                           tol=1e9, random_state=0, progress=False).fit(normal)
    assert stopped.n_iter_ == 2 and stopped.best_epoch_ == 1
    plain = GRADDetector(hidden_channels=8, max_epochs=2, validation_fraction=0.0,
                         random_state=0, progress=False).fit(normal)
    assert plain.validation_loss_curve_ == [] and plain.n_iter_ == 2


def test_rows_and_errors():
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(40, 5))
    detector = GRADDetector(hidden_channels=8, max_epochs=2, random_state=0,
                            progress=False).fit(rows)
    assert detector.patch_shape_ == (1, 1)
    assert detector.score_patches(rows).shape == (40,)
    with pytest.raises(ValueError, match="only 1 sample"):
        GRADDetector(progress=False).fit(rows[:1])
    with pytest.raises(ValueError, match="5 features"):
        detector.score_samples(rng.normal(size=(3, 4)))
    with pytest.raises(ValueError, match="hidden_channels"):
        GRADDetector(hidden_channels=0).fit(rows)


def test_one_model_for_two_products():
    """Two products in one model: each product's defects are found, and a
    normal image of either product scores like the normal images."""
    rng = np.random.default_rng(4)
    product_a = _maps(40, rng, shift=2.0)
    product_b = _maps(40, np.random.default_rng(5), shift=-2.0)
    detector = GRADDetector(hidden_channels=16, max_epochs=10, random_state=0,
                            progress=False).fit(np.concatenate([product_a, product_b]))
    for product, seed in ((product_a, 6), (product_b, 7)):
        queries = product[:6] + 0.05 * np.random.default_rng(seed).normal(
            size=product[:6].shape).astype(np.float32)
        defective = queries.copy()
        defective[:, 4, 1] += 8 * detector.scale_.astype(np.float32)
        assert np.all(detector.score_samples(defective)
                      < detector.score_samples(queries))
