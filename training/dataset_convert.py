"""Convert images into EDM/StyleGAN datasets: an uncompressed ZIP (or a folder) of PNGs plus
dataset.json. `dataset_tool.py` is the command line over this module.

The library entry point is convert_dataset(). Resampling, cropping and rounding follow EDM's
dataset_tool.py, so the same input gives the same pixels; the work is spread over worker
processes without changing a byte of the output. Contents, in order: pixels (decoding, mode
rules, EDM's transforms), sources (folder, ZIP, CIFAR-10 tarball, MNIST idx, LMDB; each lists
its items up front and loads one by index), workers, destinations (written under a temporary
name), and convert_dataset().

Why here and this name: training/dataset.py reads the format this module writes, so the two
sit together in training/; "convert" says what it does (other formats in, EDM's format out)
and matches convert_dataset(). Not `training/dataset_tool.py` (two modules of one name, the
CLI and the library) and not a top-level `datasets/` (where the README's commands write the
dataset ZIPs, and the name of a well-known PyPI package).
"""

import collections
import contextlib
import gzip
import io
import json
import multiprocessing
import os
import pickle
import re
import shutil
import signal
import sys
import tarfile
import tempfile
import zipfile
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import PIL.Image
from tqdm import tqdm

import dnnlib.util
from torch_utils import images as image_io

TRANSFORMS = ('center-crop', 'center-crop-wide')
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # fixed entry timestamps keep the ZIP byte-identical across runs


class DatasetToolError(Exception):
    """Bad input or destination; the message is one line meant for the user."""

#----------------------------------------------------------------------------
# Pixels: decoding, mode rules and EDM's transforms.


def _image_exts() -> frozenset:
    PIL.Image.init()
    return frozenset(PIL.Image.EXTENSION)


def is_image_name(name: str) -> bool:
    """True if the file name has an extension Pillow registers (EDM's test for image files)."""
    return os.path.splitext(name)[1].lower() in _image_exts()


def image_to_array(img: PIL.Image.Image) -> np.ndarray:
    """Return HW (grayscale) or HW3 (RGB) uint8 pixels; raise ValueError for modes EDM cannot store."""
    mode = img.mode
    if mode == '1':
        img = img.convert('L')
    elif mode == 'P':
        if 'transparency' in img.info:
            raise ValueError('palette image with transparency (alpha is not supported)')
        img = img.convert('RGB')
    elif mode in ('CMYK', 'YCbCr', 'LAB', 'HSV'):
        img = img.convert('RGB')
    elif mode not in ('L', 'RGB'):
        if 'A' in mode or 'a' in mode:
            raise ValueError(f'image has an alpha channel (mode {mode}); only RGB or grayscale can be stored')
        raise ValueError(f'unsupported pixel mode {mode}; only 8-bit RGB or grayscale can be stored')
    return np.asarray(img, dtype=np.uint8)


def decode_image(data, name: str) -> np.ndarray:
    """Decode an image from a path, file object or bytes into a uint8 array (see image_to_array)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = io.BytesIO(data)
    try:
        img = PIL.Image.open(data)
        img.load()
    except Exception as err:  # Pillow raises many types for broken files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DatasetToolError(f'cannot read image {name}: {reason}') from None
    try:
        return image_to_array(img)
    except ValueError as err:
        raise DatasetToolError(f'cannot use image {name}: {err}') from None
    finally:
        img.close()


def _lanczos(img: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(PIL.Image.fromarray(img).resize((width, height), PIL.Image.Resampling.LANCZOS))


def _gray_to_rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[:, :, np.newaxis], 3, axis=2) if img.ndim == 2 else img


def transform_image(img: np.ndarray, transform: Optional[str], resolution: Optional[Tuple[int, int]]) -> Optional[np.ndarray]:
    """Return the image cropped/resized like EDM's dataset_tool, or None if center-crop-wide skips it."""
    h, w = img.shape[:2]
    if transform is None:
        if resolution is None or resolution == (w, h):
            return img
        return _lanczos(img, *resolution)
    width, height = resolution
    if transform == 'center-crop':
        crop = min(h, w)
        img = img[(h - crop) // 2:(h + crop) // 2, (w - crop) // 2:(w + crop) // 2]
        return _lanczos(_gray_to_rgb(img), width, height)
    if transform == 'center-crop-wide':
        # EDM keeps ch source rows, ch being the height the image would have at the output width
        # (not rescaled to source pixels), and skips images narrower or shorter than the output.
        ch = int(np.round(width * h / w))
        if w < width or ch < height:
            return None
        img = _lanczos(_gray_to_rgb(img[(h - ch) // 2:(h + ch) // 2]), width, height)
        canvas = np.zeros([width, width, 3], dtype=np.uint8)
        canvas[(width - height) // 2:(width + height) // 2, :] = img
        return canvas
    raise ValueError(f'unknown transform {transform!r}')


#----------------------------------------------------------------------------
# Sources. Each lists its items up front (cheap) and loads one item by index (in any
# process); loading is what the workers parallelise. All are picklable.


class ImageSource:
    """Base: `names` (for messages), `labels` (per item, None where missing), load(i) -> array."""

    def __init__(self, names: Sequence[str], labels: Sequence):
        self.names = list(names)
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.names)

    def truncate(self, max_images: Optional[int]) -> None:
        if max_images is not None:
            del self.names[max_images:]
            del self.labels[max_images:]

    def load(self, idx: int) -> np.ndarray:
        raise NotImplementedError


LABEL_LIMIT = 1 << 31  # labels index a one-hot vector: at most 2^31 classes


def _parse_labels_json(data, where: str) -> dict:
    """{image name: label} from a dataset.json; labels must be integers in [0, 2^31) (or null)."""
    try:
        labels = json.loads(data)['labels']
        labels = {} if labels is None else {str(name): label for name, label in labels}
    except (ValueError, KeyError, TypeError) as err:
        raise DatasetToolError(f'cannot parse {where}: {err}') from None
    for name, label in labels.items():
        if label is not None and not (type(label) is int and 0 <= label < LABEL_LIMIT):
            raise DatasetToolError(f'{where}: the label of {name} is {json.dumps(label)}; labels must be integers '
                                   f'from 0 to {LABEL_LIMIT - 1}')
    return labels


def _sort_key_by_parts(rel: str):
    return tuple(rel.split('/'))  # pathlib's order, which EDM's folder listing uses


class FolderSource(ImageSource):
    """All images under a folder, recursively; labels from its dataset.json, else from top-level folders."""

    def __init__(self, root: str):
        self.root = root
        rels = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for fname in filenames:
                full = os.path.join(dirpath, fname)
                if is_image_name(fname) and os.path.isfile(full):
                    rels.append(os.path.relpath(full, root).replace(os.sep, '/'))
        rels.sort(key=_sort_key_by_parts)
        labels = {}
        meta = os.path.join(root, 'dataset.json')
        if os.path.isfile(meta):
            with open(meta, 'rb') as f:
                labels = _parse_labels_json(f.read(), meta)
        if not labels:
            tops = [rel.split('/')[0] if '/' in rel else '' for rel in rels]
            classes = {top: idx for idx, top in enumerate(sorted(set(tops)))}
            if len(classes) > 1:
                labels = {rel: classes[top] for rel, top in zip(rels, tops)}
        super().__init__(rels, [labels.get(rel) for rel in rels])

    def load(self, idx: int) -> np.ndarray:
        return decode_image(os.path.join(self.root, self.names[idx]), self.names[idx])


class ZipSource(ImageSource):
    """All images in a ZIP (sorted by name); labels from its top-level dataset.json."""

    def __init__(self, path: str):
        self.path = path
        self._zip, self._pid = None, None
        try:
            with zipfile.ZipFile(path) as z:
                all_names = z.namelist()
                names = sorted(n for n in all_names if not n.endswith('/') and is_image_name(n))
                labels = _parse_labels_json(z.read('dataset.json'), f'{path}:dataset.json') if 'dataset.json' in all_names else {}
        except (zipfile.BadZipFile, OSError) as err:
            raise DatasetToolError(f'cannot read ZIP archive {path}: {err}') from None
        super().__init__(names, [labels.get(n) for n in names])

    def __getstate__(self):
        return dict(self.__dict__, _zip=None, _pid=None)

    def load(self, idx: int) -> np.ndarray:
        if self._zip is None or self._pid != os.getpid():  # one handle per process
            self._zip, self._pid = zipfile.ZipFile(self.path), os.getpid()
        name = self.names[idx]
        try:
            data = self._zip.read(name)
        except (zipfile.BadZipFile, OSError) as err:
            raise DatasetToolError(f'cannot read image {name} from {self.path}: {err}') from None
        return decode_image(data, name)


class ArraySource(ImageSource):
    """Images already in memory (CIFAR-10, MNIST) as an NHW or NHWC uint8 array."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], name_fmt: str):
        self.images = images
        super().__init__([name_fmt.format(i) for i in range(len(images))], [int(x) for x in labels])

    def truncate(self, max_images: Optional[int]) -> None:
        super().truncate(max_images)
        self.images = self.images[:len(self.names)]

    def load(self, idx: int) -> np.ndarray:
        return self.images[idx]


class NpzSource(ImageSource):
    """guided-diffusion's sample files and reference batches: uint8 images [N, H, W, C] in
    arr_0 (read one at a time, sizes checked against the file), class labels in arr_1 if any."""

    def __init__(self, path: str):
        from safeload import npz  # reads .npz files without unpickling or trusting headers
        from training.dataset import NpzImageDataset
        try:
            self.dataset = NpzImageDataset(path)
            arrays = npz.inspect_npz(path)
            labels = npz.read_array(path, arrays['arr_1']) if 'arr_1' in arrays else None
        except npz.NpzError as err:
            raise DatasetToolError(str(err)) from None
        n = len(self.dataset)
        channels = self.dataset.image_shape[0]
        if channels not in (1, 3):
            raise DatasetToolError(f'{path}: arr_0 holds {channels}-channel images; only grayscale (1) or RGB (3) '
                                   'can be converted')
        if labels is not None:
            if labels.shape != (n,) or labels.dtype.kind not in 'iu' or (n and not 0 <= labels.min() <= labels.max() < LABEL_LIMIT):
                raise DatasetToolError(f'{path}: arr_1 must hold {n} integer labels from 0 to {LABEL_LIMIT - 1}, '
                                       f'not {labels.dtype} {list(labels.shape)}')
            labels = [int(x) for x in labels]
        super().__init__([f'arr_0[{i}]' for i in range(n)], labels if labels is not None else [None] * n)

    def load(self, idx: int) -> np.ndarray:
        image = self.dataset._load_raw_image(idx)  # pylint: disable=protected-access  [C, H, W]
        return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)


class LmdbSource(ImageSource):
    """LSUN-style LMDB: one encoded image per value, in key order; no labels. Needs `pip install lmdb`."""

    def __init__(self, path: str):
        self.path = path
        self._env, self._txn, self._pid = None, None, None
        lmdb = _import_lmdb()
        try:
            env = lmdb.open(path, readonly=True, lock=False)
            try:
                txn = env.begin(write=False)
                keys = [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]
            finally:
                env.close()
        except lmdb.Error as err:
            raise DatasetToolError(f'cannot read LMDB database {path}: {err}') from None
        self.keys = keys
        super().__init__([f'{path}[{k.decode("latin1")}]' for k in keys], [None] * len(keys))

    def __getstate__(self):
        return dict(self.__dict__, _env=None, _txn=None, _pid=None)

    def truncate(self, max_images: Optional[int]) -> None:
        super().truncate(max_images)
        del self.keys[len(self.names):]

    def load(self, idx: int) -> np.ndarray:
        if self._txn is None or self._pid != os.getpid():
            self._env = _import_lmdb().open(self.path, readonly=True, lock=False)
            self._txn, self._pid = self._env.begin(write=False), os.getpid()
        value = self._txn.get(self.keys[idx])
        if value is None:
            raise DatasetToolError(f'cannot read image {self.names[idx]}: key vanished from the database')
        return decode_image(bytes(value), self.names[idx])


def _import_lmdb():
    try:
        import lmdb  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise DatasetToolError('reading an LMDB (LSUN) source needs the lmdb package: pip install lmdb') from None
    return lmdb

#----------------------------------------------------------------------------
# CIFAR-10 python tarball.

_CIFAR_PICKLE_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode'),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a downloaded tarball cannot run code."""

    def find_class(self, module, name):
        if (module, name) in _CIFAR_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'refusing to load {module}.{name}')


def _field(batch: dict, key: str):
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def open_cifar10(path: str) -> ArraySource:
    """Read data_batch_1..N of a CIFAR-10 python tarball (the 50k training images, in order)."""
    images, labels = [], []
    try:
        with tarfile.open(path, 'r:*') as tar:
            members = {}
            for m in tar.getmembers():
                match = re.fullmatch(r'data_batch_(\d+)', os.path.basename(m.name))
                if match and m.isfile():
                    members[int(match.group(1))] = m
            if not members:
                raise DatasetToolError(f'{path} is a tar archive without CIFAR-10 data_batch_N files')
            for num in sorted(members):
                with tar.extractfile(members[num]) as f:
                    batch = _ArrayOnlyUnpickler(f, encoding='latin1').load()
                data = np.asarray(_field(batch, 'data'), dtype=np.uint8)
                images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                labels.append(np.asarray(_field(batch, 'labels'), dtype=np.int64).reshape(-1))
                if len(labels[-1]) != len(images[-1]):
                    raise ValueError(f'{members[num].name} has {len(images[-1])} images but {len(labels[-1])} labels')
    except DatasetToolError:
        raise
    except Exception as err:
        raise DatasetToolError(f'cannot read CIFAR-10 tarball {path}: {err}') from None
    return ArraySource(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels),
                       os.path.basename(path) + '[{}]')

#----------------------------------------------------------------------------
# MNIST idx files.

_IDX_IMAGES = re.compile(r'idx3-ubyte(\.gz)?$')


def read_idx(path: str) -> np.ndarray:
    """Read a uint8 idx file (gzipped or not) into an array of the shape its header gives."""
    try:
        with open(path, 'rb') as f:
            head = f.read(2)
        with (gzip.open if head == b'\x1f\x8b' else open)(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DatasetToolError(f'cannot read idx file {path}: {err}') from None
    if len(data) < 4 or data[:2] != b'\0\0' or data[2] != 0x08:
        raise DatasetToolError(f'{path} is not a uint8 idx file')
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) != offset + int(np.prod(shape)):
        raise DatasetToolError(f'{path}: header says {shape} but the file holds {len(data) - offset} bytes')
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _mnist_labels_path(images_path: str) -> str:
    folder, name = os.path.split(images_path)
    base = name.replace('images', 'labels').replace('idx3-ubyte', 'idx1-ubyte')
    base = base[:-3] if base.endswith('.gz') else base
    for cand in (base + '.gz', base):
        if cand != name and os.path.isfile(os.path.join(folder, cand)):
            return os.path.join(folder, cand)
    raise DatasetToolError(f'MNIST labels file not found for {images_path} (expected {os.path.join(folder, base)}[.gz])')


def open_mnist(images_path: str) -> ArraySource:
    """Read an MNIST-style idx image file and its labels; pad each image to 32x32 as EDM does."""
    images = read_idx(images_path)
    labels = read_idx(_mnist_labels_path(images_path))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetToolError(f'{images_path}: expected N images and N labels, got shapes {images.shape} and {labels.shape}')
    h, w = images.shape[1:]
    if h > 32 or w > 32:
        raise DatasetToolError(f'{images_path}: images are {w}x{h}; MNIST sources are padded to 32x32 and must not exceed it')
    top, left = (32 - h) // 2, (32 - w) // 2
    images = np.pad(images, [(0, 0), (top, 32 - h - top), (left, 32 - w - left)])
    return ArraySource(images, labels, os.path.basename(images_path) + '[{}]')

#----------------------------------------------------------------------------


def open_source(source: str, max_images: Optional[int] = None) -> ImageSource:
    """Open --source by its kind (see the CLI help); raise DatasetToolError if it is missing or empty."""
    if os.path.isdir(source):
        entries = sorted(os.listdir(source))
        idx_files = [e for e in entries if _IDX_IMAGES.search(e) and os.path.isfile(os.path.join(source, e))]
        if source.rstrip('/\\').endswith('_lmdb') or 'data.mdb' in entries:
            src = LmdbSource(source)
        elif idx_files:
            if len(idx_files) > 1:
                raise DatasetToolError(f'{source} holds several MNIST image files ({", ".join(idx_files)}); pass one as --source')
            src = open_mnist(os.path.join(source, idx_files[0]))
        else:
            src = FolderSource(source)
    elif os.path.isfile(source):
        if _IDX_IMAGES.search(os.path.basename(source)):
            src = open_mnist(source)
        elif source.lower().endswith('.zip'):
            src = ZipSource(source)
        elif source.lower().endswith('.npz'):
            src = NpzSource(source)
        elif tarfile.is_tarfile(source):
            src = open_cifar10(source)
        else:
            raise DatasetToolError(f'unrecognised source file {source}: expected a .zip, an .npz of images, a CIFAR-10 tarball or an MNIST idx file')
    else:
        raise DatasetToolError(f'source not found: {source}')
    if len(src) == 0:
        raise DatasetToolError(f'no images found in {source}')
    src.truncate(max_images)
    return src

#----------------------------------------------------------------------------
# Workers: load + transform + encode a range of items. Results depend only on the item.


def process_items(source: ImageSource, transform, resolution, start: int, stop: int) -> list:
    """For items start..stop-1 return (png, (width, height, channels)), (None, ()) where
    center-crop-wide skips the image, or the DatasetToolError that reading it raised."""
    out = []
    for idx in range(start, stop):
        try:
            img = transform_image(source.load(idx), transform, resolution)
        except DatasetToolError as err:
            out.append(err)  # reported by the main process when it reaches this item
            continue
        if img is None:
            out.append((None, ()))
        else:
            out.append((image_io.encode_png(img, compress_level=0), (img.shape[1], img.shape[0], img.shape[2] if img.ndim == 3 else 1)))
    return out


_worker_job = None


def _worker_init(job):
    global _worker_job
    _worker_job = job
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the main process stops the pool


def _worker_run(start: int, stop: int) -> list:
    return process_items(*_worker_job, start, stop)


def ordered_results(job, num_items: int, workers: int, chunk: int):
    """Yield process_items() results chunk by chunk in item order, keeping at most 2*workers chunks in flight."""
    ranges = [(i, min(i + chunk, num_items)) for i in range(0, num_items, chunk)]
    if workers <= 1:
        for start, stop in ranges:
            yield process_items(*job, start, stop)
        return
    ctx = multiprocessing.get_context('fork' if 'fork' in multiprocessing.get_all_start_methods() else 'spawn')
    with ctx.Pool(workers, initializer=_worker_init, initargs=(job,)) as pool:  # exit terminates the workers
        todo, pending = iter(ranges), collections.deque()
        for rng in todo:
            pending.append(pool.apply_async(_worker_run, rng))
            if len(pending) >= 2 * workers:
                break
        while pending:
            res = pending.popleft().get()
            rng = next(todo, None)
            if rng is not None:
                pending.append(pool.apply_async(_worker_run, rng))
            yield res

#----------------------------------------------------------------------------
# Destinations: written under a temporary name, renamed into place only when complete.


def _check_dest(dest: str) -> bool:
    """Return True for a ZIP destination; raise if the destination exists and is not empty."""
    if dest == '':
        raise DatasetToolError('--dest must not be empty')
    is_zip = dest.lower().endswith('.zip')
    if os.path.isdir(dest):
        if is_zip or os.listdir(dest):
            raise DatasetToolError(f'destination already exists and is not empty: {dest}')
    elif os.path.lexists(dest):
        if not is_zip or os.path.getsize(dest) > 0:
            raise DatasetToolError(f'destination already exists: {dest}')
    return is_zip


class _ZipWriter:
    def __init__(self, path: str):
        self.zip = zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED)

    def write(self, name: str, data: bytes) -> None:
        info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
        info.external_attr = 0o644 << 16
        self.zip.writestr(info, data)

    def close(self) -> None:
        self.zip.close()


class _FolderWriter:
    def __init__(self, path: str):
        self.root = path

    def write(self, name: str, data: bytes) -> None:
        full = os.path.join(self.root, *name.split('/'))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, 'wb') as f:
            f.write(data)

    def close(self) -> None:
        pass


def _write_atomically(dest: str, is_zip: bool, fill: Callable) -> None:
    """Call fill(writer) on a temporary ZIP/folder next to dest; move it onto dest on success."""
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    if is_zip:
        with dnnlib.util.atomic_path(dest) as tmp:
            writer = _ZipWriter(tmp)
            try:
                fill(writer)
            finally:
                writer.close()
            _chmod_like_new_file(tmp, 0o666)
        return
    tmp = tempfile.mkdtemp(dir=parent, prefix='.' + os.path.basename(os.path.abspath(dest)) + '.', suffix='.tmp')
    try:
        fill(_FolderWriter(tmp))
        _chmod_like_new_file(tmp, 0o777)
        if os.path.isdir(dest):
            os.rmdir(dest)  # checked empty before we started
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _chmod_like_new_file(path: str, mode: int) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)  # temp files are private (0600/0700) by default

#----------------------------------------------------------------------------


def default_workers() -> int:
    """Number of CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def _check_output_size(width: int, height: int, where: str) -> None:
    if width != height:
        raise DatasetToolError(f'output images must be square, got {width}x{height} ({where}); use --resolution=NxN or --transform=center-crop')
    if not _is_power_of_two(width):
        raise DatasetToolError(f'output resolution must be a power of two, got {width}x{height} ({where}); use --resolution')


def convert_dataset(source: str, dest: str, *, max_images: Optional[int] = None, transform: Optional[str] = None,
                    resolution: Optional[Tuple[int, int]] = None, workers: Optional[int] = None,
                    progress: bool = True, chunk: Optional[int] = None) -> dict:
    """Convert `source` into a dataset at `dest` (.zip or folder); return a summary dict.

    Raises DatasetToolError, leaving nothing at `dest`, for any bad input.
    """
    if transform is not None and transform not in TRANSFORMS:
        raise DatasetToolError(f'unknown transform {transform!r}; choose from {", ".join(TRANSFORMS)}')
    if transform is not None and resolution is None:
        raise DatasetToolError(f'--transform={transform} needs --resolution=WxH')
    if resolution is not None:
        out_w, out_h = resolution
        if out_w < 1 or out_h < 1:
            raise DatasetToolError(f'--resolution must be positive, got {out_w}x{out_h}')
        if transform == 'center-crop-wide' and out_h > out_w:
            raise DatasetToolError(f'--transform=center-crop-wide needs a height no larger than the width, got {out_w}x{out_h}')
        _check_output_size(out_w, out_w if transform == 'center-crop-wide' else out_h, '--resolution')
    if max_images is not None and max_images < 1:
        raise DatasetToolError('--max-images must be at least 1')
    is_zip = _check_dest(dest)
    dest = dest if is_zip else os.path.normpath(dest)
    src = open_source(source, max_images)
    workers = default_workers() if workers is None else max(1, int(workers))
    workers = min(workers, len(src))
    if chunk is None:
        chunk = max(1, min(256, len(src) // (8 * workers)))
    job = (src, transform, resolution)
    summary = dict(images=0, skipped=0, shape=None, labels=False, dest=dest)

    def fill(writer):
        labels, attrs, missing = [], None, 0
        bar = tqdm(total=len(src), unit='img', disable=not progress, file=sys.stderr, dynamic_ncols=True)
        idx = 0
        with bar, contextlib.closing(ordered_results(job, len(src), workers, chunk)) as chunks:
            for results in chunks:
                for res in results:
                    if isinstance(res, DatasetToolError):
                        raise res
                    png, cur = res
                    if png is None:
                        summary['skipped'] += 1
                    else:
                        where = src.names[idx]
                        if attrs is None:
                            attrs = cur
                            _check_output_size(cur[0], cur[1], where)
                        elif cur != attrs:
                            raise DatasetToolError(f'image {where} is {cur[0]}x{cur[1]} with {cur[2]} channel(s) but earlier images are '
                                                   f'{attrs[0]}x{attrs[1]} with {attrs[2]}; use --resolution/--transform to make them equal')
                        num = f'{summary["images"]:08d}'
                        arch = f'{num[:5]}/img{num}.png'
                        writer.write(arch, png)
                        label = src.labels[idx]
                        missing += label is None
                        labels.append([arch, label])
                        summary['images'] += 1
                    idx += 1
                bar.update(len(results))
        if summary['images'] == 0:
            raise DatasetToolError(f'no image of {source} is at least {resolution[0]}x{resolution[1]} for --transform={transform}')
        if 0 < missing < len(labels):
            print(f'warning: {missing} of {len(labels)} images have no label; writing "labels": null', file=sys.stderr)
        summary['labels'] = missing == 0
        writer.write('dataset.json', json.dumps({'labels': labels if missing == 0 else None}).encode('utf8'))
        summary['shape'] = attrs

    _write_atomically(dest, is_zip, fill)
    if summary['skipped']:
        print(f'warning: --transform=center-crop-wide skipped {summary["skipped"]} image(s) smaller than '
              f'{resolution[0]}x{resolution[1]}', file=sys.stderr)
    return summary
