"""``crdistance predict``: image scores in a CSV file and one overlay per image."""

import csv
from collections import Counter
from pathlib import Path

from crdistance.calibration import conformal_p_values
from crdistance.categories import PerCategoryDetector
from crdistance.cli._features import score_batches
from crdistance.cli._plots import save_prediction
from crdistance.maps import anomaly_maps

CSV_COLUMNS = ("path", "score", "p_value", "decision", "overlay")
ROUTED_COLUMNS = ("path", "category", "score", "p_value", "decision", "overlay")
"""The columns of a model that routes each image to a category (a
PerCategoryDetector): the category it was scored by, after the path."""


def predict_images(pipeline, paths, out_dir, reader, console):
    """Score `paths` with a fitted pipeline; write overlays and ``scores.csv``.

    An image's score is its largest patch CRD and it is ``"anomalous"`` above
    the detector's threshold. Its overlay shows the blurred anomaly map and
    outlines the pixels where the unblurred map exceeds the threshold.
    Unreadable images skipped by `reader` get the decision ``"unreadable"``.
    ``p_value`` is the image's conformal p-value against the held-out good
    images the model was calibrated on (empty when it was not: ``fit
    --calibration 0``); it is at most the model's ``false_alarm_rate_``
    exactly when the image is ``"anomalous"``.
    A PerCategoryDetector's rows name the category each image was routed to
    (its ``route``; scores and threshold are in units of that category's).

    Returns
    -------
    rows : list of dict
        One row per path, in the order of `paths`, with ``CSV_COLUMNS``
        (``ROUTED_COLUMNS`` for a PerCategoryDetector).
    csv_path : pathlib.Path
    """
    out_dir = Path(out_dir)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    names = overlay_names(paths)
    threshold = float(pipeline[-1].threshold_)
    rows = {}
    progress = console.progress("predict: scoring", len(paths))
    routed = isinstance(pipeline[-1], PerCategoryDetector)
    p_value = _p_value_of(pipeline[-1])
    for batch_paths, images, patch_scores, categories in score_batches(
        pipeline, paths, reader, progress
    ):
        sizes = [image.shape[:2] for image in images]
        heats = anomaly_maps(patch_scores, sizes)
        levels = anomaly_maps(patch_scores, sizes, sigma=0)
        if categories is None:
            categories = [None] * len(batch_paths)
        for path, image, patches, heat, level, category in zip(
            batch_paths, images, patch_scores, heats, levels, categories,
            strict=True,
        ):
            overlay = out_dir / "overlays" / names[path]
            score = float(patches.max())
            decision = save_prediction(
                overlay,
                image,
                heat,
                level > threshold,
                score=score,
                threshold=threshold,
                name=f"{path.parent.name}/{path.name}",
            )
            rows[path] = {
                "path": str(path),
                "category": category,
                "score": score,
                "p_value": p_value(score, category),
                "decision": decision,
                "overlay": str(overlay),
            }
    for path, _ in reader.skipped:
        rows[path] = {
            "path": str(path),
            "category": None,
            "score": None,
            "p_value": None,
            "decision": "unreadable",
            "overlay": None,
        }
    columns = ROUTED_COLUMNS if routed else CSV_COLUMNS
    ordered = [{key: rows[path][key] for key in columns} for path in paths]
    csv_path = out_dir / "scores.csv"
    with open(csv_path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(ordered)
    return ordered, csv_path


def _p_value_of(detector):
    """``p_value(score, category)`` of an image by a calibrated detector (None
    for an uncalibrated one); a routed score is in units of the category's
    threshold, so it is scaled back to that detector's distances."""
    if getattr(detector, "false_alarm_rate_", None) is None:
        return lambda score, category: None
    routed = isinstance(detector, PerCategoryDetector)
    own = (dict(zip(detector.categories_, detector.detectors_, strict=True))
           if routed else {None: detector})

    def p_value(score, category):
        calibrated = own[category if routed else None]
        distance = score * float(calibrated.threshold_) if routed else score
        return float(conformal_p_values(calibrated.calibration_scores_,
                                        [distance])[0])
    return p_value


def overlay_names(paths):
    """A distinct PNG file name per path.

    The files' stems when they are distinct, else ``<folder>_<stem>`` for all,
    numbered where that still repeats.
    """
    qualify = len({path.stem for path in paths}) < len(paths)
    names, seen = {}, Counter()
    for path in paths:
        name = f"{path.parent.name}_{path.stem}" if qualify else path.stem
        seen[name] += 1
        names[path] = f"{name}.png" if seen[name] == 1 else f"{name}_{seen[name]}.png"
    return names
