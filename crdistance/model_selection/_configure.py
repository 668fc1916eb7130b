"""Label-free configuration: choose a patch detector from normal images alone.

Users of visual inspection have normal images and rarely labelled defects. A
quarter of the normal images is held out; each held-out image gets a synthetic
defect (:func:`synthesize_defects`); every candidate detector is fitted on the
other normal images and scored on the held-out normal and defective images.
Its selection score is the mean of two AUROCs: image level (held-out normal
against defective images, an image scoring its worst patch) and patch level
(patches inside the synthetic defects against all patches of the normal
images). The best candidate is refitted on all normal images. No test label is
ever read.

The default candidates span what changes the ranking between real data sets
(measured in ``benchmarks/bench_accuracy.py``): one global CRD model at three
penalties, and :class:`~crdistance.LocalCRDetector` with 16 or 64 cells per
group, balanced or raw cell weights, and one group per backbone layer or one
for all features.
"""

import time

import numpy as np
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.utils import Bunch, check_random_state

from crdistance._detector import CRDetector
from crdistance._local import LocalCRDetector
from crdistance.model_selection._training_set import defect_training_set

__all__ = [
    "FAINT_DEFECTS",
    "default_candidates", "rank_detectors", "select_pipeline",
    "synthetic_holdout",
]


FAINT_DEFECTS = {"opacity": (0.15, 0.6)}
"""The defects the comparison uses by default: faint ones (fill opacity 0.15 to
0.6). Plain defects are found by every candidate and so do not separate them;
measured on the three real sets (``benchmarks/bench_accuracy.py``), opacity 0.5
to 1 and 0.1 to 1 chose a detector 4 to 10 points below the best on one set
(tire), 0.15 to 0.6 chose the best there and on magnetic_tile."""


def default_candidates(layer_channels=None, *, random_state=0):
    """The detectors :func:`select_pipeline` compares by default, by name.

    Parameters
    ----------
    layer_channels : sequence of int or None, default=None
        Channels of each backbone layer (``PatchFeaturizer.layer_channels_``):
        adds local models with one feature group per layer. None: one group.
    random_state : int, default=0
        Seeds the k-means cells.

    Returns
    -------
    candidates : dict of str to estimator
        Unfitted detectors, CRD first.

    Examples
    --------
    >>> from crdistance.model_selection import default_candidates
    >>> names = list(default_candidates([32, 96]))
    >>> len(names), names[0], names[-1]
    (11, 'crd lam=0.001', 'local_crd cells=64 weights=None per-layer')
    """
    candidates = {
        f"crd lam={lam:g}": CRDetector(lam=lam, lam_scale="trace", contamination=0.01)
        for lam in (0.001, 0.01, 0.1)
    }
    groupings = {"": None}
    if layer_channels is not None and len(layer_channels) > 1:
        groupings[" per-layer"] = [int(c) for c in layer_channels]
    for n_cells in (16, 64):
        for weights in ("balanced", None):
            for suffix, groups in groupings.items():
                name = f"local_crd cells={n_cells} weights={weights}{suffix}"
                candidates[name] = LocalCRDetector(
                    n_cells=n_cells, cell_weights=weights, feature_groups=groups,
                    random_state=random_state,
                )
    return candidates


def rank_detectors(candidates, train, normal, defective, shares, *, min_share=0.3,
                   verbose=False):
    """Fit each candidate on normal features; score it on synthetic defects.

    Parameters
    ----------
    candidates : dict of str to estimator
        Unfitted detectors with ``score_patches`` (they are cloned).
    train : ndarray of shape (n_train, h, w, d)
        Normal patch features to fit on.
    normal : ndarray of shape (n_normal, h, w, d)
        Held-out normal patch features.
    defective : ndarray of shape (n_defective, h, w, d)
        Patch features of images with synthetic defects.
    shares : ndarray of shape (n_defective, h, w)
        Share of each defective patch inside its defect (:func:`patch_masks`).
    min_share : float, default=0.3
        Patches with a larger share are the positives of the patch AUROC;
        patches partly inside the defect below it are left out.
    verbose : bool, default=False
        Print one line per candidate.

    Returns
    -------
    results : list of dict
        Per candidate, in order: ``name``, ``detector`` (fitted), ``image_auroc``,
        ``patch_auroc``, ``score`` (their mean), ``fit_s`` and ``score_s``.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance import CRDetector
    >>> from crdistance.model_selection import rank_detectors
    >>> rng = np.random.default_rng(0)
    >>> normal = rng.normal(size=(30, 4, 4, 2)) @ rng.normal(size=(2, 6))
    >>> defective = normal[20:].copy()
    >>> defective[:, 0, 0] += rng.normal(size=(10, 6))  # off the normal plane
    >>> shares = np.zeros((10, 4, 4))
    >>> shares[:, 0, 0] = 1
    >>> results = rank_detectors({"crd": CRDetector(lam=0.01, lam_scale="trace")},
    ...                          normal[:20], normal[20:], defective, shares)
    >>> results[0]["image_auroc"], results[0]["patch_auroc"]
    (1.0, 1.0)
    """
    shares = np.asarray(shares)
    if shares.shape != defective.shape[:-1]:
        raise ValueError(f"shares of shape {shares.shape} do not match the defective "
                         f"features' patch grid {defective.shape[:-1]}.")
    labels = np.r_[np.zeros(len(normal)), np.ones(len(defective))]
    inside = shares >= min_share
    results = []
    for name, candidate in candidates.items():
        start = time.perf_counter()
        detector = clone(candidate).fit(train)
        fitted = time.perf_counter()
        normal_scores = np.asarray(detector.score_patches(normal), dtype=np.float64)
        defect_scores = np.asarray(detector.score_patches(defective), dtype=np.float64)
        scored = time.perf_counter()
        image_scores = np.r_[normal_scores.max(axis=(1, 2)),
                             defect_scores.max(axis=(1, 2))]
        patch_scores = np.r_[normal_scores.ravel(), defect_scores[inside]]
        patch_labels = np.r_[np.zeros(normal_scores.size), np.ones(inside.sum())]
        image_auroc = roc_auc_score(labels, image_scores)
        patch_auroc = (roc_auc_score(patch_labels, patch_scores)
                       if inside.any() else np.nan)
        score = np.nanmean([image_auroc, patch_auroc])
        results.append({
            "name": name, "detector": detector, "image_auroc": float(image_auroc),
            "patch_auroc": float(patch_auroc), "score": float(score),
            "fit_s": fitted - start, "score_s": scored - fitted,
        })
        if verbose:
            print(f"  {name}: synthetic image AUROC {image_auroc:.3f}, patch AUROC "
                  f"{patch_auroc:.3f} (fit {fitted - start:.1f} s)", flush=True)
    return results


def synthetic_holdout(images, featurizer, *, validation_fraction=0.25, defects=None,
                      random_state=0):
    """Hold out normal images, give each a synthetic defect, extract features.

    Parameters
    ----------
    images : list of path-like or ndarray (H, W[, C]) uint8
        Normal images; at least 8.
    featurizer : fitted PatchFeaturizer
        Extracts the patch features.
    validation_fraction : float in (0, 0.5], default=0.25
        Share of the images held out (at least 4 images).
    defects : dict or None, default=None
        Keyword arguments of :func:`synthesize_defects`; None:
        :data:`FAINT_DEFECTS`.
    random_state : int or RandomState, default=0
        Seeds the split and the defects.

    Returns
    -------
    holdout : sklearn.utils.Bunch
        ``fit_indices`` and ``held_out_indices`` (into `images`, sorted);
        ``normal`` and ``defective``, the patch features (n_held_out, h, w, d) of
        the held-out images without and with their defect; ``shares``, each
        defective patch's share inside its defect (:func:`patch_masks`).

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.featurizer import PatchFeaturizer
    >>> from crdistance.model_selection import synthetic_holdout
    >>> rng = np.random.default_rng(0)
    >>> images = [rng.integers(90, 160, (64, 64), dtype=np.uint8) for _ in range(8)]
    >>> featurizer = PatchFeaturizer(backbone="resnet18", weights=None, resize=64,
    ...                              progress=False).fit(images)
    >>> holdout = synthetic_holdout(images, featurizer)
    >>> holdout.held_out_indices.size, holdout.defective.shape, holdout.shares.shape
    (4, (4, 8, 8, 384), (4, 8, 8))
    """
    if not 0 < validation_fraction <= 0.5:
        raise ValueError(f"validation_fraction must be in (0, 0.5], got "
                         f"{validation_fraction!r}.")
    images = list(images)
    n_held_out = max(4, round(validation_fraction * len(images)))
    if len(images) < 2 * n_held_out:
        raise ValueError(f"The label-free configuration needs at least 8 normal "
                         f"images and twice the held-out ones; got {len(images)}.")
    rng = check_random_state(random_state)
    order = rng.permutation(len(images))
    held_out = np.sort(order[:n_held_out])
    held = defect_training_set(
        [images[i] for i in held_out], featurizer,
        defects=FAINT_DEFECTS if defects is None else defects, random_state=rng)
    return Bunch(
        fit_indices=np.sort(order[n_held_out:]), held_out_indices=held_out,
        normal=held.normal, defective=held.defective, shares=held.shares,
    )


def select_pipeline(images, featurizer=None, *, candidates=None,
                    validation_fraction=0.25, defects=None, random_state=0,
                    verbose=False):
    """Choose and fit a featurizer + detector pipeline from normal images alone.

    Parameters
    ----------
    images : list of path-like or ndarray (H, W[, C]) uint8
        Normal (defect-free) images; at least 8.
    featurizer : PatchFeaturizer or None, default=None
        Unfitted or fitted featurizer; None: ``PatchFeaturizer()``.
    candidates : dict of str to estimator or None, default=None
        Detectors to compare; None: :func:`default_candidates` for the
        featurizer's layers.
    validation_fraction : float in (0, 0.5], default=0.25
        Share of the images held out for the comparison (at least 4 images).
    defects : dict or None, default=None
        Keyword arguments of :func:`synthesize_defects` (e.g. ``max_area``);
        None: :data:`FAINT_DEFECTS`.
    random_state : int, default=0
        Seeds the split, the defects and the candidates' cells.
    verbose : bool, default=False
        Print the progress and one line per candidate.

    Returns
    -------
    result : sklearn.utils.Bunch
        ``pipeline``: a fitted ``make_pipeline(featurizer, best detector)``,
        the detector refitted on all images; ``best``: the chosen candidate's
        name; ``results``: :func:`rank_detectors`'s list without the fitted
        detectors; ``fit_s``: seconds in all (features, selection and refit).

    See Also
    --------
    synthesize_defects : The synthetic defects.
    rank_detectors : The comparison on features.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance import CRDetector
    >>> from crdistance.featurizer import PatchFeaturizer
    >>> from crdistance.model_selection import select_pipeline
    >>> rng = np.random.default_rng(0)
    >>> images = [rng.integers(90, 160, (64, 64), dtype=np.uint8) for _ in range(8)]
    >>> result = select_pipeline(
    ...     images, PatchFeaturizer(backbone="resnet18", weights=None, resize=64,
    ...                             progress=False),
    ...     candidates={"crd": CRDetector(lam=0.01, lam_scale="trace"),
    ...                 "crd lam=1": CRDetector(lam=1.0, lam_scale="trace")})
    >>> result.best in ("crd", "crd lam=1"), result.pipeline.predict(images[:2]).shape
    (True, (2,))
    """
    from sklearn.pipeline import make_pipeline

    start = time.perf_counter()
    images = list(images)
    if featurizer is None:
        from crdistance.featurizer import PatchFeaturizer

        featurizer = PatchFeaturizer()
    if not hasattr(featurizer, "n_features_out_"):
        featurizer = clone(featurizer).fit(images[:1])
    holdout = synthetic_holdout(images, featurizer,
                                validation_fraction=validation_fraction,
                                defects=defects, random_state=random_state)
    if verbose:
        print(f"select_pipeline: {len(holdout.fit_indices)} images to fit, "
              f"{len(holdout.held_out_indices)} held out, each also with a synthetic "
              "defect", flush=True)
    train = featurizer.transform([images[i] for i in holdout.fit_indices])
    if candidates is None:
        candidates = default_candidates(featurizer.layer_channels_,
                                        random_state=random_state)
    results = rank_detectors(candidates, train, holdout.normal, holdout.defective,
                             holdout.shares, verbose=verbose)
    best = max(range(len(results)), key=lambda i: results[i]["score"])
    detector = clone(candidates[results[best]["name"]])
    detector.fit(np.concatenate([train, holdout.normal]))
    for result in results:
        del result["detector"]
    if verbose:
        print(f"select_pipeline: chose {results[best]['name']}", flush=True)
    return Bunch(pipeline=make_pipeline(featurizer, detector),
                 best=results[best]["name"], results=results,
                 fit_s=time.perf_counter() - start)

