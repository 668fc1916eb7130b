"""CRDetectorCV's lam path against GridSearchCV over the same folds and scorer.

Both choose lam among ``--n-lams`` values by ``--folds``-fold one-class
cross-validation (``NoveltyKFold``, scored by ``anomaly_auroc``) and end with a
detector fitted on the normal samples: ``GridSearchCV(refit=False)`` followed by
``CRDetector(**best_params_).fit(normal)``, against ``CRDetectorCV.fit``. The data
are synthetic: normal rows on a random ``--rank``-dimensional subspace plus
isotropic noise, anomalies with an extra component off that subspace.

``--blas-threads`` caps the BLAS threads of both. On a machine shared with
other work, multithreaded OpenBLAS eigendecompositions slow down far more than
the matrix products GridSearchCV's refits are made of.

Example::

    python benchmarks/bench_lam_path.py --dims 1536 128 --blas-threads 1
"""

import argparse
import time

import numpy as np
from _report import format_table, machine_summary
from sklearn.model_selection import GridSearchCV
from threadpoolctl import threadpool_limits

from crdistance import CRDetector
from crdistance.model_selection import CRDetectorCV, NoveltyKFold, anomaly_auroc


def make_data(n_normal, n_anomalies, d, rank, rng):
    """Low-rank normal rows plus noise, anomalies pushed off the subspace."""
    basis = rng.normal(size=(rank, d)) / np.sqrt(rank)
    n = n_normal + n_anomalies
    X = rng.normal(size=(n, rank)) @ basis + 0.3 * rng.normal(size=(n, d))
    X[n_normal:] += 0.1 * rng.normal(size=(n_anomalies, d))
    y = np.r_[np.ones(n_normal, dtype=int), -np.ones(n_anomalies, dtype=int)]
    return X, y


def measure(d, n_normal, args):
    rng = np.random.default_rng(args.seed)
    X, y = make_data(n_normal, args.n_anomalies, d, args.rank, rng)
    lams = np.logspace(-1, 5, args.n_lams)
    cv = NoveltyKFold(args.folds)

    start = time.perf_counter()
    search = GridSearchCV(CRDetector(), {"lam": lams}, cv=cv, scoring=anomaly_auroc,
                          refit=False).fit(X, y)
    CRDetector(**search.best_params_).fit(X[y == 1])
    grid_seconds = time.perf_counter() - start

    start = time.perf_counter()
    path = CRDetectorCV(lams=lams, cv=cv, label_convention="outlier").fit(X, y)
    path_seconds = time.perf_counter() - start

    difference = np.abs(search.cv_results_["mean_test_score"]
                        - path.cv_results_["mean_test_score"]).max()
    return {
        "d": d,
        "normal": n_normal,
        "anomalies": args.n_anomalies,
        "GridSearchCV s": grid_seconds,
        "CRDetectorCV s": path_seconds,
        "speed-up": grid_seconds / path_seconds,
        "lam (grid)": f"{search.best_params_['lam']:.3g}",
        "lam (path)": f"{path.best_lam_:.3g}",
        "same lam": search.best_params_["lam"] == path.best_lam_,
        "max |score diff|": f"{difference:.1e}",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[1536, 128])
    parser.add_argument("--n-normal", type=int, nargs="+", default=[8000, 20000],
                        help="normal samples for each of --dims")
    parser.add_argument("--n-anomalies", type=int, default=100)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--n-lams", type=int, default=10)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="BLAS threads for both methods (default: all)")
    args = parser.parse_args()
    if len(args.n_normal) != len(args.dims):
        parser.error("give one --n-normal per dimension in --dims")
    with threadpool_limits(args.blas_threads, user_api="blas"):
        rows = [
            measure(d, n, args)
            for d, n in zip(args.dims, args.n_normal, strict=True)
        ]
        summary = machine_summary()
    print(summary)
    print()
    print(format_table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
