"""CSE in saved models and in ONNX: ContrastiveEmbedder and KMeansDetector steps."""

import numpy as np
import pytest
from _model_files import assert_refused
from sklearn.pipeline import make_pipeline

from crdistance import CRDetector, load, save
from crdistance.kmeans import KMeansDetector

pytest.importorskip("torch")
from crdistance.featurizer import ContrastiveEmbedder, PatchFeaturizer  # noqa: E402

SMALL = {"n_components": 4, "hidden_size": 8, "max_epochs": 2, "random_state": 0,
         "progress": False}


@pytest.fixture(scope="module")
def maps():
    return np.random.default_rng(0).normal(size=(12, 6, 6, 8)).astype(np.float32)


@pytest.mark.parametrize("detector", [
    CRDetector(), KMeansDetector(n_clusters=3, random_state=0)])
def test_saved_equals_loaded(maps, detector, tmp_path):
    pipeline = make_pipeline(ContrastiveEmbedder(**SMALL), detector).fit(maps)
    save(pipeline, tmp_path / "model.crd")
    loaded = load(tmp_path / "model.crd")
    np.testing.assert_array_equal(loaded.score_samples(maps),
                                  pipeline.score_samples(maps))
    np.testing.assert_array_equal(loaded[0].transform(maps),
                                  pipeline[0].transform(maps))
    assert loaded[0].loss_curve_ == pipeline[0].loss_curve_
    assert loaded[0].best_epoch_ == pipeline[0].best_epoch_
    for before, after in zip(pipeline[0].decoder_coefs_, loaded[0].decoder_coefs_,
                             strict=True):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("edit, match", [
    (lambda fitted, arrays: fitted.update(best_epoch_=99), "best_epoch_"),
    (lambda fitted, arrays: fitted.update(loss_curve_=[1.0]), "loss_curve_"),
    (lambda fitted, arrays: fitted.update(defect_source_="pickle"), "defect_source_"),
    (lambda fitted, arrays: arrays.update(
        {name: np.zeros_like(array) for name, array in arrays.items()
         if name.endswith("scale_")}), "scale_"),
])
def test_tampered_embedder_is_refused(maps, tmp_path, edit, match):
    pipeline = make_pipeline(ContrastiveEmbedder(**SMALL), CRDetector()).fit(maps)
    path = tmp_path / "model.crd"
    save(pipeline, path)

    def change(header, arrays):
        step = next(s for s in header["steps"] if s["class"] == "ContrastiveEmbedder")
        edit(step["fitted"], arrays)

    assert_refused(path, change, match)


def test_onnx_export_of_featurizer_embedder_kmeans(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import torch

    from crdistance.export import load_onnx, to_onnx
    from crdistance.featurizer._images import preprocess

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    pipeline = make_pipeline(
        PatchFeaturizer(backbone="resnet18", weights=None, resize=64, progress=False),
        ContrastiveEmbedder(**SMALL), KMeansDetector(n_clusters=3, random_state=0),
    ).fit(images)
    to_onnx(pipeline, tmp_path / "model.onnx")
    onnx_model = load_onnx(tmp_path / "model.onnx")
    inputs = preprocess(images, resize=None, crop_size=None,
                        device=torch.device("cpu")).numpy()
    np.testing.assert_allclose(onnx_model.score_samples(inputs),
                               pipeline.score_samples(images), rtol=1e-3, atol=1e-4)
    assert "ContrastiveEmbedder" in onnx_model.metadata["model"]
