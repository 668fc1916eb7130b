"""Step formats of CSE: the contrastive embedding and the k-means scorer.

:class:`~crdistance.featurizer.ContrastiveEmbedder` is stored with what
``transform`` needs (the standardisation and the two layers), its frozen
random decoder and its training record (loss curves, epochs) as JSON;
:class:`~crdistance.kmeans.KMeansDetector` with its centres and threshold.
Arrays saved as float64 hold the fitted float64 arrays exactly, so a loaded
step transforms and scores exactly as the saved one. See
:mod:`crdistance.persistence._steps` for the other steps.
"""

import numpy as np

from crdistance.kmeans import KMeansDetector
from crdistance.persistence._fields import (
    StepFormat,
    count,
    curve,
    epochs,
    input_fields,
    offset,
    restore_input,
)

__all__ = ["ContrastiveEmbedderFormat", "KMeansDetectorFormat"]

_CURVES = ("loss_curve_", "pull_loss_curve_", "push_loss_curve_",
           "reconstruction_loss_curve_", "validation_loss_curve_")
_LAYER_LISTS = ("coefs_", "intercepts_", "decoder_coefs_", "decoder_intercepts_")
_DEFECT_SOURCES = ("given", "features")


class ContrastiveEmbedderFormat(StepFormat):
    """ContrastiveEmbedder: arrays ``mean_``, ``scale_`` and ``<list>.<i>`` for
    the layers of ``coefs_``, ``intercepts_``, ``decoder_coefs_`` and
    ``decoder_intercepts_``; curves and counts in ``fitted``.

    Importing the estimator imports torch (the featurizer wing), so it is
    imported only when such a step is saved or loaded.
    """

    class_name = "ContrastiveEmbedder"
    fitted_keys = {"n_features_in_", "feature_names_in_", "n_features_out_",
                   "n_iter_", "best_epoch_", "n_defective_patches_",
                   "defect_source_", *_CURVES}

    @staticmethod
    def estimator_class():
        from crdistance.featurizer import ContrastiveEmbedder  # needs torch

        return ContrastiveEmbedder

    @staticmethod
    def fitted(embedder):
        return {
            **input_fields(embedder, counted=False),
            "n_features_out_": int(embedder.n_features_out_),
            "n_iter_": int(embedder.n_iter_),
            "best_epoch_": int(embedder.best_epoch_),
            "n_defective_patches_": int(embedder.n_defective_patches_),
            "defect_source_": str(embedder.defect_source_),
            **{name: [float(value) for value in getattr(embedder, name)]
               for name in _CURVES},
        }

    @staticmethod
    def arrays(embedder):
        arrays = {"mean_": embedder.mean_, "scale_": embedder.scale_}
        for attribute in _LAYER_LISTS:
            arrays.update({f"{attribute}.{layer}": array for layer, array
                           in enumerate(getattr(embedder, attribute))})
        return arrays

    @staticmethod
    def restore(embedder, fitted, take, where):
        d = restore_input(embedder, fitted, where)
        hidden, k = embedder.hidden_size, embedder.n_components
        n_out = count(fitted, "n_features_out_", where)
        if n_out != k:
            raise ValueError(
                f"{where} n_features_out_={n_out} is not n_components={k}."
            )
        mean = take("mean_", (d,))
        scale = take("scale_", (d,))
        if np.any(scale <= 0):
            raise ValueError(f"{where} scale_ is not all > 0.")
        given_by = "n_features_in_, hidden_size and n_components give"
        shapes = {
            "coefs_": [(d, hidden), (hidden, k)],
            "intercepts_": [(hidden,), (k,)],
            "decoder_coefs_": [(k, hidden), (hidden, d)],
            "decoder_intercepts_": [(hidden,), (d,)],
        }
        layers = {
            attribute: [take(f"{attribute}.{layer}", shape, given_by=given_by)
                        for layer, shape in enumerate(layer_shapes)]
            for attribute, layer_shapes in shapes.items()
        }
        n_iter, best_epoch = epochs(fitted, embedder.max_epochs, where)
        curves = {name: curve(fitted, name, n_iter, where) for name in _CURVES}
        source = fitted["defect_source_"]
        if not isinstance(source, str) or source not in _DEFECT_SOURCES:
            raise ValueError(
                f"{where} defect_source_={source!r} is not one of "
                f"{list(_DEFECT_SOURCES)}."
            )
        embedder.n_defective_patches_ = count(fitted, "n_defective_patches_", where)
        embedder.mean_, embedder.scale_ = mean, scale
        for attribute, arrays in layers.items():
            setattr(embedder, attribute, arrays)
        for name, values in curves.items():
            setattr(embedder, name, values)
        embedder.n_iter_, embedder.best_epoch_ = n_iter, best_epoch
        embedder.defect_source_ = source
        embedder.n_features_out_ = n_out
        return d, k


class KMeansDetectorFormat(StepFormat):
    """KMeansDetector: the centres, (n_clusters_, d), and the threshold."""

    class_name = "KMeansDetector"
    array_attributes = ("cluster_centers_",)
    fitted_keys = {"n_features_in_", "feature_names_in_", "n_clusters_", "offset_"}

    @staticmethod
    def estimator_class():
        return KMeansDetector

    @staticmethod
    def fitted(detector):
        return {**input_fields(detector, counted=False),
                "n_clusters_": int(detector.n_clusters_),
                "offset_": float(detector.offset_)}

    @staticmethod
    def restore(detector, fitted, take, where):
        d = restore_input(detector, fitted, where)
        n_clusters = count(fitted, "n_clusters_", where)
        if n_clusters > detector.n_clusters:
            raise ValueError(
                f"{where} n_clusters_={n_clusters} exceeds n_clusters="
                f"{detector.n_clusters}."
            )
        detector.cluster_centers_ = take(
            "cluster_centers_", (n_clusters, d),
            given_by="n_clusters_ and n_features_in_ give")
        detector.n_clusters_ = n_clusters
        detector.offset_ = offset(fitted, where)
        return d, None
