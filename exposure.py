"""Exposure-bias analysis: epsilon-norm trajectories (arXiv 2308.15321, Fig. 6), scaler
calibration, and sweeps of sample quality over epsilon scaling and time shift.

Library functions: `measure_norms()`, `calibrate()`, `run_sweep()`, `plot_norms()`,
`plot_sweep()`; `main()` is the command line around them. docs/exposure.md defines every
quantity and holds an evaluation on the bundled MNIST model.
"""

import copy
import csv
import dataclasses
import io
import json
import math
import os
import shutil
import time

import click
import numpy as np
import torch
import tqdm

import dnnlib
import generate
from metrics import classifier as digit_classifier
from metrics.detector import INCEPTION_URL, MetricError, load_detector
from metrics.features import compute_feature_stats, open_images
from metrics.frechet import frechet_distance
from metrics.reference import load_reference
from samplers import NO_CHURN, Sampler, SamplerOptionError, SamplerOptions, SeedNoise, eps_scalers, latents_and_labels, network_denoiser
from samplers.recording import CORRECTION, EULER, EpsNormRecorder, FirstStepOnly, evaluation_layout
from torch_utils import cli
from torch_utils import distributed as dist
from training import loader
from training.dataset import ImageFolderDataset

# The training-side noise of seed s comes from a generator seeded with s + 2^31 (mod 2^32), so
# that it is not the latent of the same seed's sampling trajectory.
TRAINING_SEED_OFFSET = 1 << 31
SWEEP_RECORD = 'sweep-options.json'
MAX_SEEDS = 1_000_000    # norms and sweeps keep per-seed arrays in memory (generate.py streams any number)
MAX_POINTS = 10_000      # values of one --eps_scaler start:stop:step range


class ExposureError(Exception):
    """Bad input to the exposure tools; the message is one line."""

#----------------------------------------------------------------------------
# Norms of the predicted noise: sampling and training side.


@dataclasses.dataclass
class EpsNorms:
    """Per-image ||eps||_2 at every network evaluation of a sampler, for S seeds and E evaluations.

    `sampling[s, j]` is the norm of the network's own eps, (x - D(x)) / sigma, at evaluation j of
    the sampler's trajectory from seed s (with epsilon scaling on, the solver used eps / lambda_i;
    that is `sampling / scalers`). `training[s, j]` is the norm at the same evaluation when the
    step starts from a training image noised to the step's level instead (the network's input
    distribution during training).
    """
    layout: list                # [(step i, 'euler' | 'correction')] in evaluation order.
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
    index = {key: j for j, key in enumerate(layout)}
    norms = torch.full([count, len(layout)], float('nan'), dtype=torch.float64)
    sigmas = torch.full_like(norms, float('nan'))
    for (step, call), (n, s) in records.items():
        j = index[(step, EULER if call == 0 else CORRECTION)]
        norms[:, j], sigmas[:, j] = n.cpu(), s.cpu()
    return norms, sigmas


def _sampling_norms(sampler, net, batch, class_idx, layout, device):
    noise = SeedNoise(batch, device=device)
    shape = [net.img_channels, net.img_resolution, net.img_resolution]
    latents, labels = latents_and_labels(noise, shape, net.label_dim, class_idx, device=device)
    recorder = EpsNormRecorder(sampler.denoiser)
    recording = copy.copy(sampler)  # the same sampler, its denoiser seen through the recorder
    recording.denoiser = recorder
    recording(latents, labels, noise.randn_like)
    return _columns(recorder.take(), layout, len(batch))


def _training_norms(sampler, net, dataset, labels, pool, batch, layout, device):
    """For each step i: a training image x0 per seed, x = x0 + sigma_i n, and one solver step
    (Euler, and Heun's correction at sigma_{i+1}) from x with the unscaled network."""
    items = [int(pool[seed % len(pool)]) for seed in batch]
    x0 = torch.from_numpy(np.stack([dataset[idx][0] for idx in items])).to(device, torch.float64) / 127.5 - 1
    onehot = None
    if labels is not None:
        onehot = torch.eye(net.label_dim, device=device)[torch.as_tensor(labels[items], device=device)]
    noise = SeedNoise([(seed + TRAINING_SEED_OFFSET) % (1 << 32) for seed in batch], device=device)
    levels = sampler.sigmas.tolist()
    norms = torch.full([len(batch), len(layout)], float('nan'), dtype=torch.float64)
    for i in range(len(levels) - 1):
        n = noise.randn(list(x0.shape))
        sigmas = torch.tensor([levels[i], levels[i + 1], 0.0][:3 if levels[i + 1] > 0 else 2], dtype=torch.float64, device=device)
        recorder = EpsNormRecorder(network_denoiser(sampler.net))
        # The solver starts from sigma_0 * latents: latents = x0 / sigma_i + n gives x0 + sigma_i n.
        sampler.solver(FirstStepOnly(recorder), x0 / levels[i] + n, sigmas, noise.randn_like, onehot,
                       churn=NO_CHURN, time_shift=None, ode=sampler.ode)
        for (_step, call), (step_norms, _sigmas) in recorder.take().items():
            norms[:, layout.index((i, EULER if call == 0 else CORRECTION))] = step_norms.cpu()
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
    generate.check_class(net, class_idx)
    labels = training_labels(net, dataset)
    pool = training_pool(labels, len(dataset), class_idx)
    sampler = Sampler(net, options, device=device)
    layout = evaluation_layout(options.num_steps, options.solver)
    step_scalers = eps_scalers(options.num_steps, options.eps_scaler, options.eps_scaler_k)
    scalers = [step_scalers[i] for i, _kind in layout]
    levels = sampler.sigmas.tolist()
    eval_levels = [levels[i] if kind == EULER else levels[i + 1] for i, kind in layout]

    batches = generate.split_batches(list(seeds), max_batch_size)
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
    _write_csv(paths[1], NORM_COLUMNS, record['evaluations'])
    return paths


def _write_csv(path, columns, rows):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction='ignore', lineterminator='\n')
    writer.writeheader()
    writer.writerows([{key: ('' if row.get(key) is None else row.get(key)) for key in columns} for row in rows])
    with dnnlib.util.atomic_write(path, 'w') as f:
        f.write(buf.getvalue())


def read_norms(path):
    """A document written by `norms` (checked enough for calibrate and plot)."""
    try:
        with open(path, encoding='utf8') as f:
            record = json.load(f)
    except OSError as err:
        raise ExposureError(f'cannot read {path}: {err.strerror or err}') from None
    except ValueError as err:
        raise ExposureError(f'{path}: not JSON ({err})') from None
    if not isinstance(record, dict) or record.get('kind') != 'eps-norms' or not record.get('evaluations'):
        raise ExposureError(f'{path}: not a norms.json written by "exposure.py norms"')
    return record

#----------------------------------------------------------------------------
# Calibration: a scaler from the ratio of sampling to training norms.


FITS = ('norm', 'ratio')


@dataclasses.dataclass
class Calibration:
    eps_scaler: float       # b
    eps_scaler_k: float     # k (0 unless linear)
    fit: str                # 'norm' or 'ratio'
    linear: bool
    ratios: list            # S_j / T_j per evaluation, as measured.
    scalers: list           # lambda_i(j) of the fit per evaluation.
    rows: list              # The evaluations fitted (norms.json rows).

    @property
    def residual(self):
        """S_j / (lambda_i(j) T_j): the ratio predicted after scaling (1 = gap closed)."""
        return [r / s for r, s in zip(self.ratios, self.scalers)]


def calibrate(rows, num_steps, *, linear=False, fit='norm', min_sigma=0.0):
    """Fit lambda_i = b (+ k (N - 1 - i)) to the measured norms of `rows` (norms.json evaluations)
    at levels sigma >= min_sigma.

    S_j and T_j are the mean sampling and training norms of evaluation j (of step i(j)).
    fit='norm' minimises sum_j (S_j - lambda_i(j) T_j)^2 (b = sum S T / sum T^2 for a constant):
    evaluations count by their size, so the high-noise ones dominate. fit='ratio' minimises
    sum_j (S_j / T_j - lambda_i(j))^2: each evaluation counts the same (b = mean ratio).
    """
    if fit not in FITS:
        raise ExposureError(f'--fit must be one of {"|".join(FITS)}, not "{fit}"')
    rows = [r for r in rows if r['sigma'] >= min_sigma]
    if not rows:
        raise ExposureError(f'no evaluation is at sigma >= {min_sigma:g} (--min-sigma)')
    S = np.array([r['sampling'] for r in rows], dtype=np.float64)
    T = np.array([r['training'] for r in rows], dtype=np.float64)
    m = np.array([num_steps - 1 - r['step'] for r in rows], dtype=np.float64)
    if linear and len(set(m.tolist())) < 2:
        raise ExposureError('a linear fit needs evaluations of at least two steps')
    columns = [np.ones_like(m), m] if linear else [np.ones_like(m)]
    if fit == 'norm':
        A, y = np.stack([c * T for c in columns], axis=1), S
    else:
        A, y = np.stack(columns, axis=1), S / T
    coef = np.linalg.lstsq(A, y, rcond=None)[0]
    b, k = float(coef[0]), float(coef[1]) if linear else 0.0
    return Calibration(eps_scaler=b, eps_scaler_k=k, fit=fit, linear=linear, ratios=(S / T).tolist(),
                       scalers=(b + k * m).tolist(), rows=rows)


def describe_calibration(record, cal, other):
    """Lines saying what was measured, how the scaler was fitted, and what it predicts."""
    opts, rows = record['options'], cal.rows
    lo, hi = min(range(len(rows)), key=lambda j: cal.ratios[j]), max(range(len(rows)), key=lambda j: cal.ratios[j])
    measured_with = ''
    if opts['eps_scaler'] != 1 or opts['eps_scaler_k'] != 0:
        measured_with = (f' The trajectories were sampled with --eps_scaler={opts["eps_scaler"]:g} --eps_scaler_k={opts["eps_scaler_k"]:g};'
                         ' S_j is the network\'s unscaled eps along those trajectories, so this is a new estimate made along them.')
    how = {'norm': 'least squares of sum_j (S_j - lambda_i T_j)^2 (each evaluation weighted by T_j^2: low-sigma ones, with smaller norms, count less)',
           'ratio': 'least squares of sum_j (S_j/T_j - lambda_i)^2 (every evaluation weighted equally)'}
    form = 'lambda_i = b + k (N-1-i)' if cal.linear else 'a constant lambda_i = b'
    suggestion = f'--eps_scaler={cal.eps_scaler:.4f}' + (f' --eps_scaler_k={cal.eps_scaler_k:.6f}' if cal.linear else '')
    resid = cal.residual
    skipped = len(record['evaluations']) - len(rows)
    used = f'{len(rows)} evaluations' + (f' at sigma >= {min(r["sigma"] for r in rows):.3g} ({skipped} below --min-sigma left out)' if skipped else '')
    return [
        f'Measured: mean ||eps||_2 of the network over {record["num_images"]} images at the {used} of '
        f'{opts["solver"]} with {opts["num_steps"]} steps: S_j along sampling trajectories, T_j on training images '
        f'noised to the same sigma.{measured_with}',
        f'Ratios S_j/T_j: from {cal.ratios[lo]:.4f} (evaluation {rows[lo]["evaluation"]}, sigma {rows[lo]["sigma"]:.3g}) to '
        f'{cal.ratios[hi]:.4f} (evaluation {rows[hi]["evaluation"]}, sigma {rows[hi]["sigma"]:.3g}); mean {np.mean(cal.ratios):.4f}.',
        f'Fit "{cal.fit}": {form} by {how[cal.fit]}.',
        f'Suggested: {suggestion}',
        f'Predicted ratio after scaling, S_j/(lambda_i T_j): {min(resid):.4f} to {max(resid):.4f} (ignores that scaling '
        'moves the trajectory; measure again with the suggestion to check).',
        f'Fit "{other.fit}" would give --eps_scaler={other.eps_scaler:.4f}' + (f' --eps_scaler_k={other.eps_scaler_k:.6f}' if other.linear else '') + '.',
    ]

#----------------------------------------------------------------------------
# Sweep: sample quality over a grid of scalers and time-shift settings.


@dataclasses.dataclass(frozen=True)
class GridPoint:
    eps_scaler: float = 1.0
    ts_window: int = 0
    ts_cutoff: float = SamplerOptions.ts_cutoff

    @property
    def name(self):
        ts = f'-ts{self.ts_window}-c{self.ts_cutoff:g}' if self.ts_window else ''
        return f'b{self.eps_scaler:.5f}{ts}'

    @property
    def ts_label(self):
        return f'TS window {self.ts_window}, cutoff {self.ts_cutoff:g}' if self.ts_window else 'no TS'

    def options(self, base):
        return dataclasses.replace(base, eps_scaler=self.eps_scaler, ts_window=self.ts_window,
                                   ts_cutoff=self.ts_cutoff if self.ts_window else SamplerOptions.ts_cutoff)


def parse_scalers(text):
    """Scalers from '1,1.002,1.004' or 'start:stop:step' (stop included) or a mix; all > 0."""
    values = []
    for item in [part.strip() for part in str(text).split(',') if part.strip()]:
        try:
            parts = [float(p) for p in item.split(':')]
        except ValueError:
            raise ExposureError(f'invalid --eps_scaler list "{text}": "{item}" is not a number or start:stop:step') from None
        if not all(math.isfinite(p) for p in parts):
            raise ExposureError(f'invalid --eps_scaler list "{text}": "{item}" is not finite')
        if len(parts) == 3 and parts[2] > 0 and (parts[1] - parts[0]) / parts[2] >= MAX_POINTS:
            raise ExposureError(f'invalid --eps_scaler range "{item}": more than {MAX_POINTS} values')
        if len(parts) == 1:
            values.append(parts[0])
        elif len(parts) == 3 and parts[2] > 0 and parts[1] >= parts[0]:
            count = int(math.floor((parts[1] - parts[0]) / parts[2] + 1e-9)) + 1
            values.extend(parts[0] + n * parts[2] for n in range(count))
        else:
            raise ExposureError(f'invalid --eps_scaler range "{item}": expected start:stop:step with stop >= start and step > 0')
    values = list(dict.fromkeys(round(v, 10) for v in values))
    if not values:
        raise ExposureError(f'--eps_scaler "{text}" selects no values')
    bad = [v for v in values if not (v > 0 and math.isfinite(v))]
    if bad:
        raise ExposureError(f'--eps_scaler values must be positive, got {bad[0]:g}')
    return values


def parse_ts(text):
    """Time-shift settings from 'off,10:1,20:0.5' (WINDOW:CUTOFF pairs; 'off' or '0' = no time shift)."""
    settings = []
    for item in [part.strip() for part in str(text).split(',') if part.strip()]:
        if item.lower() in ('off', '0'):
            settings.append((0, SamplerOptions.ts_cutoff))
            continue
        try:
            window, cutoff = item.split(':')
            window, cutoff = int(window), float(cutoff)
        except ValueError:
            raise ExposureError(f'invalid --ts "{text}": "{item}" is not off or WINDOW:CUTOFF (e.g. 10:1.0)') from None
        if window < 1 or not (cutoff >= 0 and math.isfinite(cutoff)):
            raise ExposureError(f'invalid --ts "{item}": the window must be at least 1 and the cutoff a sigma >= 0')
        settings.append((window, cutoff))
    if not settings:
        raise ExposureError(f'--ts "{text}" selects no settings')
    return list(dict.fromkeys(settings))


def grid_points(scalers, ts_settings):
    """Every combination of scaler and time-shift setting, scalers varying fastest."""
    return [GridPoint(b, w, c) for w, c in ts_settings for b in scalers]


def _sweep_record(network, seeds, class_idx, base, ref_path, detector_url):
    """What every point of a sweep folder shares; the grid itself may grow between runs."""
    opts = {k: v for k, v in dataclasses.asdict(base).items() if k not in ('eps_scaler', 'ts_window', 'ts_cutoff')}
    if isinstance(network, str) and os.path.exists(network):
        network = os.path.abspath(network)
    return json.loads(json.dumps(dict(network=network, seeds=list(seeds), class_idx=class_idx, options=opts,
                                      ref=ref_path, detector=detector_url)))


def _check_sweep_record(outdir, record):
    path = os.path.join(outdir, SWEEP_RECORD)
    if os.path.isfile(path):
        try:
            with open(path, encoding='utf8') as f:
                old = json.load(f)
        except (OSError, ValueError) as err:
            raise ExposureError(f'cannot read {path}: {err}; use another --outdir') from None
        changed = [key for key in record if old.get(key) != record[key]]
        if changed:
            raise ExposureError(f'{outdir} holds a sweep made with another {changed[0]}; use another --outdir')
        return
    os.makedirs(outdir, exist_ok=True)
    with dnnlib.util.atomic_write(path, 'w') as f:
        json.dump(record, f, indent=2)
        f.write('\n')


def _point_dir(outdir, point):
    return os.path.join(outdir, 'points', point.name)


def load_point(outdir, point):
    """(result dict, features [N, D] float32) of a finished grid point, or None."""
    folder = _point_dir(outdir, point)
    try:
        with open(os.path.join(folder, 'result.json'), encoding='utf8') as f:
            result = json.load(f)
        features = np.load(os.path.join(folder, 'features.npy'), allow_pickle=False)
    except (OSError, ValueError):
        return None
    return result, features


def finished_points(outdir):
    """(points, results, features) of every finished point in a sweep folder, ordered by time-shift
    setting, then b."""
    found = []
    folder = os.path.join(outdir, 'points')
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        try:
            with open(os.path.join(folder, name, 'result.json'), encoding='utf8') as f:
                point = GridPoint(**json.load(f)['point'])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        done = load_point(outdir, point)
        if done is not None:
            found.append((point, *done))
    found.sort(key=lambda item: (item[0].ts_window, item[0].ts_cutoff, item[0].eps_scaler))
    return [item[0] for item in found], [item[1] for item in found], [item[2] for item in found]


def _score_point(net, network, seeds, outdir, point, base, ref, detector, *, class_idx, max_batch_size, device,
                 num_workers, keep_images, progress):
    """Generate the point's images (resuming), score them, and write result.json + features.npy."""
    folder = _point_dir(outdir, point)
    images = os.path.join(folder, 'images')
    options = point.options(base)
    record = generate.options_record(network, class_idx, options)

    def prepare():
        os.makedirs(images, exist_ok=True)
        existing = any(os.path.isfile(generate.image_path(images, seed)) for seed in seeds)
        generate.check_options_record(images, record, existing)
        generate.write_options_record(images, record)
    dist.run_on_rank0(prepare, generate.GenerateError)
    t0 = time.time()
    generate.generate_images(net, seeds, images, options, class_idx=class_idx, max_batch_size=max_batch_size,
                             device=device, progress=progress)
    seconds_generate = time.time() - t0
    dataset = open_images(images)
    if len(dataset) != len(seeds):
        raise ExposureError(f'{images} holds {len(dataset)} images, expected {len(seeds)} (one per seed); remove the extra files')
    stats = compute_feature_stats(dataset, detector, image_path=images, max_batch_size=max_batch_size,
                                  num_workers=num_workers, device=device, keep_features=True,
                                  expected_dim=ref['mu'].shape[0], verbose=progress)
    result = dict(point=dataclasses.asdict(point), name=point.name, score=frechet_distance(stats.mu, stats.sigma, ref['mu'], ref['sigma']),
                  num_images=stats.num_images, seconds_generate=seconds_generate, seconds_features=stats.seconds,
                  options=record)
    if dist.get_rank() == 0:
        with dnnlib.util.atomic_write(os.path.join(folder, 'features.npy')) as f:
            np.save(f, stats.features.astype(np.float32))
        with dnnlib.util.atomic_write(os.path.join(folder, 'result.json'), 'w') as f:  # last: marks the point done
            json.dump(result, f, indent=2)
            f.write('\n')
        if not keep_images:
            shutil.rmtree(images, ignore_errors=True)
    dist.barrier()
    return result, stats.features.astype(np.float32)


def _fd_of(features, ref):
    return frechet_distance(features.mean(0), np.cov(features, rowvar=False), ref['mu'], ref['sigma'])


def bootstrap(features, ref, baseline=None, replicates=200, seed=0):
    """Bootstrap standard deviations of the score of each feature set, and of its difference to
    `baseline` (an index into features) with the same resampled seeds (paired), as two lists."""
    n = features[0].shape[0]
    if replicates < 2 or n < 2:
        return [None] * len(features), [None] * len(features)
    rng = np.random.RandomState(seed)
    draws = [rng.randint(0, n, size=n) for _ in range(replicates)]
    features = [f.astype(np.float64) for f in features]
    scores = np.array([[_fd_of(f[idx], ref) for idx in draws] for f in features])
    std = scores.std(axis=1, ddof=1).tolist()
    if baseline is None:
        return std, [None] * len(features)
    return std, (scores - scores[baseline]).std(axis=1, ddof=1).tolist()


SWEEP_COLUMNS = ('name', 'eps_scaler', 'ts_window', 'ts_cutoff', 'score', 'score_std', 'delta', 'delta_std', 'num_images')


def sweep_table(points, results, features, ref, replicates=200):
    """Rows of the sweep table: score, its bootstrap std, and the difference to the baseline point
    (b = 1 without time shift, when in the grid) with its paired-bootstrap std."""
    baseline = next((n for n, p in enumerate(points) if p.eps_scaler == 1 and not p.ts_window), None)
    sizes = {f.shape[0] for f in features}
    if len(sizes) != 1:
        raise ExposureError('the grid points hold different numbers of images; they must share the seeds')
    std, delta_std = bootstrap(features, ref, baseline, replicates)
    rows = []
    for n, (point, result) in enumerate(zip(points, results)):
        delta = None if baseline is None else result['score'] - results[baseline]['score']
        rows.append(dict(name=point.name, eps_scaler=point.eps_scaler, ts_window=point.ts_window,
                         ts_cutoff=point.ts_cutoff if point.ts_window else None, score=result['score'], score_std=std[n],
                         delta=delta, delta_std=None if baseline is None or n == baseline else delta_std[n],
                         num_images=result['num_images']))
    return rows


def run_sweep(net, network, seeds, outdir, points, ref_path, *, base=SamplerOptions(), detector_url=INCEPTION_URL,
              class_idx=None, max_batch_size=64, device=None, replicates=200, num_workers=0, keep_images=False,
              progress=True, score_name='FD', log=print):
    """Score every grid point (skipping finished ones) and write sweep.json, sweep.csv and
    sweep.png in outdir (rank 0) for all finished points of the folder. Returns the table rows
    on every rank."""
    device = torch.device('cpu') if device is None else torch.device(device)
    if not points:
        raise ExposureError('the grid is empty')
    for point in points:
        point.options(base).check()
    generate.check_class(net, class_idx)
    ref = dist.leader_first(lambda: load_reference(ref_path), MetricError)
    detector = dist.leader_first(lambda: load_detector(detector_url, device=device), MetricError)
    record = _sweep_record(network, seeds, class_idx, base, ref_path, detector_url)
    dist.run_on_rank0(lambda: _check_sweep_record(outdir, record), ExposureError)
    log(f'Sweep of {len(points)} points, {len(seeds)} images each, {base.solver} with {base.num_steps} steps '
        f'({base.nfe} evaluations) into "{outdir}"')
    for n, point in enumerate(points):
        done = load_point(outdir, point)
        if done is not None and done[0].get('num_images') == len(seeds):
            log(f'[{n + 1}/{len(points)}] {point.name}: done before, {score_name} {done[0]["score"]:.4f}')
        else:
            done = _score_point(net, network, seeds, outdir, point, base, ref, detector, class_idx=class_idx,
                                max_batch_size=max_batch_size, device=device, num_workers=num_workers,
                                keep_images=keep_images, progress=progress)
            log(f'[{n + 1}/{len(points)}] {point.name}: {score_name} {done[0]["score"]:.4f} '
                f'({done[0]["seconds_generate"]:.0f} s sampling)')
    # The table holds every finished point of the folder: grids added by later runs join it.
    points, results, features = finished_points(outdir)
    rows = sweep_table(points, results, features, ref, replicates)
    if dist.get_rank() == 0:
        doc = dict(kind='exposure-sweep', score=score_name, replicates=replicates, **record, rows=rows)
        with dnnlib.util.atomic_write(os.path.join(outdir, 'sweep.json'), 'w') as f:
            json.dump(doc, f, indent=2)
            f.write('\n')
        _write_csv(os.path.join(outdir, 'sweep.csv'), SWEEP_COLUMNS, rows)
        plot_sweep(rows, os.path.join(outdir, 'sweep.png'), score_name=score_name,
                   title=f'{base.solver}, {base.num_steps} steps ({base.nfe} NFE), {len(seeds)} images')
    dist.barrier()
    return rows


def format_sweep(rows, score_name='FD'):
    """The sweep table as aligned text."""
    def pm(value, std, sign=False):
        if value is None:
            return '-'
        text = f'{value:+.4f}' if sign else f'{value:.4f}'
        return text + (f' +- {std:.4f}' if std is not None else '')
    lines = [f'{"point":<24} {"b":>8}  {"time shift":<18} {score_name + " +- boot. std":<22} delta vs b=1 +- paired std']
    for r in rows:
        ts = f'w{r["ts_window"]} c{r["ts_cutoff"]:g}' if r['ts_window'] else 'off'
        lines.append(f'{r["name"]:<24} {r["eps_scaler"]:>8.5f}  {ts:<18} {pm(r["score"], r["score_std"]):<22} '
                     f'{pm(r["delta"], r["delta_std"], sign=True)}')
    return '\n'.join(lines)

#----------------------------------------------------------------------------
# Plots (matplotlib, optional: without it the data files are still written).


def _figure(**kwargs):
    """A matplotlib Figure (no pyplot, so no global backend state), or None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure(**kwargs)


def _save(fig, path):
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with dnnlib.util.atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=80)
    return path


def _record_label(record):
    opts = record['options']
    scaled = opts['eps_scaler'] != 1 or opts['eps_scaler_k'] != 0
    label = f'ES b={opts["eps_scaler"]:g}' + (f' k={opts["eps_scaler_k"]:g}' if opts['eps_scaler_k'] else '') if scaled else 'no ES'
    if opts.get('ts_window'):
        label += f', TS w{opts["ts_window"]} c{opts["ts_cutoff"]:g}'
    return label


def _focus_ratio_axis(ax, records, x, min_sigma=0.01):
    """Scale the ratio axis to the evaluations at sigma >= min_sigma (below it the ratio can be
    far larger and would flatten the rest); ratios off the axis are written at its edge."""
    keys = ('ratio', 'ratio_used')
    inside = [r[k] for rec in records for r in rec['evaluations'] if r['sigma'] >= min_sigma for k in keys]
    if not inside:
        return
    lo, hi = min(inside + [1.0]), max(inside + [1.0])
    pad = max(hi - lo, 0.01) * 0.15
    lo, hi = lo - pad, hi + pad
    ax.set_ylim(lo, hi)
    for n, row in enumerate(records[0]['evaluations']):
        outside = [rec['evaluations'][n]['ratio'] for rec in records if not lo <= rec['evaluations'][n]['ratio'] <= hi]
        if outside:
            y = hi if max(outside) > hi else lo
            ax.annotate('/'.join(f'{v:.2f}' for v in outside), (x[n], y), textcoords='offset points',
                        xytext=(0, -10 if y == hi else 4), ha='center', fontsize=7)


def plot_norms(records, path, labels=None, title=None):
    """Fig. 6 of arXiv 2308.15321 for one or more norms records of the same sampler: mean ||eps||
    per evaluation (timestep 1 = the last), training vs sampling, and their ratio below.
    Returns the path, or None when matplotlib is not installed."""
    fig = _figure(figsize=(6.4, 5.6))
    if fig is None:
        return None
    layouts = {tuple((r['step'], r['kind']) for r in rec['evaluations']) for rec in records}
    if len(layouts) != 1:
        raise ExposureError('the norms files to plot together must come from the same solver and number of steps')
    labels = labels or [_record_label(rec) for rec in records]
    ax, axr = fig.subplots(2, 1, sharex=True, gridspec_kw=dict(height_ratios=[2, 1]))
    first = records[0]['evaluations']
    x = [r['timestep'] for r in first]
    ax.plot(x, [r['training'] for r in first], '^-', color='#c0504d', label='training', markerfacecolor='white')
    colors = ['#2e8b3a', '#1f5fbf', '#8a3fbf', '#bf7f1f', '#3fa7bf']
    for n, (rec, label) in enumerate(zip(records, labels)):
        rows, color = rec['evaluations'], colors[n % len(colors)]
        ax.plot(x, [r['sampling'] for r in rows], 'o-', color=color, label=f'sampling ({label})', markerfacecolor='white')
        axr.plot(x, [r['ratio'] for r in rows], 'o-', color=color, markerfacecolor='white', label=label)
        if any(r['eps_scaler'] != 1 for r in rows):
            ax.plot(x, [r['sampling_used'] for r in rows], 'o--', color=color, markersize=3, label=f'sampling eps/lambda ({label})')
            axr.plot(x, [r['ratio_used'] for r in rows], 'o--', color=color, markersize=3, label=f'eps/lambda ({label})')
    axr.axhline(1, color='grey', linewidth=0.8)
    _focus_ratio_axis(axr, records, x)
    opts = records[0]['options']
    heun = opts['solver'] == 'heun'
    ax.set_ylabel('mean $\\|\\epsilon_\\theta\\|_2$')
    axr.set_ylabel('sampling / training')
    axr.set_xlabel('timestep (1 = last evaluation)' + ('; odd: Euler, even: correction' if heun else ''))
    ax.set_title(title or f'{opts["solver"]}, {opts["num_steps"]} steps, {records[0]["num_images"]} images')
    ax.grid(True, linewidth=0.4)
    axr.grid(True, linewidth=0.4)
    ax.legend(fontsize=7)
    axr.set_xticks(x if len(x) <= 25 else x[::2])
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(rows, path, score_name='FD', title=None):
    """Score vs b (bootstrap error bars) and, below, the difference to b = 1 without time shift
    (paired-bootstrap error bars), one line per time-shift setting; None without matplotlib."""
    paired = any(r['delta'] is not None for r in rows)
    fig = _figure(figsize=(6, 6 if paired else 4))
    if fig is None:
        return None
    axes = fig.subplots(2 if paired else 1, 1, sharex=True, squeeze=False)
    settings = list(dict.fromkeys((r['ts_window'], r['ts_cutoff']) for r in rows))
    for n, (window, cutoff) in enumerate(settings):
        sel = sorted((r for r in rows if (r['ts_window'], r['ts_cutoff']) == (window, cutoff)), key=lambda r: r['eps_scaler'])
        label = f'TS window {window}, cutoff {cutoff:g}' if window else 'no time shift'
        style = dict(marker='os^vD'[n % 5], capsize=3, label=label)
        b = [r['eps_scaler'] for r in sel]
        axes[0, 0].errorbar(b, [r['score'] for r in sel], yerr=[r['score_std'] or 0 for r in sel], **style)
        if paired:
            axes[1, 0].errorbar(b, [r['delta'] for r in sel], yerr=[r['delta_std'] or 0 for r in sel], **style)
    axes[0, 0].set_ylabel(f'{score_name} (bootstrap std)')
    if paired:
        axes[1, 0].axhline(0, color='grey', linewidth=0.8)
        axes[1, 0].set_ylabel('difference to b=1, no TS\n(paired bootstrap std)')
    axes[-1, 0].set_xlabel('epsilon scaler b')
    for ax in axes[:, 0]:
        ax.grid(True, linewidth=0.4)
    axes[0, 0].legend(fontsize=8)
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    return _save(fig, path)

#----------------------------------------------------------------------------
# Command line.


def _load_network(network, device, allow_pickle_code):
    if network is None:
        network = generate.DEFAULT_NETWORK
    try:
        net = dist.leader_first(lambda: loader.load_network(network, device=device, allow_pickle_code=allow_pickle_code),
                                loader.NetworkLoadError)
    except loader.NetworkLoadError as err:
        raise ExposureError(str(err)) from None
    return network, net


def _open_dataset(path):
    if not os.path.exists(path):
        raise ExposureError(f'--data {path}: no such file or folder')
    try:
        return ImageFolderDataset(path, use_labels=True)
    except (IOError, ValueError) as err:
        raise ExposureError(f'--data {path}: {str(err).splitlines()[0]}') from None


ERRORS = (ExposureError, generate.GenerateError, SamplerOptionError, MetricError, dist.DeviceError)


def _cli(fn, distributed=False, device=None):
    """Run fn() (inside the torchrun process group if `distributed`); known errors become one line."""
    try:
        if distributed:
            device = dist.init(device)
            try:
                return fn(device)
            finally:
                dist.shutdown()
        return fn()
    except (*ERRORS, OSError) as err:
        if os.environ.get('RANK', '0') != '0':
            raise SystemExit(1)  # rank 0 prints the one error line
        message = cli.os_error_message(err, action=None) if isinstance(err, OSError) else str(err)
        raise click.ClickException(message) from None


# The sampler options shared by `norms` and `sweep`: generate.py's, with its names and defaults
# (--eps_scaler and the time shift are swept or given per point, churn is not supported).
_sampler_options = generate.sampler_options('steps', 'solver', 'disc', 'schedule', 'scaling', 'sigma_min',
                                            'sigma_max', 'rho', 'eps_scaler_k')


def _common_options(fn):
    options = [
        click.option('--network', help='Network pickle or weights-only file  [default: the bundled MNIST model]', metavar='PATH|URL', type=str, default=None),
        click.option('--seeds', help='Random seeds (e.g. 0-999)', metavar='LIST', type=str, default='0-999', show_default=True),
        click.option('--class', 'class_idx', help='Class label  [default: random]', metavar='INT', type=click.IntRange(min=0), default=None),
        click.option('--batch', 'max_batch_size', help='Maximum batch size', metavar='INT', type=click.IntRange(min=1, max=cli.MAX_BATCH), default=64, show_default=True),
        click.option('--device', help='Torch device  [default: this rank\'s GPU, else cpu]', metavar='STR', type=cli.DEVICE, default=None),
        click.option('--allow-pickle-code', help='Run the code stored in the network pickle (trusted files only)', is_flag=True, default=None),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _options(**kwargs):
    return SamplerOptions(**{key: value for key, value in kwargs.items() if value is not None})


@click.group(context_settings=dict(max_content_width=120))
def main():
    """Exposure-bias analysis for EDM samplers (arXiv 2308.15321): epsilon-norm trajectories,
    epsilon-scaler calibration, and sweeps of sample quality over epsilon scaling and time shift.

    docs/exposure.md defines the quantities and holds an evaluation on the bundled MNIST model.

    Examples:

    \b
    # ||eps|| at every network evaluation, sampling vs training images (Fig. 6 of the paper)
    python exposure.py norms --data=datasets/mnist-32x32.zip --outdir=out/norms-euler10 \\
        --solver=euler --steps=10 --seeds=0-499

    \b
    # A scaler b from the measured ratio
    python exposure.py calibrate --norms=out/norms-euler10/norms.json

    \b
    # An offline feature detector for MNIST, and reference statistics with it
    python exposure.py classifier --data=datasets/mnist-32x32.zip --dest=models/mnist-classifier.pkl
    python fid.py ref --data=datasets/mnist-32x32.zip --dest=out/mnist-classifier-ref.npz \\
        --detector=models/mnist-classifier.pkl

    \b
    # Frechet distance in those features over a grid of b and time-shift settings (resumable)
    python exposure.py sweep --outdir=out/sweep-euler10 --solver=euler --steps=10 --seeds=0-999 \\
        --eps_scaler=1:1.012:0.002 --ts=off,10:1 \\
        --ref=out/mnist-classifier-ref.npz --detector=models/mnist-classifier.pkl --score-name=FD_MNIST

    \b
    # 2 processes (GPUs, or CPU processes with gloo)
    torchrun --standalone --nproc_per_node=2 exposure.py norms --data=datasets/mnist-32x32.zip --outdir=out/n
    """


@main.command()
@_common_options
@click.option('--data', 'data_path', help='Training dataset (ZIP or folder from dataset_tool.py)', metavar='ZIP|DIR', type=str, required=True)
@click.option('--outdir', help='Where to write norms.json, norms.csv and norms.png', metavar='DIR', type=str, required=True)
@_sampler_options
@click.option('--eps_scaler', help='Epsilon scaling b while sampling', metavar='FLOAT', type=cli.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option('--ts_window', help='Time shift window (grid positions each side); 0 = off', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--ts_cutoff', help='Time shift only while the scheduled sigma exceeds this', metavar='FLOAT', type=cli.FloatRange(min=0), default=1.0, show_default=True)
def norms(network, seeds, class_idx, max_batch_size, device, allow_pickle_code, data_path, outdir, **sampler_kwargs):
    """Mean ||eps||_2 at every network evaluation: sampling vs training images."""
    def work(device):
        options = _options(**sampler_kwargs)
        options.check()
        seed_list = list(generate.parse_seeds(seeds, max_count=MAX_SEEDS))
        dataset = _open_dataset(data_path)
        label, net = _load_network(network, device, allow_pickle_code)
        generate.check_class(net, class_idx)
        training_pool(training_labels(net, dataset), len(dataset), class_idx)  # fails here rather than after the message
        dist.print0(f'Measuring ||eps|| for {len(seed_list)} seeds, {options.solver} with {options.num_steps} steps '
                    f'({options.nfe} evaluations), and for as many images of "{data_path}"')
        result = measure_norms(net, dataset, seed_list, options, class_idx=class_idx, max_batch_size=max_batch_size,
                               device=device, progress=True)
        if dist.get_rank() == 0:
            record = norms_record(result, network=label, data=data_path, seeds=seeds, options=options, class_idx=class_idx)
            paths = write_norms(outdir, record)
            png = plot_norms([record], os.path.join(outdir, 'norms.png'))
            print(format_norms(record))
            print(f'Wrote {", ".join(paths)}' + (f', {png}' if png else ' (matplotlib is not installed: no plot)'))
    _cli(work, distributed=True, device=device)


def format_norms(record):
    """The per-evaluation table as aligned text."""
    lines = [f'{"eval":>4} {"step":>4} {"kind":<10} {"sigma":>9} {"sampling":>9} {"training":>9} {"ratio":>7}']
    for r in record['evaluations']:
        lines.append(f'{r["evaluation"]:>4} {r["step"]:>4} {r["kind"]:<10} {r["sigma"]:>9.4g} {r["sampling"]:>9.4f} '
                     f'{r["training"]:>9.4f} {r["ratio"]:>7.4f}')
    return '\n'.join(lines)


@main.command(name='calibrate')
@click.option('--norms', 'norms_path', help='norms.json written by "exposure.py norms"', metavar='JSON', type=str, required=True)
@click.option('--linear', help='Also fit a slope k: lambda_i = b + k (N-1-i) (ADM-ES form)', is_flag=True)
@click.option('--fit', help='norm: least squares on the norms; ratio: on the ratios, each evaluation equal', metavar='norm|ratio', type=click.Choice(list(FITS)), default='norm', show_default=True)
@click.option('--min-sigma', 'min_sigma', help='Fit only the evaluations at sigma >= this', metavar='FLOAT', type=cli.FloatRange(min=0), default=0, show_default=True)
@click.option('--json', 'json_path', help='Also write the suggestion and its derivation to this file', metavar='PATH', type=str, default=None)
def calibrate_cmd(norms_path, linear, fit, min_sigma, json_path):
    """Suggest --eps_scaler (and --eps_scaler_k) from measured norms."""
    def work():
        record = read_norms(norms_path)
        steps = record['options']['num_steps']
        cal = calibrate(record['evaluations'], steps, linear=linear, fit=fit, min_sigma=min_sigma)
        other = calibrate(record['evaluations'], steps, linear=linear, fit=[f for f in FITS if f != fit][0], min_sigma=min_sigma)
        lines = describe_calibration(record, cal, other)
        print('\n'.join(lines))
        if json_path is not None:
            doc = dict(kind='eps-scaler-calibration', norms=norms_path, eps_scaler=cal.eps_scaler, eps_scaler_k=cal.eps_scaler_k,
                       fit=fit, linear=linear, min_sigma=min_sigma, evaluations=[r['evaluation'] for r in cal.rows],
                       ratios=cal.ratios, residual=cal.residual,
                       alternative=dict(fit=other.fit, eps_scaler=other.eps_scaler, eps_scaler_k=other.eps_scaler_k),
                       derivation=lines)
            with dnnlib.util.atomic_write(json_path, 'w') as f:
                json.dump(doc, f, indent=2)
                f.write('\n')
    _cli(work)


@main.command()
@_common_options
@click.option('--outdir', help='Sweep folder (images, features, results; re-run to resume)', metavar='DIR', type=str, required=True)
@click.option('--ref', 'ref_path', help='Reference statistics (fid.py ref, with the same --detector)', metavar='NPZ|URL', type=str, required=True)
@click.option('--detector', 'detector_url', help='Pickled feature detector', metavar='PKL|URL', type=str, default=INCEPTION_URL, show_default='NVIDIA Inception-v3')
@click.option('--score-name', help='Name of the score in tables and plots  [default: FID with Inception, else FD]', metavar='STR', type=str, default=None)
@_sampler_options
@click.option('--eps_scaler', 'scalers', help='Values of b: list and/or start:stop:step ranges', metavar='LIST', type=str, default='1', show_default=True)
@click.option('--ts', 'ts_text', help='Time-shift settings: off and/or WINDOW:CUTOFF pairs', metavar='LIST', type=str, default='off', show_default=True)
@click.option('--bootstrap', 'replicates', help='Bootstrap replicates for the score\'s noise (0 = none)', metavar='INT', type=click.IntRange(min=0), default=200, show_default=True)
@click.option('--keep-images', help='Keep the PNGs of finished points (default: delete them once scored)', is_flag=True)
@click.option('--workers', 'num_workers', help='Image-loading processes per rank for the feature pass', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True)
def sweep(network, seeds, class_idx, max_batch_size, device, allow_pickle_code, outdir, ref_path, detector_url, score_name,
          scalers, ts_text, replicates, keep_images, num_workers, **sampler_kwargs):
    """Sample quality over a grid of --eps_scaler values and time-shift settings."""
    def work(device):
        base = _options(**sampler_kwargs)
        base.check()
        points = grid_points(parse_scalers(scalers), parse_ts(ts_text))
        seed_list = list(generate.parse_seeds(seeds, max_count=MAX_SEEDS))
        name = score_name or ('FID' if detector_url == INCEPTION_URL else 'FD')
        label, net = _load_network(network, device, allow_pickle_code)
        rows = run_sweep(net, label, seed_list, outdir, points, ref_path, base=base, detector_url=detector_url,
                         class_idx=class_idx, max_batch_size=max_batch_size, device=device, replicates=replicates,
                         num_workers=num_workers, keep_images=keep_images, score_name=name, log=dist.print0)
        dist.print0(format_sweep(rows, name))
        dist.print0(f'Wrote {os.path.join(outdir, "sweep.csv")}, sweep.json and sweep.png')
    _cli(work, distributed=True, device=device)


@main.command()
@click.argument('norms_paths', nargs=-1, required=True, metavar='NORMS_JSON...')
@click.option('--dest', help='PNG to write', metavar='PNG', type=str, required=True)
@click.option('--title', help='Plot title  [default: solver, steps, images]', metavar='STR', type=str, default=None)
def plot(norms_paths, dest, title):
    """Plot norms.json files of one sampler together (e.g. without and with ES)."""
    def work():
        records = [read_norms(path) for path in norms_paths]
        if plot_norms(records, dest, title=title) is None:
            raise ExposureError('plot needs matplotlib (pip install matplotlib)')
        print(f'Wrote {dest}')
    _cli(work)


@main.command()
@click.option('--data', 'data_path', help='Labelled dataset (ZIP or folder from dataset_tool.py)', metavar='ZIP|DIR', type=str, required=True)
@click.option('--dest', help='Detector pickle to write', metavar='PKL', type=str, required=True)
@click.option('--holdout', help='Images held out to measure the accuracy', metavar='INT', type=click.IntRange(min=0), default=2000, show_default=True)
@click.option('--epochs', help='Passes over the training images', metavar='INT', type=click.IntRange(min=1), default=15, show_default=True)
@click.option('--batch', help='Batch size', metavar='INT', type=click.IntRange(min=1), default=128, show_default=True)
@click.option('--seed', help='Random seed (split, initialisation, batches)', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True)
def classifier(data_path, dest, holdout, epochs, batch, seed):
    """Train a small digit classifier to use as fid.py --detector."""
    def work():
        if not os.path.exists(data_path):
            raise ExposureError(f'--data {data_path}: no such file or folder')
        images, labels = digit_classifier.load_labelled_images(data_path)
        print(f'Training on {len(images) - holdout} of {len(images)} images of "{data_path}", {epochs} epochs')
        out = digit_classifier.train_classifier(images, labels, holdout=holdout, epochs=epochs, batch=batch, seed=seed,
                                                verbose=True)
        try:
            digit_classifier.save_detector(out.net, dest)
        except OSError as err:
            raise ExposureError(f'cannot write {dest}: {err.strerror or err}') from None
        acc = f'{100 * out.accuracy:.2f}% on the {out.num_holdout} held-out images' if holdout else 'not measured (--holdout=0)'
        print(f'Accuracy {acc}. Wrote "{dest}" ({os.path.getsize(dest) / 1024:.0f} KiB)')
    _cli(work)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
