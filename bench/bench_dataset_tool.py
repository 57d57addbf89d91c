"""dataset_tool.py throughput: images/s converting MNIST-sized images with 1 vs N workers.

    python bench/bench_dataset_tool.py                        # 10000 images, 1 and 2 workers
    python bench/bench_dataset_tool.py --images=2000 --workers=1,2,4 --dest=folder

A synthetic MNIST idx pair (28x28 digits-like noise and labels) is written to a temporary
folder and converted with `dataset_tool.convert_dataset()`, as `dataset_tool.py --source=...
--dest=out.zip` would. Workers above the CPUs this process may use (see `taskset`) share
cores and cannot be faster.
"""

import os
import sys
import tempfile
import time

import click
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dataset_tool  # noqa: E402
from bench.options import positive_int_list  # noqa: E402


def write_idx(path, array):
    """Write a uint8 array as an idx file (the MNIST format)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(int(n).to_bytes(4, 'big') for n in array.shape)
    with open(path, 'wb') as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def make_mnist(folder, num_images, seed=0):
    """Path of a synthetic train-images-idx3-ubyte (with its labels file) of `num_images` 28x28 images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    blob = np.exp(-((yy - 14) ** 2 + (xx - 14) ** 2) / 40.0)  # a bright centre, like a digit
    images = (rng.random([num_images, 28, 28]) * blob * 255).astype(np.uint8)
    labels = rng.integers(0, 10, num_images, dtype=np.uint8)
    images_path = os.path.join(folder, 'train-images-idx3-ubyte')
    write_idx(images_path, images)
    write_idx(os.path.join(folder, 'train-labels-idx1-ubyte'), labels)
    return images_path


def convert_seconds(source, dest, workers):
    start = time.perf_counter()
    summary = dataset_tool.convert_dataset(source, dest, workers=workers, progress=False)
    elapsed = time.perf_counter() - start
    return elapsed, summary['images']


@click.command()
@click.option('--images', type=click.IntRange(min=1), default=10000, show_default=True, help='Number of images')
@click.option('--workers', 'counts', default='1,2', show_default=True, callback=positive_int_list, help='Worker counts, e.g. 1,2,4')
@click.option('--dest', type=click.Choice(['zip', 'folder']), default='zip', show_default=True, help='Output kind')
@click.option('--repeat', type=click.IntRange(min=1), default=1, show_default=True, help='Runs per count (fastest kept)')
def main(images, counts, dest, repeat):
    """Print images/s of convert_dataset() for each worker count."""
    print(f'{images} synthetic 28x28 MNIST images -> 32x32 PNGs in a {dest}; '
          f'{dataset_tool.default_workers()} CPUs usable by this process; best of {repeat}')
    print(f'{"workers":>7s} {"seconds":>8s} {"images/s":>9s} {"speed-up":>9s}')
    with tempfile.TemporaryDirectory() as tmp:
        source = make_mnist(tmp, images)
        base = None
        for workers in counts:
            best = None
            for r in range(repeat):
                out = os.path.join(tmp, f'out-{workers}-{r}' + ('.zip' if dest == 'zip' else ''))
                seconds, written = convert_seconds(source, out, workers)
                assert written == images
                best = seconds if best is None else min(best, seconds)
            base = best if base is None else base
            print(f'{workers:7d} {best:8.2f} {images / best:9.0f} {base / best:9.2f}', flush=True)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
