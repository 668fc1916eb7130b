"""The benchmark scripts run end to end in their --quick mode, on real data.

Each script runs in-process (runpy, ``sys.argv`` patched) with its results and
feature cache in a temporary folder, and must print its table and write its
CSV. The full benchmarks are run by hand (docs/benchmarks.md).
"""

import csv
import runpy
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name, args, monkeypatch, capsys):
    """Run ``benchmarks/<name>`` as ``__main__``; return its stdout."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [name, *map(str, args)])
    runpy.run_path(str(BENCHMARKS / name), run_name="__main__")
    return capsys.readouterr().out


def read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def check_table(out, columns):
    header = next(line for line in out.splitlines() if line.startswith("| "))
    assert [cell.strip() for cell in header.strip("|").split("|")] == columns
    assert "machine:" in out


@pytest.fixture(scope="module")
def image_dirs(shared_data, shared_weights, tmp_path_factory):
    """Results and feature cache of the image benchmarks (real data, weights)."""
    out = tmp_path_factory.mktemp("results")
    return ["--out-dir", out, "--cache-dir", out / "cache"], out


@pytest.fixture
def default_torch_home(monkeypatch):
    """No TORCH_HOME: the scripts must default to ../shared/weights."""
    monkeypatch.delenv("TORCH_HOME", raising=False)


@pytest.mark.slow  # about 5 s on 2 cores
def test_bench_images_quick(image_dirs, default_torch_home, monkeypatch, capsys):
    dirs, out_dir = image_dirs
    out = run_script("bench_images.py", ["--quick", *dirs], monkeypatch, capsys)
    columns = ["method", "image AUROC", "pixel AUROC", "AUPRO", "fit s",
               "score ms/image", "state bytes", "deployable bytes", "% of full bank"]
    check_table(out, columns)
    rows = read_csv(out_dir / "images_magnetic_tile_mobilenet_v2_quick.csv")
    assert [row["method"] for row in rows] == [
        "CRD lam=5", "CRD lam=0.01 (trace)", "1-NN exact",
        "1-NN greedy coreset 1 %", "1-NN random bank 10 %",
    ]
    # Real defects on a seeded subset: every method finds them well above chance
    # (a flipped score or shuffled labels would give ~0.5 or below).
    for row in rows:
        for metric, floor in (("image AUROC", 0.8), ("pixel AUROC", 0.8),
                              ("AUPRO", 0.65)):
            assert float(row[metric]) > floor, (row["method"], metric)
    assert int(rows[0]["deployable bytes"]) == 128 * 128 * 4
    assert len(list((out_dir / "cache").glob("*.npz"))) == 2  # train, test


def test_bench_scaling_quick(image_dirs, default_torch_home, monkeypatch, capsys):
    dirs, out_dir = image_dirs
    out = run_script("bench_scaling.py", ["--quick", *dirs], monkeypatch, capsys)
    check_table(out, ["train images", "train patches", "method", "fit s",
                      "score ms/image", "state bytes", "deployable bytes"])
    rows = read_csv(out_dir / "scaling_magnetic_tile_mobilenet_v2_quick.csv")
    assert [int(row["train images"]) for row in rows] == [2, 2, 4, 4]
    crd, knn = rows[0::2], rows[1::2]
    assert crd[0]["state bytes"] == crd[1]["state bytes"]
    assert int(knn[1]["state bytes"]) == 2 * int(knn[0]["state bytes"])
    pytest.importorskip("matplotlib")
    assert (out_dir / "scaling_magnetic_tile_mobilenet_v2_quick.png").is_file()


@pytest.mark.slow  # about 5 s on 2 cores
def test_bench_local_quick(image_dirs, shared_data, default_torch_home, monkeypatch,
                           capsys):
    dirs, out_dir = image_dirs
    tire = shared_data / "tire"
    out = run_script("bench_local.py",
                     ["--quick", "--timing-cases", "--other-data", tire, *dirs],
                     monkeypatch, capsys)
    rows = read_csv(out_dir / "local_magnetic_tile_mobilenet_v2_quick.csv")
    assert [row["method"] for row in rows] == [
        "CRD lam=0.01 (trace)", "local CRD 2 cells, one group",
        "local CRD 2 cells, per stage", "position grid 2x2, 1 cells per stage",
        "1-NN random bank 10 %",
    ]
    assert "machine:" in out
    by_method = {row["method"]: row for row in rows}
    # Four position cells of one cell each: four CRD models per stage.
    grid = by_method["position grid 2x2, 1 cells per stage"]
    one_cell = sum(d * d * 4 for d in (32, 24, 64, 96, 160))
    assert int(grid["deployable bytes"]) == 4 * (one_cell + 376 * 4)
    assert all(float(row["image AUROC"]) > 0.75 for row in rows)
    timing = read_csv(out_dir / "local_magnetic_tile_mobilenet_v2_quick_timing.csv")
    assert [row["case"] for row in timing] == [
        "plain CRD", "local CRD 2 cells per stage", "local CRD 2 cells, one group",
        "per stage, float64 input", "per stage, one image per call",
        "per stage, scoring tire",
    ]
    assert float(timing[0]["x plain CRD"]) == 1.0
    assert all(float(row["distance ms/image"]) > 0 for row in timing)
    # Per-stage cells beat one model of all five stages (0.94 against 0.81 here).
    assert (float(by_method["local CRD 2 cells, per stage"]["image AUROC"])
            > float(by_method["CRD lam=0.01 (trace)"]["image AUROC"]))


@pytest.mark.slow  # about 5 s on 2 cores
def test_bench_tabular_quick(shared_data, tmp_path, monkeypatch, capsys):
    out = run_script("bench_tabular.py", ["--quick", "--out-dir", tmp_path],
                     monkeypatch, capsys)
    assert "## protocol: pyod" in out and "## protocol: novelty" in out
    check_table(out, ["dataset", "CRD lam=5", "CRD lam=0.01 (trace)",
                      "CRD lam=0.1 (trace)", "local CRD 16 cells", "RBF 1024 + CRD",
                      "Nystroem 512 + CRD",
                      *_baseline_names()])
    rows = read_csv(tmp_path / "tabular_odds_quick.csv")
    assert {row["dataset"] for row in rows} == {"wbc", "lympho"}
    assert {row["protocol"] for row in rows} == {"pyod", "novelty"}
    assert len(rows) == 2 * 2 * (6 + 5)
    # The nearest-neighbour baselines reproduce PyOD's published ~0.95 on both.
    knn = [float(row["AUROC"]) for row in rows if row["method"].startswith("KNN")]
    assert len(knn) == 4 and min(knn) > 0.9


def _baseline_names():
    names = ["KNN", "LOF", "IForest", "OCSVM", "PCA"]
    try:
        import pyod  # noqa: F401
    except ImportError:
        return [f"{name} (sklearn)" for name in names]
    return names


def test_feature_cache_serves_subsets(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from _features import cache_prefix, cached_features, save_features

    args = Namespace(data=tmp_path, backbone="net", layers=None, weights="w",
                     resize=8, batch_size=1, out_dir=tmp_path, cache_dir=None)
    features = np.arange(3 * 2, dtype=np.float32).reshape(3, 2, 1, 1)
    target = tmp_path / "cache" / f"{cache_prefix(args)}-train-3-x.npz"
    save_features(target, features, ["a", "b", "c"], {})
    np.testing.assert_array_equal(
        cached_features(["c", "a"], "train", args), features[[2, 0]]
    )
    np.testing.assert_array_equal(
        cached_features(["a", "b", "c"], "train", args), features
    )


@pytest.mark.slow  # about 2 min on 2 cores
def test_bench_accuracy_quick(image_dirs, default_torch_home, monkeypatch, capsys):
    dirs, out_dir = image_dirs
    run_script("bench_accuracy.py", ["--quick", "--datasets", "screw", "tire",
                                     "--repeats", "1", *dirs], monkeypatch, capsys)
    lines = (out_dir / "bench_accuracy_quick.csv").read_text().splitlines()
    comments = [line for line in lines if line.startswith("#")]
    assert comments[0].startswith("# command: python benchmarks/bench_accuracy.py")
    assert any(line.startswith("# load average:") for line in comments)
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert list(rows[0])[:8] == [
        "dataset", "method", "image_auroc", "pixel_auroc", "aupro", "fit_s",
        "distance_ms_per_image", "deployable_bytes"]
    for dataset in ("screw", "tire"):
        methods = {row["method"]: row for row in rows if row["dataset"] == dataset}
        assert {"coreset_1pct", "crd", "local_crd", "auto", "best_crd"} <= set(methods)
        assert methods["auto"]["choice"] and methods["best_crd"]["choice"]
        # The oracle is the best candidate on the test labels.
        candidates = [row for name, row in methods.items() if name.startswith("cand_")]
        assert float(methods["best_crd"]["image_auroc"]) in {
            float(row["image_auroc"]) for row in candidates}
    assert not any(row["pixel_auroc"] for row in rows if row["dataset"] == "screw")
    assert all(row["pixel_auroc"] for row in rows if row["dataset"] == "tire")


@pytest.mark.slow  # about 1 min on 2 cores
def test_bench_cse_quick(image_dirs, default_torch_home, monkeypatch, capsys):
    dirs, out_dir = image_dirs
    run_script("bench_cse.py", ["--quick", "--datasets", "tire", "--repeats", "1",
                                *dirs], monkeypatch, capsys)
    lines = (out_dir / "bench_cse_quick.csv").read_text().splitlines()
    assert lines[0].startswith("# command: python benchmarks/bench_cse.py")
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert [row["method"] for row in rows] == [
        "crd", "local_crd", "coreset_1pct", "cse_kmeans", "cse_crd", "cse_local_crd",
        "coreset_1pct_on_cse"]
    cse = [row for row in rows if "cse" in row["method"]]
    # One embedder for the CSE rows: its training time is in each one's fit_s.
    assert len({row["n_iter"] for row in cse}) == 1
    assert all(float(row["fit_s"]) > float(rows[0]["fit_s"]) for row in cse)
    assert all(row["pixel_auroc"] and row["cos_defect_test"] for row in cse)
    assert (out_dir / "bench_cse_quick_loss.png").stat().st_size > 1000


@pytest.mark.slow  # about 1 min on 2 cores
def test_bench_unified_quick(image_dirs, default_torch_home, monkeypatch, capsys):
    dirs, out_dir = image_dirs
    run_script("bench_unified.py", ["--quick", "--datasets", "tire", "screw",
                                    "--repeats", "1", *dirs], monkeypatch, capsys)
    lines = (out_dir / "bench_unified_quick.csv").read_text().splitlines()
    assert lines[0].startswith("# command: python benchmarks/bench_unified.py")
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    per_category = [r for r in rows if r["method"].endswith("_per_category")]
    unified = [r for r in rows if r["method"].endswith("_unified")]
    assert {r["dataset"] for r in per_category} == {"tire", "screw", "mean"}
    assert {r["dataset"] for r in unified} == {"unified:tire", "unified:screw",
                                                "unified:mean"}
    # Routed models exist only unified; every other method in both settings.
    assert {r["method"].removesuffix("_per_category") for r in per_category} == {
        "crd", "local_crd", "grad", "grad_fewshot", "coreset_1pct"}
    assert {r["method"].removesuffix("_unified") for r in unified} == {
        "crd", "local_crd", "crd_routed", "local_crd_routed", "grad",
        "grad_fewshot", "coreset_1pct"}
    # screw has image labels only; tire has masks.
    for row in rows:
        has_masks = row["dataset"].endswith("tire") or row["dataset"].endswith("mean")
        assert bool(row["pixel_auroc"]) == has_masks, row
    by_key = {(r["dataset"], r["method"]): r for r in rows}
    # The mean row of the per-category models sums their state; a unified
    # model's rows all carry its own.
    local = [by_key[(d, "local_crd_per_category")] for d in ("tire", "screw")]
    assert int(by_key[("mean", "local_crd_per_category")]["deployable_bytes"]) == sum(
        int(r["deployable_bytes"]) for r in local)
    image = [float(by_key[(d, "crd_per_category")]["image_auroc"])
             for d in ("tire", "screw")]
    assert float(by_key[("mean", "crd_per_category")]["image_auroc"]) == pytest.approx(
        np.mean(image), abs=1e-4)
    few = by_key[("unified:tire", "grad_fewshot_unified")]
    assert int(few["n_train_images"]) < int(
        by_key[("unified:tire", "grad_unified")]["n_train_images"])


@pytest.mark.slow  # a fit, two predicts and a server, in processes: about 35 s
def test_bench_serve_quick(shared_data, shared_weights, default_torch_home,
                           tmp_path, monkeypatch, capsys):
    out = run_script("bench_serve.py", ["--quick", "--out-dir", tmp_path],
                     monkeypatch, capsys)
    check_table(out, ["method", "clients", "images", "images_per_s", "p50_ms",
                      "p90_ms", "p99_ms", "errors", "ratio_to_offline",
                      "ratio_to_pipeline", "mean_batch"])
    lines = (tmp_path / "bench_serve_quick.csv").read_text().splitlines()
    comments = [line for line in lines if line.startswith("#")]
    assert comments[0] == (f"# command: python benchmarks/bench_serve.py --quick "
                           f"--out-dir {tmp_path}")
    assert any(line.startswith("# load average:") for line in comments)
    assert any(line.startswith("# target p99 < 2 x p50 at 1 client: ")
               for line in comments)
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert [row["method"] for row in rows] == [
        "crd_predict_offline", "crd_pipeline_offline", "crd_serve_1_client",
        "crd_serve_2_clients", "crd_serve_2_clients_overlay"]
    offline, pipeline, *served = rows
    assert int(offline["images"]) == 6 - 2  # the short run's images excluded
    # The model in process scores as the command does.
    assert int(pipeline["score_mismatches"]) == 0
    for row in served:
        assert int(row["images"]) == int(row["requests"]) == 8, row
        assert int(row["errors"]) == 0 and int(row["score_mismatches"]) == 0, row
        assert 0 < float(row["p50_ms"]) <= float(row["p90_ms"]) <= float(
            row["p99_ms"]), row
        assert float(row["ratio_to_offline"]) == pytest.approx(
            float(row["images_per_s"]) / float(offline["images_per_s"]), rel=1e-3)
        assert float(row["ratio_to_pipeline"]) == pytest.approx(
            float(row["images_per_s"]) / float(pipeline["images_per_s"]), rel=1e-3)
    # One client at a time: every model batch holds its one image.
    assert float(served[0]["mean_batch"]) == 1.0
    assert 1.0 <= float(served[1]["mean_batch"]) <= 2.0
