"""The project's one PNG writer and grid maker.

Images are uint8 numpy arrays, HWC with C = 1 (grayscale) or 3 (RGB), or HW for grayscale.
PNGs are encoded by Pillow with its default settings (the bytes EDM's `generate.py` writes
for the same pixels) and written atomically: a reader or a killed run never sees half a file.
"""

import io
import math
import os

import numpy as np
import PIL.Image
import torch

import dnnlib


def to_uint8(images):
    """float images [N, C, H, W] in [-1, 1] -> uint8 numpy [N, H, W, C], quantised as EDM does."""
    return (images * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _pil_image(image):
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f'expected uint8 pixels, got {image.dtype}')
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f'expected an HW, HW1 or HW3 image, got shape {tuple(image.shape)}')
    return PIL.Image.fromarray(np.ascontiguousarray(image))


def encode_png(image, compress_level=None):
    """PNG bytes of a uint8 HW/HW1/HW3 image; compress_level None = Pillow's default (zlib 6)."""
    buf = io.BytesIO()
    kwargs = {} if compress_level is None else dict(compress_level=compress_level)
    _pil_image(image).save(buf, format='png', **kwargs)
    return buf.getvalue()


PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
PNG_TRAILER = b'\x00\x00\x00\x00IEND\xaeB`\x82'   # the IEND chunk every complete PNG ends with


def save_png(path, image, compress_level=None):
    """Write `image` to `path` as PNG via a temporary file, synced to disk, renamed into place:
    after a crash the file is either absent or complete."""
    data = encode_png(image, compress_level)
    with dnnlib.util.atomic_write(path) as f:
        f.write(data)


def is_complete_png(path) -> bool:
    """True if `path` is a file that starts like a PNG and ends with its IEND chunk: a cheap
    test (two small reads) that rejects empty and truncated files."""
    try:
        with open(path, 'rb') as f:
            if f.read(8) != PNG_SIGNATURE:
                return False
            f.seek(0, os.SEEK_END)
            if f.tell() < len(PNG_SIGNATURE) + 25 + len(PNG_TRAILER):  # signature, IHDR, IEND
                return False
            f.seek(-len(PNG_TRAILER), os.SEEK_END)
            return f.read() == PNG_TRAILER
    except OSError:
        return False


def read_png(path):
    """uint8 HWC pixels of an image file (C = 1 for grayscale)."""
    with PIL.Image.open(path) as img:
        image = np.array(img)
    return image[:, :, np.newaxis] if image.ndim == 2 else image


def make_grid(images, cols=None):
    """One uint8 image [rows*H, cols*W, C] tiling `images` [N, H, W, C] row by row; the
    unused cells of the last row are black. cols defaults to ceil(sqrt(N))."""
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f'expected a non-empty [N, H, W, C] array, got shape {tuple(images.shape)}')
    n, h, w, c = images.shape
    cols = max(1, min(n, cols if cols else math.ceil(math.sqrt(n))))
    rows = math.ceil(n / cols)
    padded = np.zeros([rows * cols, h, w, c], dtype=images.dtype)
    padded[:n] = images
    return padded.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def save_grid(path, images, cols=None):
    """Write make_grid(images, cols) to `path` as PNG (atomically); create its folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    save_png(path, make_grid(images, cols))
