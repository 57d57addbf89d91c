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

from training.dataset import Dataset

from .detector import MetricError

MAX_DEFLATE_RATIO = 1032  # deflate cannot expand data more than this


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


def _member_data_offset(fp, info):
    """Offset in the file of a member's (compressed) data, from its local header."""
    fp.seek(info.header_offset)
    local = fp.read(30)
    if len(local) != 30 or local[:4] != b'PK\x03\x04':
        raise ValueError('bad local header')
    name_len, extra_len = struct.unpack('<HH', local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def inspect_npz(path, label=None):
    """Return {array name: NpzArray} of a local .npz file, checking each declared size against the file.

    Raises MetricError (one line, naming `label` or the path) for anything that is not a
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
                    raise MetricError(f'{label}: array {name} uses an unsupported compression')
                if _member_data_offset(fp, info) + info.compress_size > file_size:
                    raise MetricError(f'{label}: file is truncated (array {name} ends past the end of the file)')
                if info.file_size > info.compress_size * MAX_DEFLATE_RATIO + 1024:
                    raise MetricError(f'{label}: array {name} claims {info.file_size} bytes from {info.compress_size} compressed')
                with zf.open(info) as f:
                    shape, fortran_order, dtype, header_size = _read_header(f)
                array = NpzArray(name, info, shape, dtype, fortran_order, header_size)
                if dtype.hasobject:
                    raise MetricError(f'{label}: array {name} holds Python objects ({dtype}); only numeric arrays are read')
                if header_size + array.nbytes != info.file_size:
                    raise MetricError(f'{label}: array {name} declares {array.describe()} ({array.nbytes} bytes) '
                                      f'but holds {info.file_size - header_size} bytes')
                arrays[name] = array
            return arrays
    except MetricError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, struct.error) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0] if str(err) else type(err).__name__
        raise MetricError(f'{label}: not a .npz file or damaged ({reason})') from None


def read_array(path, array, label=None):
    """Return the whole array (after inspect_npz has checked its size)."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open(array.info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise MetricError(f'{label or path}: cannot read array {array.name} ({str(err).splitlines()[0] if str(err) else type(err).__name__})') from None

#----------------------------------------------------------------------------


def image_array_shape(array, label):
    """Return (N, C, H, W) of an image array (uint8 [N, H, W, C] or [N, H, W]), or raise MetricError."""
    if array.dtype != np.uint8:
        raise MetricError(f'{label}: {array.name} is {array.describe()}; images must be uint8 [N, H, W, C] (as guided-diffusion writes them)')
    if array.fortran_order:
        raise MetricError(f'{label}: {array.name} is stored in Fortran order; images must be C-ordered [N, H, W, C]')
    shape = array.shape + (1,) if len(array.shape) == 3 else array.shape
    if len(shape) != 4 or min(shape) < 1:
        raise MetricError(f'{label}: {array.name} is {array.describe()}; images must be uint8 [N, H, W, C]')
    n, h, w, c = shape
    return n, c, h, w


class NpzImageDataset(Dataset):
    """Images of one array of an .npz file (default arr_0), read lazily; labels are not used."""

    def __init__(self, path, key='arr_0', name=None, **super_kwargs):
        self._path = path
        self._handle = None         # the open file, or the open member of self._zip
        self._zip = None
        self._handle_pid = None
        arrays = inspect_npz(path)
        if key not in arrays:
            found = ', '.join(sorted(arrays)) or 'nothing'
            raise MetricError(f'{path}: no {key} array of images (found: {found})')
        self._array = arrays[key]
        n, c, h, w = image_array_shape(self._array, path)
        self._image_bytes = c * h * w
        self._hwc = (h, w, c)
        self._stored = self._array.info.compress_type == zipfile.ZIP_STORED
        self._data_offset = None
        if self._stored:
            with open(path, 'rb') as fp:
                self._data_offset = _member_data_offset(fp, self._array.info) + self._array.header_size
        super().__init__(name=name or os.path.splitext(os.path.basename(path))[0], raw_shape=[n, c, h, w], **super_kwargs)

    def image_name(self, raw_idx):
        return f'{self._array.name}[{raw_idx}]'

    def _open(self):
        # A handle inherited through fork shares its file offset with the parent: reopen per process.
        if self._handle is None or self._handle_pid != os.getpid():
            if self._stored:
                self._handle = open(self._path, 'rb')
            else:
                self._zip = zipfile.ZipFile(self._path)
                self._handle = self._zip.open(self._array.info)
            self._handle_pid = os.getpid()
        return self._handle

    def close(self):
        try:
            if self._handle_pid == os.getpid():
                for f in (self._handle, self._zip):
                    if f is not None:
                        f.close()
        finally:
            self._handle = None
            self._zip = None
            self._handle_pid = None

    def __getstate__(self):
        return dict(super().__getstate__(), _handle=None, _zip=None, _handle_pid=None)

    def _load_raw_image(self, raw_idx):
        f = self._open()
        offset = int(raw_idx) * self._image_bytes
        f.seek(self._data_offset + offset if self._stored else self._array.header_size + offset)
        data = f.read(self._image_bytes)
        if len(data) != self._image_bytes:
            raise IOError(f'{self._path}: file is truncated at image {raw_idx}')
        return np.frombuffer(data, dtype=np.uint8).reshape(self._hwc).transpose(2, 0, 1)

    def _load_raw_labels(self):
        return None
