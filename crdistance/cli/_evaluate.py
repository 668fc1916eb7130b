"""``crdistance evaluate``: detectors compared on the patch features of a dataset.

Every method is fitted on the same training features and scores the same test
features; the table has the metrics of :mod:`crdistance.metrics` and what each
method costs: fit seconds, distance milliseconds per test image (backbone
excluded) and the bytes of its fitted arrays.
"""

import csv
import time
from pathlib import Path

import numpy as np

from crdistance import CRDetector
from crdistance.baselines import NearestNeighborDetector
from crdistance.cli._cse import cse_training_set, kmeans_detector
from crdistance.cli._io import CommandError
from crdistance.cli._model import collect_features, local_detector, make_featurizer
from crdistance.maps import anomaly_maps
from crdistance.metrics import aupro, image_auroc, pixel_auroc, pro_curve

COLUMNS = {
    "method": "",
    "image AUROC": ".3f",
    "pixel AUROC": ".3f",
    "AUPRO": ".3f",
    "fit s": ".2f",
    "distance ms/image": ".2f",
    "state bytes": ",d",
}
"""Columns of the table and the format of their values."""
METHOD_NAMES = ("crd", "local", "auto", "knn", "coreset", "cse", "cse_kmeans")
SCORING_CHUNK = 8  # test images scored per call, between progress updates
PRO_FPR_LIMIT = 0.3
CURVE_POINTS = 2000
GRID_COLUMNS = 4


def methods(names, featurizer, *, lam, lam_scale, cells, nearest_cells, coreset_ratio,
            auto=None, cse=None):
    """(key, label, unfitted detector) of each name of ``METHOD_NAMES``, in order.

    ``local`` has `cells` k-means cells per layer of the fitted `featurizer`;
    ``auto`` is `auto`, the (label, detector) that ``fit --auto`` would choose;
    ``cse`` and ``cse_kmeans`` train a ContrastiveEmbedder on the training
    features and on `cse`, the defective copies of the training images
    (:func:`crdistance.cli._cse.cse_training_set`).
    """
    def embedded(detector):
        from crdistance.cli._cse import EmbeddedDetector, make_embedder

        return EmbeddedDetector(make_embedder(cse["console"]), detector,
                                cse["training"])

    available = {
        "crd": lambda: (
            f"CRD lam={lam:g}" + (" (trace)" if lam_scale == "trace" else ""),
            CRDetector(lam=lam, lam_scale=lam_scale),
        ),
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
    }
    return [(name, *available[name]()) for name in names]


def evaluate_dataset(
    data_dir,
    names,
    out_dir,
    *,
    featurizer_options,
    method_options,
    reader,
    figures,
    console,
):
    """Evaluate methods on an MVTec AD style folder; write the table and figures.

    Parameters
    ----------
    data_dir : path-like
        Folder with ``train/good``, ``test/<kind>`` and ``ground_truth/<kind>``.
    names : list of str
        Methods, among ``METHOD_NAMES``.
    out_dir : path-like
        Folder receiving ``evaluation.csv``, and with `figures` ``curves.png``
        and ``heatmaps_<key>.png``.
    featurizer_options : dict
        Parameters of the PatchFeaturizer.
    method_options : dict
        Keyword arguments of :func:`methods`.
    reader : ImageReader
    figures : bool
    console : Console
    sizes : list of tuple (height_i, width_i) or None, default=None
        Size of each test image's map; None takes the masks' shapes.

    Returns
    -------
    rows : list of dict
        The table rows.
    written : list of pathlib.Path
        Files written.
    skipped : list of dict
        Unreadable images skipped (with ``reader.skip_unreadable``).
    """
    from crdistance.cli._plots import figure_class, save_curves

    if figures:
        figure_class()  # fails now, not after the long steps, without matplotlib
    train_set, test_set = _mvtec(data_dir)
    featurizer = make_featurizer(train_set.paths, **featurizer_options)
    auto = None
    if "auto" in names:
        from crdistance.cli._auto import choose_detector

        detector, info = choose_detector(featurizer, list(train_set.paths), console)
        auto = (f"auto: {info['chosen']}", detector)
    train_paths = list(map(Path, train_set.paths))
    kept, train = collect_features(
        featurizer,
        train_paths,
        reader,
        console.progress("evaluate: training features", len(train_paths)),
    )
    cse = None
    if {"cse", "cse_kmeans"} & set(names):
        # The training images read above, and a defective copy of each.
        training = cse_training_set(featurizer, [train_paths[i] for i in kept],
                                    console)
        del training["normal"]  # the embedders are fitted on `train`
        cse = {"training": training, "console": console}
    specs = methods(names, featurizer, auto=auto, cse=cse, **method_options)
    kept, test = collect_features(
        featurizer,
        list(map(Path, test_set.paths)),
        reader,
        console.progress("evaluate: test features", len(test_set.paths)),
    )
    labels = test_set.labels[kept]
    masks = list(test_set.masks[kept]) if test_set.has_masks else None
    if masks is None:
        console.warn(f"{data_dir} has no ground_truth folder: image metrics only.")
    sizes = ([mask.shape for mask in masks] if masks is not None
             else list(test_set.image_sizes[kept]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, curves, written = [], {}, []
    for key, label, detector in specs:
        row, image_scores, maps = evaluate_method(
            label, detector, train, test, masks, labels, console, sizes=sizes
        )
        rows.append(row)
        if figures:
            pro = None if masks is None else pro_points(masks, maps)
            curves[label] = (image_scores, pro, row)
            path = out_dir / f"heatmaps_{key}.png"
            _save_grid(path, label, test_set, kept, image_scores, maps, masks, reader)
            written.append(path)
    written.insert(0, write_csv(rows, out_dir / "evaluation.csv"))
    if figures:
        save_curves(out_dir / "curves.png", labels, curves)
        written.insert(1, out_dir / "curves.png")
    return rows, written, reader.report(console)


def _mvtec(data_dir):
    """The train and test sets of an MVTec AD style folder, as CommandErrors."""
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
        return load_mvtec(data_dir, "train"), load_mvtec(data_dir, "test")
    except FileNotFoundError as exc:
        raise CommandError(f"{exc} {layout}") from exc


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


def evaluate_method(label, detector, train, test, masks, labels, console, *,
                    sizes=None):
    """Fit one detector, score the test patches and measure it.

    Parameters
    ----------
    label : str
        Name of the method in the table.
    detector : estimator
        Unfitted detector with ``fit`` and ``score_patches``.
    train, test : ndarray of shape (n_images, h, w, d)
        Patch features.
    masks : list of ndarray (height_i, width_i) or None
        Ground truth of the test images, which sets the size of the maps; None
        for image-level labels only (pixel metrics are then None).
    labels : ndarray of shape (n_test,)
        1 for defective test images.
    console : Console
    sizes : list of tuple (height_i, width_i) or None, default=None
        Size of each test image's map; None takes the masks' shapes.

    Returns
    -------
    row : dict
        The table row (keys of ``COLUMNS``).
    image_scores : ndarray of shape (n_test,)
        Largest patch distance of each test image.
    maps : list of ndarray (height_i, width_i)
        Anomaly maps of the test images.
    """
    console.info(f"{label}: fitting on {len(train)} images")
    start = time.perf_counter()
    detector.fit(train)
    fit_seconds = time.perf_counter() - start
    progress = console.progress(f"{label}: distances", len(test))
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
        "fit s": fit_seconds,
        "distance ms/image": 1000 * scoring_seconds / len(test),
        "state bytes": state_bytes(detector),
    }
    return row, image_scores, maps


def pro_points(masks, maps):
    """At most ``CURVE_POINTS`` points (fpr, pro) of the PRO curve up to the limit."""
    fpr, pro = pro_curve(masks, maps)
    shown = np.flatnonzero(fpr <= PRO_FPR_LIMIT)
    shown = shown[np.unique(np.linspace(0, len(shown) - 1, CURVE_POINTS).astype(int))]
    return fpr[shown], pro[shown]


def state_bytes(detector):
    """Bytes of the fitted arrays of a detector: its attributes ending in ``_``
    that are arrays or lists of arrays."""
    if hasattr(detector, "state_parts"):  # a detector on an embedding
        return sum(state_bytes(part) for part in detector.state_parts())
    values = []
    for name, value in vars(detector).items():
        if name.endswith("_"):
            values += value if isinstance(value, list) else [value]
    return int(sum(value.nbytes for value in values if hasattr(value, "nbytes")))


def format_table(rows):
    """The rows as a text table: methods left-aligned, numbers right-aligned."""
    cells = [
        [("" if row[name] is None else format(row[name], spec))
         for name, spec in COLUMNS.items()]
        for row in rows
    ]
    widths = [
        max(len(name), *(len(line[i]) for line in cells))
        for i, name in enumerate(COLUMNS)
    ]

    def join(values):
        return "  ".join(
            value.ljust(width) if i == 0 else value.rjust(width)
            for i, (value, width) in enumerate(zip(values, widths, strict=True))
        )

    return "\n".join([join(COLUMNS), join("-" * w for w in widths), *map(join, cells)])


def write_csv(rows, path):
    """Write the rows to a CSV file with the columns of ``COLUMNS``."""
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return path
