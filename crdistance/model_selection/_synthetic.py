"""Synthetic anomalies made from normal samples alone, to choose lam without labels.

Variance inflation moves a normal row x to ``x + (a - b) / sqrt(2)``, with a and b
two other normal rows. The step has the covariance C of the normal rows, so the
result has covariance 2 C: it varies along the directions normal samples vary
along, twice as strongly. Nothing is set by hand (no noise scale, no feature
blocks) and the probe weighs each direction by its normal spread: for Gaussian
data the best detector of such samples is the Mahalanobis distance. Isotropic
noise would instead probe mostly the directions the normal data leaves empty;
on the ODDS datasets it chose the smallest lam of the grid on most of them.
"""

import numpy as np

__all__ = ["inflate_variance"]


def inflate_variance(samples, rng):
    """Copies of normal samples with one row each inflated, as synthetic anomalies.

    Parameters
    ----------
    samples : ndarray of shape (n_samples, n_rows_per_sample, d)
        Held-out normal samples (one row each) or patch sets: for patch sets one
        random patch per image is perturbed, a local defect.
    rng : numpy.random.RandomState
        Source of the random rows.

    Returns
    -------
    anomalies : ndarray of shape (n_samples, n_rows_per_sample, d), float64
        Each sample with one row moved to ``x + (a - b) / sqrt(2)``, ``a`` and
        ``b`` two different rows of ``samples`` (the same when it holds one row).
    """
    n_samples, rows_per_sample, _ = samples.shape
    rows = samples.reshape(-1, samples.shape[-1])
    n_rows = rows.shape[0]
    first = rng.randint(n_rows, size=n_samples)
    second = (first + rng.randint(1, max(n_rows, 2), size=n_samples)) % n_rows
    step = (rows[first] - rows[second]) / np.sqrt(2.0)
    anomalies = samples.astype(np.float64)
    perturbed = rng.randint(rows_per_sample, size=n_samples)
    anomalies[np.arange(n_samples), perturbed] += step
    return anomalies
