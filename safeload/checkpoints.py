"""State-dict checkpoints (`.pt` files of guided-diffusion and its forks), read with weights_only=True.

torch's weights_only unpickler builds tensors and plain containers only, so no code from the
file runs; this module turns its many failure modes into one line each.
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
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise CheckpointError(f'cannot read {label} as a PyTorch checkpoint (truncated or not a torch.save zip file)') from None
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f'refusing {label}: entry {info.filename} is compressed (torch.save stores entries '
                                  'uncompressed; a compressed one may inflate far beyond the file)')
        if info.header_offset + info.file_size > size:
            raise CheckpointError(f'refusing {label}: entry {info.filename} declares {info.file_size} bytes, past the end '
                                  f'of the {size}-byte file')


def read_state_dict(path_or_url):
    """The state dict in a guided-diffusion `.pt` file (path or URL), read with weights_only=True."""
    try:
        path = dnnlib.util.open_url(path_or_url, return_filename=True)
        check_archive(path, path_or_url)
        state = torch.load(path, map_location='cpu', weights_only=True)
    except CheckpointError:
        raise
    except OSError as err:  # OpenURLError included
        raise CheckpointError(f'cannot read {path_or_url}: {err}') from None
    except Exception as err:  # torch.load reports a bad or unsafe file in many ways
        text = str(err).strip()
        if 'weights_only' in text or 'Weights only load failed' in text:
            raise CheckpointError(f'refusing {path_or_url}: loading it would run code from the file (not a plain state dict)') from None
        if 'central directory' in text or 'zip archive' in text:
            raise CheckpointError(f'cannot read {path_or_url} as a PyTorch checkpoint (truncated or not a torch.save zip file)') from None
        first = text.splitlines()[0][:200] if text else type(err).__name__
        raise CheckpointError(f'cannot read {path_or_url} as a PyTorch checkpoint ({first})') from None
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                             for k, v in state.items()):
        raise CheckpointError(f'{path_or_url} does not hold a state dict of tensors (found {type(state).__name__})')
    return state
