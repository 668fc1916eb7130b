"""Shared by the image benchmarks: the data, cached patch features, timing, bytes.

Patch features are extracted once per (dataset, backbone, layers, weights,
resize) and kept as ``.npz`` files in ``benchmarks/results/cache``; a later run
asking for any subset of the cached images slices them instead of running the
backbone again.
"""

import functools
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
MAGNETIC_TILE = SHARED / "data" / "magnetic_tile"
RESULTS = Path(__file__).resolve().parent / "results"
FEATURIZER_SOURCES = (
    "featurizer/_featurizer.py", "featurizer/_images.py", "featurizer/_backbones.py"
)


def use_shared_weights():
    """Point ``TORCH_HOME`` at ``../shared/weights`` unless the user has set it."""
    if "TORCH_HOME" not in os.environ:
        os.environ["TORCH_HOME"] = str(SHARED / "weights")


def add_feature_arguments(parser):
    """The dataset, backbone and cache options every image benchmark takes."""
    parser.add_argument("--data", type=Path, default=MAGNETIC_TILE,
                        help="an MVTec AD category folder (default: %(default)s)")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--layers", nargs="+", default=None,
                        help="feature layers (default: the backbone's defaults)")
    parser.add_argument("--weights", default="IMAGENET1K_V1",
                        help="torchvision weights name or state-dict file")
    parser.add_argument("--resize", type=int, default=224,
                        help="images are resized to a square of this side, uncropped")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="feature cache (default: OUT_DIR/cache)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds image subsets, coresets and random banks")


def feature_config(args):
    """What the features depend on, for the cache key: the options and the
    source of the featurizer (a changed preprocessing invalidates the cache)."""
    import crdistance

    package = Path(crdistance.__file__).parent
    source = b"".join((package / name).read_bytes() for name in FEATURIZER_SOURCES)
    return {
        "featurizer": hashlib.sha1(source).hexdigest()[:12],
        "data": str(Path(args.data).resolve()),
        "backbone": args.backbone,
        "layers": None if args.layers is None else list(args.layers),
        "weights": str(args.weights),
        "resize": args.resize,
    }


def cache_prefix(args):
    """Start of the cache file names: the backbone and a hash of the config."""
    config = json.dumps(feature_config(args), sort_keys=True)
    return f"{args.backbone}-{hashlib.sha1(config.encode()).hexdigest()[:12]}"


def cached_features(paths, split, args):
    """Patch features ``(n_images, h, w, d)`` of image ``paths``, from the cache.

    Any cached file of the same configuration and split that holds all of
    ``paths`` is sliced; otherwise the features are extracted (all of
    ``paths``) and cached.
    """
    prefix = f"{cache_prefix(args)}-{split}"
    cache_dir = args.cache_dir or args.out_dir / "cache"
    paths = np.asarray(paths, dtype=str)
    for cached in sorted(cache_dir.glob(f"{prefix}-*.npz")):
        with np.load(cached) as contents:
            index = {path: i for i, path in enumerate(contents["paths"])}
            if all(path in index for path in paths):
                rows = np.asarray([index[path] for path in paths])
                if np.array_equal(rows, np.arange(len(index))):
                    return contents["features"]
                return contents["features"][rows]
    features = extract(paths, args)
    digest = hashlib.sha1("\n".join(paths).encode()).hexdigest()[:8]
    target = cache_dir / f"{prefix}-{len(paths)}-{digest}.npz"
    save_features(target, features, paths, feature_config(args))
    return features


def extract(paths, args):
    """Run the backbone on ``paths`` (a progress line goes to stderr)."""
    layers = None if args.layers is None else tuple(args.layers)
    featurizer = _featurizer(args.backbone, layers, args.weights, args.resize,
                             args.batch_size)
    start = time.perf_counter()
    if not hasattr(featurizer, "n_features_out_"):
        featurizer.fit(list(paths))
    features = featurizer.transform(list(paths))
    log(f"extracted {features.shape} features of {len(paths)} images with "
        f"{args.backbone} in {time.perf_counter() - start:.0f} s")
    return features


def load_set(args, dataset):
    """One MVTec-layout set's cached features, as the accuracy benchmarks use it.

    Reads ``dataset`` under ``args.data_root`` (default ``../shared/data``), keeps
    ``args.max_train_images`` / ``args.max_test_images`` (the test subset holding
    both labels) and points ``args.data`` at the set for the cache key. Returns
    the kept training paths and ``(train, test, labels, masks)``, masks None for
    a set with image labels only.
    """
    from crdistance.datasets import load_mvtec

    root = (SHARED / "data" if args.data_root is None else args.data_root) / dataset
    args.data = root
    train_set, test_set = load_mvtec(root, "train"), load_mvtec(root, "test")
    train_kept = subset(len(train_set.paths), args.max_train_images, args.seed)
    test_kept = subset(len(test_set.paths), args.max_test_images, args.seed,
                       labels=test_set.labels)
    train_paths = train_set.paths[train_kept]
    train = cached_features(train_paths, "train", args)
    test = cached_features(test_set.paths[test_kept], "test", args)
    masks = list(test_set.masks[test_kept]) if test_set.has_masks else None
    labels = test_set.labels[test_kept]
    log(f"{dataset}: train {train.shape}, test {test.shape}, "
        f"{int(labels.sum())} defective")
    return train_paths, (train, test, labels, masks)


def featurizer_for(args, paths):
    """The (cached) PatchFeaturizer of the benchmark options, fitted (building
    the backbone reads none of ``paths``)."""
    layers = None if args.layers is None else tuple(args.layers)
    featurizer = _featurizer(args.backbone, layers, args.weights, args.resize,
                             args.batch_size)
    if not hasattr(featurizer, "n_features_out_"):
        featurizer.fit(list(paths[:1]))
    return featurizer


@functools.cache
def _featurizer(backbone, layers, weights, resize, batch_size):
    """A PatchFeaturizer, built once per process and configuration (its
    backbone is loaded on first use and then kept)."""
    from crdistance.featurizer import PatchFeaturizer

    return PatchFeaturizer(backbone=backbone, layers=layers, weights=weights,
                           resize=resize, batch_size=batch_size)


def save_features(target, features, paths, config):
    """Write a cache file atomically (a partial file never looks complete)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial.npz")
    np.savez(partial, features=features, paths=np.asarray(paths, dtype=str),
             config=json.dumps(config))
    partial.replace(target)


def subset(n_items, n_kept, seed, labels=None):
    """Sorted indices of ``n_kept`` random items (all when None or too many).

    With ``labels``, half are drawn from each of the labels 0 and 1 (as far as
    there are), so that a small test subset holds both kinds of image.
    """
    rng = np.random.default_rng(seed)
    if n_kept is None or n_kept >= n_items:
        return np.arange(n_items)
    if labels is None:
        return np.sort(rng.permutation(n_items)[:n_kept])
    labels = np.asarray(labels)
    n_defective = min(n_kept - n_kept // 2, int(labels.sum()))
    parts = [rng.permutation(np.flatnonzero(labels == label))[:count]
             for label, count in ((1, n_defective), (0, n_kept - n_defective))]
    return np.sort(np.concatenate(parts))


def timed(function, repeats, budget_seconds=10.0):
    """Result of ``function()`` and the fastest of up to ``repeats`` timed calls.

    Calls are repeated only while one takes less than ``budget_seconds``, so a
    slow method (exact nearest neighbours) is timed by its single, real pass.
    """
    start = time.perf_counter()
    result = function()
    best = time.perf_counter() - start
    for _ in range(repeats - 1):
        if best > budget_seconds:
            break
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return result, best


def fit_and_score(detector, train, test, repeats):
    """Fit on ``train`` and score the patches of ``test``, timing both.

    Returns the fitted detector, its patch scores of ``test``, the fit seconds
    and the scoring milliseconds per test image (best of ``repeats`` passes,
    see :func:`timed`).
    """
    start = time.perf_counter()
    fitted = detector.fit(train)
    fit_seconds = time.perf_counter() - start
    scores, seconds = timed(functools.partial(fitted.score_patches, test), repeats)
    return fitted, scores, fit_seconds, 1000 * seconds / len(test)


def state_bytes(detector):
    """Bytes of a fitted detector's state, and of the least it needs to score.

    CRD: ``gram_`` + ``residual_operator_``, and the operator alone in float32
    (d^2 x 4 bytes). Local CRD: cell Gram matrices, operators and centres, and
    the operators and centres in float32. Nearest neighbours: the memory bank,
    both times. k-means: the centres, and the centres in float32. Several
    detectors (``detectors_``, e.g. one per position): the sums.
    """
    if hasattr(detector, "detectors_"):
        parts = np.array([state_bytes(part) for part in detector.detectors_])
        return tuple(int(total) for total in parts.sum(axis=0))
    if hasattr(detector, "residual_operators_"):
        arrays = [*detector.cell_grams_, *detector.residual_operators_,
                  *detector.cell_centers_]
        scoring = [*detector.scoring_operators_, *detector.cell_centers_]
        return sum(a.nbytes for a in arrays), sum(a.size * 4 for a in scoring)
    if hasattr(detector, "residual_operator_"):
        d = detector.n_features_in_
        return detector.gram_.nbytes + detector.residual_operator_.nbytes, d * d * 4
    if hasattr(detector, "cluster_centers_"):  # KMeansDetector
        centers = detector.cluster_centers_
        return centers.nbytes, centers.size * 4
    return detector.memory_bank_.nbytes, detector.memory_bank_.nbytes


def run_header(script, args, started, load_before):
    """The ``#`` lines of an image benchmark's CSV (``../shared/RESULTS.md``):
    the command, the date, the machine, the load average over the run and the
    features; ``started`` and ``load_before`` were read at the start."""
    from _report import machine_summary

    load_after = os.getloadavg()
    return [
        f"command: python benchmarks/{script} " + " ".join(sys.argv[1:]),
        f"date: {started:%Y-%m-%d %H:%M} UTC",
        f"machine: {machine_summary().removeprefix('machine: ')}",
        f"load average: {load_before:.2f} at start, {load_after[0]:.2f} at end "
        f"(15 min: {load_after[2]:.2f})",
        f"features: {args.backbone}, layers {args.layers or 'default'}, resize "
        f"{args.resize}; the same features in every row of a set",
    ]


def log(message):
    """A progress line on stderr, so that stdout holds the tables only."""
    print(message, file=sys.stderr, flush=True)
