"""Load EDM-format pickles without executing any code stored in them.

An EDM pickle stores the Python source of each network class and, loaded with `pickle`,
runs it. Here the unpickler resolves only an allow-list of globals (tensor rebuild
functions, whose storages are read with `torch.load(weights_only=True)`, standard torch.nn
containers and layers, EasyDict, plain containers). Each persistent object is recorded as
(class name, constructor arguments, state) and rebuilt afterwards from this toolkit's own
class of that name, with the stored constructor arguments; its stored tensors are then
loaded with strict key matching. Everything else is refused with one line naming it.
"""

import collections
import io
import pickle

import numpy as np
import torch

import dnnlib


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle needs something outside the allow-list; the message names it."""


class _StoredObject:
    """A persistent object as the pickle describes it, before it is rebuilt."""

    __slots__ = ('class_name', 'init_args', 'init_kwargs', 'state')

    def __init__(self, class_name, init_args, init_kwargs, state):
        self.class_name = class_name
        self.init_args = init_args
        self.init_kwargs = init_kwargs
        self.state = state

#----------------------------------------------------------------------------
# The allow-list.


def _record_persistent_obj(meta):
    """Stands in for torch_utils.persistence._reconstruct_persistent_obj: keeps, never runs."""
    if not isinstance(meta, dict) or meta.get('type') != 'class' or not isinstance(meta.get('class_name'), str):
        raise UnsafePickleError('malformed persistent object record')
    if meta.get('version') != 6:
        raise UnsafePickleError(f'unsupported persistence format version {meta.get("version")!r}')
    state = meta.get('state')
    if not isinstance(state, dict):
        raise UnsafePickleError(f'persistent object "{meta["class_name"]}" has no state dict')
    init_args = state.get('_init_args')
    init_kwargs = state.get('_init_kwargs')
    if init_args is None or init_kwargs is None:
        raise UnsafePickleError(f'persistent object "{meta["class_name"]}" did not record its constructor arguments')
    return _StoredObject(meta['class_name'], tuple(init_args), dict(init_kwargs), state)


def _load_storage_bytes(data):
    """Stands in for torch.storage._load_from_bytes, reading with weights_only=True."""
    return torch.load(io.BytesIO(data), weights_only=True, map_location='cpu')


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in 'biufc?':
        raise UnsafePickleError(f'numpy scalar of dtype {dtype!r} is not allowed')
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise UnsafePickleError('malformed numpy scalar')
    return np.frombuffer(data, dtype=dtype)[0]


def _numpy_dtype(name, align=False, copy=False):
    dtype = np.dtype(name)
    if dtype.kind not in 'biufc?':
        raise UnsafePickleError(f'numpy dtype {name!r} is not allowed')
    return dtype


_TORCH_NN_CLASSES = {
    'ModuleList', 'ModuleDict', 'Sequential', 'ParameterList', 'ParameterDict', 'Identity',
    'Linear', 'Conv2d', 'GroupNorm', 'LayerNorm', 'Embedding', 'Dropout',
    'SiLU', 'ReLU', 'GELU', 'Sigmoid', 'Tanh', 'Softmax',
}

_ALLOWED = {
    ('torch_utils.persistence', '_reconstruct_persistent_obj'): _record_persistent_obj,
    ('dnnlib.util', 'EasyDict'): dnnlib.EasyDict,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('builtins', 'slice'): slice,
    ('builtins', 'complex'): complex,
    ('builtins', 'bytearray'): bytearray,
    ('torch._utils', '_rebuild_tensor_v2'): torch._utils._rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): torch._utils._rebuild_parameter,
    ('torch.storage', '_load_from_bytes'): _load_storage_bytes,
    ('torch', 'Size'): torch.Size,
    ('torch', 'device'): torch.device,
    ('numpy._core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy.core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy', 'dtype'): _numpy_dtype,
}
for _name in ('float16', 'bfloat16', 'float32', 'float64', 'int8', 'int16', 'int32', 'int64', 'uint8', 'bool'):
    _ALLOWED[('torch', _name)] = getattr(torch, _name)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        value = _ALLOWED.get((module, name))
        if value is not None:
            return value
        if module.startswith('torch.nn.modules.') and name in _TORCH_NN_CLASSES:
            return getattr(torch.nn, name)
        raise UnsafePickleError(f'refused global "{module}.{name}" (not on the allow-list)')

    def persistent_load(self, pid):
        raise UnsafePickleError('refused persistent id (not an EDM pickle)')

#----------------------------------------------------------------------------
# Rebuilding persistent objects from this toolkit's classes.


def known_classes():
    """Return {class name: class} for every persistent class this toolkit defines."""
    from torch_utils import persistence
    import importlib
    classes = dict()
    for module_name in ('training.networks', 'training.loss', 'training.augment'):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name, value in vars(module).items():
            if isinstance(value, type) and persistence.is_persistent(value):
                classes[name] = value
    return classes


def _stored_tensors(node, prefix, out):
    """Collect the state_dict entries of a stored module tree into `out`."""
    if isinstance(node, _StoredObject):
        state = node.state
    elif isinstance(node, torch.nn.Module):
        state = node.__dict__
    else:
        raise UnsafePickleError(f'unexpected {type(node).__name__} among submodules of a network')
    skip = state.get('_non_persistent_buffers_set', set())
    for name, value in state.get('_parameters', {}).items():
        if value is not None:
            out[prefix + name] = value
    for name, value in state.get('_buffers', {}).items():
        if value is not None and name not in skip:
            out[prefix + name] = value
    for name, child in state.get('_modules', {}).items():
        if child is not None:
            _stored_tensors(child, f'{prefix}{name}.', out)
    return out


def _rebuild(stored, classes):
    cls = classes.get(stored.class_name)
    if cls is None:
        raise UnsafePickleError(f'refused persistent class "{stored.class_name}" (not a class of this toolkit)')
    args = _materialize(stored.init_args, classes)
    kwargs = _materialize(stored.init_kwargs, classes)
    try:
        obj = cls(*args, **kwargs)
    except Exception as err:
        raise UnsafePickleError(f'cannot build {stored.class_name} from its stored arguments: {err}') from None
    if isinstance(obj, torch.nn.Module):
        tensors = _stored_tensors(stored, '', dict())
        result = obj.load_state_dict(tensors, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise UnsafePickleError(f'stored weights do not match {stored.class_name}: missing {result.missing_keys[:3]}, '
                                    f'unexpected {result.unexpected_keys[:3]}')
        obj.train(bool(stored.state.get('training', True)))
    return obj


def _materialize(value, classes):
    """Replace every stored persistent object inside plain containers by its rebuilt object."""
    if isinstance(value, _StoredObject):
        return _rebuild(value, classes)
    if isinstance(value, dict):
        out = type(value)() if type(value) in (dict, dnnlib.EasyDict, collections.OrderedDict) else dict()
        for k, v in value.items():
            out[k] = _materialize(v, classes)
        return out
    if isinstance(value, (list, tuple)):
        items = [_materialize(v, classes) for v in value]
        return items if isinstance(value, list) else tuple(items)
    return value


def safe_loads(data: bytes):
    """Unpickle an EDM-format pickle from bytes without executing stored code."""
    raw = _RestrictedUnpickler(io.BytesIO(data)).load()
    return _materialize(raw, known_classes())
