"""Soak test: score 10^7 patch features in a loop; memory must stay flat and
results must not drift.

A CRDetector fitted on synthetic float32 features scores ``--rows`` rows in
batches taken in turn from a small pool of distinct batches, as a long-running
inspection service would. The script reports, at checkpoints, the resident
memory (RSS) and its peak, and the throughput, then checks:

- memory: the peak RSS at the end exceeds the peak after the first batch by at
  most ``--max-growth-mib``;
- drift: every batch of the pool gives bit-identical scores each time it comes
  back, and a probe batch scored at the start and at the end gives
  bit-identical scores.

The exit status is 1 if a check fails.

Example::

    python benchmarks/soak.py                      # 10^7 rows, d = 128
    python benchmarks/soak.py --rows 200000 --d 64 # a smoke run in seconds
"""

import argparse
import hashlib
import resource
import sys
import time

import numpy as np
from _report import format_table, machine_summary

from crdistance import CRDetector

N_CHECKPOINTS = 10


def current_rss_mib():
    """Resident memory now: psutil if installed, else /proc/self/status."""
    try:
        import psutil
    except ImportError:
        return _proc_status_kib("VmRSS") / 1024
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mib():
    """Largest resident memory so far (getrusage: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _proc_status_kib(field):
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1])


def digest(scores):
    return hashlib.sha256(np.ascontiguousarray(scores).tobytes()).hexdigest()


def soak(n_rows, d, batch_size, pool_size, n_train, lam, seed):
    """Score ``n_rows`` rows; return checkpoint rows and the check results."""
    rng = np.random.default_rng(seed)
    detector = CRDetector(lam=lam).fit(rng.standard_normal((n_train, d),
                                                           dtype=np.float32))
    pool = [rng.standard_normal((batch_size, d), dtype=np.float32)
            for _ in range(pool_size)]
    probe = rng.standard_normal((batch_size, d), dtype=np.float32)
    probe_at_start = detector.score_samples(probe)
    pool_digests = [digest(detector.score_samples(batch)) for batch in pool]
    peak_at_start = peak_rss_mib()
    checkpoints, drifted_batches = [], 0
    every = max(1, n_rows // batch_size // N_CHECKPOINTS)
    scored, n_batches = 0, 0
    start = last_time = time.perf_counter()
    last_scored = 0
    while scored < n_rows:
        index = n_batches % pool_size
        batch = pool[index][: n_rows - scored]
        scores = detector.score_samples(batch)
        if len(batch) == batch_size and digest(scores) != pool_digests[index]:
            drifted_batches += 1
        scored += len(batch)
        n_batches += 1
        if n_batches % every == 0 or scored == n_rows:
            now = time.perf_counter()
            checkpoints.append({
                "rows scored": scored, "seconds": now - start,
                "rows/s": (scored - last_scored) / (now - last_time),
                "RSS MiB": current_rss_mib(), "peak RSS MiB": peak_rss_mib(),
            })
            last_time, last_scored = now, scored
    seconds = time.perf_counter() - start
    probe_at_end = detector.score_samples(probe)
    return checkpoints, {
        "rows": scored,
        "seconds": seconds,
        "rows/s": scored / seconds,
        "GFLOP/s": scored * (2 * d * d + 2 * d) / seconds / 1e9,
        "peak RSS at start MiB": peak_at_start,
        "peak RSS at end MiB": peak_rss_mib(),
        "probe bit-identical": "yes" if np.array_equal(probe_at_start, probe_at_end)
        else "no",
        "pool batches that drifted": drifted_batches,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=65_536)
    parser.add_argument("--pool-size", type=int, default=4,
                        help="distinct batches scored in turn")
    parser.add_argument("--train-rows", type=int, default=100_000)
    parser.add_argument("--lam", type=float, default=5.0)
    parser.add_argument("--max-growth-mib", type=float, default=16.0,
                        help="allowed growth of the peak RSS after the first batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    checkpoints, summary = soak(args.rows, args.d, args.batch_size, args.pool_size,
                                args.train_rows, args.lam, args.seed)
    print(machine_summary())
    print()
    print(format_table(checkpoints, ["rows scored", "seconds", "rows/s", "RSS MiB",
                                     "peak RSS MiB"]))
    print()
    print(format_table([{"measure": name, "value": value}
                        for name, value in summary.items()], ["measure", "value"]))
    growth = summary["peak RSS at end MiB"] - summary["peak RSS at start MiB"]
    failures = []
    if growth > args.max_growth_mib:
        failures.append(f"peak RSS grew by {growth:.1f} MiB (> {args.max_growth_mib})")
    if summary["probe bit-identical"] != "yes" or summary["pool batches that drifted"]:
        failures.append("scores drifted")
    print(f"peak RSS growth: {growth:.1f} MiB; "
          + ("FAILED: " + "; ".join(failures) if failures else "all checks passed"))
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
