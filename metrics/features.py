"""One pass of the detector over an image folder or ZIP: mean/covariance, and optionally all features."""

import os
import sys
import time

import numpy as np
import torch

import dnnlib
from torch_utils import distributed as dist
from training.dataset import ImageFolderDataset, NpzImageDataset

from .detector import MetricError, as_metric_error, one_line

#----------------------------------------------------------------------------
# Collective helpers: every rank sees the same outcome, so an error never leaves a rank waiting.


def leader_first(fn):
    """Run fn() on rank 0, then on the other ranks; a MetricError on rank 0 is raised everywhere."""
    return dist.leader_first(fn, MetricError)


def broadcast(obj):
    """Return rank 0's `obj` on every rank (a small picklable object)."""
    if dist.get_world_size() > 1:
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        obj = box[0]
    return obj


def _first_error_of_all_ranks(message):
    if dist.get_world_size() > 1:
        messages = [None] * dist.get_world_size()
        torch.distributed.all_gather_object(messages, message)
        message = next((m for m in messages if m is not None), None)
    if message is not None:
        raise MetricError(message)


def _all_reduce(*tensors):
    if dist.get_world_size() > 1:
        for t in tensors:
            if t is not None:
                torch.distributed.all_reduce(t)

#----------------------------------------------------------------------------
# Images.


def open_images(path, max_size=None, seed=0):
    """Return a dataset of the images at `path` (folder, ZIP, or .npz batch with arr_0), with a
    seeded random subset of at most max_size images (EDM's rule, the same for every kind)."""
    if not os.path.exists(path):
        raise MetricError(f'{path}: no such folder or file')
    if os.path.isfile(path) and path.lower().endswith('.npz'):
        return as_metric_error(NpzImageDataset, path, max_size=max_size, random_seed=seed)
    try:
        return ImageFolderDataset(path=path, max_size=max_size, random_seed=seed)
    except (IOError, ValueError) as err:
        raise MetricError(f'{path}: {str(err).splitlines()[0]}') from None


class _SafeItems(torch.utils.data.Dataset):
    """Dataset items as (index, image or None, error or None), so a bad image becomes a message, not a crash."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, idx):
        try:
            return idx, self.dataset[idx][0], None
        except Exception as err:  # decoding or shape errors of one file
            return idx, None, one_line(err)


def _image_name(dataset, idx):
    try:
        raw_idx = dataset.get_details(idx).raw_idx
        if hasattr(dataset, 'image_name'):
            return dataset.image_name(raw_idx)
        return dataset._image_fnames[raw_idx]
    except (AttributeError, IndexError, ValueError):
        return f'image #{idx}'


def _names(dataset, indices):
    """'a.png' or 'a.png .. b.png (N images)' for the images of one batch."""
    first, last = _image_name(dataset, int(indices[0])), _image_name(dataset, int(indices[-1]))
    return first if len(indices) == 1 else f'{first} .. {last} ({len(indices)} images)'


def channels_error(path, name, channels):
    return f'{path}: {name} has {channels} channels; images must be grayscale or RGB (convert RGBA and other formats first)'


def check_channels(dataset, path):
    """Raise MetricError unless the images (as the first one) are grayscale or RGB."""
    if dataset.image_shape[0] not in (1, 3):
        raise MetricError(channels_error(path, _image_name(dataset, 0), dataset.image_shape[0]))


def _collate(items):
    return items


def _to_batch(items, dataset, path):
    """Stack one batch; return (indices, uint8 NCHW tensor with 3 channels, error message or None)."""
    expected = list(dataset.image_shape)
    for idx, image, error in items:
        if error is None and list(image.shape) != expected:
            error = f'{list(image.shape)}, but {_image_name(dataset, 0)} is {expected} (CHW)'
        if error is not None:
            return None, None, f'{path}: images of different sizes or formats ({_image_name(dataset, idx)}: {error})'
        if image.shape[0] not in (1, 3):
            return None, None, channels_error(path, _image_name(dataset, idx), image.shape[0])
    images = torch.from_numpy(np.stack([image for _idx, image, _error in items]))
    if images.shape[1] == 1:
        images = images.repeat([1, 3, 1, 1])
    return torch.as_tensor([idx for idx, _image, _error in items]), images, None

#----------------------------------------------------------------------------
# Detector outputs.


MAX_FEATURE_DIM = 16384  # detector output width: sigma [D, D] float64 is 2 GiB at this width (Inception: 2048)


def _features(detector, images, where, dim=None):
    """Return (features [N, D] float64, None) or (None, why the detector output is unusable).

    `where` names the images ('path: first .. last') for the messages.
    """
    c, h, w = images.shape[1:]
    try:
        out = detector(images, return_features=True)
    except Exception as err:  # whatever the detector raises, say it in one line
        return None, f'{where}: the detector cannot take these {w}x{h} {"RGB" if c == 3 else f"{c}-channel"} images ({one_line(err)})'
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != images.shape[0]:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return None, f'{where}: the detector returned {shape} for {images.shape[0]} images; expected features [N, D]'
    if not 1 <= out.shape[1] <= MAX_FEATURE_DIM:
        return None, (f'{where}: the detector returned {out.shape[1]} features per image; at most {MAX_FEATURE_DIM} are '
                      'supported (metrics/features.py MAX_FEATURE_DIM: sigma is D x D float64)')
    if not out.is_floating_point():
        return None, f'{where}: the detector returned {out.dtype} features; expected floating-point features'
    if dim is not None and out.shape[1] != dim:
        return None, f'{where}: the detector returned {out.shape[1]} features for these images and {dim} for others'
    out = out.to(torch.float64)
    if not torch.isfinite(out).all():
        return None, f'{where}: the detector returned NaN or infinite features for these images'
    return out, None


def probe_probs(detector, images):
    """Return (number of classes, None) if detector(images, no_output_bias=True) gives class
    probabilities, as NVIDIA's Inception does, else (None, why not)."""
    try:
        out = detector(images, no_output_bias=True)
    except Exception as err:  # TorchScript raises RuntimeError for an unknown keyword, Python TypeError
        return None, f'the detector does not accept no_output_bias=True ({type(err).__name__})'
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != images.shape[0]:
        return None, 'the detector returns no [N, C] class output'
    out = out.to(torch.float64)
    if out.min() < 0 or (out.sum(1) - 1).abs().max() > 1e-3:
        return None, 'the detector class output is not probabilities (rows must be >= 0 and sum to 1)'
    return out.shape[1], None

#----------------------------------------------------------------------------


def compute_feature_stats(dataset, detector, image_path='images', max_batch_size=64, num_workers=3,
                          device=None, keep_features=False, keep_probs=False, expected_dim=None, verbose=True):
    """Run the detector over every image of `dataset` (split across torchrun ranks).

    Returns EasyDict(mu [D] float64, sigma [D, D] float64 (unbiased), num_images, features [N, D]
    float32 or None, probs [N, C] float32 or None, probs_skipped (why probs is None despite
    keep_probs, else None), seconds), identical on every rank. Features
    accumulate in float64 and are all-reduced; batches do not depend on the number of ranks.
    """
    device = dist.device() if device is None else torch.device(device)
    n = len(dataset)
    rank, world = dist.get_rank(), dist.get_world_size()
    t0 = time.time()

    # Probe with the first image: feature dimension, and class probabilities when asked for.
    _idx, probe, error = _to_batch([_SafeItems(dataset)[0]], dataset, image_path)
    if error is not None:
        raise MetricError(error)
    probe = probe.to(device)
    with torch.no_grad():
        out, error = _features(detector, probe, f'{image_path}: {_image_name(dataset, 0)}')
        if error is not None:
            raise MetricError(error)
        dim = out.shape[1]
        if expected_dim is not None and dim != expected_dim:
            raise MetricError(f'the detector gives {dim} features per image but the reference statistics have {expected_dim} (made with another detector?)')
        num_classes, probs_skipped = probe_probs(detector, probe) if keep_probs else (None, None)

    mu = torch.zeros([dim], dtype=torch.float64, device=device)
    sigma = torch.zeros([dim, dim], dtype=torch.float64, device=device)
    features = torch.zeros([n, dim], dtype=torch.float32, device=device) if keep_features else None
    probs = torch.zeros([n, num_classes], dtype=torch.float32, device=device) if num_classes else None

    num_batches = (n - 1) // max_batch_size + 1
    rank_batches = torch.arange(n).tensor_split(num_batches)[rank::world]
    loader_kwargs = dict(num_workers=num_workers)
    if num_workers > 0:
        loader_kwargs.update(prefetch_factor=2, multiprocessing_context='spawn', persistent_workers=False)
    loader = torch.utils.data.DataLoader(_SafeItems(dataset), batch_sampler=[b.tolist() for b in rank_batches],
                                         collate_fn=_collate, **loader_kwargs)

    error = None
    bar = None
    if verbose and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=len(rank_batches), unit='batch', file=sys.stderr, leave=False)
    with torch.no_grad():
        for items in loader:
            idx, images, error = _to_batch(items, dataset, image_path)
            if error is not None:
                break
            images = images.to(device)
            feats, error = _features(detector, images, f'{image_path}: {_names(dataset, idx)}', dim)
            if error is not None:
                break
            mu += feats.sum(0)
            sigma += feats.T @ feats
            if features is not None:
                features[idx.to(device)] = feats.to(torch.float32)
            if probs is not None:
                probs[idx.to(device)] = detector(images, no_output_bias=True).to(torch.float32)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    _first_error_of_all_ranks(error)

    _all_reduce(mu, sigma, features, probs)
    mu /= n
    sigma -= mu.outer(mu) * n
    sigma /= n - 1
    to_numpy = lambda t: None if t is None else t.cpu().numpy()  # noqa: E731
    return dnnlib.util.EasyDict(mu=to_numpy(mu), sigma=to_numpy(sigma), num_images=n, features=to_numpy(features),
                                probs=to_numpy(probs), probs_skipped=probs_skipped, seconds=time.time() - t0)
