"""Several product categories in the command line: ``fit`` and ``evaluate``
with several DATA_DIRs, ``fit --per-category``, and the threshold set on good
images held out of every category.

Each DATA_DIR is one category, named by its folder. Without ``--per-category``
one detector is fitted on the good images of all categories (pooled) and
calibrated on the held-out images of all of them; with it, a
:class:`~crdistance.categories.PerCategoryDetector` fits one clone of the
detector per category and routes each image to the category of nearest mean
feature, and each category's detector is calibrated on its own held-out images
(Mondrian conformal prediction), so that the model's threshold is 1.
"""

import math
from pathlib import Path

import numpy as np

from crdistance.calibration import smallest_false_alarm_rate
from crdistance.categories import PerCategoryDetector
from crdistance.cli._features import feature_batches, score_batches
from crdistance.cli._io import CommandError, UsageError, training_images

DEFAULT_FALSE_ALARM_RATE = 0.01
"""``fit --false-alarm-rate``: the conformal bound on false alarms of good images."""
ROUTING = "nearest_mean"
"""How the PerCategoryDetector of ``fit --per-category`` routes an image."""
DISTANCE_DETECTORS = ("KMeansDetector", "GRADDetector")
"""Detectors whose scores the texts call distances (the others' are CRDs)."""


def category_names(data_dirs):
    """The category of each DATA_DIR: its folder's name; a UsageError when two
    folders have one name.

    Examples
    --------
    >>> from crdistance.cli._categories import category_names
    >>> category_names(["lines/bolts", "nuts/"])
    ['bolts', 'nuts']
    """
    seen = {}
    for folder in map(Path, data_dirs):
        resolved = folder.resolve()
        name = resolved.name or str(resolved)
        if name in seen:
            first = seen[name]
            if first.resolve() == resolved:
                raise UsageError(f"{folder} is given twice; give each category's "
                                 "folder once.")
            raise UsageError(
                f"{first} and {folder} are both named {name!r}, and a DATA_DIR's "
                "name is its category: give each category a folder of its own name."
            )
        seen[name] = folder
    return list(seen)


def training_sets(data_dirs):
    """The good training images of every DATA_DIR.

    Returns
    -------
    names : list of str
        The categories, in the order of `data_dirs`.
    paths : list of pathlib.Path
        The images of all categories, category after category.
    categories : list of str
        The category of each path.
    """
    names = category_names(data_dirs)
    paths, categories = [], []
    for name, folder in zip(names, data_dirs, strict=True):
        found = training_images(folder)
        paths += found
        categories += [name] * len(found)
    return names, paths, categories


def per_category(detector):
    """An unfitted PerCategoryDetector of `detector` (cloned per category)."""
    return PerCategoryDetector(detector, routing=ROUTING)


def set_threshold(pipeline, paths, categories, names, reader, console,
                  false_alarm_rate=DEFAULT_FALSE_ALARM_RATE):
    """Calibrate the pipeline's detector on the held-out good images `paths`
    (of `categories`, among `names`) by split conformal prediction.

    The threshold bounds the rate of false alarms on new good images by
    `false_alarm_rate` (:mod:`crdistance.calibration`); with fewer held-out
    images than that rate needs (n < 1 / rate - 1) the smallest rate they
    allow, 1 / (n + 1), is used instead: their largest score, with a warning.
    A PerCategoryDetector is calibrated per category on its images by its own
    detector (the model's threshold stays 1). Without `paths` the detectors
    keep their own thresholds and are not calibrated.

    Returns
    -------
    info : dict
        ``threshold``, ``threshold_rule``, ``false_alarm_rate`` (used, None
        without calibration) and ``false_alarm_rate_requested``,
        ``categories`` (per name: ``n_held_out``, ``largest_held_out_score``
        and, per category, ``threshold``), and for a PerCategoryDetector
        ``routing`` (how many held-out images went to their own category),
        JSON-ready.
    """
    detector = pipeline[-1]
    routed = isinstance(detector, PerCategoryDetector)
    scores, n_own = {name: [] for name in names}, 0
    if paths:
        progress = console.progress("fit: threshold on held-out images", len(paths))
        score = _own_scores if routed else _pooled_scores
        for name, image_scores, own in score(pipeline, paths, categories, reader,
                                             progress):
            scores[name] += image_scores
            n_own += own
    n_held = sum(map(len, scores.values()))
    if paths and not n_held:
        raise CommandError("None of the held-out training images could be read.")
    if routed and paths:
        missing = [name for name in names if not scores[name]]
        if missing:
            raise CommandError(
                f"None of the held-out images of {missing[0]} could be read; "
                "its threshold is set on them."
            )
    first = detector.detectors_[0] if routed else detector
    what = "distance" if _is_distance(first) else "CRD"
    per_name = {
        name: {"n_held_out": len(values),
               "largest_held_out_score": max(values) if values else None}
        for name, values in scores.items()
    }
    info = {"false_alarm_rate": None, "false_alarm_rate_requested": None}
    if paths:
        info = _calibrate(detector, scores, false_alarm_rate, console)
        of = (f"of each category's own held-out good images ({n_held} in all)"
              if routed else
              f"of {n_held} held-out good image{'s' if n_held > 1 else ''}")
        used, asked = info["false_alarm_rate"], info["false_alarm_rate_requested"]
        rule = (f"conformal threshold at false-alarm rate {used:.3g} {of}"
                if used == asked else
                f"largest {what} {of}; too few for false-alarm rate {asked:g}, "
                f"so conformal at {used:.3g}")
        if routed:
            rule += ", distances in units of it"
    elif routed:
        rule = f"each category's own {_own_rule(first)}, distances in its units"
    else:
        rule = _own_rule(detector)
    if routed:
        own = dict(zip(detector.categories_, detector.detectors_, strict=True))
        for name in names:
            per_name[name]["threshold"] = float(own[name].threshold_)
        info["routing"] = {"rule": detector.routing, "n_held_out": n_held,
                           "n_routed_to_own_category": n_own}
    return {"threshold": float(detector.threshold_), "threshold_rule": rule,
            **info, "categories": per_name}


def _calibrate(detector, scores, false_alarm_rate, console):
    """Calibrate on the held-out scores (by category name) at the rate, or at
    the smallest rate the fewest images of a category allow."""
    routed = isinstance(detector, PerCategoryDetector)
    fewest = (min(len(values) for values in scores.values()) if routed
              else sum(len(values) for values in scores.values()))
    used = max(false_alarm_rate, smallest_false_alarm_rate(fewest))
    if used > false_alarm_rate:
        console.warn(
            f"fit: {fewest} held-out good images allow no false-alarm rate below "
            f"1/{fewest + 1} = {used:.3g}, so the threshold is their largest score; "
            f"--false-alarm-rate {false_alarm_rate:g} needs "
            f"{math.ceil(1 / false_alarm_rate - 1 - 1e-9)} (add images or raise "
            "--calibration).")
    distances = np.concatenate([values for values in scores.values() if values])
    try:
        if routed:
            names = [name for name, values in scores.items() for _ in values]
            detector.calibrate_distances(distances, names, false_alarm_rate=used)
        else:
            detector.calibrate_distances(distances, false_alarm_rate=used)
    except ValueError as error:
        raise CommandError(f"The held-out good images cannot calibrate: {error}"
                           ) from None
    return {"false_alarm_rate": float(used),
            "false_alarm_rate_requested": float(false_alarm_rate)}


def _is_distance(detector):
    """Whether the detector's scores are distances (k-means, GRAD), not CRDs."""
    return type(detector).__name__ in DISTANCE_DETECTORS


def _own_rule(detector):
    """The threshold rule of a detector fitted on all images (calibration 0)."""
    if _is_distance(detector):
        return (f"{type(detector).__name__} contamination='max' (largest training "
                "distance)")
    return "CRDetector contamination='auto' (Gaussian model of the Gram matrix)"


def _pooled_scores(pipeline, paths, categories, reader, progress):
    """Yield (category, [score], 0) of each readable path, by the pipeline."""
    category_of = dict(zip(paths, categories, strict=True))
    for batch_paths, _, patch_scores, _ in score_batches(pipeline, paths, reader,
                                                         progress):
        for path, score in zip(batch_paths, patch_scores.max(axis=(1, 2)),
                               strict=True):
            yield category_of[path], [float(score)], 0


def _own_scores(pipeline, paths, categories, reader, progress):
    """Yield (category, scores, routed to it) per category of each batch: the
    image scores by the category's own detector, not normalised, and how many
    of these images the router sends to that category."""
    featurizer, *transforms, detector = [step for _, step in pipeline.steps]
    own = dict(zip(detector.categories_, detector.detectors_, strict=True))
    category_of = dict(zip(paths, categories, strict=True))
    for batch_paths, _, features in feature_batches(featurizer, paths, reader,
                                                    progress):
        for transform in transforms:
            features = transform.transform(features)
        routes = detector.route(features)
        labels = [category_of[path] for path in batch_paths]
        for name in dict.fromkeys(labels):
            rows = [i for i, label in enumerate(labels) if label == name]
            distances = np.asarray(own[name].score_patches(features[rows]))
            yield (name, distances.max(axis=(1, 2)).astype(float).tolist(),
                   int(sum(routes[i] == name for i in rows)))


def categories_text(info):
    """The line of ``fit``'s text that names the categories and their images."""
    parts = []
    for record in info["categories"]:
        part = (f"{record['name']} {record['n_fitted_images']} + "
                f"{record['n_held_out']} held out")
        if "threshold" in record:
            part += f" (threshold {record['threshold']:.4g})"
        elif record["largest_held_out_score"] is not None:
            part += f" (largest {record['largest_held_out_score']:.4g})"
        parts.append(part)
    text = f"{len(parts)} categories: " + ", ".join(parts)
    routing = info.get("routing")
    if routing and routing["n_held_out"]:
        text += (f"; {routing['n_routed_to_own_category']} of "
                 f"{routing['n_held_out']} held-out images routed to their own "
                 "category")
    return text
