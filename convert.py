"""Convert networks: EDM pickles <-> this toolkit's weights-only format, and guided-diffusion
(ADM) checkpoints -> either.

Examples:

\b
  # EDM pickle -> weights-only file (no code from the pickle runs)
  python convert.py --src=edm-cifar10-32x32-cond-vp.pkl --dest=edm-cifar10-32x32-cond-vp.pt

\b
  # weights-only file -> EDM pickle (loads in NVIDIA's EDM code as well)
  python convert.py --src=edm-cifar10-32x32-cond-vp.pt --dest=edm-cifar10-32x32-cond-vp.pkl

\b
  # guided-diffusion checkpoint + its flags -> network pickle for generate.py
  python convert.py --src=ADM.pt --dest=adm-cifar10.pkl --adm-flags="--image_size 32 \\
      --num_channels 128 --num_head_channels 32 --num_res_blocks 3 --attention_resolutions 16,8 \\
      --resblock_updown True --use_new_attention_order True --learn_sigma True --dropout 0.3 \\
      --diffusion_steps 1000 --noise_schedule cosine --use_scale_shift_norm True"

\b
  # the same with the flags of a published checkpoint (docs/adm.md lists them)
  python convert.py --src=64x64_diffusion.pt --dest=adm-imagenet64.pkl --adm-preset=imagenet-64

\b
  # TS-DPM (DDPM-backbone) checkpoint + its config yml -> network pickle for generate.py
  python convert.py --src=ddim_cifar10.ckpt --dest=tsdpm-ddim-cifar10.pkl --tsdpm-config=config/ddim_cifar10.yml
"""

import os
import pickle

import click

import dnnlib
from networks import adm, tsdpm
from safeload import networks as loader, weights


def convert(src, dest, fmt=None, allow_pickle_code=None, adm_flags=None, adm_preset=None, tsdpm_config=None):
    """Read `src` and write it to `dest` in format 'pickle' or 'weights' (default: from the
    extension). With `adm_flags` or `adm_preset`, `src` is a guided-diffusion checkpoint; with
    `tsdpm_config` (a yml path), a TS-DPM checkpoint of that config."""
    if fmt is None:
        fmt = 'pickle' if os.path.splitext(dest)[1].lower() == '.pkl' else 'weights'
    if tsdpm_config is not None:
        data = dict(ema=tsdpm.load_precond(src, tsdpm.read_config(tsdpm_config)))
    elif adm_flags is not None or adm_preset is not None:
        flags = adm.parse_adm_flags(adm_flags or '', preset=adm_preset)
        data = dict(ema=adm.load_adm_checkpoint(src, flags))
    else:
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
@click.option('--src', metavar='PATH|URL', required=True, help='Network pickle, weights-only file or ADM checkpoint to read')
@click.option('--dest', metavar='PATH', required=True, help='File to write (.pkl: EDM pickle, otherwise weights-only)')
@click.option('--format', 'fmt', type=click.Choice(['pickle', 'weights']), default=None,
              help='Output format  [default: from the --dest extension]')
@click.option('--adm-flags', 'adm_flags', metavar='"FLAGS"', default=None,
              help='--src is a guided-diffusion checkpoint with these model flags (guided-diffusion\'s names and values)')
@click.option('--adm-preset', 'adm_preset', type=click.Choice(list(adm.PRESETS)), default=None,
              help='--src is the published guided-diffusion checkpoint of this name (flags as in docs/adm.md)')
@click.option('--tsdpm-config', 'tsdpm_config', metavar='YML', default=None,
              help='--src is a TS-DPM (DDPM-backbone) checkpoint of this config file (its Model, Dataset, Schedule)')
@click.option('--allow-pickle-code', is_flag=True, default=None,
              help='Run the code stored in the source pickle (EDM behaviour; trusted files only)')
def main(src, dest, fmt, adm_flags, adm_preset, tsdpm_config, allow_pickle_code):
    folder = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(folder):
        raise click.ClickException(f'{folder}: no such directory')
    try:
        if tsdpm_config is not None and (adm_flags is not None or adm_preset is not None):
            raise click.ClickException('--tsdpm-config cannot be combined with --adm-flags or --adm-preset')
        fmt = convert(src, dest, fmt, allow_pickle_code, adm_flags=adm_flags, adm_preset=adm_preset,
                      tsdpm_config=tsdpm_config)
    except (loader.NetworkLoadError, weights.WeightsFormatError, adm.ADMError, tsdpm.TSDPMConfigError,
            tsdpm.TSDPMCheckpointError) as err:
        raise click.ClickException(str(err)) from None
    except OSError as err:
        raise click.ClickException(f'cannot write {dest}: {err.strerror or err}') from None
    click.echo(f'Wrote {dest} ({fmt})')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
