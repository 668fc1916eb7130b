"""ONNX export of GRAD: a GRADDetector alone, and Pipeline(PatchFeaturizer,
GRADDetector) as one graph, scored through onnxruntime like the Python models.

Tolerances, float32 weights: the detector head's distances and scores within
rtol = atol = 1e-5 of Python (observed about 2e-7 relative), the pipeline's
(random resnet18 backbone, then GRAD) within rtol = atol = 1e-4 (observed about
2e-6 relative); labels agree wherever the decision is clear of 0 by 1e-3.
float16 weights: within 1e-2 relative.
"""

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from crdistance.export import load_onnx, to_onnx  # noqa: E402
from crdistance.grad import GRADDetector  # noqa: E402

D = 6
GRID = (4, 4)
SIZE = 64
TINY = {"hidden_channels": 8, "n_blocks": 1, "max_epochs": 2, "progress": False,
        "random_state": 0}


def grad(**params):
    return GRADDetector(**TINY, **params)


def export_and_load(model, path, **options):
    onnx_model = to_onnx(model, path, **options)
    return onnx_model, load_onnx(path)


def assert_same_scores(onnx_detector, detector, X, tol):
    """Distances, scores, decisions and (where clear of the threshold) labels
    of the ONNX model are those of the Python detector."""
    np.testing.assert_allclose(onnx_detector.score_patches(X),
                               detector.score_patches(X), rtol=tol, atol=tol)
    np.testing.assert_allclose(onnx_detector.score_samples(X),
                               detector.score_samples(X), rtol=tol, atol=tol)
    decision = detector.decision_function(X)
    np.testing.assert_allclose(onnx_detector.decision_function(X), decision,
                               rtol=tol, atol=tol)
    clear = np.abs(decision) > 1e-3
    np.testing.assert_array_equal(onnx_detector.predict(X)[clear],
                                  detector.predict(X)[clear])


@pytest.fixture(scope="module")
def normal_maps():
    return np.random.default_rng(0).normal(size=(12, *GRID, D)).astype(np.float32)


@pytest.fixture(scope="module")
def detector(normal_maps):
    """Fitted on 4 x 4 maps, a quarter of them beyond the threshold."""
    return grad(contamination=0.25).fit(normal_maps)


@pytest.fixture(scope="module")
def exported(detector, tmp_path_factory):
    """The detector's ONNX model and its OnnxDetector (float32 weights), and
    the detector's distances of queries(3) before the export."""
    before = detector.score_patches(queries(3))
    path = tmp_path_factory.mktemp("grad") / "grad.onnx"
    return (*export_and_load(detector, path), before)


def queries(n, shape=(*GRID, D), seed=1):
    """Maps of n images, the second one with a strong anomaly."""
    X = np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)
    if n > 1:
        X[1].reshape(-1, shape[-1])[0] += 8.0
    return X


def test_head_matches_python_with_a_dynamic_batch(detector, exported):
    onnx_model, onnx_detector, before = exported
    assert [output.name for output in onnx_model.graph.output] == [
        "crd", "score", "label"]
    assert onnx_detector.input_name == "features"
    assert onnx_detector.input_shape == (None, *GRID, D)  # the fitted grid
    for n in (1, 3):  # exported once
        assert_same_scores(onnx_detector, detector, queries(n), 1e-5)
    labels = onnx_detector.predict(np.concatenate([queries(3), queries(3, seed=2)]))
    assert set(labels) == {-1, 1}
    # Exporting leaves the detector's network in eval mode.
    np.testing.assert_array_equal(detector.score_patches(queries(3)), before)


@pytest.mark.parametrize("shape", [(5, D), (D,)], ids=["patch sets", "rows"])
def test_head_of_patch_sets_and_rows(shape, tmp_path):
    fitted = grad().fit(np.random.default_rng(0).normal(size=(12, *shape)))
    _, onnx_detector = export_and_load(fitted, tmp_path / "grad.onnx")
    assert onnx_detector.input_shape == (None, *shape)
    for n in (1, 3):
        X = queries(n, shape)
        assert onnx_detector.score_patches(X).shape == (n, *shape[:-1])
        assert_same_scores(onnx_detector, fitted, X, 1e-5)
    if len(shape) == 1:  # rows are 1 x 1 maps
        _, as_maps = export_and_load(fitted, tmp_path / "maps.onnx", input_ndim=4)
        assert as_maps.input_shape == (None, 1, 1, D)
        X = queries(3, shape)
        np.testing.assert_allclose(as_maps.score_samples(X[:, None, None]),
                                   fitted.score_samples(X), rtol=1e-5, atol=1e-5)


def test_head_checks_the_patch_grid(exported):
    _, onnx_detector, _ = exported
    with pytest.raises(ValueError, match="axis 1 has 5 entries instead of 4"):
        onnx_detector.score_samples(np.zeros((1, 5, 4, D), dtype=np.float32))


def test_metadata(detector, exported):
    _, onnx_detector, _ = exported
    metadata = onnx_detector.metadata
    assert metadata["model"] == "GRADDetector"
    assert metadata["n_features"] == str(D)
    assert float(metadata["threshold"]) == onnx_detector.threshold_ == (
        detector.threshold_)
    assert metadata["patch_shape"] == "4,4"
    assert (metadata["local_grid_size"], metadata["global_grid_size"],
            metadata["hidden_channels"], metadata["n_blocks"]) == ("8", "4", "8", "1")
    assert (float(metadata["mse_weight"]), float(metadata["cosine_weight"]),
            float(metadata["refine_threshold"])) == (0.3, 0.7, 1.0)
    assert metadata["weights_dtype"] == "float32"
    assert "crdistance_version" in metadata


def test_float16_keeps_the_standardisation_in_float32(detector, tmp_path):
    """float16 stores the network's weights (grids, convolutions, MLPs) in
    float16 and computes in float32; mean_ and scale_ stay float32. The scores
    move by the weights' rounding, within 1e-2: a patch whose reconstruction
    error is within that rounding of refine_threshold may switch the
    refinement's agreement, so float16 is for where that is acceptable."""
    onnx_model, onnx_detector = export_and_load(
        detector, tmp_path / "grad16.onnx", float16=True)
    dtypes = {i.name: i.data_type for i in onnx_model.graph.initializer}
    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert dtypes["standardization/mean"] == dtypes["standardization/scale"] == (
        float32)
    assert sum(dtype == float16 for dtype in dtypes.values()) >= 10
    assert onnx_detector.metadata["weights_dtype"] == "float16"
    X = queries(3)
    np.testing.assert_allclose(onnx_detector.score_patches(X),
                               detector.score_patches(X), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(onnx_detector.score_samples(X),
                               detector.score_samples(X), rtol=1e-2)


def test_head_export_errors(detector, tmp_path):
    path = tmp_path / "grad.onnx"
    with pytest.raises(NotFittedError):
        to_onnx(grad(), path)
    with pytest.raises(ValueError, match=r"input_ndim=3 cannot hold the patch "
                       r"grid \(4, 4\)"):
        to_onnx(detector, path, input_ndim=3)
    with pytest.raises(ValueError, match="input_ndim must be 2, 3, 4 or None"):
        to_onnx(detector, path, input_ndim=5)
    with pytest.raises(ValueError, match="image_size does not apply"):
        to_onnx(detector, path, image_size=(64, 64))


class TestPipeline:
    """A random resnet18 featurizer and a tiny GRADDetector as one graph."""

    @pytest.fixture(scope="class")
    @classmethod
    def pipeline_and_images(cls):
        pytest.importorskip("torchvision")
        from crdistance.featurizer import PatchFeaturizer

        images = np.random.default_rng(0).integers(
            0, 256, size=(9, SIZE, SIZE, 3), dtype=np.uint8)
        pipeline = make_pipeline(
            PatchFeaturizer(backbone="resnet18", weights=None, resize=SIZE,
                            progress=False),
            grad(contamination=0.25),
        )
        return pipeline.fit(images[:6]), images

    @pytest.fixture(scope="class")
    @classmethod
    def exported(cls, pipeline_and_images, tmp_path_factory):
        """The ONNX model of the pipeline, its OnnxDetector and the pipeline's
        decisions of all images before the export."""
        pipeline, images = pipeline_and_images
        before = pipeline.decision_function(images)
        path = tmp_path_factory.mktemp("grad_pipeline") / "p.onnx"
        return (*export_and_load(pipeline, path), before)

    @staticmethod
    def normalised(images):
        import torch

        from crdistance.featurizer._images import preprocess

        return preprocess(
            images, resize=None, crop_size=None, device=torch.device("cpu")
        ).numpy()

    def assert_matches(self, pipeline, onnx_detector, images, tol):
        from crdistance.maps import anomaly_maps

        outputs = onnx_detector.run(self.normalised(images))
        patch_scores = pipeline[-1].score_patches(pipeline[0].transform(images))
        assert outputs["crd"].shape == (len(images), 8, 8)
        np.testing.assert_allclose(outputs["crd"], patch_scores, rtol=tol, atol=tol)
        np.testing.assert_allclose(outputs["score"], pipeline.score_samples(images),
                                   rtol=tol, atol=tol)
        maps = anomaly_maps(patch_scores, (SIZE, SIZE))
        np.testing.assert_allclose(outputs["anomaly_map"], maps, rtol=tol, atol=tol)
        return outputs

    def test_scores_labels_and_maps_match_python(self, pipeline_and_images,
                                                 exported):
        pipeline, images = pipeline_and_images
        onnx_model, onnx_detector, before = exported
        assert [output.name for output in onnx_model.graph.output] == [
            "crd", "score", "label", "anomaly_map"]
        assert onnx_detector.input_shape == (None, 3, SIZE, SIZE)
        for batch in (images[6:7], images[6:9]):  # exported once, n = 1 and 3
            self.assert_matches(pipeline, onnx_detector, batch, 1e-4)
        decision = pipeline.decision_function(images)
        clear = np.abs(decision) > 1e-3
        labels = onnx_detector.predict(self.normalised(images))
        np.testing.assert_array_equal(labels[clear], pipeline.predict(images)[clear])
        assert set(labels) == {-1, 1}
        # Exporting leaves the featurizer and the detector in eval mode.
        np.testing.assert_array_equal(decision, before)

    def test_metadata(self, pipeline_and_images, exported):
        pipeline, _ = pipeline_and_images
        _, onnx_detector, _ = exported
        metadata = onnx_detector.metadata
        assert metadata["model"] == "Pipeline(PatchFeaturizer, GRADDetector)"
        assert metadata["backbone"] == "resnet18"
        assert metadata["layers"] == "layer2,layer3"
        assert metadata["n_features"] == "384"
        assert metadata["patch_shape"] == "8,8"
        assert metadata["image_size"] == f"{SIZE},{SIZE}"
        assert metadata["sigma"] == "4.0"
        assert float(metadata["threshold"]) == pipeline[-1].threshold_

    def test_float16(self, pipeline_and_images, tmp_path):
        """float16 backbone and GRAD weights: close to float32 Python, loosely,
        as the random backbone's rounding reaches every patch."""
        pipeline, images = pipeline_and_images
        _, onnx_detector = export_and_load(pipeline, tmp_path / "p16.onnx",
                                           float16=True)
        assert onnx_detector.metadata["weights_dtype"] == "float16"
        outputs = onnx_detector.run(self.normalised(images[6:9]))
        np.testing.assert_allclose(outputs["score"],
                                   pipeline.score_samples(images[6:9]), rtol=1e-2)

    def test_pipeline_errors(self, pipeline_and_images, tmp_path):
        from crdistance.featurizer import PatchFeaturizer

        pipeline, images = pipeline_and_images
        path = tmp_path / "bad.onnx"
        with pytest.raises(ValueError, match="input_ndim does not apply"):
            to_onnx(pipeline, path, input_ndim=4)
        with pytest.raises(NotFittedError):
            to_onnx(make_pipeline(pipeline[0], grad()), path)
        # A featurizer that keeps the input size gives another grid at 96 x 96.
        keeping = PatchFeaturizer(backbone="resnet18", weights=None, resize=None,
                                  progress=False).fit(images[:1])
        with pytest.raises(ValueError, match=r"patch grid \(12, 12\).*fitted on "
                           r"\(8, 8\)"):
            to_onnx(make_pipeline(keeping, pipeline[-1]), path, image_size=(96, 96))
