"""Throughput of CRDetector's fit and scoring next to this machine's matmul rate.

For each feature width d and training size N, the script measures, in one run:

- matmul: a float32 (rows, d) @ (d, d) product, the machine's own rate on the
  shapes CRD uses;
- fit: ``CRDetector().fit(X)`` on N float32 rows (Gram accumulated in float64,
  one Cholesky), and its peak extra memory (tracemalloc, the input excluded);
- score: ``score_samples`` on batches of rows, with GFLOP/s counted as
  2 n d^2 (the product) + 2 n d (the squared norms).

Example::

    python benchmarks/bench_core.py                 # d = 128 and 1536, N to 10^6
    python benchmarks/bench_core.py --quick         # a smoke run in seconds
"""

import argparse
import time
import tracemalloc
from functools import partial

import numpy as np
from _report import format_table, machine_summary

from crdistance import CRDetector

RANDOM_BLOCK_ROWS = 65_536


def synthetic_rows(n_rows, d, seed=0):
    """float32 rows: a random block repeated (content does not change timing)."""
    block = np.random.default_rng(seed).standard_normal(
        (min(n_rows, RANDOM_BLOCK_ROWS), d), dtype=np.float32
    )
    return np.resize(block, (n_rows, d))


def best_seconds(function, repeats):
    """Fastest of ``repeats`` timed calls (after one warm-up call)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_rows_per_second(X, d, repeats):
    weights = np.random.default_rng(1).standard_normal((d, d), dtype=np.float32)
    return X.shape[0] / best_seconds(lambda: X @ weights, repeats)


def fit_measurements(X, repeats):
    detector = CRDetector()
    seconds = best_seconds(lambda: detector.fit(X), repeats)
    tracemalloc.start()
    detector.fit(X)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return detector, X.shape[0] / seconds, peak


def run(dims, train_sizes, batch_sizes, repeats):
    rows = []
    for d in dims:
        for n_train in train_sizes:
            X = synthetic_rows(n_train, d)
            reference_rate = matmul_rows_per_second(X[:RANDOM_BLOCK_ROWS], d, repeats)
            detector, fit_rate, fit_peak = fit_measurements(X, repeats=1)
            rows.append({
                "d": d, "N / batch": n_train, "step": "fit",
                "rows/s": fit_rate, "matmul rows/s": reference_rate,
                "% of matmul": 100 * fit_rate / reference_rate,
                "peak extra MiB": fit_peak / 2**20,
                "state MiB": (detector.gram_.nbytes
                              + detector.residual_operator_.nbytes) / 2**20,
            })
            del X
        for batch in batch_sizes:
            Y = synthetic_rows(batch, d, seed=2)
            reference_rate = matmul_rows_per_second(Y, d, repeats)
            score_rate = batch / best_seconds(partial(detector.score_samples, Y),
                                              repeats)
            rows.append({
                "d": d, "N / batch": batch, "step": "score",
                "rows/s": score_rate, "matmul rows/s": reference_rate,
                "% of matmul": 100 * score_rate / reference_rate,
                "GFLOP/s": score_rate * (2 * d * d + 2 * d) / 1e9,
                "matmul GFLOP/s": reference_rate * 2 * d * d / 1e9,
            })
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 1536])
    parser.add_argument("--train-sizes", type=int, nargs="+",
                        default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        default=[1_000, 10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.train_sizes, args.batch_sizes, args.repeats = [2_000, 8_000], [1_000], 1
    rows = run(args.dims, args.train_sizes, args.batch_sizes, args.repeats)
    print(machine_summary())
    print()
    print(format_table(rows, ["d", "N / batch", "step", "rows/s", "matmul rows/s",
                              "% of matmul", "GFLOP/s", "matmul GFLOP/s",
                              "peak extra MiB", "state MiB"]))


if __name__ == "__main__":
    main()
