"""The model of the command line: a fitted Pipeline(PatchFeaturizer, detector),
the detector a CRDetector, a LocalCRDetector, a KMeansDetector, a GRADDetector
or a PerCategoryDetector of one of them; with ``--embedder cse``,
Pipeline(PatchFeaturizer, ContrastiveEmbedder, detector).

``crdistance fit`` streams the good images through the featurizer into the
detector's ``partial_fit``, so memory does not grow with the number of images
(a KMeansDetector, a GRADDetector and a PerCategoryDetector, without
``partial_fit``, and CSE's training hold all the features), and sets the
threshold on good images held out of the fit, of every category
(:mod:`crdistance.cli._categories`). Model files are those of
:mod:`crdistance.persistence`: a JSON header and arrays, read without running
code from the file.
"""

from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline

from crdistance import CRDetector, LocalCRDetector
from crdistance.categories import PerCategoryDetector
from crdistance.cli._categories import DEFAULT_FALSE_ALARM_RATE, set_threshold
from crdistance.cli._features import feature_batches
from crdistance.cli._io import CommandError
from crdistance.kmeans import KMeansDetector

DETECTORS = (CRDetector, LocalCRDetector, KMeansDetector, PerCategoryDetector)
"""Classes of the last step of a model file of ``crdistance fit``, with
GRADDetector (imported when a model is read)."""
SEED = 0
"""Seed of the GRADDetector of ``fit --detector grad`` and of ``evaluate``."""


def make_featurizer(paths, *, backbone, layers, weights, resize, batch_size, device):
    """A fitted PatchFeaturizer for image `paths`; fails early on missing weights.

    Fitting builds the backbone and reads none of the images.
    """
    from crdistance.featurizer import PatchFeaturizer

    featurizer = PatchFeaturizer(
        backbone=backbone,
        layers=layers,
        weights=weights,
        resize=resize,
        batch_size=batch_size,
        device=device,
        progress=False,
    )
    return featurizer.fit([str(path) for path in paths])


def local_detector(featurizer, *, cells, nearest_cells, lam, lam_scale):
    """A LocalCRDetector with `cells` k-means cells per layer of the featurizer;
    with ``featurizer=None`` (on an embedding), `cells` cells of all features."""
    return LocalCRDetector(
        n_cells=cells,
        n_nearest_cells=nearest_cells,
        feature_groups=(None if featurizer is None
                        else list(featurizer.layer_channels_)),
        lam=lam,
        lam_scale=lam_scale,
        random_state=0,
    )


def grad_detector(console, max_epochs=None):
    """An unfitted GRADDetector seeded with ``SEED``, showing its epochs unless
    the console is quiet; `max_epochs` None keeps the estimator's default."""
    from crdistance.grad import GRADDetector

    epochs = {} if max_epochs is None else {"max_epochs": max_epochs}
    return GRADDetector(random_state=SEED, progress=not console.quiet, **epochs)


def held_out(n_images, calibration):
    """Indices of the images held out to set the threshold, spread over all."""
    if calibration == 0:
        return set()
    n_held = min(max(1, round(calibration * n_images)), n_images - 1)
    if n_held < 1:
        raise CommandError(
            "Setting the threshold on held-out images needs at least 2 training "
            "images; add images or pass --calibration 0."
        )
    return set(np.linspace(0, n_images - 1, n_held).round().astype(int).tolist())


def held_out_within(categories, calibration):
    """Indices of the images held out to set the threshold: a share
    `calibration` of each category's, spread over them (:func:`held_out`)."""
    groups = {}
    for index, name in enumerate(categories):
        groups.setdefault(name, []).append(index)
    held = set()
    for name, indices in groups.items():
        if calibration and len(indices) < 2 and len(groups) > 1:
            raise CommandError(
                "Setting the threshold on held-out images needs at least 2 "
                f"training images in each DATA_DIR; {name} has {len(indices)}. "
                "Add images or pass --calibration 0."
            )
        held.update(indices[i] for i in held_out(len(indices), calibration))
    return held


def spread_order(n):
    """Indices 0 to n - 1 in bit-reversed order, so every prefix is spread over all.

    Examples
    --------
    >>> from crdistance.cli._model import spread_order
    >>> spread_order(8)
    [0, 4, 2, 6, 1, 5, 3, 7]
    """
    bits = max(1, (n - 1).bit_length())
    return sorted(range(n), key=lambda i: int(f"{i:0{bits}b}"[::-1], 2))


def merge_first(batches, n_rows):
    """Yield the feature batches, the first ones merged until they hold `n_rows`
    patches (or all of them)."""
    first = []
    for features in batches:
        first.append(features)
        if sum(part.size // part.shape[-1] for part in first) >= n_rows:
            break
    if first:
        yield np.concatenate(first)
    yield from batches


def fit_model(featurizer, detector, paths, *, calibration, reader, console,
              embedder=None, categories=None,
              false_alarm_rate=DEFAULT_FALSE_ALARM_RATE):
    """Fit the detector (after `embedder`, if given) on good images and set its
    threshold.

    A share `calibration` of the images of each category (spread over its
    sorted names) is held out of the fit and calibrates the threshold: a new
    good image exceeds it with probability at most `false_alarm_rate` (or
    1 / (n_held + 1) when there are too few held-out images for that). A
    PerCategoryDetector is calibrated per category on its held-out images by
    its own detector (:func:`crdistance.cli._categories.set_threshold`). With
    ``calibration=0`` all images are fitted and the threshold is the
    detector's own (CRDetector ``contamination="auto"``, KMeansDetector and
    GRADDetector ``"max"``); a LocalCRDetector needs ``calibration > 0``.

    A LocalCRDetector places its k-means cells on its first ``partial_fit``:
    it first gets the features of images spread over all (in
    :func:`spread_order`) until they hold ``max_kmeans_samples`` patches, then
    the rest batch by batch. A detector without ``partial_fit`` is fitted
    once on the features of all fitted images (a PerCategoryDetector with
    their `categories` as ``y``).

    With an `embedder` (a ContrastiveEmbedder), it is trained first on the
    fitted images and defective copies of them (:mod:`crdistance.cli._cse`),
    and the detector is fitted on their embedding; the held-out images are
    scored through it.

    Parameters
    ----------
    categories : list or None, default=None
        The category of each path (its folder's name); None for one category.

    Returns
    -------
    pipeline : Pipeline
        ``Pipeline([("featurizer", featurizer), ("detector", detector)])``,
        with ``("embedder", embedder)`` between them when given.
    info : dict
        What was fitted and how the threshold was set, with ``categories``
        (per category: images fitted and held out, largest held-out score),
        JSON-ready.
    """
    if categories is None:
        categories = [None] * len(paths)
    held = held_out_within(categories, calibration)
    fitted = [i for i in range(len(paths)) if i not in held]
    steps = [("featurizer", featurizer), ("detector", detector)]
    if embedder is None:
        counts = _fit_on_images(featurizer, detector, [paths[i] for i in fitted],
                                [categories[i] for i in fitted], reader, console)
        record = {}
    else:
        from crdistance.cli._cse import fit_embedding

        embedding, record = fit_embedding(
            embedder, featurizer, [paths[i] for i in fitted], reader, console)
        console.info(f"fit: {type(detector).__name__} on the embedding")
        detector.fit(embedding)
        # The images the reader did not skip are those embedded and fitted.
        counts = Counter(_readable_categories(paths, fitted, categories, reader))
        steps.insert(1, ("embedder", embedder))
        record = {"embedder": record}
    pipeline = Pipeline(steps)
    info = {
        "n_fitted_images": sum(counts.values()),
        "n_features": int(detector.n_features_in_),
        **detector_info(detector),
        **record,
    }
    names = list(dict.fromkeys(categories))
    threshold = set_threshold(pipeline, [paths[i] for i in sorted(held)],
                              [categories[i] for i in sorted(held)], names, reader,
                              console, false_alarm_rate)
    info["categories"] = [
        {"name": name, "n_images": categories.count(name),
         "n_fitted_images": counts.get(name, 0), **threshold["categories"][name]}
        for name in names
    ]
    return pipeline, info | {key: value for key, value in threshold.items()
                             if key != "categories"}


def _readable_categories(paths, fitted, categories, reader):
    """Categories of the fitted images the reader did not skip."""
    skipped = {path for path, _ in reader.skipped}
    return [categories[i] for i in fitted if paths[i] not in skipped]


def _fit_on_images(featurizer, detector, paths, categories, reader, console):
    """Fit the detector on the features of `paths` (see :func:`fit_model`);
    the number of images read per category (a Counter)."""
    category_of = dict(zip(paths, categories, strict=True))
    streamed = hasattr(detector, "partial_fit")
    local = isinstance(detector, LocalCRDetector)
    if local:
        paths = [paths[i] for i in spread_order(len(paths))]
    label = "features and Gram matrices" if streamed else "features"
    progress = console.progress(f"fit: {label}", len(paths))
    read = []

    def batches():
        for batch_paths, _, features in feature_batches(featurizer, paths, reader,
                                                        progress):
            read.extend(batch_paths)
            yield features

    parts = batches()
    if local:
        parts = merge_first(parts, detector.max_kmeans_samples)
    if streamed:
        for features in parts:
            detector.partial_fit(features)
    else:
        parts = list(parts)
    if not read:
        raise CommandError("None of the training images could be read.")
    counts = Counter(category_of[path] for path in read)
    if not streamed:
        features = np.concatenate(parts)
        if isinstance(detector, PerCategoryDetector):
            missing = [name for name in dict.fromkeys(categories)
                       if name not in counts]
            if missing:
                raise CommandError(
                    f"None of the training images of {missing[0]} could be read.")
            detector.fit(features, [category_of[path] for path in read])
        else:
            detector.fit(features)
    return counts


def detector_info(detector):
    """The class of a fitted detector and what sets its model, JSON-ready."""
    from crdistance.grad import GRADDetector

    if isinstance(detector, LocalCRDetector):
        parameters = {
            "n_cells": detector.n_cells,
            "n_cells_per_group": detector.n_cells_,
            "n_nearest_cells": detector.n_nearest_cells,
            "feature_groups": detector.feature_groups_,
        }
    elif isinstance(detector, KMeansDetector):
        parameters = {"n_clusters": detector.n_clusters,
                      "n_clusters_fitted": int(detector.n_clusters_)}
    elif isinstance(detector, GRADDetector):
        parameters = {"max_epochs": detector.max_epochs,
                      "n_iter": int(detector.n_iter_),
                      "best_epoch": int(detector.best_epoch_),
                      "random_state": detector.random_state}
    elif isinstance(detector, PerCategoryDetector):
        parameters = {"routing": detector.routing,
                      "category_detector": type(detector.detectors_[0]).__name__}
    else:
        parameters = {"penalty": float(detector.lam_)}
    return {"detector": type(detector).__name__, **parameters}


def save_model(pipeline, path):
    """Write the pipeline to `path` in the safe model format of crdistance."""
    from crdistance.persistence import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        save(pipeline, path)
    except TypeError as exc:  # a step the safe model format does not hold
        raise CommandError(f"Cannot save the model as {path}: {exc}") from exc
    return path


def load_model(path):
    """Read a model file of ``crdistance fit``: a Pipeline(PatchFeaturizer,
    detector) or Pipeline(PatchFeaturizer, ContrastiveEmbedder, detector).

    The file is read by :func:`crdistance.persistence.load`, which runs no code
    from it and refuses pickles, damaged files and other format versions.
    """
    from crdistance.featurizer import ContrastiveEmbedder, PatchFeaturizer
    from crdistance.grad import GRADDetector
    from crdistance.persistence import load

    path = Path(path)
    if not path.is_file():
        raise CommandError(f"No model file {path}.")
    try:
        model = load(path)
    except ValueError as exc:
        raise CommandError(f"{exc} Write a model file with `crdistance fit`.") from exc
    steps = [step for _, step in model.steps] if isinstance(model, Pipeline) else []
    if not (
        len(steps) in (2, 3)
        and isinstance(steps[0], PatchFeaturizer)
        and all(isinstance(step, ContrastiveEmbedder) for step in steps[1:-1])
        and isinstance(steps[-1], (*DETECTORS, GRADDetector))
    ):
        raise CommandError(
            f"{path} holds a {type(model).__name__} that does not take images; "
            "write an image model with `crdistance fit`."
        )
    return model
