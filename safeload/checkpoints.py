"""State-dict checkpoints (`.pt` files of guided-diffusion and its forks), read with weights_only=True.

torch's weights_only unpickler builds tensors and plain containers only, so no code from the
file runs; this module turns its many failure modes into one line each.
"""

import torch

import dnnlib


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (one line, naming the file)."""


def read_state_dict(path_or_url):
    """The state dict in a guided-diffusion `.pt` file (path or URL), read with weights_only=True."""
    state = read_weights_only(path_or_url)
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                             for k, v in state.items()):
        raise CheckpointError(f'{path_or_url} does not hold a state dict of tensors (found {type(state).__name__})')
    return state


def read_weights_only(path_or_url):
    """Whatever a `.pt` file (path or URL) holds, read with weights_only=True (tensors and plain
    containers, e.g. an optimizer state dict)."""
    try:
        path = dnnlib.util.open_url(path_or_url, return_filename=True)
        state = torch.load(path, map_location='cpu', weights_only=True)
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
    return state
