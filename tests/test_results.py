"""The committed benchmark results (docs/results) and the tables made from them."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
COLUMNS = ["dataset", "method", "image_auroc", "pixel_auroc", "aupro", "fit_s",
           "distance_ms_per_image", "deployable_bytes"]


def rows_of(path):
    lines = path.read_text().splitlines()
    return (
        [line for line in lines if line.startswith("#")],
        list(csv.DictReader(line for line in lines if not line.startswith("#"))),
    )


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.csv")), ids=lambda p: p.name)
def test_results_follow_the_shared_format(path):
    comments, rows = rows_of(path)
    assert comments[0].startswith("# command: python benchmarks/")
    assert any(line.startswith("# date: ") for line in comments)
    assert any(line.startswith("# load average: ") for line in comments)
    assert list(rows[0])[: len(COLUMNS)] == COLUMNS
    for row in rows:
        assert row["method"] == row["method"].lower() and " " not in row["method"]
        for column in ("image_auroc", "pixel_auroc", "aupro"):
            assert row[column] == "" or 0 <= float(row[column]) <= 1


def test_accuracy_results_hold_every_required_method():
    _, rows = rows_of(RESULTS / "bench_accuracy.csv")
    for dataset in ("magnetic_tile", "screw", "tire"):
        methods = {row["method"] for row in rows if row["dataset"] == dataset}
        assert {"knn_exact", "coreset_1pct", "coreset_10pct", "crd", "local_crd",
                "auto", "best_crd"} <= methods, dataset


def test_readme_headline_is_made_from_the_results():
    result = subprocess.run([sys.executable, str(RESULTS / "tables.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cse_results_hold_every_required_method():
    _, rows = rows_of(RESULTS / "bench_cse.csv")
    for dataset in ("magnetic_tile", "screw", "tire"):
        methods = {row["method"] for row in rows if row["dataset"] == dataset}
        assert {"crd", "local_crd", "cse_kmeans", "cse_crd", "cse_local_crd",
                "coreset_1pct", "coreset_1pct_on_cse"} <= methods, dataset


def test_unified_results_hold_every_setting():
    _, rows = rows_of(RESULTS / "bench_unified.csv")
    methods = {(row["dataset"], row["method"]) for row in rows}
    for dataset in ("magnetic_tile", "screw", "tire", "mean"):
        for method in ("crd", "local_crd", "grad", "grad_fewshot", "coreset_1pct"):
            assert (dataset, f"{method}_per_category") in methods
            assert (f"unified:{dataset}", f"{method}_unified") in methods
        for method in ("crd_routed", "local_crd_routed"):
            assert (f"unified:{dataset}", f"{method}_unified") in methods
    for row in rows:
        unified = row["method"].endswith("_unified")
        assert row["dataset"].startswith("unified:") == unified, row
        assert unified or row["method"].endswith("_per_category"), row
