import doctest
import shutil
from collections import Counter

import numpy as np
import pytest
import scipy.io
from PIL import Image

from crdistance import datasets
from crdistance.datasets import LazyArrays, list_odds, load_mvtec, load_odds

MAGNETIC_TILE_TEST_COUNTS = {
    "good": 238,
    "blowhole": 115,
    "break": 85,
    "crack": 57,
    "fray": 32,
    "uneven": 103,
}


@pytest.fixture(scope="module")
def magnetic_tile_test(shared_data):
    return load_mvtec(shared_data / "magnetic_tile", split="test")


def test_magnetic_tile_train_split(shared_data):
    train = load_mvtec(shared_data / "magnetic_tile", split="train")
    assert len(train.paths) == len(train.images) == len(train.masks) == 714
    assert set(train.defect_types) == {"good"} and not train.labels.any()
    assert not any(train.mask_paths)
    image, mask = train.images[0], train.masks[0]
    assert image.dtype == np.uint8 and image.ndim == 2  # grayscale JPEG
    assert mask.shape == image.shape and mask.dtype == bool and not mask.any()


def test_magnetic_tile_test_split(magnetic_tile_test):
    data = magnetic_tile_test
    assert Counter(data.defect_types) == MAGNETIC_TILE_TEST_COUNTS
    np.testing.assert_array_equal(data.labels, data.defect_types != "good")
    assert list(data.paths) == sorted(data.paths)  # defect type, then file name
    for path, defect_type in zip(data.paths, data.defect_types, strict=True):
        assert f"/test/{defect_type}/" in path


def test_magnetic_tile_masks_match_images(magnetic_tile_test):
    data = magnetic_tile_test
    defective = np.flatnonzero(data.labels)
    empty = []
    for index in defective:
        mask = data.masks[index]
        assert mask.dtype == bool
        assert mask.shape == data.images[index].shape
        if not mask.any():
            empty.append(data.defect_types[index])
    # The dataset annotates 4 "uneven" images without marking pixels.
    assert empty == ["uneven"] * 4
    assert not data.masks[int(np.flatnonzero(data.labels == 0)[0])].any()


def test_lazy_arrays_select_without_reading(magnetic_tile_test):
    masks = magnetic_tile_test.masks
    subset = masks[np.flatnonzero(magnetic_tile_test.labels)[:3]]
    assert isinstance(subset, LazyArrays) and len(subset) == 3
    assert isinstance(masks[:5], LazyArrays) and len(masks[:5]) == 5
    assert all(mask.any() for mask in subset)
    with pytest.raises(IndexError):
        masks[len(masks)]


def write_mvtec_tree(root, *, size=(6, 8)):
    """A tiny MVTec AD category: 2 train images, 1 good and 2 'scratch' test
    images with masks, and files that are not images."""
    height, width = size
    rng = np.random.default_rng(0)
    folders = {"train/good": 2, "test/good": 1, "test/scratch": 2}
    for folder, count in folders.items():
        (root / folder).mkdir(parents=True)
        for index in range(count):
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"{index:03d}.png")
    (root / "test" / "scratch" / ".DS_Store").write_bytes(b"")
    (root / "test" / "scratch" / "readme.txt").write_text("not an image")
    (root / "ground_truth" / "scratch").mkdir(parents=True)
    for index in range(2):
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[index, : index + 1] = 255
        mask_path = root / "ground_truth" / "scratch" / f"{index:03d}_mask.png"
        Image.fromarray(mask).save(mask_path)
    return root


def test_load_mvtec_on_an_rgb_category(tmp_path):
    root = write_mvtec_tree(tmp_path)
    test = load_mvtec(root)
    assert list(test.defect_types) == ["good", "scratch", "scratch"]
    assert list(test.labels) == [0, 1, 1]
    assert test.images[1].shape == (6, 8, 3)
    assert load_mvtec(root, mode="L").images[1].shape == (6, 8)
    assert [int(mask.sum()) for mask in test.masks] == [0, 1, 2]
    assert test.masks[2][1, :2].all()
    assert len(load_mvtec(root, split="train").paths) == 2


def test_missing_mask_is_an_error(tmp_path):
    root = write_mvtec_tree(tmp_path)
    (root / "ground_truth" / "scratch" / "001_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match="1 defective image.*001_mask.png"):
        load_mvtec(root)


def test_a_set_without_ground_truth_has_image_labels_only(tmp_path):
    root = write_mvtec_tree(tmp_path)
    masked = load_mvtec(root)
    shapes = [mask.shape for mask in masked.masks]
    shutil.rmtree(root / "ground_truth")
    test = load_mvtec(root)
    assert masked.has_masks and not test.has_masks and test.masks is None
    np.testing.assert_array_equal(test.labels, masked.labels)
    assert list(test.mask_paths) == [""] * len(test.paths)
    assert list(test.image_sizes) == shapes
    train = load_mvtec(root, split="train")  # good images: all-False masks
    assert train.has_masks and not train.masks[0].any()


def test_screw_is_an_image_level_set(shared_data):
    test = load_mvtec(shared_data / "screw")
    assert not test.has_masks and test.masks is None
    assert (int((test.labels == 0).sum()), int(test.labels.sum())) == (41, 119)
    assert test.image_sizes[0] == (320, 320) == test.images[0].shape[:2]


def test_mask_of_another_size_is_an_error(tmp_path):
    root = write_mvtec_tree(tmp_path)
    small = np.zeros((3, 3), dtype=np.uint8)
    Image.fromarray(small).save(root / "ground_truth" / "scratch" / "000_mask.png")
    masks = load_mvtec(root).masks
    with pytest.raises(ValueError, match=r"has shape \(3, 3\).*\(6, 8\)"):
        masks[1]


def test_load_mvtec_rejects_bad_layouts(tmp_path):
    with pytest.raises(ValueError, match="split must be"):
        load_mvtec(tmp_path, split="validation")
    with pytest.raises(FileNotFoundError, match="No folder"):
        load_mvtec(tmp_path, split="test")
    (tmp_path / "train" / "good").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="No images found"):
        load_mvtec(tmp_path, split="train")


def test_odds_datasets(shared_data):
    names = list_odds(shared_data)
    assert len(names) == 17 and "cardio" in names and names == sorted(names)
    X, y = load_odds("cardio", data_home=shared_data)
    assert X.shape == (1831, 21) and X.dtype == np.float64
    assert y.shape == (1831,) and y.dtype == np.int64
    assert int(y.sum()) == 176  # 9.61 % outliers, as in PyOD's table
    X_path, y_path = load_odds(shared_data / "odds" / "shuttle.mat")
    assert X_path.dtype == np.float64 and set(np.unique(y_path)) == {0, 1}


def test_odds_data_home_from_environment(shared_data, monkeypatch):
    monkeypatch.setenv("CRDISTANCE_DATA", str(shared_data))
    assert list_odds() == list_odds(shared_data)
    assert load_odds("glass")[0].shape == (214, 9)


def test_odds_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No ODDS folder"):
        list_odds(tmp_path)
    (tmp_path / "odds").mkdir()
    valid = {"X": np.ones((3, 2)), "y": [1, 0, 0]}
    scipy.io.savemat(tmp_path / "odds" / "good.mat", valid)
    with pytest.raises(FileNotFoundError, match=r"No ODDS dataset 'gone'.*\['good'\]"):
        load_odds("gone", data_home=tmp_path)
    scipy.io.savemat(tmp_path / "no_y.mat", {"X": np.ones((3, 2))})
    with pytest.raises(ValueError, match="must hold the variables"):
        load_odds(tmp_path / "no_y.mat")
    scipy.io.savemat(tmp_path / "labels.mat", {"X": np.ones((3, 2)), "y": [0, 1, 2]})
    with pytest.raises(ValueError, match="values in"):
        load_odds(tmp_path / "labels.mat")
    # The header of a MATLAB v7.3 (HDF5) file: version 0x0200.
    (tmp_path / "hdf5.mat").write_bytes(b" " * 124 + b"\x00\x02IM" + b"\x00" * 64)
    with pytest.raises(ValueError, match="v7.3"):
        load_odds(tmp_path / "hdf5.mat")


def test_all_and_doctests():
    public = ["LazyArrays", "list_odds", "load_mvtec", "load_odds"]
    assert sorted(datasets.__all__) == public
    assert doctest.testmod(datasets).failed == 0
