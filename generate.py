"""Generate images with EDM's samplers (and DDPM/DDIM for ADM networks), epsilon scaling and
time shift.

`samplers.jobs.generate_images()` is the library function; this file is the command line
around it.
Each image depends only on its seed and the sampling options: not on --batch (up to float
kernels that may differ in the last bits between batch sizes) and not on the number of
torchrun processes.
"""

import os
import shutil
import tempfile

import click

from networks import adm
from samplers import Sampler, SamplerOptionError
from samplers import guidance as guidance_lib
from samplers import nfe as nfe_rule
from samplers.cli_options import SAMPLER_OPTIONS, chosen_by, options_from_cli, sampler_options  # noqa: F401
from samplers.time_shift import TimeShiftError
from samplers.fast import FastPathError, FastPaths
from torch_utils import cli
from torch_utils import distributed as dist
from torch_utils import threads
from safeload import networks as loader

# The library side (samplers/jobs.py), re-exported for scripts and tests written against generate.py.
from samplers.jobs import (DEFAULT_NETWORK, GRID_MAX_IMAGES, OPTIONS_RECORD, SEED_LIMIT, GenerateError,  # noqa: F401
                           GenerateStats, check_class, check_grid_path, check_options_record, existing_images, generate_images,
                           image_path, options_record, parse_seeds, split_batches, write_grid, write_options_record)


#----------------------------------------------------------------------------
# Command line.


def _on_rank0(fn):
    """Run fn() on rank 0; every process raises GenerateError if it failed there."""
    return dist.run_on_rank0(fn, GenerateError)


def _check_outdir(outdir):
    """Raise GenerateError unless outdir (or, if it does not exist yet, its nearest existing
    parent) is a folder we can write to; creates nothing."""
    folder = os.path.abspath(outdir)
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        if not os.path.isdir(folder):
            raise NotADirectoryError(20, 'Not a directory')
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise GenerateError(f'cannot write to --outdir {outdir}: {err.strerror or err}') from None


def _record_options(outdir, seeds, subdirs, resume, record):
    created = not os.path.isdir(outdir)
    try:
        os.makedirs(outdir, exist_ok=True)
        if resume:
            check_options_record(outdir, record, existing_images(outdir, seeds, subdirs))
        write_options_record(outdir, record)
    except OSError as err:
        if created:
            shutil.rmtree(outdir, ignore_errors=True)  # leave nothing behind
        raise GenerateError(cli.os_error_message(err)) from None


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


def _load_guidance(classifier, classifier_scale, classifier_flags, net, device):
    try:
        return guidance_lib.guidance_from_options(classifier, classifier_scale, classifier_flags, net.img_resolution, device)
    except adm.ADMError as err:
        raise GenerateError(str(err)) from None


def run(network, outdir, seeds, options, *, subdirs=False, class_idx=None, max_batch_size=64, device=None,
        resume=True, grid=None, allow_pickle_code=None, fast=FastPaths(), classifier=None, classifier_scale=None,
        classifier_flags=None, chosen_by=None):
    """The command line's work inside a torchrun process group (or a single process)."""
    options.check()
    seeds = parse_seeds(seeds) if isinstance(seeds, str) else seeds
    if grid is not None:
        check_grid_path(grid, outdir)
    if network is None:
        if not os.path.isfile(DEFAULT_NETWORK):
            raise GenerateError(f'no --network given and the bundled model {DEFAULT_NETWORK} is missing '
                                '(pass an EDM pickle, weights-only file or URL)')
        network = DEFAULT_NETWORK
    try:
        device = dist.init(device)
    except dist.DeviceError as err:
        raise GenerateError(f'invalid --device: {err}') from None
    threads.set_cpu_threads(device, int(os.environ.get('LOCAL_WORLD_SIZE', '1')))
    try:
        fast.check(device)
        _on_rank0(lambda: _check_outdir(outdir))
        # Rank 0 loads first (and fills the download cache), then the others.
        net = dist.leader_first(lambda: _load(network, device, allow_pickle_code), GenerateError)
        guidance = _load_guidance(classifier, classifier_scale, classifier_flags, net, device)
        sampler = Sampler(net, options, device=device, fast=fast, guidance=guidance)  # every option checked against the network
        check_class(net, class_idx, sampler.label_dim)
        # Only now, with the network loaded and the options valid, is anything written.
        record = options_record(network, class_idx, options, fast, guidance, chosen_by)
        if chosen_by is not None:
            dist.print0(f'{chosen_by}: {nfe_rule.describe(options)}')
        _on_rank0(lambda: _record_options(outdir, seeds, subdirs, resume, record))
        steps = (f'respacing "{options.timestep_respacing}"' if options.discrete and options.respacing is not None
                 else f'{options.num_steps} steps')
        dist.print0(f'Generating {len(seeds)} images with {options.solver}, {steps} '
                    f'({options.nfe or "all"} evaluations each) to "{outdir}"')
        if fast.changes_network:
            dist.print0(f'Fast paths: {_describe(fast)}; pixels may differ slightly from the plain path '
                        '(docs/performance.md)')
        try:
            stats = generate_images(net, seeds, outdir, options, subdirs=subdirs, class_idx=class_idx,
                                    max_batch_size=max_batch_size, device=device, resume=resume, fast=fast, sampler=sampler)
        except (MemoryError, RuntimeError) as err:
            if not isinstance(err, MemoryError) and 'out of memory' not in str(err) and "can't allocate" not in str(err):
                raise
            raise GenerateError(f'out of memory sampling batches of {max_batch_size} on {device}; use a smaller --batch') from None
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


@click.command(context_settings=dict(max_content_width=120))
@click.option('--network', 'network', help='Network pickle or weights-only file  [default: the bundled MNIST model]', metavar='PATH|URL', type=str, default=None)
@click.option('--outdir', help='Where to save the output images', metavar='DIR', type=str, required=True)
@click.option('--seeds', help='Random seeds (e.g. 1,2,5-10)', metavar='LIST', type=str, default='0-63', show_default=True)
@click.option('--subdirs', help='Create a subdirectory for every 1000 seeds', is_flag=True)
@click.option('--class', 'class_idx', help='Class label  [default: random]', metavar='INT', type=click.IntRange(min=0), default=None)
@click.option('--batch', 'max_batch_size', help='Maximum batch size', metavar='INT', type=click.IntRange(min=1, max=cli.MAX_BATCH), default=64, show_default=True)
@click.option('--resume/--no-resume', help='Skip seeds whose PNG exists (refused if outdir was made with other options)', default=True, show_default=True)
@click.option('--grid', help=f'Also write a grid of the images (first {GRID_MAX_IMAGES} seeds; outside --outdir)', metavar='PNG', type=str, default=None)
@click.option('--allow-pickle-code', help='Run the code stored in the network pickle (EDM behaviour; trusted files only)', is_flag=True, default=None)
@click.option('--device', help='Torch device  [default: this rank\'s GPU, else cpu]', metavar='STR', type=cli.DEVICE, default=None)
@click.option('--channels-last', 'channels_last', help='Fast path: run the network in channels_last memory format', is_flag=True)
@click.option('--autocast', help='Fast path: run the network under autocast (fp16: CUDA only)', metavar='none|fp16|bf16', type=click.Choice(['none', 'fp16', 'bf16']), default='none', show_default=True)
@click.option('--compile', 'compile_backend', help='Fast path: torch.compile the network (default backend: inductor)', metavar='[BACKEND]', is_flag=False, flag_value='inductor', default=None)
@guidance_lib.guidance_click_options
@sampler_options()
def main(network, outdir, seeds, subdirs, class_idx, max_batch_size, resume, grid, allow_pickle_code, device,
         channels_last, autocast, compile_backend, classifier, classifier_scale, classifier_flags, **sampler_kwargs):
    """Generate images using the samplers of "Elucidating the Design Space of Diffusion-Based
    Generative Models" (EDM), with epsilon scaling and time shift against exposure bias.

    Image SEED is written to OUTDIR/SEED.png (6 digits; --subdirs: OUTDIR/THOUSAND/SEED.png).
    A restarted run skips the images that exist. The defaults give EDM's images;
    docs/sampling.md defines epsilon scaling and the time shift. On the CPU each process
    uses the idle cores (divided between the processes) unless OMP_NUM_THREADS is set.

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
        options = options_from_cli(sampler_kwargs)
        fast = FastPaths(channels_last=channels_last, autocast=autocast, compile=compile_backend)
        run(network, outdir, seeds, options, subdirs=subdirs, class_idx=class_idx, max_batch_size=max_batch_size,
            device=device, resume=resume, grid=grid, allow_pickle_code=allow_pickle_code, fast=fast,
            classifier=classifier, classifier_scale=classifier_scale, classifier_flags=classifier_flags,
            chosen_by=chosen_by(sampler_kwargs))
    except (GenerateError, SamplerOptionError, FastPathError, TimeShiftError) as err:
        if os.environ.get('RANK', '0') != '0':
            raise SystemExit(1)  # rank 0 prints the one error line
        raise click.ClickException(str(err)) from None


cli.bound_int_options(main)  # 2^70 and the like: one line (issue 26)

if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
