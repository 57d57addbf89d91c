"""Reference statistics files (.npz with `mu` [D] and `sigma` [D, D], as EDM writes them)."""

import io
import os
import zipfile

import numpy as np

import dnnlib

from .detector import MetricError


def load_reference(path_or_url, verbose=False):
    """Return dict(mu, sigma[, features]) from a reference .npz path or URL, checking the shapes."""
    try:
        with dnnlib.util.open_url(path_or_url, verbose=verbose) as f:
            data = f.read()
    except OSError as err:
        raise MetricError(f'cannot read reference statistics: {err}') from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            ref = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise MetricError(f'{path_or_url}: not a .npz file of reference statistics ({type(err).__name__})') from None
    missing = [key for key in ('mu', 'sigma') if key not in ref]
    if missing:
        raise MetricError(f'{path_or_url}: no {" or ".join(missing)} array (found: {", ".join(sorted(ref)) or "nothing"})')
    mu, sigma = ref['mu'], ref['sigma']
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise MetricError(f'{path_or_url}: mu has shape {list(mu.shape)} and sigma {list(sigma.shape)}; expected [D] and [D, D]')
    out = dict(mu=mu.astype(np.float64), sigma=sigma.astype(np.float64))
    if 'features' in ref:
        feats = ref['features']
        if feats.ndim != 2 or feats.shape[1] != mu.shape[0]:
            raise MetricError(f'{path_or_url}: features has shape {list(feats.shape)}; expected [N, {mu.shape[0]}]')
        out['features'] = feats
    return out


def save_reference(path, mu, sigma, features=None):
    """Write reference statistics atomically; returns the path written ('.npz' appended like numpy does)."""
    path = os.fspath(path)
    if not path.endswith('.npz'):
        path += '.npz'
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    arrays = dict(mu=mu, sigma=sigma)
    if features is not None:
        arrays['features'] = features
    with dnnlib.util.atomic_write(path) as f:
        np.savez(f, **arrays)
    return path
