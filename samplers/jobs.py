"""Sampling jobs that write files: seeds in, resumable outputs out, under torchrun or alone.

- `generate_images` writes one PNG per seed into a folder (generate.py), next to a record of
  the options (`generate-options.json`) that a resumed run must match.
- `sample_to_npz` writes guided-diffusion's sample file, `samples_NxHxWxC.npz` (`arr_0`: uint8
  images NHWC quantised as guided-diffusion does, `arr_1`: class labels of a conditional
  network), as image_sample.py does. Each finished batch is kept as a part file in a hidden
  folder next to the output, so a killed run resumes where it stopped, and the sample file
  appears (atomically) only when every part exists.

Batches of consecutive seeds are cut from the whole seed list and dealt to the processes by
batch index, so each image depends on its seed and the options only, never on the batch
size or the number of processes.
"""

import concurrent.futures
import copy
import dataclasses
import glob
import inspect
import json
import os
import shutil
import time

import numpy as np
import psutil
import torch
import tqdm

import dnnlib
from safeload import npz, state
from torch_utils import distributed as dist
from torch_utils import persistence
from torch_utils import images as image_io

from .denoisers import StepDependent, at_step
from .fast import FastPaths
from .noise import SeedNoise, latents_and_labels
from .sampler import Sampler, SamplerOptions

# The bundled class-conditional MNIST model (docs/bundled-model.md), used when --network is not given.
DEFAULT_NETWORK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'models', 'mnist-cond-32x32.pkl')

OPTIONS_RECORD = 'generate-options.json'
GRID_MAX_IMAGES = 1024


class JobError(Exception):
    """Bad input to a sampling job; the message is one line."""


GenerateError = JobError  # the name generate.py has always used

#----------------------------------------------------------------------------
# Seeds and file layout.


SEED_LIMIT = 1 << 32  # EDM seeds its generators with seed % 2^32: larger seeds would repeat images


def parse_seeds(text, max_count=None):
    """Seeds from '0-49999', '1,5,9' or '0-9,100-109', in order, without repeats, as a lazy
    dnnlib.util.IntRanges (a range of a billion seeds costs nothing until it is walked)."""
    try:
        seeds = dnnlib.util.parse_int_ranges(text)
    except ValueError as err:
        raise GenerateError(f'invalid --seeds "{text}": {err}') from None
    if not seeds:
        raise GenerateError(f'--seeds "{text}" selects no seeds')
    if seeds.min() < 0:
        raise GenerateError(f'invalid --seeds "{text}": seeds must not be negative')
    if seeds.max() >= SEED_LIMIT:
        raise GenerateError(f'invalid --seeds "{text}": seeds must be below 2^32 = {SEED_LIMIT} '
                            '(EDM would wrap them around to repeat smaller seeds)')
    if max_count is not None and len(seeds) > max_count:
        raise GenerateError(f'--seeds "{text}" selects {len(seeds)} seeds; at most {max_count} are supported here')
    return seeds


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


NOT_COMPARED = ('chosen_by',)  # options-record keys that do not change the pixels


def options_record(network, class_idx, options, fast=FastPaths(), guidance=None, chosen_by=None):
    """What decides the pixels of an image besides its seed. Fast paths that may move pixels
    are listed only when on (and classifier guidance only when given), so records written
    before they existed still match. `chosen_by` (e.g. '--nfe=5') says what picked the sampler
    options; it is not compared on resume."""
    if isinstance(network, str) and os.path.exists(network):
        network = os.path.abspath(network)
    extra = guidance.record or {} if guidance is not None else {}
    record = dict(network=network, class_idx=class_idx, **dataclasses.asdict(options), **fast.record(), **extra)
    return record if chosen_by is None else dict(record, chosen_by=chosen_by)


def check_options_record(outdir, record, existing):
    """Raise GenerateError if `existing` PNGs in outdir were made with options other than `record`."""
    path = os.path.join(outdir, OPTIONS_RECORD)
    if not existing:
        return
    try:
        old = state.read_json(path)
    except FileNotFoundError:
        return
    except state.StateFileError as err:
        raise GenerateError(f'{err}; delete it or pass --no-resume') from None
    # Options added after a folder was made are missing from its record: they had their defaults.
    defaults = json.loads(json.dumps(dataclasses.asdict(SamplerOptions())))
    current = {**defaults, **json.loads(json.dumps(record))}
    old = {**defaults, **old}
    changed = [key for key in list(current) + [k for k in old if k not in current]
               if old.get(key) != current.get(key) and key not in NOT_COMPARED]
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
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                image_io.save_png(path, image)
            except OSError as err:  # disk full, file size limit, permissions: the PNG is not left half-written
                raise GenerateError(f'cannot write {path}: {err.strerror or err}') from None


def _all_ranks_sum(values, device):
    if dist.get_world_size() == 1:
        return values
    sync_device = device if torch.distributed.get_backend() == 'nccl' else torch.device('cpu')
    total = torch.tensor(values, dtype=torch.int64, device=sync_device)
    torch.distributed.all_reduce(total)
    return total.tolist()


def check_class(net, class_idx, label_dim=None):
    """Raise GenerateError unless class_idx is None or a class of the network (of the
    classifier, `label_dim` classes, when a guided sampler draws the labels)."""
    if class_idx is None:
        return
    label_dim = net.label_dim if label_dim is None else label_dim
    if not label_dim:
        raise GenerateError(f'--class={class_idx} given, but the network is unconditional')
    if not 0 <= class_idx < label_dim:
        raise GenerateError(f'--class={class_idx} is out of range: the network has classes 0-{label_dim - 1}')


def generate_images(net, seeds, outdir, options=SamplerOptions(), *, subdirs=False, class_idx=None,
                    max_batch_size=64, device=None, resume=True, progress=True, fast=FastPaths(), sampler=None,
                    guidance=None):
    """Sample one PNG per seed into `outdir` with this process's share of the batches;
    return GenerateStats. With `resume`, seeds whose PNG exists complete are not generated
    again. `fast` selects inference fast paths (samplers.fast; the default changes no pixel);
    `sampler`, if given, is a Sampler already built for `net` with these options (else one is
    built, with classifier `guidance` if given).

    Batches are cut from the full seed list and dealt to the torchrun processes in turn, and
    each process walks its share lazily (a billion seeds start at once); a batch with some
    PNGs missing is sampled whole, so resumed images are byte-identical.
    """
    device = torch.device('cpu') if device is None else torch.device(device)
    if sampler is None:
        sampler = Sampler(net, options, device=device, fast=fast, guidance=guidance)
    check_class(net, class_idx, sampler.label_dim)
    seeds, mine, num_mine = my_batches(seeds, max_batch_size)
    check_batch_memory(net, min(max_batch_size, len(seeds)), device)
    counts = dict(written=0, skipped=0)
    start = time.time()
    with tqdm.tqdm(total=num_mine, unit='img', disable=(dist.get_rank() != 0 or not progress), leave=False) as bar, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = None
        for b in mine:
            batch = seeds[b * max_batch_size:(b + 1) * max_batch_size]
            paths = [image_path(outdir, seed, subdirs) for seed in batch]
            missing = [path if not (resume and image_io.is_complete_png(path)) else None for path in paths]
            counts['skipped'] += missing.count(None)
            if any(missing):
                images = image_io.to_uint8(sample_batch(sampler, net, batch, class_idx, device)[0])
                if pending is not None:
                    pending.result()
                pending = pool.submit(_write_batch, missing, images)  # PNG encoding overlaps the next batch
                counts['written'] += len(paths) - missing.count(None)
            bar.update(len(batch))
        if pending is not None:
            pending.result()
    num_written, num_skipped = _all_ranks_sum([counts['written'], counts['skipped']], device)
    dist.barrier()
    return GenerateStats(num_written=num_written, num_skipped=num_skipped, seconds=time.time() - start)


def my_batches(seeds, max_batch_size):
    """(seeds as lazy IntRanges, this process's batch indices, the number of its seeds).

    Batch b holds seeds[b * max_batch_size:(b + 1) * max_batch_size] and goes to process
    b mod world size: by index alone, so no process needs to look at the output first.
    """
    if isinstance(seeds, range) and seeds.step == 1:
        seeds = dnnlib.util.IntRanges([(seeds.start, seeds.stop)])
    elif not isinstance(seeds, dnnlib.util.IntRanges):
        seeds = dnnlib.util.parse_int_ranges(list(seeds))
    num_batches = -(-len(seeds) // max_batch_size)
    mine = range(dist.get_rank(), num_batches, dist.get_world_size())
    num_mine = len(mine) * max_batch_size - (num_batches * max_batch_size - len(seeds) if num_batches - 1 in mine else 0)
    return seeds, mine, num_mine


def activation_bytes(net, batch_size):
    """An estimate of the memory one batch of sampling takes beyond the weights: the UNet's skip
    connections and working tensors at every level, attention scores, and the solver's float64
    latents. From the inner model's constructor arguments; None for networks without them."""
    model = getattr(net, 'model', None)
    if model is None or not persistence.is_persistent(model):
        return None
    try:
        params = inspect.signature(type(model).__init__).parameters
        kwargs = {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}
        kwargs.update(model.init_kwargs)
        res, base = int(kwargs['img_resolution']), int(kwargs['model_channels'])
        mult, blocks = [float(m) for m in kwargs['channel_mult']], int(kwargs['num_blocks'])
        attn = {int(r) for r in kwargs.get('attn_resolutions', ())}
        per_head = kwargs.get('channels_per_head')
    except (KeyError, TypeError, ValueError):
        return None
    floats, working, scores = 0, 0, 0
    for level, m in enumerate(mult):
        r, width = res >> level, int(m * base)
        floats += 2 * (blocks + 1) * width * r * r  # skips kept by the encoder and the decoder's inputs
        working = max(working, 6 * width * r * r)
        if r in attn:
            heads = max(1, width // int(per_head)) if per_head else int(kwargs.get('num_heads', 1) or 1)
            scores = max(scores, 2 * heads * (r * r) ** 2)
    latents = 8 * 6 * net.img_channels * net.img_resolution ** 2
    return batch_size * (4 * (floats + working + scores) + latents)


def available_bytes(device):
    """Memory free for a batch on `device` (psutil's available memory on the CPU)."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.mem_get_info(device)[0]
    if device.type == 'cpu':
        return psutil.virtual_memory().available
    return None


def check_batch_memory(net, batch_size, device, option='--batch'):
    """Raise JobError (one line) if a batch of `batch_size` cannot fit in the memory available."""
    need = activation_bytes(net, batch_size)
    have = available_bytes(device)
    if need is not None and have is not None and need > have:
        raise JobError(f'a batch of {batch_size} images needs about {need / 2**30:.1f} GiB on {device}, but '
                       f'{have / 2**30:.1f} GiB are available; use a smaller {option}')


def sample_batch(sampler, net, batch, class_idx=None, device='cpu'):
    """(images [N, C, H, W] float64, one-hot labels or None) of one batch of seeds.

    Raises NonFiniteError (one line naming the seeds and the solver step) if the network
    produced NaN or inf for any image: such images would be written black with exit 0."""
    def run(seeds, denoiser=None):
        noise = SeedNoise(seeds, device=device)
        shape = [net.img_channels, net.img_resolution, net.img_resolution]
        label_dim = getattr(sampler, 'label_dim', net.label_dim)  # a guided sampler draws labels for its classifier
        latents, labels = latents_and_labels(noise, shape, label_dim, class_idx, device=device)
        if denoiser is None:
            return sampler(latents, labels, noise.randn_like), labels
        watching = copy.copy(sampler)  # the same sampler, its denoiser seen through the watch
        watching.denoiser = denoiser
        return watching(latents, labels, noise.randn_like), labels

    images, labels = run(batch)
    finite = torch.isfinite(images).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = [seed for seed, ok in zip(batch, finite.tolist()) if not ok]
        raise NonFiniteError(_non_finite_message(sampler, bad, len(batch), run))
    return images, labels


class NonFiniteError(JobError):
    """The network produced NaN or inf; the message names the seeds and the step."""


class _FiniteWatch(StepDependent):
    """Passes every evaluation through and remembers the first that returned NaN or inf."""

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self.first = None   # (solver step, evaluation within the step, sigma)

    def at_step(self, i):
        inner = at_step(self.denoiser, i)
        calls = [0]

        def watched(x, sigma, class_labels=None):
            out = inner(x, sigma, class_labels)
            if self.first is None and not bool(torch.isfinite(out).all()):
                self.first = (i, calls[0], float(torch.as_tensor(sigma, dtype=torch.float64).flatten()[0]))
            calls[0] += 1
            return out
        return watched


def _non_finite_message(sampler, bad, batch_size, run):
    """Name the seeds and, by sampling them again under a watch, the first step that went wrong."""
    shown = ', '.join(map(str, bad[:10])) + (', ...' if len(bad) > 10 else '')
    where = ''
    watch = _FiniteWatch(sampler.denoiser)
    try:
        run(bad, watch)
    except Exception:  # the diagnosis is best effort; the seeds are named either way
        pass
    if watch.first is not None:
        step, call, sigma = watch.first
        num_steps = sampler.process.num_steps if sampler.options.discrete else len(sampler.sigmas) - 1
        where = f' at solver step {step + 1} of {num_steps} (evaluation {call + 1} of the step, sigma={sigma:.6g})'
    return (f'the network produced NaN or infinite values{where} for seed{"s" if len(bad) > 1 else ""} {shown} '
            f'({len(bad)} of {batch_size} in the batch); nothing was written for them (non-finite weights, or an '
            f'overflowing float16 path?)')


def write_grid(path, outdir, seeds, subdirs=False, max_images=GRID_MAX_IMAGES):
    """A grid of the PNGs of the first `max_images` seeds, in seed order."""
    images = [image_io.read_png(image_path(outdir, seed, subdirs)) for seed in seeds[:max_images]]
    image_io.save_grid(path, images)


def check_grid_path(grid, outdir):
    """Raise GenerateError if the --grid file would lie inside --outdir.

    Every image under an output folder counts as a sample for fid.py and dataset_tool.py (EDM's
    folder semantics), so a grid written there would be scored as one more, odd-sized, image.
    """
    folder, path = os.path.realpath(outdir), os.path.realpath(grid)
    if os.path.commonpath([folder, path]) == folder:
        raise GenerateError(f'--grid {grid} lies inside --outdir {outdir}, where fid.py would count it as a sample; '
                            f'write it next to the folder instead (e.g. --grid={os.path.basename(grid) or "grid.png"})')


def existing_images(outdir, seeds, subdirs=False):
    """True if a PNG of one of `seeds` exists in outdir. Costs one stat per seed, or for long
    seed lists one listing of the folder, whichever is smaller."""
    if len(seeds) <= 10000:
        return any(os.path.isfile(image_path(outdir, seed, subdirs)) for seed in seeds)
    seeds = seeds if isinstance(seeds, dnnlib.util.IntRanges) else dnnlib.util.parse_int_ranges(seeds)
    folders = [outdir]
    if subdirs:
        folders = [entry.path for entry in os.scandir(outdir) if entry.is_dir() and entry.name.isdigit()]
    for folder in folders:
        for entry in os.scandir(folder):
            stem, ext = os.path.splitext(entry.name)
            if ext == '.png' and stem.isdigit() and int(stem) in seeds and entry.path == image_path(outdir, int(stem), subdirs):
                return True
    return False

#----------------------------------------------------------------------------
# guided-diffusion sample files (image_sample.py).

PARTS_RECORD = 'options.json'


def to_uint8_guided(images):
    """float images [N, C, H, W] in [-1, 1] -> uint8 numpy [N, H, W, C], quantised as
    guided-diffusion does: ((x + 1) * 127.5) clamped and truncated (EDM rounds instead)."""
    return ((images + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def npz_name(num, resolution, channels):
    return f'samples_{num}x{resolution}x{resolution}x{channels}.npz'


@dataclasses.dataclass
class NpzStats:
    path: str               # The sample file.
    num_written: int        # Images sampled by all processes in this run.
    num_resumed: int        # Images taken from parts of an earlier run.
    seconds: float


def _part_path(folder, index):
    return os.path.join(folder, f'part-{index:06d}.npz')


def _read_part(path, seeds, shape, conditional, label_dim=None):
    """The (images, labels) of a finished part file, or None if it is missing.

    Part files are written atomically, so one that exists is complete: a part that is not
    exactly what this run would write (arrays, dtypes, shapes, seeds, labels in range) has
    been changed since, and is refused with JobError (one line naming it)."""
    if not os.path.isfile(path):
        return None
    try:
        arrays = npz.inspect_npz(path)
        wanted = {'arr_0', 'seeds'} | ({'arr_1'} if conditional else set())
        if set(arrays) != wanted:
            raise npz.NpzError(f'{path}: holds arrays {sorted(arrays)}, expected {sorted(wanted)}')
        n = len(seeds)
        expect = dict(arr_0=(np.uint8, (n, *shape)), seeds=(np.int64, (n,)), arr_1=(np.int64, (n,)))
        for name, array in arrays.items():
            dtype, want = expect[name]
            if array.dtype != np.dtype(dtype) or array.shape != tuple(want) or array.fortran_order:
                raise npz.NpzError(f'{path}: {name} is {array.describe()}, expected {np.dtype(dtype)} {list(want)}')
        if not np.array_equal(npz.read_array(path, arrays['seeds']), np.asarray(list(seeds), dtype=np.int64)):
            raise npz.NpzError(f'{path}: holds other seeds than batch {os.path.basename(path)} of this run')
        images = npz.read_array(path, arrays['arr_0'])
        labels = npz.read_array(path, arrays['arr_1']) if conditional else None
    except npz.NpzError as err:
        raise JobError(f'{err}; delete the part file (or its folder) to sample it again') from None
    if labels is not None and label_dim is not None and ((labels < 0) | (labels >= label_dim)).any():
        raise JobError(f'{path}: holds labels outside 0-{label_dim - 1}; delete the part file to sample it again')
    return images, labels


def _write_part(path, seeds, images, labels):
    arrays = dict(arr_0=images, seeds=np.asarray(seeds, dtype=np.int64))
    if labels is not None:
        arrays['arr_1'] = labels
    with dnnlib.util.atomic_write(path) as f:
        np.savez(f, **arrays)


def _check_record(folder, record, resume):
    path = os.path.join(folder, PARTS_RECORD)
    if resume and os.path.isfile(path):
        try:
            old = state.read_json(path)
        except (FileNotFoundError, state.StateFileError) as err:
            raise JobError(f'{err}; delete {folder} or pass --resume False') from None
        if old != json.loads(json.dumps(record)):
            raise JobError(f'{folder} holds parts of a run with other options; delete it or pass --resume False')
        return
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    with dnnlib.util.atomic_write(path, 'w') as f:
        json.dump(record, f, indent=2)


def sample_to_npz(net, seeds, out_dir, options, *, record, max_batch_size=16, device=None, fast=FastPaths(),
                  resume=True, progress=True, class_idx=None, name=None, guidance=None):
    """Sample one image per seed and write out_dir/samples_NxHxWxC.npz (or out_dir/`name`); return NpzStats.

    `record` (JSON data) describes everything that decides the pixels besides the seeds; parts
    of an earlier run are reused only when its record matches. With `guidance`
    (samplers.guidance) every seed draws a label for the classifier, saved as arr_1.
    """
    device = torch.device('cpu') if device is None else torch.device(device)
    seeds, mine, num_mine = my_batches(seeds, max_batch_size)
    check_batch_memory(net, min(max_batch_size, len(seeds)), device, option='--batch_size')
    shape = [net.img_resolution, net.img_resolution, net.img_channels]
    final = os.path.join(out_dir, name or npz_name(len(seeds), *shape[1:]))
    folder = os.path.join(out_dir, '.' + os.path.basename(final) + '.parts')
    batch_of = lambda b: seeds[b * max_batch_size:(b + 1) * max_batch_size]
    sampler = Sampler(net, options, device=device, fast=fast, guidance=guidance)
    conditional = bool(sampler.label_dim)
    run_record = dict(record, seeds=str(seeds), batch=max_batch_size)
    dist.run_on_rank0(lambda: _check_record(folder, run_record, resume), JobError)

    counts = dict(written=0, resumed=0)
    start = time.time()
    with tqdm.tqdm(total=num_mine, unit='img', disable=(dist.get_rank() != 0 or not progress), leave=False) as bar:
        for b in mine:
            batch = batch_of(b)
            if _read_part(_part_path(folder, b), batch, shape, conditional, sampler.label_dim) is not None:
                counts['resumed'] += len(batch)
            else:
                images, labels = sample_batch(sampler, net, batch, class_idx, device)
                label_ids = labels.argmax(dim=1).cpu().numpy().astype(np.int64) if conditional else None
                _write_part(_part_path(folder, b), batch, to_uint8_guided(images), label_ids)
                counts['written'] += len(batch)
            bar.update(len(batch))
    num_written, num_resumed = _all_ranks_sum([counts['written'], counts['resumed']], device)
    dist.barrier()

    def assemble():
        parts = [_read_part(_part_path(folder, b), batch_of(b), shape, conditional, sampler.label_dim) for b in range(-(-len(seeds) // max_batch_size))]
        if any(part is None for part in parts):
            raise JobError(f'{folder}: a part file is missing or damaged; run again to regenerate it')
        arrays = [np.concatenate([part[0] for part in parts])]
        if conditional:
            arrays.append(np.concatenate([part[1] for part in parts]))
        with dnnlib.util.atomic_write(final) as f:
            np.savez(f, *arrays)
        shutil.rmtree(folder, ignore_errors=True)
    dist.run_on_rank0(assemble, JobError)
    dist.barrier()
    return NpzStats(path=final, num_written=num_written, num_resumed=num_resumed, seconds=time.time() - start)


def stale_parts(out_dir):
    """Hidden part folders left in out_dir by unfinished runs."""
    return sorted(glob.glob(os.path.join(out_dir, '.samples_*.npz.parts')))
