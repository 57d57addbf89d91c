"""guided-diffusion's sampling command lines (image_sample.py, classifier_sample.py) as a library.

The flags are guided-diffusion's (names, defaults, True/False booleans) plus its forks' (ADM-ES's
--eps_scaler, TS-DPM-ADM's --do_time_shift --window --cutoff) and this toolkit's (--seed,
--out_dir, --resume, --solver, ...). `adm_flag_options` makes them click options, `run_sampling`
does a command's work: it reads the checkpoint (and the classifier) weights-only and writes
samples_NxHxWxC.npz through samplers.jobs.sample_to_npz, resumable and under torchrun.
"""

import dataclasses
import os

import click

from networks import adm
from networks import classifier as noisy_classifier
from torch_utils import cli
from torch_utils import distributed as dist
from torch_utils import threads

from . import SOLVERS, SamplerOptionError, SamplerOptions
from . import guidance as guidance_lib
from .fast import FastPathError, FastPaths
from .guidance import GUIDANCE_MODES
from .jobs import JobError, sample_to_npz
from .sampler import check_guidance, check_network
from .time_shift import TimeShiftError


# The sampling flags of both commands (guided-diffusion's, the forks', and this toolkit's --seed and --eta).
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
# classifier_sample.py's own flags: guided-diffusion's classifier_defaults() and its script's, and
# --guidance_mode (this toolkit's).
GUIDANCE_FLAGS = dict(
    classifier_path=(None, 'Classifier checkpoint (.pt state dict of guided-diffusion\'s EncoderUNetModel)'),
    classifier_scale=(1.0, 'Guidance scale s: the gradient of log p(y|x_t) is multiplied by s'),
    **{name: (default, 'Classifier flag (guided-diffusion\'s create_classifier)')
       for name, default in noisy_classifier.CLASSIFIER_FLAGS.items()},
    guidance_mode=('adm-es', 'adm-es: DDIM divides the guided eps by the eps scaler again, as ADM-ES\'s code; '
                             'clean: once (docs/adm.md)'),
)
# Flags of the originals' other scripts that change no sample (training, data): accepted and ignored.
IGNORED_FLAGS = ('gpu_id', 'data_type', 'model_type', 'data_dir', 'lr', 'microbatch', 'ema_rate', 'log_interval',
                 'save_interval', 'resume_checkpoint', 'schedule_sampler', 'weight_decay', 'lr_anneal_steps',
                 'fp16_scale_growth', 'input_pertub', 'perturb_schedule_type', 'perturb_cutoff')

# Types of the flags whose guided-diffusion type (that of the default) is too loose.
TYPES = dict(solver=click.Choice([*SOLVERS, 'ddpm', 'ddim']), order=click.IntRange(min=1, max=3), model_path=str,
             num_classes=click.IntRange(min=1), device=cli.DEVICE, seed=click.IntRange(min=0),
             num_samples=click.IntRange(min=1), batch_size=click.IntRange(min=1, max=cli.MAX_BATCH),
             classifier_path=str, classifier_pool=click.Choice(noisy_classifier.POOLS),
             classifier_width=click.IntRange(min=1), classifier_depth=click.IntRange(min=0),
             guidance_mode=click.Choice(GUIDANCE_MODES))


def _option(name, default, text, hidden=False):
    kind = cli.guided_flag_type(name, default, TYPES)
    if name in ('model_path', 'classifier_path'):
        return click.option(f'--{name}', type=kind, required=True, metavar='PATH|URL', help=text)
    return click.option(f'--{name}', type=kind, default=default, show_default=default is not None, help=text,
                        hidden=hidden)


def adm_flag_options(guidance=False, refused=()):
    """A decorator adding the model, diffusion and sampling flags as click options; with
    `guidance`, classifier_sample.py's flags too. `refused` flags are hidden options taking any
    value (None when not given), for the command to refuse with a line saying what to use."""
    def decorate(fn):
        options = [_option(name, default, 'ADM model flag') for name, default in adm.MODEL_FLAGS.items()]
        options += [_option(name, default, 'ADM diffusion flag') for name, default in adm.DIFFUSION_FLAGS.items()]
        options += [_option(name, default, text) for name, (default, text) in SAMPLING_FLAGS.items()]
        if guidance:
            options += [_option(name, default, text) for name, (default, text) in GUIDANCE_FLAGS.items()]
        options += [_option(name, None, 'ignored', hidden=True) for name in IGNORED_FLAGS]
        options += [click.option(f'--{name}', type=str, default=None, hidden=True) for name in refused]
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


def sampler_options(values):
    """SamplerOptions of the guided-diffusion sampling flags."""
    solver = values['solver'] or ('ddim' if values['use_ddim'] else 'ddpm')
    if values['do_time_shift'] and solver != 'ddim':
        # Answered in this command's own flags (SamplerOptions would name generate.py's --ts_mode).
        used = f'--solver {solver}' if values['solver'] else 'DDPM (no --use_ddim True)'
        raise JobError(f'--do_time_shift True is TS-DPM-ADM\'s time shift for DDIM: add --use_ddim True, or drop '
                       f'--do_time_shift for {used} (TS-DPM-ADM\'s own DDPM ignores it)')
    discrete_only = dict(eta=values['eta'], clip_denoised=values['clip_denoised']) if solver in ('ddpm', 'ddim') else {}
    return SamplerOptions(solver=solver, order=values['order'], respacing=values['timestep_respacing'], **discrete_only,
                          eps_scaler=values['eps_scaler'],
                          eps_scaler_k=values['eps_scaler_k'], ts_mode='tsdpm' if values['do_time_shift'] else 'clean',
                          ts_window=values['window'] if values['do_time_shift'] else 0,
                          ts_cutoff=values['cutoff'] if values['do_time_shift'] else SamplerOptions.ts_cutoff)


def tsdpm_1gpu_name(values):
    """The file name TS-DPM-ADM's scripts/image_sample_1gpu.py gives its samples (its defaults:
    --model_type adm, --data_type cifar)."""
    stem = f'{values["model_type"] or "adm"}_{values["data_type"] or "cifar"}_{values["timestep_respacing"]}step'
    return stem + (f'_{values["window"]}win_{values["cutoff"]}cut' if values['do_time_shift'] else '') + '.npz'


def _source(path):
    return os.path.abspath(path) if os.path.exists(path) else path


def load_guidance(values, device):
    """ClassifierGuidance from classifier_sample.py's flags (leader first under torchrun)."""
    flags = noisy_classifier.classifier_flags(values['image_size'], **{name: values[name] for name in
                                                                     noisy_classifier.CLASSIFIER_FLAGS})
    return dist.leader_first(lambda: guidance_lib.load_guidance(values['classifier_path'], flags, values['classifier_scale'],
                                                                values['guidance_mode'], device), adm.ADMError)


def run_sampling(values, guided=False, name=None):
    """A command's work inside a torchrun process group (or a single process): sample the
    checkpoint of `values` (click's values of adm_flag_options) into --out_dir; NpzStats.

    name: the samples file's name in --out_dir  [default: guided-diffusion's samples_NxHxWxC.npz].
    """
    flags = adm.make_flags(**{name: values[name] for name in [*adm.MODEL_FLAGS, *adm.DIFFUSION_FLAGS, 'num_classes']})
    options = sampler_options(values)
    options.check()
    if guided:
        noisy_classifier.classifier_flags(values['image_size'], **{name: values[name] for name in
                                                                  noisy_classifier.CLASSIFIER_FLAGS})
    if values['seed'] + values['num_samples'] > 1 << 32:
        raise JobError(f'seeds {values["seed"]}..{values["seed"] + values["num_samples"] - 1} must lie in [0, 2^32)')
    device = dist.init(values['device'])
    threads.set_cpu_threads(device, int(os.environ.get('LOCAL_WORLD_SIZE', '1')))
    try:
        # fp16 checkpoints run in float32 on the CPU and under fp16 autocast on a GPU (docs/adm.md).
        fast = FastPaths(autocast='fp16' if flags.use_fp16 and device.type == 'cuda' else 'none')
        net = dist.leader_first(lambda: adm.load_adm_checkpoint(values['model_path'], flags), adm.ADMError)
        net = net.eval().requires_grad_(False).to(device)
        check_network(net, options)
        guidance = load_guidance(values, device) if guided else None
        check_guidance(net, guidance)
        os.makedirs(values['out_dir'], exist_ok=True)
        seeds = range(values['seed'], values['seed'] + values['num_samples'])
        record = dict(model_path=_source(values['model_path']), flags=dict(flags), **dataclasses.asdict(options),
                      **fast.record(), **(guidance.record if guided else {}))
        what = f', classifier scale {guidance.scale:g}' if guided else ''
        dist.print0(f'Sampling {len(seeds)} images with {options.solver}, respacing "{options.timestep_respacing}"'
                    f'{", TS-DPM time shift" if values["do_time_shift"] else ""}{what} to "{values["out_dir"]}"')
        stats = sample_to_npz(net, seeds, values['out_dir'], options, record=record, max_batch_size=values['batch_size'],
                              device=device, fast=fast, resume=values['resume'], guidance=guidance, name=name)
        dist.print0(f'Wrote {stats.path} ({stats.num_written} images sampled, {stats.num_resumed} resumed, '
                    f'{stats.seconds:.1f} s)')
        return stats
    finally:
        dist.shutdown()


COMMAND_ERRORS = (adm.ADMError, SamplerOptionError, FastPathError, TimeShiftError, JobError, dist.DeviceError)


def run_command(fn, values):
    """fn(values), its errors as one line (click.ClickException) on rank 0 and a bare exit elsewhere."""
    try:
        return fn(values)
    except COMMAND_ERRORS as err:
        message = str(err)
    except OSError as err:
        message = cli.os_error_message(err)
    if os.environ.get('RANK', '0') != '0':
        raise SystemExit(1)
    raise click.ClickException(message)
