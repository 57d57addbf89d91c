"""Sample a guided-diffusion (ADM) checkpoint with guided-diffusion's command line.

The commands of guided-diffusion's `scripts/image_sample.py` and of its forks (ADM-ES's
`--eps_scaler`, TS-DPM-ADM's `image_sample_1gpu.py` with `--do_time_shift --window --cutoff`)
run as they are: the model and diffusion flags, their defaults and value syntax (booleans as
True/False) are guided-diffusion's. The `.pt` checkpoint is read with weights_only=True.
Sample i uses seed `--seed` + i (generate.py's image of that seed); the result is
guided-diffusion's `samples_NxHxWxC.npz` in `--out_dir`, written only when complete; a killed
run resumes where it stopped. docs/adm.md has the published commands.
"""

import dataclasses
import os

import click

from samplers import SOLVERS, SamplerOptionError, SamplerOptions
from samplers.fast import FastPathError, FastPaths
from samplers.jobs import JobError, sample_to_npz
from samplers.sampler import check_network
from samplers.time_shift import TimeShiftError
from torch_utils import cli
from torch_utils import distributed as dist
from networks import adm


class GuidedBool(click.ParamType):
    """guided-diffusion's booleans: True/False, yes/no, t/f, y/n, 1/0 in any case."""
    name = 'bool'

    def convert(self, value, param, ctx):
        try:
            return adm.str2bool(value)
        except Exception as err:  # argparse.ArgumentTypeError
            self.fail(str(err), param, ctx)


BOOL = GuidedBool()
# image_sample.py's own flags (guided-diffusion's, the forks', and this toolkit's --seed and --eta).
SAMPLING_FLAGS = dict(
    model_path=(None, 'Checkpoint (.pt state dict) to sample'),
    use_ddim=(False, 'DDIM instead of DDPM'),
    clip_denoised=(True, 'Clamp the predicted x0 to [-1, 1]'),
    num_samples=(10000, 'Number of images'),
    batch_size=(16, 'Maximum batch size (the images do not depend on it)'),
    eta=(0.0, 'DDIM: noise of each step'),
    eps_scaler=(1.0, 'ADM-ES epsilon scaling b (ADM-ES\'s default 0 would divide by zero)'),
    eps_scaler_k=(0.0, 'ADM-ES linear form: lambda = b + k j at respaced index j (0 = last step)'),
    do_time_shift=(False, 'TS-DPM-ADM\'s time shift (DDIM only)'),
    window=(2, 'TS-DPM: window, full width in timesteps'),
    cutoff=(300, 'TS-DPM: shift only while the timestep exceeds this'),
    out_dir=('.', 'Folder for the samples file'),
    seed=(0, 'Sample i uses seed SEED + i'),
    num_classes=(None, 'Class count of a conditional model  [default: the checkpoint\'s]'),
    device=(None, 'Torch device  [default: this rank\'s GPU, else cpu]'),
    resume=(True, 'Reuse the finished batches of a killed run with the same options'),
    solver=(None, 'Another solver over the same respaced timesteps (dpmpp2m, deis, ...; docs/solvers.md)  [default: ddpm/ddim]'),
    order=(None, 'Order of --solver dpmsolver|dpmsolver-ref|deis|unipc-bh1|unipc-bh2  [default: 3]'),
)
HIDDEN_FLAGS = ('gpu_id', 'data_type', 'model_type', 'data_dir', 'classifier_path', 'classifier_scale', 'lr',
                'microbatch', 'ema_rate', 'log_interval', 'save_interval', 'resume_checkpoint', 'schedule_sampler',
                'weight_decay', 'lr_anneal_steps', 'fp16_scale_growth', 'input_pertub', 'perturb_schedule_type',
                'perturb_cutoff')


# Types of the flags whose guided-diffusion type (that of the default) is too loose.
TYPES = dict(solver=click.Choice([*SOLVERS, 'ddpm', 'ddim']), order=click.IntRange(min=1, max=3), model_path=str, num_classes=click.IntRange(min=1), device=cli.DEVICE, seed=click.IntRange(min=0),
             num_samples=click.IntRange(min=1), batch_size=click.IntRange(min=1, max=cli.MAX_BATCH))


def _option(name, default, text, hidden=False):
    kind = TYPES.get(name) or (BOOL if isinstance(default, bool) else cli.FLOAT if isinstance(default, float)
                               else str if default is None else type(default))
    if name == 'model_path':
        return click.option(f'--{name}', type=kind, required=True, metavar='PATH|URL', help=text)
    return click.option(f'--{name}', type=kind, default=default, show_default=default is not None, help=text,
                        hidden=hidden)


def adm_flag_options(fn):
    """The model and diffusion flags of networks/adm.py, then the sampling flags, as click options."""
    options = [_option(name, default, 'ADM model flag') for name, default in adm.MODEL_FLAGS.items()]
    options += [_option(name, default, 'ADM diffusion flag') for name, default in adm.DIFFUSION_FLAGS.items()]
    options += [_option(name, default, text) for name, (default, text) in SAMPLING_FLAGS.items()]
    options += [_option(name, None, 'ignored', hidden=True) for name in HIDDEN_FLAGS]
    for option in reversed(options):
        fn = option(fn)
    return fn


def sampler_options(values):
    """SamplerOptions of the guided-diffusion sampling flags."""
    solver = values['solver'] or ('ddim' if values['use_ddim'] else 'ddpm')
    discrete_only = dict(eta=values['eta'], clip_denoised=values['clip_denoised']) if solver in ('ddpm', 'ddim') else {}
    return SamplerOptions(solver=solver, order=values['order'], respacing=values['timestep_respacing'], **discrete_only,
                          eps_scaler=values['eps_scaler'],
                          eps_scaler_k=values['eps_scaler_k'], ts_mode='tsdpm' if values['do_time_shift'] else 'clean',
                          ts_window=values['window'] if values['do_time_shift'] else 0,
                          ts_cutoff=values['cutoff'] if values['do_time_shift'] else SamplerOptions.ts_cutoff)


def run(values):
    """The command line's work inside a torchrun process group (or a single process)."""
    flags = adm.make_flags(**{name: values[name] for name in [*adm.MODEL_FLAGS, *adm.DIFFUSION_FLAGS, 'num_classes']})
    options = sampler_options(values)
    options.check()
    if values['seed'] + values['num_samples'] > 1 << 32:
        raise JobError(f'seeds {values["seed"]}..{values["seed"] + values["num_samples"] - 1} must lie in [0, 2^32)')
    device = dist.init(values['device'])
    try:
        # fp16 checkpoints run in float32 on the CPU and under fp16 autocast on a GPU (docs/adm.md).
        fast = FastPaths(autocast='fp16' if flags.use_fp16 and device.type == 'cuda' else 'none')
        net = dist.leader_first(lambda: adm.load_adm_checkpoint(values['model_path'], flags), adm.ADMError)
        net = net.eval().requires_grad_(False).to(device)
        check_network(net, options)
        os.makedirs(values['out_dir'], exist_ok=True)
        seeds = range(values['seed'], values['seed'] + values['num_samples'])
        record = dict(model_path=os.path.abspath(values['model_path']) if os.path.exists(values['model_path']) else values['model_path'],
                      flags=dict(flags), **dataclasses.asdict(options), **fast.record())
        dist.print0(f'Sampling {len(seeds)} images with {options.solver}, respacing "{options.timestep_respacing}"'
                    f'{", TS-DPM time shift" if values["do_time_shift"] else ""} to "{values["out_dir"]}"')
        stats = sample_to_npz(net, seeds, values['out_dir'], options, record=record, max_batch_size=values['batch_size'],
                              device=device, fast=fast, resume=values['resume'])
        dist.print0(f'Wrote {stats.path} ({stats.num_written} images sampled, {stats.num_resumed} resumed, '
                    f'{stats.seconds:.1f} s)')
        return stats
    finally:
        dist.shutdown()


@click.command(context_settings=dict(max_content_width=120))
@adm_flag_options
def main(**values):
    """Sample a guided-diffusion checkpoint to samples_NxHxWxC.npz, with guided-diffusion's flags.

    Examples:

    \b
    # TS-DPM-ADM's CIFAR-10 command (DDIM 5 steps with its time shift)
    python image_sample.py --image_size 32 --timestep_respacing ddim5 --model_path ADM.pt \\
        --num_channels 128 --num_head_channels 32 --num_res_blocks 3 --attention_resolutions 16,8 \\
        --resblock_updown True --use_new_attention_order True --learn_sigma True --dropout 0.3 \\
        --diffusion_steps 1000 --noise_schedule cosine --use_scale_shift_norm True --batch_size 512 \\
        --num_samples 50000 --use_ddim True --do_time_shift True --cutoff 300 --window 80 --out_dir OUT

    \b
    # ADM-ES: 100-step DDPM with epsilon scaling 1.017, on 2 GPUs
    torchrun --standalone --nproc_per_node=2 image_sample.py --image_size 32 --timestep_respacing 100 \\
        --eps_scaler 1.017 --model_path ADM.pt --num_channels 128 --num_head_channels 32 --num_res_blocks 3 \\
        --attention_resolutions 16,8 --resblock_updown True --use_new_attention_order True --learn_sigma True \\
        --dropout 0.3 --diffusion_steps 1000 --noise_schedule cosine --use_scale_shift_norm True \\
        --batch_size 512 --num_samples 50000 --out_dir OUT
    """
    try:
        run(values)
    except (adm.ADMError, SamplerOptionError, FastPathError, TimeShiftError, JobError, dist.DeviceError) as err:
        if os.environ.get('RANK', '0') != '0':
            raise SystemExit(1)
        raise click.ClickException(str(err)) from None
    except OSError as err:
        if os.environ.get('RANK', '0') != '0':
            raise SystemExit(1)
        raise click.ClickException(cli.os_error_message(err)) from None


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
