"""Convert between EDM network pickles and this toolkit's weights-only format.

Examples:

\b
  # EDM pickle -> weights-only file (no code from the pickle runs)
  python convert.py --src=edm-cifar10-32x32-cond-vp.pkl --dest=edm-cifar10-32x32-cond-vp.pt

\b
  # weights-only file -> EDM pickle (loads in NVIDIA's EDM code as well)
  python convert.py --src=edm-cifar10-32x32-cond-vp.pt --dest=edm-cifar10-32x32-cond-vp.pkl
"""

import os
import pickle

import click

import dnnlib
from training import loader, weights


def convert(src, dest, fmt=None, allow_pickle_code=None):
    """Read `src` (pickle or weights file, path or URL) and write it to `dest` in format 'pickle' or 'weights'."""
    if fmt is None:
        fmt = 'pickle' if os.path.splitext(dest)[1].lower() == '.pkl' else 'weights'
    data = loader.load_network_pickle(src, allow_pickle_code=allow_pickle_code)
    loader.network_from_pickle_data(data, src)  # fail early if it holds no network
    if not isinstance(data, dict):
        data = dict(ema=data)
    with dnnlib.util.atomic_write(dest) as f:
        if fmt == 'pickle':
            pickle.dump(data, f)
        else:
            weights.save_weights(data, f)
    return fmt


@click.command(help=__doc__)
@click.option('--src', metavar='PATH|URL', required=True, help='Network pickle or weights-only file to read')
@click.option('--dest', metavar='PATH', required=True, help='File to write (.pkl: EDM pickle, otherwise weights-only)')
@click.option('--format', 'fmt', type=click.Choice(['pickle', 'weights']), default=None,
              help='Output format  [default: from the --dest extension]')
@click.option('--allow-pickle-code', is_flag=True, default=None,
              help='Run the code stored in the source pickle (EDM behaviour; trusted files only)')
def main(src, dest, fmt, allow_pickle_code):
    folder = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(folder):
        raise click.ClickException(f'{folder}: no such directory')
    try:
        fmt = convert(src, dest, fmt, allow_pickle_code)
    except (loader.NetworkLoadError, weights.WeightsFormatError) as err:
        raise click.ClickException(str(err)) from None
    except OSError as err:
        raise click.ClickException(f'cannot write {dest}: {err.strerror or err}') from None
    click.echo(f'Wrote {dest} ({fmt})')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
