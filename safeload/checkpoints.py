"""State-dict checkpoints (`.pt` files of guided-diffusion and its forks), read with weights_only=True.

torch's weights_only unpickler builds tensors and plain containers only, so no code from the
file runs; this module turns its many failure modes into one line each. `read_listed_state_dict`
also takes TS-DPM's checkpoints (a dict, or a list whose first element is the dict) and maps
their tensors from the file instead of reading them, so callers check before allocating.
"""

import os
import zipfile

import torch

import dnnlib


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (one line, naming the file)."""


def check_archive(path, label):
    """Before torch reads it: the file is a torch.save zip archive whose entries are stored
    uncompressed (as torch.save writes them) and lie inside the file, so that reading it takes
    no more memory than the file's size. A compressed entry could inflate to 1000 times its size;
    the legacy (pre-1.6) format allocates storages of the sizes its records declare."""
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        magic = f.read(4)
    if magic != b'PK\x03\x04':
        raise CheckpointError(f'cannot read {label} as a PyTorch checkpoint (not a torch.save zip archive; files in the '
                              'legacy format of torch < 1.6 are not read: load and save it again with a newer torch)')
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise CheckpointError(f'cannot read {label} as a PyTorch checkpoint (truncated or not a torch.save zip file)') from None
    with archive:
        _check_entries(archive, size, label)
        _check_pickle(archive, label)


def _check_entries(archive, size, label):
    for info in archive.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f'refusing {label}: entry {info.filename} is compressed (torch.save stores entries '
                                  'uncompressed; a compressed one may inflate far beyond the file)')
        if info.header_offset + info.file_size > size:
            raise CheckpointError(f'refusing {label}: entry {info.filename} declares {info.file_size} bytes, past the end '
                                  f'of the {size}-byte file')


MAX_PICKLE_BYTES = 64 << 20     # The pickle of a state dict with thousands of tensors takes well under 1 MB.


def _check_pickle(archive, source):
    """Refuse a torch.save archive whose pickle is oversized or fails the opcode limits of
    safeload.unpickle.scan, before torch reads it."""
    from safeload import unpickle  # pylint: disable=import-outside-toplevel
    try:
        pickles = [info for info in archive.infolist() if info.filename.endswith('/data.pkl')
                   and info.filename.count('/') == 1]
        if len(pickles) != 1:
            raise CheckpointError(f'cannot read {source} as a PyTorch checkpoint (no single data.pkl in the archive)')
        if pickles[0].file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(f'{source}: its pickle takes {pickles[0].file_size} bytes, more than the '
                                  f'{MAX_PICKLE_BYTES} a state dict needs')
        data = archive.read(pickles[0])
    except (zipfile.BadZipFile, EOFError, ValueError) as err:
        raise CheckpointError(f'cannot read {source} as a PyTorch checkpoint (truncated or not a torch.save zip '
                              f'file: {unpickle.one_line(err)})') from None
    except OSError as err:
        raise CheckpointError(f'cannot read {source}: {err}') from None
    try:
        unpickle.scan(data)
    except unpickle.BadPickleError as err:
        raise CheckpointError(f'cannot read {source} as a PyTorch checkpoint ({err})') from None



def _torch_load(path, source, **kwargs):
    """torch.load(path, weights_only=True) with its failures as one CheckpointError line."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True, **kwargs)
    except OSError as err:
        raise CheckpointError(f'cannot read {source}: {err}') from None
    except Exception as err:  # torch.load reports a bad or unsafe file in many ways
        text = str(err).strip()
        if 'weights_only' in text or 'Weights only load failed' in text:
            raise CheckpointError(f'refusing {source}: loading it would run code from the file (not a plain state dict)') from None
        if 'central directory' in text or 'zip archive' in text:
            raise CheckpointError(f'cannot read {source} as a PyTorch checkpoint (truncated or not a torch.save zip file)') from None
        first = text.splitlines()[0][:200] if text else type(err).__name__
        raise CheckpointError(f'cannot read {source} as a PyTorch checkpoint ({first})') from None


def _is_state_dict(state):
    return isinstance(state, dict) and bool(state) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                            for k, v in state.items())


def read_state_dict(path_or_url):
    """The state dict in a guided-diffusion `.pt` file (path or URL), read with weights_only=True."""
    state = read_weights_only(path_or_url)
    if not _is_state_dict(state):
        raise CheckpointError(f'{path_or_url} does not hold a state dict of tensors (found {type(state).__name__})')
    return state


def read_weights_only(path_or_url):
    """Whatever a `.pt` file (path or URL) holds, read with weights_only=True (tensors and plain
    containers, e.g. an optimizer state dict)."""
    try:
        path = dnnlib.util.open_url(path_or_url, return_filename=True)
        check_archive(path, path_or_url)
    except OSError as err:  # OpenURLError included
        raise CheckpointError(f'cannot read {path_or_url}: {err}') from None
    return _torch_load(path, path_or_url)


def read_listed_state_dict(path_or_url):
    """The state dict in a checkpoint holding a dict of tensors, or a list or tuple whose first
    element is one (TS-DPM's `ckpt[0]`), read with weights_only=True.

    A zip archive (torch.save's format) is memory-mapped: its tensors are not read until used,
    so a caller can compare names and shapes with what it needs before any tensor memory is
    allocated, and the other list elements (e.g. optimizer state) are never read."""
    try:
        path = dnnlib.util.open_url(path_or_url, return_filename=True)
        with open(path, 'rb') as f:
            magic = f.read(4)
    except OSError as err:  # OpenURLError included
        raise CheckpointError(f'cannot read {path_or_url}: {err}') from None
    if magic == b'PK\x03\x04':
        check_archive(path, path_or_url)
        state = _torch_load(path, path_or_url, mmap=True)
    else:  # torch.save's legacy format (before torch 1.6) cannot be mapped
        state = _torch_load(path, path_or_url)
    if isinstance(state, (list, tuple)) and state:
        state = state[0]
    if not _is_state_dict(state):
        raise CheckpointError(f'{path_or_url} holds neither a state dict of tensors nor a list starting with one '
                              f'(found {type(state).__name__})')
    return state
