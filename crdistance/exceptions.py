"""Warnings and errors that crdistance raises, as :mod:`sklearn.exceptions` holds
scikit-learn's."""

__all__ = ["NumericalWarning"]


class NumericalWarning(UserWarning):
    """The computation met a numerical limit and took a documented fallback.

    Raised, for example, when ``G + lam I`` is not numerically positive
    definite and :class:`~crdistance.CRDetector` factorises it by an
    eigendecomposition instead of a Cholesky factorisation (``solver_ ==
    "eigh"``).

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from crdistance import CRDetector
    >>> from crdistance.exceptions import NumericalWarning
    >>> rng = np.random.default_rng(0)
    >>> basis = rng.normal(size=(2, 6)) * 1e8  # rank 2 at magnitude 1e8
    >>> X = rng.normal(size=(50, 2)) @ basis
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     detector = CRDetector(lam=1e-6).fit(X)
    >>> [type(w.message).__name__ for w in caught], detector.solver_
    (['NumericalWarning'], 'eigh')
    """
