"""Datasets made by dataset_tool.py (ZIP or folder of PNGs + dataset.json), as torch Datasets,
and the images of an .npz file (guided-diffusion's samples and reference batches).

Class names, constructor arguments and behaviour match EDM's training/dataset.py, because
training options and network pickles name 'training.dataset.ImageFolderDataset' and pass
these keyword arguments.
"""

import json
import os
import zipfile

import numpy as np
import PIL.Image
import torch

import dnnlib.util
from safeload import npz

try:
    import pyspng  # optional fast PNG decoder
except ImportError:
    pyspng = None

#----------------------------------------------------------------------------


class Dataset(torch.utils.data.Dataset):
    """Abstract image dataset: item idx -> (uint8 CHW image, float32 label vector)."""

    def __init__(self,
        name,               # Name of the dataset.
        raw_shape,          # Shape of all raw images, NCHW.
        max_size=None,      # Keep a random subset of at most this many images (before xflip); None = all.
        use_labels=False,   # False: label vectors have length 0.
        xflip=False,        # Append an x-flipped copy of every image (after max_size).
        random_seed=0,      # Seed of the max_size subset.
        cache=False,        # Keep decoded images in memory (per process).
    ):
        self._name = name
        self._raw_shape = list(raw_shape)
        self._use_labels = use_labels
        self._cache = cache
        self._cached_images = dict()
        self._raw_labels = None
        self._label_shape = None

        # Same subset as EDM for the same seed: shuffle with RandomState, keep the first max_size, sort.
        self._raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None and self._raw_idx.size > max_size:
            np.random.RandomState(random_seed % (1 << 31)).shuffle(self._raw_idx)
            self._raw_idx = np.sort(self._raw_idx[:max_size])

        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    def _get_raw_labels(self):
        if self._raw_labels is None:
            labels = self._load_raw_labels() if self._use_labels else None
            if labels is None:
                labels = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
            if labels.shape[0] != self._raw_shape[0] or labels.dtype not in (np.float32, np.int64):
                raise ValueError(f'{self._name}: expected {self._raw_shape[0]} int64 or float32 labels, got {labels.dtype} {labels.shape}')
            if labels.dtype == np.int64 and (labels.ndim != 1 or np.any(labels < 0)):
                raise ValueError(f'{self._name}: class labels must be non-negative integers')
            self._raw_labels = labels
        return self._raw_labels

    def close(self):
        """Release open files (subclasses)."""

    def _load_raw_image(self, raw_idx):
        raise NotImplementedError

    def _load_raw_labels(self):
        raise NotImplementedError

    def __getstate__(self):
        return dict(self.__dict__, _raw_labels=None)

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __len__(self):
        return self._raw_idx.size

    def __getitem__(self, idx):
        raw_idx = self._raw_idx[idx]
        image = self._cached_images.get(raw_idx)
        if image is None:
            image = self._load_raw_image(raw_idx)
            if self._cache:
                self._cached_images[raw_idx] = image
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or list(image.shape) != self.image_shape:
            raise ValueError(f'{self._name}: image {raw_idx} is {getattr(image, "dtype", type(image))} {list(getattr(image, "shape", []))}, '
                             f'expected uint8 {self.image_shape}')
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        return image.copy(), self.get_label(idx)

    def get_label(self, idx):
        """Return the label of item idx: one-hot float32 for class labels, else the raw vector."""
        label = self._get_raw_labels()[self._raw_idx[idx]]
        if label.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            label = onehot
        return label.copy()

    def get_details(self, idx):
        """Return EasyDict(raw_idx, xflip, raw_label) for item idx."""
        return dnnlib.util.EasyDict(
            raw_idx=int(self._raw_idx[idx]),
            xflip=int(self._xflip[idx]) != 0,
            raw_label=self._get_raw_labels()[self._raw_idx[idx]].copy(),
        )

    @property
    def name(self):
        return self._name

    @property
    def image_shape(self):
        return list(self._raw_shape[1:])

    @property
    def num_channels(self):
        assert len(self.image_shape) == 3  # CHW
        return self.image_shape[0]

    @property
    def resolution(self):
        assert len(self.image_shape) == 3 and self.image_shape[1] == self.image_shape[2]
        return self.image_shape[1]

    @property
    def label_shape(self):
        if self._label_shape is None:
            labels = self._get_raw_labels()
            if labels.dtype == np.int64:
                self._label_shape = [int(np.max(labels)) + 1]
            else:
                self._label_shape = list(labels.shape[1:])
        return list(self._label_shape)

    @property
    def label_dim(self):
        assert len(self.label_shape) == 1
        return self.label_shape[0]

    @property
    def has_labels(self):
        return any(x != 0 for x in self.label_shape)

    @property
    def has_onehot_labels(self):
        return self._get_raw_labels().dtype == np.int64

#----------------------------------------------------------------------------


class ImageFolderDataset(Dataset):
    """Images of a folder (recursively) or ZIP, sorted by path, with labels from dataset.json."""

    def __init__(self,
        path,               # Folder or .zip.
        resolution=None,    # Raise IOError unless the images are this size; None = any.
        use_pyspng=True,    # Decode PNGs with pyspng when it is installed.
        name=None,          # None = file name of path without extension.
        **super_kwargs,     # max_size, use_labels, xflip, random_seed, cache.
    ):
        self._path = path
        self._use_pyspng = use_pyspng
        self._zipfile = None
        self._zipfile_pid = None

        if os.path.isdir(path):
            self._type = 'dir'
            self._all_fnames = {os.path.relpath(os.path.join(root, fname), start=path).replace(os.sep, '/')
                                for root, _dirs, files in os.walk(path) for fname in files}
        elif os.path.splitext(path)[1].lower() == '.zip' and os.path.isfile(path):
            self._type = 'zip'
            try:
                self._all_fnames = set(self._get_zipfile().namelist())
            except zipfile.BadZipFile as err:
                raise IOError(f'Cannot read dataset ZIP {path}: {err}') from None
        else:
            raise IOError(f'Dataset path must be a folder or a .zip file: {path}')

        PIL.Image.init()
        self._image_fnames = sorted(f for f in self._all_fnames if os.path.splitext(f)[1].lower() in PIL.Image.EXTENSION)
        if not self._image_fnames:
            raise IOError(f'No image files found in {path}')

        if name is None:
            name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
        raw_shape = [len(self._image_fnames)] + list(self._load_raw_image(0).shape)
        if resolution is not None and (raw_shape[2] != resolution or raw_shape[3] != resolution):
            raise IOError(f'Images in {path} are {raw_shape[3]}x{raw_shape[2]}, not {resolution}x{resolution}')
        super().__init__(name=name, raw_shape=raw_shape, **super_kwargs)

    def _get_zipfile(self):
        # A handle inherited through fork shares its file offset with the parent: reopen per process.
        if self._zipfile is None or self._zipfile_pid != os.getpid():
            self._zipfile = zipfile.ZipFile(self._path)
            self._zipfile_pid = os.getpid()
        return self._zipfile

    def _open_file(self, fname):
        if self._type == 'dir':
            return open(os.path.join(self._path, fname), 'rb')
        return self._get_zipfile().open(fname, 'r')

    def close(self):
        try:
            if self._zipfile is not None and self._zipfile_pid == os.getpid():
                self._zipfile.close()
        finally:
            self._zipfile = None
            self._zipfile_pid = None

    def __getstate__(self):
        return dict(super().__getstate__(), _zipfile=None, _zipfile_pid=None)

    def _load_raw_image(self, raw_idx):
        fname = self._image_fnames[raw_idx]
        with self._open_file(fname) as f:
            if self._use_pyspng and pyspng is not None and fname.lower().endswith('.png'):
                image = pyspng.load(f.read())
            else:
                image = np.array(PIL.Image.open(f))
        if image.ndim == 2:
            image = image[:, :, np.newaxis]  # HW => HWC
        return image.transpose(2, 0, 1)  # HWC => CHW

    def _load_raw_labels(self):
        if 'dataset.json' not in self._all_fnames:
            return None
        with self._open_file('dataset.json') as f:
            labels = json.load(f)['labels']
        if labels is None:
            return None
        labels = dict(labels)
        missing = [f for f in self._image_fnames if f not in labels]
        if missing:
            raise IOError(f'{self._path}: dataset.json has no label for {missing[0]} ({len(missing)} image(s) unlabelled)')
        labels = np.array([labels[f] for f in self._image_fnames])
        return labels.astype({1: np.int64, 2: np.float32}[labels.ndim])

#----------------------------------------------------------------------------


class NpzImageDataset(Dataset):
    """Images of one array of an .npz file (default arr_0), read lazily; labels are not used."""

    def __init__(self, path, key='arr_0', name=None, **super_kwargs):
        self._path = path
        self._handle = None         # the open file, or the open member of self._zip
        self._zip = None
        self._handle_pid = None
        arrays = npz.inspect_npz(path)
        if key not in arrays:
            found = ', '.join(sorted(arrays)) or 'nothing'
            raise npz.NpzError(f'{path}: no {key} array of images (found: {found})')
        self._array = arrays[key]
        n, c, h, w = npz.image_array_shape(self._array, path)
        self._image_bytes = c * h * w
        self._hwc = (h, w, c)
        self._stored = self._array.info.compress_type == zipfile.ZIP_STORED
        self._data_offset = None
        if self._stored:
            with open(path, 'rb') as fp:
                self._data_offset = npz.member_data_offset(fp, self._array.info) + self._array.header_size
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
