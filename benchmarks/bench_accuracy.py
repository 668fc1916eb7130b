"""Accuracy and cost on every real image set: CRD, its label-free configuration, 1-NN.

For each MVTec-layout set under ``../shared/data`` (default magnetic_tile, screw,
tire), on one set of patch features per set (default MobileNetV2, ImageNet
weights, the featurizer's default layers, cached as in the other image
benchmarks), one run fits and scores:

- ``knn_exact``: 1-NN over every training patch (PatchCore without coreset);
- ``coreset_1pct``, ``coreset_10pct``: 1-NN over a greedy k-center coreset;
- ``crd``: ``CRDetector(lam=0.01, lam_scale="trace")``, the CLI's default;
- ``local_crd``: ``LocalCRDetector(n_cells=16)`` with one group per layer, the
  CLI's ``--cells 16``;
- ``rff_crd``: patch-level random Fourier features (``PatchTransformer(RBFSampler(
  n_components=2048))``, an approximate RBF kernel) before CRD;
- every candidate of :func:`crdistance.model_selection.default_candidates`
  (rows ``cand_...``);
- ``auto``: the candidate that :func:`~crdistance.model_selection.rank_detectors`
  chooses from normal training images alone (a quarter held out, each with a
  synthetic defect); no test label is read. Its ``fit_s`` is the whole
  selection (every candidate fitted and scored on the held-out images) plus
  the refit; the backbone pass over the synthetic images is logged apart;
- ``best_crd``: the candidate best on the *test* labels (mean of image and pixel
  AUROC; image AUROC where there are no masks): the oracle the label-free
  choice is measured against.

Columns follow ``../shared/RESULTS.md``. ``distance_ms_per_image`` is the best
of ``--repeats`` scoring passes over the test set (backbone excluded);
``deployable_bytes`` what scoring needs at float32. The run's table is written
to ``OUT_DIR/bench_accuracy.csv`` (commit it as ``docs/results/bench_accuracy.csv``)
with the command, date, machine and load as ``#`` comments.

Example::

    python benchmarks/bench_accuracy.py                       # the full run (~1 h)
    python benchmarks/bench_accuracy.py --datasets screw --skip knn_exact coreset_10pct
    python benchmarks/bench_accuracy.py --quick               # a smoke test
"""

import argparse
import csv
import os
import time
from datetime import UTC, datetime

import numpy as np
from _features import (
    SHARED,
    add_feature_arguments,
    featurizer_for,
    fit_and_score,
    load_set,
    log,
    run_header,
    state_bytes,
    use_shared_weights,
)
from sklearn.base import clone
from sklearn.kernel_approximation import RBFSampler

from crdistance import CRDetector, LocalCRDetector
from crdistance.baselines import NearestNeighborDetector
from crdistance.maps import anomaly_maps
from crdistance.metrics import aupro, image_auroc, pixel_auroc
from crdistance.model_selection import (
    default_candidates,
    rank_detectors,
    synthetic_holdout,
)
from crdistance.preprocessing import PatchTransformer

COLUMNS = ["dataset", "method", "image_auroc", "pixel_auroc", "aupro", "fit_s",
           "distance_ms_per_image", "deployable_bytes"]
BASELINES = ("knn_exact", "coreset_1pct", "coreset_10pct", "crd", "local_crd",
             "rff_crd")


class KernelCRD:
    """CRD on patch-level random Fourier features: a PatchTransformer step
    before the detector, with ``score_patches`` (a Pipeline has none)."""

    def __init__(self, n_components, seed):
        self.n_components, self.seed = n_components, seed

    def fit(self, X):
        self.step_ = PatchTransformer(
            RBFSampler(n_components=self.n_components, random_state=self.seed),
            random_state=self.seed).fit(X)
        self.detector_ = CRDetector(lam=0.01, lam_scale="trace")
        self.detector_.fit(self.step_.transform(X))
        return self

    def score_patches(self, X):
        return self.detector_.score_patches(self.step_.transform(X))

    def deployable_bytes(self):
        """float32 random projection and offsets, and the CRD operator."""
        sampler = self.step_.transformer_
        return 4 * (sampler.random_weights_.size + sampler.random_offset_.size
                    + self.n_components**2)


def baselines(args, layer_channels):
    """(label, unfitted detector) of the fixed methods of the run."""
    specs = {
        "knn_exact": NearestNeighborDetector(contamination=None),
        "coreset_1pct": NearestNeighborDetector(
            coreset_ratio=0.01, contamination=None, random_state=args.seed),
        "coreset_10pct": NearestNeighborDetector(
            coreset_ratio=0.1, contamination=None, random_state=args.seed),
        "crd": CRDetector(lam=0.01, lam_scale="trace"),
        "local_crd": LocalCRDetector(n_cells=16, feature_groups=list(layer_channels),
                                     random_state=args.seed),
        "rff_crd": KernelCRD(2048, args.seed),
    }
    return [(label, specs[label]) for label in BASELINES if label not in args.skip]


def candidate_label(name):
    """A lower-case label with underscores for a candidate's name."""
    label = name.replace("lam=", "lam").replace("cells=", "c").replace("weights=", "")
    label = "_".join(label.replace("-", "_").replace(".", "p").split())
    return "cand_" + label.lower()


def evaluate(dataset, label, detector, data, repeats):
    """Fit on the training features, score the test features; one row."""
    train, test, labels, masks = data
    fitted, patch_scores, fit_s, score_ms = fit_and_score(detector, train, test,
                                                          repeats)
    row = {"dataset": dataset, "method": label,
           "image_auroc": image_auroc(labels, patch_scores.max(axis=(1, 2)))}
    if masks is not None:
        maps = anomaly_maps(patch_scores, [mask.shape for mask in masks])
        row["pixel_auroc"] = pixel_auroc(masks, maps)
        row["aupro"] = aupro(masks, maps)
    deployable = (fitted.deployable_bytes() if hasattr(fitted, "deployable_bytes")
                  else state_bytes(fitted)[1])
    row.update(fit_s=fit_s, distance_ms_per_image=score_ms,
               deployable_bytes=int(deployable))
    log(f"{dataset} {label}: " + ", ".join(
        f"{key} {value:.4g}" for key, value in row.items()
        if isinstance(value, float | int)))
    return row


def oracle_value(row):
    """What the oracle maximises on test labels."""
    values = [row["image_auroc"], row.get("pixel_auroc")]
    return float(np.mean([v for v in values if v is not None]))


def run_dataset(args, dataset):
    """Every method of the run on one set; its rows."""
    train_paths, data = load_set(args, dataset)
    train = data[0]
    featurizer = featurizer_for(args, train_paths)
    rows = [evaluate(dataset, label, detector, data, args.repeats)
            for label, detector in baselines(args, featurizer.layer_channels_)]

    # The label-free choice: normal training images only.
    start = time.perf_counter()
    holdout = synthetic_holdout(list(train_paths), featurizer, random_state=args.seed)
    backbone_s = time.perf_counter() - start
    candidates = default_candidates(featurizer.layer_channels_,
                                    random_state=args.seed)
    ranking = rank_detectors(candidates, train[holdout.fit_indices], holdout.normal,
                             holdout.defective, holdout.shares)
    selection_s = sum(result["fit_s"] + result["score_s"] for result in ranking)
    chosen = max(ranking, key=lambda result: result["score"])["name"]
    log(f"{dataset}: label-free choice {chosen} (selection {selection_s:.1f} s, "
        f"backbone on {2 * len(holdout.normal)} held-out images {backbone_s:.1f} s)")

    candidate_rows = {}
    for result in ranking:
        row = evaluate(dataset, candidate_label(result["name"]),
                       clone(candidates[result["name"]]), data, args.repeats)
        row["synthetic_image_auroc"] = result["image_auroc"]
        row["synthetic_patch_auroc"] = result["patch_auroc"]
        candidate_rows[result["name"]] = row
    auto = dict(candidate_rows[chosen], method="auto")
    auto["fit_s"] = selection_s + candidate_rows[chosen]["fit_s"]
    best = max(candidate_rows, key=lambda name: oracle_value(candidate_rows[name]))
    best_row = dict(candidate_rows[best], method="best_crd")
    auto["choice"], best_row["choice"] = chosen, best
    log(f"{dataset}: oracle {best}; gap image AUROC "
        f"{best_row['image_auroc'] - auto['image_auroc']:+.3f}")
    return rows + [auto, best_row] + list(candidate_rows.values())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_feature_arguments(parser)
    parser.add_argument("--datasets", nargs="+",
                        default=["magnetic_tile", "screw", "tire"])
    parser.add_argument("--data-root", type=type(SHARED), default=None,
                        help="folder holding the sets (default: ../shared/data)")
    parser.add_argument("--skip", nargs="*", default=[], choices=BASELINES,
                        help="fixed methods to leave out")
    parser.add_argument("--max-train-images", type=int, default=None)
    parser.add_argument("--max-test-images", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="24 training and 16 test images of each set, no exact "
                             "1-NN, no 10 % coreset, no kernel features")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_train_images, args.max_test_images = 24, 16
        args.skip = sorted(set(args.skip) | {"knn_exact", "coreset_10pct", "rff_crd"})
    return args


def write_csv(rows, path, header):
    """The RESULTS.md format: ``#`` comment lines, then the columns in order
    (extra columns after them)."""
    extra = list(dict.fromkeys(k for row in rows for k in row if k not in COLUMNS))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        for line in header:
            for part in str(line).splitlines():
                stream.write(f"# {part}\n")
        writer = csv.DictWriter(stream, fieldnames=COLUMNS + extra)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _format(value) for key, value in row.items()})


def _format(value):
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return value


def main(argv=None):
    args = parse_args(argv)
    use_shared_weights()
    started = datetime.now(UTC)
    load_before = os.getloadavg()[0]
    rows = []
    for dataset in args.datasets:
        rows += run_dataset(args, dataset)
    header = run_header("bench_accuracy.py", args, started, load_before)
    name = "bench_accuracy_quick.csv" if args.quick else "bench_accuracy.csv"
    write_csv(rows, args.out_dir / name, header)
    for row in rows:
        print(",".join(str(_format(row.get(column, ""))) for column in COLUMNS))
    print(f"\nwrote {args.out_dir / name}")


if __name__ == "__main__":
    main()
