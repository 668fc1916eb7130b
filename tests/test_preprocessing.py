"""PatchTransformer: row transformers on patch features."""

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.kernel_approximation import RBFSampler
from sklearn.pipeline import make_pipeline

from crdistance import CRDetector, save
from crdistance.preprocessing import PatchTransformer


@pytest.mark.parametrize("shape", [(40, 8), (4, 10, 8), (4, 2, 5, 8)])
def test_the_patch_grid_is_kept(shape, rng):
    X = rng.normal(size=shape)
    step = PatchTransformer(PCA(n_components=3)).fit(X)
    out = step.transform(X)
    assert out.shape == (*shape[:-1], 3)
    rows = PCA(n_components=3).fit(X.reshape(-1, 8)).transform(X.reshape(-1, 8))
    np.testing.assert_allclose(np.abs(out.reshape(-1, 3)), np.abs(rows), atol=1e-10)


def test_chunks_give_the_same_result(rng):
    X = rng.normal(size=(3, 7, 7, 4))
    whole = PatchTransformer(RBFSampler(n_components=16, random_state=0)).fit(X)
    chunked = PatchTransformer(RBFSampler(n_components=16, random_state=0),
                               chunk_size=10).fit(X)
    np.testing.assert_allclose(whole.transform(X), chunked.transform(X))


def test_the_transformer_is_fitted_on_a_seeded_sample(rng):
    X = rng.normal(size=(10, 10, 10, 2)) * [1.0, 5.0]
    first = PatchTransformer(PCA(), max_fit_rows=50, random_state=0).fit(X)
    second = PatchTransformer(PCA(), max_fit_rows=50, random_state=0).fit(X)
    full = PatchTransformer(PCA(), max_fit_rows=None).fit(X)
    np.testing.assert_array_equal(first.transformer_.mean_, second.transformer_.mean_)
    assert not np.allclose(first.transformer_.mean_, full.transformer_.mean_)


def test_kernel_features_before_crd_in_a_pipeline(rng):
    normal = rng.normal(size=(20, 4, 4, 3))
    model = make_pipeline(
        PatchTransformer(RBFSampler(n_components=64, gamma=0.5, random_state=0)),
        CRDetector(lam=0.01, lam_scale="trace"),
    ).fit(normal)
    shifted = normal[:5].copy()
    shifted[:, 1, 1] += 4.0  # a local defect far from the normal patches
    assert np.all(model.score_samples(shifted) < model.score_samples(normal[:5]))
    with pytest.raises(TypeError, match="save supports"):
        save(model, "unused.npz")


def test_bad_features_are_refused(rng):
    step = PatchTransformer(PCA(n_components=2)).fit(rng.normal(size=(20, 3)))
    with pytest.raises(ValueError, match="3 features"):
        step.transform(rng.normal(size=(5, 4)))
    with pytest.raises(ValueError, match="NaN|infinity"):
        step.transform(np.full((2, 3), np.nan))
