"""Linear algebra of the Collaborative Representation Distance.

Notation of Han & Yan (arXiv 2401.09443): the normal features are the columns
of F (d x N), G = F F^T is their Gram matrix and lam the ridge penalty. The
ridge code of a query y is a = (F^T F + lam I)^-1 F^T y (eq. 3.6) and its
distance is the reconstruction residual (eq. 3.7-3.8). By the push-through
identity F (F^T F + lam I)^-1 F^T = G (G + lam I)^-1, so

    CRD(y) = ||F a - y||^2 = ||lam (G + lam I)^-1 y||^2 = ||M y||^2,

with the residual operator M = lam (G + lam I)^-1: d x d, whatever N is.
"""

import warnings

import array_api_compat
import numpy as np
import scipy.linalg
from scipy.stats import chi2
from sklearn.utils import gen_batches

from crdistance._array_api import namespace_and_device
from crdistance._validation import check_finite
from crdistance.exceptions import NumericalWarning

__all__ = [
    "auto_threshold",
    "crd",
    "gram",
    "gram_eigh",
    "gram_eigvalsh",
    "penalties",
    "residual_operator",
    "residual_operators",
]


def gram(X, chunk_size):
    """Gram matrix sum_i x_i x_i^T of the rows of X, accumulated in float64.

    Only one chunk of rows is held in float64 at a time, on X's device.

    Parameters
    ----------
    X : array of shape (n_rows, d)
        Finite floating-point rows in any Array API namespace.
    chunk_size : int
        Rows cast to float64 at once.

    Returns
    -------
    G : array of shape (d, d), float64, in X's namespace and on its device;
        NumPy for a Dask array.
    """
    if array_api_compat.is_dask_array(X):
        return _dask_gram(X, chunk_size)
    xp, device = namespace_and_device(X)
    d = X.shape[1]
    G = xp.zeros((d, d), dtype=xp.float64, device=device)
    for rows in gen_batches(X.shape[0], chunk_size):
        chunk = xp.astype(X[rows, ...], xp.float64, copy=False)
        G = G + chunk.T @ chunk
    return G


def _dask_gram(X, chunk_size):
    """One map-reduce pass on the Dask scheduler: a Gram per block of rows, summed
    in a binary tree on the workers; only the d x d result reaches the client."""
    import dask

    partial_grams = [
        dask.delayed(gram)(block, chunk_size)
        for block in X.rechunk({1: -1}).to_delayed().ravel()
    ]
    while len(partial_grams) > 1:
        pairs = zip(partial_grams[::2], partial_grams[1::2], strict=False)
        summed = [dask.delayed(np.add)(left, right) for left, right in pairs]
        partial_grams = summed + partial_grams[len(summed) * 2 :]
    return partial_grams[0].compute()


def gram_eigh(G):
    """Eigendecomposition of a Gram matrix with rounding-level eigenvalues zeroed.

    Parameters
    ----------
    G : ndarray of shape (d, d), float64
        Symmetric positive semi-definite Gram matrix.

    Returns
    -------
    s : ndarray of shape (d,)
        Eigenvalues in ascending order; those below ``d * eps * max(s)`` (rounding
        noise, possibly negative) are set to zero, as in ``residual_operator``'s
        fallback.
    V : ndarray of shape (d, d)
        Orthonormal eigenvectors in columns.
    """
    s, V = np.linalg.eigh(G)
    return _zero_rounding_level(s), V


def gram_eigvalsh(G):
    """Eigenvalues of a Gram matrix, ascending, rounding-level ones set to zero."""
    return _zero_rounding_level(np.linalg.eigvalsh(G))


def _zero_rounding_level(s):
    """Zero the eigenvalues below d * eps * max(s): rounding noise, maybe negative."""
    return np.where(s > s.shape[0] * np.finfo(np.float64).eps * max(s[-1], 0.0), s, 0.0)


def penalties(lams, G, lam_scale):
    """Ridge penalties of lam (a value or a grid) for a Gram matrix.

    Parameters
    ----------
    lams : float or ndarray of shape (n_lams,)
        Positive values of lam.
    G : ndarray of shape (d, d)
        Gram matrix of the training features.
    lam_scale : {"absolute", "trace"}
        ``"absolute"``: the penalty is lam. ``"trace"``: lam * trace(G) / d.

    Returns
    -------
    penalties : float or ndarray of shape (n_lams,)
        Shaped like ``lams``.
    """
    if lam_scale == "absolute":
        return lams
    mean_eigenvalue = np.trace(G) / G.shape[0]
    if mean_eigenvalue <= 0:
        raise ValueError(
            "lam_scale='trace' needs training features that are not all zero "
            "(trace(G) = 0)."
        )
    return lams * mean_eigenvalue


def residual_operator(G, lam):
    """M = lam (G + lam I)^-1 by Cholesky, with an eigenvalue fallback.

    Parameters
    ----------
    G : ndarray of shape (d, d), float64
        Symmetric positive semi-definite Gram matrix (NumPy).
    lam : float
        Ridge penalty, > 0.

    Returns
    -------
    M : ndarray of shape (d, d), float64
        Symmetric residual operator.
    solver : {"cholesky", "eigh"}
        ``"eigh"`` when G + lam I was not numerically positive definite (lam
        below the rounding level of G): then G = V S V^T, eigenvalues below
        d * eps * max(S) are set to zero and M = V lam (S + lam I)^-1 V^T, the
        limit the formula takes on G's numerical null space. A
        :class:`NumericalWarning` says so.
    """
    _check_gram_finite(G)
    identity = np.eye(G.shape[0])
    try:
        factor = scipy.linalg.cho_factor(G + lam * identity, lower=True)
    except np.linalg.LinAlgError:
        s, V = gram_eigh(G)
        warnings.warn(
            f"G + lam I is not numerically positive definite (lam={lam:g}, largest "
            f"Gram eigenvalue {s[-1]:.3g}); solved by eigendecomposition with "
            "eigenvalues below rounding level treated as zero. Consider a larger "
            "lam or rescaled features.",
            NumericalWarning,
            stacklevel=3,
        )
        return (V * (lam / (s + lam))) @ V.T, "eigh"
    M = lam * scipy.linalg.cho_solve(factor, identity)
    return (M + M.T) / 2.0, "cholesky"


def residual_operators(grams, lams):
    """M_k = lam_k (G_k + lam_k I)^-1 of a stack of Gram matrices at once.

    One batched factorisation instead of a Python loop of small ones (many
    cells of a few hundred dimensions: the loop's overhead dominates). If any
    ``G_k + lam_k I`` is not numerically positive definite, every cell goes
    through :func:`residual_operator`, with its eigenvalue fallback.

    Parameters
    ----------
    grams : ndarray of shape (n, d, d), float64
        Symmetric positive semi-definite Gram matrices.
    lams : ndarray of shape (n,)
        Ridge penalty of each, > 0.

    Returns
    -------
    M : ndarray of shape (n, d, d), float64
        Symmetric residual operators.
    """
    _check_gram_finite(grams)
    shifted = grams + lams[:, None, None] * np.eye(grams.shape[-1])
    try:
        np.linalg.cholesky(shifted)  # only the positive-definiteness test
    except np.linalg.LinAlgError:
        return np.stack(
            [residual_operator(G, lam)[0] for G, lam in zip(grams, lams, strict=True)]
        )
    M = lams[:, None, None] * np.linalg.inv(shifted)
    return (M + np.swapaxes(M, 1, 2)) / 2.0


def _check_gram_finite(G):
    check_finite(
        G,
        "The Gram matrix of the training features overflowed float64; "
        "rescale the features (e.g. StandardScaler) before fitting.",
    )


def crd(X, M, chunk_size, dtype):
    """CRD(y) = ||M y||^2 for every row y of X, one GEMM per chunk.

    Parameters
    ----------
    X : array of shape (n_rows, d)
        Query rows in any Array API namespace.
    M : array of shape (d, d)
        Residual operator in X's namespace and on its device.
    chunk_size : int
        Rows scored at once; bounds the (chunk_size, d) temporary.
    dtype : dtype of X's namespace
        Floating dtype of the computation and of the result.

    Returns
    -------
    distances : array of shape (n_rows,), ``dtype``, in X's namespace.

    Raises
    ------
    ValueError
        If a distance overflows ``dtype`` (e.g. features of magnitude 1e20 in
        float32), rather than returning infinity.
    """
    xp, _ = namespace_and_device(X)
    M = xp.astype(M, dtype, copy=False)
    parts = []
    with np.errstate(over="ignore"):  # overflow is reported below, with a remedy
        for rows in gen_batches(X.shape[0], chunk_size):
            residuals = xp.astype(X[rows, ...], dtype, copy=False) @ M
            parts.append(xp.vecdot(residuals, residuals))
    distances = parts[0] if len(parts) == 1 else xp.concat(parts)
    return check_finite(
        distances,
        f"CRD overflows {dtype}: the features are too large for it. Pass "
        "compute_dtype='float64' or rescale the features.",
    )


def auto_threshold(s, lam, n_rows, rows_per_sample, false_alarm_rate):
    """Distance a fresh normal sample exceeds with a given probability.

    A reference model computed from the Gram matrix alone, so it needs no second
    pass over the data and ``partial_fit`` gives the same value as ``fit``.
    Normal rows are modelled as y ~ N(0, G / N) (the empirical second moment).
    In G's eigenbasis CRD(y) = sum_k (lam / (s_k + lam))^2 (v_k^T y)^2 is then a
    weighted sum of chi-squared(1) variables with weights
    w_k = (s_k / N) lam^2 / (s_k + lam)^2. They are computed from the
    eigenvalues s_k themselves: forming them from M = lam (G + lam I)^-1 (as
    M - M^2) cancels catastrophically when G has null directions and lam is
    small.

    Training rows sit in G, so their residuals are optimistic; the weights are
    inflated by the generalised cross-validation factor 1 / (1 - df / N)^2 with
    df = sum_k s_k / (s_k + lam), the effective number of parameters. The sum is
    matched by a scaled chi-squared g chi2(h) with the same mean and variance
    (Welch-Satterthwaite). A sample made of ``rows_per_sample`` patches is
    scored by its worst patch: each patch gets the false-alarm rate
    1 - (1 - rate)^(1 / rows_per_sample) (Sidak).

    Parameters
    ----------
    s : ndarray of shape (d,)
        Eigenvalues of G, rounding-level ones set to zero (:func:`gram_eigvalsh`).
    lam : float
        Ridge penalty.
    n_rows : int
        Number of training rows N in G.
    rows_per_sample : int
        1 for rows, patches per image for patch sets.
    false_alarm_rate : float
        Probability that a normal sample is called an outlier.

    Returns
    -------
    threshold : float
        The CRD of a sample above which it is an outlier.
    """
    shrinkage = lam / (s + lam)
    inflation = 1.0 / (1.0 - np.sum(1.0 - shrinkage) / n_rows) ** 2
    weights = inflation * (s / n_rows) * shrinkage**2
    mean, variance = np.sum(weights), 2.0 * np.sum(weights**2)
    if mean <= 0.0 or variance <= 0.0:
        return 0.0
    scale = variance / (2.0 * mean)
    dof = 2.0 * mean**2 / variance
    patch_rate = -np.expm1(np.log1p(-false_alarm_rate) / rows_per_sample)
    return float(scale * chi2.isf(patch_rate, dof))
