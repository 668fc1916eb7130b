"""The nearest-neighbour baselines: distances, coreset, thresholds."""

import doctest
import pickle
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.datasets import make_blobs

from crdistance import _neighbors, baselines
from crdistance.baselines import NearestNeighborDetector, greedy_coreset


def reference_distances(queries, bank, n_neighbors, exclude=None):
    """Mean distance to the nearest bank rows by full pairwise distances;
    ``exclude[i, j]`` hides bank row j from query i."""
    distances = cdist(queries, bank)
    if exclude is not None:
        distances[exclude] = np.inf
    return np.sort(distances, axis=1)[:, :n_neighbors].mean(axis=1)


@pytest.fixture
def patches(rng):
    """Patch sets of 12 images, 5 x 4 patches of 6 features, and 3 queries."""
    return rng.normal(size=(12, 5, 4, 6)), rng.normal(size=(3, 5, 4, 6))


@pytest.mark.parametrize("n_neighbors", [1, 3])
def test_distances_match_brute_force(patches, n_neighbors):
    train, queries = patches
    detector = NearestNeighborDetector(n_neighbors=n_neighbors).fit(train)
    expected = reference_distances(
        queries.reshape(-1, 6), train.reshape(-1, 6), n_neighbors
    ).reshape(3, 5, 4)
    np.testing.assert_allclose(detector.score_patches(queries), expected, rtol=1e-10)
    np.testing.assert_allclose(
        detector.score_samples(queries), -expected.max(axis=(1, 2)), rtol=1e-10
    )
    rows = queries.reshape(-1, 6)
    np.testing.assert_allclose(
        detector.score_samples(rows), -expected.ravel(), rtol=1e-10
    )


def test_float32_distances_are_computed_in_float32(patches):
    train, queries = (x.astype(np.float32) for x in patches)
    detector = NearestNeighborDetector().fit(train)
    assert detector.memory_bank_.dtype == np.float32
    distances = detector.score_patches(queries)
    assert distances.dtype == np.float32
    expected = reference_distances(queries.reshape(-1, 6), train.reshape(-1, 6), 1)
    np.testing.assert_allclose(distances.ravel(), expected, rtol=1e-4)


def test_blocks_give_the_same_distances(patches, monkeypatch):
    train, queries = patches
    detector = NearestNeighborDetector(n_neighbors=2).fit(train)
    one_block = detector.score_patches(queries)
    monkeypatch.setattr(_neighbors, "MIN_BLOCK_ROWS", 7)  # blocks of 7 query rows
    monkeypatch.setattr(_neighbors, "BLOCK_BYTES", 0)
    np.testing.assert_allclose(detector.score_patches(queries), one_block, rtol=1e-12)
    refitted = NearestNeighborDetector(n_neighbors=2).fit(train)
    assert refitted.offset_ == pytest.approx(detector.offset_, rel=1e-12)


@pytest.mark.parametrize("n_neighbors", [1, 2])
def test_threshold_leaves_each_row_out(rng, n_neighbors):
    X = rng.normal(size=(60, 3))
    held_out = reference_distances(X, X, n_neighbors, exclude=np.eye(60, dtype=bool))
    detector = NearestNeighborDetector(n_neighbors=n_neighbors).fit(X)
    assert detector.offset_ == pytest.approx(-held_out.max(), rel=1e-12)
    detector = NearestNeighborDetector(n_neighbors=n_neighbors, contamination=0.1)
    detector.fit(X)
    assert detector.offset_ == pytest.approx(np.percentile(-held_out, 10), rel=1e-12)
    assert np.mean(held_out > detector.threshold_) == pytest.approx(0.1, abs=0.02)


def test_threshold_of_patch_sets_leaves_each_image_out(patches):
    train, _ = patches
    image_of_row = np.repeat(np.arange(12), 20)
    rows = train.reshape(-1, 6)
    detector = NearestNeighborDetector(coreset_ratio=0.5, random_state=0).fit(train)
    indices = np.asarray(detector.coreset_indices_)
    exclude = image_of_row[:, None] == image_of_row[indices][None, :]
    held_out = reference_distances(rows, rows[indices], 1, exclude=exclude)
    worst_image = held_out.reshape(12, 20).max(axis=1).max()
    assert detector.offset_ == pytest.approx(-worst_image)


def test_contamination_none_skips_the_threshold(patches):
    train, queries = patches
    unfitted = NearestNeighborDetector(contamination=None)
    assert not hasattr(unfitted, "decision_function")  # available_if: hasattr is honest
    detector = unfitted.fit(train)
    assert not hasattr(detector, "offset_")
    nearest = reference_distances(queries.reshape(-1, 6), train.reshape(-1, 6), 1)
    np.testing.assert_allclose(
        detector.score_samples(queries), -nearest.reshape(3, -1).max(1), rtol=1e-10
    )
    for name in ("decision_function", "predict"):
        assert not hasattr(detector, name)
        with pytest.raises(AttributeError, match=name) as error:
            getattr(detector, name)(queries)
        assert "contamination=None" in str(error.value.__cause__)
    assert hasattr(NearestNeighborDetector(), "decision_function")
    assert hasattr(NearestNeighborDetector(), "predict")


def test_too_few_rows_for_the_neighbours(rng):
    with pytest.raises(ValueError, match="n_samples=3 training row"):
        NearestNeighborDetector(n_neighbors=3).fit(rng.normal(size=(3, 2)))
    one_image = rng.normal(size=(1, 4, 2))
    with pytest.raises(ValueError, match="bank rows outside themselves"):
        NearestNeighborDetector().fit(one_image)
    bank_only = NearestNeighborDetector(contamination=None).fit(one_image)
    assert bank_only.memory_bank_.shape == (4, 2)


def test_coreset_size_subset_and_determinism(patches):
    train, _ = patches
    rows = train.reshape(-1, 6)
    detector = NearestNeighborDetector(coreset_ratio=0.1, random_state=0).fit(train)
    indices = detector.coreset_indices_
    assert indices.shape == (24,) and len(np.unique(indices)) == 24
    np.testing.assert_array_equal(detector.memory_bank_, rows[indices])
    assert detector.memory_bank_.nbytes == 24 * 6 * 8
    again = NearestNeighborDetector(coreset_ratio=0.1, random_state=0).fit(train)
    np.testing.assert_array_equal(again.coreset_indices_, indices)
    other_seed = NearestNeighborDetector(coreset_ratio=0.1, random_state=1).fit(train)
    assert set(other_seed.coreset_indices_) != set(indices)
    tiny = NearestNeighborDetector(
        n_neighbors=3, coreset_ratio=0.001, contamination=None
    ).fit(train)
    assert tiny.memory_bank_.shape == (4, 6)  # at least n_neighbors + 1 rows


def coverage_radius(X, centers):
    return cdist(X, X[centers]).min(axis=1).max()


@pytest.mark.parametrize(
    ("n_features", "projection_dim"), [(5, 128), (5, None), (300, 128), (300, 16)]
)
def test_greedy_coreset_covers_better_than_random(rng, n_features, projection_dim):
    X, _ = make_blobs(
        n_samples=1200,
        n_features=n_features,
        centers=40,
        cluster_std=0.5,
        random_state=0,
    )
    centers = greedy_coreset(X, 40, projection_dim=projection_dim, random_state=0)
    random_radii = [
        coverage_radius(X, rng.choice(len(X), 40, replace=False)) for _ in range(20)
    ]
    assert coverage_radius(X, centers) < min(random_radii)


def test_greedy_coreset_takes_the_farthest_row_each_step(rng):
    X = rng.normal(size=(200, 4))
    centers = greedy_coreset(X, 10, projection_dim=None, random_state=0)
    for step in range(1, 10):
        nearest = cdist(X, X[centers[:step]]).min(axis=1)
        assert nearest[centers[step]] == pytest.approx(nearest.max(), rel=1e-5)


def test_greedy_coreset_of_duplicates_stays_distinct():
    X = np.repeat(np.eye(3), 4, axis=0)  # 3 distinct rows, 4 copies each
    centers = greedy_coreset(X, 12, random_state=0)
    assert sorted(centers.tolist()) == list(range(12))
    assert len({tuple(X[c]) for c in centers[:3]}) == 3


@pytest.mark.parametrize("n_centers", [0, 13])
def test_greedy_coreset_rejects_bad_sizes(n_centers):
    with pytest.raises(ValueError, match=r"n_centers must be in \[1, 12\]"):
        greedy_coreset(np.ones((12, 2)), n_centers)


def test_torch_input_stays_in_torch(patches):
    torch = pytest.importorskip("torch")
    train, queries = (x.astype(np.float32) for x in patches)
    params = dict(n_neighbors=2, coreset_ratio=0.5, random_state=0)
    numpy_detector = NearestNeighborDetector(**params).fit(train)
    detector = NearestNeighborDetector(**params).fit(torch.from_numpy(train))
    assert isinstance(detector.memory_bank_, torch.Tensor)
    np.testing.assert_array_equal(
        detector.coreset_indices_.numpy(), numpy_detector.coreset_indices_
    )
    distances = detector.score_patches(torch.from_numpy(queries))
    assert isinstance(distances, torch.Tensor) and distances.shape == (3, 5, 4)
    np.testing.assert_allclose(
        distances.numpy(), numpy_detector.score_patches(queries), rtol=1e-4
    )
    restored = pickle.loads(pickle.dumps(detector))
    assert isinstance(restored.memory_bank_, np.ndarray)
    np.testing.assert_allclose(
        restored.score_patches(torch.from_numpy(queries)).numpy(), distances.numpy()
    )


def test_faiss_matches_brute_force(patches):
    pytest.importorskip("faiss")
    train, queries = (x.astype(np.float32) for x in patches)
    brute = NearestNeighborDetector(n_neighbors=2, algorithm="brute").fit(train)
    faiss_detector = NearestNeighborDetector(n_neighbors=2, algorithm="faiss")
    faiss_detector.fit(train)
    np.testing.assert_allclose(
        faiss_detector.score_patches(queries), brute.score_patches(queries), rtol=1e-4
    )


class ExactFlatL2:
    """faiss.IndexFlatL2's interface over an exact search, to test the faiss
    path where faiss is not installed."""

    searches = 0

    def __init__(self, n_features):
        self.n_features = n_features

    def add(self, rows):
        assert rows.dtype == np.float32 and rows.flags.c_contiguous
        assert rows.shape[1] == self.n_features
        self.rows = rows

    def search(self, queries, k):
        assert queries.dtype == np.float32 and queries.flags.c_contiguous
        ExactFlatL2.searches += 1
        sq = cdist(queries, self.rows, "sqeuclidean")
        nearest = np.argsort(sq, axis=1)[:, :k]
        return np.take_along_axis(sq, nearest, axis=1), nearest


def test_auto_searches_numpy_input_with_faiss(patches, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setitem(sys.modules, "faiss", SimpleNamespace(IndexFlatL2=ExactFlatL2))
    monkeypatch.setattr(baselines, "faiss_installed", lambda: True)
    monkeypatch.setattr(ExactFlatL2, "searches", 0)
    train, queries = patches
    detector = NearestNeighborDetector(n_neighbors=2).fit(train)
    expected = reference_distances(queries.reshape(-1, 6), train.reshape(-1, 6), 2)
    np.testing.assert_allclose(detector.score_patches(queries).ravel(), expected)
    assert ExactFlatL2.searches == 1
    detector.score_patches(torch.from_numpy(queries))  # torch: brute force
    assert ExactFlatL2.searches == 1


def test_faiss_requested_but_missing(patches, monkeypatch):
    monkeypatch.setattr(baselines, "faiss_installed", lambda: False)
    with pytest.raises(ImportError, match="faiss"):
        NearestNeighborDetector(algorithm="faiss").fit(patches[0])


def test_all_and_doctests():
    assert sorted(baselines.__all__) == ["NearestNeighborDetector", "greedy_coreset"]
    assert doctest.testmod(baselines).failed == 0
