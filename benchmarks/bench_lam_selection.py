"""How close do the lam selection rules land to the best lam on real data?

Novelty protocol on each ODDS dataset in ``../shared/data/odds`` (Rayana 2016):
60 % of the inliers train, ``--n-labelled`` outliers (at most a third of
them) are labelled for validation, the other 40 % of the inliers and the other
outliers test; features are standardised on the training inliers. The test
AUROC of CRD is reported at

- oracle: the lam of the grid that is best on the test set (an upper bound);
- normal-only: ``CRDetectorCV`` without labels (variance-inflated synthetic
  anomalies, the default rule);
- labelled CV: ``CRDetectorCV`` with the few labelled outliers in every test fold;
- noise X_synthetic: ``CRDetectorCV`` with ``X_synthetic`` = training inliers plus
  isotropic Gaussian noise of the features' scale (the alternative probe);
- default: ``CRDetector()`` (lam = 5, absolute).

The grid is scale-free (``lam_scale="trace"``). AUROC is the mean over
``--seeds``, lam the median choice.

Example::

    python benchmarks/bench_lam_selection.py --seeds 0 1 2
"""

import argparse
from pathlib import Path

import numpy as np
import scipy.io
from _report import format_table, machine_summary
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from crdistance import CRDetector
from crdistance.model_selection import CRDetectorCV

ODDS = Path(__file__).resolve().parents[2] / "shared" / "data" / "odds"
LAMS = np.logspace(-4, 1, 11)
RULES = ["oracle", "normal-only", "labelled CV", "noise X_synthetic", "default"]


def split(X, is_outlier, n_labelled, seed):
    """Standardised training inliers, labelled outliers and the test set."""
    rng = np.random.default_rng(seed)
    train, test_inliers = train_test_split(X[~is_outlier], test_size=0.4,
                                           random_state=seed)
    outliers = X[is_outlier][rng.permutation(is_outlier.sum())]
    labelled, test_outliers = outliers[:n_labelled], outliers[n_labelled:]
    scaler = StandardScaler().fit(train)
    X_test = np.vstack([test_inliers, test_outliers])
    is_anomaly = np.r_[np.zeros(len(test_inliers)), np.ones(len(test_outliers))]
    return (scaler.transform(train), scaler.transform(labelled),
            scaler.transform(X_test), is_anomaly)


def chosen_lams(train, labelled, seed):
    """lam chosen by each CRDetectorCV rule."""
    def search(**kwargs):
        return CRDetectorCV(lams=LAMS, lam_scale="trace", random_state=seed, **kwargs)

    noise = np.random.default_rng(seed).normal(size=train.shape)
    return {
        "normal-only": search().fit(train).best_lam_,
        "labelled CV": search(label_convention="outlier").fit(
            np.vstack([train, labelled]),
            np.r_[np.ones(len(train)), -np.ones(len(labelled))],
        ).best_lam_,
        "noise X_synthetic": search().fit(train, X_synthetic=train + noise).best_lam_,
    }


def measure(path, n_labelled, seeds):
    data = scipy.io.loadmat(path)
    X, is_outlier = data["X"].astype(np.float64), data["y"].ravel() == 1
    n_labelled = min(n_labelled, is_outlier.sum() // 3)
    aurocs = {rule: [] for rule in RULES}
    lams = {rule: [] for rule in RULES[:-1]}
    for seed in seeds:
        train, labelled, X_test, is_anomaly = split(X, is_outlier, n_labelled, seed)
        curve = {lam: roc_auc_score(is_anomaly, -CRDetector(lam=lam, lam_scale="trace")
                                    .fit(train).score_samples(X_test))
                 for lam in LAMS}
        choices = {"oracle": max(curve, key=curve.get),
                   **chosen_lams(train, labelled, seed)}
        for rule, lam in choices.items():
            aurocs[rule].append(curve[lam])
            lams[rule].append(lam)
        aurocs["default"].append(roc_auc_score(
            is_anomaly, -CRDetector().fit(train).score_samples(X_test)))
    row = {"dataset": path.stem, "n": X.shape[0], "d": X.shape[1],
           "labelled": n_labelled}
    for rule in RULES:
        row[f"{rule} AUROC"] = float(np.mean(aurocs[rule]))
        if rule in lams:
            row[f"{rule} lam"] = f"{np.median(lams[rule]):.2g}"
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-labelled", type=int, default=5,
                        help="labelled outliers for the labelled CV rule")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", type=Path, default=ODDS)
    args = parser.parse_args()
    rows = [measure(path, args.n_labelled, args.seeds)
            for path in sorted(args.data.glob("*.mat"))]
    print(machine_summary())
    print()
    print(format_table(rows, list(rows[0])))
    print(f"\nlam grid (lam_scale='trace'): {', '.join(f'{lam:.2g}' for lam in LAMS)}")
    oracle = np.array([row["oracle AUROC"] for row in rows])
    for rule in RULES[1:]:
        gap = oracle - np.array([row[f"{rule} AUROC"] for row in rows])
        print(f"{rule}: AUROC below the oracle by median {np.median(gap):.3f}, "
              f"mean {gap.mean():.3f}, max {gap.max():.3f}; within 0.01 of it "
              f"on {np.sum(gap <= 0.01)} of {len(rows)} datasets")


if __name__ == "__main__":
    main()
