"""ONNX export: the exported graphs score like the Python models, in onnxruntime."""

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

import crdistance  # noqa: E402
from crdistance import CRDetector  # noqa: E402
from crdistance._onnx_graph import store_float16  # noqa: E402
from crdistance.export import OnnxDetector, load_onnx, to_onnx  # noqa: E402

D = 12
RTOL = {False: 1e-4, True: 1e-2}  # by float16


@pytest.fixture
def row_detector(rng):
    normal = rng.normal(size=(400, D)) * np.linspace(3.0, 0.1, D)
    return CRDetector(lam=1.0, contamination=0.1).fit(normal)


@pytest.fixture
def patch_detector(rng):
    return CRDetector(lam=2.0).fit(rng.normal(size=(30, 5, 6, D)))


def export_and_load(model, path, **options):
    to_onnx(model, path, **options)
    return load_onnx(path)


@pytest.mark.parametrize("float16", [False, True])
def test_head_matches_python_model_on_rows(row_detector, rng, tmp_path, float16):
    onnx_detector = export_and_load(row_detector, tmp_path / "m.onnx", float16=float16)
    X = (rng.normal(size=(50, D)) * 1.5).astype(np.float32)
    rtol = RTOL[float16]
    scores = row_detector.score_samples(X)
    np.testing.assert_allclose(onnx_detector.score_samples(X), scores, rtol=rtol)
    np.testing.assert_allclose(
        onnx_detector.score_patches(X), row_detector.score_patches(X), rtol=rtol
    )
    decision = row_detector.decision_function(X)
    tolerance = rtol * np.abs(scores)
    assert np.all(np.abs(onnx_detector.decision_function(X) - decision) <= tolerance)
    clear = np.abs(decision) > tolerance
    assert 0 < np.sum(onnx_detector.predict(X) == -1) < len(X)
    np.testing.assert_array_equal(
        onnx_detector.predict(X)[clear], row_detector.predict(X)[clear]
    )


@pytest.mark.parametrize("float16", [False, True])
@pytest.mark.parametrize("input_ndim", [3, 4])
def test_head_scores_patch_sets_with_dynamic_sizes(
    patch_detector, rng, tmp_path, float16, input_ndim
):
    onnx_detector = export_and_load(
        patch_detector, tmp_path / "m.onnx", float16=float16, input_ndim=input_ndim
    )
    for patch_shape in ((1, 5, 6), (7, 3, 4)):  # export once, other n, h and w
        X = rng.normal(size=(*patch_shape, D)).astype(np.float32)
        if input_ndim == 3:
            X = X.reshape(patch_shape[0], -1, D)
        outputs = onnx_detector.run(X)
        np.testing.assert_allclose(
            outputs["crd"], patch_detector.score_patches(X), rtol=RTOL[float16]
        )
        np.testing.assert_allclose(
            outputs["score"], patch_detector.score_samples(X), rtol=RTOL[float16]
        )
        assert outputs["label"].shape == (patch_shape[0],)


def test_default_input_follows_the_fitted_data(row_detector, patch_detector, tmp_path):
    assert export_and_load(row_detector, tmp_path / "r.onnx").input_shape == (None, D)
    assert export_and_load(patch_detector, tmp_path / "p.onnx").input_shape == (
        None, None, None, D,
    )


def test_dynamic_batch_of_rows(row_detector, rng, tmp_path):
    onnx_detector = export_and_load(row_detector, tmp_path / "m.onnx")
    for n in (1, 7):
        X = rng.normal(size=(n, D)).astype(np.float32)
        scores = onnx_detector.score_samples(X)
        assert scores.shape == (n,)
        np.testing.assert_allclose(scores, row_detector.score_samples(X), rtol=1e-4)


def test_detector_fitted_on_torch_exports(rng, tmp_path):
    torch = pytest.importorskip("torch")
    X = rng.normal(size=(300, D)).astype(np.float32)
    detector = CRDetector().fit(torch.from_numpy(X))
    assert isinstance(detector.residual_operator_, torch.Tensor)
    scores = export_and_load(detector, tmp_path / "m.onnx").score_samples(X)
    np.testing.assert_allclose(scores, detector.score_samples(X), rtol=1e-4)


@pytest.mark.parametrize(("float16", "itemsize"), [(False, 4), (True, 2)])
def test_head_file_size_is_that_of_the_operator(rng, tmp_path, float16, itemsize):
    d = 64
    detector = CRDetector().fit(rng.normal(size=(500, d)))
    path = tmp_path / "m.onnx"
    to_onnx(detector, path, float16=float16)
    overhead = path.stat().st_size - d * d * itemsize
    assert 0 < overhead < 2048


def test_metadata(patch_detector, tmp_path):
    onnx_model = to_onnx(patch_detector, tmp_path / "m.onnx", float16=True)
    session = onnxruntime.InferenceSession(
        tmp_path / "m.onnx", providers=["CPUExecutionProvider"]
    )
    metadata = OnnxDetector(session).metadata
    assert metadata == {prop.key: prop.value for prop in onnx_model.metadata_props}
    assert metadata["crdistance_version"] == crdistance.__version__
    assert float(metadata["lam"]) == patch_detector.lam_
    assert int(metadata["n_features"]) == D
    assert float(metadata["threshold"]) == patch_detector.threshold_
    assert int(metadata["patches_per_sample"]) == 30
    assert metadata["weights_dtype"] == "float16"
    assert onnx_model.opset_import[0].version == 17
    dtypes = {tensor.name: tensor.data_type for tensor in onnx_model.graph.initializer}
    assert dtypes["residual_operator/float16"] == onnx.TensorProto.FLOAT16
    assert dtypes["offset"] == onnx.TensorProto.FLOAT  # the threshold stays exact


@pytest.mark.parametrize(
    ("X", "message"),
    [
        (np.zeros((2, D)), "dtype float64.*X.astype\\(np.float32\\)"),
        (np.zeros((2, D + 1), dtype=np.float32), "axis 1 has 13 entries instead of 12"),
        (np.zeros((2, 3, D), dtype=np.float32), "3 dimensions.*shape \\(n, 12\\)"),
        (np.zeros((0, D), dtype=np.float32), "empty"),
        (np.full((1, D), np.nan, dtype=np.float32), "NaN or infinity"),
        ([[0.0] * D], "dtype float64"),
    ],
)
def test_bad_inputs_raise_clear_errors(row_detector, tmp_path, X, message):
    onnx_detector = export_and_load(row_detector, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=message):
        onnx_detector.predict(X)


def test_head_has_no_anomaly_maps(row_detector, tmp_path):
    onnx_detector = export_and_load(row_detector, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="export a Pipeline"):
        onnx_detector.anomaly_maps(np.zeros((1, D), dtype=np.float32))


def test_export_errors(row_detector, tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(NotFittedError):
        to_onnx(CRDetector(), path)
    with pytest.raises(TypeError, match="got StandardScaler"):
        to_onnx(StandardScaler(), path)
    with pytest.raises(TypeError, match=r"got \(StandardScaler, CRDetector\)"):
        to_onnx(make_pipeline(StandardScaler(), CRDetector()), path)
    with pytest.raises(ValueError, match="input_ndim must be"):
        to_onnx(row_detector, path, input_ndim=5)
    with pytest.raises(ValueError, match="image_size does not apply"):
        to_onnx(row_detector, path, image_size=(64, 64))


def test_float16_refuses_weights_out_of_range():
    weights = onnx.numpy_helper.from_array(np.array([7e4], dtype=np.float32), "w")
    graph = onnx.helper.make_graph([], "g", [], [], initializer=[weights])
    with pytest.raises(ValueError, match="'w' exceed the float16 range"):
        store_float16(graph)


def test_reader_rejects_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="No ONNX model file"):
        load_onnx(tmp_path / "missing.onnx")
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Neg", ["x"], ["y"])], "other", [x], [y]
    )
    onnx.save_model(onnx.helper.make_model(graph), tmp_path / "other.onnx")
    with pytest.raises(ValueError, match="not written by crdistance"):
        load_onnx(tmp_path / "other.onnx")


class TestPipeline:
    """A random resnet18 featurizer and a CRD detector as one graph."""

    SIZE = 64

    @pytest.fixture(scope="class")
    @classmethod
    def pipeline_and_images(cls):
        pytest.importorskip("torchvision")
        from crdistance.featurizer import PatchFeaturizer

        images = np.random.default_rng(0).integers(
            0, 256, size=(9, cls.SIZE, cls.SIZE, 3), dtype=np.uint8
        )
        featurizer = PatchFeaturizer(backbone="resnet18", weights=None, resize=cls.SIZE)
        pipeline = make_pipeline(featurizer, CRDetector(contamination="max"))
        return pipeline.fit(images[:6]), images

    def normalised(self, images):
        import torch

        from crdistance._images import preprocess

        return preprocess(
            images, resize=None, crop_size=None, device=torch.device("cpu")
        ).numpy()

    @pytest.mark.parametrize("float16", [False, True])
    def test_scores_and_maps_match_python(self, pipeline_and_images, tmp_path, float16):
        from crdistance.maps import anomaly_maps

        pipeline, images = pipeline_and_images
        onnx_detector = export_and_load(pipeline, tmp_path / "p.onnx", float16=float16)
        featurizer, detector = pipeline[0], pipeline[1]
        assert onnx_detector.input_shape == (None, 3, self.SIZE, self.SIZE)
        for batch in (images[6:7], images):  # exported once, n = 1 and 9
            outputs = onnx_detector.run(self.normalised(batch))
            # Also checks that exporting left the featurizer's module in eval mode.
            patch_crd = detector.score_patches(featurizer.transform(batch))
            rtol = RTOL[float16]
            np.testing.assert_allclose(outputs["crd"], patch_crd, rtol=rtol, atol=0)
            np.testing.assert_allclose(
                outputs["score"], pipeline.score_samples(batch), rtol=rtol
            )
            maps = anomaly_maps(patch_crd, (self.SIZE, self.SIZE))
            np.testing.assert_allclose(outputs["anomaly_map"], maps, rtol=rtol)
        held_out = self.normalised(images[6:])
        np.testing.assert_array_equal(
            onnx_detector.predict(held_out), pipeline.predict(images[6:])
        )

    def test_inputs_checked(self, pipeline_and_images, tmp_path):
        pipeline, images = pipeline_and_images
        onnx_detector = export_and_load(pipeline, tmp_path / "p.onnx")
        assert onnx_detector.metadata["backbone"] == "resnet18"
        assert onnx_detector.metadata["image_size"] == "64,64"
        with pytest.raises(ValueError, match="axis 2 has 32 entries instead of 64"):
            onnx_detector.anomaly_maps(np.zeros((1, 3, 32, 64), dtype=np.float32))
        with pytest.raises(ValueError, match="axis 1 has 1 entries instead of 3"):
            onnx_detector.score_samples(np.zeros((1, 1, 64, 64), dtype=np.float32))

    def test_image_size_option(self, pipeline_and_images, tmp_path):
        pipeline, _ = pipeline_and_images
        path = tmp_path / "p.onnx"
        with pytest.raises(ValueError, match="differs from the size"):
            to_onnx(pipeline, path, image_size=(48, 48))
        with pytest.raises(ValueError, match="input_ndim does not apply"):
            to_onnx(pipeline, path, input_ndim=4)
        pipeline[0].set_params(resize=None)
        try:
            with pytest.raises(ValueError, match="pass image_size"):
                to_onnx(pipeline, path)
            to_onnx(pipeline, path, image_size=(32, 48), sigma=0.0)
        finally:
            pipeline[0].set_params(resize=self.SIZE)
        onnx_detector = load_onnx(path)
        assert onnx_detector.input_shape == (None, 3, 32, 48)
        assert onnx_detector.metadata["sigma"] == "0.0"
        maps = onnx_detector.anomaly_maps(np.zeros((2, 3, 32, 48), dtype=np.float32))
        assert maps.shape == (2, 32, 48)
