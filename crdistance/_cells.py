"""The cells of local CRD: how many a group can fit, which cells a row is
nearest to, and each row's smallest weighted cell CRD, one matrix product per
cell (NumPy or any Array API namespace)."""

import numpy as np

from crdistance._array_api import namespace_and_device, to_numpy

__all__ = [
    "blocks_by_cell", "cells_for", "group_distances", "nearest_cells",
    "weighted_operators",
]


def cells_for(n_rows, n_features, n_cells):
    """Cells a group of ``n_features`` can fit from ``n_rows`` rows: ``n_cells``,
    at most one per ``n_features`` rows (so that a cell of average size holds at
    least as many rows as features), and at least one."""
    return max(1, min(n_cells, n_rows // n_features))


def weighted_operators(residual_operators, cell_weights):
    """``sqrt(w_k) M_k`` of every cell of every group, in float64.

    ``w_k ||M_k y||^2 = ||sqrt(w_k) M_k y||^2``: the weighted CRD of a cell is
    one product and a squared norm. ``LocalCRDetector.scoring_operators_`` holds
    these in float32.
    """
    return [
        operators * np.sqrt(weights)[:, None, None]
        for operators, weights in zip(residual_operators, cell_weights, strict=True)
    ]


def nearest_cells(features, centers, center_norms, n_nearest):
    """Indices of the ``n_nearest`` cells with the nearest centres, per row."""
    xp, device = namespace_and_device(features)
    n_cells = centers.shape[0]
    # Squared distances up to the row's own squared norm.
    distances = center_norms - 2 * features @ centers.T
    if n_nearest >= n_cells:
        return xp.broadcast_to(xp.arange(n_cells, device=device), distances.shape)
    if n_nearest == 1:
        return xp.argmin(distances, axis=1, keepdims=True)
    # n_cells is small: a full sort of each row is as fast as NumPy's argpartition.
    return xp.argsort(distances, axis=1, stable=False)[:, :n_nearest]


def group_distances(features, centers, center_norms, operators, n_nearest):
    """Smallest weighted cell CRD over each row's nearest cells."""
    xp, _ = namespace_and_device(features)
    nearest = nearest_cells(features, centers, center_norms, n_nearest)
    n_rows, n_nearest = nearest.shape
    order, bounds = blocks_by_cell(xp.reshape(nearest, (-1,)), operators.shape[0])
    grouped = xp.take(features, order // n_nearest, axis=0)
    crd = []
    for cell in np.flatnonzero(np.diff(bounds)).tolist():
        start, stop = int(bounds[cell]), int(bounds[cell + 1])
        residuals = grouped[start:stop, ...] @ operators[cell, ...]
        crd.append(xp.vecdot(residuals, residuals))
    crd = crd[0] if len(crd) == 1 else xp.concat(crd)
    # Back to row order, by the inverse permutation (no scatter in the Array API).
    crd = xp.take(crd, xp.argsort(order, stable=False))
    return xp.min(xp.reshape(crd, (n_rows, n_nearest)), axis=1)


def blocks_by_cell(cells, n_cells):
    """Row order grouping equal cells, and each cell's [start, stop) in it (NumPy,
    on the host), so a cell's rows are one contiguous block: one matrix product
    per cell."""
    xp, device = namespace_and_device(cells)
    if n_cells < xp.iinfo(xp.int16).max:
        # NumPy's stable sort of int16 is a radix sort, ~15x faster than of int64.
        cells = xp.astype(cells, xp.int16)
    order = xp.argsort(cells, stable=True)
    bounds = xp.searchsorted(
        xp.take(cells, order), xp.arange(n_cells + 1, dtype=cells.dtype, device=device)
    )
    return order, to_numpy(bounds)
