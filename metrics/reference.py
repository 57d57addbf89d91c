"""Reference files for --ref: statistics (.npz with `mu` [D] and `sigma` [D, D], as EDM writes
them) or images (guided-diffusion's reference batches: uint8 `arr_0` [N, H, W, C], which
OpenAI's files pair with their own `mu`/`sigma` of the whole dataset).

Statistics of reference images are computed with the detector in use and cached under
dnnlib's cache folder (`fid-refs/`), keyed by the SHA-256 of the file and of the detector, so
that only the first run with a given file and detector pays for the feature pass.
"""

import hashlib
import os
import sys

import numpy as np

import dnnlib
from torch_utils import distributed as dist

from safeload.npz import inspect_npz, read_array
from training.dataset import NpzImageDataset

from .detector import INCEPTION_URL, MetricError, as_metric_error
from .features import MAX_FEATURE_DIM, broadcast, compute_feature_stats, leader_first

STATS_SOURCES = ('auto', 'stored', 'images')
CACHE_VERSION = 'edmkit-fid-ref-cache/1'


class ReferenceFile:
    """What a --ref file holds, read from its array headers only."""

    def __init__(self, label, path, arrays):
        self.label = label      # as the user gave it (path or URL)
        self.path = path        # local file (a URL's cached download)
        self.arrays = arrays    # {name: npz.NpzArray}
        self.has_stats = 'mu' in arrays and 'sigma' in arrays
        self.has_images = 'arr_0' in arrays

    def names(self):
        return ', '.join(sorted(self.arrays)) or 'nothing'


def inspect_reference(path_or_url, verbose=False):
    """Return a ReferenceFile of a .npz path or URL (downloaded into the cache), checking its headers."""
    try:
        path = dnnlib.util.open_url(path_or_url, verbose=verbose, return_filename=True)
    except OSError as err:
        raise MetricError(f'cannot read reference statistics: {err}') from None
    ref = ReferenceFile(path_or_url, path, as_metric_error(inspect_npz, path, label=path_or_url))
    if not ref.has_stats and not ref.has_images:
        missing = [key for key in ('mu', 'sigma') if key not in ref.arrays]
        raise MetricError(f'{path_or_url}: no {" or ".join(missing)} array and no arr_0 images (found: {ref.names()})')
    return ref


def choose_source(ref, mode='auto', detector_url=INCEPTION_URL):
    """Return 'stored' (the file's mu/sigma) or 'images' (statistics of its arr_0 with the detector).

    auto: a file with only one of them uses it. A file with both (OpenAI's reference batches,
    whose mu/sigma are Inception statistics of the whole dataset) uses the stored statistics with
    NVIDIA's Inception detector, as guided-diffusion's evaluator does, and the images otherwise.
    """
    if mode not in STATS_SOURCES:
        raise MetricError(f'unknown reference statistics source {mode!r}; choose from {", ".join(STATS_SOURCES)}')
    if mode == 'stored' and not ref.has_stats:
        raise MetricError(f'{ref.label}: no stored mu and sigma (found: {ref.names()}); use --ref-stats=images or auto')
    if mode == 'images' and not ref.has_images:
        raise MetricError(f'{ref.label}: no arr_0 images to compute statistics from (found: {ref.names()})')
    if mode != 'auto':
        return mode
    if ref.has_stats and ref.has_images:
        return 'stored' if detector_url == INCEPTION_URL else 'images'
    return 'stored' if ref.has_stats else 'images'

#----------------------------------------------------------------------------
# Stored statistics.


def _read_checked(ref, name, shape):
    """Read array `name` of a ReferenceFile as float64 [shape] (None entries: any size), or raise MetricError."""
    array = ref.arrays[name]
    if array.dtype.kind not in 'fiu' or len(array.shape) != len(shape) or \
            any(want is not None and got != want for got, want in zip(array.shape, shape)):
        expected = 'x'.join('N' if want is None else str(want) for want in shape)
        raise MetricError(f'{ref.label}: {name} is {array.describe()}; expected real numbers of shape [{expected.replace("x", ", ")}]')
    values = as_metric_error(read_array, ref.path, array, ref.label)
    if not np.isfinite(values).all():
        raise MetricError(f'{ref.label}: {name} holds NaN or infinite values')
    return values


def load_stats(ref, features=False, pr_features=False):
    """Return dict(mu, sigma[, features][, pr_features]) stored in a ReferenceFile, checked.

    features / pr_features: also read those arrays when the file has them.
    """
    missing = [key for key in ('mu', 'sigma') if key not in ref.arrays]
    if missing:
        raise MetricError(f'{ref.label}: no {" or ".join(missing)} array (found: {ref.names()})')
    mu_array, sigma_array = ref.arrays['mu'], ref.arrays['sigma']
    dim = mu_array.shape[0] if len(mu_array.shape) == 1 else None
    if dim is not None and dim > MAX_FEATURE_DIM:
        raise MetricError(f'{ref.label}: mu has {dim} features; at most {MAX_FEATURE_DIM} are supported '
                          '(metrics/features.py MAX_FEATURE_DIM)')
    if dim is None or sigma_array.shape != (dim, dim):
        raise MetricError(f'{ref.label}: mu has shape {list(mu_array.shape)} and sigma {list(sigma_array.shape)}; expected [D] and [D, D]')
    out = dict(mu=_read_checked(ref, 'mu', [dim]).astype(np.float64), sigma=_read_checked(ref, 'sigma', [dim, dim]).astype(np.float64))
    for name, wanted in (('features', features), ('pr_features', pr_features)):
        if wanted and name in ref.arrays:
            width = dim if name == 'features' else None
            array = ref.arrays[name]
            if name == 'features' and (len(array.shape) != 2 or array.shape[1] != dim):
                raise MetricError(f'{ref.label}: features has shape {list(array.shape)}; expected [N, {dim}]')
            out[name] = _read_checked(ref, name, [None, width])
    return out


def load_reference(path_or_url, verbose=False):
    """Return dict(mu, sigma[, features][, pr_features]) from a statistics .npz path or URL, checked."""
    ref = inspect_reference(path_or_url, verbose=verbose)
    if not ref.has_stats and ref.has_images:
        raise MetricError(f'{path_or_url}: holds images (arr_0) but no mu and sigma statistics; '
                          f'fid.py calc computes them, or make them with fid.py ref --data={path_or_url}')
    return load_stats(ref, features=True, pr_features=True)


def reference_channels(ref):
    """Channels of the images a ReferenceFile was made from (1 or 3), or None where it does not say.

    Reference batches hold the images ([N, H, W, C]); statistics written by fid.py ref store
    image_channels beside mu and sigma (EDM reads mu and sigma only; its own files do not say).
    """
    images = ref.arrays.get('arr_0')
    if images is not None and len(images.shape) == 4:
        return int(images.shape[3])
    stored = ref.arrays.get('image_channels')
    if stored is not None and stored.shape == () and stored.dtype.kind in 'iu':
        return int(as_metric_error(read_array, ref.path, stored, ref.label))
    return None


def save_reference(path, mu, sigma, features=None, pr_features=None, image_channels=None):
    """Write reference statistics atomically; returns the path written ('.npz' appended like numpy does)."""
    path = os.fspath(path)
    if not path.endswith('.npz'):
        path += '.npz'
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    arrays = dict(mu=mu, sigma=sigma)
    if features is not None:
        arrays['features'] = features
    if pr_features is not None:
        arrays['pr_features'] = pr_features
    if image_channels is not None:
        arrays['image_channels'] = np.int64(image_channels)
    with dnnlib.util.atomic_write(path) as f:
        np.savez(f, **arrays)
    return path

#----------------------------------------------------------------------------
# Statistics of reference images, cached.


def file_digest(path, chunk=1 << 22):
    """SHA-256 hex digest of a file's content, read in chunks."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def cache_path(ref, detector_digest):
    """The cache file of ref's image statistics with the detector whose file hashes to detector_digest."""
    key = hashlib.sha256(f'{CACHE_VERSION}:{file_digest(ref.path)}:{detector_digest}'.encode()).hexdigest()[:40]
    stem = ''.join(ch if ch.isalnum() or ch in '-_' else '_' for ch in os.path.splitext(os.path.basename(ref.path))[0])[:60]
    return dnnlib.util.make_cache_dir_path('fid-refs', f'{stem}-{key}.npz')


def _read_cache(path):
    """Return dict(mu, sigma, features) from a cache file, or None if it is missing or unusable."""
    if not os.path.isfile(path):
        return None
    try:
        stats = load_stats(ReferenceFile(path, path, as_metric_error(inspect_npz, path)), features=True)
    except MetricError:
        return None
    return stats if 'features' in stats else None


def reference_from_images(ref, detector, detector_digest, device=None, verbose=True, **pass_kwargs):
    """Return (dict(mu, sigma, features) of ref's arr_0 images with `detector`, cache file path).

    The statistics are read from the cache when present, else computed by one feature pass
    (split across ranks, like the images') and cached. The dict is returned on rank 0, None elsewhere.
    """
    leader = verbose and dist.get_rank() == 0

    def lookup():
        path = cache_path(ref, detector_digest)
        return path, _read_cache(path)
    path, stats = dist.run_on_rank0(lookup, MetricError) or (None, None)
    hit = broadcast(stats is not None)
    if hit:
        if leader:
            print(f'Reference statistics of the images in "{ref.label}" from the cache ({path})')
        return stats, path
    dataset = leader_first(lambda: as_metric_error(NpzImageDataset, ref.path, name=os.path.basename(ref.label)))
    if leader:
        print(f'Calculating reference statistics of {len(dataset)} images in "{ref.label}" (cached afterwards)...')
    stats = compute_feature_stats(dataset, detector, image_path=ref.label, device=device, verbose=verbose,
                                  keep_features=True, **pass_kwargs)
    if dist.get_rank() != 0:
        return None, path
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with dnnlib.util.atomic_write(path) as f:
            np.savez(f, mu=stats.mu, sigma=stats.sigma, features=stats.features)
    except OSError as err:
        print(f'warning: cannot cache reference statistics in {path}: {err.strerror or err}', file=sys.stderr)
        path = None
    return dict(mu=stats.mu, sigma=stats.sigma, features=stats.features), path
