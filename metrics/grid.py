"""A grid PNG of the first images of a folder, ZIP or samples .npz: a look without code."""

import os

from torch_utils import images as image_io

from .detector import MetricError
from .features import open_images

DEFAULT_NUM = 64


def write_image_grid(images_path, dest, num=DEFAULT_NUM, cols=None):
    """Tile the first `num` images at images_path (folder, ZIP, or .npz with uint8 arr_0 [N, H, W, C],
    in their stored order: seed order for image_sample.py's files) into the PNG `dest`.

    Returns the number of images tiled; raises MetricError with one line on bad input.
    """
    if os.path.isdir(images_path) and os.path.commonpath([os.path.realpath(images_path), os.path.realpath(dest)]) \
            == os.path.realpath(images_path):
        raise MetricError(f'--dest {dest} lies inside {images_path}, where it would count as one more image; '
                          f'write it outside')
    dataset = open_images(images_path)
    count = min(num, len(dataset))
    if count == 0:
        raise MetricError(f'{images_path}: found no images')
    try:
        tiles = [dataset[idx][0].transpose(1, 2, 0) for idx in range(count)]
    except (OSError, ValueError) as err:  # an unreadable or odd-sized image
        raise MetricError(f'{images_path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}') from None
    try:
        image_io.save_grid(dest, tiles, cols)
    except OSError as err:
        raise MetricError(f'cannot write {dest}: {err.strerror or err}') from None
    return count
