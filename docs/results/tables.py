"""Markdown tables made from the committed benchmark results, so prose and numbers
cannot drift apart (``../shared/RESULTS.md``).

``docs/conf.py`` writes ``docs/_generated/<name>.md`` from each
``docs/results/<name>.csv`` at build time (pages include them); the README's
headline block between ``<!-- bench_accuracy: start -->`` and ``<!--
bench_accuracy: end -->`` is written by ``python docs/results/tables.py
--write`` and checked by ``--check`` (a test runs it).
"""

import argparse
import csv
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent
ROOT = RESULTS.parents[1]
HEADLINE_METHODS = ("coreset_1pct", "knn_exact", "crd", "local_crd", "auto", "best_crd")
LABELS = {
    "knn_exact": "exact 1-NN (full bank)",
    "coreset_1pct": "1-NN, 1 % greedy coreset (PatchCore)",
    "coreset_10pct": "1-NN, 10 % greedy coreset",
    "crd": "CRD (`crdistance fit`)",
    "local_crd": "local CRD, 16 cells per layer (`--cells 16`)",
    "rff_crd": "CRD on 2,048 random Fourier features",
    "auto": "label-free choice (`select_pipeline`, `fit --auto`)",
    "best_crd": "best candidate on test labels (oracle)",
    "cse_kmeans": "CSE: embedding + 32 k-means centres (the paper's scorer)",
    "cse_crd": "CSE embedding + CRD",
    "cse_local_crd": "CSE embedding + local CRD, 16 cells",
    "coreset_1pct_on_cse": "1-NN, 1 % coreset on the CSE embedding",
    "grad": "GRAD (`GRADDetector`)",
}
MEASUREMENT_TABLES = ("bench_conformal", "bench_serve")
"""Results whose rows are measurements other than accuracy (the shared columns,
mostly empty, then their own): shown as they are by :func:`generic_table`."""
SETTINGS = {"_per_category": "one model per product", "_unified": "one model for all"}
UNIFIED_LABELS = {
    "crd": "CRD (one Gram for all products when unified)",
    "local_crd": "local CRD, 16 cells per layer and product",
    "crd_routed": "CRD per product + router (`PerCategoryDetector`)",
    "local_crd_routed": "local CRD per product + router",
    "grad": "GRAD (`GRADDetector`)",
    "grad_fewshot": "GRAD on 10 % of the training images",
    "coreset_1pct": "1-NN, 1 % greedy coreset (PatchCore)",
}


def _label(method):
    """A table label of a method, with its unified-benchmark suffix spelled out."""
    for suffix, setting in SETTINGS.items():
        if method.endswith(suffix):
            base = method.removesuffix(suffix)
            return f"{UNIFIED_LABELS.get(base, f'`{base}`')}: {setting}"
    return LABELS.get(method, f"`{method}`")


def read(name):
    """Comment lines and rows of ``docs/results/<name>.csv``."""
    lines = (RESULTS / f"{name}.csv").read_text().splitlines()
    comments = [line[1:].strip() for line in lines if line.startswith("#")]
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    return comments, rows


def _number(value, kind):
    if value in ("", None):
        return "-"
    value = float(value)
    if kind == "auroc":
        return f"{value:.3f}"
    if kind == "bytes":
        return f"{value / 1e6:.2f} MB" if value >= 1e5 else f"{value / 1e3:.0f} kB"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def accuracy_table(rows, methods=None, datasets=None):
    """One markdown table of bench_accuracy rows (all, or `methods`)."""
    lines = ["| set | method | image AUROC | pixel AUROC | AUPRO | fit s | "
             "distance ms/image | deployable | choice |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        if methods is not None and row["method"] not in methods:
            continue
        if datasets is not None and row["dataset"] not in datasets:
            continue
        label = _label(row["method"])
        lines.append(
            f"| {row['dataset']} | {label} | {_number(row['image_auroc'], 'auroc')} | "
            f"{_number(row['pixel_auroc'], 'auroc')} | "
            f"{_number(row['aupro'], 'auroc')} | {_number(row['fit_s'], 's')} | "
            f"{_number(row['distance_ms_per_image'], 'ms')} | "
            f"{_number(row['deployable_bytes'], 'bytes')} | {row.get('choice') or ''} |"
        )
    return "\n".join(lines)


def generic_table(rows):
    """A markdown table of any results CSV: its columns as they are, numbers
    to 4 significant digits, columns empty in every row left out."""
    if not rows:
        return ""
    columns = [column for column in rows[0]
               if any(row[column] not in ("", None) for row in rows)]
    lines = ["| " + " | ".join(columns) + " |",
             "| " + " | ".join("---" for _ in columns) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[column]) for column in columns)
                     + " |")
    return "\n".join(lines)


def _cell(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value or "-"
    return f"{number:.4g}"


def headline():
    """The README block: the command, machine and the headline rows."""
    comments, rows = read("bench_accuracy")
    order = {method: i for i, method in enumerate(HEADLINE_METHODS)}
    rows = sorted((row for row in rows if row["method"] in order),
                  key=lambda row: (row["dataset"], order[row["method"]]))
    return "\n".join([
        accuracy_table(rows),
        "",
        f"`{comments[0].removeprefix('command: ')}` "
        f"({_comment(comments, 'date: ')} UTC; load average "
        f"{_comment(comments, 'load average: ')}; `docs/results/bench_accuracy.csv`).",
    ])


def _comment(comments, prefix):
    """The first comment line starting with `prefix`, without it."""
    line = next((line for line in comments if line.startswith(prefix)), "")
    return line.removeprefix(prefix).removesuffix(" UTC")


def generate(out_dir):
    """Write ``out_dir/<name>.md`` for every results CSV; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(RESULTS.glob("*.csv")):
        comments, rows = read(path.stem)
        text = "\n".join([
            generic_table(rows) if path.stem in MEASUREMENT_TABLES
            else accuracy_table(rows),
            "",
            *(f"- {comment}" for comment in comments),
            "",
        ])
        target = out_dir / f"{path.stem}.md"
        target.write_text(text)
        written.append(target)
    return written


def _readme_block(text):
    start, end = "<!-- bench_accuracy: start -->", "<!-- bench_accuracy: end -->"
    if start not in text or end not in text:
        raise SystemExit("README.md has no bench_accuracy block")
    before, rest = text.split(start, 1)
    block, after = rest.split(end, 1)
    return before + start, block, end + after


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="update README.md")
    parser.add_argument("--check", action="store_true",
                        help="fail if README.md differs from the CSV")
    args = parser.parse_args(argv)
    readme = ROOT / "README.md"
    before, block, after = _readme_block(readme.read_text())
    wanted = "\n" + headline() + "\n"
    if args.write:
        readme.write_text(before + wanted + after)
    elif args.check:
        if block != wanted:
            print("README.md's bench_accuracy block differs from "
                  "docs/results/bench_accuracy.csv; run python docs/results/tables.py "
                  "--write", file=sys.stderr)
            return 1
    else:
        print(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
