""".npz files of statistics and of images (guided-diffusion's sample and reference batches).

Array headers are read without loading the arrays, and every declared shape is checked
against the bytes the file really holds before anything is allocated. Object arrays are never
unpickled. Images (`arr_0`, uint8 [N, H, W, C] with C = 1 or 3, or [N, H, W] grey) are read one
at a time, straight from the file when the array is stored uncompressed (np.savez) and by
streaming decompression otherwise (np.savez_compressed).
"""

import os
import struct
import zipfile

import numpy as np

MAX_DEFLATE_RATIO = 1032  # deflate cannot expand data more than this
MAX_READ_BYTES = 2 << 30  # one array read whole (statistics, labels, features); images are read one at a time


class NpzError(ValueError):
    """An .npz file that cannot be read as asked (one line, naming the file)."""


class NpzArray:
    """Where one array of an .npz file is and what its header declares."""

    def __init__(self, name, info, shape, dtype, fortran_order, header_size):
        self.name = name
        self.info = info                    # zipfile.ZipInfo of the member
        self.shape = tuple(shape)
        self.dtype = dtype
        self.fortran_order = fortran_order
        self.header_size = header_size      # bytes of the .npy header before the data

    @property
    def nbytes(self):
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def describe(self):
        return f'{self.dtype} {list(self.shape)}'


def _read_header(f):
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f'unsupported .npy format version {version}')
    return shape, fortran_order, dtype, f.tell()


def member_data_offset(fp, info):
    """Offset in the file of a member's (compressed) data, from its local header."""
    fp.seek(info.header_offset)
    local = fp.read(30)
    if len(local) != 30 or local[:4] != b'PK\x03\x04':
        raise ValueError('bad local header')
    name_len, extra_len = struct.unpack('<HH', local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def inspect_npz(path, label=None):
    """Return {array name: NpzArray} of a local .npz file, checking each declared size against the file.

    Raises NpzError (one line, naming `label` or the path) for anything that is not a
    readable .npz of plain numeric arrays.
    """
    label = label or path
    try:
        file_size = os.path.getsize(path)
        with open(path, 'rb') as fp, zipfile.ZipFile(fp) as zf:
            arrays = dict()
            for info in zf.infolist():
                if not info.filename.endswith('.npy'):
                    continue
                name = info.filename[:-4]
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise NpzError(f'{label}: array {name} uses an unsupported compression')
                if member_data_offset(fp, info) + info.compress_size > file_size:
                    raise NpzError(f'{label}: file is truncated (array {name} ends past the end of the file)')
                if info.file_size > info.compress_size * MAX_DEFLATE_RATIO + 1024:
                    raise NpzError(f'{label}: array {name} claims {info.file_size} bytes from {info.compress_size} compressed')
                with zf.open(info) as f:
                    shape, fortran_order, dtype, header_size = _read_header(f)
                array = NpzArray(name, info, shape, dtype, fortran_order, header_size)
                if dtype.hasobject:
                    raise NpzError(f'{label}: array {name} holds Python objects ({dtype}); only numeric arrays are read')
                if header_size + array.nbytes != info.file_size:
                    raise NpzError(f'{label}: array {name} declares {array.describe()} ({array.nbytes} bytes) '
                                      f'but holds {info.file_size - header_size} bytes')
                arrays[name] = array
            return arrays
    except NpzError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, struct.error) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0] if str(err) else type(err).__name__
        raise NpzError(f'{label}: not a .npz file or damaged ({reason})') from None


def read_array(path, array, label=None, max_bytes=None):
    """Return the whole array (after inspect_npz has checked its size), refusing one larger than
    `max_bytes` (MAX_READ_BYTES) before it is inflated; compressed arrays are inflated in chunks
    straight into the result, so the peak is the array itself."""
    limit = MAX_READ_BYTES if max_bytes is None else max_bytes
    if array.nbytes > limit:
        raise NpzError(f'{label or path}: array {array.name} is {array.describe()} ({array.nbytes} bytes), more than '
                       f'the {limit} bytes read at once (safeload/npz.py MAX_READ_BYTES)')
    try:
        with zipfile.ZipFile(path) as zf, zf.open(array.info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise NpzError(f'{label or path}: cannot read array {array.name} ({str(err).splitlines()[0] if str(err) else type(err).__name__})') from None

#----------------------------------------------------------------------------


def image_array_shape(array, label):
    """Return (N, C, H, W) of an image array (uint8 [N, H, W, C] or [N, H, W]), or raise NpzError."""
    if array.dtype != np.uint8:
        raise NpzError(f'{label}: {array.name} is {array.describe()}; images must be uint8 [N, H, W, C] (as guided-diffusion writes them)')
    if array.fortran_order:
        raise NpzError(f'{label}: {array.name} is stored in Fortran order; images must be C-ordered [N, H, W, C]')
    shape = array.shape + (1,) if len(array.shape) == 3 else array.shape
    if len(shape) != 4 or min(shape) < 1:
        raise NpzError(f'{label}: {array.name} is {array.describe()}; images must be uint8 [N, H, W, C]')
    n, h, w, c = shape
    return n, c, h, w
