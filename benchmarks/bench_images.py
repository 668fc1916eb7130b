"""CRD against nearest-neighbour search on the same patch features of real images.

On an MVTec AD style category (default ``../shared/data/magnetic_tile``, Huang
et al. 2020), patch features of every image are extracted once with a
pretrained backbone (default MobileNetV2, ImageNet weights read from
``$TORCH_HOME``, ``../shared/weights`` when unset) and cached. In one run, on
those features, the script fits and scores

- CRD at each ``--lams`` (the paper's ``lam_scale="absolute"``) and each
  ``--trace-lams`` (``lam_scale="trace"``);
- exact 1-NN over the full memory bank (PatchCore without coreset);
- 1-NN over PatchCore's greedy k-center coreset at each ``--coreset-ratios``;
- 1-NN over a uniformly random bank at each ``--random-bank-ratios``.

Columns: image AUROC (an image scores its largest patch distance), pixel AUROC
and AUPRO (maps upsampled to each image's original size and blurred,
``crdistance.maps``), fit seconds, distance-scoring milliseconds per test image
(the backbone excluded), the bytes of the fitted state (CRD: ``gram_`` +
``residual_operator_``; 1-NN: ``memory_bank_``) and of the minimal state needed
to score (CRD: ``residual_operator_`` in float32, d^2 x 4 bytes), also as a
percentage of the full bank's bytes.

Example::

    python benchmarks/bench_images.py                         # the full run
    python benchmarks/bench_images.py --coreset-ratios 0.01 --max-train-images 200
    python benchmarks/bench_images.py --quick                 # a smoke test
    python benchmarks/bench_images.py --data mvtec/bottle --backbone wide_resnet50_2
"""

import argparse

import numpy as np
from _features import (
    add_feature_arguments,
    cached_features,
    fit_and_score,
    log,
    state_bytes,
    subset,
    use_shared_weights,
)
from _report import format_table, machine_summary
from _results import write_results

from crdistance import CRDetector
from crdistance.baselines import NearestNeighborDetector
from crdistance.datasets import load_mvtec
from crdistance.maps import anomaly_maps
from crdistance.metrics import aupro, image_auroc, pixel_auroc

COLUMNS = ["method", "image AUROC", "pixel AUROC", "AUPRO", "fit s",
           "score ms/image", "state bytes", "deployable bytes", "% of full bank"]


class RandomBank:
    """1-NN over a uniformly random share of the training patches (no coreset)."""

    def __init__(self, ratio, seed):
        self.ratio, self.seed = ratio, seed

    def fit(self, X):
        rows = X.reshape(-1, X.shape[-1])
        n_kept = max(2, round(self.ratio * len(rows)))
        kept = np.random.default_rng(self.seed).choice(len(rows), n_kept, replace=False)
        return NearestNeighborDetector(contamination=None).fit(rows[np.sort(kept)])


def methods(args):
    """(name, unfitted detector) of every method of the run, CRD first."""
    specs = [(f"CRD lam={lam:g}", CRDetector(lam=lam)) for lam in args.lams]
    specs += [(f"CRD lam={lam:g} (trace)", CRDetector(lam=lam, lam_scale="trace"))
              for lam in args.trace_lams]
    specs.append(("1-NN exact", NearestNeighborDetector(contamination=None)))
    specs += [
        (f"1-NN greedy coreset {100 * ratio:g} %",
         NearestNeighborDetector(coreset_ratio=ratio, contamination=None,
                                 random_state=args.seed))
        for ratio in args.coreset_ratios
    ]
    specs += [(f"1-NN random bank {100 * ratio:g} %",
               RandomBank(ratio, args.seed))
              for ratio in args.random_bank_ratios]
    return specs


def evaluate(name, detector, train, test, labels, masks, repeats):
    """Fit, score and measure one method; returns its table row."""
    fitted, patch_scores, fit_seconds, score_ms = fit_and_score(
        detector, train, test, repeats
    )
    state, deployable = state_bytes(fitted)
    full_bank = train.size * 4
    if masks is not None:  # None: image-level labels only (no pixel metrics)
        maps = anomaly_maps(patch_scores, [mask.shape for mask in masks])
    return {
        "method": name,
        "image AUROC": image_auroc(labels, patch_scores.max(axis=(1, 2))),
        "pixel AUROC": None if masks is None else pixel_auroc(masks, maps),
        "AUPRO": None if masks is None else aupro(masks, maps),
        "fit s": fit_seconds,
        "score ms/image": score_ms,
        "state bytes": int(state),
        "deployable bytes": int(deployable),
        "% of full bank": 100 * deployable / full_bank,
    }


def load_data(args):
    """Train features, test features, test labels and masks (after subsetting);
    masks are None for a set with image-level labels only (screw)."""
    train_set = load_mvtec(args.data, "train")
    test_set = load_mvtec(args.data, "test")
    train_kept = subset(len(train_set.paths), args.max_train_images, args.seed)
    test_kept = subset(len(test_set.paths), args.max_test_images, args.seed,
                       labels=test_set.labels)
    train = cached_features(train_set.paths[train_kept], "train", args)
    test = cached_features(test_set.paths[test_kept], "test", args)
    masks = list(test_set.masks[test_kept]) if test_set.has_masks else None
    return train, test, test_set.labels[test_kept], masks


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_feature_arguments(parser)
    parser.add_argument("--lams", type=float, nargs="*", default=[5.0],
                        help="CRD lam with lam_scale='absolute' (paper: 5)")
    parser.add_argument("--trace-lams", type=float, nargs="*",
                        default=[0.001, 0.01, 0.1, 1.0],
                        help="CRD lam with lam_scale='trace'")
    parser.add_argument("--coreset-ratios", type=float, nargs="*",
                        default=[0.01, 0.1],
                        help="greedy coreset shares (0.1 of 560k rows: ~30 min)")
    parser.add_argument("--random-bank-ratios", type=float, nargs="*",
                        default=[0.01, 0.1])
    parser.add_argument("--max-train-images", type=int, default=None,
                        help="a random subset of the training images")
    parser.add_argument("--max-test-images", type=int, default=None,
                        help="a random subset of the test images, half defective")
    parser.add_argument("--repeats", type=int, default=3,
                        help="scoring is timed as the best of this many passes "
                             "(one pass when a pass takes over 10 s)")
    parser.add_argument("--quick", action="store_true",
                        help="8 training and 12 test images, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_train_images, args.max_test_images = 8, 12
        args.coreset_ratios, args.random_bank_ratios = [0.01], [0.1]
        args.trace_lams = [0.01]
    return args


def run(args, specs, name):
    """Evaluate every (name, detector) of ``specs`` on the data of ``args``,
    print the machine, the setup and the table, and write ``name``.csv/.json."""
    train, test, labels, masks = load_data(args)
    log(f"train {train.shape}, test {test.shape}, {int(labels.sum())} defective")
    rows = []
    for method, detector in specs:
        rows.append(evaluate(method, detector, train, test, labels, masks,
                             args.repeats))
        log(format_table(rows[-1:], COLUMNS).splitlines()[-1])
    machine = machine_summary()
    layers = "" if args.layers is None else f"layers {' + '.join(args.layers)}, "
    setup = (f"{args.data.name}: {len(train)} training and {len(test)} test images "
             f"({int(labels.sum())} defective), {args.backbone} {layers}features "
             f"{test.shape[1:]} at resize {args.resize}")
    print(machine)
    print(setup)
    print()
    print(format_table(rows, COLUMNS))
    name += "_quick" if args.quick else ""
    paths = write_results(rows, args.out_dir, name, machine, setup=setup,
                          args=vars(args))
    print(f"\nwrote {paths[0]} and {paths[1]}")
    return rows


def main(argv=None):
    args = parse_args(argv)
    use_shared_weights()
    run(args, methods(args), f"images_{args.data.name}_{args.backbone}")


if __name__ == "__main__":
    main()
