"""Train a guided-diffusion (ADM) model with guided-diffusion's command line, and DDPM-IP's
input perturbation (--input_pertub).

The flags, their defaults and value syntax are guided-diffusion's `scripts/image_train.py`
(and DDPM-IP's --input_pertub); --log_dir, --seed, --max_steps, --num_classes and --device
are the toolkit's. Files are guided-diffusion's (modelNNNNNN.pt, ema_RATE_NNNNNN.pt,
optNNNNNN.pt) plus train_stateNNNNNN.pt, which makes --resume_checkpoint exact; the log is
progress.jsonl. docs/training.md has the published DDPM-IP commands and the differences.
"""

import dataclasses
import os

import click

from networks import adm
from safeload.checkpoints import CheckpointError
from torch_utils import cli
from torch_utils import distributed as dist
from training.adm_data import DataError
from training.adm_diffusion import DiffusionError
from training.adm_train import SCHEDULE_SAMPLERS, TrainError, TrainOptions, train

TRAIN_HELP = dict(
    data_dir='Image folder (class = file-name prefix before the first "_") or dataset .zip',
    schedule_sampler='Timestep sampler',
    lr='AdamW learning rate',
    weight_decay='AdamW weight decay',
    lr_anneal_steps='Anneal lr linearly to 0 over this many updates and stop (0 = constant, no end)',
    batch_size='Batch size per process',
    microbatch='Split each batch into microbatches of this size (-1 = whole batch)',
    ema_rate='EMA rates, comma-separated',
    log_interval='Log every this many updates',
    save_interval='Save every this many updates',
    resume_checkpoint='modelNNNNNN.pt to resume from (its EMA, opt and train_state files beside it)',
    use_fp16='Float16 torso with fp32 master weights and loss scaling (CUDA; fp32 on CPU)',
    fp16_scale_growth='Growth of log2 of the loss scale per update',
    input_pertub='DDPM-IP: x_t from noise + gamma * fresh noise; the target stays the noise',
    log_dir='Output folder  [default: $OPENAI_LOGDIR, else TMP/openai-DATE]',
    seed='Seed of the initial weights, data order and every draw',
    max_steps='Stop after this many updates in all (0 = at lr_anneal_steps, or never)',
    num_classes='Classes of a --class_cond model (guided-diffusion 1000, DDPM-IP 10)',
)
TYPES = dict(schedule_sampler=click.Choice(SCHEDULE_SAMPLERS), lr=cli.FLOAT, weight_decay=cli.FloatRange(min=0),
             lr_anneal_steps=click.IntRange(min=0), batch_size=click.IntRange(min=1, max=cli.MAX_BATCH),
             microbatch=click.IntRange(min=-1), log_interval=click.IntRange(min=1), save_interval=click.IntRange(min=1),
             fp16_scale_growth=cli.FloatRange(min=0), input_pertub=cli.FloatRange(min=0), seed=click.IntRange(min=0),
             max_steps=click.IntRange(min=0), num_classes=click.IntRange(min=1))


def _option(name, default, text):
    kind = cli.guided_flag_type(name, default, TYPES)
    return click.option(f'--{name}', type=kind, default=default, show_default=default != '', help=text)


def train_options(fn):
    """The training flags, then guided-diffusion's model and diffusion flags, as click options."""
    defaults = dataclasses.asdict(TrainOptions())
    options = [_option(name, defaults[name], text) for name, text in TRAIN_HELP.items()]
    options += [_option(name, default, 'ADM model flag') for name, default in adm.MODEL_FLAGS.items() if name != 'use_fp16']
    options += [_option(name, default, 'ADM diffusion flag') for name, default in adm.DIFFUSION_FLAGS.items()]
    options += [click.option('--device', type=cli.DEVICE, default=None, help='Torch device  [default: this rank\'s GPU, else cpu]'),
                click.option('--progress', type=cli.GUIDED_BOOL, default=True, show_default=True, help='Show a progress bar')]
    for option in reversed(options):
        fn = option(fn)
    return fn


def run(values):
    """The command line's work inside a torchrun process group (or a single process)."""
    names = {field.name for field in dataclasses.fields(TrainOptions)}
    options = TrainOptions(**{name: values[name] for name in names})
    flags = {name: values[name] for name in [*adm.MODEL_FLAGS, *adm.DIFFUSION_FLAGS] if name in values}
    options.check()
    device = dist.init(values['device'])
    try:
        result = train(flags, options, device=device, note=dist.print0)
        dist.print0(f'Trained to update {result["updates"]}; files in "{result["log_dir"]}"')
        return result
    finally:
        dist.shutdown()


@click.command(context_settings=dict(max_content_width=120))
@train_options
def main(**values):
    """Train a guided-diffusion model, with guided-diffusion's flags and DDPM-IP's --input_pertub.

    Examples:

    \b
    # DDPM-IP's CIFAR-10 command (gamma 0.15) on 2 GPUs, 64 images per GPU
    torchrun --standalone --nproc_per_node=2 image_train.py --input_pertub 0.15 \\
        --data_dir cifar_train --image_size 32 --use_fp16 True --num_channels 128 --num_head_channels 32 \\
        --num_res_blocks 3 --attention_resolutions 16,8 --resblock_updown True --use_new_attention_order True \\
        --learn_sigma True --dropout 0.3 --diffusion_steps 1000 --noise_schedule cosine \\
        --use_scale_shift_norm True --rescale_learned_sigmas True --schedule_sampler loss-second-moment \\
        --lr 1e-4 --batch_size 64 --log_dir runs/cifar10-ip

    \b
    # Resume it exactly from a save
    torchrun --standalone --nproc_per_node=2 image_train.py ...the same flags... \\
        --resume_checkpoint runs/cifar10-ip/model200000.pt
    """
    try:
        run(values)
    except (adm.ADMError, TrainError, DataError, DiffusionError, CheckpointError, dist.DeviceError) as err:
        if os.environ.get('RANK', '0') != '0':
            raise SystemExit(1)
        raise click.ClickException(str(err)) from None
    except OSError as err:
        if os.environ.get('RANK', '0') != '0':
            raise SystemExit(1)
        raise click.ClickException(cli.os_error_message(err)) from None


cli.bound_int_options(main)  # 2^70 and the like: one line (issue 26)

if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
