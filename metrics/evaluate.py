"""FID (and KID, Inception Score, precision/recall) of an image folder against reference statistics."""

import os

import numpy as np

import dnnlib
from torch_utils import distributed as dist

from .detector import INCEPTION_URL, MetricError, load_detector
from .features import compute_feature_stats, leader_first, open_images
from .frechet import frechet_distance
from .inception_score import inception_score
from .kid import kernel_inception_distance
from .precision_recall import precision_recall
from .reference import load_reference, save_reference

METRICS = ('fid', 'kid', 'is', 'pr')


def _feature_pass(path, num_expected, seed, detector_url, device, verbose, **stats_kwargs):
    """Open the images (checking their count), load the detector and run compute_feature_stats."""
    dataset = open_images(path, max_size=num_expected, seed=seed)
    if num_expected is not None and len(dataset) < num_expected:
        raise MetricError(f'{path}: found {len(dataset)} images, but {num_expected} are needed (--num)')
    if len(dataset) < 2:
        raise MetricError(f'{path}: found {len(dataset)} image, but statistics need at least 2')
    leader = verbose and dist.get_rank() == 0
    if leader:
        print(f'Loading detector from "{detector_url}"...')
    detector = leader_first(lambda: load_detector(detector_url, device=device, verbose=leader))
    if leader:
        print(f'Calculating features of {len(dataset)} images from "{path}"...')
    return compute_feature_stats(dataset, detector, image_path=path, device=device, verbose=verbose, **stats_kwargs)


def _subset(feats, size, seed):
    if feats.shape[0] <= size:
        return feats
    return feats[np.sort(np.random.RandomState(seed).choice(feats.shape[0], size, replace=False))]


def calc_metrics(image_path, ref_path, metrics=('fid',), num_expected=50000, seed=0, max_batch_size=64,
                 detector_url=INCEPTION_URL, num_workers=3, device=None, verbose=True):
    """Compute the asked metrics of the images at image_path against the reference at ref_path.

    Returns EasyDict(results {name: float}, skipped {metric: reason}, num_images, seconds) on rank 0
    and None on other ranks. Result names: fid, kid, is_mean, is_std, precision, recall.
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise MetricError(f'unknown metric {unknown[0]!r}; choose from {", ".join(METRICS)}')
    device = dist.device() if device is None else device
    leader = verbose and dist.get_rank() == 0

    if leader:
        print(f'Loading reference statistics from "{ref_path}"...')
    ref = leader_first(lambda: load_reference(ref_path, verbose=leader))
    need_feats = 'kid' in metrics or 'pr' in metrics
    if need_feats and 'features' not in ref:
        raise MetricError(f'{ref_path} holds mu and sigma only; KID and precision/recall also need per-image features (fid.py ref --features=N)')
    stats = _feature_pass(image_path, num_expected, seed, detector_url, device, verbose, max_batch_size=max_batch_size,
                          num_workers=num_workers, keep_features=need_feats, keep_probs='is' in metrics,
                          expected_dim=ref['mu'].shape[0])
    if dist.get_rank() != 0:
        return None

    results, skipped = dict(), dict()
    if 'fid' in metrics:
        results['fid'] = frechet_distance(stats.mu, stats.sigma, ref['mu'], ref['sigma'])
    if 'kid' in metrics:
        results['kid'] = kernel_inception_distance(stats.features, ref['features'], seed=seed)
    if 'is' in metrics:
        if stats.probs is None:
            skipped['is'] = stats.probs_skipped
        elif stats.num_images < 10:
            skipped['is'] = f'needs at least 10 images, got {stats.num_images}'
        else:
            results['is_mean'], results['is_std'] = inception_score(stats.probs)
    if 'pr' in metrics:
        size = min(stats.features.shape[0], ref['features'].shape[0])
        if size <= 3:
            skipped['pr'] = f'needs more than 3 features in each set, got {size}'
        else:
            real, gen = _subset(ref['features'], size, seed), _subset(stats.features, size, seed)
            results['precision'], results['recall'] = precision_recall(real, gen, device=device)
    return dnnlib.util.EasyDict(results=results, skipped=skipped, num_images=stats.num_images, seconds=stats.seconds)


def calc_reference(dataset_path, dest_path, max_batch_size=64, detector_url=INCEPTION_URL, keep_features=0,
                   num_workers=3, device=None, verbose=True):
    """Write reference statistics of every image at dataset_path to dest_path (.npz: mu, sigma[, features]).

    keep_features > 0 also stores that many per-image features (a seeded random subset), which
    KID and precision/recall need. Returns the path written on rank 0, None on other ranks.
    """
    if os.path.isdir(dest_path):
        raise MetricError(f'{dest_path} is a folder; --dest must name an .npz file')
    device = dist.device() if device is None else device
    stats = _feature_pass(dataset_path, None, 0, detector_url, device, verbose, max_batch_size=max_batch_size,
                          num_workers=num_workers, keep_features=keep_features > 0)
    path = None
    if dist.get_rank() == 0:
        features = _subset(stats.features, keep_features, 0) if keep_features > 0 else None
        try:
            path = save_reference(dest_path, stats.mu, stats.sigma, features)
        except OSError as err:
            raise MetricError(f'cannot write {dest_path}: {err.strerror or err}') from None
    dist.barrier()
    return path
