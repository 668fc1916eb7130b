"""Patch features of image files, batch by batch, and the scores a fitted
pipeline gives them: what ``fit``, ``predict`` and ``evaluate`` read images
through."""

import numpy as np

from crdistance.categories import PerCategoryDetector
from crdistance.cli._io import CommandError


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
    """Yield (paths, images, per-patch scores (n, h, w), categories) batch by
    batch; categories are those a PerCategoryDetector routes the images to
    (its ``route``), None for other detectors.

    The features pass the steps between the featurizer and the detector (a
    ContrastiveEmbedder) before the detector scores them.
    """
    featurizer, *transforms, detector = [step for _, step in pipeline.steps]
    routed = isinstance(detector, PerCategoryDetector)
    for batch_paths, images, features in feature_batches(
        featurizer, paths, reader, progress
    ):
        for transform in transforms:
            features = transform.transform(features)
        categories = detector.route(features).tolist() if routed else None
        yield (batch_paths, images, np.asarray(detector.score_patches(features)),
               categories)
