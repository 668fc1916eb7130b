"""Row transformers applied to every patch of patch features."""

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils import check_random_state, gen_batches
from sklearn.utils.validation import check_is_fitted

from crdistance._array_api import to_numpy
from crdistance._sklearn_compat import HasMethods, Interval, fit_context
from crdistance._validation import validate_features

__all__ = ["PatchTransformer"]


class PatchTransformer(TransformerMixin, BaseEstimator):
    """Apply a transformer of feature rows to each patch of patch features.

    Patch features ``(n_images, h, w, d)`` (or ``(n_images, n_patches, d)``) are
    flattened to rows, transformed by `transformer` and put back on the grid,
    so that a scikit-learn row transformer (a kernel approximation such as
    :class:`~sklearn.kernel_approximation.RBFSampler` or
    :class:`~sklearn.kernel_approximation.Nystroem`, a scaler, PCA) can sit
    between :class:`~crdistance.featurizer.PatchFeaturizer` and a detector.
    Two-dimensional input ``(n_samples, d)`` is transformed as is.

    Parameters
    ----------
    transformer : estimator with fit and transform
        The row transformer (cloned at fit).
    max_fit_rows : int or None, default=100000
        Rows sampled uniformly to fit the transformer (patch sets hold many
        more rows than a kernel approximation needs); None fits on all.
    chunk_size : int, default=65536
        Rows transformed at once (bounds the memory of wide outputs).
    random_state : int, RandomState instance or None, default=None
        Seeds the row sample.

    Attributes
    ----------
    transformer_ : estimator
        The fitted row transformer.
    n_features_in_ : int
        Features of a row in.

    Notes
    -----
    Random Fourier features (``RBFSampler``) before CRD turn its linear model
    into an approximate kernel model of the patches. Measured on the real
    image sets (``benchmarks/bench_accuracy.py``, row ``rff_crd``): see
    docs/benchmarks.md; at 2,048 features the CRD operator is 2,048 x 2,048, so
    scoring costs about 250 times the multiply-adds of CRD on 128 features.
    ``crdistance.persistence.save`` does not store this step.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.kernel_approximation import RBFSampler
    >>> from crdistance.preprocessing import PatchTransformer
    >>> patches = np.random.default_rng(0).normal(size=(4, 7, 7, 16))
    >>> step = PatchTransformer(RBFSampler(n_components=64, random_state=0))
    >>> step.fit_transform(patches).shape
    (4, 7, 7, 64)
    """

    _parameter_constraints: dict = {
        "transformer": [HasMethods(["fit", "transform"])],
        "max_fit_rows": [Interval(Integral, 1, None, closed="left"), None],
        "chunk_size": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, transformer, *, max_fit_rows=100_000, chunk_size=65536,
                 random_state=None):
        self.transformer = transformer
        self.max_fit_rows = max_fit_rows
        self.chunk_size = chunk_size
        self.random_state = random_state

    @fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        """Fit the row transformer on (a sample of) the patch rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, d), (n_images, n_patches, d) or
            (n_images, h, w, d)
            Features.
        y : None
            Ignored.

        Returns
        -------
        self : PatchTransformer
            The fitted step.
        """
        rows = to_numpy(validate_features(self, X, reset=True)[0])
        if self.max_fit_rows is not None and rows.shape[0] > self.max_fit_rows:
            random_state = check_random_state(self.random_state)
            kept = random_state.choice(rows.shape[0], self.max_fit_rows, replace=False)
            rows = rows[np.sort(kept)]
        self.transformer_ = clone(self.transformer).fit(rows)
        return self

    def transform(self, X):
        """Transform every patch row, keeping the patch grid.

        Parameters
        ----------
        X : array-like of shape (n_samples, d), (n_images, n_patches, d) or
            (n_images, h, w, d)
            Features.

        Returns
        -------
        X_out : ndarray of shape X.shape[:-1] + (n_features_out,)
            Transformed features.
        """
        check_is_fitted(self)
        rows, patch_shape = validate_features(self, X, reset=False)
        rows = to_numpy(rows)
        parts = [self.transformer_.transform(rows[batch])
                 for batch in gen_batches(rows.shape[0], self.chunk_size)]
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return out if patch_shape is None else out.reshape(*patch_shape, out.shape[-1])

    def get_feature_names_out(self, input_features=None):
        """The row transformer's output feature names.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Names of the input features, passed to the row transformer.

        Returns
        -------
        feature_names_out : ndarray of str
            One name per output feature.
        """
        check_is_fitted(self)
        return self.transformer_.get_feature_names_out(input_features)

