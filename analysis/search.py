"""Scaler search: the best epsilon scaler b among a grid's values, scoring only a few of them.

`golden_section_search()` is the search itself, a pure function over a scorer callback: a
golden-section search on the sorted values (the discrete form: every point it scores is one
of the values) that compares its two inner points by their paired score difference and
doubles the number of images whenever that difference is within the paired noise.
`run_search()` runs it on a sweep folder, `FolderScorer` being the callback: a point's score
on its first n seeds is computed from the features the folder holds, generating only the
seeds it lacks, so a second run repeats the search without sampling and an interrupted one
continues. docs/exposure.md, "How sweep --search works", has the details and a measurement.
"""

import dataclasses
import json
import math
import os
import shutil

import numpy as np
import torch

import dnnlib
from safeload import state
from metrics.detector import INCEPTION_URL
from metrics.features import compute_feature_stats, open_images
from samplers import SamplerOptions, jobs
from samplers.sampler import check_network
from torch_utils import distributed as dist

from .common import ExposureError, describe_sampler
from .sweep import GridPoint, _fd_of, bootstrap, load_point, open_sweep, point_from_record, read_features

INV_PHI = (math.sqrt(5) - 1) / 2  # 0.618...: golden-section proportion
SEARCH_Z = 2.0                    # a difference counts when it exceeds SEARCH_Z paired standard deviations
SEARCH_FOLDER = 'search'
SEARCH_RECORD = 'search.json'

#----------------------------------------------------------------------------
# The search, over any scorer.


@dataclasses.dataclass
class SearchStep:
    lo: float               # The bracket's ends before the step.
    hi: float
    left: float             # The two points compared (left < right).
    right: float
    num_images: int         # Images per point of the comparison.
    left_score: float
    right_score: float
    delta: float            # right_score - left_score (paired: the same seeds).
    delta_std: float        # Paired standard deviation of delta (None if unknown).
    decision: str           # 'left' (the minimum is left of `right`), 'right', 'more images' or 'within noise'.


@dataclasses.dataclass
class SearchResult:
    eps_scaler: float       # The best value found.
    score: float            # Its score on num_images images.
    num_images: int         # Images per point when the search stopped.
    bracket: tuple          # (lo, hi): the values between which the minimum lies.
    stopped: str            # 'tolerance' (bracket down to adjacent values) or 'noise' (within the paired noise with all images).
    steps: list             # SearchStep per comparison.
    finalists: list         # [(b, score)] of the points compared last, on num_images images.
    scores: dict            # {(b, num_images): score} of every evaluation.


def _inner_points(a, d):
    """Two indices a < c < e < d at the golden-section positions (for d - a >= 3)."""
    k = max(1, min(round((1 - INV_PHI) * (d - a)), (d - a - 1) // 2))
    return a + k, d - k


def golden_section_search(values, scorer, *, start_images, max_images, z=SEARCH_Z):
    """The value of b with the lowest score, for a score that falls then rises over `values`.

    `scorer` has score(b, n) -> the score of b on the first n images (lower is better), and
    difference_std(b1, b2, n) -> the standard deviation of score(b2, n) - score(b1, n) on the
    same images, or None. Each step compares the two inner points of the bracket and drops
    the part beyond the worse one; a difference within z standard deviations doubles n
    (up to max_images) and compares again, or, with all images, stops the search. When the
    bracket is down to three adjacent values, the best of its candidates is the result.
    Returns a SearchResult.
    """
    values = sorted(set(float(v) for v in values))
    if not values:
        raise ExposureError('the search has no values of b')
    n = max(1, min(int(start_images), int(max_images)))
    scores = {}

    def f(i):
        if (values[i], n) not in scores:
            scores[(values[i], n)] = float(scorer.score(values[i], n))
        return scores[(values[i], n)]

    a, d = 0, len(values) - 1
    a_open, d_open = True, True  # an end is a candidate until it loses a comparison
    steps, stopped = [], 'tolerance'
    c, e = _inner_points(a, d) if d - a >= 3 else (a, d)
    while d - a >= 3:
        fc, fe = f(c), f(e)
        std = scorer.difference_std(values[c], values[e], n)
        step = SearchStep(lo=values[a], hi=values[d], left=values[c], right=values[e], num_images=n, left_score=fc,
                          right_score=fe, delta=fe - fc, delta_std=std, decision='')
        steps.append(step)
        if std is not None and abs(fe - fc) <= z * std:
            if n < max_images:
                step.decision, n = 'more images', min(2 * n, max_images)
                continue
            step.decision, stopped = 'within noise', 'noise'
            break
        if fc < fe:
            step.decision, d, d_open, kept = 'left', e, False, c
        else:
            step.decision, a, a_open, kept = 'right', c, False, e
        c, e = sorted((kept, a + d - kept))  # golden section: the kept point is one of the next two
        if not a < c < e < d and d - a >= 3:
            c, e = _inner_points(a, d)

    if stopped == 'noise':
        finalists = [c, e]
    else:
        finalists = [i for i in range(a, d + 1) if (i != a or a_open) and (i != d or d_open)] or list(range(a, d + 1))
    best = min(finalists, key=f)
    return SearchResult(eps_scaler=values[best], score=f(best), num_images=n, bracket=(values[a], values[d]),
                        stopped=stopped, steps=steps, finalists=[(values[i], f(i)) for i in finalists], scores=scores)

#----------------------------------------------------------------------------
# Scores from a sweep folder.


def _seed_rank(seeds):
    """For features in file-name order (a grid point's), the row of each seed of `seeds`."""
    names = [os.path.basename(jobs.image_path('', seed)) for seed in seeds]
    return np.argsort(np.argsort(names, kind='stable'), kind='stable')


class FolderScorer:
    """score(b, n) and difference_std(b1, b2, n) for golden_section_search() on a sweep folder.

    The score of b on n images is the Frechet distance of the features of its first n seeds.
    They come from, in order: this run's memory; a finished grid point of the folder
    (`points/NAME`, all seeds); `search/NAME/features.npy` (features of a prefix of the seeds,
    in seed order, extended as n grows). Only seeds none of them holds are generated, into
    `search/NAME/images`, whose PNGs are removed once their features are saved. `spent` counts
    the images generated; `used` the images each point was scored on.
    """

    def __init__(self, net, network, seeds, outdir, base, ts, ref, detector, *, eps_scaler_k=0.0, class_idx=None,
                 max_batch_size=64, device=None, num_workers=0, replicates=200, progress=False, log=print, guidance=None):
        self.net, self.network, self.seeds, self.outdir, self.base, self.ts = net, network, list(seeds), outdir, base, ts
        self.eps_scaler_k = eps_scaler_k
        self.ref, self.detector, self.replicates, self.log = ref, detector, replicates, log
        self.kwargs = dict(class_idx=class_idx, max_batch_size=max_batch_size, device=device, num_workers=num_workers,
                           progress=progress)
        self.features_of, self.spent, self.used = {}, 0, {}
        self.guidance = guidance

    def point(self, b):
        return GridPoint(b, *self.ts, eps_scaler_k=self.eps_scaler_k)

    def _folder(self, point):
        return os.path.join(self.outdir, SEARCH_FOLDER, point.name)

    def _stored(self, point):
        """Features [k, D] of the first k seeds at `point` that the folder holds, or None."""
        done = load_point(self.outdir, point)  # a grid point of the same sweep, with every seed
        if done is not None and done[0].get('num_images') == len(self.seeds):
            return done[1][_seed_rank(self.seeds)]
        folder = self._folder(point)
        path = os.path.join(folder, 'point.json')
        try:
            record = state.check_fields(state.read_json(path), dict(point=dict, num_images=int), path)
        except FileNotFoundError:
            return None
        except state.StateFileError as err:
            raise ExposureError(f'{err}; delete {folder} to score the point again') from None
        if point_from_record(record['point'], path) != point:
            raise ExposureError(f'{path}: holds another point than {point.name}; delete {folder} to score it again')
        if not 0 < record['num_images'] <= len(self.seeds):
            raise ExposureError(f'{path}: num_images {record["num_images"]} is not between 1 and {len(self.seeds)}')
        try:
            return read_features(os.path.join(folder, 'features.npy'), record['num_images'], self.ref['mu'].shape[0])
        except FileNotFoundError:
            raise ExposureError(f'{folder}: point.json without features.npy; delete the folder to score the point again') from None

    def features(self, b, n):
        point = self.point(b)
        have = self.features_of.get(point)
        if have is None:
            have = self._stored(point)
        if have is None or have.shape[0] < n:
            have = self._extend(point, have, n)
        self.features_of[point] = have
        self.used[b] = max(self.used.get(b, 0), n)
        return have[:n].astype(np.float64)

    def _extend(self, point, have, n):
        """Generate and score seeds k..n-1 of `point` (k = the rows of `have`); save all n rows."""
        k = 0 if have is None else have.shape[0]
        chunk = self.seeds[k:n]
        folder = self._folder(point)
        images = os.path.join(folder, 'images')
        options = point.options(self.base)
        record = jobs.options_record(self.network, self.kwargs['class_idx'], options, guidance=self.guidance)
        wanted = {os.path.basename(jobs.image_path(images, seed)) for seed in chunk}

        def prepare():
            os.makedirs(images, exist_ok=True)
            for name in os.listdir(images):  # PNGs of another chunk, from an interrupted run with other settings
                if name.endswith('.png') and name not in wanted:
                    os.remove(os.path.join(images, name))
            jobs.check_options_record(images, record, any(os.path.isfile(jobs.image_path(images, seed)) for seed in chunk))
            jobs.write_options_record(images, record)
        dist.run_on_rank0(prepare, jobs.GenerateError)
        stats = jobs.generate_images(self.net, chunk, images, options, class_idx=self.kwargs['class_idx'],
                                         max_batch_size=self.kwargs['max_batch_size'], device=self.kwargs['device'],
                                         progress=self.kwargs['progress'], guidance=self.guidance)
        self.spent += stats.num_written
        dataset = open_images(images)
        if len(dataset) != len(chunk):
            raise ExposureError(f'{images} holds {len(dataset)} images, expected {len(chunk)}; remove the extra files')
        stats = compute_feature_stats(dataset, self.detector, image_path=images, max_batch_size=self.kwargs['max_batch_size'],
                                      num_workers=self.kwargs['num_workers'], device=self.kwargs['device'], keep_features=True,
                                      expected_dim=self.ref['mu'].shape[0], verbose=self.kwargs['progress'])
        new = stats.features.astype(np.float32)[_seed_rank(chunk)]
        features = new if have is None else np.concatenate([have, new])
        if dist.get_rank() == 0:
            with dnnlib.util.atomic_write(os.path.join(folder, 'features.npy')) as f:
                np.save(f, features)
            with dnnlib.util.atomic_write(os.path.join(folder, 'point.json'), 'w') as f:  # last: marks the rows done
                json.dump(dict(point=dataclasses.asdict(point), num_images=int(features.shape[0])), f, indent=2)
                f.write('\n')
            shutil.rmtree(images, ignore_errors=True)
        dist.barrier()
        return features

    def score(self, b, n):
        spent = self.spent
        value = _fd_of(self.features(b, n), self.ref)
        new = f', {self.spent - spent} new images' if self.spent > spent else ''
        self.log(f'  b={b:.5f} on {n} images: {value:.4f}{new}')
        return value

    def difference_std(self, b1, b2, n):
        return bootstrap([self.features(b1, n), self.features(b2, n)], self.ref, 0, self.replicates)[1][1]

#----------------------------------------------------------------------------
# The search on a sweep folder.


def run_search(net, network, seeds, outdir, scalers, ref_path, *, ts=(0, SamplerOptions.ts_cutoff), eps_scaler_k=0.0,
               base=SamplerOptions(), detector_url=INCEPTION_URL, class_idx=None, max_batch_size=64, device=None,
               replicates=200, num_workers=0, start_images=None, progress=True, score_name='FD', log=print,
               allow_pickle_code=None, guidance=None):
    """Golden-section search for the best b among `scalers` with time-shift setting `ts`
    ((window, cutoff) or (window, cutoff, mode), as parse_ts() gives) and slope `eps_scaler_k`,
    in a sweep folder shared with run_sweep(); then b = 1 (same setting and k) on as many images
    for the difference. Writes search.json in outdir (rank 0) and returns its document.
    `start_images` (default 1/8 of the seeds) is the image count of the first comparisons."""
    device = torch.device('cpu') if device is None else torch.device(device)
    seeds = list(seeds)
    if replicates < 2:
        raise ExposureError('--search compares points by their paired bootstrap noise: --bootstrap must be at least 2')
    if len(seeds) < 2:
        raise ExposureError('--search needs at least 2 seeds')
    start_images = max(2, math.ceil(len(seeds) / 8)) if start_images is None else start_images
    if not 2 <= start_images <= len(seeds):
        raise ExposureError(f'--search-images must be between 2 and the number of seeds ({len(seeds)})')
    values = sorted(set(scalers))
    for b in values:
        check_network(net, GridPoint(b, *ts, eps_scaler_k=eps_scaler_k).options(base))
    setting = GridPoint(1.0, *ts, eps_scaler_k=eps_scaler_k)
    ref, detector, record = open_sweep(net, network, seeds, outdir, ref_path, base=base, detector_url=detector_url,
                                       class_idx=class_idx, device=device, allow_pickle_code=allow_pickle_code,
                                       guidance=guidance)
    slope = f', k={eps_scaler_k:g}' if eps_scaler_k else ''
    log(f'Search for the best b among {len(values)} values from {values[0]:g} to {values[-1]:g}{slope}, {setting.ts_label}, '
        f'{start_images} to {len(seeds)} images per point, {describe_sampler(base)} into "{outdir}"')
    scorer = FolderScorer(net, network, seeds, outdir, base, ts, ref, detector, eps_scaler_k=eps_scaler_k,
                          class_idx=class_idx, max_batch_size=max_batch_size, device=device, num_workers=num_workers,
                          replicates=replicates, progress=progress, log=log, guidance=guidance)
    result = golden_section_search(values, scorer, start_images=start_images, max_images=len(seeds))
    n = result.num_images
    log(f'  b=1 (the difference\'s baseline) on {n} images')
    baseline = scorer.score(1.0, n)
    delta_std = scorer.difference_std(1.0, result.eps_scaler, n) if result.eps_scaler != 1 else None
    doc = dict(kind='exposure-search', score=score_name, replicates=replicates, **record, ts_window=setting.ts_window,
               ts_cutoff=setting.ts_cutoff if setting.ts_on else None, ts_mode=setting.ts_mode if setting.ts_on else None,
               eps_scaler_k=eps_scaler_k, values=values, start_images=start_images, z=SEARCH_Z,
               eps_scaler=result.eps_scaler, score_value=result.score, num_images=n, bracket=list(result.bracket),
               stopped=result.stopped, baseline_score=baseline, delta=result.score - baseline, delta_std=delta_std,
               images_new=scorer.spent, images_used=sum(scorer.used.values()), points_scored=len(scorer.used),
               grid_images=len(values) * len(seeds), finalists=[list(item) for item in result.finalists],
               steps=[dataclasses.asdict(step) for step in result.steps],
               evaluations=[dict(eps_scaler=b, num_images=k, score=v) for (b, k), v in result.scores.items()])
    if dist.get_rank() == 0:
        with dnnlib.util.atomic_write(os.path.join(outdir, SEARCH_RECORD), 'w') as f:
            json.dump(doc, f, indent=2)
            f.write('\n')
    dist.barrier()
    return doc


def format_search(doc):
    """The search's steps and its result as text."""
    name = doc['score']
    lines = [f'{"bracket":<19} {"compared":<19} {"images":>6}  {"delta +- paired std":<22} decision']
    for s in doc['steps']:
        std = f' +- {s["delta_std"]:.4f}' if s['delta_std'] is not None else ''
        lines.append(f'{s["lo"]:.5f}-{s["hi"]:.5f}  {s["left"]:.5f},{s["right"]:.5f}  {s["num_images"]:>6}  '
                     f'{s["delta"]:+.4f}{std:<13} {s["decision"]}')
    how = {'tolerance': 'the bracket is down to adjacent values',
           'noise': 'the last two points are within the paired noise with every image'}[doc['stopped']]
    versus = (f'{doc["delta"]:+.4f} +- {doc["delta_std"]:.4f} (paired std) against b=1'
              if doc['delta_std'] is not None else 'b=1 itself')
    lines += [f'Best b={doc["eps_scaler"]:.5f}: {name} {doc["score_value"]:.4f} on {doc["num_images"]} images, {versus}; '
              f'stopped because {how}, minimum between {doc["bracket"][0]:g} and {doc["bracket"][1]:g}.',
              f'Images: {doc["images_used"]} over {doc["points_scored"]} points ({doc["images_new"]} generated by this run); '
              f'the grid of {len(doc["values"])} values would take {doc["grid_images"]}.']
    return '\n'.join(lines)
