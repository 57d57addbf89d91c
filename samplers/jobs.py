"""Sampling jobs that write files: seeds in, resumable outputs out, under torchrun or alone.

`sample_to_npz` writes guided-diffusion's sample file, `samples_NxHxWxC.npz` (`arr_0`: uint8
images NHWC quantised as guided-diffusion does, `arr_1`: class labels of a conditional
network), as image_sample.py does. Batches of consecutive seeds are dealt to the processes in
turn; each finished batch is kept as a part file in a hidden folder next to the output, so a
killed run resumes where it stopped, and the sample file appears (atomically) only when every
part exists. Each image depends on its seed and the options only, never on the batch size or
the number of processes.
"""

import dataclasses
import glob
import json
import os
import shutil
import time

import numpy as np
import torch
import tqdm

import dnnlib
from torch_utils import distributed as dist

from .fast import FastPaths
from .noise import SeedNoise, latents_and_labels
from .sampler import Sampler

PARTS_RECORD = 'options.json'


class JobError(Exception):
    """A sampling job that cannot run or resume; the message is one line."""


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


def _read_part(path, seeds, shape, conditional):
    """The (images, labels) of a finished part file, or None if it is missing or incomplete."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if list(data['seeds']) != list(seeds):
                return None
            images = data['arr_0']
            labels = data['arr_1'] if conditional else None
    except (OSError, ValueError, KeyError, EOFError):
        return None
    if images.dtype != np.uint8 or images.shape != (len(seeds), *shape):
        return None
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
            with open(path, encoding='utf8') as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None
        if old != json.loads(json.dumps(record)):
            raise JobError(f'{folder} holds parts of a run with other options; delete it or pass --resume False')
        return
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    with dnnlib.util.atomic_write(path, 'w') as f:
        json.dump(record, f, indent=2)


def sample_to_npz(net, seeds, out_dir, options, *, record, max_batch_size=16, device=None, fast=FastPaths(),
                  resume=True, progress=True, class_idx=None):
    """Sample one image per seed and write out_dir/samples_NxHxWxC.npz; return NpzStats.

    `record` (JSON data) describes everything that decides the pixels besides the seeds; parts
    of an earlier run are reused only when its record matches.
    """
    device = torch.device('cpu') if device is None else torch.device(device)
    seeds = list(seeds)
    shape = [net.img_resolution, net.img_resolution, net.img_channels]
    final = os.path.join(out_dir, npz_name(len(seeds), *shape[1:]))
    folder = os.path.join(out_dir, '.' + os.path.basename(final) + '.parts')
    conditional = bool(net.label_dim)
    sampler = Sampler(net, options, device=device, fast=fast)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    dist.run_on_rank0(lambda: _check_record(folder, dict(record, seeds=[seeds[0], seeds[-1], len(seeds)]), resume), JobError)

    batches = [seeds[i:i + max_batch_size] for i in range(0, len(seeds), max_batch_size)]
    todo = [index for index, batch in enumerate(batches) if _read_part(_part_path(folder, index), batch, shape, conditional) is None]
    num_resumed = len(seeds) - sum(len(batches[index]) for index in todo)
    mine = todo[rank::world_size]
    dist.barrier()

    start = time.time()
    with tqdm.tqdm(total=sum(len(batches[i]) for i in mine), unit='img', disable=(rank != 0 or not progress), leave=False) as bar:
        for index in mine:
            batch = batches[index]
            noise = SeedNoise(batch, device=device)
            latents, labels = latents_and_labels(noise, [shape[2], *shape[:2]], net.label_dim, class_idx, device=device)
            images = to_uint8_guided(sampler(latents, labels, noise.randn_like))
            label_ids = labels.argmax(dim=1).cpu().numpy().astype(np.int64) if conditional else None
            _write_part(_part_path(folder, index), batch, images, label_ids)
            bar.update(len(batch))
    num_written = len(seeds) - num_resumed
    dist.barrier()

    def assemble():
        parts = [_read_part(_part_path(folder, index), batch, shape, conditional) for index, batch in enumerate(batches)]
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
