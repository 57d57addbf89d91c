"""Frechet distance between two Gaussians, as used by FID."""

import numpy as np


def psd_factor(sigma):
    """Return R with R @ R.T == sigma (to rounding) for a symmetric PSD matrix [D, D].

    Cholesky ([D, D]) when sigma is positive definite. Otherwise (e.g. fewer images than
    feature dimensions) R = V sqrt(W) from eigh with only the columns of the eigenvalues above
    numpy's matrix_rank tolerance ([D, rank]); the others are rounding noise, set to zero.
    """
    try:
        return np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(sigma)
        keep = w > w.max(initial=0) * len(w) * np.finfo(w.dtype).eps
        return v[:, keep] * np.sqrt(w[keep])


def _trace_terms(sigma1, sigma2):
    """Return (tr sigma1, tr sigma2, tr sqrtm(sigma1 sigma2)), all from the same factors R1, R2.

    With sigma_i = R_i R_i^T, the eigenvalues of sqrtm(sigma1 sigma2) are the singular values
    of R1^T R2 (its Gram matrix R1^T sigma2 R1 is similar to sigma1 sigma2), which the SVD finds
    to an absolute error of about eps |R1| |R2|. Square roots of the eigenvalues of
    R1^T sigma2 R1 would lose every singular value below sqrt(eps) of the largest, a small
    positive bias on the distance. tr sigma_i = |R_i|_F^2 keeps the distance of a set to
    itself at zero to rounding, singular covariances included.
    """
    r1 = psd_factor(sigma1)
    r2 = r1 if sigma2 is sigma1 or np.array_equal(sigma1, sigma2) else psd_factor(sigma2)
    cross = np.linalg.svd(r1.T @ r2, compute_uv=False).sum() if r1.size and r2.size else 0.0
    return np.square(r1).sum(), np.square(r2).sum(), float(cross)


def trace_sqrt_product(sigma1, sigma2):
    """Return tr(sqrtm(sigma1 @ sigma2)) for symmetric PSD covariance matrices."""
    return _trace_terms(np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64))[2]


def _check_stats(mu, sigma, name):
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f'{name}: mu must be [D] and sigma [D, D], got {list(mu.shape)} and {list(sigma.shape)}')
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f'{name}: mu or sigma holds NaN or infinite values')
    return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Return |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)) (FID for Inception statistics).

    Same value as EDM's scipy.linalg.sqrtm formula to about 1e-12 relative, faster, and exact
    where sqrtm is not: singular covariances, and a set against itself (0 to rounding).
    """
    mu1, sigma1 = _check_stats(mu1, sigma1, 'first statistics')
    mu2, sigma2 = _check_stats(mu2, sigma2, 'second statistics')
    if mu1.shape != mu2.shape:
        raise ValueError(f'statistics have different dimensions: {mu1.shape[0]} and {mu2.shape[0]}')
    tr1, tr2, cross = _trace_terms(sigma1, sigma2)
    return float(np.square(mu1 - mu2).sum() + tr1 + tr2 - 2 * cross)
