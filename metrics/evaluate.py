"""FID (and KID, Inception Score, precision/recall) of a set of images against a reference.

Images: a folder, a ZIP, or an .npz batch (uint8 `arr_0` [N, H, W, C], as guided-diffusion's
samplers write it). Reference: EDM-style statistics (`mu`, `sigma`[, `features`]) or a
reference batch of images (`arr_0`), see metrics/reference.py.

Definitions (see docs/fid.md):
- fid: Frechet distance of Gaussian fits to the detector features (EDM, guided-diffusion).
- kid, kid_std: StyleGAN3's kid50k, mean and standard deviation over 100 subsets of at most
  1000 features of each set.
- is_mean, is_std: StyleGAN3's is50k, class probabilities without the output bias, 10 splits.
- precision, recall: improved precision and recall (Kynkaanniemi et al. 2019) with k = 3 on all
  features of both sets, as guided-diffusion's evaluator computes them (Inception pool
  features by default; with --pr-detector=VGG16 they are StyleGAN3's pr50k3 features).
"""

import os
import sys

import numpy as np

import dnnlib
from torch_utils import distributed as dist

from .detector import INCEPTION_URL, MetricError, load_detector_and_digest
from .features import broadcast, check_channels, compute_feature_stats, leader_first, open_images
from .frechet import frechet_distance
from .inception_score import inception_score
from .kid import kernel_inception_distance_std
from .precision_recall import precision_recall
from .reference import (choose_source, inspect_reference, load_stats, reference_channels, reference_from_images,
                        save_reference)

METRICS = ('fid', 'kid', 'is', 'pr')
PR_NHOOD = 3


KID_SUBSET = 1000  # kid50k's subset size: fewer images than this per set make KID unreliable


def warn(message):
    print(f'warning: {message}', file=sys.stderr)


def _colours(channels):
    return 'RGB' if channels == 3 else ('grayscale' if channels == 1 else f'{channels}-channel')


def _warn_channels(image_path, channels, ref_path, ref_channels):
    """A warning when images and reference differ in channels (the detector sees grayscale as gray RGB)."""
    if ref_channels is not None and ref_channels != channels:
        warn(f'{image_path} holds {_colours(channels)} images but {ref_path} was made from {_colours(ref_channels)} '
             f'images; the score then also measures that difference (make the reference from images like these)')


def _load(url, device, verbose, allow_pickle_code, what='detector'):
    leader = verbose and dist.get_rank() == 0
    if leader:
        print(f'Loading {what} from "{url}"...')
    return leader_first(lambda: load_detector_and_digest(url, device=device, verbose=leader, allow_pickle_code=allow_pickle_code))


def _open_counted(path, num_expected, seed):
    """Open the images (a seeded subset of num_expected), checking their count."""
    dataset = leader_first(lambda: open_images(path, max_size=num_expected, seed=seed))
    if num_expected is not None and len(dataset) < num_expected:
        raise MetricError(f'{path}: found {len(dataset)} images, but {num_expected} are needed (--num)')
    if len(dataset) < 2:
        raise MetricError(f'{path}: found {len(dataset)} image, but statistics need at least 2')
    check_channels(dataset, path)
    return dataset


def _pass(dataset, path, detector, device, verbose, what='features', **kwargs):
    if verbose and dist.get_rank() == 0:
        print(f'Calculating {what} of {len(dataset)} images from "{path}"...')
    return compute_feature_stats(dataset, detector, image_path=path, device=device, verbose=verbose, **kwargs)


def _subset(feats, size, seed):
    if feats.shape[0] <= size:
        return feats
    return feats[np.sort(np.random.RandomState(seed).choice(feats.shape[0], size, replace=False))]


def calc_metrics(image_path, ref_path, metrics=('fid',), num_expected=50000, seed=0, max_batch_size=64,
                 detector_url=INCEPTION_URL, num_workers=3, device=None, verbose=True, pr_detector_url=None,
                 ref_stats='auto', allow_pickle_code=None):
    """Compute the asked metrics of the images at image_path against the reference at ref_path.

    pr_detector_url: detector for precision/recall (None: the main detector). ref_stats: where
    the reference mu/sigma come from ('auto', 'stored', 'images'; see reference.choose_source).
    Returns EasyDict(results {name: float}, skipped {metric: reason}, num_images, seconds,
    detectors {metric: detector URL}, reference {how the reference was used}) on rank 0 and None
    on other ranks. Result names: fid, kid, kid_std, is_mean, is_std, precision, recall.
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise MetricError(f'unknown metric {unknown[0]!r}; choose from {", ".join(METRICS)}')
    device = dist.device() if device is None else device
    leader = verbose and dist.get_rank() == 0
    pass_kwargs = dict(max_batch_size=max_batch_size, num_workers=num_workers)
    separate_pr = 'pr' in metrics and pr_detector_url is not None
    need_feats = 'kid' in metrics or ('pr' in metrics and not separate_pr)

    # Reference file (headers only), images and detector: every cheap check before any feature pass.
    if leader:
        print(f'Loading reference from "{ref_path}"...')
    ref = leader_first(lambda: inspect_reference(ref_path, verbose=leader))
    source = choose_source(ref, ref_stats, detector_url)
    features_from_images = need_feats and ref.has_images and (source == 'images' or 'features' not in ref.arrays)
    if need_feats and not features_from_images and 'features' not in ref.arrays:
        raise MetricError(f'{ref_path} holds mu and sigma only; KID and precision/recall also need per-image features '
                          f'(fid.py ref --features=N, or a reference batch of images)')
    if separate_pr and not ref.has_images and 'pr_features' not in ref.arrays:
        raise MetricError(f'{ref_path}: --pr-detector needs reference images (arr_0) or pr_features '
                          f'(fid.py ref --pr-detector=... --features=N)')
    stored = None
    if source == 'stored':
        stored = dist.run_on_rank0(lambda: load_stats(ref, features=need_feats and not features_from_images), MetricError)
    dataset = _open_counted(image_path, num_expected, seed)
    if dist.get_rank() == 0:
        _warn_channels(image_path, dataset.image_shape[0], ref_path, reference_channels(ref))
    detector, digest = _load(detector_url, device, verbose, allow_pickle_code)

    # Reference statistics: stored, or of the reference images (cached), or stored mu/sigma with image features.
    cache_files = []
    reference = stored
    if source == 'images' or features_from_images:
        from_images, cache = reference_from_images(ref, detector, digest, device=device, verbose=verbose, **pass_kwargs)
        cache_files.append(cache)
        reference = from_images if stored is None or from_images is None else dict(stored, features=from_images['features'])
    ref_dim = broadcast(None if reference is None else int(reference['mu'].shape[0]))

    stats = _pass(dataset, image_path, detector, device, verbose, keep_features=need_feats,
                  keep_probs='is' in metrics, expected_dim=ref_dim, **pass_kwargs)

    # Precision/recall with its own detector: reference and image features from it.
    pr_real = pr_gen = None
    if separate_pr:
        pr_detector, pr_digest = _load(pr_detector_url, device, verbose, allow_pickle_code, 'precision/recall detector')
        if ref.has_images:
            pr_ref, cache = reference_from_images(ref, pr_detector, pr_digest, device=device, verbose=verbose, **pass_kwargs)
            cache_files.append(cache)
            pr_real = None if pr_ref is None else pr_ref['features']
        else:
            pr_real = dist.run_on_rank0(lambda: load_stats(ref, pr_features=True)['pr_features'], MetricError)
        pr_dim = broadcast(None if pr_real is None else int(pr_real.shape[1]))
        pr_gen = _pass(dataset, image_path, pr_detector, device, verbose, 'precision/recall features',
                       keep_features=True, expected_dim=pr_dim, **pass_kwargs).features
    if dist.get_rank() != 0:
        return None
    if 'pr' in metrics and not separate_pr:
        pr_real, pr_gen = reference['features'], stats.features

    results, skipped = dict(), dict()
    if 'fid' in metrics:
        results['fid'] = frechet_distance(stats.mu, stats.sigma, reference['mu'], reference['sigma'])
    if 'kid' in metrics:
        size = min(stats.features.shape[0], reference['features'].shape[0])
        if size < KID_SUBSET:
            warn(f'KID from {size} images per set is unreliable: StyleGAN3\'s kid50k averages subsets of {KID_SUBSET} '
                 f'images of each set; its bias and kid_std grow as the sets shrink (use --num of at least {KID_SUBSET})')
        results['kid'], results['kid_std'] = kernel_inception_distance_std(stats.features, reference['features'], seed=seed)
    if 'is' in metrics:
        if stats.probs is None:
            skipped['is'] = stats.probs_skipped
        elif stats.num_images < 10:
            skipped['is'] = f'needs at least 10 images, got {stats.num_images}'
        else:
            results['is_mean'], results['is_std'] = inception_score(stats.probs)
    if 'pr' in metrics:
        size = min(pr_gen.shape[0], pr_real.shape[0])
        if size <= PR_NHOOD:
            skipped['pr'] = f'needs more than {PR_NHOOD} features in each set, got {size}'
        else:
            results['precision'], results['recall'] = precision_recall(pr_real, pr_gen, nhood_size=PR_NHOOD, device=device)
    bad = [name for name, value in results.items() if not np.isfinite(value)]
    if bad:
        raise MetricError(f'{bad[0]} came out {results[bad[0]]}: the statistics or features are degenerate')

    detectors = {name: detector_url for name in metrics}
    if separate_pr:
        detectors['pr'] = pr_detector_url
    how = dict(statistics=source, features='images' if features_from_images else ('stored' if need_feats else None),
               cache=[path for path in cache_files if path] or None)
    if ref.has_images:
        how['num_images'] = int(ref.arrays['arr_0'].shape[0])
    return dnnlib.util.EasyDict(results=results, skipped=skipped, num_images=stats.num_images, seconds=stats.seconds,
                                detectors=detectors, reference=how)


def calc_reference(dataset_path, dest_path, max_batch_size=64, detector_url=INCEPTION_URL, keep_features=0,
                   num_workers=3, device=None, verbose=True, pr_detector_url=None, allow_pickle_code=None):
    """Write reference statistics of every image at dataset_path to dest_path (.npz: mu, sigma[, features][, pr_features]).

    dataset_path: folder, ZIP or .npz batch of images. keep_features > 0 also stores that many
    per-image features (a seeded random subset), which KID and precision/recall need; with
    pr_detector_url, the same images' features from that detector as pr_features. Returns the
    path written on rank 0, None on other ranks.
    """
    if os.path.isdir(dest_path):
        raise MetricError(f'{dest_path} is a folder; --dest must name an .npz file')
    if pr_detector_url is not None and keep_features <= 0:
        raise MetricError('--pr-detector stores per-image features for precision/recall: give --features=N as well')
    device = dist.device() if device is None else device
    pass_kwargs = dict(max_batch_size=max_batch_size, num_workers=num_workers)
    dataset = _open_counted(dataset_path, None, 0)
    detector, _digest = _load(detector_url, device, verbose, allow_pickle_code)
    stats = _pass(dataset, dataset_path, detector, device, verbose, keep_features=keep_features > 0, **pass_kwargs)
    pr_features = None
    if pr_detector_url is not None:
        pr_detector, _digest = _load(pr_detector_url, device, verbose, allow_pickle_code, 'precision/recall detector')
        pr_features = _pass(dataset, dataset_path, pr_detector, device, verbose, 'precision/recall features',
                            keep_features=True, **pass_kwargs).features
    path = None
    if dist.get_rank() == 0:
        features = _subset(stats.features, keep_features, 0) if keep_features > 0 else None
        pr_features = _subset(pr_features, keep_features, 0) if pr_features is not None else None
        try:
            path = save_reference(dest_path, stats.mu, stats.sigma, features, pr_features,
                                  image_channels=dataset.image_shape[0])
        except OSError as err:
            raise MetricError(f'cannot write {dest_path}: {err.strerror or err}') from None
    dist.barrier()
    return path
