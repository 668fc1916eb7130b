"""One model for many products: per-category models against one unified model.

On the MVTec-layout sets under ``../shared/data`` (default magnetic_tile,
screw, tire: three products), on one set of patch features per set (default
MobileNetV2, ImageNet weights, the featurizer's default layers, cached as in
the other image benchmarks), one run fits and scores:

- **per category** (rows ``<category>``, methods ``*_per_category``): one model
  per product, fitted on its training images, scoring its test images;
- **unified** (rows ``unified:<category>``, methods ``*_unified``): one model
  fitted on the training images of all products together, scoring each
  product's test images; the product of a test image is never given to it.

Methods (the same features everywhere):

- ``crd``: ``CRDetector(lam=0.01, lam_scale="trace")``; unified, one Gram over
  all products;
- ``local_crd``: ``LocalCRDetector(n_cells=16)`` per layer; unified, ``16 x
  n_categories`` cells per layer, so that its state equals the sum of the
  per-category models';
- ``crd_routed`` and ``local_crd_routed`` (unified only): a
  :class:`~crdistance.categories.PerCategoryDetector` holding the
  per-category model of each product and routing each test image to the
  product of the nearest mean feature (trained with the product labels of the
  training images; scores are in units of each product's threshold);
- ``grad``: :class:`~crdistance.grad.GRADDetector` (default parameters,
  seeded); ``grad_fewshot``: the same trained on 10 % of each product's
  training images (at least 2);
- ``coreset_1pct``: 1-NN over a 1 % greedy k-center coreset (PatchCore); unified,
  1 % of the pooled patches.

Rows ``mean`` and ``unified:mean`` average each method's metrics over the
products (pixel metrics over the products with masks); their ``fit_s`` and
``deployable_bytes`` are the sum of the per-category models' and the unified
model's own. ``distance_ms_per_image`` is the scoring of patch features alone
(backbone excluded), best of ``--repeats`` passes; ``fit_s`` excludes the
backbone. Columns follow ``../shared/RESULTS.md``, with ``n_train_images`` and,
for GRAD, ``n_iter`` and ``best_epoch`` after them. No test label is read
before scoring.

Example::

    python benchmarks/bench_unified.py                       # the full run
    python benchmarks/bench_unified.py --methods crd local_crd
    python benchmarks/bench_unified.py --quick               # a smoke test
"""

import argparse
import os
import time
from datetime import UTC, datetime

import numpy as np
from _features import (
    SHARED,
    add_feature_arguments,
    featurizer_for,
    load_set,
    log,
    run_header,
    state_bytes,
    timed,
    use_shared_weights,
)
from bench_accuracy import write_csv

from crdistance import CRDetector, LocalCRDetector
from crdistance.baselines import NearestNeighborDetector
from crdistance.categories import PerCategoryDetector
from crdistance.grad import GRADDetector
from crdistance.maps import anomaly_maps
from crdistance.metrics import aupro, image_auroc, pixel_auroc

METHODS = ("crd", "local_crd", "crd_routed", "local_crd_routed", "grad",
           "grad_fewshot", "coreset_1pct")
ROUTED = {"crd_routed": "crd", "local_crd_routed": "local_crd"}
FEW_SHOT = 0.1
"""Share of each product's training images that ``grad_fewshot`` trains on."""


def make_detector(name, args, layer_channels, n_categories=1):
    """A fresh detector of method ``name`` (unified: for ``n_categories``)."""
    if name in ROUTED:
        return PerCategoryDetector(make_detector(ROUTED[name], args, layer_channels))
    if name == "crd":
        return CRDetector(lam=0.01, lam_scale="trace")
    if name == "local_crd":
        return LocalCRDetector(n_cells=16 * n_categories,
                               feature_groups=list(layer_channels),
                               random_state=args.seed)
    if name in ("grad", "grad_fewshot"):
        return GRADDetector(max_epochs=args.max_epochs, random_state=args.seed,
                            progress=True)
    return NearestNeighborDetector(coreset_ratio=0.01, contamination=None,
                                   random_state=args.seed)


def few_shot(n_images, seed):
    """Sorted indices of 10 % of ``n_images`` (at least 2), seeded."""
    n_kept = min(n_images, max(2, round(FEW_SHOT * n_images)))
    return np.sort(np.random.default_rng(seed).permutation(n_images)[:n_kept])


def deployable_bytes(detector):
    """What scoring needs at float32 (see ``_features.state_bytes``); GRAD: its
    network and standardisation; a routed model: its models and the means."""
    if isinstance(detector, GRADDetector):
        values = sum(np.asarray(v).size for v in detector.network_state_.values())
        return 4 * (values + 2 * detector.n_features_in_)
    if isinstance(detector, PerCategoryDetector):
        return (4 * detector.category_means_.size
                + sum(deployable_bytes(part) for part in detector.detectors_))
    return int(state_bytes(detector)[1])


def fit(detector, train, categories=None):
    """Fit (with the product labels for a routed model); the seconds it took."""
    start = time.perf_counter()
    if isinstance(detector, PerCategoryDetector):
        detector.fit(train, categories)
    else:
        detector.fit(train)
    return time.perf_counter() - start


def score_row(dataset, label, detector, test_data, repeats):
    """Score one product's test features with a fitted detector; one row."""
    test, labels, masks = test_data
    patch_scores, seconds = timed(lambda: np.asarray(detector.score_patches(test)),
                                  repeats)
    row = {"dataset": dataset, "method": label,
           "image_auroc": image_auroc(labels, patch_scores.max(axis=(1, 2)))}
    if masks is not None:
        maps = anomaly_maps(patch_scores, [mask.shape for mask in masks])
        row["pixel_auroc"] = pixel_auroc(masks, maps)
        row["aupro"] = aupro(masks, maps)
    row.update(distance_ms_per_image=1000 * seconds / len(test),
               deployable_bytes=int(deployable_bytes(detector)))
    if isinstance(detector, GRADDetector):
        row.update(n_iter=detector.n_iter_, best_epoch=detector.best_epoch_)
    log(f"{dataset} {label}: " + ", ".join(
        f"{key} {value:.4g}" for key, value in row.items()
        if isinstance(value, float | int)))
    return row


def per_category(args, sets, layer_channels):
    """Rows of the per-category models: one model per product."""
    rows = []
    for name in args.methods:
        if name in ROUTED:
            continue
        for dataset, (train, test_data) in sets.items():
            kept = (few_shot(len(train), args.seed) if name == "grad_fewshot"
                    else np.arange(len(train)))
            detector = make_detector(name, args, layer_channels)
            fit_s = fit(detector, train[kept])
            row = score_row(dataset, f"{name}_per_category", detector, test_data,
                            args.repeats)
            row.update(fit_s=fit_s, n_train_images=len(kept))
            rows.append(row)
    return rows


def unified(args, sets, layer_channels):
    """Rows of the unified models: one model fitted on all products."""
    rows = []
    names = list(sets)
    for name in args.methods:
        parts = [(few_shot(len(train), args.seed) if name == "grad_fewshot"
                  else np.arange(len(train))) for train, _ in sets.values()]
        train = np.concatenate([sets[d][0][kept]
                                for d, kept in zip(names, parts, strict=True)])
        categories = np.repeat(names, [len(kept) for kept in parts])
        detector = make_detector(name, args, layer_channels, n_categories=len(names))
        fit_s = fit(detector, train, categories)
        log(f"unified {name}: fitted on {len(train)} images in {fit_s:.1f} s")
        del train
        for dataset, (_, test_data) in sets.items():
            row = score_row(f"unified:{dataset}", f"{name}_unified", detector,
                            test_data, args.repeats)
            row.update(fit_s=fit_s, n_train_images=int(len(categories)))
            rows.append(row)
    return rows


def mean_rows(rows, prefix):
    """One row per method: the mean over products (sums of fit time and bytes
    for the per-category models)."""
    out = []
    for method in dict.fromkeys(row["method"] for row in rows):
        group = [row for row in rows if row["method"] == method]
        row = {"dataset": f"{prefix}mean", "method": method}
        for key in ("image_auroc", "pixel_auroc", "aupro", "distance_ms_per_image"):
            values = [r[key] for r in group if r.get(key) is not None]
            if values:
                row[key] = float(np.mean(values))
        if prefix:  # one unified model: its own fit time, bytes and images
            row.update({key: group[0][key] for key in
                        ("fit_s", "deployable_bytes", "n_train_images")})
        else:
            row.update({key: sum(r[key] for r in group) for key in
                        ("fit_s", "deployable_bytes", "n_train_images")})
        out.append(row)
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_feature_arguments(parser)
    parser.add_argument("--datasets", nargs="+",
                        default=["magnetic_tile", "screw", "tire"])
    parser.add_argument("--data-root", type=type(SHARED), default=None,
                        help="folder holding the sets (default: ../shared/data)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--settings", nargs="+", choices=["per_category", "unified"],
                        default=["per_category", "unified"])
    parser.add_argument("--max-train-images", type=int, default=None)
    parser.add_argument("--max-test-images", type=int, default=None)
    parser.add_argument("--max-epochs", type=int, default=20,
                        help="GRAD's epochs at most (early stopping)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="20 training and 12 test images of each set, GRAD "
                        "2 epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_train_images, args.max_test_images = 20, 12
        args.max_epochs = 2
    return args


def main(argv=None):
    args = parse_args(argv)
    use_shared_weights()
    started = datetime.now(UTC)
    load_before = os.getloadavg()[0]
    sets, layer_channels = {}, None
    for dataset in args.datasets:
        train_paths, (train, test, labels, masks) = load_set(args, dataset)
        sets[dataset] = (train, (test, labels, masks))
        layer_channels = featurizer_for(args, train_paths).layer_channels_
    rows = []
    if "per_category" in args.settings:
        category_rows = per_category(args, sets, layer_channels)
        rows += category_rows + mean_rows(category_rows, "")
    if "unified" in args.settings:
        unified_rows = unified(args, sets, layer_channels)
        rows += unified_rows + mean_rows(unified_rows, "unified:")
    header = [
        *run_header("bench_unified.py", args, started, load_before),
        "mean rows: products averaged (pixel metrics over products with masks); "
        "fit_s, deployable_bytes, n_train_images summed over the per-category "
        "models",
    ]
    suffix = "_quick" if args.quick else ""
    path = args.out_dir / f"bench_unified{suffix}.csv"
    write_csv(rows, path, header)
    for row in rows:
        print(",".join(str(row.get(column, "")) for column in
                       ("dataset", "method", "image_auroc", "pixel_auroc")))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
