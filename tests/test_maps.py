"""anomaly_maps: bilinear upsampling and Gaussian blur of patch scores."""


import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from crdistance.maps import anomaly_maps


@pytest.fixture
def scores(rng):
    return rng.random((3, 28, 28), dtype=np.float32)


@pytest.mark.parametrize("size", [(224, 224), (300, 517), (17, 9), (28, 28)])
def test_upsampling_matches_torch_bilinear(scores, size):
    torch = pytest.importorskip("torch")
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(scores)[:, None],
        size=size,
        mode="bilinear",
        align_corners=False,
    )[:, 0]
    maps = anomaly_maps(scores, size, sigma=0)
    assert maps.shape == (3, *size) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, expected.numpy(), atol=1e-5)


def test_each_map_is_blurred_on_its_own(scores):
    scores[1] = 0.0
    sharp = anomaly_maps(scores, (224, 200), sigma=0)
    blurred = anomaly_maps(scores, (224, 200), sigma=4.0)
    assert not blurred[1].any()
    for sharp_map, blurred_map in zip(sharp, blurred, strict=True):
        expected = gaussian_filter(sharp_map, 4.0)
        np.testing.assert_allclose(blurred_map, expected, rtol=1e-5)


def test_constant_scores_give_constant_maps():
    maps = anomaly_maps(np.full((1, 4, 5), 2.5), (33, 47))
    assert maps.dtype == np.float64
    np.testing.assert_allclose(maps, 2.5)


def test_one_size_per_image(scores):
    sizes = [(300, 200), (120, 160), (64, 64)]
    maps = anomaly_maps(scores, sizes)
    assert isinstance(maps, list) and [m.shape for m in maps] == sizes
    for grid, size, anomaly_map in zip(scores, sizes, maps, strict=True):
        np.testing.assert_array_equal(anomaly_map, anomaly_maps(grid[None], size)[0])


def test_torch_scores_give_the_numpy_maps(scores):
    torch = pytest.importorskip("torch")
    maps = anomaly_maps(torch.from_numpy(scores), (56, 70))
    assert isinstance(maps, np.ndarray)
    np.testing.assert_array_equal(maps, anomaly_maps(scores, (56, 70)))


def test_maps_peak_at_the_anomalous_patch():
    scores = np.zeros((1, 14, 14))
    scores[0, 3, 10] = 1.0
    anomaly_map = anomaly_maps(scores, (140, 280))[0]
    row, column = np.unravel_index(np.argmax(anomaly_map), anomaly_map.shape)
    assert (row // 10, column // 20) == (3, 10)


@pytest.mark.parametrize(
    ("patch_scores", "image_size", "sigma", "match"),
    [
        (np.zeros((28, 28)), (224, 224), 4.0, r"\(n_images, h, w\)"),
        (np.zeros((0, 28, 28)), (224, 224), 4.0, "non-empty"),
        (np.zeros((2, 28, 28)), [(224, 224)], 4.0, "1 image sizes for 2"),
        (np.zeros((2, 28, 28)), (224, 0), 4.0, "image_size"),
        (np.zeros((2, 28, 28)), 224, 4.0, "image_size"),
        (np.zeros((2, 28, 28)), (224, 224), -1.0, "sigma"),
    ],
)
def test_invalid_arguments(patch_scores, image_size, sigma, match):
    with pytest.raises(ValueError, match=match):
        anomaly_maps(patch_scores, image_size, sigma=sigma)
