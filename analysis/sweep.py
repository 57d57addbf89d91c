"""Sweeps: sample quality over a grid of epsilon scalers and time-shift settings.

A sweep folder holds `sweep-options.json` (what every point shares), one folder per point
(`points/NAME/result.json` and `features.npy`) and the table (`sweep.json`, `sweep.csv`,
`sweep.png`). `run_sweep()` scores the points that are not done yet; `bootstrap()` gives the
scores' noise and the paired noise of their differences.
"""

import dataclasses
import json
import math
import os
import shutil
import time

import numpy as np
import torch

import dnnlib
from safeload import state
from metrics.detector import INCEPTION_URL, MetricError, load_detector
from metrics.features import compute_feature_stats, open_images
from metrics.frechet import frechet_distance
from metrics.reference import load_reference
from samplers import SamplerOptions, jobs
from samplers.sampler import check_network
from torch_utils import distributed as dist

from .common import ExposureError, describe_sampler, write_csv
from .plots import plot_sweep, ts_text

SWEEP_RECORD = 'sweep-options.json'
POINT_OPTIONS = ('eps_scaler', 'eps_scaler_k', 'ts_window', 'ts_cutoff', 'ts_mode')  # given per grid point
MAX_POINTS = 10_000      # values of one --eps_scaler start:stop:step range


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One point of a sweep: the scaler b, a time-shift setting (window, cutoff, mode) and the
    slope k. A time-shift setting is the tuple (window, cutoff) or (window, cutoff, mode), so
    GridPoint(b, *setting) is the point of b with that setting (parse_ts())."""
    eps_scaler: float = 1.0
    ts_window: int = 0
    ts_cutoff: float = SamplerOptions.ts_cutoff
    ts_mode: str = 'clean'              # 'clean' (window: grid positions each side, cutoff: a sigma) or
                                        # 'tsdpm' (TS-DPM-ADM's: full width, an original timestep; on even with window 0)
    eps_scaler_k: float = 0.0

    @property
    def ts_on(self):
        return self.ts_mode == 'tsdpm' or self.ts_window > 0

    @property
    def name(self):
        ts = ''
        if self.ts_mode == 'tsdpm':
            ts = f'-tsdpm{self.ts_window}-c{self.ts_cutoff:g}'
        elif self.ts_window:
            ts = f'-ts{self.ts_window}-c{self.ts_cutoff:g}'
        return f'b{self.eps_scaler:.5f}' + (f'-k{self.eps_scaler_k:g}' if self.eps_scaler_k else '') + ts

    @property
    def ts_label(self):
        if self.ts_mode == 'tsdpm':
            return f'TS-DPM-ADM window {self.ts_window}, cutoff timestep {self.ts_cutoff:g}'
        return f'TS window {self.ts_window}, cutoff {self.ts_cutoff:g}' if self.ts_window else 'no TS'

    def options(self, base):
        if not self.ts_on:
            return dataclasses.replace(base, eps_scaler=self.eps_scaler, eps_scaler_k=self.eps_scaler_k, ts_window=0,
                                       ts_cutoff=SamplerOptions.ts_cutoff, ts_mode='clean')
        return dataclasses.replace(base, eps_scaler=self.eps_scaler, eps_scaler_k=self.eps_scaler_k, ts_window=self.ts_window,
                                   ts_cutoff=self.ts_cutoff, ts_mode=self.ts_mode)


def _parse_values(text, option, positive):
    """Values from '1,1.002,1.004' or 'start:stop:step' (stop included) or a mix."""
    values = []
    for item in [part.strip() for part in str(text).split(',') if part.strip()]:
        try:
            parts = [float(p) for p in item.split(':')]
        except ValueError:
            raise ExposureError(f'invalid {option} list "{text}": "{item}" is not a number or start:stop:step') from None
        if not all(math.isfinite(p) for p in parts):
            raise ExposureError(f'invalid {option} list "{text}": "{item}" is not finite')
        if len(parts) == 3 and parts[2] > 0 and (parts[1] - parts[0]) / parts[2] >= MAX_POINTS:
            raise ExposureError(f'invalid {option} range "{item}": more than {MAX_POINTS} values')
        if len(parts) == 1:
            values.append(parts[0])
        elif len(parts) == 3 and parts[2] > 0 and parts[1] >= parts[0]:
            count = int(math.floor((parts[1] - parts[0]) / parts[2] + 1e-9)) + 1
            values.extend(parts[0] + n * parts[2] for n in range(count))
        else:
            raise ExposureError(f'invalid {option} range "{item}": expected start:stop:step with stop >= start and step > 0')
    values = list(dict.fromkeys(round(v, 10) + 0.0 for v in values))  # + 0.0: -0.0 is 0
    if not values:
        raise ExposureError(f'{option} "{text}" selects no values')
    bad = [v for v in values if positive and not v > 0]
    if bad:
        raise ExposureError(f'{option} values must be positive, got {bad[0]:g}')
    return values


def parse_scalers(text):
    """Scalers b from '1,1.002,1.004' or 'start:stop:step' (stop included) or a mix; all > 0."""
    return _parse_values(text, '--eps_scaler', positive=True)


def parse_slopes(text):
    """Slopes k from '0,0.0025' or 'start:stop:step' (stop included) or a mix; any sign."""
    return _parse_values(text, '--eps_scaler_k', positive=False)


def parse_ts(text):
    """Time-shift settings from 'off,10:1,tsdpm:80:300': off (or 0), WINDOW:CUTOFF (this toolkit's
    time shift, --ts_mode=clean: window in grid positions each side, cutoff a sigma) and
    tsdpm:WINDOW:CUTOFF (TS-DPM-ADM's, DDIM only: the full width and an original timestep).
    Returns (window, cutoff) tuples for off and clean, (window, cutoff, 'tsdpm') for tsdpm."""
    settings = []
    for item in [part.strip() for part in str(text).split(',') if part.strip()]:
        if item.lower() in ('off', '0'):
            settings.append((0, SamplerOptions.ts_cutoff))
            continue
        fields = item.split(':')
        mode = fields.pop(0).lower() if fields[0].lower() in ('clean', 'tsdpm') else 'clean'
        try:
            window, cutoff = fields
            window, cutoff = int(window), float(cutoff)
        except ValueError:
            raise ExposureError(f'invalid --ts "{text}": "{item}" is not off, WINDOW:CUTOFF (e.g. 10:1.0) '
                                'or tsdpm:WINDOW:CUTOFF (e.g. tsdpm:80:300)') from None
        if mode == 'tsdpm':
            if window < 0 or not (cutoff >= 0 and cutoff == int(cutoff)):
                raise ExposureError(f'invalid --ts "{item}": TS-DPM-ADM\'s window is a width >= 0 and its cutoff '
                                    'an original timestep')
            settings.append((window, float(cutoff), 'tsdpm'))
            continue
        if window < 1 or not (cutoff >= 0 and math.isfinite(cutoff)):
            raise ExposureError(f'invalid --ts "{item}": the window must be at least 1 and the cutoff a sigma >= 0')
        settings.append((window, cutoff))
    if not settings:
        raise ExposureError(f'--ts "{text}" selects no settings')
    return list(dict.fromkeys(settings))


def grid_points(scalers, ts_settings, slopes=(0.0,)):
    """Every combination of scaler b, time-shift setting and slope k; b varies fastest, then k."""
    return [GridPoint(b, *ts, eps_scaler_k=k) for ts in ts_settings for k in slopes for b in scalers]


def _sweep_record(network, seeds, class_idx, base, ref_path, detector_url, guidance=None):
    """What every point of a sweep folder shares; the grid itself may grow between runs."""
    opts = {k: v for k, v in dataclasses.asdict(base).items() if k not in POINT_OPTIONS}
    if isinstance(network, str) and os.path.exists(network):
        network = os.path.abspath(network)
    extra = dict(guidance=guidance.record) if guidance is not None else {}
    return json.loads(json.dumps(dict(network=network, seeds=list(seeds), class_idx=class_idx, options=opts,
                                      ref=ref_path, detector=detector_url, **extra)))


def _check_sweep_record(outdir, record):
    path = os.path.join(outdir, SWEEP_RECORD)
    if os.path.isfile(path):
        try:
            old = state.read_json(path)
        except (OSError, state.StateFileError) as err:
            raise ExposureError(f'{err}; use another --outdir') from None
        if isinstance(old.get('options'), dict):
            for key in ('eps_scaler_k', 'ts_mode'):  # shared by all points in folders made before they were per point
                if old['options'].get(key) == getattr(SamplerOptions, key):
                    del old['options'][key]
            # Options added after a folder was made are missing from its record: they had their defaults.
            defaults = {k: v for k, v in dataclasses.asdict(SamplerOptions()).items() if k not in POINT_OPTIONS}
            old['options'] = {**json.loads(json.dumps(defaults)), **old['options']}
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


POINT_FIELDS = dict(eps_scaler=float, ts_window=int, ts_cutoff=float, ts_mode=str, eps_scaler_k=float)


def point_from_record(record, label):
    """The GridPoint of a "point" object read back from a result or search file, its fields checked."""
    if not isinstance(record, dict) or set(record) != set(POINT_FIELDS):
        raise ExposureError(f'{label}: "point" must be an object with exactly the fields {sorted(POINT_FIELDS)}')
    try:
        state.check_fields(record, POINT_FIELDS, f'{label}: point')
    except state.StateFileError as err:
        raise ExposureError(str(err)) from None
    if record['ts_mode'] not in ('clean', 'tsdpm') or record['ts_window'] < 0:
        raise ExposureError(f'{label}: point has ts_mode {record["ts_mode"]!r}, ts_window {record["ts_window"]}')
    return GridPoint(**record)


RESULT_FIELDS = dict(point=dict, name=str, score=float, num_images=int, options=dict)


def read_result(path, label=None):
    """A grid point's result.json, checked: its fields and their types, a finite score, a point
    that makes a GridPoint. FileNotFoundError if it is missing; ExposureError (one line) if bad."""
    try:
        result = state.check_fields(state.read_json(path), RESULT_FIELDS, label or path)
    except state.StateFileError as err:
        raise ExposureError(str(err)) from None
    point_from_record(result['point'], label or path)
    if result['num_images'] < 1 or result['score'] < 0:
        raise ExposureError(f'{label or path}: num_images {result["num_images"]} or score {result["score"]} is out of range')
    return result


def read_features(path, num_images=None, dim=None):
    """A features.npy of a sweep or search folder: float32 [num_images, dim], finite."""
    try:
        return state.read_npy(path, (np.float32,), shape=(num_images, dim))
    except state.StateFileError as err:
        raise ExposureError(str(err)) from None


def load_point(outdir, point):
    """(result dict, features [N, D] float32) of a finished grid point, or None if it is not
    finished (no result.json). A result or feature file that is not what this toolkit writes is
    ExposureError: a resumed sweep never scores a tampered point."""
    folder = _point_dir(outdir, point)
    try:
        result = read_result(os.path.join(folder, 'result.json'))
    except FileNotFoundError:
        return None
    if point_from_record(result['point'], 'result.json') != point:
        raise ExposureError(f'{os.path.join(folder, "result.json")}: holds the result of another point')
    try:
        features = read_features(os.path.join(folder, 'features.npy'), result['num_images'])
    except FileNotFoundError:
        raise ExposureError(f'{folder}: result.json without features.npy; delete the folder to score the point again') from None
    return result, features


def finished_points(outdir):
    """(points, results, features) of every finished point in a sweep folder, ordered by time-shift
    setting, then k, then b."""
    found = []
    folder = os.path.join(outdir, 'points')
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        try:
            path = os.path.join(folder, name, 'result.json')
            point = point_from_record(read_result(path)['point'], path)
        except FileNotFoundError:
            continue
        done = load_point(outdir, point)
        if done is not None:
            found.append((point, *done))
    found.sort(key=lambda item: (item[0].ts_mode == 'tsdpm', item[0].ts_window, item[0].ts_cutoff, item[0].eps_scaler_k,
                                 item[0].eps_scaler))
    return [item[0] for item in found], [item[1] for item in found], [item[2] for item in found]


def _score_point(net, network, seeds, outdir, point, base, ref, detector, *, class_idx, max_batch_size, device, guidance,
                 num_workers, keep_images, progress):
    """Generate the point's images (resuming), score them, and write result.json + features.npy."""
    folder = _point_dir(outdir, point)
    images = os.path.join(folder, 'images')
    options = point.options(base)
    record = jobs.options_record(network, class_idx, options, guidance=guidance)

    def prepare():
        os.makedirs(images, exist_ok=True)
        existing = any(os.path.isfile(jobs.image_path(images, seed)) for seed in seeds)
        jobs.check_options_record(images, record, existing)
        jobs.write_options_record(images, record)
    dist.run_on_rank0(prepare, jobs.GenerateError)
    t0 = time.time()
    jobs.generate_images(net, seeds, images, options, class_idx=class_idx, max_batch_size=max_batch_size,
                             device=device, progress=progress, guidance=guidance)
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


SWEEP_COLUMNS = ('name', 'eps_scaler', 'ts_window', 'ts_cutoff', 'score', 'score_std', 'delta', 'delta_std', 'num_images',
                 'eps_scaler_k', 'ts_mode')


def sweep_table(points, results, features, ref, replicates=200):
    """Rows of the sweep table: score, its bootstrap std, and the difference to the baseline point
    (b = 1, k = 0 without time shift, when in the grid) with its paired-bootstrap std."""
    baseline = next((n for n, p in enumerate(points) if p.eps_scaler == 1 and not p.eps_scaler_k and not p.ts_on), None)
    sizes = {f.shape[0] for f in features}
    dims = {f.shape[1] for f in features} | {ref['mu'].shape[0]}
    if len(dims) != 1:
        raise ExposureError(f'the grid points and the reference hold features of different dimensions {sorted(dims)}; '
                            'they must come from the same detector')
    if len(sizes) != 1:
        raise ExposureError('the grid points hold different numbers of images; they must share the seeds')
    std, delta_std = bootstrap(features, ref, baseline, replicates)
    rows = []
    for n, (point, result) in enumerate(zip(points, results)):
        delta = None if baseline is None else result['score'] - results[baseline]['score']
        rows.append(dict(name=point.name, eps_scaler=point.eps_scaler, ts_window=point.ts_window,
                         ts_cutoff=point.ts_cutoff if point.ts_on else None, score=result['score'], score_std=std[n],
                         delta=delta, delta_std=None if baseline is None or n == baseline else delta_std[n],
                         num_images=result['num_images'], eps_scaler_k=point.eps_scaler_k,
                         ts_mode=point.ts_mode if point.ts_on else None))
    return rows


def open_sweep(net, network, seeds, outdir, ref_path, *, base, detector_url, class_idx, device, allow_pickle_code=None,
               guidance=None):
    """(reference statistics, detector, the folder's record) of a sweep, after checking the class and the
    folder's record (shared by run_sweep and run_search); `allow_pickle_code` is passed to the
    detector loader (None: the EDMKIT_ALLOW_PICKLE_CODE variable decides)."""
    jobs.check_class(net, class_idx, guidance.num_classes if guidance is not None else None)
    ref = dist.leader_first(lambda: load_reference(ref_path), MetricError)
    detector = dist.leader_first(lambda: load_detector(detector_url, device=device, allow_pickle_code=allow_pickle_code),
                                 MetricError)
    record = _sweep_record(network, seeds, class_idx, base, ref_path, detector_url, guidance)
    dist.run_on_rank0(lambda: _check_sweep_record(outdir, record), ExposureError)
    return ref, detector, record


def run_sweep(net, network, seeds, outdir, points, ref_path, *, base=SamplerOptions(), detector_url=INCEPTION_URL,
              class_idx=None, max_batch_size=64, device=None, replicates=200, num_workers=0, keep_images=False,
              progress=True, score_name='FD', log=print, allow_pickle_code=None, guidance=None):
    """Score every grid point (skipping finished ones) and write sweep.json, sweep.csv and
    sweep.png in outdir (rank 0) for all finished points of the folder. Returns the table rows
    on every rank. `guidance` (samplers.guidance.ClassifierGuidance) guides every point."""
    device = torch.device('cpu') if device is None else torch.device(device)
    if not points:
        raise ExposureError('the grid is empty')
    for point in points:
        check_network(net, point.options(base))
    ref, detector, record = open_sweep(net, network, seeds, outdir, ref_path, base=base, detector_url=detector_url,
                                       class_idx=class_idx, device=device, allow_pickle_code=allow_pickle_code,
                                       guidance=guidance)
    log(f'Sweep of {len(points)} points, {len(seeds)} images each, {describe_sampler(base)} into "{outdir}"')
    for n, point in enumerate(points):
        done = load_point(outdir, point)
        if done is not None and done[0].get('num_images') == len(seeds):
            log(f'[{n + 1}/{len(points)}] {point.name}: done before, {score_name} {done[0]["score"]:.4f}')
        else:
            done = _score_point(net, network, seeds, outdir, point, base, ref, detector, class_idx=class_idx,
                                max_batch_size=max_batch_size, device=device, num_workers=num_workers,
                                keep_images=keep_images, progress=progress, guidance=guidance)
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
        write_csv(os.path.join(outdir, 'sweep.csv'), SWEEP_COLUMNS, rows)
        plot_sweep(rows, os.path.join(outdir, 'sweep.png'), score_name=score_name,
                   title=f'{describe_sampler(base)}, {len(seeds)} images')
    dist.barrier()
    return rows


def format_sweep(rows, score_name='FD'):
    """The sweep table as aligned text."""
    def pm(value, std, sign=False):
        if value is None:
            return '-'
        text = f'{value:+.4f}' if sign else f'{value:.4f}'
        return text + (f' +- {std:.4f}' if std is not None else '')
    slopes = any(r.get('eps_scaler_k') for r in rows)
    k_head = f' {"k":>9}' if slopes else ''
    lines = [f'{"point":<24} {"b":>8}{k_head}  {"time shift":<18} {score_name + " +- boot. std":<22} delta vs b=1 +- paired std']
    for r in rows:
        ts = ts_text(r['ts_window'], r['ts_cutoff'], r.get('ts_mode') or 'clean') if r['ts_cutoff'] is not None else 'off'
        k = f' {r.get("eps_scaler_k", 0):>9.6f}' if slopes else ''
        lines.append(f'{r["name"]:<24} {r["eps_scaler"]:>8.5f}{k}  {ts:<18} {pm(r["score"], r["score_std"]):<22} '
                     f'{pm(r["delta"], r["delta_std"], sign=True)}')
    return '\n'.join(lines)
