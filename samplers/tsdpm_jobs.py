"""The library behind run_generate.py: TS-DPM configs, its output folders, resumable PNG jobs.

Image i (0-based) uses seed S + i: one torch.Generator seeded with it draws x_T =
randn([C, H, W]) float32 first, then every later draw of that image (ddpm) one
randn([C, H, W]) in TS-DPM's order, so an image depends only on its seed and the options,
never on the batch size or the number of torchrun processes. It is written to
`<folder>/<i>.png` quantised as TS-DPM writes it (samplers.tsdpm.to_uint8), atomically;
complete PNGs that exist are kept, as TS-DPM keeps them.
"""

import dataclasses
import hashlib
import os
import time

import tqdm

from torch_utils import distributed as dist
from torch_utils import images as image_io

from . import jobs
from . import tsdpm
from .noise import SeedNoise

SHIPPED_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'tsdpm')


def shipped_configs():
    """Names (without .yml) of the published TS-DPM configs this toolkit ships."""
    return sorted(name[:-4] for name in os.listdir(SHIPPED_CONFIGS) if name.endswith('.yml'))


def resolve_config(name, cwd=None):
    """The config file of --config `name`: a path; else config/<name> under `cwd` (where TS-DPM
    reads it); else a shipped config of that name (with or without .yml). JobError if none."""
    cwd = os.getcwd() if cwd is None else cwd
    candidates = [name, os.path.join(cwd, 'config', name)]
    stem = name[:-4] if name.endswith('.yml') else name
    if os.sep not in stem and '/' not in stem:
        candidates.append(os.path.join(SHIPPED_CONFIGS, stem + '.yml'))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise jobs.JobError(f'--config {name}: not a file, not in ./config/, and not a shipped config '
                        f'({", ".join(shipped_configs())})')


def folder_name(options, dataset):
    """TS-DPM's output folder for these flags (relative to the current folder), as run_generate.py names it."""
    o = options
    if o.time_shift:
        return f'ts-ddim/{dataset}_{o.sampler}_{o.sample_speed}_w_{o.window_size}_c_{o.cut_off_value}_{o.method}'
    if o.scale_method and o.step_size is not None:
        return f'scale-ddim/{dataset}_{o.sampler}_{o.sample_speed}_step_{o.step_size}_ets_{o.eta}'
    if o.scale_method and o.fix_scale is not None:
        return f'scale-ddim/{dataset}_{o.sampler}_{o.sample_speed}_fix_scale_{o.fix_scale}_ets_{o.eta}'
    if o.nor_var:
        return f'time-s-ddim/norm_var_{dataset}_{o.sampler}_{o.sample_speed}_{o.method}'
    return f'dpm-time-ts-order-2/{dataset}_{o.sampler}_{o.sample_speed}_{o.method}'


def file_digest(path):
    """SHA-256 of a file (read in 1 MiB pieces), to record which config and checkpoint made a folder."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for piece in iter(lambda: f.read(1 << 20), b''):
            digest.update(piece)
    return digest.hexdigest()


@dataclasses.dataclass
class TSDPMStats:
    folder: str
    num_written: int        # PNGs written by all processes
    num_skipped: int        # complete PNGs that existed already
    seconds: float


def sample_images(eps_model, tables, options, shape, seeds, device='cpu'):
    """uint8 [N, H, W, 3] of one batch of seeds (TS-DPM's sampler, its quantisation)."""
    noise = SeedNoise(seeds, device=device)
    x_T = noise.randn([len(seeds), *shape], device=device)
    return tsdpm.to_uint8(tsdpm.sample(eps_model, x_T, tables, options, randn_like=noise.randn_like))


def generate(eps_model, tables, options, shape, folder, num_images, *, seed=0, record=None, batch_size=64,
             device='cpu', resume=True, progress=True):
    """Write folder/<i>.png for i < num_images (seed + i) with this process's share of the
    batches; return TSDPMStats. `record` (JSON data: what decides the pixels besides the seed)
    is kept in the folder, and a folder with images made under another record is refused."""
    options.check(tables.num_timesteps)
    record = dict(record or {}, tsdpm=dataclasses.asdict(options), seed=seed, shape=list(shape))

    def prepare():
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise jobs.JobError(f'cannot create {folder}: {err.strerror or err}') from None
        paths = [os.path.join(folder, f'{i}.png') for i in range(min(num_images, 10000))]
        if resume:
            jobs.check_options_record(folder, record, any(os.path.isfile(p) for p in paths))
        try:
            jobs.write_options_record(folder, record)
        except OSError as err:
            raise jobs.JobError(f'cannot write to {folder}: {err.strerror or err}') from None
    dist.run_on_rank0(prepare, jobs.JobError)
    dist.barrier()

    indices, mine, num_mine = jobs.my_batches(range(num_images), batch_size)
    written = skipped = 0
    start = time.time()
    with tqdm.tqdm(total=num_mine, unit='img', disable=(dist.get_rank() != 0 or not progress), leave=False) as bar:
        for b in mine:
            batch = list(indices[b * batch_size:(b + 1) * batch_size])
            paths = [os.path.join(folder, f'{i}.png') for i in batch]
            missing = [p if not (resume and image_io.is_complete_png(p)) else None for p in paths]
            skipped += missing.count(None)
            if any(missing):
                # The whole batch is sampled (each image depends on its seed only, so kept ones are unchanged).
                images = sample_images(eps_model, tables, options, shape, [seed + i for i in batch], device)
                jobs._write_batch(missing, images)  # pylint: disable=protected-access
                written += len(paths) - missing.count(None)
            bar.update(len(batch))
    written, skipped = jobs._all_ranks_sum([written, skipped], device)  # pylint: disable=protected-access
    dist.barrier()
    return TSDPMStats(folder=folder, num_written=written, num_skipped=skipped, seconds=time.time() - start)
