"""The model of the command line: a fitted Pipeline(PatchFeaturizer, detector),
the detector a CRDetector, a LocalCRDetector or a KMeansDetector; with
``--embedder cse``, Pipeline(PatchFeaturizer, ContrastiveEmbedder, detector).

``crdistance fit`` streams the good images through the featurizer into the
detector's ``partial_fit``, so memory does not grow with the number of images
(a KMeansDetector, without ``partial_fit``, and CSE's training hold all the
features), and sets the threshold on good images held out of the fit. Model files are
those of :mod:`crdistance.persistence`: a JSON header and arrays, read without
running code from the file.
"""

from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline

from crdistance import CRDetector, LocalCRDetector
from crdistance.cli._io import CommandError
from crdistance.kmeans import KMeansDetector

DETECTORS = (CRDetector, LocalCRDetector, KMeansDetector)
"""Classes of the last step of a model file of ``crdistance fit``."""


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


def feature_batches(featurizer, paths, reader, progress):
    """Yield (paths, images, patch features) batch by batch over readable images."""
    for pairs in reader.batches(paths, featurizer.batch_size, progress):
        batch_paths, images = zip(*pairs, strict=True)
        yield list(batch_paths), list(images), featurizer.transform(list(images))


def collect_features(featurizer, paths, reader, progress):
    """Patch features (n_read, h, w, d) of the readable `paths`, and their indices."""
    index = {path: i for i, path in enumerate(paths)}
    kept, parts = [], []
    for batch_paths, _, features in feature_batches(
        featurizer, paths, reader, progress
    ):
        kept += [index[path] for path in batch_paths]
        parts.append(features)
    if not parts:
        raise CommandError(f"None of the {len(paths)} images could be read.")
    return np.asarray(kept), np.concatenate(parts)


def score_batches(pipeline, paths, reader, progress):
    """Yield (paths, images, per-patch scores (n, h, w)) batch by batch.

    The features pass the steps between the featurizer and the detector (a
    ContrastiveEmbedder) before the detector scores them.
    """
    featurizer, *transforms, detector = [step for _, step in pipeline.steps]
    for batch_paths, images, features in feature_batches(
        featurizer, paths, reader, progress
    ):
        for transform in transforms:
            features = transform.transform(features)
        yield batch_paths, images, np.asarray(detector.score_patches(features))


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
              embedder=None):
    """Fit the detector (after `embedder`, if given) on good images and set its
    threshold.

    A share `calibration` of the images (spread over the sorted names) is held
    out of the fit; the threshold is the largest score of these held-out good
    images, so a new good image exceeds it with probability about
    1 / (n_held + 1). With ``calibration=0`` all images are fitted and the
    threshold is the detector's own (CRDetector ``contamination="auto"``,
    KMeansDetector ``"max"``); a LocalCRDetector needs ``calibration > 0``.

    A LocalCRDetector places its k-means cells on its first ``partial_fit``:
    it first gets the features of images spread over all (in
    :func:`spread_order`) until they hold ``max_kmeans_samples`` patches, then
    the rest batch by batch. A detector without ``partial_fit`` is fitted
    once on the features of all fitted images.

    With an `embedder` (a ContrastiveEmbedder), it is trained first on the
    fitted images and defective copies of them (:mod:`crdistance.cli._cse`),
    and the detector is fitted on their embedding; the held-out images are
    scored through it.

    Returns
    -------
    pipeline : Pipeline
        ``Pipeline([("featurizer", featurizer), ("detector", detector)])``,
        with ``("embedder", embedder)`` between them when given.
    info : dict
        What was fitted and how the threshold was set, JSON-ready.
    """
    held = held_out(len(paths), calibration)
    fitted_paths = [path for i, path in enumerate(paths) if i not in held]
    steps = [("featurizer", featurizer), ("detector", detector)]
    if embedder is None:
        n_fitted = _fit_on_images(featurizer, detector, fitted_paths, reader, console)
        record = {}
    else:
        from crdistance.cli._cse import fit_embedding

        embedding, record = fit_embedding(embedder, featurizer, fitted_paths, reader,
                                          console)
        console.info(f"fit: {type(detector).__name__} on the embedding")
        detector.fit(embedding)
        n_fitted = len(embedding)
        steps.insert(1, ("embedder", embedder))
        record = {"embedder": record}
    pipeline = Pipeline(steps)
    info = {
        "n_fitted_images": n_fitted,
        "n_features": int(detector.n_features_in_),
        **detector_info(detector),
        **record,
    }
    if len(held):
        progress = console.progress("fit: threshold on held-out images", len(held))
        scores = [
            patch_scores.max(axis=(1, 2))
            for _, _, patch_scores in score_batches(
                pipeline, [paths[i] for i in sorted(held)], reader, progress
            )
        ]
        if not scores:
            raise CommandError("None of the held-out training images could be read.")
        scores = np.concatenate(scores)
        # The held-out maximum replaces the threshold of the detector's contamination,
        # so that predict, decision_function and an ONNX export all use it.
        detector.offset_ = -float(scores.max())
        plural = "s" if len(scores) > 1 else ""
        what = "distance" if isinstance(detector, KMeansDetector) else "CRD"
        rule = f"largest {what} of {len(scores)} held-out good image{plural}"
    elif isinstance(detector, KMeansDetector):
        rule = "KMeansDetector contamination='max' (largest training distance)"
    else:
        rule = "CRDetector contamination='auto' (Gaussian model of the Gram matrix)"
    return pipeline, info | {
        "threshold": float(detector.threshold_),
        "threshold_rule": rule,
    }


def _fit_on_images(featurizer, detector, paths, reader, console):
    """Fit the detector on the features of `paths` (see :func:`fit_model`);
    the number of images read."""
    streamed = hasattr(detector, "partial_fit")
    local = isinstance(detector, LocalCRDetector)
    if local:
        paths = [paths[i] for i in spread_order(len(paths))]
    label = "features and Gram matrices" if streamed else "features"
    progress = console.progress(f"fit: {label}", len(paths))
    batches = (
        features
        for _, _, features in feature_batches(featurizer, paths, reader, progress)
    )
    if local:
        batches = merge_first(batches, detector.max_kmeans_samples)
    if not streamed:
        batches = list(batches)
        batches = [np.concatenate(batches)] if batches else []
    n_fitted = 0
    for features in batches:
        if streamed:
            detector.partial_fit(features)
        else:
            detector.fit(features)
        n_fitted += len(features)
    if n_fitted == 0:
        raise CommandError("None of the training images could be read.")
    return n_fitted


def detector_info(detector):
    """The class of a fitted detector and what sets its model, JSON-ready."""
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
        and isinstance(steps[-1], DETECTORS)
    ):
        raise CommandError(
            f"{path} holds a {type(model).__name__} that does not take images; "
            "write an image model with `crdistance fit`."
        )
    return model
