"""Sample a TS-DPM DDPM-backbone checkpoint with TS-DPM's own command (Mingxiao-Li/TS-DPM run_generate.py).

Its flags, their names and defaults are TS-DPM's; its samplers (pnm_solver with euler,
improved_euler_solver, runge_kutta, s_pndm, f_pndm, ddpm; dpm-solver; deis) compute what its
code computes, quirks included (docs/tsdpm.md). Added: --seed (image i uses seed SEED + i),
--image_path honoured (TS-DPM ignores it and names a folder from the flags, which is what
happens here without it), --device, torchrun scale-out, resuming by index.
"""

import json
import sys
import os

import click

from samplers import tsdpm
from samplers import tsdpm_jobs
from samplers.jobs import JobError
from torch_utils import cli
from torch_utils import distributed as dist

SAMPLER_NAMES = ('pnm_solver', 'dpm-solver', 'deis')


def _backbones():
    try:
        from networks import tsdpm as backbones  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise JobError('the TS-DPM backbones (networks/tsdpm.py) are not part of this checkout') from None
    return backbones


def _image_shape(config):
    data = config.get('Dataset')
    if not isinstance(data, dict):
        raise JobError('config has no Dataset section')
    for key, high in (('channels', 64), ('image_size', 4096)):
        value = data.get(key)
        if type(value) is not int or not 1 <= value <= high:
            raise JobError(f'config key Dataset.{key} must be an integer in 1..{high}, got {value!r}')
    return [data['channels'], data['image_size'], data['image_size']]


def options_of(values):
    """TSDPMOptions of the command-line values."""
    return tsdpm.TSDPMOptions(sampler=values['sampler'], method=values['method'], sample_speed=values['sample_speed'],
                              time_shift=values['time_shift'], window_size=values['window_size'],
                              cut_off_value=values['cut_off_value'], scale_method=values['scale_method'],
                              step_size=values['step_size'], fix_scale=values['fix_scale'], nor_var=values['nor_var'],
                              eta=values['eta'])


def run(values):
    """The command's work inside a torchrun process group (or a single process); returns TSDPMStats."""
    backbones = _backbones()
    options = options_of(values)
    if values['seed'] + values['total_num_imgs'] > 1 << 32:
        raise JobError(f'seeds {values["seed"]}..{values["seed"] + values["total_num_imgs"] - 1} must lie in [0, 2^32)')
    config_path = tsdpm_jobs.resolve_config(values['config'])
    config = backbones.read_config(config_path)
    shape = _image_shape(config)
    schedule = backbones.schedule_of(config)
    betas = backbones.beta_schedule(schedule['schedule'], schedule['diffusion_steps'], schedule['beta_start'], schedule['beta_end'])
    options.check(len(betas))
    folder = values['image_path'] or tsdpm_jobs.folder_name(options, values['dataset'])
    device = dist.init(values['device'])
    try:
        net = backbones.load_backbone(values['model_path'], config).to(device)
        tables = tsdpm.make_tables(betas, device=device)
        model_path = os.path.abspath(values['model_path'])
        record = dict(config=os.path.abspath(config_path), config_sha256=tsdpm_jobs.file_digest(config_path),
                      model_path=model_path, model_sha256=tsdpm_jobs.file_digest(model_path))
        dist.print0(f'Sampling {values["total_num_imgs"]} images with {options.sampler}'
                    f'{" " + options.method if options.sampler == "pnm_solver" else ""}, {options.sample_speed} steps'
                    f'{", time shift" if options.time_shift else ""} to "{folder}"', file=sys.stderr)
        stats = tsdpm_jobs.generate(net, tables, options, shape, folder, values['total_num_imgs'], seed=values['seed'],
                                    record=record, batch_size=values['batch_size'], device=device)
        if dist.get_rank() == 0:
            click.echo(json.dumps(dict(folder=stats.folder, images=values['total_num_imgs'], written=stats.num_written,
                                       kept=stats.num_skipped, seconds=round(stats.seconds, 3), seed=values['seed'],
                                       config=config_path, **record_options(options))))
        return stats
    finally:
        dist.shutdown()


def record_options(options):
    return dict(sampler=options.sampler, method=options.method, sample_speed=options.sample_speed,
                time_shift=options.time_shift, window_size=options.window_size, cut_off_value=options.cut_off_value,
                scale_method=options.scale_method, step_size=options.step_size, fix_scale=options.fix_scale,
                nor_var=options.nor_var, eta=options.eta)


@click.command(context_settings=dict(max_content_width=120))
@click.option('--runner', default='sample', show_default=True, hidden=True, help='TS-DPM: ignored')
@click.option('--config', default='ddim_cifar10.yml', show_default=True, metavar='PATH|NAME',
              help='Config yml: a path, a name under ./config/, or a shipped one (configs/tsdpm: ddim_cifar10, '
                   'ddim_celeba, ddim_church, ddim_bedroom, iddpm_cifar10, pf_cifar10, pf_deep_cifar10)')
@click.option('--model', default='DDIM', show_default=True, help='TS-DPM: unused (the network is the config\'s Model.struc)')
@click.option('--method', default='F-PNDM', show_default=True,
              help='pnm_solver: euler|improved_euler_solver|runge_kutta|s_pndm|f_pndm|ddpm; the others only name the folder')
@click.option('--sample_speed', type=int, default=50, show_default=True, help='Number of sampling steps S')
@click.option('--image_path', type=str, default=None, metavar='DIR',
              help='Write DIR/<i>.png  [default: TS-DPM\'s folder named from the flags, under the current folder]')
@click.option('--model_path', default='temp/models/ddim/ema_cifar10.ckpt', show_default=True, metavar='PATH',
              help='Checkpoint: a state dict, or a list whose first element is one (read with weights_only=True)')
@click.option('--sampler', type=click.Choice(SAMPLER_NAMES), default='pnm_solver', show_default=True, help='Sampler')
@click.option('--total_num_imgs', '--total_num_img', 'total_num_imgs', type=click.IntRange(min=1), default=1,
              show_default=True, help='Number of images (images 0 .. N-1)')
@click.option('--batch_size', type=click.IntRange(min=1, max=cli.MAX_BATCH), default=1, show_default=True,
              help='Batch size (the images do not depend on it)')
@click.option('--dataset', default='cifar', show_default=True, help='Names the default folder')
@click.option('--time_shift', is_flag=True, help='TS-DPM\'s time shift')
@click.option('--window_size', type=int, default=None, help='Time shift window W (pnm_solver, dpm-solver: half width W//2; deis: W)')
@click.option('--cut_off_value', type=int, default=None, help='Time shift only while the timestep exceeds this')
@click.option('--scale_method', is_flag=True, help='Epsilon scaling (pnm_solver euler and ddpm only)')
@click.option('--step_size', type=cli.FLOAT, default=None, help='Epsilon scale 1 + STEP_SIZE * k at step k')
@click.option('--fix_scale', type=cli.FLOAT, default=None, help='Constant epsilon scale')
@click.option('--nor_var', is_flag=True, help='Rescale x to the noise variance of the grid time before each step')
@click.option('--eta', type=cli.FloatRange(min=0), default=0.0, show_default=True, help='ddpm: noise of each step')
@click.option('--seed', type=click.IntRange(min=0), default=0, show_default=True, help='Image i uses seed SEED + i')
@click.option('--device', type=cli.DEVICE, default=None, help='Torch device  [default: this rank\'s GPU, else cpu]')
def main(**values):
    """Generate images from a TS-DPM backbone with TS-DPM's samplers; prints one JSON line.

    Examples:

    \b
    # F-PNDM, 100 steps, time shift window 5 cutoff 550 (TS-DPM's published setting)
    python run_generate.py --config ddim_cifar10.yml --model DDIM --model_path ddim_cifar10.ckpt \\
        --sampler pnm_solver --batch_size 256 --total_num_imgs 50000 --method f_pndm --sample_speed 100 \\
        --dataset cifar --time_shift --window_size 5 --cut_off_value 550

    \b
    # DPM-Solver 5 steps, window 30 cutoff 300, on 2 GPUs, into a chosen folder
    torchrun --standalone --nproc_per_node=2 run_generate.py --config ddim_cifar10.yml \\
        --model_path ddim_cifar10.ckpt --sampler dpm-solver --batch_size 1024 --total_num_imgs 50000 \\
        --sample_speed 5 --time_shift --window_size 30 --cut_off_value 300 --image_path out/dpm5-ts
    """
    try:
        run(values)
    except Exception as err:  # pylint: disable=broad-except
        backbones = None
        try:
            backbones = _backbones()
        except JobError:
            pass
        known = (JobError, tsdpm.TSDPMSamplerError, dist.DeviceError)
        if backbones is not None:
            known += tuple(getattr(backbones, name) for name in ('TSDPMConfigError', 'TSDPMCheckpointError')
                           if hasattr(backbones, name))
        if isinstance(err, OSError):
            message = cli.os_error_message(err)
        elif isinstance(err, known):
            message = str(err)
        else:
            raise
        if os.environ.get('RANK', '0') != '0':
            raise SystemExit(1)
        raise click.ClickException(message) from None


cli.bound_int_options(main)  # 2^70 and the like: one line (issue 26)

if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
