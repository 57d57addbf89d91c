"""Look at generated images without code: a grid PNG of a samples .npz, a folder or a ZIP."""

import click

from metrics.detector import MetricError
from metrics.grid import DEFAULT_NUM, write_image_grid
from torch_utils import cli


@click.command(context_settings=dict(max_content_width=120))
@click.option('--images', 'images_path', help='Images: samples .npz (uint8 arr_0 [N,H,W,C]), folder or ZIP', metavar='NPZ|DIR|ZIP', type=str, required=True)
@click.option('--dest', help='The grid PNG to write', metavar='PNG', type=str, required=True)
@click.option('--num', help='How many images (the first ones, in stored order)', metavar='INT', type=click.IntRange(min=1, max=4096), default=DEFAULT_NUM, show_default=True)
@click.option('--cols', help='Images per row  [default: a square grid]', metavar='INT', type=click.IntRange(min=1), default=None)
def main(images_path, dest, num, cols):
    """Write a grid of the first images of a samples file, folder or ZIP.

    Examples:

    \b
    # The first 64 samples of image_sample.py's output
    python grid.py --images=OUT/samples_50000x32x32x3.npz --dest=grid.png
    """
    try:
        count = write_image_grid(images_path, dest, num=num, cols=cols)
    except MetricError as err:
        raise click.ClickException(str(err)) from None
    print(f'Wrote a grid of {count} images to "{dest}"')


cli.bound_int_options(main)  # 2^70 and the like: one line (issue 26)

if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
