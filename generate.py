"""Generate images with EDM's samplers, epsilon scaling and time shift.

`generate_images()` is the library function; `main()` is the command line around it.
Each image depends only on its seed and the sampling options: not on --batch (up to float
kernels that may differ in the last bits between batch sizes) and not on the number of
torchrun processes.
"""

import concurrent.futures
import dataclasses
import json
import os
import time

import click
import torch
import tqdm

import dnnlib
from samplers import SOLVERS, Sampler, SamplerOptionError, SamplerOptions, SeedNoise, latents_and_labels, sigma_range
from samplers.fast import FastPathError, FastPaths
from torch_utils import distributed as dist
from torch_utils import images as image_io
from training import loader

# The bundled class-conditional MNIST model (docs/bundled-model.md), used when --network is not given.
DEFAULT_NETWORK = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'models', 'mnist-cond-32x32.pkl')
OPTIONS_RECORD = 'generate-options.json'
GRID_MAX_IMAGES = 1024


class GenerateError(Exception):
    """Bad input to generate_images(); the message is one line."""

#----------------------------------------------------------------------------
# Seeds and file layout.


def parse_seeds(text):
    """Seeds from '0-49999', '1,5,9' or '0-9,100-109', in order, without repeats."""
    try:
        seeds = dnnlib.util.parse_int_list(text)
    except ValueError as err:
        raise GenerateError(f'invalid --seeds "{text}": {err}') from None
    if not seeds:
        raise GenerateError(f'--seeds "{text}" selects no seeds')
    if min(seeds) < 0:
        raise GenerateError(f'invalid --seeds "{text}": seeds must not be negative')
    return list(dict.fromkeys(seeds))


def image_path(outdir, seed, subdirs=False):
    """outdir/SSSSSS.png, or outdir/TTTTTT/SSSSSS.png with TTTTTT the seed's thousand."""
    folder = os.path.join(outdir, f'{seed - seed % 1000:06d}') if subdirs else outdir
    return os.path.join(folder, f'{seed:06d}.png')


def split_batches(seeds, max_batch_size):
    """Consecutive batches of max_batch_size seeds (the last may be shorter). The batches do
    not depend on the number of processes, so neither do the images."""
    return [seeds[i:i + max_batch_size] for i in range(0, len(seeds), max_batch_size)]

#----------------------------------------------------------------------------
# Resuming: a record of the options next to the images.


def options_record(network, class_idx, options, fast=FastPaths()):
    """What decides the pixels of an image besides its seed. Fast paths that may move pixels
    are listed only when on, so records written before they existed still match."""
    if isinstance(network, str) and os.path.exists(network):
        network = os.path.abspath(network)
    return dict(network=network, class_idx=class_idx, **dataclasses.asdict(options), **fast.record())


def check_options_record(outdir, record, existing):
    """Raise GenerateError if `existing` PNGs in outdir were made with options other than `record`."""
    path = os.path.join(outdir, OPTIONS_RECORD)
    if not existing:
        return
    try:
        with open(path, encoding='utf8') as f:
            old = json.load(f)
    except FileNotFoundError:
        return
    except (OSError, ValueError) as err:
        raise GenerateError(f'cannot read {path}: {err}; delete it or pass --no-resume') from None
    current = json.loads(json.dumps(record))
    changed = [key for key in list(current) + [k for k in old if k not in current] if old.get(key) != current.get(key)]
    if changed:
        key = changed[0]
        raise GenerateError(f'{outdir} holds images generated with {key}={old.get(key)!r}, not {current.get(key)!r}; '
                            f'use another --outdir, or --no-resume to replace them')


def write_options_record(outdir, record):
    with dnnlib.util.atomic_write(os.path.join(outdir, OPTIONS_RECORD), 'w') as f:
        json.dump(record, f, indent=2)
        f.write('\n')

#----------------------------------------------------------------------------
# Library entry point.


@dataclasses.dataclass
class GenerateStats:
    num_written: int        # PNGs written by all processes.
    num_skipped: int        # Seeds whose PNG existed already.
    seconds: float          # Wall time of the sampling loop.


def _write_batch(paths, images):
    for path, image in zip(paths, images):
        if path is not None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            image_io.save_png(path, image)


def _all_ranks_sum(value, device):
    if dist.get_world_size() == 1:
        return value
    sync_device = device if torch.distributed.get_backend() == 'nccl' else torch.device('cpu')
    total = torch.tensor([value], dtype=torch.int64, device=sync_device)
    torch.distributed.all_reduce(total)
    return int(total.item())


def check_class(net, class_idx):
    """Raise GenerateError unless class_idx is None or a class of the network."""
    if class_idx is None:
        return
    if not net.label_dim:
        raise GenerateError(f'--class={class_idx} given, but the network is unconditional')
    if not 0 <= class_idx < net.label_dim:
        raise GenerateError(f'--class={class_idx} is out of range: the network has classes 0-{net.label_dim - 1}')


def generate_images(net, seeds, outdir, options=SamplerOptions(), *, subdirs=False, class_idx=None,
                    max_batch_size=64, device=None, resume=True, progress=True, fast=FastPaths()):
    """Sample one PNG per seed into `outdir` with this process's share of the batches;
    return GenerateStats. With `resume`, seeds whose PNG exists are not generated again.
    `fast` selects inference fast paths (samplers.fast; the default changes no pixel).

    Batches are cut from the full seed list and dealt to the torchrun processes in turn; a
    batch with some PNGs missing is sampled whole, so resumed images are byte-identical.
    """
    device = torch.device('cpu') if device is None else torch.device(device)
    check_class(net, class_idx)
    sampler = Sampler(net, options, device=device, fast=fast)
    rank, world_size = dist.get_rank(), dist.get_world_size()

    todo = []
    num_skipped = 0
    for batch in split_batches(seeds, max_batch_size):
        paths = [image_path(outdir, seed, subdirs) for seed in batch]
        missing = [path if not (resume and os.path.isfile(path)) else None for path in paths]
        num_skipped += missing.count(None)
        if any(missing):
            todo.append((batch, missing))
    mine = todo[rank::world_size]
    dist.barrier()  # every process has looked at the folder before any writes to it

    num_mine = sum(len(paths) - paths.count(None) for _, paths in mine)
    shape = [net.img_channels, net.img_resolution, net.img_resolution]
    start = time.time()
    with tqdm.tqdm(total=num_mine, unit='img', disable=(rank != 0 or not progress), leave=False) as bar, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = None
        for batch, paths in mine:
            noise = SeedNoise(batch, device=device)
            latents, labels = latents_and_labels(noise, shape, net.label_dim, class_idx, device=device)
            images = image_io.to_uint8(sampler(latents, labels, noise.randn_like))
            if pending is not None:
                pending.result()
            pending = pool.submit(_write_batch, paths, images)  # PNG encoding overlaps the next batch
            bar.update(len(paths) - paths.count(None))
        if pending is not None:
            pending.result()
    num_written = _all_ranks_sum(num_mine, device)
    dist.barrier()
    return GenerateStats(num_written=num_written, num_skipped=num_skipped, seconds=time.time() - start)


def write_grid(path, outdir, seeds, subdirs=False, max_images=GRID_MAX_IMAGES):
    """A grid of the PNGs of the first `max_images` seeds, in seed order."""
    images = [image_io.read_png(image_path(outdir, seed, subdirs)) for seed in seeds[:max_images]]
    image_io.save_grid(path, images)

#----------------------------------------------------------------------------
# Command line.


def _on_rank0(fn):
    """Run fn() on rank 0; every process raises GenerateError if it failed there."""
    return dist.run_on_rank0(fn, GenerateError)


def _check_outdir(outdir):
    try:
        os.makedirs(outdir, exist_ok=True)
        with dnnlib.util.atomic_write(os.path.join(outdir, '.write-test')) as f:
            f.write(b'')
        os.remove(os.path.join(outdir, '.write-test'))
    except OSError as err:
        raise GenerateError(f'cannot write to --outdir {outdir}: {err.strerror or err}') from None


def _record_options(outdir, seeds, subdirs, resume, record):
    if resume:
        existing = any(os.path.isfile(image_path(outdir, seed, subdirs)) for seed in seeds)
        check_options_record(outdir, record, existing)
    write_options_record(outdir, record)


def _load(network, device, allow_pickle_code=None):
    try:
        return loader.load_network(network, device=device, verbose=(dist.get_rank() == 0),
                                   allow_pickle_code=allow_pickle_code)
    except loader.NetworkLoadError as err:
        raise GenerateError(str(err)) from None


def _describe(fast):
    on = [name for name, value in (('channels_last', fast.channels_last), (f'autocast {fast.autocast}', fast.autocast != 'none'),
                                   (f'compile ({fast.compile})', fast.compile is not None)) if value]
    return ', '.join(on)


def run(network, outdir, seeds, options, *, subdirs=False, class_idx=None, max_batch_size=64, device=None,
        resume=True, grid=None, allow_pickle_code=None, fast=FastPaths()):
    """The command line's work inside a torchrun process group (or a single process)."""
    options.check()
    seeds = parse_seeds(seeds) if isinstance(seeds, str) else seeds
    if network is None:
        if not os.path.isfile(DEFAULT_NETWORK):
            raise GenerateError(f'no --network given and the bundled model {DEFAULT_NETWORK} is missing '
                                '(pass an EDM pickle, weights-only file or URL)')
        network = DEFAULT_NETWORK
    device = dist.init(device)
    try:
        fast.check(device)
        _on_rank0(lambda: _check_outdir(outdir))
        # Rank 0 loads first (and fills the download cache), then the others.
        net = dist.leader_first(lambda: _load(network, device, allow_pickle_code), GenerateError)
        check_class(net, class_idx)
        sigma_range(net, options)
        record = options_record(network, class_idx, options, fast)
        _on_rank0(lambda: _record_options(outdir, seeds, subdirs, resume, record))
        dist.print0(f'Generating {len(seeds)} images with {options.solver}, {options.num_steps} steps '
                    f'({options.nfe} evaluations each) to "{outdir}"')
        if fast.changes_network:
            dist.print0(f'Fast paths: {_describe(fast)}; pixels may differ slightly from the plain path '
                        '(docs/performance.md)')
        stats = generate_images(net, seeds, outdir, options, subdirs=subdirs, class_idx=class_idx,
                                max_batch_size=max_batch_size, device=device, resume=resume, fast=fast)
        if grid is not None and dist.get_rank() == 0:
            try:
                write_grid(grid, outdir, seeds, subdirs)
            except OSError as err:
                raise GenerateError(f'cannot write --grid {grid}: {err.strerror or err}') from None
        rate = stats.num_written / max(stats.seconds, 1e-9)
        dist.print0(f'Done: {stats.num_written} images in {stats.seconds:.1f} s ({rate:.2f} images/s), '
                    f'{stats.num_skipped} already existed')
        return stats
    finally:
        dist.shutdown()


def _options_from_cli(kwargs):
    given = {key: value for key, value in kwargs.items() if value is not None}
    return SamplerOptions(**given)


# generate.py's sampler options, by name, in the order of its --help; exposure.py takes them
# from here too, so that both tools accept the same options with the same defaults.
SAMPLER_OPTIONS = dict(
    steps=click.option('--steps', 'num_steps', help='Number of sampling steps', metavar='INT', type=click.IntRange(min=1), default=18, show_default=True),
    sigma_min=click.option('--sigma_min', help='Lowest noise level  [default: varies]', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True)),
    sigma_max=click.option('--sigma_max', help='Highest noise level  [default: varies]', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True)),
    rho=click.option('--rho', help='Time step exponent', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=7, show_default=True),
    S_churn=click.option('--S_churn', 'S_churn', help='Stochasticity strength', metavar='FLOAT', type=click.FloatRange(min=0), default=0, show_default=True),
    S_min=click.option('--S_min', 'S_min', help='Stoch. min noise level', metavar='FLOAT', type=click.FloatRange(min=0), default=0, show_default=True),
    S_max=click.option('--S_max', 'S_max', help='Stoch. max noise level', metavar='FLOAT', type=click.FloatRange(min=0), default='inf', show_default=True),
    S_noise=click.option('--S_noise', 'S_noise', help='Stoch. noise inflation', metavar='FLOAT', type=float, default=1, show_default=True),
    solver=click.option('--solver', help=f'ODE solver: {", ".join(SOLVERS)} (docs/solvers.md)', metavar='NAME', type=click.Choice(list(SOLVERS)), default='heun', show_default=True),
    order=click.option('--order', help='Order of --solver=dpmsolver|deis  [default: 3]', metavar='1|2|3', type=int),
    disc=click.option('--disc', help='Time step discretization {t_i}', metavar='vp|ve|iddpm|edm', type=click.Choice(['vp', 've', 'iddpm', 'edm']), default='edm', show_default=True),
    schedule=click.option('--schedule', help='Noise schedule sigma(t)', metavar='vp|ve|linear', type=click.Choice(['vp', 've', 'linear']), default='linear', show_default=True),
    scaling=click.option('--scaling', help='Signal scaling s(t)', metavar='vp|none', type=click.Choice(['vp', 'none']), default='none', show_default=True),
    eps_scaler=click.option('--eps_scaler', help='Epsilon scaling b: eps / (b + k (N-1-i)) at step i', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True),
    eps_scaler_k=click.option('--eps_scaler_k', help='Epsilon scaling slope k (ADM-ES linear form)', metavar='FLOAT', type=float, default=0.0, show_default=True),
    ts_window=click.option('--ts_window', help='Time shift window in grid positions each side; 0 = off', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True),
    ts_cutoff=click.option('--ts_cutoff', help='Time shift only while the scheduled sigma exceeds this', metavar='FLOAT', type=click.FloatRange(min=0), default=1.0, show_default=True),
    ts_signal_var=click.option('--ts_signal_var', help='Time shift signal variance  [default: sigma_data^2]', metavar='FLOAT', type=click.FloatRange(min=0)),
)


def sampler_options(*names):
    """A decorator adding the SAMPLER_OPTIONS `names` (all of them by default), in that order."""
    def decorate(fn):
        for name in reversed(names or tuple(SAMPLER_OPTIONS)):
            fn = SAMPLER_OPTIONS[name](fn)
        return fn
    return decorate


@click.command(context_settings=dict(max_content_width=120))
@click.option('--network', 'network', help='Network pickle or weights-only file  [default: the bundled MNIST model]', metavar='PATH|URL', type=str, default=None)
@click.option('--outdir', help='Where to save the output images', metavar='DIR', type=str, required=True)
@click.option('--seeds', help='Random seeds (e.g. 1,2,5-10)', metavar='LIST', type=str, default='0-63', show_default=True)
@click.option('--subdirs', help='Create a subdirectory for every 1000 seeds', is_flag=True)
@click.option('--class', 'class_idx', help='Class label  [default: random]', metavar='INT', type=click.IntRange(min=0), default=None)
@click.option('--batch', 'max_batch_size', help='Maximum batch size', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--resume/--no-resume', help='Skip seeds whose PNG exists (refused if outdir was made with other options)', default=True, show_default=True)
@click.option('--grid', help=f'Also write a grid of the images (first {GRID_MAX_IMAGES} seeds)', metavar='PNG', type=str, default=None)
@click.option('--allow-pickle-code', help='Run the code stored in the network pickle (EDM behaviour; trusted files only)', is_flag=True, default=None)
@click.option('--device', help='Torch device  [default: this rank\'s GPU, else cpu]', metavar='STR', type=str, default=None)
@click.option('--channels-last', 'channels_last', help='Fast path: run the network in channels_last memory format', is_flag=True)
@click.option('--autocast', help='Fast path: run the network under autocast (fp16: CUDA only)', metavar='none|fp16|bf16', type=click.Choice(['none', 'fp16', 'bf16']), default='none', show_default=True)
@click.option('--compile', 'compile_backend', help='Fast path: torch.compile the network (default backend: inductor)', metavar='[BACKEND]', is_flag=False, flag_value='inductor', default=None)
@sampler_options()
def main(network, outdir, seeds, subdirs, class_idx, max_batch_size, resume, grid, allow_pickle_code, device,
         channels_last, autocast, compile_backend, **sampler_kwargs):
    """Generate images using the samplers of "Elucidating the Design Space of Diffusion-Based
    Generative Models" (EDM), with epsilon scaling and time shift against exposure bias.

    Image SEED is written to OUTDIR/SEED.png (6 digits; --subdirs: OUTDIR/THOUSAND/SEED.png).
    A restarted run skips the images that exist. The defaults give EDM's images;
    docs/sampling.md defines epsilon scaling and the time shift.

    Examples:

    \b
    # Generate 64 images and save them as out/*.png
    python generate.py --outdir=out --seeds=0-63 --batch=64 \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl

    \b
    # EDM-ES: 50000 images, 13 Euler steps, epsilon scaling 1.0048 (restart it to resume)
    torchrun --standalone --nnodes=1 --nproc_per_node=1 generate.py --outdir=out --batch 512 \\
        --steps=13 --seeds=0-49999 --subdirs --solver=euler --eps_scaler=1.0048 \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-uncond-vp.pkl

    \b
    # Time shift: while sigma > 1, start each step from the level (at most 20 positions
    # away on a 1000-level grid) that matches each sample's variance
    python generate.py --outdir=out-ts --seeds=0-999 --steps=18 --ts_window=20 --ts_cutoff=1 \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl

    \b
    # 2 GPUs (or 2 CPU processes with gloo), with a grid of the first images
    torchrun --standalone --nproc_per_node=2 generate.py --outdir=out --seeds=0-999 --grid=grid.png \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl

    \b
    # GPU fast paths (optional; pixels may move slightly, see docs/performance.md)
    python generate.py --outdir=out-fast --seeds=0-9999 --batch=512 \\
        --channels-last --autocast=fp16 --compile \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl
    """
    try:
        options = _options_from_cli(sampler_kwargs)
        fast = FastPaths(channels_last=channels_last, autocast=autocast, compile=compile_backend)
        run(network, outdir, seeds, options, subdirs=subdirs, class_idx=class_idx, max_batch_size=max_batch_size,
            device=device, resume=resume, grid=grid, allow_pickle_code=allow_pickle_code, fast=fast)
    except (GenerateError, SamplerOptionError, FastPathError) as err:
        if os.environ.get('RANK', '0') != '0':
            raise SystemExit(1)  # rank 0 prints the one error line
        raise click.ClickException(str(err)) from None


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
