"""Does the conformal threshold keep its promise on real data?

For every set (the 17 ODDS tables in ``../shared/data/odds`` and the image sets
magnetic_tile, screw and tire): a detector is fitted once on a random part of
the normal samples (ODDS: 40 % of the inliers, StandardScaler + CRDetector(lam=1);
images: half of the good training images, CRDetector(lam=0.01,
lam_scale="trace") on MobileNetV2 patch features, as ``crdistance fit``), the
other normal samples (images: the rest of train/good and all of test/good) and
the anomalies are scored once, and then ``--splits`` random splits draw a
calibration set from those normal samples (half of them) and test on the
other half. Per split and alpha: the conformal threshold
(:func:`crdistance.calibration.conformal_threshold`), the share of test
normals beyond it (the false-alarm rate) and the share of anomalies beyond it
(the defect alarm rate). The ``auto_rule`` rows measure the fit-time
``contamination="auto"`` threshold (its target: 1 %) on the same test halves.

Columns after the shared ones: ``false_alarm_rate`` is the mean over splits;
``binomial_low``/``binomial_high`` the central 95 % interval of a
Binomial(splits x n_test, alpha) share, the issue's yardstick (splits share
samples, so the true spread is wider: ``false_alarm_se`` is the standard error
from the spread of the split rates); ``expected_rate`` the exact expectation
1 - ceil((n + 1)(1 - alpha)) / (n + 1) for continuous scores; ``holds`` says
whether the mean stays at or below ``binomial_high`` (the guarantee is one-
sided: at most alpha); ``z_vs_expected`` is (mean - expected_rate) /
false_alarm_se, the Monte Carlo error of the splits; and
``false_alarm_rate_<N>_splits`` the mean over ``--long-splits`` splits (the
first ``--splits`` of them included), where the mean of a random split of a
fixed pool converges to ``expected_rate`` exactly.

Example::

    python benchmarks/bench_conformal.py            # all sets, 100 splits
    python benchmarks/bench_conformal.py --quick    # 3 ODDS tables, tire, 20 splits
"""

import argparse
import math
import os
import time
from datetime import UTC, datetime

import numpy as np
from _features import (
    SHARED,
    add_feature_arguments,
    load_set,
    log,
    run_header,
    use_shared_weights,
)
from bench_accuracy import write_csv
from scipy.stats import binom
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from crdistance import CRDetector
from crdistance.calibration import conformal_threshold
from crdistance.datasets import list_odds, load_odds

DATA = SHARED / "data"
AUTO_RATE = 0.01
"""What ``contamination="auto"`` aims at (``CRDetector``'s documentation)."""


def odds_set(name, data_home, rng):
    """(fit, normal, anomalous) rows of one ODDS table and its detector."""
    X, y = load_odds(name, data_home=data_home)
    normal, anomalous = X[y == 0], X[y == 1]
    order = rng.permutation(len(normal))
    n_fit = int(0.4 * len(normal))
    model = make_pipeline(StandardScaler(), CRDetector(lam=1.0))
    return model, normal[order[:n_fit]], normal[order[n_fit:]], anomalous


def image_set(args, dataset, rng):
    """(fit, normal, anomalous) patch-feature sets of one image set."""
    _, (train, test, labels, _) = load_set(args, dataset)
    order = rng.permutation(len(train))
    n_fit = len(train) // 2
    normal = np.concatenate([train[order[n_fit:]], test[labels == 0]])
    model = CRDetector(lam=0.01, lam_scale="trace")
    return model, train[order[:n_fit]], normal, test[labels == 1]


def measure(dataset, model, fit, normal, anomalous, args, rng, kind):
    """The rows of one set: conformal at each alpha, and the auto rule."""
    start = time.perf_counter()
    model.fit(fit)
    fit_s = time.perf_counter() - start
    detector = model[-1] if hasattr(model, "steps") else model
    normal_d = -model.score_samples(normal)
    anomalous_d = -model.score_samples(anomalous)
    auto_threshold = detector.threshold_
    n_cal = len(normal) // 2
    n_test = len(normal) - n_cal
    splits = [rng.permutation(len(normal))
              for _ in range(max(args.splits, args.long_splits))]
    auroc = roc_auc_score(np.r_[np.zeros(len(normal_d)), np.ones(len(anomalous_d))],
                          np.r_[normal_d, anomalous_d])
    common = {
        "dataset": dataset,
        "image_auroc" if kind == "images" else "auroc": auroc,
        "fit_s": fit_s,
        "kind": kind,
        "n_fit": len(fit),
        "n_calibration": n_cal,
        "n_test_normal": n_test,
        "n_anomalous": len(anomalous),
        "splits": args.splits,
    }
    rows = []
    for alpha in args.alphas:
        if n_cal < math.ceil(1 / alpha - 1 - 1e-9):
            rows.append({**common, "method": "conformal", "alpha": alpha,
                         "note": f"{n_cal} calibration samples allow no rate "
                         f"below {1 / (n_cal + 1):.3g}"})
            continue
        false_alarms, defect_alarms = [], []
        for order in splits:
            calibration, test = order[:n_cal], order[n_cal:]
            threshold = conformal_threshold(np.sort(normal_d[calibration]), alpha)
            false_alarms.append(np.mean(normal_d[test] > threshold))
            defect_alarms.append(np.mean(anomalous_d > threshold))
        k = math.ceil((n_cal + 1) * (1 - alpha) - 1e-12)
        rates = _rates(false_alarms[:args.splits], defect_alarms[:args.splits],
                       alpha, n_test, args.splits)
        expected = 1 - k / (n_cal + 1)
        rows.append({**common, "method": "conformal", "alpha": alpha, **rates,
                     "expected_rate": expected,
                     "z_vs_expected": (rates["false_alarm_rate"] - expected)
                     / max(rates["false_alarm_se"], 1e-12),
                     f"false_alarm_rate_{len(splits)}_splits":
                     float(np.mean(false_alarms))})
    rows.append({**common, "method": "auto_rule", "alpha": AUTO_RATE,
                 **_rates([np.mean(normal_d[order[n_cal:]] > auto_threshold)
                           for order in splits[:args.splits]],
                          [np.mean(anomalous_d > auto_threshold)] * args.splits,
                          AUTO_RATE, n_test, args.splits)})
    return rows


def _rates(false_alarms, defect_alarms, alpha, n_test, splits):
    total = splits * n_test
    low, high = binom.interval(0.95, total, alpha)
    mean = float(np.mean(false_alarms))
    return {
        "false_alarm_rate": mean,
        "false_alarm_se": float(np.std(false_alarms, ddof=1) / math.sqrt(splits)),
        "binomial_low": low / total,
        "binomial_high": high / total,
        "defect_alarm_rate": float(np.mean(defect_alarms)),
        "holds": "yes" if mean <= high / total else "no",
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_feature_arguments(parser)
    parser.add_argument("--odds-home", type=type(SHARED), default=DATA,
                        help="folder holding the odds folder (default: %(default)s)")
    parser.add_argument("--odds", nargs="*", default=None,
                        help="ODDS tables (default: all in --odds-dir)")
    parser.add_argument("--datasets", nargs="*",
                        default=["magnetic_tile", "screw", "tire"])
    parser.add_argument("--data-root", type=type(SHARED), default=None)
    parser.add_argument("--splits", type=int, default=100)
    parser.add_argument("--long-splits", type=int, default=1000,
                        help="splits of the extra column that shows where the "
                        "mean of --splits converges (the first --splits of them "
                        "are the same)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.01, 0.05])
    parser.add_argument("--quick", action="store_true",
                        help="3 ODDS tables, the tire set, 20 splits")
    args = parser.parse_args(argv)
    args.max_train_images = args.max_test_images = None
    if args.quick:
        args.splits, args.long_splits = 20, 50
        args.odds = args.odds or ["wbc", "glass", "cardio"]
        args.datasets = ["tire"]
    return args


def main(argv=None):
    args = parse_args(argv)
    use_shared_weights()
    started, load_before = datetime.now(UTC), os.getloadavg()[0]
    rows = []
    names = args.odds if args.odds is not None else list_odds(args.odds_home)
    for name in names:
        rng = np.random.default_rng(args.seed)
        model, fit, normal, anomalous = odds_set(name, args.odds_home, rng)
        rows += measure(name, model, fit, normal, anomalous, args, rng, "odds")
        log(f"{name}: {rows[-1]['n_calibration']} calibration samples")
    for dataset in args.datasets:
        rng = np.random.default_rng(args.seed)
        model, fit, normal, anomalous = image_set(args, dataset, rng)
        rows += measure(dataset, model, fit, normal, anomalous, args, rng, "images")
    conformal = [row for row in rows if row["method"] == "conformal"
                 and "holds" in row]
    near = sum(row["z_vs_expected"] <= 3 for row in conformal)
    auto = [row for row in rows if row["method"] == "auto_rule"]
    summary = (f"conformal: the mean false-alarm rate is at or below the binomial "
               f"interval's top in {sum(row['holds'] == 'yes' for row in conformal)} "
               f"of {len(conformal)} (set, alpha) rows; auto rule: in "
               f"{sum(row['holds'] == 'yes' for row in auto)} of {len(auto)} sets; "
               f"conformal rows within 3 standard errors (of the split rates) of "
               f"the exact expectation: {near} of {len(conformal)}")
    header = [
        *run_header("bench_conformal.py", args, started, load_before),
        f"splits: {args.splits} random calibration/test halves of the normal samples "
        f"not fitted; one fit per set (seed {args.seed}); ODDS: StandardScaler + "
        "CRDetector(lam=1) on 40 % of the inliers; images: CRDetector(lam=0.01, "
        "lam_scale='trace') on half of train/good, normal pool = the other half + "
        "test/good",
        summary,
    ]
    suffix = "_quick" if args.quick else ""
    path = args.out_dir / f"bench_conformal{suffix}.csv"
    write_csv(rows, path, header)
    for row in rows:
        print(",".join(str(row.get(column, "")) for column in
                       ("dataset", "method", "alpha", "n_calibration",
                        "false_alarm_rate", "binomial_high", "defect_alarm_rate",
                        "holds")))
    print(summary)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
