"""How often the ``contamination="auto"`` threshold flags normal samples.

On each ODDS dataset in ``../shared/data/odds`` (Rayana 2016): the inliers are
split 70/30, a StandardScaler + CRDetector is fitted on the 70 %, and the share
of training and held-out inliers and of outliers beyond the "auto" threshold is
reported, with the image-free AUROC of the scores. The "auto" rule targets 1 %
false alarms under a Gaussian model of the features.

Example::

    python benchmarks/bench_threshold.py --lam 1.0
"""

import argparse
from pathlib import Path

import numpy as np
import scipy.io
from _report import format_table, machine_summary
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from crdistance import CRDetector

ODDS = Path(__file__).resolve().parents[2] / "shared" / "data" / "odds"


def measure(path, lam):
    data = scipy.io.loadmat(path)
    X, is_outlier = data["X"].astype(np.float64), data["y"].ravel() == 1
    train, held_out = train_test_split(X[~is_outlier], test_size=0.3, random_state=0)
    model = make_pipeline(StandardScaler(), CRDetector(lam=lam)).fit(train)
    return {
        "dataset": path.stem,
        "n": X.shape[0],
        "d": X.shape[1],
        "flagged train inliers %": 100 * np.mean(model.predict(train) == -1),
        "flagged held-out inliers %": 100 * np.mean(model.predict(held_out) == -1),
        "flagged outliers %": 100 * np.mean(model.predict(X[is_outlier]) == -1),
        "AUROC": roc_auc_score(is_outlier, -model.score_samples(X)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lam", type=float, default=1.0)
    parser.add_argument("--data", type=Path, default=ODDS)
    args = parser.parse_args()
    rows = [measure(path, args.lam) for path in sorted(args.data.glob("*.mat"))]
    print(machine_summary())
    print()
    print(format_table(rows, list(rows[0])))
    held_out = [row["flagged held-out inliers %"] for row in rows]
    print(f"\nheld-out inliers flagged: median {np.median(held_out):.1f} %, "
          f"range {min(held_out):.1f}-{max(held_out):.1f} % (target 1 %)")


if __name__ == "__main__":
    main()
