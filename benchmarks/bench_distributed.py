"""Gram accumulation on a Dask cluster: rows/s against the number of workers.

The training rows are generated and persisted on the workers first, so the
timing covers what a real cluster does per fit: a Gram per block on the
workers, a tree sum of d x d partial Grams, one Cholesky on the client. The
table also gives what crosses the network per worker (d^2 x 8 bytes) and the
extrapolation to 10^9 rows, assuming linear scaling of the per-worker rate.

Example::

    python benchmarks/bench_distributed.py --workers 1 2 --dims 128 1536
"""

import argparse
import time

import dask.array as da
import numpy as np
from _report import format_table, machine_summary
from distributed import Client, LocalCluster, wait

from crdistance import CRDetector
from crdistance._linalg import residual_operator

TARGET_ROWS = 10**9


def fit_seconds(n_rows, d, chunk_rows, repeats):
    X = da.random.default_rng(0).standard_normal(
        (n_rows, d), chunks=(chunk_rows, d), dtype=np.float32
    ).persist()
    wait(X)
    CRDetector().fit(X)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        CRDetector().fit(X)
        times.append(time.perf_counter() - start)
    return min(times)


def factorisation_seconds(d):
    G = np.cov(np.random.default_rng(0).standard_normal((d, 2 * d))) * 2 * d
    start = time.perf_counter()
    residual_operator(G, 5.0)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 1536])
    parser.add_argument("--rows", type=int, default=400_000,
                        help="rows at d=128; scaled by 128/d for larger d")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for n_workers in args.workers:
        with LocalCluster(n_workers=n_workers, threads_per_worker=1,
                          processes=True, dashboard_address=None) as cluster, \
                Client(cluster):
            for d in args.dims:
                n_rows = max(args.rows * 128 // d, 20_000)
                seconds = fit_seconds(n_rows, d, chunk_rows=max(n_rows // 16, 1000),
                                      repeats=args.repeats)
                rate = n_rows / seconds
                factorisation = factorisation_seconds(d)
                rows.append({
                    "workers": n_workers, "d": d, "rows": n_rows,
                    "fit s": seconds, "rows/s": rate,
                    "rows/s per worker": rate / n_workers,
                    "sent per worker MiB": d * d * 8 / 2**20,
                    "Cholesky s": factorisation,
                    "10^9 rows, 1 worker, h": TARGET_ROWS / (rate / n_workers) / 3600,
                })
    print(machine_summary())
    print()
    print(format_table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
