"""Files that the toolkit writes and later reads back (run records, resume and search state),
read as hostile input: bounded in size, parsed without recursion errors or object arrays,
and checked for type, shape, dtype and finite values. Each failure is one line naming the file.

- `read_json`: a JSON document of at most MAX_JSON_BYTES, no NaN (Infinity is allowed:
  records hold S_max=inf), no nesting deeper
  than MAX_JSON_DEPTH (json's own recursion limit refuses deeper ones first), of the expected
  top-level type.
- `read_npy`: a .npy array whose header is read first: its declared size must be what the file
  holds, its dtype one of the expected ones, its shape the expected one, its values finite.
- `check_fields`: the keys and value types a record must have.
"""

import json
import math
import os

import numpy as np

MAX_JSON_BYTES = 64 << 20       # Run records and results are kilobytes; a sweep's record lists its seeds.
MAX_JSON_DEPTH = 64             # Records nest about 4 levels.
MAX_NPY_BYTES = 16 << 30        # A feature array of 1M images x 2048 float32 is 8 GiB.


class StateFileError(ValueError):
    """A file written by the toolkit that cannot be used as it is (one line, naming the file)."""


def _constant(name):
    if name == 'NaN':
        raise ValueError('NaN is not allowed')
    return float(name.replace('Infinity', 'inf'))  # S_max defaults to infinity in run records


def _depth(value):
    """Nesting depth of parsed JSON, without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        if isinstance(item, dict):
            todo.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            todo.extend((v, depth + 1) for v in item)
    return deepest


def read_bounded(path, max_bytes, label=None, what='a record of this toolkit'):
    """The bytes of the file at `path`, refused (StateFileError) past max_bytes before more is
    read. FileNotFoundError passes through (a missing file is not a bad one)."""
    label = label or path
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise StateFileError(f'{label}: {size} bytes, more than the {max_bytes} {what} may have')
        with open(path, 'rb') as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise StateFileError(f'cannot read {label}: {err.strerror or err}') from None
    if len(raw) > max_bytes:
        raise StateFileError(f'{label}: more than the {max_bytes} bytes {what} may have')
    return raw


def read_json(path, kind=dict, max_bytes=None, label=None):
    """The JSON document at `path`, which must be a `kind` (dict or list). FileNotFoundError
    passes through (a missing file is not a bad one); anything else is StateFileError."""
    label = label or path
    raw = read_bounded(path, MAX_JSON_BYTES if max_bytes is None else max_bytes, label)
    try:
        value = json.loads(raw.decode('utf8'), parse_constant=_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StateFileError(f'{label}: not valid JSON ({text[:150]})') from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise StateFileError(f'{label}: nested deeper than {MAX_JSON_DEPTH} levels')
    if not isinstance(value, kind):
        raise StateFileError(f'{label}: holds a JSON {type(value).__name__}, not a JSON '
                             f'{"object" if kind is dict else "array"}')
    return value


_JSON_TYPES = {int: 'an integer', float: 'a number', str: 'a string', bool: 'true or false', list: 'an array',
               dict: 'an object', type(None): 'null'}


def check_fields(record, fields, label):
    """Raise StateFileError unless `record` has every key of `fields` ({key: type or tuple of
    types}) with a value of that type (bool is not an int here; an int is a float)."""
    for key, types in fields.items():
        types = types if isinstance(types, tuple) else (types,)
        if key not in record:
            raise StateFileError(f'{label}: "{key}" is missing')
        value = record[key]
        ok = any(isinstance(value, t) and not (t in (int, float) and isinstance(value, bool)) for t in types) \
            or (float in types and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise StateFileError(f'{label}: "{key}" is {_JSON_TYPES.get(type(value), type(value).__name__)}, '
                                 f'expected {" or ".join(_JSON_TYPES.get(t, t.__name__) for t in types)}')
        if isinstance(value, float) and not math.isfinite(value):
            raise StateFileError(f'{label}: "{key}" is not finite')
    return record


def read_npy(path, dtypes, shape=None, label=None, finite=True, max_bytes=None):
    """The array of a .npy file, checked before it is read: a plain `dtypes` array (a tuple of
    numpy dtypes), C order, `shape` (None entries match any length), exactly as many data bytes
    as the header declares, and finite values. FileNotFoundError passes through."""
    label = label or path
    max_bytes = MAX_NPY_BYTES if max_bytes is None else max_bytes
    try:
        size = os.path.getsize(path)
        with open(path, 'rb') as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                got_shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                got_shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise StateFileError(f'{label}: unsupported .npy version {version}')
            header = f.tell()
            if dtype.hasobject or dtype not in [np.dtype(d) for d in dtypes]:
                raise StateFileError(f'{label}: holds {dtype} values, expected {" or ".join(str(np.dtype(d)) for d in dtypes)}')
            if fortran:
                raise StateFileError(f'{label}: stored in Fortran order')
            if shape is not None and (len(got_shape) != len(shape) or
                                      any(want is not None and want != got for want, got in zip(shape, got_shape))):
                want = ['N' if n is None else n for n in shape]
                raise StateFileError(f'{label}: holds an array of shape {list(got_shape)}, expected {want}')
            nbytes = math.prod(got_shape) * dtype.itemsize
            if nbytes > max_bytes:
                raise StateFileError(f'{label}: declares {nbytes} bytes, more than the limit of {max_bytes}')
            if header + nbytes != size:
                raise StateFileError(f'{label}: declares {list(got_shape)} {dtype} ({nbytes} bytes) but holds '
                                     f'{size - header} bytes of data')
            array = np.fromfile(f, dtype=dtype, count=math.prod(got_shape)).reshape(got_shape)
    except (FileNotFoundError, StateFileError):
        raise
    except OSError as err:
        raise StateFileError(f'cannot read {label}: {err.strerror or err}') from None
    except ValueError as err:  # a bad magic string or header
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StateFileError(f'{label}: not a .npy array ({text[:150]})') from None
    if finite and array.dtype.kind in 'fc' and not np.isfinite(array).all():
        raise StateFileError(f'{label}: holds NaN or infinite values')
    return array
