"""The model a server holds: a loaded image pipeline and how it scores a batch.

A :class:`ServedModel` is built whole (file read, checked, first inference
run) before the server swaps it in, and is never changed afterwards: a batch
takes one reference to it and scores with that, so a reload cannot mix two
models in one answer.
"""

import base64
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crdistance.categories import PerCategoryDetector
from crdistance.cli._plots import REGION_COLOUR, overlay
from crdistance.maps import anomaly_maps

OVERLAY_MAX_SIDE = 1024
"""Overlays larger than this on their longer side are scaled down to it."""


class RequestError(ValueError):
    """A request the model cannot answer as asked: an HTTP 4xx with `status`."""

    def __init__(self, message, status=422):
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    """One request's work: images (uint8 (h, w, 3) arrays) or features, and how
    to decide. Filled in by the batch that runs it."""

    images: list = None
    features: np.ndarray = None
    filenames: list = None
    overlay: bool = False
    false_alarm_rate: float = None
    threshold: float = None
    results: list = field(default_factory=list)


class ServedModel:
    """A fitted image pipeline read from a model file of ``crdistance fit``.

    Parameters
    ----------
    path : path-like
        The model file (the safe format of :func:`crdistance.persistence.load`).
    name : str or None
        The model's name in the routes; None takes the file's stem.

    Attributes
    ----------
    pipeline : Pipeline
        ``PatchFeaturizer`` [``ContrastiveEmbedder``] detector.
    version : str
        The first 12 hex digits of the file's SHA-256.
    feature_shape : tuple
        (height, width, n_features) of the featurizer's patch grid.
    """

    def __init__(self, path, name=None):
        from crdistance.cli._model import load_model

        path = Path(path)
        self.path = path
        self.name = name or path.stem
        self.version = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        self.pipeline = load_model(path)
        self.detector = self.pipeline[-1]
        self.routed = isinstance(self.detector, PerCategoryDetector)
        # One inference on a blank image: the patch grid, and a model that
        # fails on first use fails before it is served.
        probe = self.pipeline[0].transform([np.zeros((64, 64, 3), np.uint8)])
        self.feature_shape = tuple(int(n) for n in probe.shape[1:])

    # -- what the model says about itself ------------------------------------

    @property
    def calibrated(self):
        """Whether the detector is conformally calibrated (every category's,
        for a routed model)."""
        return getattr(self.detector, "false_alarm_rate_", None) is not None

    def info(self):
        """JSON-ready description: name, version, threshold and calibration."""
        calibrated = self.calibrated
        detectors = self.detector.detectors_ if self.routed else [self.detector]
        return {
            "model": self.name,
            "version": self.version,
            "detector": type(self.detector).__name__,
            "categories": list(self.detector.categories_) if self.routed else None,
            "threshold": float(self.detector.threshold_),
            "false_alarm_rate": (float(self.detector.false_alarm_rate_)
                                 if calibrated else None),
            "n_calibration": (sum(len(detector.calibration_scores_)
                                  for detector in detectors) if calibrated else None),
            "feature_shape": list(self.feature_shape),
        }

    # -- scoring -------------------------------------------------------------

    def check_decision(self, false_alarm_rate, threshold):
        """Refuse (422) a false-alarm rate this model cannot honour."""
        if threshold is not None and not np.isfinite(threshold):
            raise RequestError(f"threshold must be a finite number, got {threshold}.")
        if false_alarm_rate is None:
            return
        if not 0 < false_alarm_rate < 1:
            raise RequestError(
                f"false_alarm_rate must lie in (0, 1), got {false_alarm_rate}.")
        if not self.calibrated:
            raise RequestError(
                "this model holds no calibration scores, so it cannot set a "
                "threshold for a false-alarm rate; calibrate it (crdistance fit "
                "does) or pass a threshold.")
        try:
            self.detector.threshold_at(false_alarm_rate)
        except ValueError as exc:
            raise RequestError(str(exc)) from exc

    def run(self, jobs):
        """Score the jobs of one batch in one pass of the network per kind."""
        image_jobs = [job for job in jobs if job.images is not None]
        if image_jobs:
            images = [image for job in image_jobs for image in job.images]
            features = self._transform(self.pipeline[0].transform(images))
            self._decide(image_jobs, features, images)
        feature_jobs = [job for job in jobs if job.features is not None]
        if feature_jobs:
            features = self._transform(
                np.concatenate([job.features for job in feature_jobs]))
            self._decide(feature_jobs, features, None)

    def _transform(self, features):
        for _, step in self.pipeline.steps[1:-1]:
            features = step.transform(features)
        return features

    def _decide(self, jobs, features, images):
        patch_scores = np.asarray(self.detector.score_patches(features), float)
        scores = patch_scores.reshape(len(patch_scores), -1).max(axis=1)
        p_values = (np.asarray(self.detector.p_values(features), float)
                    if self.calibrated else None)
        categories = self.detector.route(features) if self.routed else None
        calibrated_rate = self.info()["false_alarm_rate"]
        start = 0
        for job in jobs:
            n = len(job.images) if job.images is not None else len(job.features)
            rows = slice(start, start + n)
            start += n
            thresholds = self._thresholds(job, categories, rows, n)
            for i, index in enumerate(range(rows.start, rows.stop)):
                p_value = None if p_values is None else float(p_values[index])
                threshold = thresholds[i]
                if job.threshold is None and job.false_alarm_rate is not None:
                    anomalous = p_value <= job.false_alarm_rate
                else:
                    anomalous = bool(scores[index] > threshold)
                result = {
                    "filename": job.filenames[i] if job.filenames else None,
                    "score": float(scores[index]),
                    "p_value": p_value,
                    "is_anomaly": bool(anomalous),
                    "threshold": float(threshold),
                    "false_alarm_rate": (
                        None if job.threshold is not None
                        else job.false_alarm_rate or calibrated_rate),
                }
                if categories is not None:
                    result["category"] = str(categories[index])
                if images is not None:
                    height, width = images[index].shape[:2]
                    result |= {"width": int(width), "height": int(height)}
                    if job.overlay:
                        result["overlay_png"] = overlay_png(
                            images[index], patch_scores[index], threshold)
                job.results.append(result)

    def _thresholds(self, job, categories, rows, n):
        """The score threshold of each of a job's `n` rows, on the scale of
        the scores (a routed model's: units of each category's threshold)."""
        if job.threshold is not None:
            return [job.threshold] * n
        if job.false_alarm_rate is None:
            return [float(self.detector.threshold_)] * n
        at = self.detector.threshold_at(job.false_alarm_rate)
        if not self.routed:
            return [float(at)] * n
        return [float(at[name]) for name in categories[rows]]


def overlay_png(image, patch_scores, threshold):
    """Base64 PNG of `image` under its anomaly map (top colour at twice the
    threshold), the region above the threshold outlined, at most
    ``OVERLAY_MAX_SIDE`` pixels on its longer side."""
    from PIL import Image

    size = image.shape[:2]
    heat = anomaly_maps(patch_scores[None], [size])[0]
    level = anomaly_maps(patch_scores[None], [size], sigma=0)[0]
    picture = Image.fromarray(overlay(image, heat, vmax=2 * threshold,
                                      outlines=[(level > threshold, REGION_COLOUR)]))
    if max(picture.size) > OVERLAY_MAX_SIDE:
        picture.thumbnail((OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
