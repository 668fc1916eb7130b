"""The CRD of many queries for many values of lam from one eigendecomposition.

With the Gram matrix G = V S V^T (eigenvalues s_k, eigenvectors v_k), the
residual operator is lam (G + lam I)^-1 = V diag(lam / (s_k + lam)) V^T, so

    CRD_lam(y) = sum_k (lam / (s_k + lam))^2 (v_k^T y)^2.

Projecting the queries once, Z = Y V, gives the CRD of every query for every lam
as one product (Z * Z) W with W_kj = (lam_j / (s_k + lam_j))^2: O(n d^2) for the
projection and O(n d L) for L values of lam, after one O(d^3) eigendecomposition.
"""

import numpy as np
from sklearn.utils import gen_batches

from crdistance._linalg import gram, gram_eigh, penalties

__all__ = ["crd_path", "fold_distances", "training_grams"]


def training_grams(samples, is_anomaly, folds, chunk_size):
    """Training Gram matrix of every fold, from one partial Gram matrix per fold.

    Each fold must train on exactly the normal samples it does not hold out. The
    Gram matrix of each held-out normal part is computed once; a fold's training
    Gram matrix is the Gram matrix of all normal samples minus it. When every
    normal sample is held out exactly once (k-fold), the total is the sum of the
    parts; otherwise it is computed directly.

    Parameters
    ----------
    samples : ndarray of shape (n_samples, n_rows_per_sample, d)
        Samples (one row each) or patch sets.
    is_anomaly : ndarray of shape (n_samples,), bool
        Labelled anomalies, never trained on.
    folds : list of (train, test) index arrays
        Cross-validation splits of the samples.
    chunk_size : int
        Rows accumulated at once.

    Returns
    -------
    grams : list of ndarray of shape (d, d), float64
        Training Gram matrix of each fold.
    """
    normal = ~is_anomaly
    held_out = []
    for train, test in folds:
        held = test[normal[test]]
        in_train = np.zeros(normal.size, dtype=bool)
        in_train[train] = True
        outside = normal.copy()
        outside[held] = False
        if not np.array_equal(in_train, outside):
            raise ValueError(
                "Each cross-validation split must train on exactly the normal "
                "samples it does not test on (as NoveltyKFold does): no anomaly "
                "and no held-out sample in training, no normal sample left out."
            )
        held_out.append(held)
    parts = [gram(_rows(samples[held]), chunk_size) for held in held_out]
    times_held_out = np.bincount(np.concatenate(held_out), minlength=normal.size)
    if np.all(times_held_out[normal] == 1):
        total = sum(parts)
    else:
        total = gram(_rows(samples[normal]), chunk_size)
    return [total - part for part in parts]


def fold_distances(G, queries, lams, lam_scale, chunk_size):
    """CRD of every query sample for every lam under one fold's Gram matrix.

    Parameters
    ----------
    G : ndarray of shape (d, d)
        The fold's training Gram matrix.
    queries : list of ndarray of shape (n_i, n_rows_per_sample_i, d)
        Groups of samples (one row each) or patch sets; a patch set is scored by
        its largest patch CRD.
    lams : ndarray of shape (n_lams,)
        Values of lam in the unit of ``lam_scale``.
    lam_scale : {"absolute", "trace"}
        Unit of lam, see :func:`penalties`.
    chunk_size : int
        Rows projected at once.

    Returns
    -------
    distances : ndarray of shape (sum n_i, n_lams)
        Sample CRD, the groups one after the other.
    """
    s, V = gram_eigh(G)
    fold_penalties = penalties(lams, G, lam_scale)
    return np.concatenate([
        crd_path(_rows(group), s, V, fold_penalties, chunk_size)
        .reshape(group.shape[0], -1, lams.size)
        .max(axis=1)
        for group in queries
    ])


def _rows(samples):
    return samples.reshape(-1, samples.shape[-1])


def crd_path(X_rows, s, V, penalties, chunk_size):
    """CRD of every row for every penalty, from the eigendecomposition of G.

    Parameters
    ----------
    X_rows : ndarray of shape (n_rows, d)
        Query rows (NumPy).
    s, V : ndarray of shape (d,) and (d, d)
        Eigenvalues and eigenvectors of G, from :func:`gram_eigh`.
    penalties : ndarray of shape (n_lams,)
        Positive ridge penalties.
    chunk_size : int
        Rows projected at once; bounds the (chunk_size, d) temporary.

    Returns
    -------
    distances : ndarray of shape (n_rows, n_lams), float64
        ``distances[i, j] = sum_k (p_j / (s_k + p_j))^2 (v_k^T x_i)^2``.
    """
    weights = (penalties / (s[:, np.newaxis] + penalties)) ** 2
    parts = []
    for rows in gen_batches(X_rows.shape[0], chunk_size):
        projected = X_rows[rows] @ V
        parts.append((projected * projected) @ weights)
    return np.concatenate(parts)
