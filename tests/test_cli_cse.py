"""``crdistance fit --embedder cse``, ``--detector kmeans`` and the CSE methods
of ``crdistance evaluate``, on the demo data set."""

import contextlib
import csv
import io
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("PIL.Image")
from crdistance.cli import main  # noqa: E402
from crdistance.cli._demo_data import write_demo_dataset  # noqa: E402
from crdistance.featurizer import ContrastiveEmbedder  # noqa: E402
from crdistance.kmeans import KMeansDetector  # noqa: E402
from crdistance.persistence import load  # noqa: E402

FAST = ["--weights", "none", "--resize", "64", "--batch-size", "4"]


def run_json(*args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*map(str, args), "--json", "-q"])
    return code, json.loads(out.getvalue()) if code == 0 else None


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cse")
    return write_demo_dataset(folder / "data", n_train=8, n_test_good=2,
                              n_defective=2, size=64)


def test_fit_cse_kmeans_then_predict(data, tmp_path):
    model = tmp_path / "cse.npz"
    code, payload = run_json("fit", data, "-o", model, "--embedder", "cse",
                             "--detector", "kmeans", *FAST)
    assert code == 0
    assert payload["detector"] == "KMeansDetector"
    record = payload["embedder"]
    assert record["n_defective_images"] == record["n_training_images"] > 0
    assert 1 <= record["best_epoch"] <= record["n_iter"] == len(record["loss_curve"])
    pipeline = load(model)
    assert [type(step).__name__ for _, step in pipeline.steps] == [
        "PatchFeaturizer", "ContrastiveEmbedder", "KMeansDetector"]
    assert isinstance(pipeline[1], ContrastiveEmbedder)
    assert isinstance(pipeline[-1], KMeansDetector)
    assert payload["threshold"] == pytest.approx(pipeline[-1].threshold_)
    out = tmp_path / "predictions"
    assert main(["predict", str(model), str(data / "test" / "good"), "-o", str(out),
                 "-q"]) == 0
    with open(out / "scores.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 2
    assert all(np.isfinite(float(row["score"])) for row in rows)


@pytest.mark.parametrize("extra, message", [
    (["--embedder", "cse", "--auto"], "--auto compares"),
    (["--detector", "kmeans", "--auto"], "--auto compares"),
    (["--detector", "kmeans", "--cells", "4"], "--cells"),
])
def test_bad_combinations_are_explained(data, tmp_path, capsys, extra, message):
    assert main(["fit", str(data), "-o", str(tmp_path / "m.npz"), *extra, *FAST]) != 0
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_evaluate_cse_methods(data, tmp_path):
    out = tmp_path / "evaluation"
    code, payload = run_json("evaluate", data, "--methods", "crd,cse,cse_kmeans",
                             "-o", out, "--no-figures", *FAST)
    assert code == 0
    with open(out / "evaluation.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["method"] for row in rows][1:] == ["CSE + CRD", "CSE k-means"]
    for row in rows:
        assert 0 <= float(row["image AUROC"]) <= 1
