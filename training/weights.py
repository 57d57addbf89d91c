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
    """Rebuild the dict stored by save_weights() from the file's bytes."""
    from training.safe_unpickle import known_classes
    try:
        payload = torch.load(io.BytesIO(data), weights_only=True, map_location='cpu')
    except Exception as err:
        raise WeightsFormatError(f'not a readable weights file ({str(err).splitlines()[0][:200]})') from None
    if not isinstance(payload, dict) or payload.get('format') != FORMAT:
        raise WeightsFormatError(f'not an {FORMAT} file')
    config = json.loads(payload['config'])
    tensors = payload.get('tensors', dict())
    classes = known_classes()
    out = dict()
    for key, entry in config.items():
        if 'class_name' not in entry:
            value = entry.get('data')
            out[key] = dnnlib.EasyDict(value) if isinstance(value, dict) else value
            continue
        cls = classes.get(entry['class_name'])
        if cls is None:
            raise WeightsFormatError(f'unknown class "{entry["class_name"]}" for "{key}"')
        obj = cls(*entry['init_args'], **entry['init_kwargs'])
        if isinstance(obj, torch.nn.Module):
            obj.load_state_dict(tensors.get(key, dict()), strict=True)
            obj.eval()
        out[key] = obj
    return out
