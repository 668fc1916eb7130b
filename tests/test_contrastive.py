"""CSE: the contrastive embedder, its k-means scorer and its training data."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline

from crdistance import CRDetector
from crdistance.kmeans import KMeansDetector

torch = pytest.importorskip("torch")
from crdistance.featurizer import ContrastiveEmbedder  # noqa: E402

SMALL = {"n_components": 4, "hidden_size": 16, "progress": False}


def patch_maps(rng, n_images=24, shape=(6, 6), d=8):
    """Normal patch maps: two clusters of patches in d dimensions."""
    centres = rng.normal(size=(2, d)) * 3
    which = rng.integers(0, 2, (n_images, *shape))
    maps = centres[which] + 0.3 * rng.normal(size=(n_images, *shape, d))
    return maps.astype(np.float32), centres


def defective_copies(rng, maps, shift):
    """Copies with a square of shifted patches; the squares' shares."""
    defective, shares = maps.copy(), np.zeros(maps.shape[:-1])
    for index in range(len(maps)):
        top, left = rng.integers(0, maps.shape[1] - 2, 2)
        defective[index, top:top + 2, left:left + 2] += shift
        shares[index, top:top + 2, left:left + 2] = 1
    return defective, shares


@pytest.fixture
def training(rng):
    maps, _ = patch_maps(rng)
    shift = np.zeros(maps.shape[-1], dtype=np.float32)
    shift[0] = 4.0
    defective, shares = defective_copies(rng, maps, shift)
    return maps, defective, shares


def test_loss_decreases_and_defects_separate(training):
    maps, defective, shares = training
    embedder = ContrastiveEmbedder(max_epochs=30, early_stopping=False,
                                   batch_size=256, random_state=0, **SMALL)
    embedder.fit(maps, defective=defective, defect_shares=shares)
    assert embedder.n_iter_ == 30 and embedder.defect_source_ == "given"
    assert embedder.loss_curve_[-1] < 0.85 * embedder.loss_curve_[0]
    assert embedder.push_loss_curve_[-1] < 0.5 * embedder.push_loss_curve_[0]
    assert len(embedder.validation_loss_curve_) == 30
    # 2 of the 24 defective copies are held out; 4 defective patches in each.
    assert embedder.n_defective_patches_ == 22 * 4
    # Defective patches end up far from the normal direction.
    center = embedder.transform(maps).reshape(-1, 4).mean(axis=0)
    similarity = embedder.transform(defective) @ (center / np.linalg.norm(center))
    assert similarity[shares == 1].mean() < similarity[shares == 0].mean() - 0.3
    # And a detector on the embedding finds them.
    detector = CRDetector().fit(embedder.transform(maps))
    scores = detector.score_patches(embedder.transform(defective))
    assert roc_auc_score(shares.ravel() > 0, scores.ravel()) > 0.95


def test_decoder_is_frozen_and_training_is_seeded(training):
    maps, defective, shares = training
    fits = [ContrastiveEmbedder(max_epochs=epochs, early_stopping=False,
                                random_state=seed, **SMALL).fit(
        maps, defective=defective, defect_shares=shares)
        for epochs, seed in ((1, 0), (6, 0), (6, 0), (6, 1))]
    # The decoder after 1 and after 6 epochs is its initialisation.
    for before, after in zip(fits[0].decoder_coefs_, fits[1].decoder_coefs_,
                             strict=True):
        np.testing.assert_array_equal(before, after)
    assert not np.array_equal(fits[0].coefs_[0], fits[1].coefs_[0])
    # Same seed, same embedding; another seed, another one.
    np.testing.assert_array_equal(fits[1].transform(maps), fits[2].transform(maps))
    assert not np.allclose(fits[1].transform(maps), fits[3].transform(maps))


def test_training_leaves_the_global_torch_seed_alone(training):
    maps, defective, shares = training
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ContrastiveEmbedder(max_epochs=1, random_state=0, **SMALL).fit(
        maps, defective=defective, defect_shares=shares)
    torch.testing.assert_close(torch.rand(3), expected)


def test_transform_matches_the_exported_module(training):
    maps, defective, shares = training
    embedder = ContrastiveEmbedder(max_epochs=2, random_state=0, **SMALL).fit(
        maps, defective=defective, defect_shares=shares)
    embedded = embedder.transform(maps)
    assert embedded.shape == (*maps.shape[:-1], 4) and embedded.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=-1), 1, atol=1e-5)
    module = embedder.embedding_module()
    with torch.no_grad():
        maps_first = torch.from_numpy(maps).permute(0, 3, 1, 2)
        from_torch = module(maps_first).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(from_torch, embedded, atol=1e-5)


def test_early_stopping_and_best_epoch(training):
    maps, defective, shares = training
    # A tolerance no epoch can beat: the first epoch is best, then 2 stale ones.
    embedder = ContrastiveEmbedder(max_epochs=50, n_iter_no_change=2, tol=1e3,
                                   random_state=0, **SMALL).fit(
        maps, defective=defective, defect_shares=shares)
    assert embedder.n_iter_ == 3 and embedder.best_epoch_ == 1


def test_feature_space_defects_in_a_pipeline(rng):
    maps, _ = patch_maps(rng)
    pipeline = make_pipeline(
        ContrastiveEmbedder(max_epochs=3, random_state=0, **SMALL),
        KMeansDetector(n_clusters=4, random_state=0))
    pipeline.fit(maps)
    embedder = pipeline[0]
    assert embedder.defect_source_ == "features" and embedder.n_defective_patches_ > 0
    assert pipeline.score_samples(maps[:3]).shape == (3,)
    rows = maps.reshape(-1, maps.shape[-1])[:200]
    flat = ContrastiveEmbedder(max_epochs=2, random_state=0, **SMALL).fit(rows)
    assert flat.transform(rows).shape == (200, 4)
    assert flat.n_defective_patches_ == 180  # 10 % of the noisy rows held out


def test_progress_is_reported(training, capsys):
    maps, defective, shares = training
    ContrastiveEmbedder(max_epochs=2, random_state=0, n_components=4,
                        hidden_size=16, progress=True).fit(
        maps, defective=defective, defect_shares=shares)
    assert "train embedding: 2/2 epochs in" in capsys.readouterr().err


@pytest.mark.parametrize("arguments, match", [
    ({"defect_shares": np.zeros((2, 6, 6))}, "defect_shares needs defective"),
    ({"defective": np.zeros((2, 6, 5, 8))}, "defective has shape"),
    ({"defective": np.full((2, 6, 6, 8), np.nan)}, "finite"),
    ({"defective": np.zeros((2, 6, 6, 8)), "defect_shares": np.zeros((2, 6))},
     "defect_shares has shape"),
    ({"defective": np.zeros((2, 6, 6, 8)), "defect_shares": np.full((2, 6, 6), 2.0)},
     r"\[0, 1\]"),
    ({"defective": np.zeros((2, 6, 6, 8)), "defect_shares": np.full((2, 6, 6), 0.1)},
     "min_share"),
])
def test_bad_defects_are_refused(rng, arguments, match):
    maps, _ = patch_maps(rng, n_images=4)
    with pytest.raises(ValueError, match=match):
        ContrastiveEmbedder(max_epochs=1, random_state=0, **SMALL).fit(
            maps, **arguments)


def test_kmeans_detector_bank_and_scores(rng):
    maps, centres = patch_maps(rng, d=3)
    detector = KMeansDetector(n_clusters=2, random_state=0).fit(maps)
    found = detector.cluster_centers_[np.argsort(detector.cluster_centers_[:, 0])]
    np.testing.assert_allclose(found, centres[np.argsort(centres[:, 0])], atol=0.1)
    distances = detector.score_patches(maps[:2])
    assert distances.shape == (2, 6, 6)
    np.testing.assert_allclose(detector.score_samples(maps[:2]),
                               -distances.reshape(2, -1).max(axis=1))
    # Never more centres than distinct rows; a subsample of max_fit_rows rows.
    few = KMeansDetector(n_clusters=10, random_state=0).fit(np.repeat(centres, 5, 0))
    assert few.n_clusters_ == 2
    sub = KMeansDetector(n_clusters=2, max_fit_rows=50, random_state=0).fit(maps)
    assert sub.cluster_centers_.shape == (2, 3)
    assert np.all(sub.predict(maps) == 1)  # "max": no training image is an outlier


def test_defect_training_set_on_real_images(shared_data):
    from crdistance.featurizer import PatchFeaturizer
    from crdistance.model_selection import defect_training_set, synthesize_defects

    folder = shared_data / "magnetic_tile" / "train" / "good"
    paths = sorted(folder.glob("*.jpg"))[:4]
    featurizer = PatchFeaturizer(backbone="resnet18", weights=None, resize=64,
                                 progress=False).fit(paths)
    train = defect_training_set(paths, featurizer, n_per_image=2, random_state=0)
    assert train.normal.shape == (4, 8, 8, 384)
    assert train.defective.shape == (8, 8, 8, 384)
    np.testing.assert_array_equal(train.source, [0, 0, 1, 1, 2, 2, 3, 3])
    # The shares are the masks of the same draw, brought to the grid: their
    # mean is each mask's area share, and they are zero away from the mask.
    from crdistance.model_selection import read_image
    images = [read_image(p) for p in paths]
    _, masks = synthesize_defects(images, n_per_image=2,
                                  random_state=np.random.RandomState(0))
    for share, mask in zip(train.shares, masks, strict=True):
        assert share.mean() == pytest.approx(mask.mean(), abs=0.01)
        assert share.max() > 0
    # Only the defective copies' features change where the shares are 0 far away.
    assert not np.allclose(train.defective[0], train.normal[0])
    with pytest.raises(ValueError, match="may not set"):
        defect_training_set(paths, featurizer, defects={"n_per_image": 3})
