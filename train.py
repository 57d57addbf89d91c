"""Train diffusion models with EDM's recipe (Karras et al. 2022): thin CLI over
training.training_loop, with EDM's option names and defaults."""

import contextlib
import json
import os
import re
import sys

import click
import torch

import dnnlib
from torch_utils import cli
from torch_utils import distributed as dist
from training import training_loop

#----------------------------------------------------------------------------
# Network configurations of EDM's train.py, by --arch.

ARCH_CONFIGS = {
    'ddpmpp': dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
                   channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'ncsnpp': dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'adm':    dict(model_type='DhariwalUNet', model_channels=192, channel_mult=[1, 2, 3, 4]),
}

PRECOND_CLASSES = {  # --precond: (network class, loss class)
    'vp':  ('training.networks.VPPrecond', 'training.loss.VPLoss'),
    've':  ('training.networks.VEPrecond', 'training.loss.VELoss'),
    'edm': ('training.networks.EDMPrecond', 'training.loss.EDMLoss'),
}


def _int_list(value):
    if value is None or isinstance(value, list):
        return value
    try:
        return dnnlib.util.parse_int_list(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


def _res_list(value):
    """'none' or '' means no attention layers."""
    if isinstance(value, str) and value.strip().lower() in ('', 'none'):
        return []
    return _int_list(value)

#----------------------------------------------------------------------------


def _pick_seed(seed):
    """The given seed, or a random one that rank 0 draws and every rank agrees on."""
    if seed is not None:
        return seed
    value = torch.randint(1 << 31, size=[], device=dist.device())
    if dist.get_world_size() > 1:
        if torch.distributed.get_backend() != 'nccl':
            value = value.cpu()
        torch.distributed.broadcast(value, src=0)
    return int(value)


def _run_dir(outdir, desc, nosubdir):
    """outdir itself (--nosubdir), or outdir/<next id>-<desc>."""
    if nosubdir:
        return outdir
    prev_ids = []
    if os.path.isdir(outdir):
        for name in os.listdir(outdir):
            match = re.match(r'^\d+', name)
            if match and os.path.isdir(os.path.join(outdir, name)):
                prev_ids.append(int(match.group()))
    return os.path.join(outdir, f'{max(prev_ids, default=-1) + 1:05d}-{desc}')


def training_config(opts, world_size=1):
    """Return (training_loop kwargs, description) for the CLI options; one-line ClickException on bad input."""
    opts = dnnlib.EasyDict(opts)
    c = dnnlib.EasyDict()
    c.dataset_kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=opts.data,
                                       use_labels=opts.cond, xflip=opts.xflip, cache=opts.cache)
    c.data_loader_kwargs = dnnlib.EasyDict(pin_memory=True, num_workers=opts.workers, prefetch_factor=2)
    c.network_kwargs = dnnlib.EasyDict()
    c.loss_kwargs = dnnlib.EasyDict()
    c.optimizer_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=opts.lr, betas=[0.9, 0.999], eps=1e-8)

    # Dataset.
    try:
        dataset_obj = dnnlib.util.construct_class_by_name(**c.dataset_kwargs)
        dataset_name = dataset_obj.name
        resolution = dataset_obj.resolution
        c.dataset_kwargs.resolution = resolution
        c.dataset_kwargs.max_size = len(dataset_obj)
        if opts.cond and not dataset_obj.has_labels:
            raise click.ClickException(f'--cond=True requires labels specified in dataset.json; {opts.data} has none')
        del dataset_obj
    except (IOError, ValueError) as err:
        raise click.ClickException(f'--data: {err}') from None
    except AssertionError:
        raise click.ClickException(f'--data: images in {opts.data} are not square') from None

    # Network and loss.
    c.network_kwargs.update(ARCH_CONFIGS[opts.arch])
    c.network_kwargs.class_name, c.loss_kwargs.class_name = PRECOND_CLASSES[opts.precond]
    if opts.cbase is not None:
        c.network_kwargs.model_channels = opts.cbase
    if opts.cres is not None:
        c.network_kwargs.channel_mult = opts.cres
    if opts.get('blocks') is not None:
        c.network_kwargs.num_blocks = opts.blocks
    if opts.get('attn') is not None:
        c.network_kwargs.attn_resolutions = opts.attn
    if opts.augment:
        c.augment_kwargs = dnnlib.EasyDict(class_name='training.augment.AugmentPipe', p=opts.augment)
        c.augment_kwargs.update(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
        c.network_kwargs.augment_dim = 9
    c.network_kwargs.update(dropout=opts.dropout, use_fp16=opts.fp16)
    if opts.get('input_pertub'):  # only when given, so that the default options stay EDM's
        c.loss_kwargs.input_pertub = opts.input_pertub
    levels = len(c.network_kwargs.channel_mult)
    if levels < 1 or resolution % (1 << (levels - 1)) != 0:
        raise click.ClickException(f'--data: resolution {resolution}x{resolution} does not fit --arch={opts.arch} with '
                                   f'{levels} resolution levels (needs a multiple of {1 << max(levels - 1, 0)}; see --cres)')

    # Schedule and batch.
    c.total_kimg = max(opts.duration * 1000, 1e-3)
    c.ema_halflife_kimg = opts.ema * 1000
    c.lr_rampup_kimg = opts.get('lr_rampup', 10000)
    if opts.batch % world_size != 0:
        raise click.ClickException(f'--batch={opts.batch} is not divisible by the number of processes ({world_size})')
    per_process = opts.batch // world_size
    if opts.batch_gpu is not None and opts.batch_gpu < per_process and per_process % opts.batch_gpu != 0:
        raise click.ClickException(f'--batch-gpu={opts.batch_gpu} does not divide the batch per process ({per_process})')
    c.update(batch_size=opts.batch, batch_gpu=opts.batch_gpu)
    c.update(loss_scaling=opts.ls, cudnn_benchmark=opts.bench)
    c.update(kimg_per_tick=opts.tick, snapshot_ticks=opts.snap, state_dump_ticks=opts.dump)

    # Transfer learning and resume.
    if opts.transfer is not None:
        if opts.resume is not None:
            raise click.ClickException('--transfer and --resume cannot be specified at the same time')
        c.resume_pkl = opts.transfer
        c.ema_rampup_ratio = None
    elif opts.resume is not None:
        match = re.fullmatch(r'training-state-([\d.]+)\.pt', os.path.basename(opts.resume))
        if not match or training_loop.nimg_of_name(match.group(1)) is None or not os.path.isfile(opts.resume):
            raise click.ClickException('--resume must point to training-state-*.pt from a previous training run')
        try:
            resume_nimg = int(training_loop.load_state_dump(opts.resume)['cur_nimg'])
        except Exception as err:  # any unreadable file: say so in one line
            raise click.ClickException(f'--resume: cannot read {opts.resume}: {str(err).splitlines()[0] if str(err) else type(err).__name__}') from None
        if resume_nimg % world_size != 0:
            raise click.ClickException(f'--resume: the state at {resume_nimg} images cannot be split over {world_size} processes')
        c.resume_kimg = training_loop.nimg_of_name(match.group(1)) / 1000
        c.resume_state_dump = opts.resume

    cond_str = 'cond' if c.dataset_kwargs.use_labels else 'uncond'
    dtype_str = 'fp16' if c.network_kwargs.use_fp16 else 'fp32'
    desc = f'{dataset_name:s}-{cond_str:s}-{opts.arch:s}-{opts.precond:s}-gpus{world_size:d}-batch{c.batch_size:d}-{dtype_str:s}'
    if opts.get('input_pertub'):
        desc += f'-ip{opts.input_pertub:g}'
    if opts.desc is not None:
        desc += f'-{opts.desc}'
    return c, desc


class _Tee:
    """Write to a stream and to a log file."""

    def __init__(self, stream, file):
        self.stream, self.file = stream, file

    def write(self, text):
        self.stream.write(text)
        self.file.write(text)
        self.file.flush()
        return len(text)

    def flush(self):
        self.stream.flush()
        self.file.flush()

    def isatty(self):
        return False


@contextlib.contextmanager
def _log_to(path):
    """Copy stdout and stderr to `path` (appending) inside the block."""
    with open(path, 'at') as f:
        with contextlib.redirect_stdout(_Tee(sys.stdout, f)), contextlib.redirect_stderr(_Tee(sys.stderr, f)):
            yield

#----------------------------------------------------------------------------


@click.command()

# Main options.
@click.option('--outdir',        help='Where to save the results', metavar='DIR',                   type=str, required=True)
@click.option('--data',          help='Path to the dataset', metavar='ZIP|DIR',                     type=str, required=True)
@click.option('--cond',          help='Train class-conditional model', metavar='BOOL',              type=bool, default=False, show_default=True)
@click.option('--arch',          help='Network architecture', metavar='ddpmpp|ncsnpp|adm',          type=click.Choice(['ddpmpp', 'ncsnpp', 'adm']), default='ddpmpp', show_default=True)
@click.option('--precond',       help='Preconditioning & loss function', metavar='vp|ve|edm',       type=click.Choice(['vp', 've', 'edm']), default='edm', show_default=True)

# Hyperparameters.
@click.option('--duration',      help='Training duration', metavar='MIMG',                          type=cli.FloatRange(min=0, min_open=True), default=200, show_default=True)
@click.option('--batch',         help='Total batch size', metavar='INT',                            type=click.IntRange(min=1), default=512, show_default=True)
@click.option('--batch-gpu',     help='Limit batch size per GPU', metavar='INT',                    type=click.IntRange(min=1))
@click.option('--cbase',         help='Channel multiplier  [default: varies]', metavar='INT',       type=click.IntRange(min=1))
@click.option('--cres',          help='Channels per resolution  [default: varies]', metavar='LIST', type=str, callback=lambda ctx, param, v: _int_list(v))
@click.option('--blocks',        help='Residual blocks per resolution  [default: varies]', metavar='INT', type=click.IntRange(min=1))
@click.option('--attn',          help='Attention resolutions, or none  [default: varies]', metavar='LIST', type=str, callback=lambda ctx, param, v: _res_list(v))
@click.option('--lr',            help='Learning rate', metavar='FLOAT',                             type=cli.FloatRange(min=0, min_open=True), default=10e-4, show_default=True)
@click.option('--lr-rampup',     help='Learning rate ramp-up', metavar='KIMG',          type=cli.FloatRange(min=0), default=10000, show_default=True)
@click.option('--ema',           help='EMA half-life', metavar='MIMG',                              type=cli.FloatRange(min=0), default=0.5, show_default=True)
@click.option('--dropout',       help='Dropout probability', metavar='FLOAT',                       type=cli.FloatRange(min=0, max=1), default=0.13, show_default=True)
@click.option('--augment',       help='Augment probability', metavar='FLOAT',                       type=cli.FloatRange(min=0, max=1), default=0.12, show_default=True)
@click.option('--input-pertub',  help='Input perturbation gamma (DDPM-IP)', metavar='FLOAT',           type=cli.FloatRange(min=0), default=0, show_default=True)
@click.option('--xflip',         help='Enable dataset x-flips', metavar='BOOL',                     type=bool, default=False, show_default=True)

# Performance-related.
@click.option('--fp16',          help='Enable mixed-precision training', metavar='BOOL',            type=bool, default=False, show_default=True)
@click.option('--ls',            help='Loss scaling', metavar='FLOAT',                              type=cli.FloatRange(min=0, min_open=True), default=1, show_default=True)
@click.option('--bench',         help='Enable cuDNN benchmarking', metavar='BOOL',                  type=bool, default=True, show_default=True)
@click.option('--cache',         help='Cache dataset in CPU memory', metavar='BOOL',                type=bool, default=True, show_default=True)
@click.option('--workers',       help='DataLoader worker processes, 0 = none', metavar='INT', type=click.IntRange(min=0), default=1, show_default=True)

# I/O-related.
@click.option('--desc',          help='String to include in result dir name', metavar='STR',        type=str)
@click.option('--nosubdir',      help='Do not create a subdirectory for results',                   is_flag=True)
@click.option('--tick',          help='How often to print progress', metavar='KIMG',                type=cli.FloatRange(min=0, min_open=True), default=50, show_default=True)
@click.option('--snap',          help='How often to save snapshots', metavar='TICKS',               type=click.IntRange(min=1), default=50, show_default=True)
@click.option('--dump',          help='How often to dump state', metavar='TICKS',                   type=click.IntRange(min=1), default=500, show_default=True)
@click.option('--seed',          help='Random seed  [default: random]', metavar='INT',              type=click.IntRange(min=0))
@click.option('--transfer',      help='Transfer learning from network pickle', metavar='PKL|URL',   type=str)
@click.option('--resume',        help='Resume from previous training state', metavar='PT',          type=str)
@click.option('--allow-pickle-code', help='Run code stored in the --transfer pickle (trusted files only)', is_flag=True)
@click.option('-n', '--dry-run', help='Print training options and exit',                            is_flag=True)
def main(**kwargs):
    """Train diffusion-based generative model using the techniques described in the
    paper "Elucidating the Design Space of Diffusion-Based Generative Models".

    Durations are in millions of images (--duration, --ema; fractions are fine), --tick
    and --lr-rampup in thousands; --snap and --dump count ticks. Each tick prints
    progress and appends to stats.jsonl. Snapshots (EDM's pickle format) and state
    dumps are named by kimg: network-snapshot-000100.pkl, training-state-000100.pt
    (with a fractional --tick, 000000.500 at 500 images). --resume with the options of the
    original run continues it exactly, in the run's own folder (EDM starts a new one;
    --nosubdir writes to --outdir). Beyond EDM:
    --blocks, --attn, --lr-rampup, --workers=0, fractional --tick, and DDPM-IP's input
    perturbation --input-pertub (docs/training.md).

    Examples:

    \b
    # Train DDPM++ model for class-conditional CIFAR-10 using 8 GPUs
    torchrun --standalone --nproc_per_node=8 train.py --outdir=training-runs \\
        --data=datasets/cifar10-32x32.zip --cond=1 --arch=ddpmpp

    \b
    # Small class-conditional MNIST model on the CPU (1.7M parameters)
    python train.py --outdir=training-runs --data=datasets/mnist-32x32.zip --cond=1 \\
        --arch=ddpmpp --cbase=32 --cres=1,2,2,2 --blocks=1 --attn=none --batch=128 \\
        --duration=0.2 --lr=1e-3 --lr-rampup=10 --ema=0.01 --dropout=0 --augment=0 \\
        --tick=10 --snap=5 --dump=5 --workers=0 --seed=0

    \b
    # Continue a run from its latest state dump
    python train.py --outdir=training-runs --data=datasets/mnist-32x32.zip --cond=1 ... \\
        --resume=training-runs/00000-mnist-32x32-cond-ddpmpp-edm-gpus1-batch128-fp32/training-state-000100.pt
    """
    opts = dnnlib.EasyDict(kwargs)
    dist.init()
    c, desc = training_config(opts, world_size=dist.get_world_size())
    c.seed = _pick_seed(opts.seed)
    if opts.allow_pickle_code:
        c.allow_pickle_code = True
    c.run_dir = _run_dir(opts.outdir, desc, opts.nosubdir) if dist.get_rank() == 0 else None
    if opts.resume is not None and not opts.nosubdir and dist.get_rank() == 0:
        c.run_dir = os.path.dirname(opts.resume) or '.'  # continue the run in its own folder (one stats.jsonl)

    dist.print0()
    dist.print0('Training options:')
    dist.print0(json.dumps(c, indent=2))
    dist.print0()
    dist.print0(f'Output directory:        {c.run_dir}')
    dist.print0(f'Dataset path:            {c.dataset_kwargs.path}')
    dist.print0(f'Class-conditional:       {c.dataset_kwargs.use_labels}')
    dist.print0(f'Network architecture:    {opts.arch}')
    dist.print0(f'Preconditioning & loss:  {opts.precond}')
    dist.print0(f'Number of processes:     {dist.get_world_size()}')
    dist.print0(f'Batch size:              {c.batch_size}')
    dist.print0(f'Mixed-precision:         {c.network_kwargs.use_fp16}')
    dist.print0()
    if opts.dry_run:
        dist.print0('Dry run; exiting.')
        return

    dist.print0('Creating output directory...')
    differing = _differing_options(c.run_dir, c) if opts.resume is not None and dist.get_rank() == 0 else []
    try:
        log = contextlib.nullcontext()
        if dist.get_rank() == 0:
            os.makedirs(c.run_dir, exist_ok=True)
            with dnnlib.util.atomic_write(os.path.join(c.run_dir, 'training_options.json'), 'w') as f:
                json.dump(c, f, indent=2)
            log = _log_to(os.path.join(c.run_dir, 'log.txt'))
        with log:
            training_loop.training_loop(**c)
    except _network_load_error() as err:
        hint = f'; options that differ from the run\'s: {", ".join(differing)}' if differing else ''
        raise click.ClickException(f'{err}{hint}') from None
    except OSError as err:  # disk full, file size limit, permissions: snapshots and dumps are written atomically
        raise click.ClickException(cli.os_error_message(err, action=None)) from None


# The options behind training_options.json keys that decide the network's weights.
OPTION_OF_KEY = {'network_kwargs.model_channels': '--cbase', 'network_kwargs.channel_mult': '--cres',
                 'network_kwargs.num_blocks': '--blocks', 'network_kwargs.attn_resolutions': '--attn',
                 'network_kwargs.class_name': '--precond', 'network_kwargs.model_type': '--arch',
                 'network_kwargs.augment_dim': '--augment', 'dataset_kwargs.use_labels': '--cond',
                 'dataset_kwargs.resolution': '--data (resolution)', 'network_kwargs.use_fp16': '--fp16',
                 'network_kwargs.dropout': '--dropout', 'batch_size': '--batch'}


def _differing_options(run_dir, c):
    """'--cbase (32 in the run, 64 now)' for each weight-deciding option that differs from
    run_dir/training_options.json (empty if that file is missing or unreadable)."""
    try:
        with open(os.path.join(run_dir, 'training_options.json'), encoding='utf8') as f:
            old = json.load(f)
    except (OSError, ValueError):
        return []
    new = json.loads(json.dumps(c))
    out = []
    for key, option in OPTION_OF_KEY.items():
        group, _, name = key.rpartition('.')
        before = (old.get(group) or {}).get(name) if group else old.get(name)
        now = (new.get(group) or {}).get(name) if group else new.get(name)
        if before != now and option not in [item.split(' (')[0] for item in out]:
            out.append(f'{option} ({json.dumps(before)} in the run, {json.dumps(now)} now)')
    return out


def _network_load_error():
    from safeload.networks import NetworkLoadError
    return NetworkLoadError

#----------------------------------------------------------------------------

cli.bound_int_options(main)  # 2^70 and the like: one line (issue 26)

if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
