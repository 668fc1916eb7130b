"""Scoring time and fitted-state bytes as the training set grows: CRD and exact 1-NN.

On the cached patch features of ``bench_images.py`` (same dataset, backbone and
cache options), CRD and exact 1-NN over the full memory bank are fitted on the
first n images of a fixed random order of the training images, for each n of
``--sizes``, and score the same ``--n-test`` test images. CRD's state is two
d x d matrices whatever n is, the bank grows as n x patches x d; so should
the time to score. The table goes to stdout and CSV/JSON, the plot to a PNG
next to them (matplotlib, from the ``bench`` extra).

Example::

    python benchmarks/bench_scaling.py                      # n = 50 ... 700
    python benchmarks/bench_scaling.py --sizes 50 100 --n-test 8
    python benchmarks/bench_scaling.py --quick
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

COLUMNS = ["train images", "train patches", "method", "fit s", "score ms/image",
           "state bytes", "deployable bytes"]


def measure(n_images, train, test, args):
    """Rows of CRD and exact 1-NN fitted on ``train[:n_images]``."""
    rows = []
    detectors = [(f"CRD lam={args.lam:g}", CRDetector(lam=args.lam)),
                 ("1-NN exact", NearestNeighborDetector(contamination=None))]
    for name, detector in detectors:
        fitted, _, fit_seconds, score_ms = fit_and_score(
            detector, train[:n_images], test, args.repeats
        )
        state, deployable = state_bytes(fitted)
        rows.append({
            "train images": n_images,
            "train patches": n_images * int(np.prod(train.shape[1:3])),
            "method": name,
            "fit s": fit_seconds,
            "score ms/image": score_ms,
            "state bytes": int(state),
            "deployable bytes": int(deployable),
        })
        log(format_table(rows[-1:], COLUMNS).splitlines()[-1])
    return rows


def plot(rows, path, title):
    """Scoring time and bytes against training images, log-log; False without
    matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, (time_axes, bytes_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for number, method in enumerate(dict.fromkeys(row["method"] for row in rows)):
        own = [row for row in rows if row["method"] == method]
        sizes = [row["train images"] for row in own]
        style = {"color": f"C{number}", "marker": "o"}
        time_axes.plot(sizes, [row["score ms/image"] for row in own], label=method,
                       **style)
        bytes_axes.plot(sizes, [row["state bytes"] for row in own],
                        label=f"{method}: fitted state", **style)
        if method.startswith("CRD"):
            bytes_axes.plot(sizes, [row["deployable bytes"] for row in own], "--",
                            color=f"C{number}",
                            label=f"{method}: residual operator, float32")
    time_axes.set(xscale="log", yscale="log", xlabel="training images",
                  ylabel="distance scoring, ms per test image")
    bytes_axes.set(xscale="log", yscale="log", xlabel="training images",
                   ylabel="bytes")
    sizes = sorted({row["train images"] for row in rows})
    for axes in (time_axes, bytes_axes):
        axes.set_xticks(sizes, [str(size) for size in sizes])
        axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_feature_arguments(parser)
    parser.add_argument("--sizes", type=int, nargs="+",
                        default=[50, 100, 200, 400, 700],
                        help="numbers of training images")
    parser.add_argument("--n-test", type=int, default=32,
                        help="test images scored (a random subset)")
    parser.add_argument("--lam", type=float, default=5.0,
                        help="CRD lam (does not change the timing)")
    parser.add_argument("--repeats", type=int, default=10,
                        help="best of this many scoring passes (one when a pass "
                             "takes over 10 s): CRD's pass is short and noisy")
    parser.add_argument("--quick", action="store_true",
                        help="2 and 4 training images, 2 test images")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.n_test = [2, 4], 2
    return args


def main(argv=None):
    args = parse_args(argv)
    use_shared_weights()
    train_set = load_mvtec(args.data, "train")
    test_set = load_mvtec(args.data, "test")
    sizes = sorted({min(size, len(train_set.paths)) for size in args.sizes})
    order = np.random.default_rng(args.seed).permutation(len(train_set.paths))
    train = cached_features(train_set.paths[order[: sizes[-1]]], "train", args)
    test_kept = subset(len(test_set.paths), args.n_test, args.seed)
    test = cached_features(test_set.paths[test_kept], "test", args)
    rows = [row for size in sizes for row in measure(size, train, test, args)]
    machine = machine_summary()
    setup = (f"{args.data.name}, {args.backbone} features {test.shape[1:]} at "
             f"resize {args.resize}; {len(test)} test images scored")
    print(machine)
    print(setup)
    print()
    print(format_table(rows, COLUMNS))
    name = f"scaling_{args.data.name}_{args.backbone}" + ("_quick" if args.quick
                                                          else "")
    paths = write_results(rows, args.out_dir, name, machine, setup=setup,
                          args=vars(args))
    png = args.out_dir / f"{name}.png"
    if plot(rows, png, f"{setup}\n{machine.splitlines()[0]}"):
        print(f"\nwrote {paths[0]}, {paths[1]} and {png}")
    else:
        print(f"\nwrote {paths[0]} and {paths[1]}; no plot: matplotlib is not "
              "installed (pip install 'crdistance[bench]')")


if __name__ == "__main__":
    main()
