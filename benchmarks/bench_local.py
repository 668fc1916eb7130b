"""Closing the gap to nearest-neighbour search at constant memory (local CRD).

Same protocol, metrics and columns as ``bench_images.py`` (which it reuses), on
richer multi-scale features: by default five MobileNetV2 stages (strides 8, 4,
16, 16 and 32, all on the stride-8 grid: d = 32 + 24 + 64 + 96 + 160 = 376).
In one run on those features: plain CRD, :class:`crdistance.LocalCRDetector`
with one group of all features and with one group per stage
(``--feature-groups``), at each ``--cells``, cells on a grid of patch positions
as in PaDiM (``--position-grids GxK``: a G x G grid, each position cell with its
own per-stage local CRD of K k-means cells), and 1-NN over random banks.

``--timing-cases`` adds a table of what the distance time of one fitted local
CRD (the largest ``--cells``, one group per stage) depends on, next to plain CRD
in the same run: one group of all features instead of one per stage, float64
input, one image per call, and the same model scoring another dataset's features
(``--other-data``, same backbone and layers).

Example::

    python benchmarks/bench_local.py                 # magnetic_tile, ~25 min here
    python benchmarks/bench_local.py --quick         # a smoke test
    python benchmarks/bench_local.py --timing-cases --cells 64 --position-grids \\
        --random-bank-ratios --other-data ../shared/data/tire
"""

import argparse
import time
from pathlib import Path

import numpy as np
from _features import add_feature_arguments, log, use_shared_weights
from _report import format_table, machine_summary
from _results import write_results
from bench_images import COLUMNS, RandomBank, evaluate, load_data

from crdistance import CRDetector, LocalCRDetector

RICH_LAYERS = ["features.6", "features.3", "features.10", "features.13", "features.16"]
RICH_GROUPS = [32, 24, 64, 96, 160]


class PositionGrid:
    """One detector per cell of a ``grid`` x ``grid`` split of the patch positions."""

    def __init__(self, grid, make_detector):
        self.grid, self.make_detector = grid, make_detector

    def _cells(self, shape):
        rows, cols = (np.array_split(np.arange(n), self.grid) for n in shape[1:3])
        return [(slice(r[0], r[-1] + 1), slice(c[0], c[-1] + 1))
                for r in rows for c in cols]

    def fit(self, train):
        self.detectors_ = [self.make_detector().fit(train[:, rows, cols])
                           for rows, cols in self._cells(train.shape)]
        return self

    def score_patches(self, test):
        scores = np.empty(test.shape[:3], dtype=test.dtype)
        for (rows, cols), detector in zip(self._cells(test.shape), self.detectors_,
                                          strict=True):
            scores[:, rows, cols] = detector.score_patches(test[:, rows, cols])
        return scores


def position_grid(spec, args):
    """(name, detector) of a ``GxK`` grid spec."""
    grid, cells = map(int, spec.split("x"))
    return (f"position grid {grid}x{grid}, {cells} cells per stage",
            PositionGrid(grid, lambda: LocalCRDetector(
                n_cells=cells, n_nearest_cells=args.nearest_cells,
                feature_groups=args.feature_groups, random_state=args.seed)))


def methods(args):
    """(name, unfitted detector) of every method of the run."""
    specs = [("CRD lam=0.01 (trace)", CRDetector(lam=0.01, lam_scale="trace"))]
    for cells in args.cells:
        for groups, label in ((None, "one group"), (args.feature_groups, "per stage")):
            specs.append((
                f"local CRD {cells} cells, {label}",
                LocalCRDetector(n_cells=cells, n_nearest_cells=args.nearest_cells,
                                feature_groups=groups, random_state=args.seed),
            ))
    specs += [position_grid(spec, args) for spec in args.position_grids]
    specs += [(f"1-NN random bank {100 * ratio:g} %", RandomBank(ratio, args.seed))
              for ratio in args.random_bank_ratios]
    return specs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_feature_arguments(parser)
    parser.set_defaults(layers=RICH_LAYERS)
    parser.add_argument("--feature-groups", type=int, nargs="+", default=RICH_GROUPS,
                        help="channels of each layer, in --layers order")
    parser.add_argument("--cells", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--nearest-cells", type=int, default=3)
    parser.add_argument("--position-grids", nargs="*", default=["7x1", "2x16"],
                        help="GxK: a G x G grid of positions, K k-means cells each")
    parser.add_argument("--random-bank-ratios", type=float, nargs="*",
                        default=[0.01, 0.1])
    parser.add_argument("--max-train-images", type=int, default=None)
    parser.add_argument("--max-test-images", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--timing-cases", action="store_true",
                        help="also time one fitted local CRD in several cases")
    parser.add_argument("--other-data", type=Path, default=None,
                        help="with --timing-cases: another MVTec category to score")
    parser.add_argument("--quick", action="store_true",
                        help="8 training and 12 test images, 2 cells, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_train_images, args.max_test_images = 8, 12
        args.cells, args.random_bank_ratios = [2], [0.1]
        args.position_grids = ["2x1"]
    return args


def distance_ms(detector, test, per_call=None, repeats=3):
    """Best of ``repeats`` passes, ms per image: all of ``test`` at once, or
    ``per_call`` images per call."""
    step = per_call or len(test)
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for first in range(0, len(test), step):
            detector.score_patches(test[first:first + step])
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(test)


def timing_cases(args, train, test):
    """Distance ms/image of plain CRD and of one local CRD, case by case."""
    cells = max(args.cells)
    local = LocalCRDetector(n_cells=cells, n_nearest_cells=args.nearest_cells,
                            feature_groups=args.feature_groups,
                            random_state=args.seed).fit(train)
    one_group = LocalCRDetector(n_cells=cells, n_nearest_cells=args.nearest_cells,
                                random_state=args.seed).fit(train)
    plain = CRDetector(lam=0.01, lam_scale="trace").fit(train)
    cases = [
        ("plain CRD", plain, test, None),
        (f"local CRD {cells} cells per stage", local, test, None),
        (f"local CRD {cells} cells, one group", one_group, test, None),
        ("per stage, float64 input", local, test.astype(np.float64), None),
        ("per stage, one image per call", local, test, 1),
    ]
    if args.other_data is not None:
        other = load_data(replace_data(args, args.other_data))[1]
        cases.append((f"per stage, scoring {args.other_data.name}", local, other, None))
    rows = []
    for name, detector, X, per_call in cases:
        ms = distance_ms(detector, X, per_call, max(args.repeats, 3))
        rows.append({"case": name, "distance ms/image": ms,
                     "x plain CRD": ms / rows[0]["distance ms/image"] if rows else 1.0})
        log(f"{name}: {ms:.3g} ms/image")
    return rows


def replace_data(args, data):
    other = argparse.Namespace(**vars(args))
    other.data = data
    return other


def main(argv=None):
    args = parse_args(argv)
    use_shared_weights()
    train, test, labels, masks = load_data(args)
    log(f"train {train.shape}, test {test.shape}, {int(labels.sum())} defective")
    rows = []
    for name, detector in methods(args):
        rows.append(evaluate(name, detector, train, test, labels, masks, args.repeats))
        log(format_table(rows[-1:], COLUMNS).splitlines()[-1])
    machine = machine_summary()
    setup = (f"{args.data.name}: {len(train)} training and {len(test)} test images "
             f"({int(labels.sum())} defective), {args.backbone} layers "
             f"{' + '.join(args.layers)}, features {test.shape[1:]}")
    print(machine)
    print(setup)
    print()
    print(format_table(rows, COLUMNS))
    name = f"local_{args.data.name}_{args.backbone}" + ("_quick" if args.quick else "")
    paths = write_results(rows, args.out_dir, name, machine, setup=setup,
                          args=vars(args))
    print(f"\nwrote {paths[0]} and {paths[1]}")
    if args.timing_cases:
        timing = timing_cases(args, train, test)
        print()
        print(format_table(timing, ["case", "distance ms/image", "x plain CRD"]))
        paths = write_results(timing, args.out_dir, f"{name}_timing", machine,
                              setup=setup, args=vars(args))
        print(f"\nwrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()
