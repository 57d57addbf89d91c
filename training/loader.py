"""The one network loader used by every command-line tool."""

import io
import pickle

import torch

import dnnlib


class NetworkLoadError(Exception):
    """A network could not be loaded; the message is one line saying what and why."""


def load_network_pickle(path_or_url, verbose=False):
    """Return the object stored in an EDM network pickle (normally a dict with 'ema')."""
    try:
        with dnnlib.util.open_url(path_or_url, verbose=verbose) as f:
            data = f.read()
    except dnnlib.util.OpenURLError as err:
        raise NetworkLoadError(f'cannot read network: {err}') from None
    except OSError as err:
        raise NetworkLoadError(f'cannot read network {path_or_url}: {err.strerror or err}') from None
    try:
        return pickle.load(io.BytesIO(data))
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError, TypeError) as err:
        reason = 'file is truncated' if isinstance(err, EOFError) else f'not a network pickle ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""})'
        raise NetworkLoadError(f'cannot load network {path_or_url}: {reason}') from None
    except (ImportError, AttributeError) as err:
        raise NetworkLoadError(f'cannot load network {path_or_url}: the pickle refers to code that is not available ({err})') from None


def network_from_pickle_data(data, path_or_url='network'):
    """Pick the EMA denoiser out of what an EDM pickle holds (a dict with 'ema', or a module)."""
    if isinstance(data, dict) and isinstance(data.get('ema'), torch.nn.Module):
        return data['ema']
    if isinstance(data, torch.nn.Module):
        return data
    found = f'keys {sorted(map(str, data))}' if isinstance(data, dict) else type(data).__name__
    raise NetworkLoadError(f'{path_or_url} holds no network (found {found}, expected a dict with "ema")')


def load_network(path_or_url, device=None, verbose=False):
    """Return the EMA denoiser of an EDM pickle, in eval mode, without gradients, on `device`.

    fp16 networks run in fp32 on the CPU: EDM's preconditioners only use fp16 on CUDA.
    """
    device = torch.device('cpu') if device is None else torch.device(device)
    net = network_from_pickle_data(load_network_pickle(path_or_url, verbose=verbose), path_or_url)
    net = net.eval().requires_grad_(False).to(device)
    return net
