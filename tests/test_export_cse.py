"""ONNX export of CSE: the KMeansDetector head, and Pipeline(PatchFeaturizer,
ContrastiveEmbedder, detector) as one graph, scored through onnxruntime like the
Python models."""

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

from crdistance import CRDetector  # noqa: E402
from crdistance.export import load_onnx, to_onnx  # noqa: E402
from crdistance.kmeans import KMeansDetector  # noqa: E402

D = 6
SIZE = 64


def export_and_load(model, path, **options):
    onnx_model = to_onnx(model, path, **options)
    return onnx_model, load_onnx(path)


def test_kmeans_head_on_rows(rng, tmp_path):
    detector = KMeansDetector(n_clusters=5, contamination=0.1, random_state=0)
    detector.fit(rng.normal(size=(300, D)))
    onnx_model, onnx_detector = export_and_load(detector, tmp_path / "k.onnx",
                                                input_ndim=2)
    assert [i.name for i in onnx_model.graph.initializer
            if i.name == "cluster_centers"] == ["cluster_centers"]
    assert onnx_detector.input_shape == (None, D)
    X = (rng.normal(size=(60, D)) * 1.5).astype(np.float32)
    np.testing.assert_allclose(onnx_detector.score_patches(X),
                               detector.score_patches(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(onnx_detector.score_samples(X),
                               detector.score_samples(X), rtol=1e-5, atol=1e-6)
    decision = detector.decision_function(X)
    clear = np.abs(decision) > 1e-4
    labels = onnx_detector.predict(X)
    assert 0 < np.sum(labels == -1) < len(X)
    np.testing.assert_array_equal(labels[clear], detector.predict(X)[clear])
    metadata = onnx_detector.metadata
    assert metadata["model"] == "KMeansDetector"
    assert (metadata["n_clusters"], metadata["n_clusters_fitted"]) == ("5", "5")
    assert metadata["n_features"] == str(D)
    assert float(metadata["threshold"]) == detector.threshold_


@pytest.mark.parametrize("float16", [False, True])
def test_kmeans_head_on_patch_maps_of_any_size(rng, tmp_path, float16):
    detector = KMeansDetector(n_clusters=4, random_state=0)
    detector.fit(rng.normal(size=(20, 4, 5, D)))
    _, onnx_detector = export_and_load(detector, tmp_path / "k.onnx",
                                       float16=float16)
    assert onnx_detector.input_shape == (None, None, None, D)  # default: maps
    X = rng.normal(size=(3, 6, 2, D)).astype(np.float32)
    rtol = 1e-2 if float16 else 1e-5
    np.testing.assert_allclose(onnx_detector.score_patches(X),
                               detector.score_patches(X), rtol=rtol)
    np.testing.assert_allclose(onnx_detector.score_samples(X),
                               detector.score_samples(X), rtol=rtol)
    assert onnx_detector.metadata["weights_dtype"] == (
        "float16" if float16 else "float32")


def test_kmeans_fitted_on_torch_exports(rng, tmp_path):
    torch = pytest.importorskip("torch")
    X = rng.normal(size=(100, D)).astype(np.float32)
    detector = KMeansDetector(n_clusters=3, random_state=0).fit(torch.from_numpy(X))
    _, onnx_detector = export_and_load(detector, tmp_path / "k.onnx", input_ndim=2)
    np.testing.assert_allclose(onnx_detector.score_samples(X),
                               detector.score_samples(torch.from_numpy(X)).numpy(),
                               rtol=1e-5)


def test_kmeans_export_errors(tmp_path):
    with pytest.raises(NotFittedError):
        to_onnx(KMeansDetector(), tmp_path / "k.onnx")
    with pytest.raises(TypeError, match=r"got \(StandardScaler, KMeansDetector\)"):
        to_onnx(make_pipeline(StandardScaler(), KMeansDetector()), tmp_path / "k.onnx")


class TestEmbedderPipeline:
    """A random resnet18 featurizer, a small ContrastiveEmbedder and a
    KMeansDetector (or a CRDetector) as one graph."""

    @pytest.fixture(scope="class")
    @classmethod
    def pipeline_and_images(cls):
        pytest.importorskip("torchvision")
        from crdistance.featurizer import ContrastiveEmbedder, PatchFeaturizer

        images = np.random.default_rng(0).integers(
            0, 256, size=(8, SIZE, SIZE, 3), dtype=np.uint8)
        pipeline = make_pipeline(
            PatchFeaturizer(backbone="resnet18", weights=None, resize=SIZE,
                            progress=False),
            ContrastiveEmbedder(n_components=4, hidden_size=8, max_epochs=2,
                                random_state=0, progress=False),
            KMeansDetector(n_clusters=3, random_state=0),
        )
        return pipeline.fit(images[:6]), images

    @staticmethod
    def normalised(images):
        import torch

        from crdistance.featurizer._images import preprocess

        return preprocess(
            images, resize=None, crop_size=None, device=torch.device("cpu")
        ).numpy()

    def assert_matches(self, pipeline, onnx_detector, images, rtol, atol):
        from crdistance.maps import anomaly_maps

        outputs = onnx_detector.run(self.normalised(images))
        embedding = pipeline[:-1].transform(images)
        assert embedding.shape == (len(images), 8, 8, 4)
        patch_scores = pipeline[-1].score_patches(embedding)
        np.testing.assert_allclose(outputs["crd"], patch_scores, rtol=rtol, atol=atol)
        np.testing.assert_allclose(outputs["score"], pipeline.score_samples(images),
                                   rtol=rtol, atol=atol)
        maps = anomaly_maps(patch_scores, (SIZE, SIZE))
        np.testing.assert_allclose(outputs["anomaly_map"], maps, rtol=rtol,
                                   atol=atol)
        return outputs

    def test_scores_and_maps_match_python(self, pipeline_and_images, tmp_path):
        pipeline, images = pipeline_and_images
        _, onnx_detector = export_and_load(pipeline, tmp_path / "cse.onnx")
        assert onnx_detector.input_shape == (None, 3, SIZE, SIZE)
        metadata = onnx_detector.metadata
        assert metadata["model"] == (
            "Pipeline(PatchFeaturizer, ContrastiveEmbedder, KMeansDetector)")
        assert metadata["embedder"] == "ContrastiveEmbedder"
        assert metadata["embedder_n_features_in"] == "384"  # layer2 + layer3
        assert metadata["embedder_n_components"] == metadata["n_features"] == "4"
        assert metadata["n_clusters_fitted"] == "3"
        assert metadata["backbone"] == "resnet18"
        for batch in (images[6:7], images):  # exported once, n = 1 and 8
            self.assert_matches(pipeline, onnx_detector, batch, 1e-3, 1e-4)
        decision = pipeline.decision_function(images)
        clear = np.abs(decision) > 1e-3
        np.testing.assert_array_equal(
            onnx_detector.predict(self.normalised(images))[clear],
            pipeline.predict(images)[clear])

    def test_crd_detector_after_the_embedder_in_float16(
            self, pipeline_and_images, tmp_path):
        """A CRDetector on the embedding, with float16 weights (backbone and
        embedding): close to float32 Python, loosely, as a random backbone's
        rounding is amplified by the 4-d unit embedding."""
        pipeline, images = pipeline_and_images
        featurizer, embedder = pipeline[0], pipeline[1]
        detector = CRDetector(lam=1.0).fit(
            embedder.transform(featurizer.transform(images[:6])))
        crd_pipeline = make_pipeline(featurizer, embedder, detector)
        onnx_model, onnx_detector = export_and_load(
            crd_pipeline, tmp_path / "crd16.onnx", float16=True)
        assert onnx_detector.metadata["model"] == (
            "Pipeline(PatchFeaturizer, ContrastiveEmbedder, CRDetector)")
        assert onnx_detector.metadata["weights_dtype"] == "float16"
        assert any(i.name == "residual_operator/float16"
                   for i in onnx_model.graph.initializer)
        self.assert_matches(crd_pipeline, onnx_detector, images, 0.05, 0.02)

    def test_pipeline_errors(self, pipeline_and_images, tmp_path):
        from crdistance.featurizer import ContrastiveEmbedder

        pipeline, _ = pipeline_and_images
        featurizer, embedder, detector = pipeline[0], pipeline[1], pipeline[2]
        path = tmp_path / "bad.onnx"
        with pytest.raises(TypeError, match=r"\(PatchFeaturizer, ContrastiveEmbedder, "
                           r"detector\).*got \(PatchFeaturizer, StandardScaler, "
                           r"KMeansDetector\)"):
            to_onnx(make_pipeline(featurizer, StandardScaler(), detector), path)
        with pytest.raises(TypeError, match=r"got \(PatchFeaturizer, "
                           r"ContrastiveEmbedder\)"):
            to_onnx(make_pipeline(featurizer, embedder), path)
        with pytest.raises(TypeError, match=r"got \(ContrastiveEmbedder, "
                           r"KMeansDetector\)"):
            to_onnx(make_pipeline(embedder, detector), path)
        with pytest.raises(NotFittedError):
            to_onnx(make_pipeline(featurizer, ContrastiveEmbedder(), detector), path)
        with pytest.raises(ValueError, match="input_ndim does not apply"):
            to_onnx(pipeline, path, input_ndim=4)
