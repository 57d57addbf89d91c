"""Frechet distance between two Gaussians, as used by FID."""

import numpy as np


def _drop_noise(w):
    """Zero eigenvalues below numpy's matrix_rank tolerance: rounding noise, not signal."""
    return np.where(w > w.max(initial=0) * len(w) * np.finfo(w.dtype).eps, w, 0)


def _psd_factor(sigma):
    """Return R with R @ R.T == sigma: Cholesky when sigma is positive definite, else from eigh."""
    try:
        return np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:  # singular, e.g. fewer images than feature dimensions
        w, v = np.linalg.eigh(sigma)
        return v * np.sqrt(_drop_noise(w))


def trace_sqrt_product(sigma1, sigma2):
    """Return tr(sqrtm(sigma1 @ sigma2)) for symmetric PSD covariance matrices.

    With sigma1 = R R^T, sigma1 @ sigma2 has the eigenvalues of the symmetric PSD matrix
    R^T sigma2 R, so the trace is the sum of their square roots: a Cholesky factorization and
    one symmetric eigenvalue solve instead of the complex Schur decomposition inside
    scipy.linalg.sqrtm. Eigenvalues at the rounding-noise level are dropped, which keeps
    rank-deficient covariances (fewer images than dimensions) accurate, where sqrtm is not.
    """
    r = _psd_factor(sigma1)
    m = r.T @ (sigma2 @ r)
    return float(np.sqrt(_drop_noise(np.linalg.eigvalsh((m + m.T) * 0.5))).sum())


def _check_stats(mu, sigma, name):
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f'{name}: mu must be [D] and sigma [D, D], got {list(mu.shape)} and {list(sigma.shape)}')
    return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Return |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)) (FID for Inception statistics)."""
    mu1, sigma1 = _check_stats(mu1, sigma1, 'first statistics')
    mu2, sigma2 = _check_stats(mu2, sigma2, 'second statistics')
    if mu1.shape != mu2.shape:
        raise ValueError(f'statistics have different dimensions: {mu1.shape[0]} and {mu2.shape[0]}')
    m = np.square(mu1 - mu2).sum()
    return float(m + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2))
