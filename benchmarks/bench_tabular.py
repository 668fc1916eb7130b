"""CRD next to PyOD's detectors on the 17 ODDS datasets, under two protocols.

Every detector is a ``Pipeline(StandardScaler, detector)``, so features are
standardised on the training part; CRD runs at each ``--lams`` (absolute) and
``--trace-lams`` (``lam_scale="trace"``), then two non-linear variants:
:class:`crdistance.LocalCRDetector` with ``--cells`` k-means cells, and kernel
CRD, CRD (``lam=0.01``, trace) on ``--rbf-components`` random Fourier features
of the RBF kernel (scikit-learn's ``RBFSampler(gamma="scale")``, i.e.
``gamma = 1 / n_features`` after standardising) and, for comparison, on
``--nystroem-components`` Nystroem features of the same kernel. Detectors:
PyOD's KNN, LOF, IForest, OCSVM and PCA with their default parameters
(scikit-learn stand-ins, marked "(sklearn)", when PyOD is not installed).
AUROC of the test part, mean over
``--repeats`` random splits (seeds 0, 1, ...).

- ``pyod``: PyOD's published protocol (Zhao et al., 2019): 60 % train / 40 %
  test, not stratified, outliers present in training. The mean over
  datasets is compared with ``odds/pyod_benchmark_roc.csv`` (their mean of 10
  repeats).
- ``novelty``: 60 % of the inliers train; the other 40 % of the inliers and
  every outlier test. This is the setting CRD is designed for.

Data: ODDS (Rayana, 2016), from ``../shared/data/odds``.

Example::

    python benchmarks/bench_tabular.py                  # 17 datasets, 3 repeats
    python benchmarks/bench_tabular.py --repeats 10     # PyOD's 10 repeats
    python benchmarks/bench_tabular.py --quick          # 2 datasets, 1 repeat
"""

import argparse
import csv
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from _features import RESULTS, SHARED, log
from _report import format_table, machine_summary
from _results import write_results
from sklearn.kernel_approximation import Nystroem, RBFSampler
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from crdistance import CRDetector, LocalCRDetector
from crdistance.datasets import list_odds, load_odds

PROTOCOLS = ("pyod", "novelty")
PUBLISHED = SHARED / "data" / "odds" / "pyod_benchmark_roc.csv"
PUBLISHED_FIRST_METHOD_COLUMN = 4  # after Data, #Samples, # Dimensions, Outlier Perc


def baseline_detectors():
    """(name, factory(seed)) of the comparison detectors, PyOD's when installed."""
    try:
        from pyod.models.iforest import IForest
        from pyod.models.knn import KNN
        from pyod.models.lof import LOF
        from pyod.models.ocsvm import OCSVM
        from pyod.models.pca import PCA
    except ImportError:
        return sklearn_detectors()
    return [
        ("KNN", lambda seed: KNN()),
        ("LOF", lambda seed: LOF()),
        ("IForest", lambda seed: IForest(random_state=seed)),
        ("OCSVM", lambda seed: OCSVM()),
        # scikit-learn's default solver clips the variance of degenerate
        # directions to exactly 0 (constant pixels of mnist and optdigits),
        # which PyOD's PCA divides by; the full SVD keeps them tiny but > 0,
        # as in the scikit-learn versions of PyOD's published benchmark.
        ("PCA", lambda seed: PCA(svd_solver="full", random_state=seed)),
    ]


def sklearn_detectors():
    """scikit-learn stand-ins for PyOD's detectors, with PyOD's defaults."""
    from sklearn.covariance import EmpiricalCovariance
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor
    from sklearn.svm import OneClassSVM

    from crdistance.baselines import NearestNeighborDetector

    return [
        ("KNN (sklearn)",  # mean of the 5 distances; PyOD's uses the 5th
         lambda seed: NearestNeighborDetector(n_neighbors=5, contamination=None)),
        ("LOF (sklearn)", lambda seed: LocalOutlierFactor(novelty=True)),
        ("IForest (sklearn)", lambda seed: IsolationForest(random_state=seed)),
        ("OCSVM (sklearn)", lambda seed: OneClassSVM(gamma="auto")),
        # PyOD's PCA with all components, weighted: the Mahalanobis distance.
        ("PCA (sklearn)", lambda seed: EmpiricalCovariance()),
    ]


def detectors(args):
    specs = [(f"CRD lam={lam:g}", lambda seed, lam=lam: CRDetector(lam=lam))
             for lam in args.lams]
    specs += [(f"CRD lam={lam:g} (trace)",
               lambda seed, lam=lam: CRDetector(lam=lam, lam_scale="trace"))
              for lam in args.trace_lams]
    specs += [(f"local CRD {cells} cells",
               lambda seed, cells=cells: LocalCRDetector(
                   n_cells=cells, random_state=seed))
              for cells in args.cells]
    # gamma=None is 1 / n_features for Nystroem's RBF kernel, as "scale" after
    # standardising is for RBFSampler.
    maps = [(f"RBF {n} + CRD", RBFSampler, {"gamma": "scale", "n_components": n})
            for n in args.rbf_components]
    maps += [(f"Nystroem {n} + CRD", Nystroem, {"gamma": None, "n_components": n})
             for n in args.nystroem_components]
    specs += [(name, lambda seed, kind=kind, params=params: make_pipeline(
                  kind(**params, random_state=seed),
                  CRDetector(lam=0.01, lam_scale="trace")))
              for name, kind, params in maps]
    return specs + baseline_detectors()


def outlier_scores(model, X):
    """Larger = more anomalous, for PyOD, scikit-learn and crdistance detectors."""
    detector = model[-1]
    if type(detector).__module__.startswith("pyod"):
        return model.decision_function(X)
    if hasattr(detector, "mahalanobis"):
        return detector.mahalanobis(model[:-1].transform(X))
    return -model.score_samples(X)


def split(X, y, protocol, seed):
    """Training rows and test rows with their labels."""
    if protocol == "pyod":
        X_train, X_test, _, y_test = train_test_split(X, y, test_size=0.4,
                                                      random_state=seed)
        return X_train, X_test, y_test
    X_train, X_test_inliers = train_test_split(X[y == 0], test_size=0.4,
                                               random_state=seed)
    X_test = np.concatenate([X_test_inliers, X[y == 1]])
    y_test = np.r_[np.zeros(len(X_test_inliers)), np.ones(int(y.sum()))]
    return X_train, X_test, y_test


def measure(name, factory, X, y, protocol, repeats):
    """Mean and standard deviation of the test AUROC over the repeats, and time."""
    aurocs, seconds = [], 0.0
    for seed in range(repeats):
        X_train, X_test, y_test = split(X, y, protocol, seed)
        start = time.perf_counter()
        model = make_pipeline(StandardScaler(), factory(seed)).fit(X_train)
        scores = outlier_scores(model, X_test)
        seconds += time.perf_counter() - start
        if not np.all(np.isfinite(scores)):
            log(f"{name}: non-finite scores with seed {seed}; AUROC set to NaN")
            aurocs.append(np.nan)
            continue
        aurocs.append(roc_auc_score(y_test, scores))
    return {"method": name, "AUROC": float(np.mean(aurocs)),
            "AUROC std": float(np.std(aurocs)), "seconds": seconds / repeats}


def published_roc():
    """PyOD's published ROC table: {dataset: {method: AUROC}}."""
    with open(PUBLISHED, newline="") as stream:
        reader = csv.reader(stream)
        first = PUBLISHED_FIRST_METHOD_COLUMN
        methods = next(reader)[first:]
        return {row[0]: dict(zip(methods, map(float, row[first:]), strict=True))
                for row in reader}


def wide_table(rows, protocol, datasets, methods):
    """Datasets x methods AUROC, then the mean over datasets, the datasets
    where each method is best and its seconds (fit + score, summed over the
    datasets, mean over repeats)."""
    own = {(r["dataset"], r["method"]): r for r in rows if r["protocol"] == protocol}
    table = [{"dataset": dataset, **{m: own[dataset, m]["AUROC"] for m in methods}}
             for dataset in datasets]
    means = {m: float(np.mean([row[m] for row in table])) for m in methods}
    wins = {m: sum(row[m] == max(row[k] for k in methods) for row in table)
            for m in methods}
    seconds = {m: sum(own[d, m]["seconds"] for d in datasets) for m in methods}
    table.append({"dataset": "mean", **means})
    table.append({"dataset": "datasets won", **wins})
    table.append({"dataset": "seconds", **seconds})
    return format_table(table, ["dataset", *methods])


def published_comparison(rows, datasets, published):
    """Measured against published mean AUROC of the detectors both tables have."""
    comparison = []
    for method in dict.fromkeys(r["method"] for r in rows):
        reference = method.removesuffix(" (sklearn)")
        if reference not in next(iter(published.values())):
            continue
        measured = {r["dataset"]: r["AUROC"] for r in rows
                    if r["protocol"] == "pyod" and r["method"] == method}
        differences = np.array([measured[d] - published[d][reference]
                                for d in datasets])
        worst = int(np.argmax(np.abs(differences)))
        comparison.append({
            "method": method,
            "measured mean": float(np.mean(list(measured.values()))),
            "published mean": float(np.mean([published[d][reference]
                                             for d in datasets])),
            "mean abs diff": float(np.mean(np.abs(differences))),
            "largest diff": f"{differences[worst]:+.3f} ({datasets[worst]})",
        })
    return comparison


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-home", type=Path, default=SHARED / "data",
                        help="folder holding odds/ (default: %(default)s)")
    parser.add_argument("--datasets", nargs="+", default=None,
                        help="ODDS names (default: every .mat in DATA_HOME/odds)")
    parser.add_argument("--lams", type=float, nargs="*", default=[5.0])
    parser.add_argument("--trace-lams", type=float, nargs="*", default=[0.01, 0.1])
    parser.add_argument("--cells", type=int, nargs="*", default=[16],
                        help="k-means cells of LocalCRDetector")
    parser.add_argument("--rbf-components", type=int, nargs="*", default=[1024],
                        help="random Fourier features before CRD")
    parser.add_argument("--nystroem-components", type=int, nargs="*", default=[512],
                        help="Nystroem features before CRD")
    parser.add_argument("--repeats", type=int, default=3,
                        help="random splits averaged (PyOD's published table: 10)")
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS,
                        default=list(PROTOCOLS))
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true",
                        help="wbc and lympho, one repeat, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.datasets, args.repeats = args.datasets or ["wbc", "lympho"], 1
    args.datasets = args.datasets or list_odds(args.data_home)
    return args


def main(argv=None):
    args = parse_args(argv)
    specs = detectors(args)
    rows = []
    for dataset in args.datasets:
        X, y = load_odds(dataset, data_home=args.data_home)
        for protocol in args.protocols:
            for name, factory in specs:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    row = measure(name, factory, X, y, protocol, args.repeats)
                rows.append({"protocol": protocol, "dataset": dataset, **row})
            log(f"{dataset}: {X.shape}, {protocol} done")
    machine = machine_summary()
    methods = [name for name, _ in specs]
    print(machine)
    print(_pyod_version())
    print(f"AUROC, mean of {args.repeats} random split(s); "
          "every detector after a StandardScaler fitted on the training part")
    for protocol in args.protocols:
        print(f"\n## protocol: {protocol}\n")
        print(wide_table(rows, protocol, args.datasets, methods))
    comparison = []
    if "pyod" in args.protocols and PUBLISHED.is_file():
        published = published_roc()
        comparison = published_comparison(rows, args.datasets, published)
        print("\n## protocol pyod against PyOD's published table (10 repeats)\n")
        print(format_table(comparison, ["method", "measured mean", "published mean",
                                        "mean abs diff", "largest diff"]))
    name = "tabular_odds" + ("_quick" if args.quick else "")
    paths = write_results(rows, args.out_dir, name, machine, args=vars(args),
                          published_comparison=comparison, pyod=_pyod_version())
    print(f"\nwrote {paths[0]} and {paths[1]}")


def _pyod_version():
    try:
        return f"pyod {version('pyod')}"
    except PackageNotFoundError:
        return "pyod not installed: scikit-learn stand-ins"


if __name__ == "__main__":
    main()
