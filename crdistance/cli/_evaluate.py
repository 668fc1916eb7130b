"""``crdistance evaluate``: detectors compared on the patch features of one or
more MVTec AD style folders (product categories).

Every method is fitted once on the training features of all categories and
scores the test features of each; the table has the metrics of
:mod:`crdistance.metrics` per category (and their mean over the categories,
with several) and what each method costs: fit seconds, distance milliseconds
per test image (backbone excluded) and the bytes of its fitted arrays.
"""

import time
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from crdistance import CRDetector
from crdistance.baselines import NearestNeighborDetector
from crdistance.categories import PerCategoryDetector
from crdistance.cli._cse import cse_training_set, kmeans_detector
from crdistance.cli._features import collect_features
from crdistance.cli._io import CommandError, list_images
from crdistance.cli._model import grad_detector, local_detector, make_featurizer
from crdistance.cli._table import mean_row, state_bytes, write_csv
from crdistance.maps import anomaly_maps
from crdistance.metrics import aupro, image_auroc, pixel_auroc, pro_curve

METHOD_NAMES = ("crd", "local", "auto", "knn", "coreset", "cse", "cse_kmeans",
                "grad", "crd_routed")
SCORING_CHUNK = 8  # test images scored per call, between progress updates
PRO_FPR_LIMIT = 0.3
CURVE_POINTS = 2000
GRID_COLUMNS = 4


def methods(names, featurizer, *, lam, lam_scale, cells, nearest_cells, coreset_ratio,
            max_epochs=None, auto=None, cse=None, console=None):
    """(key, label, unfitted detector) of each name of ``METHOD_NAMES``, in order.

    ``local`` has `cells` k-means cells per layer of the fitted `featurizer`;
    ``auto`` is `auto`, the (label, detector) that ``fit --auto`` would choose;
    ``cse`` and ``cse_kmeans`` train a ContrastiveEmbedder on the training
    features and on `cse`, the defective copies of the training images
    (:func:`crdistance.cli._cse.cse_training_set`); ``grad`` is a seeded
    GRADDetector of at most `max_epochs` epochs (None: its default) showing its
    epochs on `console`; ``crd_routed`` one CRD per category behind a router
    (a PerCategoryDetector, fitted with the categories as ``y``).
    """
    from crdistance.cli._categories import per_category

    def embedded(detector):
        from crdistance.cli._cse import EmbeddedDetector, make_embedder

        return EmbeddedDetector(make_embedder(cse["console"]), detector,
                                cse["training"])

    crd = f"lam={lam:g}" + (" (trace)" if lam_scale == "trace" else "")
    available = {
        "crd": lambda: (f"CRD {crd}", CRDetector(lam=lam, lam_scale=lam_scale)),
        "local": lambda: (
            f"local CRD {cells} cells",
            local_detector(
                featurizer,
                cells=cells,
                nearest_cells=nearest_cells,
                lam=lam,
                lam_scale=lam_scale,
            ),
        ),
        "auto": lambda: auto,
        "knn": lambda: ("1-NN exact", NearestNeighborDetector(contamination=None)),
        "coreset": lambda: (
            f"1-NN coreset {100 * coreset_ratio:g} %",
            NearestNeighborDetector(
                coreset_ratio=coreset_ratio, contamination=None, random_state=0
            ),
        ),
        "cse": lambda: ("CSE + CRD", embedded(CRDetector(lam=lam,
                                                          lam_scale=lam_scale))),
        "cse_kmeans": lambda: ("CSE k-means", embedded(kmeans_detector())),
        "grad": lambda: ("GRAD", grad_detector(console, max_epochs)),
        "crd_routed": lambda: (f"CRD per category {crd}",
                               per_category(CRDetector(lam=lam, lam_scale=lam_scale))),
    }
    return [(name, *available[name]()) for name in names]


def evaluate_dataset(
    data_dirs,
    names,
    out_dir,
    *,
    featurizer_options,
    method_options,
    reader,
    figures,
    console,
):
    """Evaluate methods on MVTec AD style folders; write the table and figures.

    Parameters
    ----------
    data_dirs : path-like or list of path-like
        Folders with ``train/good``, ``test/<kind>`` and ``ground_truth/<kind>``,
        one per category (named by the folder); a category without
        ground-truth masks gets image metrics only.
    names : list of str
        Methods, among ``METHOD_NAMES``.
    out_dir : path-like
        Folder receiving ``evaluation.csv``, and with `figures` ``curves.png``
        and ``heatmaps_<key>.png`` (with several categories
        ``curves_<category>.png`` and ``heatmaps_<category>_<key>.png``).
    featurizer_options : dict
        Parameters of the PatchFeaturizer.
    method_options : dict
        Keyword arguments of :func:`methods`.
    reader : ImageReader
    figures : bool
    console : Console

    Returns
    -------
    rows : list of dict
        The table rows (keys of ``COLUMNS``): one per method with one
        category; with several, one per category and method, then a ``mean``
        row per method (:func:`crdistance.cli._table.mean_row`).
    written : list of pathlib.Path
        Files written.
    skipped : list of dict
        Unreadable images skipped (with ``reader.skip_unreadable``).
    """
    from crdistance.cli._categories import category_names
    from crdistance.cli._plots import figure_class, save_curves

    data_dirs = [data_dirs] if isinstance(data_dirs, (str, Path)) else data_dirs
    categories = category_names(data_dirs)
    if figures:
        figure_class()  # fails now, not after the long steps, without matplotlib
    sets = [_mvtec(folder, console) for folder in data_dirs]
    train_paths = [Path(path) for train_set, _ in sets for path in train_set.paths]
    train_categories = [name for name, (train_set, _) in zip(categories, sets,
                                                              strict=True)
                        for _ in train_set.paths]
    featurizer = make_featurizer(train_paths, **featurizer_options)
    auto = None
    if "auto" in names:
        from crdistance.cli._auto import choose_detector

        detector, info = choose_detector(featurizer, train_paths, console)
        auto = (f"auto: {info['chosen']}", detector)
    kept, train = collect_features(
        featurizer,
        train_paths,
        reader,
        console.progress("evaluate: training features", len(train_paths)),
    )
    y = [train_categories[i] for i in kept]
    cse = None
    if {"cse", "cse_kmeans"} & set(names):
        # The training images read above, and a defective copy of each.
        training = cse_training_set(featurizer, [train_paths[i] for i in kept],
                                    console)
        del training["normal"]  # the embedders are fitted on `train`
        cse = {"training": training, "console": console}
    specs = methods(names, featurizer, auto=auto, cse=cse, console=console,
                    **method_options)
    tests = [_test_features(name, test_set, featurizer, reader, console,
                            several=len(categories) > 1)
             for name, (_, test_set) in zip(categories, sets, strict=True)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, means, written = [], [], []
    curves = {test.name: {} for test in tests}
    for key, label, detector in specs:
        fit_seconds = fit_method(label, detector, train, y, console)
        lines = []
        for test in tests:
            row, image_scores, maps = score_method(
                label, detector, test.features, test.masks, test.labels, console,
                sizes=test.sizes, category=test.name if len(tests) > 1 else None,
            )
            lines.append({"category": test.name} | row | {
                "fit s": fit_seconds, "state bytes": state_bytes(detector)})
            if figures:
                pro = None if test.masks is None else pro_points(test.masks, maps)
                curves[test.name][label] = (image_scores, pro, row)
                stem = key if len(tests) == 1 else f"{test.name}_{key}"
                path = out_dir / f"heatmaps_{stem}.png"
                _save_grid(path, label, test.set, test.kept, image_scores, maps,
                           test.masks, reader)
                written.append(path)
        if len(tests) > 1:
            means.append(mean_row(lines, fit_seconds=fit_seconds,
                                  state_bytes=state_bytes(detector),
                                  n_images=[len(test.features) for test in tests]))
            for line in lines:  # of the one model: in the mean row
                line["fit s"] = line["state bytes"] = None
        rows += lines
    rows = sorted(rows, key=lambda row: categories.index(row["category"])) + means
    written.insert(0, write_csv(rows, out_dir / "evaluation.csv"))
    if figures:
        for place, test in enumerate(tests, start=1):
            name = "curves.png" if len(tests) == 1 else f"curves_{test.name}.png"
            save_curves(out_dir / name, test.labels, curves[test.name])
            written.insert(place, out_dir / name)
    return rows, written, reader.report(console)


def _test_features(name, test_set, featurizer, reader, console, *, several):
    """The readable test images of one category: features, labels, masks and
    map sizes (a Bunch)."""
    what = f" of {name}" if several else ""
    kept, features = collect_features(
        featurizer,
        list(map(Path, test_set.paths)),
        reader,
        console.progress(f"evaluate: test features{what}", len(test_set.paths)),
    )
    masks = list(test_set.masks[kept]) if test_set.has_masks else None
    sizes = ([mask.shape for mask in masks] if masks is not None
             else list(test_set.image_sizes[kept]))
    return Bunch(name=name, set=test_set, kept=kept, features=features,
                 labels=test_set.labels[kept], masks=masks, sizes=sizes)


def _mvtec(data_dir, console):
    """The train and test sets of an MVTec AD style folder, as CommandErrors.

    A test set whose ground_truth folder misses masks has image labels only,
    with a warning, as one without a ground_truth folder.
    """
    from crdistance.datasets import load_mvtec

    layout = (
        "evaluate needs the MVTec AD layout: DATA_DIR/train/good, "
        "DATA_DIR/test/<good or defect>, and for pixel metrics "
        "DATA_DIR/ground_truth/<defect>/<name>_mask.png."
    )
    data_dir = Path(data_dir)
    for folder in (data_dir, data_dir / "train" / "good", data_dir / "test"):
        if not folder.is_dir():
            raise CommandError(f"No folder {folder}; {layout}")
    try:
        train_set = load_mvtec(data_dir, "train")
    except FileNotFoundError as exc:
        raise CommandError(f"{exc} {layout}") from exc
    try:
        test_set = load_mvtec(data_dir, "test")
    except FileNotFoundError as exc:
        if "no ground-truth mask" not in str(exc):
            raise CommandError(f"{exc} {layout}") from exc
        console.warn(f"{data_dir}: {exc} Image metrics only.")
        test_set = _image_labels(data_dir)
    else:
        if not test_set.has_masks:
            console.warn(f"{data_dir} has no ground_truth folder: image metrics "
                         "only.")
    return train_set, test_set


def _image_labels(data_dir):
    """The test set of `data_dir` with image labels only (no masks)."""
    from crdistance.datasets import GOOD, LazyArrays

    paths, kinds = [], []
    for folder in sorted(p for p in (data_dir / "test").iterdir() if p.is_dir()):
        found = list_images(folder)
        paths += [str(path) for path in found]
        kinds += [folder.name] * len(found)
    paths, kinds = np.asarray(paths), np.asarray(kinds)
    return Bunch(paths=paths, labels=(kinds != GOOD).astype(np.int64),
                 defect_types=kinds, masks=None, has_masks=False,
                 image_sizes=LazyArrays(_image_size, paths))


def _image_size(path):
    from PIL import Image

    with Image.open(path) as image:
        return (image.height, image.width)


def fit_method(label, detector, train, y, console):
    """Fit one detector on the training features (a PerCategoryDetector with
    the category labels `y`); the seconds it took."""
    console.info(f"{label}: fitting on {len(train)} images")
    start = time.perf_counter()
    if isinstance(detector, PerCategoryDetector):
        detector.fit(train, y)
    else:
        detector.fit(train)
    return time.perf_counter() - start


def score_method(label, detector, test, masks, labels, console, *, sizes=None,
                 category=None):
    """Score the test patches of one category with a fitted detector and
    measure it.

    Parameters
    ----------
    label : str
        Name of the method in the table.
    detector : estimator
        Fitted detector with ``score_patches``.
    test : ndarray of shape (n_images, h, w, d)
        Patch features.
    masks : list of ndarray (height_i, width_i) or None
        Ground truth of the test images, which sets the size of the maps; None
        for image-level labels only (pixel metrics are then None).
    labels : ndarray of shape (n_test,)
        1 for defective test images.
    console : Console
    sizes : list of tuple (height_i, width_i) or None, default=None
        Size of each test image's map; None takes the masks' shapes.
    category : str or None, default=None
        The category of the test images, named in the progress bar.

    Returns
    -------
    row : dict
        The metrics and the distance time of the table row.
    image_scores : ndarray of shape (n_test,)
        Largest patch distance of each test image.
    maps : list of ndarray (height_i, width_i)
        Anomaly maps of the test images.
    """
    what = "" if category is None else f" of {category}"
    progress = console.progress(f"{label}: distances{what}", len(test))
    parts, scoring_seconds = [], 0.0
    for begin in range(0, len(test), SCORING_CHUNK):
        start = time.perf_counter()
        parts.append(
            np.asarray(detector.score_patches(test[begin : begin + SCORING_CHUNK]))
        )
        scoring_seconds += time.perf_counter() - start
        progress.update(begin + len(parts[-1]))
    progress.close()
    patch_scores = np.concatenate(parts)
    if sizes is None:
        sizes = [mask.shape for mask in masks]
    maps = anomaly_maps(patch_scores, sizes)
    image_scores = patch_scores.max(axis=(1, 2))
    row = {
        "method": label,
        "image AUROC": image_auroc(labels, image_scores),
        "pixel AUROC": None if masks is None else pixel_auroc(masks, maps),
        "AUPRO": None if masks is None else aupro(masks, maps),
        "distance ms/image": 1000 * scoring_seconds / len(test),
    }
    return row, image_scores, maps


def _save_grid(path, label, test_set, kept, image_scores, maps, masks, reader):
    """The heat-map grid of one method: best detections, misses, false alarms."""
    from crdistance.cli._plots import examples, save_heatmap_grid

    labels = test_set.labels[kept]
    rows = {}
    for title, indices in examples(labels, image_scores, GRID_COLUMNS).items():
        rows[title] = [
            (
                reader.read(test_set.paths[kept[i]]),
                maps[i],
                None if masks is None else masks[i],
                f"{test_set.defect_types[kept[i]]}/"
                f"{Path(test_set.paths[kept[i]]).name}\n{image_scores[i]:.3g}",
            )
            for i in indices
        ]
    vmax = max(float(heat.max()) for heat in maps)
    save_heatmap_grid(path, label, rows, vmax=vmax)


def pro_points(masks, maps):
    """At most ``CURVE_POINTS`` points (fpr, pro) of the PRO curve up to the limit."""
    fpr, pro = pro_curve(masks, maps)
    shown = np.flatnonzero(fpr <= PRO_FPR_LIMIT)
    shown = shown[np.unique(np.linspace(0, len(shown) - 1, CURVE_POINTS).astype(int))]
    return fpr[shown], pro[shown]
