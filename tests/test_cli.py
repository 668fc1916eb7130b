"""The crdistance command: run as ``python -m crdistance`` in a subprocess, and
through ``crdistance.cli.main`` in this process for the quick error paths."""

import contextlib
import csv
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from unittest.mock import ANY

import joblib
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")
Image = pytest.importorskip("PIL.Image")

from crdistance import CRDetector, LocalCRDetector, __version__  # noqa: E402
from crdistance.cli import main  # noqa: E402
from crdistance.cli._demo_data import write_demo_dataset  # noqa: E402
from crdistance.cli._io import Console, ImageReader, list_images  # noqa: E402
from crdistance.cli._model import fit_model, make_featurizer  # noqa: E402
from crdistance.cli._plots import picture_scale  # noqa: E402
from crdistance.persistence import load, save  # noqa: E402

SIZE = 64
FAST = ["--weights", "none", "--resize", "64", "--batch-size", "4"]


def crdistance(*args, torch_home, cwd):
    """Run the command; returns the CompletedProcess (text output)."""
    env = os.environ | {"TORCH_HOME": str(torch_home)}
    return subprocess.run([sys.executable, "-m", "crdistance", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)


def assert_png(path, size):
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        assert image.size == size


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A small demo without pretrained weights: its folder, JSON, stderr, seconds."""
    workdir = tmp_path_factory.mktemp("cli")
    start = time.perf_counter()
    result = crdistance("demo", "-o", "demo", "--train", 6, "--test-good", 2,
                        "--defective", 3, "--size", SIZE, "--json",
                        torch_home=workdir / "no_weights", cwd=workdir)
    assert result.returncode == 0, result.stderr
    seconds = time.perf_counter() - start
    return workdir, json.loads(result.stdout), result.stderr, seconds


@pytest.mark.slow  # the demo_run fixture takes ~17 s
def test_demo_falls_back_to_random_weights(demo_run):
    workdir, payload, stderr, seconds = demo_run
    assert "RANDOM weights" in stderr
    assert payload["weights"] is None
    assert payload["fit"]["n_fitted_images"] == 5  # one of 6 held out
    assert payload["predict"]["flagged"] == {
        "defective": {"flagged": ANY, "images": 3},
        "good": {"flagged": ANY, "images": 2},
    }
    methods = [row["method"] for row in payload["evaluate"]["rows"]]
    assert methods == ["CRD lam=0.01 (trace)", "1-NN exact"]
    for row in payload["evaluate"]["rows"]:
        # The demo's defects are plain to see even through random weights.
        assert row["image AUROC"] > 0.8 and row["pixel AUROC"] > 0.9
        assert row["state bytes"] > 0
    files = [workdir / path for path in payload["evaluate"]["files"]]
    assert files[0].name == "evaluation.csv" and files[0].is_file()
    if importlib.util.find_spec("matplotlib"):
        names = ["curves.png", "heatmaps_crd.png", "heatmaps_knn.png"]
        assert [path.name for path in files[1:]] == names
        for path in files[1:]:
            with Image.open(path) as image:
                assert image.format == "PNG" and min(image.size) > 300
    assert len(list((workdir / "demo" / "predictions" / "overlays").iterdir())) == 5
    assert seconds < 300


@pytest.mark.slow
def test_predict_writes_scores_and_overlays(demo_run):
    workdir, payload, _, _ = demo_run
    test = workdir / "demo" / "data" / "test"
    broken = workdir / "broken.png"
    broken.write_text("not an image")
    result = crdistance("predict", payload["fit"]["model"], test / "good",
                        *sorted(test.iterdir()), broken, "-o", "out",
                        "--skip-unreadable", "-q", "--json",
                        torch_home=workdir, cwd=workdir)
    assert result.returncode == 0, result.stderr
    # -q leaves only the warning about the skipped file on stderr.
    assert result.stderr.splitlines() == [
        f"warning: skipped unreadable image {broken}: cannot identify image file "
        f"'{broken}'"
    ]
    threshold = json.loads(result.stdout)["threshold"]
    assert threshold == payload["fit"]["threshold"]
    with open(workdir / "out" / "scores.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 6  # 5 test images, good ones named twice, and the broken file
    unreadable = {"path": str(broken), "score": "", "p_value": "",
                  "decision": "unreadable", "overlay": ""}
    assert rows[-1] == unreadable
    scale = picture_scale((SIZE, SIZE))
    for row in rows[:-1]:
        decision = "anomalous" if float(row["score"]) > threshold else "normal"
        assert row["decision"] == decision
        assert_png(workdir / row["overlay"], (2 * SIZE * scale, SIZE * scale))
    assert len({row["overlay"] for row in rows[:-1]}) == 5


def test_fit_on_a_plain_folder_skips_unreadable(tmp_path, capsys):
    write_demo_dataset(tmp_path / "data", n_train=4, n_test_good=0, n_defective=0,
                       size=SIZE)
    plain = tmp_path / "data" / "train" / "good"
    (plain / "broken.png").write_text("not an image")
    model = tmp_path / "model.npz"
    code = main(["fit", str(plain), "-o", str(model), "--skip-unreadable", "--json",
                 "--calibration", "0.25", *FAST])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["n_fitted_images"] == 3  # 000.png is held out, broken.png skipped
    assert payload["threshold_rule"] == (
        "largest CRD of 1 held-out good image; too few for false-alarm rate 0.01, "
        "so conformal at 0.5")
    assert payload["skipped"] == [{"path": str(plain / "broken.png"), "error": ANY}]
    assert load(model)[-1].threshold_ == payload["threshold"]


def test_unreadable_image_fails_with_its_name(tmp_path, capsys):
    data = write_demo_dataset(tmp_path, n_train=2, n_test_good=1, n_defective=1,
                              size=SIZE)
    broken = data / "test" / "good" / "zz_broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(["evaluate", str(data), "--no-figures", "-q", *FAST]) == 1
    assert f"Cannot read image {broken}" in capsys.readouterr().err


def run_json(*args):
    """``main(args + ["--json", "-q"])`` in this process; its exit code and JSON."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*map(str, args), "--json", "-q"])
    return code, json.loads(out.getvalue())


LAYERS = ["features.6", "features.3", "features.13"]  # 32, 24 and 96 channels


@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    """A local CRD model of 2 cells fitted on the demo data: data, model, payload."""
    folder = tmp_path_factory.mktemp("local")
    data = write_demo_dataset(folder / "data", n_train=8, n_test_good=2,
                              n_defective=2, size=SIZE)
    model = folder / "local.npz"
    code, payload = run_json("fit", data, "-o", model, "--cells", 2, "--layers",
                             *LAYERS, *FAST)
    assert code == 0
    return data, model, payload


def test_fit_local_model(local_model):
    _, model, payload = local_model
    assert payload["detector"] == "LocalCRDetector"
    assert payload["layers"] == LAYERS
    assert (payload["n_cells"], payload["n_nearest_cells"]) == (2, 3)
    assert payload["n_cells_per_group"] == [2, 2, 2]
    assert payload["feature_groups"] == [32, 24, 96]
    assert payload["n_fitted_images"] == 6  # 2 of 8 held out
    detector = load(model)[-1]
    assert type(detector) is LocalCRDetector
    assert detector.feature_groups_ == [32, 24, 96]
    assert [len(centres) for centres in detector.cell_centers_] == [2, 2, 2]
    assert detector.threshold_ == payload["threshold"]


def test_predict_with_a_local_model(local_model):
    data, model, payload = local_model
    folders = sorted((data / "test").iterdir())
    code, result = run_json("predict", model, *folders, "-o", model.parent / "out")
    assert code == 0
    assert result["threshold"] == payload["threshold"]
    pipeline = load(model)
    paths = [row["path"] for row in result["images"]]
    expected = -pipeline.score_samples(paths)
    np.testing.assert_allclose([row["score"] for row in result["images"]], expected,
                               rtol=1e-5)
    for row, score in zip(result["images"], expected, strict=True):
        assert row["decision"] == ("anomalous" if score > payload["threshold"]
                                   else "normal")


def test_export_of_a_model_to_onnx_cannot_write_is_explained(
    local_model, monkeypatch, capsys
):
    import crdistance.export

    def unsupported(model, path, **options):
        raise TypeError("to_onnx exports ..., got (PatchFeaturizer, Unknown).")

    monkeypatch.setattr(crdistance.export, "to_onnx", unsupported)
    _, model, _ = local_model
    assert main(["export", str(model), "-o", str(model.parent / "x.onnx")]) == 1
    assert capsys.readouterr().err.endswith(
        f"error: Cannot export {model}: to_onnx exports ..., got (PatchFeaturizer, "
        "Unknown).\n"
    )


def test_evaluate_crd_and_local(local_model):
    data, _, _ = local_model
    code, payload = run_json("evaluate", data, "--methods", "crd,local",
                             "--no-figures", "-o", data.parent / "evaluation", *FAST)
    assert code == 0
    crd, local = payload["rows"]
    assert local["method"] == "local CRD 64 cells"  # the default without --cells
    with open(data.parent / "evaluation" / "evaluation.csv", newline="") as file:
        written = list(csv.DictReader(file))
    for row, line in zip((crd, local), written, strict=True):
        # 2 good and 2 defective test images: an image AUROC is a count of
        # ordered pairs out of 4 (ties count half), i.e. a multiple of 1/8.
        assert (8 * row["image AUROC"]) == pytest.approx(round(8 * row["image AUROC"]))
        assert line["method"] == row["method"]
        for metric in ("image AUROC", "pixel AUROC", "AUPRO"):
            assert float(line[metric]) == pytest.approx(row[metric])
    # 512 training rows (8 images of 8 x 8 patches) hold at most one cell per d_g
    # rows: 16 cells of the 32 features, 5 of the 96, not 64 of each. Per cell: the
    # d_g x d_g Gram, residual and scoring operators, the centre, count and weight.
    n_cells = {32: 512 // 32, 96: 512 // 96}
    assert local["state bytes"] == sum(
        n * (d * d * (8 + 8 + 4) + d * 8 + 2 * 8) for d, n in n_cells.items()
    )
    assert crd["state bytes"] == 2 * 128**2 * 8  # Gram matrix and residual operator


def test_evaluate_a_set_with_image_labels_only(local_model, tmp_path, capsys):
    """No ground_truth folder (as screw here): image AUROC, no pixel metrics,
    a ROC figure alone, and a warning that says so."""
    data, _, _ = local_model
    copy = tmp_path / "data"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns("ground_truth"))
    code = main(["evaluate", str(copy), "--methods", "crd", "-o",
                 str(tmp_path / "evaluation"), "--json", *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "has no ground_truth folder: image metrics only" in captured.err
    (row,) = json.loads(captured.out)["rows"]
    assert row["pixel AUROC"] is None and row["AUPRO"] is None
    assert (8 * row["image AUROC"]) == pytest.approx(round(8 * row["image AUROC"]))
    with open(tmp_path / "evaluation" / "evaluation.csv", newline="") as file:
        (line,) = list(csv.DictReader(file))
    assert line["pixel AUROC"] == line["AUPRO"] == ""
    if importlib.util.find_spec("matplotlib"):
        assert_png(tmp_path / "evaluation" / "curves.png", (500, 450))


def test_fit_auto_chooses_a_detector_from_good_images(tmp_path):
    data = write_demo_dataset(tmp_path / "data", n_train=12, n_test_good=0,
                              n_defective=0, size=SIZE)
    model = tmp_path / "auto.npz"
    code, payload = run_json("fit", data, "-o", model, "--auto", *FAST)
    assert code == 0
    names = [candidate["name"] for candidate in payload["auto"]["candidates"]]
    assert payload["auto"]["chosen"] in names and len(names) == len(set(names)) > 3
    for candidate in payload["auto"]["candidates"]:
        assert 0 <= candidate["image_auroc"] <= 1
    chosen = payload["auto"]["chosen"]
    detector = load(model)[-1]
    assert type(detector).__name__ == payload["detector"]
    assert (type(detector) is CRDetector) == chosen.startswith("crd ")
    assert payload["n_fitted_images"] == 10  # 2 of 12 held out for the threshold


def test_evaluate_lists_the_label_free_choice(local_model, tmp_path):
    data, _, _ = local_model
    code, payload = run_json("evaluate", data, "--methods", "crd,auto", "--no-figures",
                             "-o", tmp_path / "evaluation", *FAST)
    assert code == 0
    labels = [row["method"] for row in payload["rows"]]
    assert labels[0].startswith("CRD") and labels[1].startswith("auto: ")


def test_fit_auto_needs_eight_images(tmp_path, capsys):
    data = write_demo_dataset(tmp_path / "data", n_train=5, n_test_good=0,
                              n_defective=0, size=SIZE)
    assert main(["fit", str(data), "--auto", "-q", *FAST]) == 1
    assert "needs at least 8 images" in capsys.readouterr().err


def test_local_cells_are_placed_on_images_spread_over_the_training_set(
    tmp_path, monkeypatch
):
    rng = np.random.default_rng(0)
    folder = tmp_path / "good"
    folder.mkdir()
    for i, level in enumerate([40] * 4 + [215] * 4):  # dark, then bright images
        noise = rng.integers(-10, 11, size=(SIZE, SIZE, 3))
        Image.fromarray((level + noise).astype(np.uint8)).save(folder / f"{i}.png")
    paths = list_images(folder)
    featurizer = make_featurizer(paths, backbone="mobilenet_v2", layers=None,
                                 weights=None, resize=SIZE, batch_size=1,
                                 device="cpu")
    calls, partial_fit = [], LocalCRDetector.partial_fit

    def record(detector, X, y=None):
        calls.append(len(X))
        return partial_fit(detector, X)

    monkeypatch.setattr(LocalCRDetector, "partial_fit", record)
    # 64 patches per image of 128 features: two cells need 2 x 128 rows (one per
    # d rows), so k-means takes the patches of four images.
    detector = LocalCRDetector(n_cells=2, max_kmeans_samples=256, random_state=0)
    fit_model(featurizer, detector, paths, calibration=0.25,
              reader=ImageReader(False), console=Console(quiet=True))
    # 0.png and 7.png are held out; dark and bright images come first.
    assert calls == [4, 1, 1]
    assert detector.n_cells_ == [2]
    features = featurizer.transform(paths)
    means = [features[:4].mean(axis=(0, 1, 2)), features[4:].mean(axis=(0, 1, 2))]
    gap = np.linalg.norm(means[0] - means[1])
    for mean in means:  # a cell on the dark and a cell on the bright images
        distances = np.linalg.norm(detector.cell_centers_[0] - mean, axis=1)
        assert distances.min() < gap / 4


def write_model_files(folder):
    """Files that are not image models of this crdistance version."""
    (folder / "garbage.npz").write_text("not a model")
    joblib.dump(CRDetector(), folder / "pickled.npz")
    save(CRDetector().fit(np.eye(3)), folder / "rows.npz")
    with zipfile.ZipFile(folder / "rows.npz") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    header = json.loads(members["header.json"])
    members["header.json"] = json.dumps(header | {"format_version": 99}).encode()
    with zipfile.ZipFile(folder / "future.npz", "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "missing"], "No folder missing."),
        (["fit", "empty"], "No training images in empty"),
        (["evaluate", "empty"], "No folder empty/train/good"),
        (["predict", "missing.npz", "x.png"], "No model file missing.npz."),
        (["predict", "garbage.npz", "x.png"], "garbage.npz is not a valid crdistance"),
        (["predict", "pickled.npz", "x.png"], "Pickle and joblib files are never read"),
        (["export", "future.npz"], "format version 99 is not supported"),
        (["predict", "rows.npz", "x.png"], "rows.npz holds a CRDetector that does not"),
        (["fit", "empty", "--cells", "2", "--calibration", "0"],
         "Local CRD (--cells) sets its threshold on held-out good images"),
        (["evaluate", "empty", "--cells", "2"],
         "--cells sets the cells of the local method; add local to --methods."),
        (["fit", "empty", "--auto", "--cells", "2"],
         "--auto chooses the cells itself; leave out --cells."),
        (["fit", "empty", "--auto", "--calibration", "0"],
         "--auto may choose local CRD, which sets its threshold on held-out good"),
    ],
)
def test_errors_are_explained(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    write_model_files(tmp_path)
    assert main(args) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"crdistance {args[0]}: error: ") and message in error


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"crdistance {__version__}\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "model.npz"], "the following arguments are required"),
        (["fit", "data", "--calibration", "1.5"], "must be in [0, 1)"),
        (["evaluate", "data", "--methods", "crd,svm"], "choose among"),
        (["fit", "data", "--cells", "0"], "--cells: must be a positive integer, got 0"),
        (["evaluate", "data", "--nearest-cells", "-1"], "must be a positive integer"),
    ],
)
def test_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_exit_codes_and_json_error_of_the_command(tmp_path, monkeypatch, capsys):
    result = crdistance("fit", "missing", "--json", torch_home=tmp_path, cwd=tmp_path)
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"error": "No folder missing."}
    assert result.stderr == "crdistance fit: error: No folder missing.\n"
    # A usage error exits with 2 through argparse (in-process: one start is enough).
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit"])
    assert exit_info.value.code == 2
    assert "usage: crdistance fit" in capsys.readouterr().err


@pytest.mark.slow
def test_export_writes_a_checked_onnx_model(demo_run):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from crdistance.export import load_onnx

    workdir, payload, _, _ = demo_run
    result = crdistance("export", payload["fit"]["model"], "-o", "model.onnx",
                        "--json", torch_home=workdir, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["bytes"] == (workdir / "model.onnx").stat().st_size
    assert load_onnx(workdir / "model.onnx").input_shape == (None, 3, 224, 224)


@pytest.mark.slow
def test_demo_with_pretrained_weights_runs_in_two_minutes(shared_weights, tmp_path):
    start = time.perf_counter()
    result = crdistance("demo", "-o", "demo", torch_home=shared_weights, cwd=tmp_path)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert "features: mobilenet_v2, weights IMAGENET1K_V1" in result.stdout
    assert "RANDOM" not in result.stderr
    assert seconds < 120


def test_demo_dataset_is_deterministic_and_masks_every_defect(tmp_path):
    from crdistance.datasets import load_mvtec

    sets = [
        load_mvtec(write_demo_dataset(tmp_path / name, n_train=1, n_test_good=1,
                                      n_defective=6, size=SIZE, seed=3), "test")
        for name in ("first", "second")
    ]
    for image, same in zip(sets[0].images, sets[1].images, strict=True):
        assert image.shape == (SIZE, SIZE, 3) and (image == same).all()
    for kind, mask in zip(sets[0].defect_types, sets[0].masks, strict=True):
        assert mask.any() == (kind != "good")
