"""One model for several product categories in the command line: ``fit`` and
``evaluate`` with several DATA_DIRs, ``fit --per-category``, ``--detector grad``
and ``predict`` of such models. On a few real images of magnetic_tile, screw
(no masks) and tire copied in the MVTec AD layout (random backbone weights,
64 pixels), in this process."""

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
from crdistance import CRDetector, LocalCRDetector  # noqa: E402
from crdistance.categories import PerCategoryDetector  # noqa: E402
from crdistance.cli import main  # noqa: E402
from crdistance.cli._model import held_out  # noqa: E402
from crdistance.featurizer import PatchFeaturizer  # noqa: E402
from crdistance.grad import GRADDetector  # noqa: E402
from crdistance.kmeans import KMeansDetector  # noqa: E402
from crdistance.persistence import load, save  # noqa: E402

FAST = ["--weights", "none", "--resize", "64", "--batch-size", "4"]
NAMES = ("magnetic_tile", "screw", "tire")
N_TRAIN, N_GOOD, N_DEFECTIVE = 6, 2, 2
N_HELD = len(held_out(N_TRAIN, 0.2))  # held out of each category: 1


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Images of 64 pixels: one thread is faster than two, and far faster on a
    loaded machine, where two threads wait for each other at every layer."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(*args, json_output=True):
    """``main(args + [--json] + ["-q"])`` in this process: exit code, stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*map(str, args), *(["--json"] if json_output else []), "-q"])
    return code, out.getvalue()


def run_json(*args):
    code, out = run(*args)
    return code, json.loads(out)


def copy_category(source, target):
    """The first training images and the first good and defective test images
    (of the first defect kind) of a category, with their masks where it has
    them, in the MVTec AD layout."""
    for path in sorted((source / "train" / "good").iterdir())[:N_TRAIN]:
        (target / "train" / "good").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / "train" / "good" / path.name)
    defect = sorted(p.name for p in (source / "test").iterdir() if p.name != "good")[0]
    for kind, count in (("good", N_GOOD), (defect, N_DEFECTIVE)):
        (target / "test" / kind).mkdir(parents=True)
        for path in sorted((source / "test" / kind).iterdir())[:count]:
            shutil.copy(path, target / "test" / kind / path.name)
            mask = source / "ground_truth" / kind / f"{path.stem}_mask.png"
            if mask.is_file():
                (target / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                shutil.copy(mask, target / "ground_truth" / kind / mask.name)
    return target


@pytest.fixture(scope="module")
def folders(shared_data, tmp_path_factory):
    """magnetic_tile, screw and tire folders of a few real images each."""
    root = tmp_path_factory.mktemp("unified")
    return [copy_category(shared_data / name, root / name) for name in NAMES]


def training_paths(folder):
    return sorted((folder / "train" / "good").iterdir())


def held_paths(folder):
    paths = training_paths(folder)
    return [str(paths[i]) for i in sorted(held_out(len(paths), 0.2))]


def fitted_paths(folder):
    paths = training_paths(folder)
    held = held_out(len(paths), 0.2)
    return [str(path) for i, path in enumerate(paths) if i not in held]


@pytest.fixture(scope="module")
def pooled(folders):
    """``fit`` of the three folders: one CRD on all of them; model and JSON."""
    model = folders[0].parent / "pooled.npz"
    code, payload = run_json("fit", *folders, "-o", model, *FAST)
    assert code == 0
    return model, payload


def test_fit_pools_the_categories_in_one_crd(pooled, folders):
    model, payload = pooled
    assert payload["detector"] == "CRDetector"
    assert payload["data"] == [str(folder / "train" / "good") for folder in folders]
    assert [record["name"] for record in payload["categories"]] == list(NAMES)
    for record, folder in zip(payload["categories"], folders, strict=True):
        assert record["data"] == str(folder / "train" / "good")
        assert (record["n_images"], record["n_fitted_images"],
                record["n_held_out"]) == (N_TRAIN, N_TRAIN - N_HELD, N_HELD)
    assert payload["n_fitted_images"] == 3 * (N_TRAIN - N_HELD)
    # Held out of every category; the threshold is the largest of them all.
    assert payload["threshold_rule"] == (
        "largest CRD of 3 held-out good images; too few for false-alarm rate 0.01, "
        "so conformal at 0.25")
    largest = [record["largest_held_out_score"] for record in payload["categories"]]
    assert payload["threshold"] == max(largest)
    pipeline = load(model)
    assert [type(step) for _, step in pipeline.steps] == [PatchFeaturizer,
                                                          CRDetector]
    assert pipeline[-1].threshold_ == payload["threshold"]
    for folder, score in zip(folders, largest, strict=True):
        assert max(-pipeline.score_samples(held_paths(folder))) == pytest.approx(
            score, rel=1e-5)
    # One Gram matrix over the fitted images of all categories.
    features = pipeline[0].transform(
        [path for folder in folders for path in fitted_paths(folder)])
    alone = CRDetector(lam=0.01, lam_scale="trace").fit(features)
    np.testing.assert_allclose(pipeline[-1].score_samples(features),
                               alone.score_samples(features), rtol=1e-6)


@pytest.fixture(scope="module")
def routed(folders):
    """``fit --per-category`` of the three folders: model and JSON."""
    model = folders[0].parent / "routed.npz"
    code, payload = run_json("fit", *folders, "-o", model, "--per-category", *FAST)
    assert code == 0
    return model, payload


def test_fit_per_category_sets_each_category_threshold(routed, folders):
    model, payload = routed
    assert (payload["detector"], payload["routing"]["rule"],
            payload["category_detector"]) == ("PerCategoryDetector", "nearest_mean",
                                              "CRDetector")
    assert payload["threshold"] == 1.0
    assert payload["routing"]["n_held_out"] == 3
    assert 0 <= payload["routing"]["n_routed_to_own_category"] <= 3
    pipeline = load(model)
    detector = pipeline[-1]
    assert type(detector) is PerCategoryDetector
    assert detector.categories_ == list(NAMES)
    assert detector.threshold_ == 1.0
    features = {folder.name: pipeline[0].transform(held_paths(folder))
                for folder in folders}
    for record, own in zip(payload["categories"], detector.detectors_, strict=True):
        assert type(own) is CRDetector
        # Its own detector's largest distance of its own held-out images.
        own_largest = float(np.max(-own.score_samples(features[record["name"]])))
        assert record["threshold"] == own.threshold_
        assert own.threshold_ == pytest.approx(own_largest, rel=1e-6)
    assert payload["threshold_rule"] == ("largest CRD of each category's own held-out "
                                         "good images (3 in all); too few for "
                                         "false-alarm rate 0.01, so conformal at "
                                         "0.5, distances in units of it")


def test_predict_names_the_routed_category(routed, folders, tmp_path):
    model, _ = routed
    tests = [kind for folder in folders for kind in sorted((folder / "test").iterdir())]
    code, result = run_json("predict", model, *tests, "-o", tmp_path)
    assert code == 0 and result["threshold"] == 1.0
    pipeline = load(model)
    paths = [row["path"] for row in result["images"]]
    assert len(paths) == 3 * (N_GOOD + N_DEFECTIVE)
    features = pipeline[0].transform(paths)
    routes = pipeline[-1].route(features)
    assert [row["category"] for row in result["images"]] == routes.tolist()
    np.testing.assert_allclose([row["score"] for row in result["images"]],
                               -pipeline[-1].score_samples(features), rtol=1e-5)
    with open(tmp_path / "scores.csv", newline="") as file:
        reader = csv.DictReader(file)
        lines = list(reader)
    assert reader.fieldnames == ["path", "category", "score", "p_value", "decision",
                                 "overlay"]
    assert [line["category"] for line in lines] == routes.tolist()
    code, text = run("predict", model, tests[0], "-o", tmp_path / "text",
                     json_output=False)
    assert code == 0
    assert f"  {routes[0]}" in text.splitlines()[0]
    assert "in units of each category's threshold" in text.splitlines()[-1]


def test_fit_grad_on_two_categories_and_predict(folders, tmp_path):
    model = tmp_path / "grad.npz"
    magnetic_tile, _, tire = folders
    code, payload = run_json("fit", magnetic_tile, tire, "-o", model, "--detector",
                             "grad", "--max-epochs", 1, *FAST)
    assert code == 0
    assert (payload["detector"], payload["max_epochs"], payload["n_iter"],
            payload["random_state"]) == ("GRADDetector", 1, 1, 0)
    assert payload["threshold_rule"] == (
        "largest distance of 2 held-out good images; too few for false-alarm rate "
        "0.01, so conformal at 0.333")
    assert [record["name"] for record in payload["categories"]] == ["magnetic_tile",
                                                                    "tire"]
    pipeline = load(model)
    assert type(pipeline[-1]) is GRADDetector
    assert pipeline[-1].threshold_ == payload["threshold"]
    code, result = run_json("predict", model, tire / "test" / "good", "-o",
                            tmp_path / "out")
    assert code == 0
    assert "category" not in result["images"][0]  # one detector: no routing
    np.testing.assert_allclose(
        [row["score"] for row in result["images"]],
        -pipeline.score_samples([row["path"] for row in result["images"]]),
        rtol=1e-5)


@pytest.mark.parametrize("extra, inner, method", [
    (["--detector", "kmeans"], KMeansDetector,
     "k-means per category (32 centres each; PerCategoryDetector, nearest_mean "
     "routing) on 10 images"),
    (["--cells", "2"], LocalCRDetector,
     "local CRD per category (2 cells per layer each; PerCategoryDetector, "
     "nearest_mean routing) on 10 images"),
    (["--detector", "grad", "--max-epochs", "1"], GRADDetector,
     "GRAD per category (at most 1 epoch each; PerCategoryDetector, nearest_mean "
     "routing) on 10 images"),
])
def test_per_category_wraps_the_chosen_detector(extra, inner, method, folders,
                                                 tmp_path):
    model = tmp_path / "model.npz"
    code, text = run("fit", folders[0], folders[2], "-o", model, "--per-category",
                     *extra, *FAST, json_output=False)
    assert code == 0
    first, second = text.splitlines()
    assert first.startswith(f"wrote {model}: {method} (mobilenet_v2, 128 features "
                            "per patch), threshold 1 = largest ")
    detector = load(model)[-1]
    assert [type(own) for own in detector.detectors_] == [inner, inner]
    thresholds = [own.threshold_ for own in detector.detectors_]
    assert second.startswith(
        f"2 categories: magnetic_tile 5 + 1 held out (threshold {thresholds[0]:.4g}), "
        f"tire 5 + 1 held out (threshold {thresholds[1]:.4g}); ")
    assert second.endswith(" of 2 held-out images routed to their own category")


def test_evaluate_fits_once_and_reports_per_category(folders, tmp_path,
                                                      monkeypatch, capsys):
    sizes, fit = [], CRDetector.fit

    def record(detector, X, y=None):
        sizes.append(len(X))
        return fit(detector, X)

    monkeypatch.setattr(CRDetector, "fit", record)
    out = tmp_path / "evaluation"
    code = main(["evaluate", *map(str, folders), "--methods", "crd,crd_routed,grad",
                 "--max-epochs", "1", "--no-figures", "-o", str(out), "--json",
                 *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "screw has no ground_truth folder: image metrics only" in captured.err
    # crd: one CRD on the 18 training images; crd_routed: one per category.
    assert sizes == [3 * N_TRAIN, N_TRAIN, N_TRAIN, N_TRAIN]
    rows = json.loads(captured.out)["rows"]
    methods = ["CRD lam=0.01 (trace)", "CRD per category lam=0.01 (trace)", "GRAD"]
    assert [(row["category"], row["method"]) for row in rows] == [
        (name, method) for name in (*NAMES, "mean") for method in methods]
    by_key = {(row["category"], row["method"]): row for row in rows}
    for method in methods:
        per_category = [by_key[name, method] for name in NAMES]
        mean = by_key["mean", method]
        for row in per_category:
            # 2 good and 2 defective test images: a multiple of 1/8.
            eighths = 8 * row["image AUROC"]
            assert eighths == pytest.approx(round(eighths))
            assert row["fit s"] is None and row["state bytes"] is None
        assert by_key["screw", method]["pixel AUROC"] is None
        assert by_key["screw", method]["AUPRO"] is None
        assert mean["image AUROC"] == pytest.approx(
            np.mean([row["image AUROC"] for row in per_category]))
        for metric in ("pixel AUROC", "AUPRO"):  # over the categories with masks
            assert mean[metric] == pytest.approx(np.mean(
                [by_key[name, method][metric] for name in ("magnetic_tile", "tire")]))
        assert mean["fit s"] > 0 and mean["state bytes"] > 0
    # Three CRDs of 128 features, and the float32 mean feature of each category.
    assert by_key["mean", methods[1]]["state bytes"] == 3 * by_key[
        "mean", methods[0]]["state bytes"] + 3 * 128 * 4
    with open(out / "evaluation.csv", newline="") as file:
        reader = csv.DictReader(file)
        lines = list(reader)
    assert reader.fieldnames[:2] == ["category", "method"]
    assert [line["category"] for line in lines] == [row["category"] for row in rows]
    assert lines[1]["pixel AUROC"] != "" and lines[4]["pixel AUROC"] == ""


def test_evaluate_text_and_figures_of_two_categories(folders, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "evaluation"
    code, text = run("evaluate", folders[0], folders[1], "--methods", "crd", "-o",
                     out, *FAST, json_output=False)
    assert code == 0
    header, _, *lines, _, written = text.splitlines()
    assert header.split()[:2] == ["category", "method"]
    assert [line.split()[0] for line in lines] == ["magnetic_tile", "screw", "mean"]
    assert sorted(path.name for path in out.iterdir()) == [
        "curves_magnetic_tile.png", "curves_screw.png", "evaluation.csv",
        "heatmaps_magnetic_tile_crd.png", "heatmaps_screw_crd.png"]
    assert written.startswith(f"wrote {out / 'evaluation.csv'}, ")


def test_evaluate_a_category_whose_masks_are_missing(folders, tmp_path, capsys):
    """A ground_truth folder that lacks masks: image metrics only, a warning."""
    tire = shutil.copytree(folders[2], tmp_path / "tire")
    mask = sorted((tire / "ground_truth").rglob("*_mask.png"))[0]
    mask.unlink()
    code = main(["evaluate", str(tire), "--methods", "crd", "--no-figures", "-o",
                 str(tmp_path / "evaluation"), "--json", *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "1 defective image(s) have no ground-truth mask" in captured.err
    assert "Image metrics only." in captured.err
    (row,) = json.loads(captured.out)["rows"]
    assert row["category"] == "tire" and row["fit s"] > 0
    assert row["pixel AUROC"] is None and row["AUPRO"] is None
    assert 8 * row["image AUROC"] == pytest.approx(round(8 * row["image AUROC"]))


def test_a_category_of_one_image_cannot_hold_one_out(folders, tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(training_paths(folders[0])[0], one)
    code = main(["fit", str(folders[2]), str(one), "-q", "-o",
                 str(tmp_path / "m.npz"), *FAST])
    assert code == 1
    assert ("needs at least 2 training images in each DATA_DIR; one has 1"
            in capsys.readouterr().err)


@pytest.mark.parametrize("args, message", [
    (["fit", "a/parts", "--per-category"], "--per-category fits one detector per "
     "category and needs 2 or more DATA_DIRs, one per category; got 1."),
    (["fit", "a/parts", "b/parts"], "a/parts and b/parts are both named 'parts', "
     "and a DATA_DIR's name is its category"),
    (["fit", "a/parts", "a/parts/"], "a/parts is given twice"),
    (["fit", "a/parts", "--detector", "grad", "--cells", "2"],
     "--cells fits local CRD, which --detector grad is not; leave out one of them."),
    (["fit", "a/parts", "--detector", "grad", "--lam", "0.1"],
     "--lam and --lam-scale set the penalty of CRD; --detector grad has none."),
    (["fit", "a/parts", "--detector", "grad", "--embedder", "cse"],
     "--detector grad learns its own representation of the backbone's features"),
    (["fit", "a/parts", "--detector", "grad", "--auto"],
     "--auto chooses the detector itself; leave out --detector."),
    (["fit", "a/parts", "--max-epochs", "2"],
     "--max-epochs sets the training of --detector grad"),
    (["fit", "a/parts", "b/bolts", "--per-category", "--auto"],
     "--auto chooses one detector on the good images of all categories"),
    (["fit", "a/parts", "b/bolts", "--per-category", "--embedder", "cse"],
     "--per-category does not fit --embedder cse"),
    (["evaluate", "a/parts", "--methods", "crd,crd_routed"],
     "crd_routed fits one CRD per category and needs 2 or more DATA_DIRs"),
    (["evaluate", "a/parts", "b/bolts", "--max-epochs", "2"],
     "--max-epochs sets the training of the grad method"),
    (["evaluate", "a/parts", "b/parts"], "are both named 'parts'"),
])
def test_options_that_do_not_go_together_exit_2(args, message, tmp_path,
                                                monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the folders need not exist: refused before
    assert main([*args, "-o", "out"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith(f"crdistance {args[0]}: error: ") and message in error
    assert not (tmp_path / "out").exists()
    code, out = run(*args, "-o", "out")
    assert code == 2 and message in json.loads(out)["error"]


def test_max_epochs_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "parts", "--detector", "grad", "--max-epochs", "0"])
    assert exit_info.value.code == 2
    assert "--max-epochs: must be a positive integer, got 0" in capsys.readouterr().err


def test_a_per_category_detector_without_featurizer_is_no_image_model(tmp_path):
    from crdistance.cli._io import CommandError
    from crdistance.cli._model import load_model

    rows = tmp_path / "rows.npz"
    features = np.random.default_rng(0).normal(size=(32, 3))
    save(PerCategoryDetector().fit(features, ["a"] * 16 + ["b"] * 16), rows)
    with pytest.raises(CommandError, match="holds a PerCategoryDetector that does "
                       "not take images"):
        load_model(rows)
