"""The one network loader used by every command-line tool.

Accepts EDM network pickles (read without running the code stored in them, unless code
execution is allowed explicitly) and this toolkit's weights-only files.
"""

import io
import os
import pickle
import sys

import torch

import dnnlib
from safeload import unpickle as safe_unpickle, weights

ALLOW_CODE_ENV = 'EDMKIT_ALLOW_PICKLE_CODE'


class NetworkLoadError(Exception):
    """A network could not be loaded; the message is one line saying what and why."""


def pickle_code_allowed(flag=None) -> bool:
    """The --allow-pickle-code flag if given, else the EDMKIT_ALLOW_PICKLE_CODE variable."""
    if flag is not None:
        return bool(flag)
    return os.environ.get(ALLOW_CODE_ENV, '').strip().lower() in ('1', 'true', 'yes', 'on')


def load_network_pickle(path_or_url, verbose=False, allow_pickle_code=None):
    """Return what an EDM network pickle or weights-only file holds (normally a dict with 'ema').

    By default no code from the file runs: persistent classes are rebuilt from this
    toolkit's own implementations. allow_pickle_code=True restores EDM's behaviour of
    executing the source stored in the pickle (for pickles with custom classes).
    """
    try:
        with dnnlib.util.open_url(path_or_url, verbose=verbose) as f:
            data = f.read()
    except dnnlib.util.OpenURLError as err:
        raise NetworkLoadError(f'cannot read network: {err}') from None
    except OSError as err:
        raise NetworkLoadError(f'cannot read network {path_or_url}: {err.strerror or err}') from None
    if data[:4] == weights.ZIP_MAGIC:
        try:
            return _checked(weights.load_weights(data), path_or_url)
        except weights.WeightsFormatError as err:
            raise NetworkLoadError(f'cannot load network {path_or_url}: {err}') from None
    if pickle_code_allowed(allow_pickle_code):
        print(f'warning: running the code stored in {path_or_url} (pickle code execution is allowed)', file=sys.stderr)
        try:
            safe_unpickle.scan(data)  # the opcode limits hold even when the file's code may run
            return pickle.load(io.BytesIO(data))
        except safe_unpickle.BadPickleError as err:
            raise NetworkLoadError(f'cannot load network {path_or_url}: {err}') from None
        except Exception as err:  # the user let the file run its code: report whatever it raised in one line
            raise NetworkLoadError(f'cannot load network {path_or_url}: {type(err).__name__}: '
                                   f'{safe_unpickle.one_line(err)}') from None
    try:
        return _checked(safe_unpickle.safe_loads(data), path_or_url)
    except safe_unpickle.UnsafePickleError as err:
        raise NetworkLoadError(f'refusing to load {path_or_url}: {err}; if you trust this file, '
                               f'pass --allow-pickle-code or set {ALLOW_CODE_ENV}=1') from None
    except safe_unpickle.BadPickleError as err:
        raise NetworkLoadError(f'cannot load network {path_or_url}: {err}') from None


def _checked(data, path_or_url):
    """Refuse a loaded snapshot whose network is not one of the toolkit's denoisers."""
    net = data.get('ema') if isinstance(data, dict) else data
    if isinstance(net, torch.nn.Module) and not safe_unpickle.is_network(net):
        names = ', '.join(cls.__name__ for cls in safe_unpickle.network_classes())
        raise NetworkLoadError(f'refusing to load {path_or_url}: its network is a {type(net).__name__}, not one of '
                               f'this toolkit\'s networks ({names})')
    if isinstance(data, dict) and data.get('ema') is not None and not isinstance(net, torch.nn.Module):
        raise NetworkLoadError(f'refusing to load {path_or_url}: its "ema" is a {type(net).__name__}, not a network')
    return data


def network_from_pickle_data(data, path_or_url='network'):
    """Pick the EMA denoiser out of what an EDM pickle holds (a dict with 'ema', or a module)."""
    if isinstance(data, dict) and isinstance(data.get('ema'), torch.nn.Module):
        return data['ema']
    if isinstance(data, torch.nn.Module):
        return data
    found = f'keys {sorted(map(str, data))}' if isinstance(data, dict) else type(data).__name__
    raise NetworkLoadError(f'{path_or_url} holds no network (found {found}, expected a dict with "ema")')


def load_network(path_or_url, device=None, verbose=False, allow_pickle_code=None):
    """Return the EMA denoiser of an EDM pickle, in eval mode, without gradients, on `device`.

    fp16 networks run in fp32 on the CPU: EDM's preconditioners only use fp16 on CUDA.
    """
    device = torch.device('cpu') if device is None else torch.device(device)
    net = network_from_pickle_data(load_network_pickle(path_or_url, verbose=verbose, allow_pickle_code=allow_pickle_code), path_or_url)
    net = net.eval().requires_grad_(False).to(device)
    return net
