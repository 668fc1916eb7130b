"""``crdistance fit --embedder cse``, ``--detector kmeans`` and the CSE methods
of ``crdistance evaluate``: fitted on a few real magnetic-tile images (random
backbone weights, 64 pixels) and on the demo data set, in this process."""

import contextlib
import csv
import io
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("PIL.Image")
from sklearn.pipeline import Pipeline  # noqa: E402

from crdistance import CRDetector  # noqa: E402
from crdistance.cli import main  # noqa: E402
from crdistance.cli._demo_data import write_demo_dataset  # noqa: E402
from crdistance.cli._io import CommandError  # noqa: E402
from crdistance.cli._model import held_out, save_model  # noqa: E402
from crdistance.featurizer import ContrastiveEmbedder, PatchFeaturizer  # noqa: E402
from crdistance.kmeans import KMeansDetector  # noqa: E402
from crdistance.persistence import load  # noqa: E402

FAST = ["--weights", "none", "--resize", "64", "--batch-size", "4"]
N_IMAGES = 8


def run(*args, json_output=True):
    """``main(args + [--json] + ["-q"])`` in this process: exit code, stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*map(str, args), *(["--json"] if json_output else []), "-q"])
    return code, out.getvalue()


def run_json(*args):
    code, out = run(*args)
    return code, json.loads(out)


@pytest.fixture(scope="module")
def tiles(shared_data, tmp_path_factory):
    """A folder of the first magnetic-tile training images (grayscale, ~120 x 280)."""
    folder = tmp_path_factory.mktemp("tiles") / "good"
    folder.mkdir()
    source = sorted((shared_data / "magnetic_tile" / "train" / "good").iterdir())
    for path in source[:N_IMAGES]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def cse_crd(tiles):
    """``fit --embedder cse`` with the default detector: model path and JSON."""
    model = tiles.parent / "cse_crd.npz"
    code, payload = run_json("fit", tiles, "-o", model, "--embedder", "cse", *FAST)
    assert code == 0
    return model, payload


def test_fit_cse_keeps_crd_and_records_the_training(cse_crd):
    model, payload = cse_crd
    assert payload["detector"] == "CRDetector"  # no --detector: the default, CRD
    record = payload["embedder"]
    assert record["class"] == "ContrastiveEmbedder"
    assert record["n_features_in"] == 128  # features.6 + features.13 of mobilenet_v2
    assert record["n_components"] == payload["n_features"] == 64
    # 2 of 8 images held out for the threshold; one defective copy of the others.
    assert record["n_training_images"] == record["n_defective_images"] == 6
    assert payload["n_fitted_images"] == 6
    assert record["n_defective_patches"] > 0 and record["random_state"] == 0
    assert 1 <= record["best_epoch"] <= record["n_iter"] <= 20
    assert len(record["loss_curve"]) == record["n_iter"]
    assert record["loss"] == record["loss_curve"][-1]
    for term in ("pull", "push", "reconstruction"):
        assert np.isfinite(record[f"{term}_loss"])
    pipeline = load(model)
    assert [name for name, _ in pipeline.steps] == ["featurizer", "embedder",
                                                    "detector"]
    assert [type(step) for _, step in pipeline.steps] == [
        PatchFeaturizer, ContrastiveEmbedder, CRDetector]
    embedder = pipeline[1]
    assert (embedder.n_iter_, embedder.best_epoch_) == (record["n_iter"],
                                                        record["best_epoch"])
    assert embedder.loss_curve_ == record["loss_curve"]
    assert embedder.random_state == 0 and embedder.defect_source_ == "given"
    assert pipeline[-1].n_features_in_ == 64


def test_threshold_is_set_on_embedded_held_out_images(cse_crd, tiles):
    model, payload = cse_crd
    pipeline = load(model)
    assert payload["threshold_rule"] == (
        "largest CRD of 2 held-out good images; too few for false-alarm rate 0.01, "
        "so conformal at 0.333")
    assert payload["threshold"] == pipeline[-1].threshold_
    paths = sorted(tiles.iterdir())
    held = [str(paths[i]) for i in sorted(held_out(len(paths), 0.2))]
    # The fitted pipeline (featurizer, embedder, CRD) scores them as fit did.
    assert max(-pipeline.score_samples(held)) == pytest.approx(payload["threshold"],
                                                                rel=1e-5)


def test_predict_with_a_cse_model(cse_crd, tiles):
    model, payload = cse_crd
    out = model.parent / "predictions"
    code, result = run_json("predict", model, tiles, "-o", out)
    assert code == 0
    assert result["threshold"] == payload["threshold"]
    expected = -load(model).score_samples([row["path"] for row in result["images"]])
    scores = [row["score"] for row in result["images"]]
    assert len(scores) == N_IMAGES
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    for row in result["images"]:
        assert row["decision"] == ("anomalous" if row["score"] > payload["threshold"]
                                   else "normal")
    with open(out / "scores.csv", newline="") as file:
        assert len(list(csv.DictReader(file))) == N_IMAGES


def test_fit_cse_kmeans_text_skips_unreadable(tiles, tmp_path, capsys):
    folder = tmp_path / "good"
    shutil.copytree(tiles, folder)
    # Sorts among the fitted images (not the held-out first and last).
    (folder / "exp1_broken.png").write_text("not an image")
    model = tmp_path / "cse_kmeans.npz"
    code, text = run("fit", folder, "-o", model, "--embedder", "cse", "--detector",
                     "kmeans", "--skip-unreadable", *FAST, json_output=False)
    assert code == 0
    assert text.startswith(f"wrote {model}: CSE embedding + k-means, 32 centres, on "
                           "6 images (mobilenet_v2, 128 features per patch embedded "
                           "in 64; ")
    assert "threshold" in text and "largest distance of 2 held-out" in text
    assert "skipped unreadable image" in capsys.readouterr().err
    pipeline = load(model)
    assert [type(step) for _, step in pipeline.steps] == [
        PatchFeaturizer, ContrastiveEmbedder, KMeansDetector]
    assert pipeline[-1].cluster_centers_.shape == (32, 64)
    code, result = run_json("predict", model, tiles, "-o", tmp_path / "out")
    assert code == 0 and all(np.isfinite(row["score"]) for row in result["images"])


def test_fit_kmeans_on_the_backbone_features(tiles, tmp_path):
    model = tmp_path / "kmeans.npz"
    code, payload = run_json("fit", tiles, "-o", model, "--detector", "kmeans",
                             "--calibration", "0", *FAST)
    assert code == 0
    assert "embedder" not in payload
    assert (payload["detector"], payload["n_features"]) == ("KMeansDetector", 128)
    assert payload["n_fitted_images"] == N_IMAGES
    assert payload["threshold_rule"] == ("KMeansDetector contamination='max' "
                                         "(largest training distance)")
    pipeline = load(model)
    assert [type(step) for _, step in pipeline.steps] == [PatchFeaturizer,
                                                          KMeansDetector]
    # contamination="max": no training image is above the threshold.
    assert max(-pipeline.score_samples(sorted(map(str, tiles.iterdir())))) == (
        pytest.approx(payload["threshold"], rel=1e-5))


@pytest.mark.parametrize("extra, message", [
    (["--embedder", "cse", "--auto"], "--auto compares detectors on the backbone's "
     "features, not on a trained embedding; leave out --auto or --embedder cse."),
    (["--detector", "kmeans", "--auto"],
     "--auto chooses the detector itself; leave out --detector."),
    (["--detector", "crd", "--auto", "--embedder", "none"],
     "--auto chooses the detector itself; leave out --detector."),
    (["--detector", "kmeans", "--cells", "4"],
     "--cells fits local CRD, which --detector kmeans is not; leave out one of them."),
    (["--detector", "kmeans", "--embedder", "cse", "--lam", "0.1"],
     "--lam and --lam-scale set the penalty of CRD; --detector kmeans has none."),
    (["--detector", "kmeans", "--lam-scale", "absolute"], "--lam and --lam-scale"),
])
def test_options_that_do_not_go_together_exit_2(extra, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()  # refused before the folder is read
    args = ["fit", str(tmp_path / "empty"), "-o", str(tmp_path / "m.npz"), *extra]
    assert main([*args, *FAST]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith("crdistance fit: error: ") and message in error
    assert not (tmp_path / "m.npz").exists()
    code, out = run(*args, *FAST)
    assert code == 2 and message in json.loads(out)["error"]


def test_cse_needs_two_fitted_images(tiles, tmp_path, capsys):
    folder = tmp_path / "two"
    folder.mkdir()
    for path in sorted(tiles.iterdir())[:2]:
        shutil.copy(path, folder / path.name)
    assert main(["fit", str(folder), "--embedder", "cse", "-q", "-o",
                 str(tmp_path / "m.npz"), *FAST]) == 1
    error = capsys.readouterr().err
    assert "--embedder cse trains on at least 2 good images" in error
    assert "got 1 outside the held-out ones" in error


def test_a_model_the_safe_format_cannot_hold_is_explained(tmp_path, monkeypatch):
    import crdistance.persistence

    def refuse(model, path):
        raise TypeError("Step 'embedder' is a ContrastiveEmbedder; save supports ...")

    monkeypatch.setattr(crdistance.persistence, "save", refuse)
    with pytest.raises(CommandError, match=r"Cannot save the model as .*m\.npz: "
                       "Step 'embedder' is a ContrastiveEmbedder"):
        save_model(Pipeline([("detector", CRDetector())]), tmp_path / "m.npz")


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cse_demo")
    return write_demo_dataset(folder / "data", n_train=8, n_test_good=2,
                              n_defective=2, size=64)


def test_evaluate_cse_methods(demo_data, tmp_path):
    out = tmp_path / "evaluation"
    code, payload = run_json("evaluate", demo_data, "--methods", "crd,cse,cse_kmeans",
                             "-o", out, "--no-figures", *FAST)
    assert code == 0
    crd, cse, cse_kmeans = payload["rows"]
    assert (cse["method"], cse_kmeans["method"]) == ("CSE + CRD", "CSE k-means")
    for row in payload["rows"]:
        assert 0 <= row["image AUROC"] <= 1 and 0 <= row["pixel AUROC"] <= 1
        assert row["state bytes"] > 0
    # CRD on the 64-d embedding: a 64 x 64 Gram and residual operator, and the
    # embedder's arrays; k-means: 32 centres of 64 features and the embedder's.
    embedder_bytes = cse["state bytes"] - 2 * 64**2 * 8
    assert embedder_bytes > 0
    assert cse_kmeans["state bytes"] == embedder_bytes + 32 * 64 * 8
    with open(out / "evaluation.csv", newline="") as file:
        assert [row["method"] for row in csv.DictReader(file)] == [
            crd["method"], "CSE + CRD", "CSE k-means"]
