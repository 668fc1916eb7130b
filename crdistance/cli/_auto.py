"""``crdistance fit --auto``: the detector chosen from the good images alone."""

import warnings

import numpy as np

from crdistance.cli._io import CommandError

MAX_SELECTION_IMAGES = 256
"""Good images the comparison reads at most (their features stay in memory)."""


def choose_detector(featurizer, paths, console, *, random_state=0):
    """The best of :func:`~crdistance.model_selection.default_candidates` on
    synthetic defects of held-out good images, unfitted, and the comparison.

    At most :data:`MAX_SELECTION_IMAGES` images, spread over `paths`, take part;
    a quarter of them is held out and given synthetic defects
    (:func:`~crdistance.model_selection.synthetic_holdout`). No defect label
    is read.

    Returns
    -------
    detector : estimator
        The chosen candidate, unfitted.
    info : dict
        ``chosen`` and, per candidate, its synthetic image and patch AUROC.
    """
    from sklearn.base import clone

    from crdistance.model_selection import (
        default_candidates,
        rank_detectors,
        synthetic_holdout,
    )

    if len(paths) < 8:
        raise CommandError(
            f"--auto compares detectors on held-out good images and needs at least "
            f"8 images to choose from; got {len(paths)}. Leave out --auto."
        )
    kept = np.linspace(0, len(paths) - 1, min(len(paths), MAX_SELECTION_IMAGES))
    chosen_paths = [str(paths[i]) for i in np.unique(kept.round().astype(int))]
    console.info(f"auto: comparing detectors on {len(chosen_paths)} good images, a "
                 "quarter held out with synthetic defects")
    try:
        holdout = synthetic_holdout(chosen_paths, featurizer, random_state=random_state)
        train = featurizer.transform([chosen_paths[i] for i in holdout.fit_indices])
    except (OSError, ValueError) as exc:
        raise CommandError(f"--auto could not read the good images: {exc}") from exc
    candidates = default_candidates(featurizer.layer_channels_,
                                    random_state=random_state)
    progress = console.progress("auto: candidates", len(candidates), unit="detectors")
    results = []
    for name, candidate in candidates.items():
        with warnings.catch_warnings():
            # Capped cell counts are expected on small sets; the final fit warns.
            warnings.simplefilter("ignore", UserWarning)
            results += rank_detectors({name: candidate}, train, holdout.normal,
                                      holdout.defective, holdout.shares)
        progress.update(len(results))
    progress.close()
    best = max(results, key=lambda result: result["score"])
    info = {
        "chosen": best["name"],
        "candidates": [
            {key: result[key] for key in ("name", "image_auroc", "patch_auroc")}
            for result in results
        ],
    }
    console.info(f"auto: chose {best['name']} (synthetic image AUROC "
                 f"{best['image_auroc']:.3f}, patch AUROC {best['patch_auroc']:.3f})")
    return clone(candidates[best["name"]]), info
