"""Frechet distance between two Gaussians, as used by FID."""

import numpy as np


def _psd_sqrt_factor(sigma):
    """Return R with R @ R.T == sigma for a symmetric PSD matrix (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh(sigma)
    return v * np.sqrt(np.clip(w, 0, None))


def trace_sqrt_product(sigma1, sigma2):
    """Return tr(sqrtm(sigma1 @ sigma2)) for symmetric PSD covariance matrices.

    sigma1 @ sigma2 has the same eigenvalues as the symmetric PSD matrix R.T @ sigma2 @ R,
    where sigma1 = R @ R.T, so the trace is the sum of the square roots of those eigenvalues:
    two symmetric eigendecompositions instead of a complex Schur-based sqrtm.
    """
    r = _psd_sqrt_factor(sigma1)
    m = r.T @ sigma2 @ r
    m = (m + m.T) * 0.5
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(m), 0, None)).sum())


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
