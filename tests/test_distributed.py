"""Fitting on Dask arrays and merging detectors fitted on disjoint data."""

import numpy as np
import pytest
from _assertions import assert_same_model
from numpy.testing import assert_allclose

from crdistance import CRDetector, merge

da = pytest.importorskip("dask.array")


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        yield client


@pytest.fixture
def features(rng):
    return rng.normal(size=(3000, 12)) @ rng.normal(size=(12, 12))


def test_fit_on_a_local_cluster_equals_in_memory_fit(client, features):
    X = da.from_array(features, chunks=(250, 5))
    distributed_fit = CRDetector(lam=0.5).fit(X)
    assert isinstance(distributed_fit.gram_, np.ndarray)
    assert_same_model(distributed_fit, CRDetector(lam=0.5).fit(features))


def test_dask_patch_sets_and_lazy_scores(client, features):
    images = features.reshape(100, 6, 5, 12)
    distributed_fit = CRDetector(contamination=0.1).fit(
        da.from_array(images, chunks=20)
    )
    reference = CRDetector(contamination=0.1).fit(images)
    assert_same_model(distributed_fit, reference)
    scores = distributed_fit.score_samples(da.from_array(images, chunks=20))
    assert isinstance(scores, da.Array)
    assert_allclose(scores.compute(), reference.score_samples(images), rtol=1e-10)


def test_nan_in_a_dask_block_is_reported(features):
    features[2500, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        CRDetector().fit(da.from_array(features, chunks=(500, 12)))


def test_unknown_chunk_sizes_are_reported(features):
    X = da.from_array(features, chunks=(500, 12))
    X = X[X[:, 0] > 0]
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        CRDetector().fit(X)


@pytest.mark.parametrize("lam_scale", ["absolute", "trace"])
def test_merge_equals_a_single_fit(features, lam_scale):
    parts = np.array_split(features, 3)
    merged = merge(CRDetector(lam=0.2, lam_scale=lam_scale).fit(p) for p in parts)
    assert_same_model(merged, CRDetector(lam=0.2, lam_scale=lam_scale).fit(features))


def test_merge_refuses_incompatible_detectors(features):
    fitted = CRDetector(lam=1.0).fit(features)
    with pytest.raises(ValueError, match="different lam"):
        merge([fitted, CRDetector(lam=2.0).fit(features)])
    with pytest.raises(ValueError, match="different n_features_in_"):
        merge([fitted, CRDetector(lam=1.0).fit(features[:, :5])])
    with pytest.raises(ValueError, match="cannot be merged"):
        merge([CRDetector(contamination=0.1).fit(features)] * 2)
    with pytest.raises(ValueError, match="at least one"):
        merge([])
    with pytest.raises(TypeError, match="CRDetector"):
        merge([fitted, "model.joblib"])
