"""Pickles that carry the source code of their classes, in NVIDIA EDM's format.

A class decorated with `persistent_class` pickles as a call to
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, where `meta` holds the full
source of the module that defined the class. Loading executes that source in a fresh
module, so a pickle keeps working after the code on disk has changed. EDM's public
pickles use exactly this layout (format version 6), and pickles written here load in EDM.

Executing stored source runs whatever code a pickle contains: only load pickles you trust,
or use the restricted loader of this toolkit, which rebuilds known classes instead.
"""

import contextlib
import copy
import inspect
import io
import pickle
import sys
import types
import uuid

import dnnlib

_version = 6                    # EDM's format version; stored in every pickle.
_decorators = set()             # The generated persistent classes.
_import_hooks = []              # Functions meta -> meta run before reconstructing.
_src_of_module = dict()         # module -> source text
_module_of_src = dict()         # source text -> module
_rebuilding = [0]               # > 0 while objects are rebuilt from arguments read from a file


@contextlib.contextmanager
def rebuilding_from_file():
    """Within this context, constructors skip the construction-time pickle check: arguments
    read from a pickle are pickleable by construction, and the check pickles each module's whole
    state, which costs more than building the network."""
    _rebuilding[0] += 1
    try:
        yield
    finally:
        _rebuilding[0] -= 1

#----------------------------------------------------------------------------


def _module_source(module: types.ModuleType) -> str:
    src = _src_of_module.get(module)
    if src is None:
        src = inspect.getsource(module)
        _src_of_module[module] = src
        _module_of_src[src] = module
    return src


def _module_from_source(src: str) -> types.ModuleType:
    """Return the module built from `src`, executing it once per distinct source text."""
    module = _module_of_src.get(src)
    if module is None:
        module = types.ModuleType('_imported_module_' + uuid.uuid4().hex)
        sys.modules[module.__name__] = module
        _src_of_module[module] = src
        _module_of_src[src] = module
        exec(compile(src, f'<pickled source of {module.__name__}>', 'exec'), module.__dict__)
    return module


def _assert_cheaply_pickleable(obj) -> None:
    """Fail at construction time, not at save time, if the init args cannot be pickled."""
    def strip(value):
        if isinstance(value, (list, tuple, set)):
            return [strip(v) for v in value]
        if isinstance(value, dict):
            return [[strip(k), strip(v)] for k, v in value.items()]
        if value is None or isinstance(value, (str, bytes, bytearray, int, float, bool)):
            return None
        if is_persistent(value):
            return None
        name = f'{type(value).__module__}.{type(value).__name__}'
        if name in ('numpy.ndarray', 'torch.Tensor', 'torch.nn.parameter.Parameter'):
            return None
        return value
    pickle.dump(strip(obj), io.BytesIO())

#----------------------------------------------------------------------------


def persistent_class(orig_class):
    """Class decorator: instances pickle together with the source of the defining module.

    The constructor arguments are recorded as `obj.init_args` / `obj.init_kwargs` (set
    `self._record_init_args = False` in the constructor to skip that). Classes of the same
    module that the decorated class uses must be decorated too.
    """
    assert isinstance(orig_class, type)
    if is_persistent(orig_class):
        return orig_class
    module = sys.modules[orig_class.__module__]
    module_src = _module_source(module)
    class_name = orig_class.__name__

    class Persistent(orig_class):
        _orig_module_src = module_src
        _orig_class_name = class_name

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            keep = getattr(self, '_record_init_args', True)
            self._init_args = copy.deepcopy(args) if keep else None
            self._init_kwargs = copy.deepcopy(kwargs) if keep else None
            if not _rebuilding[0]:
                _assert_cheaply_pickleable(self.__reduce__())

        @property
        def init_args(self):
            assert self._init_args is not None, 'constructor arguments were not recorded'
            return copy.deepcopy(self._init_args)

        @property
        def init_kwargs(self):
            assert self._init_kwargs is not None, 'constructor arguments were not recorded'
            return dnnlib.EasyDict(copy.deepcopy(self._init_kwargs))

        def __reduce__(self):
            reduced = list(super().__reduce__())
            reduced += [None] * (3 - len(reduced))
            if reduced[0] is not _reconstruct_persistent_obj:
                meta = dict(type='class', version=_version, module_src=self._orig_module_src,
                            class_name=self._orig_class_name, state=reduced[2])
                reduced[0:3] = [_reconstruct_persistent_obj, (meta,), None]
            return tuple(reduced)

    Persistent.__name__ = class_name
    Persistent.__qualname__ = orig_class.__qualname__
    Persistent.__module__ = orig_class.__module__
    Persistent.__doc__ = orig_class.__doc__
    _decorators.add(Persistent)
    return Persistent


def is_persistent(obj) -> bool:
    """True if `obj` is a persistent class or an instance of one."""
    try:
        if obj in _decorators:
            return True
    except TypeError:
        pass
    return type(obj) in _decorators


def import_hook(hook):
    """Register `hook(meta) -> meta`, called on every persistent object being unpickled.

    `meta` is an EasyDict with type, version, module_src, class_name and state; a hook may
    patch module_src, e.g. to adapt old pickles to a changed API.
    """
    assert callable(hook)
    _import_hooks.append(hook)
    return hook


def _reconstruct_persistent_obj(meta):
    """Called by pickle to rebuild a persistent object from its stored source and state."""
    meta = dnnlib.EasyDict(meta)
    meta.state = dnnlib.EasyDict(meta.state)
    for hook in _import_hooks:
        meta = hook(meta)
        assert meta is not None, 'import hooks must return meta'
    if meta.version != _version:
        raise pickle.UnpicklingError(f'unsupported persistence format version {meta.version} (expected {_version})')
    if meta.type != 'class':
        raise pickle.UnpicklingError(f'unsupported persistent object type "{meta.type}"')
    module = _module_from_source(meta.module_src)
    cls = persistent_class(module.__dict__[meta.class_name])
    obj = cls.__new__(cls)
    if callable(getattr(obj, '__setstate__', None)):
        obj.__setstate__(meta.state)
    else:
        obj.__dict__.update(meta.state)
    return obj
