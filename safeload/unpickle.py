"""Load EDM-format pickles and torch archives without executing any code stored in them,
in time and memory bounded by the file's real content.

An EDM pickle stores the Python source of each network class and, loaded with `pickle`,
runs it. Here a file goes through four stages, each refusing with one line:

1. Scan: the opcodes are read with `pickletools.genops` before anything is built; at most
   MAX_OPCODES of them, and no tuple nested deeper than MAX_DEPTH (hashing one recurses in
   C with no recursion limit). Declared lengths are checked against the bytes present.
2. Unpickle: only an allow-list of globals resolves, and each resolves to an inert record
   or a checked function of this module, never to a class that could run code: persistent
   objects, torch.nn modules, EasyDicts, OrderedDicts and tensors are kept as records.
   Storages are read from the file's own bytes (legacy `torch.save` blobs inside EDM
   pickles, zip entries of torch archives); a storage or tensor larger than the bytes that
   hold it is refused.
3. Check: the object graph is walked once, without recursion: cycles, nesting deeper than
   MAX_DEPTH and more objects than the work budget are refused.
4. Rebuild: every persistent object becomes this toolkit's class of that name, built from
   the stored constructor arguments, first on the 'meta' device under a budget of torch
   calls and allocated bytes, and refused if its weights would need more bytes than the
   file holds or do not match the stored tensors key for key and shape for shape; then for
   real, with the stored tensors loaded strictly. Shared sub-objects are rebuilt once.
"""

import collections
import contextlib
import io
import math
import pickle
import pickletools
import struct
import zipfile

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

import dnnlib

MAX_OPCODES = 2_000_000         # A 1 GB EDM network pickle has about 100,000.
MAX_DEPTH = 100                 # Containers nested deeper are refused; EDM networks need about 20.
MAX_DIMS = 64                   # Tensor dimensions.
WORK_BASE = 100_000             # Object visits allowed beyond one per byte of the file.
CALLS_BASE = 20_000             # Torch calls allowed per constructor, plus one per KB of the file.
CREATED_BASE = 1 << 20          # Bytes a constructor may create on 'meta', plus 16 per byte of the file.


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle needs something outside the allow-list (only running its code would load it)."""


class BadPickleError(pickle.UnpicklingError):
    """The file is malformed, truncated, or exceeds a limit; the message says which."""


def one_line(err) -> str:
    """The first line of an exception's message (at most 200 characters), or its type."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= 200 else text[:197] + '...'

#----------------------------------------------------------------------------
# Stage 1: the opcode scan.

_TUPLE_OPS = frozenset(['TUPLE', 'TUPLE1', 'TUPLE2', 'TUPLE3', 'EMPTY_TUPLE', 'FROZENSET'])


def scan(data, start=0) -> int:
    """Check the pickle starting at data[start]; return the offset just past its STOP."""
    f = io.BytesIO(data)
    f.seek(start)
    stack, marks, memo = [], [], dict()     # stack and memo hold each item's tuple nesting depth
    count = 0
    try:
        for op, arg, _pos in pickletools.genops(f):
            count += 1
            if count > MAX_OPCODES:
                raise BadPickleError(f'more than {MAX_OPCODES} pickle opcodes')
            name = op.name
            if name == 'MARK':
                marks.append(len(stack))
            elif name in ('PUT', 'BINPUT', 'LONG_BINPUT', 'MEMOIZE'):
                if not stack:
                    raise BadPickleError('not a network pickle (memo of an empty stack)')
                memo[len(memo) if name == 'MEMOIZE' else arg] = stack[-1]
            elif name in ('GET', 'BINGET', 'LONG_BINGET'):
                if arg not in memo:
                    raise BadPickleError(f'not a network pickle (memo entry {arg} missing)')
                stack.append(memo[arg])
            elif name == 'DUP':
                if not stack:
                    raise BadPickleError('not a network pickle (stack underflow)')
                stack.append(stack[-1])
            elif name == 'POP' and marks and marks[-1] == len(stack):
                marks.pop()
            else:
                before = op.stack_before
                if pickletools.markobject in before:
                    if not marks:
                        raise BadPickleError('not a network pickle (MARK missing)')
                    mark = marks.pop()
                    items = stack[mark:]
                    del stack[mark:]
                    below = before.index(pickletools.markobject)
                else:
                    items, below = [], len(before)
                if len(stack) < below:
                    raise BadPickleError('not a network pickle (stack underflow)')
                if below:
                    items += stack[-below:]
                    del stack[-below:]
                if name in _TUPLE_OPS:
                    depth = 1 + max(items, default=0)
                    if depth > MAX_DEPTH:
                        raise BadPickleError(f'tuples nested deeper than {MAX_DEPTH} levels')
                    stack.append(depth)
                else:
                    stack.extend(0 for _ in op.stack_after)
    except ValueError as err:  # genops: unknown opcode, bad argument, data ending too early
        text = str(err)
        if 'exhausted' in text or 'remain' in text or 'but only' in text:
            raise BadPickleError('file is truncated') from None
        raise BadPickleError(f'not a network pickle ({one_line(err)})') from None
    if count == 0:
        raise BadPickleError('file is empty')
    return f.tell()

#----------------------------------------------------------------------------
# Stage 2: inert records that the unpickler builds instead of live objects.


class _Record:
    __slots__ = ()
    what = 'object'

    def __setstate__(self, state):
        raise BadPickleError(f'unexpected state for a stored {self.what}')


class _StoredObject(_Record):
    """A persistent object (EDM's _reconstruct_persistent_obj record), before it is rebuilt."""
    __slots__ = ('class_name', 'init_args', 'init_kwargs', 'state')
    what = 'persistent object'


class _StoredModule(_Record):
    """A torch.nn container or layer inside a network: only its state is kept."""
    __slots__ = ('state',)
    class_name = 'torch.nn.Module'

    def __new__(cls, *args, **kwargs):
        if args or kwargs:
            raise BadPickleError(f'{cls.class_name} created with arguments')
        return object.__new__(cls)

    def __setstate__(self, state):
        if getattr(self, 'state', None) is not None or type(state) is not dict:
            raise BadPickleError(f'malformed state of {self.class_name}')
        self.state = state


class _StoredTensor(_Record):
    __slots__ = ('tensor',)
    what = 'tensor'

    def __init__(self, tensor):
        self.tensor = tensor


class _Storage(_Record):
    __slots__ = ('flat',)       # 1-D tensor over the storage's bytes
    what = 'storage'

    def __init__(self, flat):
        self.flat = flat


class _StorageType(_Record):
    __slots__ = ('dtype',)
    what = 'storage type'

    def __init__(self, dtype):
        self.dtype = dtype


class _EasyDictRecord(dict):
    """dnnlib.EasyDict while loading: a plain dict with no attribute access to abuse."""
    __slots__ = ()

    def __setstate__(self, state):
        if state:
            raise BadPickleError('unexpected state for a stored EasyDict')


class _OrderedDictRecord(dict):
    """collections.OrderedDict while loading; state (a state dict's _metadata) is dropped."""
    __slots__ = ()

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise BadPickleError('unexpected state for a stored OrderedDict')


_TORCH_NN_CLASSES = (
    'ModuleList', 'ModuleDict', 'Sequential', 'ParameterList', 'ParameterDict', 'Identity',
    'Linear', 'Conv2d', 'GroupNorm', 'LayerNorm', 'Embedding', 'Dropout',
    'SiLU', 'ReLU', 'GELU', 'Sigmoid', 'Tanh', 'Softmax',
)
_STORED_MODULE_TYPES = {name: type(name, (_StoredModule,), dict(__slots__=(), class_name=f'torch.nn.{name}'))
                        for name in _TORCH_NN_CLASSES}

_STORAGE_DTYPES = dict(
    FloatStorage=torch.float32, DoubleStorage=torch.float64, HalfStorage=torch.float16, BFloat16Storage=torch.bfloat16,
    LongStorage=torch.int64, IntStorage=torch.int32, ShortStorage=torch.int16, CharStorage=torch.int8,
    ByteStorage=torch.uint8, BoolStorage=torch.bool, UntypedStorage=torch.uint8,
)
_DTYPES = ('float16', 'bfloat16', 'float32', 'float64', 'int8', 'int16', 'int32', 'int64', 'uint8', 'bool')


def _safe_set(factory):
    def build(items=()):
        items = list(items)
        for item in items:
            _check_hash_depth(item)
        return factory(items)
    return build


def _check_hash_depth(value):
    """Refuse tuples/frozensets nested deeper than MAX_DEPTH (hashing them recurses in C)."""
    todo = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, (tuple, frozenset)):
            if depth > MAX_DEPTH:
                raise BadPickleError(f'tuples nested deeper than {MAX_DEPTH} levels')
            todo.extend((child, depth + 1) for child in item)


def _safe_bytearray(*args):
    if len(args) == 0:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] == 'latin-1':
        return bytearray(args[0], 'latin-1')
    raise BadPickleError('bytearray must be built from stored bytes')


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in 'biufc':
        raise UnsafePickleError(f'numpy scalar of dtype {dtype!r} is not allowed')
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise BadPickleError('malformed numpy scalar')
    return np.frombuffer(data, dtype=dtype)[0]


def _numpy_dtype(name, align=False, copy=False):
    if not isinstance(name, str) or len(name) > 8:
        raise UnsafePickleError('numpy dtype is not a plain numeric type')
    dtype = np.dtype(name)
    if dtype.kind not in 'biufc':
        raise UnsafePickleError(f'numpy dtype {name!r} is not allowed')
    return np.dtype(name, copy=True)  # BUILD may set the byte order: never on numpy's shared instance


def _int_tuple(value, what):
    if not isinstance(value, (tuple, list)) or len(value) > MAX_DIMS:
        raise BadPickleError(f'malformed tensor {what}')
    if not all(type(v) is int and v >= 0 for v in value):
        raise BadPickleError(f'malformed tensor {what} (not non-negative integers)')
    return tuple(value)


def _empty_hooks(value):
    return value is None or (isinstance(value, dict) and len(value) == 0)


class _Unpickler(pickle.Unpickler):
    def __init__(self, data, allowed, persistent_load=None):
        super().__init__(io.BytesIO(data))
        self._allowed = allowed
        self._persistent = persistent_load

    def find_class(self, module, name):
        value = self._allowed.get((module, name))
        if value is not None:
            return value
        if module.startswith('torch.nn.modules.') and name in _STORED_MODULE_TYPES and self._allowed.get('nn'):
            return _STORED_MODULE_TYPES[name]
        raise UnsafePickleError(f'refused global "{module}.{name}" (not on the allow-list)')

    def persistent_load(self, pid):
        if self._persistent is None:
            raise UnsafePickleError('refused persistent id (not an EDM pickle)')
        return self._persistent(pid)

#----------------------------------------------------------------------------
# One load: the limits of a file, the allow-lists and the rebuild.


class _Load:
    def __init__(self, data_len):
        self.data_len = data_len
        self.work = 0
        self.work_limit = WORK_BASE + data_len
        self.memo = dict()
        self.legacy_header = None   # the header bytes of a legacy storage blob that passed the checks

    def spend(self, units=1):
        self.work += units
        if self.work > self.work_limit:
            raise BadPickleError(f'structure needs more than {self.work_limit} object visits (shared sub-objects '
                                 'repeated without bound?)')

    def unpickle(self, data, start, end, allowed, persistent_load=None):
        return _Unpickler(data[start:end], allowed, persistent_load).load()

    # Tensors.

    def rebuild_tensor(self, storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
        if not isinstance(storage, _Storage):
            raise BadPickleError('tensor without a stored storage')
        size, stride = _int_tuple(size, 'size'), _int_tuple(stride, 'stride')
        if len(size) != len(stride) or type(offset) is not int or offset < 0 or not isinstance(requires_grad, bool):
            raise BadPickleError('malformed tensor record')
        if not _empty_hooks(hooks) or not _empty_hooks(metadata):
            raise UnsafePickleError('refused tensor with hooks or metadata')
        numel = math.prod(size)
        nbytes = numel * storage.flat.element_size()
        if nbytes > self.data_len:
            raise BadPickleError(f'tensor of shape {list(size)} declares {nbytes} bytes, more than the '
                                 f'{self.data_len}-byte file holds')
        if numel > 0 and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.flat.numel():
            raise BadPickleError(f'tensor of shape {list(size)} reaches past the end of its storage')
        tensor = storage.flat.as_strided(size, stride, offset) if numel > 0 else storage.flat.new_empty(size)
        return _StoredTensor(tensor)

    def rebuild_parameter(self, data, requires_grad=True, hooks=None):
        if not isinstance(data, _StoredTensor) or not isinstance(requires_grad, bool):
            raise BadPickleError('malformed parameter record')
        if not _empty_hooks(hooks):
            raise UnsafePickleError('refused parameter with hooks')
        return _StoredTensor(torch.nn.Parameter(data.tensor, requires_grad=requires_grad))

    def storage_from_bytes(self, raw, dtype, numel):
        if numel * torch.empty(0, dtype=dtype).element_size() != len(raw):
            raise BadPickleError(f'storage declares {numel} elements but its data holds {len(raw)} bytes')
        flat = torch.frombuffer(bytearray(raw), dtype=dtype) if len(raw) else torch.empty(0, dtype=dtype)
        return _Storage(flat)

    def load_legacy_storage(self, blob):
        """Stands in for torch.storage._load_from_bytes: a storage in torch.save's legacy format."""
        if not isinstance(blob, bytes):
            raise BadPickleError('malformed storage record')
        if self.legacy_header is not None and blob.startswith(self.legacy_header):
            pos = len(self.legacy_header)  # the same bytes as a header already checked in this file
        else:
            pos, header = 0, []
            for _ in range(3):  # magic number, protocol version, system info
                end = scan(blob, pos)
                header.append(self.unpickle(blob, pos, end, {}))
                pos = end
            magic, version, info = header
            if magic != 0x1950a86a20f9469cfc6c or version != 1001 or not isinstance(info, dict):
                raise BadPickleError('storage is not in torch.save\'s legacy format')
            if info.get('little_endian') is not True:
                raise BadPickleError('big-endian storages are not supported')
            self.legacy_header = blob[:pos]
        records = []

        def persistent(pid):
            if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == 'storage' and isinstance(pid[1], _StorageType)
                    and isinstance(pid[2], str) and type(pid[4]) is int and pid[4] >= 0 and pid[5] is None):
                raise BadPickleError('malformed storage record')
            records.append(pid)
            return pid

        end = scan(blob, pos)
        root = self.unpickle(blob, pos, end, _STORAGE_TYPES, persistent)
        pos = end
        end = scan(blob, pos)
        keys = self.unpickle(blob, pos, end, {})
        pos = end
        if len(records) != 1 or root is not records[0] or keys != [records[0][2]]:
            raise BadPickleError('storage blob does not hold exactly one storage')
        _, storage_type, _, _, numel, _ = records[0]
        if len(blob) < pos + 8 or struct.unpack('<q', blob[pos:pos + 8])[0] != numel:
            raise BadPickleError('storage data is truncated or does not match its record')
        pos += 8
        nbytes = numel * torch.empty(0, dtype=storage_type.dtype).element_size()
        if len(blob) - pos < nbytes:
            raise BadPickleError(f'storage declares {nbytes} bytes but only {len(blob) - pos} follow')
        return self.storage_from_bytes(blob[pos:pos + nbytes], storage_type.dtype, numel)

    # Persistent objects.

    def record_persistent_obj(self, meta):
        """Stands in for torch_utils.persistence._reconstruct_persistent_obj: keeps, never runs."""
        if not isinstance(meta, dict) or meta.get('type') != 'class' or not isinstance(meta.get('class_name'), str):
            raise BadPickleError('malformed persistent object record')
        if meta.get('version') != 6:
            raise BadPickleError(f'unsupported persistence format version {meta.get("version")!r}')
        state = meta.get('state')
        if type(state) not in (dict, _EasyDictRecord):
            raise BadPickleError(f'persistent object "{meta["class_name"]}" has no state dict')
        init_args, init_kwargs = state.get('_init_args'), state.get('_init_kwargs')
        if not isinstance(init_args, (tuple, list)) or not isinstance(init_kwargs, dict):
            raise BadPickleError(f'persistent object "{meta["class_name"]}" did not record its constructor arguments')
        if not all(isinstance(key, str) for key in init_kwargs):
            raise BadPickleError(f'persistent object "{meta["class_name"]}" has non-string keyword arguments')
        record = _StoredObject()
        record.class_name, record.init_args, record.init_kwargs, record.state = meta['class_name'], init_args, init_kwargs, state
        return record

    # Stage 3: the graph check.

    def check_graph(self, root):
        """Refuse cycles, nesting deeper than MAX_DEPTH, and structures that would take more than the
        work budget to walk as a tree (a "billion laughs" of shared sub-objects)."""
        height = dict()             # id -> longest path below, for finished objects
        expanded = dict()           # id -> size as a tree, shared sub-objects counted at every use
        keep = []                   # keep finished objects alive so that their ids stay unique
        on_path = set()
        path = [(root, iter(_children(root)))]
        on_path.add(id(root))
        while path:
            node, children = path[-1]
            child = next(children, _DONE)
            if child is _DONE:
                path.pop()
                on_path.discard(id(node))
                children = list(_children(node))
                height[id(node)] = 1 + max((height.get(id(c), 0) for c in children), default=0)
                expanded[id(node)] = 1 + sum(expanded.get(id(c), 1) for c in children)
                if expanded[id(node)] > self.work_limit:
                    raise BadPickleError(f'the structure expands to more than {self.work_limit} objects (shared '
                                         'sub-objects nested without bound)')
                keep.append(node)
                continue
            self.spend()
            if not _children_possible(child):
                continue
            if id(child) in on_path:
                raise BadPickleError('the structure contains itself (cyclic reference)')
            if id(child) in height:
                if len(path) + height[id(child)] > MAX_DEPTH:
                    raise BadPickleError(f'objects nested deeper than {MAX_DEPTH} levels')
                continue
            if len(path) + 1 > MAX_DEPTH:
                raise BadPickleError(f'objects nested deeper than {MAX_DEPTH} levels')
            on_path.add(id(child))
            path.append((child, iter(_children(child))))

    # Stage 4: rebuilding.

    def materialize(self, value, classes):
        """Replace every record inside plain containers by the object it stands for."""
        if not _children_possible(value) and not isinstance(value, _Record):
            return value
        key = id(value)
        if key in self.memo:
            return self.memo[key][1]
        self.spend()
        if isinstance(value, _StoredObject):
            out = self.rebuild(value, classes)
        elif isinstance(value, _StoredModule):
            raise UnsafePickleError(f'refused {value.class_name} outside a network of this toolkit')
        elif isinstance(value, _StoredTensor):
            out = value.tensor
        elif isinstance(value, _Record):
            raise BadPickleError(f'stray {value.what} in the pickle')
        elif isinstance(value, dict):
            cls = {_EasyDictRecord: dnnlib.EasyDict, _OrderedDictRecord: collections.OrderedDict}.get(type(value), dict)
            out = cls()
            for k, v in value.items():
                out[self.materialize(k, classes)] = self.materialize(v, classes)
        elif isinstance(value, list):
            out = [self.materialize(v, classes) for v in value]
        elif isinstance(value, slice):
            out = slice(*(self.materialize(v, classes) for v in (value.start, value.stop, value.step)))
        else:  # tuple, set, frozenset
            out = type(value)(self.materialize(v, classes) for v in value)
        self.memo[key] = (value, out)
        return out

    def stored_tensors(self, node, prefix, out):
        """Collect the state_dict entries of a stored module tree into `out`."""
        self.spend()
        state = getattr(node, 'state', None)
        if type(state) not in (dict, _EasyDictRecord):
            raise BadPickleError(f'malformed module state under "{prefix}"')
        skip = state.get('_non_persistent_buffers_set', set())
        for field in ('_parameters', '_buffers', '_modules'):
            if not isinstance(state.get(field, dict()), dict):
                raise BadPickleError(f'malformed {field} under "{prefix}"')
        for field in ('_parameters', '_buffers'):
            for name, value in state.get(field, dict()).items():
                if value is None or (field == '_buffers' and name in skip):
                    continue
                if not isinstance(name, str) or not isinstance(value, _StoredTensor):
                    raise BadPickleError(f'{field} entry "{prefix}{name}" is not a tensor')
                out[prefix + name] = value.tensor
        for name, child in state.get('_modules', dict()).items():
            if child is None:
                continue
            if not isinstance(name, str) or not isinstance(child, (_StoredObject, _StoredModule)):
                raise UnsafePickleError(f'unexpected {type(child).__name__} among the submodules of a network')
            self.stored_tensors(child, f'{prefix}{name}.', out)
        return out

    def rebuild(self, stored, classes):
        cls = classes.get(stored.class_name)
        if cls is None:
            raise UnsafePickleError(f'refused persistent class "{stored.class_name}" (not a class of this toolkit)')
        args = self.materialize(tuple(stored.init_args), classes)
        kwargs = self.materialize(dict(stored.init_kwargs), classes)
        tensors = self.stored_tensors(stored, '', dict()) if issubclass(cls, torch.nn.Module) else dict()
        obj = build_object(cls, args, kwargs, tensors, max_bytes=self.data_len)
        if isinstance(obj, torch.nn.Module):
            obj.train(bool(stored.state.get('training', True)))
        return obj


_DONE = object()


def _children_possible(value):
    return isinstance(value, (dict, list, tuple, set, frozenset, slice, _StoredObject, _StoredModule)) \
        and not isinstance(value, torch.Size)


def _children(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield v
    elif isinstance(value, (list, tuple, set, frozenset)):
        yield from value
    elif isinstance(value, slice):
        yield from (value.start, value.stop, value.step)
    elif isinstance(value, _StoredObject):
        yield from (value.init_args, value.init_kwargs, value.state)
    elif isinstance(value, _StoredModule):
        if getattr(value, 'state', None) is None:
            raise BadPickleError(f'{value.class_name} without state')
        yield value.state


_STORAGE_TYPES = {('torch', name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()}


def _allow_list(load, networks):
    """The globals a pickle may name: {(module, name): what it resolves to}."""
    allowed = {
        ('collections', 'OrderedDict'): _OrderedDictRecord,
        ('builtins', 'set'): _safe_set(set),
        ('builtins', 'frozenset'): _safe_set(frozenset),
        ('builtins', 'slice'): slice,
        ('builtins', 'complex'): complex,
        ('builtins', 'bytearray'): _safe_bytearray,
        ('torch._utils', '_rebuild_tensor_v2'): load.rebuild_tensor,
        ('torch._utils', '_rebuild_parameter'): load.rebuild_parameter,
        ('torch', 'Size'): torch.Size,
        ('torch', 'device'): torch.device,
    }
    allowed.update({('torch', name): getattr(torch, name) for name in _DTYPES})
    if networks:
        allowed.update({
            'nn': True,
            ('torch_utils.persistence', '_reconstruct_persistent_obj'): load.record_persistent_obj,
            ('dnnlib.util', 'EasyDict'): _EasyDictRecord,
            ('torch.storage', '_load_from_bytes'): load.load_legacy_storage,
            ('numpy._core.multiarray', 'scalar'): _numpy_scalar,
            ('numpy.core.multiarray', 'scalar'): _numpy_scalar,
            ('numpy', 'dtype'): _numpy_dtype,
        })
    else:
        allowed.update(_STORAGE_TYPES)
    return allowed

#----------------------------------------------------------------------------
# Building this toolkit's classes from stored arguments, bounded.


_ELEMENTWISE = frozenset(
    [f'__{name}__' for name in ('add', 'radd', 'sub', 'rsub', 'mul', 'rmul', 'truediv', 'rtruediv', 'floordiv',
                                'rfloordiv', 'pow', 'rpow', 'neg', 'abs', 'mod', 'lt', 'le', 'gt', 'ge', 'eq', 'ne')]
    + ['add', 'sub', 'mul', 'div', 'pow', 'neg', 'abs', 'sqrt', 'rsqrt', 'exp', 'expm1', 'log', 'log1p', 'log2',
       'sin', 'cos', 'tan', 'atan', 'sinh', 'cosh', 'tanh', 'sigmoid', 'clip', 'clamp', 'minimum', 'maximum',
       'floor', 'ceil', 'round', 'reciprocal', 'square'])


def _broadcast(shapes):
    """The broadcast of tensor shapes (torch.broadcast_shapes imports sympy on first use)."""
    out = []
    for shape in shapes:
        shape = list(shape)
        if len(shape) > len(out):
            out = [1] * (len(shape) - len(out)) + out
        shape = [1] * (len(out) - len(shape)) + shape
        for i, n in enumerate(shape):
            if n != out[i] and n != 1 and out[i] != 1:
                raise RuntimeError(f'shapes cannot be broadcast ({n} against {out[i]})')
            if out[i] == 1:
                out[i] = n
    return tuple(out)


class _ConstructionBudget(TorchFunctionMode):
    """Counts torch calls and created bytes during a dry-run construction on 'meta'; raises
    BadPickleError past the limits. Scalars read from meta tensors read as 0."""

    _SCALAR = {torch.Tensor.item: 0.0, torch.Tensor.__float__: 0.0, torch.Tensor.__int__: 0,
               torch.Tensor.__bool__: False, torch.Tensor.__index__: 0}

    def __init__(self, what, max_calls, max_bytes):
        super().__init__()
        self.what, self.max_calls, self.max_bytes = what, max_calls, max_bytes
        self.calls = self.bytes = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or dict()
        if func in self._SCALAR and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return self._SCALAR[func]
        name = getattr(func, '__name__', None)
        if (name in _ELEMENTWISE or name == 'outer') and 'out' not in kwargs:
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            if tensors and all(t.is_meta for t in tensors):
                return self._elementwise(func, tensors, args, kwargs)
        self._count(1)
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            self._created(out)
        return out

    def _elementwise(self, func, tensors, args, kwargs):
        """An elementwise function of meta tensors, without its meta kernel.

        Many meta kernels of elementwise functions are Python reference implementations, slower
        than the CPU kernel and, on first use, importing torch._dynamo (1.5 s). The result's dtype
        comes from the function applied to one-element CPU stand-ins of the same dtypes and
        dimensions, its shape from broadcasting the inputs (for torch.outer, their lengths); scalars (one element) are computed
        on the CPU, as iDDPM's noise-level recurrence needs. Each counts 1/8 of a call."""
        self._count(0.125)
        def cpu(a):
            return torch.ones([1] * a.dim(), dtype=a.dtype, device='cpu') if isinstance(a, torch.Tensor) else a
        out = func(*map(cpu, args), **{k: cpu(v) for k, v in kwargs.items()})
        if not isinstance(out, torch.Tensor):
            return out
        if func.__name__ == 'outer':
            if len(tensors) != 2 or any(t.dim() != 1 for t in tensors):
                raise RuntimeError('outer takes two vectors')
            shape = (tensors[0].numel(), tensors[1].numel())
        else:
            shape = _broadcast(t.shape for t in tensors)
        if math.prod(shape) <= 1:
            return out.reshape(shape).to('meta')
        out = torch.empty(shape, dtype=out.dtype, device='meta')
        self._created(out)
        return out

    def _created(self, out):
        self.bytes += out.numel() * out.element_size()
        if self.bytes > self.max_bytes:
            raise BadPickleError(f'building {self.what} from its stored arguments creates more than '
                                 f'{self.max_bytes} bytes of tensors')

    def _count(self, cost):
        self.calls += cost
        if self.calls > self.max_calls:
            raise BadPickleError(f'building {self.what} from its stored arguments takes more than {self.max_calls} '
                                 'torch operations')


def _construct(cls, args, kwargs, what):
    try:
        return cls(*args, **kwargs)
    except BadPickleError:
        raise
    except Exception as err:  # any failure of a constructor given hostile arguments
        raise BadPickleError(f'cannot build {what} from its stored arguments: {one_line(err)}') from None


class _DryRun:
    """What a dry run found: the torch calls and created bytes it took, the state's shapes and size."""
    __slots__ = ('calls', 'bytes', 'shapes', 'nbytes')


_DRY_RUNS = collections.OrderedDict()   # (class, pickled arguments) -> _DryRun, most recent last
DRY_RUN_CACHE = 32                      # dry runs remembered per process


def _dry_run_key(cls, args, kwargs):
    try:
        return cls, pickle.dumps((args, kwargs), protocol=4)
    except Exception:  # arguments that do not pickle are not cached
        return None


def _dry_run(cls, args, kwargs, what, max_calls, max_bytes):
    """Build the object on 'meta' under the budget; the outcome is remembered per class and
    arguments (constructors are this toolkit's code, so the same arguments give the same
    outcome) and held against the limits of each file again."""
    key = _dry_run_key(cls, args, kwargs)
    found = _DRY_RUNS.get(key) if key is not None else None
    if found is None:
        budget = _ConstructionBudget(what, max_calls, max_bytes)
        with torch.device('meta'), budget:
            dry = _construct(cls, args, kwargs, what)
        found = _DryRun()
        found.calls, found.bytes, found.shapes = budget.calls, budget.bytes, None
        if isinstance(dry, torch.nn.Module):
            state = dry.state_dict()
            found.shapes = {k: tuple(t.shape) for k, t in state.items()}
            found.nbytes = sum(t.numel() * t.element_size() for t in state.values())
        del dry
        if key is not None:
            _DRY_RUNS[key] = found
            while len(_DRY_RUNS) > DRY_RUN_CACHE:
                _DRY_RUNS.popitem(last=False)
    else:
        _DRY_RUNS.move_to_end(key)
        if found.calls > max_calls:
            raise BadPickleError(f'building {what} from its stored arguments takes more than {max_calls} torch operations')
        if found.bytes > max_bytes:
            raise BadPickleError(f'building {what} from its stored arguments creates more than {max_bytes} bytes of tensors')
    return found


def build_object(cls, args, kwargs, tensors, max_bytes):
    """Build `cls(*args, **kwargs)` and load `tensors` (its whole state dict) into it.

    A dry run on the 'meta' device comes first, under a budget of torch calls and created
    bytes that grows with `max_bytes` (the size of the file); the object is refused if its
    state needs more than `max_bytes` bytes or does not match `tensors` in keys and shapes.
    Raises BadPickleError with one line."""
    from torch_utils import persistence
    what = cls.__name__
    with persistence.rebuilding_from_file():
        dry = _dry_run(cls, args, kwargs, what, CALLS_BASE + max_bytes // 1000, CREATED_BASE + 16 * max_bytes)
    if dry.shapes is not None:
        expected = dry.shapes
        if dry.nbytes > max_bytes:
            raise BadPickleError(f'{what} built from its stored arguments needs {dry.nbytes} bytes of weights, more than '
                                 f'the {max_bytes}-byte file holds')
        missing = [k for k in expected if k not in tensors]
        unexpected = [k for k in tensors if k not in expected]
        if missing or unexpected:
            raise BadPickleError(f'stored weights do not match {what}: missing {missing[:3]}, unexpected {unexpected[:3]}')
        for key, value in tensors.items():
            if not isinstance(value, torch.Tensor):
                raise BadPickleError(f'stored weight "{key}" of {what} is not a tensor')
            if tuple(value.shape) != expected[key]:
                raise BadPickleError(f'stored weight "{key}" of {what} has shape {list(value.shape)}, '
                                     f'expected {list(expected[key])}')
    elif tensors:
        raise BadPickleError(f'{what} has no weights, but the file stores some')
    with persistence.rebuilding_from_file():
        obj = _construct(cls, args, kwargs, what)
    if isinstance(obj, torch.nn.Module):
        try:
            with torch.no_grad():
                obj.load_state_dict(tensors, strict=True)
        except Exception as err:
            raise BadPickleError(f'cannot load the stored weights of {what}: {one_line(err)}') from None
    return obj


# The modules whose persistent classes a pickle may name (by class name), and among them those
# whose *Precond classes are denoisers. They are named, not imported here: this package sits
# below networks/ and training/ and imports them only when a pickle is rebuilt.
PERSISTENT_MODULES = ('networks.edm', 'networks.tsdpm', 'training.loss', 'training.augment')
NETWORK_MODULES = ('networks.edm', 'networks.tsdpm')


def known_classes():
    """Return {class name: class} for every persistent class this toolkit defines."""
    import importlib
    from torch_utils import persistence
    classes = dict()
    for module_name in PERSISTENT_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name, value in vars(module).items():
            if isinstance(value, type) and persistence.is_persistent(value):
                if classes.get(name, value) is not value:  # a pickle names classes by name alone
                    raise RuntimeError(f'persistent class name {name} is defined twice ({module_name})')
                classes[name] = value
    return classes


def network_classes():
    """The toolkit's denoisers: every persistent class of NETWORK_MODULES named *Precond."""
    return tuple(cls for name, cls in known_classes().items()
                 if name.endswith('Precond') and cls.__module__ in NETWORK_MODULES)


def is_network(obj) -> bool:
    """True if `obj` is an instance of one of network_classes()."""
    return isinstance(obj, network_classes())

#----------------------------------------------------------------------------
# Entry points.


@contextlib.contextmanager
def _one_line_errors():
    try:
        yield
    except (UnsafePickleError, BadPickleError):
        raise
    except RecursionError:
        raise BadPickleError(f'objects nested deeper than {MAX_DEPTH} levels') from None
    except Exception as err:  # anything else a hostile file provokes: one line
        raise BadPickleError(f'not a network pickle ({type(err).__name__}: {one_line(err)})') from None


def safe_loads(data: bytes):
    """Unpickle an EDM-format pickle from bytes without executing stored code."""
    with _one_line_errors():
        load = _Load(len(data))
        end = scan(data)
        raw = load.unpickle(data, 0, end, _allow_list(load, networks=True))
        load.check_graph(raw)
        return load.materialize(raw, known_classes())


def load_torch_archive(data: bytes):
    """What torch.save wrote to a zip archive (dicts, lists, tensors, numbers, strings), read
    without torch.load: storages come from the archive's own entries, sizes checked."""
    with _one_line_errors():
        load = _Load(len(data))
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            infos = archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise BadPickleError(f'not a readable torch archive ({one_line(err)})') from None
        names = {info.filename: info for info in infos}
        pickles = [name for name in names if name.endswith('/data.pkl') and name.count('/') == 1]
        if len(pickles) != 1:
            raise BadPickleError('not a torch archive (no data.pkl)')
        prefix = pickles[0][:-len('data.pkl')]
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(data):
                raise BadPickleError(f'archive entry {info.filename} is compressed or larger than the file')
        if prefix + 'byteorder' in names and archive.read(prefix + 'byteorder') != b'little':
            raise BadPickleError('big-endian archives are not supported')
        storages = dict()

        def persistent(pid):
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage' and isinstance(pid[1], _StorageType)
                    and isinstance(pid[2], str) and type(pid[4]) is int and pid[4] >= 0):
                raise BadPickleError('malformed storage record')
            _, storage_type, key, _, numel = pid
            if key not in storages:
                name = f'{prefix}data/{key}'
                if name not in names:
                    raise BadPickleError(f'storage {key} missing from the archive')
                storages[key] = load.storage_from_bytes(archive.read(name), storage_type.dtype, numel)
            if storages[key].flat.dtype != storage_type.dtype:
                raise BadPickleError(f'storage {key} used with two dtypes')
            return storages[key]

        pkl = archive.read(pickles[0])
        end = scan(pkl)
        raw = load.unpickle(pkl, 0, end, _allow_list(load, networks=False), persistent)
        load.check_graph(raw)
        return load.materialize(raw, dict())
