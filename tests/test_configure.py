"""Synthetic defects and the label-free configuration (crdistance.model_selection)."""

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from crdistance import CRDetector, LocalCRDetector
from crdistance.model_selection import (
    DEFECT_KINDS,
    default_candidates,
    foreground,
    patch_masks,
    perlin_noise,
    rank_detectors,
    synthesize_defects,
)


def textures(n=4, shape=(48, 64), channels=None, seed=0):
    rng = np.random.default_rng(seed)
    size = shape if channels is None else (*shape, channels)
    return [rng.integers(90, 166, size, dtype=np.uint8) for _ in range(n)]


def test_perlin_noise_is_smooth_seeded_and_bounded():
    first = perlin_noise((40, 60), 4, np.random.RandomState(0))
    second = perlin_noise((40, 60), 4, np.random.RandomState(0))
    assert first.shape == (40, 60)
    np.testing.assert_array_equal(first, second)
    assert np.abs(first).max() <= 1.5
    # Smooth: neighbouring pixels differ far less than the range.
    assert np.abs(np.diff(first, axis=1)).max() < 0.25 * np.ptp(first)


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_each_kind_changes_the_masked_region_only(kind):
    images = textures(channels=3)
    defective, masks = synthesize_defects(images, kinds=[kind], random_state=1,
                                          opacity=(1.0, 1.0))
    for image, changed, mask in zip(images, defective, masks, strict=True):
        assert changed.shape == image.shape and changed.dtype == np.uint8
        assert mask.any()
        far = ~binary_dilation(mask, iterations=5)
        np.testing.assert_array_equal(changed[far], image[far])
        assert np.abs(changed[mask].astype(int) - image[mask]).mean() > 0


def test_defects_are_seeded_and_respect_max_area():
    images = textures(n=6)
    first = synthesize_defects(images, random_state=3, max_area=0.02, n_per_image=3)
    second = synthesize_defects(images, random_state=3, max_area=0.02, n_per_image=3)
    assert len(first[0]) == 18
    for a, b in zip(first[0], second[0], strict=True):
        np.testing.assert_array_equal(a, b)
    # The blob lies inside an ellipse of at most max_area (plus the small
    # fallback disc).
    assert max(mask.mean() for mask in first[1]) <= 0.02 + 13 / (48 * 64)


def test_noise_on_a_gray_rgb_image_stays_gray():
    gray = [np.repeat(image[..., None], 3, axis=2) for image in textures()]
    defective, _ = synthesize_defects(gray, kinds=["noise"], random_state=0)
    for image in defective:
        assert np.array_equal(image[..., 0], image[..., 1])
        assert np.array_equal(image[..., 0], image[..., 2])


def test_defects_land_on_the_object():
    image = np.full((64, 64), 230, dtype=np.uint8)
    image[20:44, 24:40] = 40  # a dark part on a bright background
    assert foreground(image)[32, 32] and not foreground(image)[2, 2]
    _, masks = synthesize_defects([image, image.copy()] * 10, kinds=["intensity"],
                                  random_state=0, max_area=0.01)
    near_object = binary_dilation(image < 100, iterations=6)
    assert np.mean([np.mean(near_object[mask]) for mask in masks]) > 0.9
    # A texture has no border colour to separate: the whole image counts.
    assert foreground(textures(n=1)[0]).all()


@pytest.mark.parametrize("arguments, match", [
    ({"kinds": ["scratch"]}, "kinds must be"),
    ({"kinds": []}, "kinds must be"),
    ({"opacity": (0.8, 0.2)}, "opacity"),
    ({"max_area": 0}, "max_area"),
    ({"n_per_image": 0}, "n_per_image"),
    ({"placement": "edge"}, "placement"),
])
def test_bad_defect_arguments_are_refused(arguments, match):
    with pytest.raises(ValueError, match=match):
        synthesize_defects(textures(), **arguments)


def test_bad_defect_images_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        synthesize_defects([np.zeros((32, 32))] * 2)
    with pytest.raises(ValueError, match="at least two images"):
        synthesize_defects(textures(n=1))
    defective, _ = synthesize_defects(textures(n=1), kinds=["blur"], random_state=0)
    assert len(defective) == 1


def test_patch_masks_follow_resize_and_crop():
    mask = np.zeros((40, 80), dtype=bool)
    mask[:20, :40] = True  # the top-left quarter
    shares = patch_masks([mask], (4, 4), resize=64)
    np.testing.assert_allclose(shares[0][:2, :2], 1)
    np.testing.assert_allclose(shares[0][2:], 0)
    # A centre crop of half the side: the quarter covers the crop's top-left.
    shares = patch_masks([mask], (4, 4), resize=64, crop_size=32)
    np.testing.assert_allclose(shares[0][:2, :2], 1)
    np.testing.assert_allclose(shares[0][2:, 2:], 0)


def test_rank_detectors_scores_synthetic_defects(rng):
    basis = rng.normal(size=(3, 8))
    normal = (rng.normal(size=(30, 4, 4, 3)) @ basis)
    train, held_out = normal[:20], normal[20:]
    defective = held_out.copy()
    shares = np.zeros((10, 4, 4))
    defective[:, 1, 2] += 3 * rng.normal(size=(10, 8))  # off the normal subspace
    shares[:, 1, 2] = 1
    candidates = {"crd": CRDetector(lam=0.01, lam_scale="trace"),
                  "local": LocalCRDetector(n_cells=2, random_state=0)}
    results = rank_detectors(candidates, train, held_out, defective, shares)
    assert [r["name"] for r in results] == ["crd", "local"]
    for result in results:
        assert result["image_auroc"] > 0.95 and result["patch_auroc"] > 0.95
        assert result["score"] == pytest.approx(
            (result["image_auroc"] + result["patch_auroc"]) / 2)
        assert hasattr(result["detector"], "offset_")
    assert not hasattr(candidates["crd"], "offset_")  # candidates are cloned
    with pytest.raises(ValueError, match="do not match"):
        rank_detectors(candidates, train, held_out, defective, shares[:, :2])


def test_default_candidates_cover_groups_weights_and_cells():
    names = list(default_candidates([32, 96]))
    assert names[0].startswith("crd")
    assert any("per-layer" in name for name in names)
    assert any("weights=None" in name for name in names)
    assert len(default_candidates()) < len(names)
    local = default_candidates([32, 96])["local_crd cells=64 weights=None per-layer"]
    assert local.get_params()["feature_groups"] == [32, 96]
    assert local.get_params()["cell_weights"] is None


def test_select_pipeline_on_real_images(shared_data):
    pytest.importorskip("torch")
    from crdistance.featurizer import PatchFeaturizer
    from crdistance.model_selection import select_pipeline

    folder = shared_data / "magnetic_tile" / "train" / "good"
    paths = sorted(folder.glob("*.jpg"))[:12]
    candidates = {"crd": CRDetector(lam=0.01, lam_scale="trace"),
                  "local": LocalCRDetector(n_cells=2, random_state=0)}
    featurizer = PatchFeaturizer(backbone="mobilenet_v2", weights=None, resize=64,
                                 progress=False)
    result = select_pipeline(paths, featurizer, candidates=candidates,
                             random_state=0)
    assert result.best in candidates
    assert [r["name"] for r in result.results] == ["crd", "local"]
    assert all("detector" not in r for r in result.results)
    scores = result.pipeline.score_samples([str(p) for p in paths[:2]])
    assert scores.shape == (2,) and np.all(np.isfinite(scores))
    with pytest.raises(ValueError, match="at least 8"):
        select_pipeline(paths[:6], featurizer, candidates=candidates)


def test_local_detector_raw_cell_weights(rng):
    centres = np.array([[5.0, 0, 0], [0, 5.0, 0]])
    spread = np.r_[np.full(200, 0.05), np.full(200, 1.0)]
    X = centres[np.repeat([0, 1], 200)] + rng.normal(size=(400, 3)) * spread[:, None]
    balanced = LocalCRDetector(n_cells=2, random_state=0).fit(X)
    raw = LocalCRDetector(n_cells=2, cell_weights=None, random_state=0).fit(X)
    np.testing.assert_array_equal(raw.cell_weights_[0], np.ones(2))
    assert np.ptp(balanced.cell_weights_[0]) > 1
    np.testing.assert_array_equal(raw.cell_centers_[0], balanced.cell_centers_[0])
    assert not np.allclose(raw.score_samples(X), balanced.score_samples(X))
