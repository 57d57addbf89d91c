"""A weights-only file format for EDM-style snapshots, loadable with torch's weights_only=True.

The file is `torch.save` of a plain dict:
    format:  'edmkit-weights/1'
    config:  a JSON string {key: {"class_name", "init_args", "init_kwargs"} or plain JSON data}
    tensors: {key: state_dict} for every key whose object is a torch module
For an EDM snapshot the keys are ema, loss_fn, augment_pipe and dataset_kwargs. Loading
rebuilds each object from this toolkit's class of that name; nothing in the file is run.
"""

import io
import json

import numpy as np
import torch

import dnnlib
from torch_utils import persistence

FORMAT = 'edmkit-weights/1'
ZIP_MAGIC = b'PK\x03\x04'


class WeightsFormatError(ValueError):
    """The file is not a valid weights-only file; the message says why."""


def _to_json_value(value, where):
    if isinstance(value, (np.generic,)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_to_json_value(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json_value(v, where) for k, v in value.items()}
    raise WeightsFormatError(f'{where}: {type(value).__name__} cannot be stored in the weights-only format')


def _describe(obj, key):
    """Split one snapshot entry into its JSON config and its tensors (or None)."""
    if obj is None or not persistence.is_persistent(obj):
        return dict(data=_to_json_value(obj, key)), None
    config = dict(class_name=type(obj).__name__,
                  init_args=_to_json_value(list(obj.init_args), key),
                  init_kwargs=_to_json_value(dict(obj.init_kwargs), key))
    tensors = obj.state_dict() if isinstance(obj, torch.nn.Module) else None
    return config, tensors


def save_weights(data, f):
    """Write `data` (a dict like an EDM snapshot, or a single network) to a file object."""
    if not isinstance(data, dict):
        data = dict(ema=data)
    config, tensors = dict(), dict()
    for key, obj in data.items():
        config[key], state = _describe(obj, key)
        if state is not None:
            tensors[key] = {name: t.detach().cpu().contiguous() for name, t in state.items()}
    torch.save(dict(format=FORMAT, config=json.dumps(config), tensors=tensors), f)


def load_weights(data: bytes):
    """Rebuild the dict stored by save_weights() from the file's bytes; WeightsFormatError (one
    line) for any file that is not a valid weights-only file. Nothing in the file runs, and
    loading is bounded by the file's size as for pickles (safeload/unpickle.py)."""
    from safeload import unpickle as safe_unpickle
    try:
        payload = safe_unpickle.load_torch_archive(data)
    except (safe_unpickle.BadPickleError, safe_unpickle.UnsafePickleError) as err:
        raise WeightsFormatError(f'not a readable weights file ({err})') from None
    if isinstance(payload, dict) and 'time_embed.0.weight' in payload and 'format' not in payload:
        raise WeightsFormatError('this is a guided-diffusion (ADM) checkpoint: convert it with convert.py --adm-flags '
                                 'or --adm-preset (docs/adm.md), or sample it with image_sample.py')
    first = payload[0] if isinstance(payload, list) and payload else payload
    if isinstance(first, dict) and 'format' not in first and any(
            name in first for name in ('temb.dense.0.weight', 'all_modules.0.weight', 'all_modules.1.weight')):
        raise WeightsFormatError('this looks like a TS-DPM checkpoint: convert it with convert.py --tsdpm-config '
                                 '(its config yml)')
    if not isinstance(payload, dict) or payload.get('format') != FORMAT:
        raise WeightsFormatError(f'not an {FORMAT} file')
    if not isinstance(payload.get('config'), str):
        raise WeightsFormatError('"config" is missing or not a string')
    try:
        config = json.loads(payload['config'])
    except ValueError as err:
        raise WeightsFormatError(f'"config" is not JSON ({err})') from None
    tensors = payload.get('tensors', dict())
    if not isinstance(config, dict) or not all(isinstance(entry, dict) for entry in config.values()):
        raise WeightsFormatError('"config" must map each key to an object')
    if not isinstance(tensors, dict) or not all(isinstance(state, dict) for state in tensors.values()):
        raise WeightsFormatError('"tensors" must map each key to a dict of tensors')
    for key, state in tensors.items():
        if key not in config or 'class_name' not in config[key]:
            raise WeightsFormatError(f'"tensors" has an entry "{key}" that no configured class takes')
        for name, value in state.items():
            if not isinstance(name, str) or not isinstance(value, torch.Tensor):
                raise WeightsFormatError(f'tensor "{key}.{name}" is not a tensor')
    classes = safe_unpickle.known_classes()
    out = dict()
    for key, entry in config.items():
        if 'class_name' not in entry:
            if set(entry) != {'data'}:
                raise WeightsFormatError(f'config entry "{key}" has neither "class_name" nor "data"')
            value = entry['data']
            out[key] = dnnlib.EasyDict(value) if isinstance(value, dict) else value
            continue
        name, args, kwargs = entry['class_name'], entry.get('init_args', []), entry.get('init_kwargs', dict())
        if not isinstance(name, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
            raise WeightsFormatError(f'config entry "{key}": class_name must be a string, init_args a list and '
                                     'init_kwargs an object')
        cls = classes.get(name)
        if cls is None:
            raise WeightsFormatError(f'unknown class "{name}" for "{key}"')
        try:
            obj = safe_unpickle.build_object(cls, args, kwargs, tensors.get(key, dict()), max_bytes=len(data))
        except safe_unpickle.BadPickleError as err:
            raise WeightsFormatError(f'"{key}": {err}') from None
        if isinstance(obj, torch.nn.Module):
            obj.eval()
        out[key] = obj
    return out
