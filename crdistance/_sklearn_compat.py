"""The one home of scikit-learn's private names that crdistance uses.

scikit-learn keeps these outside its public API, so a release inside the
declared range (``scikit-learn>=1.6,<2``) may move or change them: when it does,
this file is the one to mend. Nothing else in crdistance imports a private
scikit-learn name or reads a private attribute of a scikit-learn estimator.
"""

from sklearn.base import _fit_context
from sklearn.utils._param_validation import (
    HasMethods,
    Interval,
    InvalidParameterError,
    StrOptions,
)

__all__ = [
    "HasMethods",
    "Interval",
    "InvalidParameterError",
    "StrOptions",
    "fit_context",
    "rbf_sampler_gamma",
    "restore_rbf_sampler",
    "validate_params",
]

fit_context = _fit_context
"""``sklearn.base._fit_context``: validates the parameters once per ``fit``."""


def validate_params(estimator):
    """Check ``estimator``'s parameters against its ``_parameter_constraints``.

    Raises :class:`~sklearn.utils._param_validation.InvalidParameterError` (a
    ``ValueError`` and ``TypeError``) naming the parameter, as ``fit`` would.
    """
    estimator._validate_params()


def rbf_sampler_gamma(sampler):
    """The gamma a fitted ``RBFSampler`` used (``gamma="scale"`` resolved)."""
    return float(sampler._gamma)


def restore_rbf_sampler(sampler, gamma, n_features_out):
    """Set the fitted private state of an ``RBFSampler`` that ``transform`` reads."""
    sampler._gamma = gamma
    sampler._n_features_out = n_features_out
