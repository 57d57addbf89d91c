"""Time the Frechet distance against EDM's scipy.linalg.sqrtm formula on FID-sized statistics.

    python bench/bench_frechet.py                      # 2048 dims, 3 repeats
    python bench/bench_frechet.py --dim=512 --repeat=5
    python bench/bench_frechet.py --samples=500        # singular covariances (fewer samples than dims)

The covariances come from random non-negative features with a decaying spectrum (like
Inception pool features); the second set is a perturbed copy, so the distance is small
relative to the traces, which is where rounding in sqrtm shows most. The distance of the
first set to itself, which must be 0, is printed relative to its trace.
"""

import os
import sys
import time
import warnings

import click
import numpy as np
import scipy.linalg

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from metrics.frechet import frechet_distance  # noqa: E402


def scipy_sqrtm_distance(mu1, sigma1, mu2, sigma2):
    """EDM's formula: sqrtm of the (non-symmetric) product, real part of the trace."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)  # disp=False is deprecated in new SciPy
        s, _ = scipy.linalg.sqrtm(np.dot(sigma1, sigma2), disp=False)
    return float(np.real(np.square(mu1 - mu2).sum() + np.trace(sigma1 + sigma2 - s * 2)))


def make_stats(rng, dim, samples, mix, shift):
    """Mean and covariance of `samples` ReLU features of a random linear map of Gaussian noise."""
    z = rng.standard_normal([samples, mix.shape[0]])
    feats = np.maximum(z @ mix + shift, 0)
    return feats.mean(0), np.cov(feats, rowvar=False)


def best_time(fn, repeat):
    times, value = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return min(times), value


@click.command()
@click.option('--dim', type=click.IntRange(min=2), default=2048, show_default=True, help='Feature dimension')
@click.option('--samples', type=click.IntRange(min=2), default=10000, show_default=True, help='Features per covariance')
@click.option('--repeat', type=click.IntRange(min=1), default=3, show_default=True, help='Timed runs (best is kept)')
@click.option('--seed', type=int, default=0, show_default=True, help='Random seed')
def main(dim, samples, repeat, seed):
    """Compare speed and value of frechet_distance with the scipy sqrtm formula."""
    rng = np.random.default_rng(seed)
    scales = 1.0 / np.sqrt(1.0 + np.arange(dim))  # decaying spectrum
    mix = rng.standard_normal([dim, dim]) * scales[:, None] / np.sqrt(dim)
    mu1, sigma1 = make_stats(rng, dim, samples, mix, 0.1)
    mix2 = mix + 0.05 * rng.standard_normal(mix.shape) * scales[:, None] / np.sqrt(dim)
    mu2, sigma2 = make_stats(rng, dim, samples, mix2, 0.1)

    t_ref, ref = best_time(lambda: scipy_sqrtm_distance(mu1, sigma1, mu2, sigma2), repeat)
    t_new, new = best_time(lambda: frechet_distance(mu1, sigma1, mu2, sigma2), repeat)
    print(f'dim {dim}, {samples} samples per set, best of {repeat}')
    print(f'scipy sqrtm (EDM)  {t_ref:8.3f} s   value {ref:.10f}')
    print(f'frechet_distance   {t_new:8.3f} s   value {new:.10f}')
    print(f'speed-up           {t_ref / t_new:8.1f} x')
    print(f'abs difference     {abs(new - ref):.3e}   relative {abs(new - ref) / abs(ref):.3e}')
    print(f'self-distance      scipy {scipy_sqrtm_distance(mu1, sigma1, mu1, sigma1) / np.trace(sigma1):+.3e}   '
          f'frechet_distance {frechet_distance(mu1, sigma1, mu1, sigma1.copy()) / np.trace(sigma1):+.3e}   (relative to the trace)')


if __name__ == '__main__':
    main()
