"""Kernel Inception Distance (Binkowski et al., "Demystifying MMD GANs", 2018)."""

import numpy as np


def kid_subsets(feats1, feats2, num_subsets=100, max_subset_size=1000, seed=0):
    """Return the unbiased MMD^2 with kernel k(x, y) = (x.y / D + 1)^3 of each random subset [num_subsets].

    As in StyleGAN3: each subset draws m = min(N1, N2, max_subset_size) rows of each set without
    replacement; here the draws come from a seeded generator so the values are reproducible.
    """
    dim = feats1.shape[1]
    m = min(feats1.shape[0], feats2.shape[0], max_subset_size)
    if m < 2:
        raise ValueError('KID needs at least 2 features in each set')
    rng = np.random.RandomState(seed)
    values = np.zeros(num_subsets)
    for i in range(num_subsets):
        x = np.asarray(feats1[rng.choice(feats1.shape[0], m, replace=False)], dtype=np.float64)
        y = np.asarray(feats2[rng.choice(feats2.shape[0], m, replace=False)], dtype=np.float64)
        k_xx = (x @ x.T / dim + 1) ** 3
        k_yy = (y @ y.T / dim + 1) ** 3
        k_xy = (x @ y.T / dim + 1) ** 3
        within = k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)
        values[i] = within / (m * (m - 1)) - 2 * k_xy.sum() / (m * m)
    return values


def kernel_inception_distance(feats1, feats2, num_subsets=100, max_subset_size=1000, seed=0):
    """Return KID: the mean over subsets of kid_subsets() (StyleGAN3's kid50k definition)."""
    return float(kid_subsets(feats1, feats2, num_subsets, max_subset_size, seed).mean())


def kernel_inception_distance_std(feats1, feats2, num_subsets=100, max_subset_size=1000, seed=0):
    """Return (KID mean, standard deviation over the subsets), the std with divisor num_subsets."""
    values = kid_subsets(feats1, feats2, num_subsets, max_subset_size, seed)
    return float(values.mean()), float(values.std())
