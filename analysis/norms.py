"""Norms of the predicted noise along sampling trajectories and on training images (the
sampling and training sides of arXiv 2308.15321, Fig. 6), and the norms.json/norms.csv files.

`measure_norms()` returns an `EpsNorms`; `norms_record()`, `write_norms()`, `read_norms()`
and `format_norms()` turn it into files and text. docs/exposure.md defines every quantity.
"""

import copy
import dataclasses
import json
import math
import os

import numpy as np
import torch
import tqdm

import dnnlib
from safeload import state
from samplers import Sampler, SamplerOptions, SeedNoise, eps_scalers, jobs, latents_and_labels
from samplers.recording import (EpsNormRecorder, LayoutError, evaluation_index, evaluation_layout, evaluation_levels,
                                run_one_step, step_levels, unscaled_denoiser)
from torch_utils import distributed as dist

from .common import ExposureError, write_csv

# The training-side noise of seed s comes from a generator seeded with s + 2^31 (mod 2^32), so
# that it is not the latent of the same seed's sampling trajectory.
TRAINING_SEED_OFFSET = 1 << 31


@dataclasses.dataclass
class EpsNorms:
    """Per-image ||eps||_2 at every network evaluation of a sampler, for S seeds and E evaluations.

    `sampling[s, j]` is the norm of the network's own eps, (x - D(x)) / sigma, at evaluation j of
    the sampler's trajectory from seed s (with epsilon scaling on, the solver used eps / lambda_i;
    that is `sampling / scalers`). `training[s, j]` is the norm at the same evaluation when the
    step starts from a training image noised to the step's level instead (the network's input
    distribution during training). For DDPM and DDIM, x is x_t / sqrt(alpha_bar) and
    sigma = sqrt(1 / alpha_bar - 1), so eps is the model's eps prediction.
    """
    layout: list                # [(step i, kind)] in evaluation order (samplers.recording.evaluation_layout).
    levels: list                # Scheduled sigma of each evaluation.
    scalers: list               # lambda_i of each evaluation (1 without epsilon scaling).
    dim: int                    # C * H * W: ||eps|| of pure N(0, I) noise is about sqrt(dim).
    sampling: np.ndarray        # [S, E] float64.
    sampling_sigma: np.ndarray  # [S, E] the sigma each sampling evaluation ran at (per sample under time shift).
    training: np.ndarray        # [S, E] float64.

    def rows(self):
        """One dict per evaluation: means, standard errors and ratios (docs/exposure.md)."""
        out = []
        count = len(self.layout)
        for j, ((step, kind), level, scaler) in enumerate(zip(self.layout, self.levels, self.scalers)):
            s, t = self.sampling[:, j], self.training[:, j]
            out.append(dict(evaluation=j + 1, timestep=count - j, step=step, kind=kind, sigma=level,
                            sigma_used=float(self.sampling_sigma[:, j].mean()), eps_scaler=scaler,
                            sampling=float(s.mean()), sampling_sem=_sem(s), training=float(t.mean()), training_sem=_sem(t),
                            ratio=float(s.mean() / t.mean()), sampling_used=float(s.mean() / scaler),
                            ratio_used=float(s.mean() / scaler / t.mean())))
        return out


def _sem(values):
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def training_labels(net, dataset):
    """Integer class of every dataset image ([N] int64), or None for an unconditional network.
    Raises ExposureError when the dataset does not fit the network."""
    expected = [net.img_channels, net.img_resolution, net.img_resolution]
    if list(dataset.image_shape) != expected:
        c, h, w = dataset.image_shape
        raise ExposureError(f'the dataset images are {c}x{h}x{w} (CxHxW) but the network expects '
                            f'{expected[0]}x{expected[1]}x{expected[2]}')
    if not net.label_dim:
        return None
    if not dataset.has_labels or not dataset.has_onehot_labels:
        raise ExposureError(f'the network is class-conditional ({net.label_dim} classes) but the dataset has no '
                            'class labels (dataset.json)')
    labels = np.array([dataset.get_details(i).raw_label for i in range(len(dataset))], dtype=np.int64)
    if labels.max() >= net.label_dim:
        raise ExposureError(f'the dataset has class {labels.max()} but the network has classes 0-{net.label_dim - 1}')
    return labels


def training_pool(labels, num_images, class_idx=None):
    """Indices of the dataset images the training side draws from: all, or those of class_idx."""
    if class_idx is None or labels is None:
        return np.arange(num_images)
    pool = np.flatnonzero(labels == class_idx)
    if not len(pool):
        raise ExposureError(f'--class={class_idx}: the dataset has no image of that class')
    return pool


def _columns(records, layout, count):
    """[count, E] norms and sigmas from EpsNormRecorder.take() of a solver run with `layout`."""
    index = evaluation_index(layout)
    norms = torch.full([count, len(layout)], float('nan'), dtype=torch.float64)
    sigmas = torch.full_like(norms, float('nan'))
    for key, (n, s) in records.items():
        if key not in index:
            raise ExposureError(f'the solver made call {key[1] + 1} of step {key[0]}, which its evaluation layout '
                                'does not have (samplers/recording.py, EVALUATIONS)')
        norms[:, index[key]], sigmas[:, index[key]] = n.cpu(), s.cpu()
    return norms, sigmas


def _sampling_norms(sampler, net, batch, class_idx, layout, device):
    noise = SeedNoise(batch, device=device)
    shape = [net.img_channels, net.img_resolution, net.img_resolution]
    latents, labels = latents_and_labels(noise, shape, net.label_dim, class_idx, device=device)
    recorder = EpsNormRecorder(sampler.denoiser)
    recording = copy.copy(sampler)  # the same sampler, its denoiser seen through the recorder
    recording.denoiser = recorder
    recording(latents, labels, noise.randn_like)
    records = recorder.take()
    missing = sorted(set(evaluation_index(layout)) - set(records))
    if missing:
        raise ExposureError(f'the solver made no call {missing[0][1] + 1} in step {missing[0][0]}, which its evaluation '
                            'layout has (samplers/recording.py, EVALUATIONS)')
    return _columns(records, layout, len(batch))


def _training_norms(sampler, net, dataset, labels, pool, batch, layout, device):
    """For each step i: a training image x0 per seed, x = x0 + sigma_i n, and one solver step
    from x with the unscaled network (Heun: the Euler evaluation at sigma_i and the correction
    at sigma_{i+1}; DDPM, DDIM: the evaluation at the step's timestep)."""
    items = [int(pool[seed % len(pool)]) for seed in batch]
    x0 = torch.from_numpy(np.stack([dataset[idx][0] for idx in items])).to(device, torch.float64) / 127.5 - 1
    onehot = None
    if labels is not None:
        onehot = torch.eye(net.label_dim, device=device)[torch.as_tensor(labels[items], device=device)]
    noise = SeedNoise([(seed + TRAINING_SEED_OFFSET) % (1 << 32) for seed in batch], device=device)
    norms = torch.full([len(batch), len(layout)], float('nan'), dtype=torch.float64)
    for i in range(len(step_levels(sampler)) - 1):
        n = noise.randn(list(x0.shape))
        recorder = EpsNormRecorder(unscaled_denoiser(sampler))
        run_one_step(sampler, recorder, x0, n, i, onehot, noise.randn_like)
        # The step runs from a noised training image, with no history: a multistep solver may make
        # its warm-up evaluations there; only the evaluations its sampling run makes at step i count.
        index = evaluation_index(layout)
        records = {(i, call): value for (_step, call), value in recorder.take().items() if (i, call) in index}
        step_norms, _sigmas = _columns(records, layout, len(batch))
        done = ~step_norms.isnan()
        norms[done] = step_norms[done]
    return norms


def _sum_over_ranks(tensor, device):
    """Sum of a float64 tensor over the ranks. Each entry is non-zero on one rank only, so the
    sum is exact and the result is the same for any number of processes."""
    if dist.get_world_size() == 1:
        return tensor
    nccl = torch.distributed.get_backend() == 'nccl'
    buf = tensor.to(device) if nccl else tensor.clone()
    torch.distributed.all_reduce(buf)
    return buf.cpu()


def _check_finite(values, seeds, layout):
    """Refuse NaN or inf norms (a network producing non-finite values) with one line naming the
    seeds and the first evaluation; norms.json is not written."""
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    rows = (~finite).any(dim=0).any(dim=1)
    bad = [seed for seed, flag in zip(seeds, rows.tolist()) if flag]
    column = int((~finite).any(dim=0).any(dim=0).nonzero()[0])
    step, kind = layout[column]
    shown = ', '.join(map(str, bad[:10])) + (', ...' if len(bad) > 10 else '')
    raise ExposureError(f'the network produced NaN or infinite values at solver step {step + 1} ({kind} evaluation) '
                        f'for seeds {shown}; no norms were written')


def measure_norms(net, dataset, seeds, options=SamplerOptions(), *, class_idx=None, max_batch_size=64,
                  device=None, progress=False):
    """EpsNorms of `net` sampled with `options` from `seeds`, and of the images of `dataset`
    (ImageFolderDataset with labels) noised to the same levels; identical on every rank.

    Seed s gives one sampling trajectory (generate.py's image of seed s) and uses dataset image
    s mod M (M images, or those of `class_idx`), with its own label, for the training side.
    Batches of `max_batch_size` seeds are dealt to the torchrun ranks as in generate.py.
    """
    device = torch.device('cpu') if device is None else torch.device(device)
    options.check()
    if options.S_churn:
        raise ExposureError('norms are defined here for deterministic sampling: --S_churn must be 0')
    jobs.check_class(net, class_idx)
    labels = training_labels(net, dataset)
    pool = training_pool(labels, len(dataset), class_idx)
    sampler = Sampler(net, options, device=device)
    levels = step_levels(sampler)
    try:
        layout = evaluation_layout(len(levels) - 1, options.solver)
    except LayoutError as err:
        raise ExposureError(str(err)) from None
    step_scalers = eps_scalers(len(levels) - 1, options.eps_scaler, options.eps_scaler_k)
    scalers = [step_scalers[i] for i, _kind in layout]
    eval_levels = evaluation_levels(levels, options.solver)

    batches = jobs.split_batches(list(seeds), max_batch_size)
    starts = np.cumsum([0] + [len(b) for b in batches])
    rank, world = dist.get_rank(), dist.get_world_size()
    data = torch.zeros([3, len(seeds), len(layout)], dtype=torch.float64)
    mine = list(range(rank, len(batches), world))
    with torch.inference_mode():
        for b in tqdm.tqdm(mine, unit='batch', disable=(rank != 0 or not progress), leave=False):
            rows = slice(starts[b], starts[b + 1])
            used, sigmas = _sampling_norms(sampler, net, batches[b], class_idx, layout, device)
            data[0, rows] = used * torch.tensor(scalers, dtype=torch.float64)  # the network's own eps
            data[1, rows] = sigmas
            data[2, rows] = _training_norms(sampler, net, dataset, labels, pool, batches[b], layout, device)
            _check_finite(data[:, rows], batches[b], layout)
    data = _sum_over_ranks(data, device).numpy()
    return EpsNorms(layout=layout, levels=eval_levels, scalers=scalers,
                    dim=net.img_channels * net.img_resolution * net.img_resolution,
                    sampling=data[0], sampling_sigma=data[1], training=data[2])


NORM_COLUMNS = ('evaluation', 'timestep', 'step', 'kind', 'sigma', 'sigma_used', 'eps_scaler', 'sampling', 'sampling_sem',
                'training', 'training_sem', 'ratio', 'sampling_used', 'ratio_used')


def norms_record(result, *, network, data, seeds, options, class_idx=None):
    """The JSON document `norms` writes: what was measured, how, and one row per evaluation."""
    return dict(kind='eps-norms', network=network, data=data, seeds=seeds, num_images=int(result.sampling.shape[0]),
                class_idx=class_idx, options=dataclasses.asdict(options), dim=result.dim, sqrt_dim=math.sqrt(result.dim),
                evaluations=result.rows())


def write_norms(outdir, record):
    """norms.json and norms.csv in outdir, each written atomically; returns their paths."""
    os.makedirs(outdir, exist_ok=True)
    paths = os.path.join(outdir, 'norms.json'), os.path.join(outdir, 'norms.csv')
    with dnnlib.util.atomic_write(paths[0], 'w') as f:
        json.dump(record, f, indent=2)
        f.write('\n')
    write_csv(paths[1], NORM_COLUMNS, record['evaluations'])
    return paths



def read_norms(path):
    """A document written by `norms` (checked enough for calibrate and plot)."""
    try:
        record = state.read_json(path)
    except FileNotFoundError:
        raise ExposureError(f'cannot read {path}: no such file') from None
    except state.StateFileError as err:
        raise ExposureError(str(err)) from None
    if record.get('kind') != 'eps-norms' or not record.get('evaluations'):
        raise ExposureError(f'{path}: not a norms.json written by "exposure.py norms"')
    try:
        state.check_fields(record, dict(evaluations=list, dim=int, num_images=int, options=dict), path)
        for n, row in enumerate(record['evaluations']):
            if not isinstance(row, dict):
                raise state.StateFileError(f'{path}: evaluation {n} is not an object')
            state.check_fields(row, dict(step=int, kind=str, sigma=float, sampling=float, training=float),
                               f'{path}: evaluation {n}')
    except state.StateFileError as err:
        raise ExposureError(str(err)) from None
    return record


def format_norms(record):
    """The per-evaluation table as aligned text."""
    lines = [f'{"eval":>4} {"step":>4} {"kind":<10} {"sigma":>9} {"sampling":>9} {"training":>9} {"ratio":>7}']
    for r in record['evaluations']:
        lines.append(f'{r["evaluation"]:>4} {r["step"]:>4} {r["kind"]:<10} {r["sigma"]:>9.4g} {r["sampling"]:>9.4f} '
                     f'{r["training"]:>9.4f} {r["ratio"]:>7.4f}')
    return '\n'.join(lines)
