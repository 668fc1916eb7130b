"""Step format of one detector per category: PerCategoryDetector.

:class:`~crdistance.categories.PerCategoryDetector` is stored with its labels
and the routing means; each fitted detector of ``detectors_`` is a step of its
own, ``<step name>.category<i>``, in ``fitted["detectors_"]``, of a class the
format holds as a detector alone. The ``detector`` parameter, an estimator, is
stored as its class name (or null for the default), and restored as an
unfitted clone of the first fitted detector: each is a clone of it, fitted.
See :mod:`crdistance.persistence._steps` for the other steps.
"""

from sklearn.base import clone

from crdistance._detector import CRDetector
from crdistance._local import LocalCRDetector
from crdistance.categories import PerCategoryDetector
from crdistance.kmeans import KMeansDetector
from crdistance.persistence._fields import (
    StepFormat,
    input_fields,
    plain,
    restore_input,
)

__all__ = ["PerCategoryDetectorFormat"]

SUBSTEP_CLASSES = ("CRDetector", "LocalCRDetector", "KMeansDetector", "GRADDetector")
"""Classes a PerCategoryDetector's detectors may have: those a model file holds
as a detector alone, except PerCategoryDetector itself."""


def _default_detector():
    """What ``detector=None`` fits per category (PerCategoryDetector's
    documented default)."""
    return CRDetector(lam=0.01, lam_scale="trace")


def _detector_classes():
    from crdistance.grad import GRADDetector  # does not import torch

    classes = (CRDetector, LocalCRDetector, KMeansDetector, GRADDetector)
    return {cls.__name__: cls for cls in classes}


class PerCategoryDetectorFormat(StepFormat):
    """PerCategoryDetector: ``categories_`` (str or int labels, or ``[None]``)
    and the sub-steps of ``detectors_`` in ``fitted``; the array
    ``category_means_`` (n_categories, d). ``offset_`` is -1.0."""

    class_name = "PerCategoryDetector"
    fitted_keys = {"n_features_in_", "feature_names_in_", "categories_",
                   "detectors_"}
    array_attributes = ("category_means_",)
    substeps = "detectors_"
    substep_prefix = "category"
    substep_classes = SUBSTEP_CLASSES

    @staticmethod
    def estimator_class():
        return PerCategoryDetector

    @staticmethod
    def encode_params(params):
        template = params["detector"]
        if template is not None and type(template) is not _detector_classes().get(
                type(template).__name__):
            raise TypeError(
                f"PerCategoryDetector's detector is a {type(template).__name__}; "
                f"the model file holds {list(SUBSTEP_CLASSES)} (joblib saves any "
                "estimator, as a file that runs code when loaded)."
            )
        return {**params, "detector": None if template is None
                else type(template).__name__}

    @staticmethod
    def decode_params(params):
        name = params.get("detector")
        if name is None:
            return params
        classes = _detector_classes()
        if not isinstance(name, str) or name not in classes:
            raise ValueError(
                f"parameter detector={name!r} is not null or one of "
                f"{list(SUBSTEP_CLASSES)}."
            )
        # A stand-in for validation: restore puts a clone of detectors_[0].
        return {**params, "detector": classes[name]()}

    @staticmethod
    def fitted(router):
        labels = list(router.categories_)
        if labels != [None] and not (
            all(type(label) is str for label in labels)
            or all(type(label) is int for label in labels)
        ):
            raise TypeError(
                f"PerCategoryDetector's categories_ {labels!r} are not all str or "
                "all int: the model file holds labels of one of those types (or "
                "[None], fitted without y). Fit with str or int labels."
            )
        template = router.detector
        fitted_params = router.detectors_[0].get_params(deep=False)
        if template is not None and (
            type(template) is not type(router.detectors_[0])
            or plain(template.get_params(deep=False), "detector")
            != plain(fitted_params, "detector")
        ):
            raise ValueError(
                "PerCategoryDetector's detector has another class or other "
                "parameters than its fitted detectors_ (set after fit?); the "
                "model file restores it from them: refit, or set them back."
            )
        return {**input_fields(router, counted=False), "categories_": labels}

    @staticmethod
    def restore(router, fitted, take, where):
        d = restore_input(router, fitted, where)
        labels = _labels(fitted["categories_"], where)
        built = fitted["detectors_"]
        if len(built) != len(labels):
            raise ValueError(
                f"{where} has {len(built)} detectors_ for {len(labels)} "
                "categories_."
            )
        detectors = []
        for index, (detector, width) in enumerate(built):
            if width != (d, None):
                raise ValueError(
                    f"{where} detectors_[{index}] takes {width[0]} features, "
                    f"not n_features_in_={d}."
                )
            if not detector.offset_ < 0:
                raise ValueError(
                    f"{where} detectors_[{index}] has offset_=0: its threshold "
                    "-offset_, which scores are divided by, must be positive."
                )
            detectors.append(detector)
        _check_clones(router, detectors, where)
        means = take("category_means_", (len(labels), d),
                     given_by="categories_ and n_features_in_ give")
        router.detector = (None if router.detector is None
                           else clone(detectors[0]))
        router.categories_, router.detectors_ = labels, detectors
        router.category_means_ = means
        router.offset_ = -1.0
        return d, None


def _labels(labels, where):
    """``categories_``: distinct sorted labels, all str or all int, or [None]."""
    if not isinstance(labels, list) or not labels:
        raise ValueError(f"{where} categories_ must be a non-empty list, got "
                         f"{labels!r}.")
    if labels == [None]:
        return labels
    kinds = {type(label) for label in labels}
    if kinds not in ({str}, {int}):
        raise ValueError(
            f"{where} categories_ must be all str or all int labels (or [None]), "
            f"got {labels!r}."
        )
    if any(left >= right for left, right in zip(labels, labels[1:], strict=False)):
        raise ValueError(
            f"{where} categories_ {labels!r} are not distinct and sorted, as fit "
            "gives them."
        )
    return labels


def _check_clones(router, detectors, where):
    """The detectors are fitted clones of one detector: ``detector``'s class
    (CRDetector(lam=0.01, lam_scale='trace') for None), the same parameters."""
    first = detectors[0]
    if router.detector is None:
        expected = _default_detector()
    else:
        expected = router.detector  # a stand-in of the stored class
    if type(first) is not type(expected):
        raise ValueError(
            f"{where} detectors_[0] is a {type(first).__name__} but parameter "
            f"detector gives {type(expected).__name__}."
        )
    params = first.get_params(deep=False)
    if router.detector is None and params != expected.get_params(deep=False):
        raise ValueError(
            f"{where} detectors_[0] has the parameters {params}, not those of "
            f"detector=None, {expected!r}."
        )
    for index, detector in enumerate(detectors[1:], start=1):
        if type(detector) is not type(first) or detector.get_params(
                deep=False) != params:
            raise ValueError(
                f"{where} detectors_[{index}] is not a clone of detectors_[0] "
                "(another class or other parameters)."
            )
