"""LocalCRDetector: cells, feature groups, streaming, and its reduction to CRD."""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.metrics import roc_auc_score

from crdistance import CRDetector, LocalCRDetector


@pytest.fixture
def clustered(rng):
    """Normal rows around 4 centres in 6-D; anomalies between the centres."""
    centres = rng.normal(scale=4.0, size=(4, 6))
    normal = centres[rng.integers(0, 4, 2000)] + rng.normal(scale=0.3, size=(2000, 6))
    pairs = rng.integers(0, 4, size=(100, 2))
    between = (centres[pairs[:, 0]] + centres[pairs[:, 1]]) / 2
    anomalies = between[pairs[:, 0] != pairs[:, 1]]
    return normal, anomalies


@pytest.mark.parametrize("lam_scale", ["absolute", "trace"])
def test_one_cell_and_one_group_is_plain_crd(rng, lam_scale):
    X, Y = rng.normal(size=(300, 7)), rng.normal(size=(20, 7))
    local = LocalCRDetector(n_cells=1, lam=0.3, lam_scale=lam_scale).fit(X)
    plain = CRDetector(lam=0.3, lam_scale=lam_scale).fit(X)
    assert_allclose(local.score_patches(Y), plain.score_patches(Y), rtol=1e-10)


def test_cells_partition_the_gram_matrix(clustered):
    normal, _ = clustered
    detector = LocalCRDetector(n_cells=5, random_state=0).fit(normal)
    assert_allclose(detector.cell_grams_[0].sum(axis=0), normal.T @ normal)
    assert detector.cell_counts_[0].sum() == len(normal) == detector.n_samples_seen_


def test_cells_are_fixed_by_the_first_batch_then_streamed(clustered):
    normal, anomalies = clustered
    first, rest = normal[:500], normal[500:]
    streamed = LocalCRDetector(n_cells=4, random_state=0).partial_fit(first)
    for chunk in np.array_split(rest, 3):
        streamed.partial_fit(chunk)
    in_one_go = LocalCRDetector(n_cells=4, random_state=0).partial_fit(first)
    in_one_go.partial_fit(rest)
    assert_allclose(streamed.cell_grams_[0], in_one_go.cell_grams_[0], rtol=1e-12)
    assert_allclose(
        streamed.score_patches(anomalies), in_one_go.score_patches(anomalies),
        rtol=1e-6,
    )


def test_locality_separates_anomalies_between_clusters(clustered):
    normal, anomalies = clustered
    X_test = np.vstack([normal[-300:], anomalies])
    is_anomaly = np.r_[np.zeros(300), np.ones(len(anomalies))]
    train = normal[:-300]
    plain_detector = CRDetector(lam=1.0).fit(train)
    local_detector = LocalCRDetector(n_cells=4, random_state=0).fit(train)
    plain = roc_auc_score(is_anomaly, -plain_detector.score_samples(X_test))
    local = roc_auc_score(is_anomaly, -local_detector.score_samples(X_test))
    assert plain < 0.8 < 0.99 < local


@pytest.mark.parametrize("n_nearest_cells", [1, 2, 5])
def test_score_is_the_smallest_weighted_crd_over_the_nearest_cells(clustered,
                                                                   n_nearest_cells):
    normal, anomalies = clustered
    detector = LocalCRDetector(n_cells=5, n_nearest_cells=n_nearest_cells,
                               random_state=0, chunk_size=37).fit(normal[:1500])
    queries = np.vstack([normal[1500:], anomalies])
    centres, operators = detector.cell_centers_[0], detector.residual_operators_[0]
    # Each row against every cell, one at a time, from the fitted attributes.
    all_cells = np.stack(
        [np.sum((queries @ M) ** 2, axis=1) for M in operators], axis=1
    )
    all_cells *= detector.cell_weights_[0]
    to_centres = np.linalg.norm(queries[:, None, :] - centres[None], axis=2)
    nearest = np.argsort(to_centres, axis=1)[:, :n_nearest_cells]
    expected = np.take_along_axis(all_cells, nearest, axis=1).min(axis=1)
    assert_allclose(detector.score_patches(queries), expected, rtol=1e-8)


def test_feature_groups_combine_by_geometric_mean(rng):
    X, Y = rng.normal(size=(400, 5)), rng.normal(size=(10, 5))
    grouped = LocalCRDetector(n_cells=1, feature_groups=[2, 3]).fit(X)
    parts = [
        LocalCRDetector(n_cells=1).fit(X[:, :2]),
        LocalCRDetector(n_cells=1).fit(X[:, 2:]),
    ]
    expected = np.sqrt(
        parts[0].score_patches(Y[:, :2]) * parts[1].score_patches(Y[:, 2:])
    )
    assert_allclose(grouped.score_patches(Y), expected, rtol=1e-10)


def test_patch_sets(rng):
    images = rng.normal(size=(30, 4, 4, 6)).astype(np.float32)
    detector = LocalCRDetector(
        n_cells=3, feature_groups=[2, 4], random_state=0
    ).fit(images)
    maps = detector.score_patches(images)
    assert maps.shape == (30, 4, 4)
    # An image scores its worst patch; rows of the same patches score the same.
    scores = detector.score_samples(images)
    assert scores.dtype == np.float32
    assert_allclose(scores, -maps.reshape(30, -1).max(axis=1), rtol=1e-6)
    assert_allclose(maps.reshape(-1), detector.score_patches(images.reshape(-1, 6)),
                    rtol=1e-6)
    decision = detector.decision_function(images)
    assert_allclose(decision, scores - detector.offset_, rtol=1e-6)
    assert_array_equal(detector.predict(images), np.where(decision < 0, -1, 1))
    assert (detector.predict(images) == -1).any() and (decision >= 0).any()


@pytest.mark.filterwarnings("ignore:Cells with fewer training rows:UserWarning")
def test_cells_are_capped_by_the_rows_they_need(rng):
    """At most one cell per d_g rows of the first batch, per feature group;
    one cell is plain CRD."""
    X = rng.normal(size=(140, 64))  # the small-embedding case: 140 rows
    with pytest.warns(UserWarning, match=r"fitted \[3, 5\] cells instead"):
        detector = LocalCRDetector(n_cells=16, feature_groups=[40, 24],
                                   random_state=0).fit(X)
    assert detector.n_cells_ == [3, 5]  # 140 // 40 and 140 // 24
    assert [len(c) for c in detector.cell_centers_] == [3, 5]
    assert detector.cell_grams_[1].shape == (5, 24, 24)
    assert detector.score_patches(X[:5]).shape == (5,)
    one_group = LocalCRDetector(n_cells=16, random_state=0)
    with pytest.warns(UserWarning, match="fitted \\[2\\] cells"):
        one_group.fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough rows: no warning
        plain = LocalCRDetector(n_cells=1).fit(X)
    assert_allclose(LocalCRDetector(n_cells=1, lam=0.01).fit(X).score_patches(X[:5]),
                    CRDetector(lam=0.01, lam_scale="trace").fit(X).score_patches(X[:5]),
                    rtol=1e-8)
    assert plain.n_cells_ == [1]


def test_fit_warns_about_cells_with_fewer_rows_than_features(rng):
    # One far, small cluster of 6 rows in 10 dimensions next to a big one.
    X = np.vstack([rng.normal(size=(400, 10)), 50 + rng.normal(size=(6, 10))])
    with pytest.warns(UserWarning, match=r"fewer training rows than features: 1 of 2"):
        LocalCRDetector(n_cells=2, random_state=0).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # partial_fit streams: cells may fill later
        LocalCRDetector(n_cells=2, random_state=0).partial_fit(X)


@pytest.mark.parametrize(
    "params, X_shape, match",
    [
        ({"feature_groups": [2, 2]}, (50, 5), "adding up to the 5 features"),
    ],
)
def test_bad_configuration_is_reported(rng, params, X_shape, match):
    with pytest.raises(ValueError, match=match):
        LocalCRDetector(**params).fit(rng.normal(size=X_shape))
