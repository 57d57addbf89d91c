"""Training images for guided-diffusion's image_train: its image folders and the toolkit's datasets.

A folder is read as guided-diffusion's `load_data` reads it: jpg/jpeg/png/gif files found
recursively (each folder's entries in sorted order), the class of a file the prefix of its
name before the first '_' (classes numbered in sorted order), each image converted to RGB,
halved with BOX while its short side is at least twice the size, BICUBIC-resized to the size
and center-cropped, so images of any sizes mix. A .zip is the toolkit's dataset format
(training/dataset.py, dataset_tool.py): square images of exactly the size, labels from its
dataset.json. Every file is opened once up front, so a bad image fails before training.
"""

import os

import numpy as np
import PIL.Image

from training.dataset import ImageFolderDataset

EXTENSIONS = ('jpg', 'jpeg', 'png', 'gif')
CACHE_BYTES = 256 << 20     # Preprocessed images kept in memory (uint8) up to this total.


class DataError(ValueError):
    """A data folder or dataset that cannot be trained on; the message is one line."""


def list_image_files(folder):
    """guided-diffusion's _list_image_files_recursively: sorted entries, folders descended in place."""
    found = []
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if '.' in entry and entry.split('.')[-1].lower() in EXTENSIONS:
            found.append(path)
        elif os.path.isdir(path):
            found.extend(list_image_files(path))
    return found


def center_crop_arr(image, size):
    """guided-diffusion's resize-and-center-crop of a PIL image to size x size, as uint8 HWC."""
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=PIL.Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=PIL.Image.BICUBIC)
    arr = np.array(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


class TrainingImages:
    """The images (uint8 CHW, size x size, RGB) and labels of a folder or dataset ZIP."""

    def __init__(self, path, image_size, class_cond=False, num_classes=None):
        self.path = path
        self.size = int(image_size)
        self.labels = None
        self._cache, self._cached_bytes = {}, 0
        if os.path.isfile(path) and path.lower().endswith('.zip'):
            self._init_zip(class_cond)
        elif os.path.isdir(path):
            self._init_folder(class_cond)
        else:
            raise DataError(f'--data_dir {path}: not a folder or a .zip dataset')
        if class_cond and num_classes is not None and self.labels.max() >= num_classes:
            raise DataError(f'{path}: {int(self.labels.max()) + 1} classes, but the model has {num_classes} (--num_classes)')

    def _init_folder(self, class_cond):
        self.files = list_image_files(self.path)
        if not self.files:
            raise DataError(f'--data_dir {self.path}: no image files ({", ".join(EXTENSIONS)}) found')
        for file in self.files:
            try:
                with PIL.Image.open(file) as image:
                    image.verify()
            except Exception as err:  # PIL reports bad files (and decompression bombs) in many ways
                raise DataError(f'cannot read image {file}: {str(err).splitlines()[0] if str(err) else type(err).__name__}') from None
        self._zip = None
        if class_cond:
            names = [os.path.basename(file).split('_')[0] for file in self.files]
            classes = {name: index for index, name in enumerate(sorted(set(names)))}
            self.labels = np.array([classes[name] for name in names], dtype=np.int64)

    def _init_zip(self, class_cond):
        try:
            self._zip = ImageFolderDataset(self.path, resolution=self.size, use_labels=class_cond)
            shapes = set()
            for i in range(len(self._zip)):  # every image is decoded once here; the first CACHE_BYTES are kept
                arr = self._zip._load_raw_image(i)
                shapes.add(tuple(arr.shape))
                if arr.shape[0] == 3 and self._cached_bytes + arr.nbytes <= CACHE_BYTES:
                    self._cache[i] = np.ascontiguousarray(arr)
                    self._cached_bytes += arr.nbytes
            labels = self._zip._get_raw_labels() if class_cond else None
        except (OSError, ValueError) as err:
            raise DataError(str(err).splitlines()[0]) from None
        except Exception as err:
            raise DataError(f'cannot read dataset {self.path}: {err}') from None
        if len(shapes) != 1:
            raise DataError(f'{self.path}: images of {len(shapes)} different shapes ({", ".join(map(str, sorted(shapes)))})')
        shape = shapes.pop()
        if shape[0] not in (1, 3):
            raise DataError(f'{self.path}: images have {shape[0]} channels; image_train needs RGB or grayscale')
        if class_cond:
            if labels is None or labels.ndim != 1:
                raise DataError(f'{self.path}: --class_cond True needs integer class labels in dataset.json')
            self.labels = labels.astype(np.int64)
        self.files = list(range(len(self._zip)))

    def __len__(self):
        return len(self.files)

    def image(self, index):
        """Image `index` as uint8 [3, size, size]."""
        if index in self._cache:
            return self._cache[index]
        if self._zip is not None:
            arr = self._zip._load_raw_image(index)
            arr = np.repeat(arr, 3, axis=0) if arr.shape[0] == 1 else arr
        else:
            try:
                with PIL.Image.open(self.files[index]) as image:
                    image.load()
                    arr = center_crop_arr(image.convert('RGB'), self.size).transpose(2, 0, 1)
            except Exception as err:
                raise DataError(f'cannot read image {self.files[index]}: {err}') from None
        arr = np.ascontiguousarray(arr)
        if self._cached_bytes + arr.nbytes <= CACHE_BYTES:
            self._cache[index] = arr
            self._cached_bytes += arr.nbytes
        return arr

    def label(self, index):
        return None if self.labels is None else int(self.labels[index])
