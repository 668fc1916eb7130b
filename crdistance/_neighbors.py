"""Nearest-neighbour distances to a memory bank: blocked matrix products in any
Array API namespace, or a faiss index on the host."""

import importlib.util
import math

import numpy as np

from crdistance._array_api import namespace_and_device

__all__ = ["faiss_distances", "faiss_installed", "knn_distances"]

# Brute-force search computes the distances of a block of queries to the whole
# bank at once: enough queries for an efficient matrix product, few enough for
# the block to stay near the processor's caches.
BLOCK_BYTES = 64 * 2**20
MIN_BLOCK_ROWS = 64


def knn_distances(X, bank, n_neighbors, groups=None):
    """Mean Euclidean distance of each row of X to its nearest rows of bank.

    Parameters
    ----------
    X : array of shape (n_rows, d)
        Queries in any Array API namespace.
    bank : array of shape (n_bank, d)
        Searched rows, in X's namespace and on its device.
    n_neighbors : int
        Nearest bank rows averaged.
    groups : tuple (query_groups, bank_groups) of int arrays or None
        Group of each query and bank row; a query ignores the bank rows of its
        own group (held-out distances). None ignores none.

    Returns
    -------
    distances : array of shape (n_rows,)
        Float64 for float64 X, float32 otherwise; ``inf`` where fewer than
        ``n_neighbors`` bank rows are outside the query's group.
    """
    xp, device = namespace_and_device(X)
    dtype = xp.float64 if X.dtype == xp.float64 else xp.float32
    bank = xp.astype(bank, dtype, copy=False)
    bank_sq = xp.sum(bank * bank, axis=1)
    itemsize = 8 if dtype == xp.float64 else 4
    block_rows = max(MIN_BLOCK_ROWS, BLOCK_BYTES // (bank.shape[0] * itemsize))
    excluded = xp.asarray(math.inf, dtype=dtype, device=device)
    parts = []
    n_rows = X.shape[0]
    for start in range(0, n_rows, block_rows):
        stop = min(start + block_rows, n_rows)
        block = xp.astype(X[start:stop, ...], dtype, copy=False)
        # ||x - b||^2 = ||x||^2 + (||b||^2 - 2 x.b): ||x||^2 is the same for all
        # b, so it is added after the search, to the k smallest values only.
        partial = (-2.0 * block) @ bank.T
        partial += bank_sq[None, :]
        if groups is not None:
            query_groups, bank_groups = groups
            same = query_groups[start:stop, None] == bank_groups[None, :]
            partial = xp.where(same, excluded, partial)
        nearest_sq = _smallest(partial, n_neighbors, xp)
        nearest_sq = nearest_sq + xp.sum(block * block, axis=1)[:, None]
        parts.append(xp.mean(xp.sqrt(xp.clip(nearest_sq, 0.0, None)), axis=1))
    return parts[0] if len(parts) == 1 else xp.concat(parts)


def _smallest(values, k, xp):
    """The k smallest values of each row, in any order."""
    if k == 1:
        return xp.min(values, axis=1, keepdims=True)
    if isinstance(values, np.ndarray):
        return np.partition(values, k - 1, axis=1)[:, :k]
    return xp.sort(values, axis=1)[:, :k]


def faiss_installed():
    return importlib.util.find_spec("faiss") is not None


def faiss_distances(X, bank, n_neighbors):
    """Mean Euclidean distance to the nearest rows by a faiss ``IndexFlatL2``."""
    import faiss

    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(np.ascontiguousarray(bank, dtype=np.float32))
    sq, _ = index.search(np.ascontiguousarray(X, dtype=np.float32), n_neighbors)
    return np.mean(np.sqrt(np.maximum(sq, 0.0)), axis=1)
