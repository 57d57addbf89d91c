"""Build EDM/StyleGAN datasets: an uncompressed ZIP (or a folder) of PNGs plus dataset.json.

The command line over training/dataset_convert.py, whose convert_dataset() is the library
entry point; `python dataset_tool.py --help` lists the options.
"""

import re

import click

from torch_utils import cli
# convert_dataset, read_idx and default_workers are imported from here by scripts and tests.
from training.dataset_convert import TRANSFORMS, DatasetToolError, convert_dataset, default_workers, read_idx  # noqa: F401

#----------------------------------------------------------------------------
# Command line.


MAX_RESOLUTION = 8192  # pixels per side (an 8192x8192 RGB image is 200 MB)


class ResolutionType(click.ParamType):
    """WxH (or W,H) -> (width, height)."""
    name = 'WxH'

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        match = re.fullmatch(r'\s*(\d+)\s*[x,]\s*(\d+)\s*', str(value))
        if not match:
            self.fail(f'{value!r} is not WxH, e.g. 64x64', param, ctx)
        width, height = int(match.group(1)), int(match.group(2))
        if not (0 < width <= MAX_RESOLUTION and 0 < height <= MAX_RESOLUTION):
            self.fail(f'{value!r}: width and height must be from 1 to {MAX_RESOLUTION}', param, ctx)
        return width, height


@click.command(context_settings=dict(max_content_width=90, terminal_width=90))
@click.option('--source', help='Input folder, ZIP, .npz of images, CIFAR-10 tarball, MNIST idx file or LMDB folder', metavar='PATH', type=str, required=True)
@click.option('--dest', help='Output .zip archive or folder (must not exist, or be empty)', metavar='PATH', type=str, required=True)
@click.option('--max-images', help='Use only the first INT images of the source', metavar='INT', type=click.IntRange(min=1))
@click.option('--transform', help='Crop before resizing (needs --resolution)', type=click.Choice(TRANSFORMS))
@click.option('--resolution', help='Output resolution, e.g. 64x64  [default: keep the source size]', metavar='WxH', type=ResolutionType())
@click.option('--workers', help='Worker processes  [default: number of CPUs]', metavar='INT', type=click.IntRange(min=1))
def main(source, dest, max_images, transform, resolution, workers):
    """Convert images into an EDM/StyleGAN dataset: an uncompressed ZIP (or a folder) of PNGs
    named 00000/img00000000.png, ... plus dataset.json holding the labels.

    \b
    The kind of --source is recognised as follows:
      folder/                          every image below it, recursively, in path order;
                                       labels from folder/dataset.json, else from the
                                       top-level subfolder names (one class each)
      archive.zip                      every image in the archive, sorted by name; labels
                                       from its dataset.json
      samples.npz                      guided-diffusion's samples or reference batch: uint8
                                       images [N, H, W, C] in arr_0, labels in arr_1 if any
      cifar-10-python.tar.gz           the training batches of a CIFAR-10 python tarball
                                       (any tar holding data_batch_N pickles), with labels
      *-images-idx3-ubyte[.gz]         an MNIST idx image file (train or t10k) with its
                                       *-labels-idx1-ubyte[.gz] beside it; a folder holding
                                       exactly one such image file works too; padded to 32x32
      *_lmdb/ (or a folder with data.mdb)  LSUN LMDB database, no labels (pip install lmdb)

    dataset.json is {"labels": [["00000/img00000000.png", 6], ...]}, or {"labels": null}
    when any image has no label.

    \b
    Pixels: images are stored as grayscale (1 channel) or RGB (3 channels). Palette, CMYK
    and 1-bit images are converted to RGB or grayscale; images with an alpha channel and
    16-bit or float images are rejected. Grayscale images become RGB under --transform.
    All output images must end up the same size and channel count, square, with a
    power-of-two side.

    \b
    Resizing uses Pillow's Lanczos filter exactly as EDM's dataset_tool.py does:
      --resolution=WxH                       resize every image to WxH
      --transform=center-crop                crop the largest centred square, then resize
      --transform=center-crop-wide           keep the centred rows matching a WxH aspect
                                             ratio, resize to WxH and pad to WxW with black;
                                             images smaller than WxH are skipped

    \b
    An image that cannot be read stops the conversion with its name. On any error nothing
    is left at --dest: output is written under a temporary name and renamed when complete.
    The output is the same byte for byte whatever the number of --workers.

    \b
    Examples:
      python dataset_tool.py --source=downloads/cifar10/cifar-10-python.tar.gz \\
          --dest=datasets/cifar10-32x32.zip
      python dataset_tool.py --source=downloads/ffhq/images1024x1024 \\
          --dest=datasets/ffhq-64x64.zip --resolution=64x64
      python dataset_tool.py --source=downloads/imagenet/ILSVRC/Data/CLS-LOC/train \\
          --dest=datasets/imagenet-64x64.zip --resolution=64x64 --transform=center-crop
    """
    try:
        summary = convert_dataset(source, dest, max_images=max_images, transform=transform,
                                  resolution=resolution, workers=workers)
    except DatasetToolError as err:
        raise click.ClickException(str(err)) from None
    except OSError as err:  # disk full, file size limit, permissions: nothing is left at --dest
        raise click.ClickException(cli.os_error_message(err, action=None)) from None
    w, h, c = summary['shape']
    click.echo(f'Wrote {summary["images"]} images ({w}x{h}, {c} channel{"s" if c > 1 else ""}, '
               f'labels: {"yes" if summary["labels"] else "none"}) to {dest}')


cli.bound_int_options(main)  # 2^70 and the like: one line (issue 26)

if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
