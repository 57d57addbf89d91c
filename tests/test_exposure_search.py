"""analysis/search.py and `exposure.py sweep --search`: the golden-section search on synthetic
scores with a known minimum, and on a sweep folder (reuse, resume after an interruption)."""

import json
import math
import pickle

import numpy as np
import pytest
import torch

import generate
from samplers import jobs
from analysis import search as search_lib
from analysis.search import SEARCH_Z, golden_section_search, run_search
from analysis.sweep import grid_points, parse_scalers, run_sweep
from metrics.detector import pickle_torchscript
from metrics.evaluate import calc_reference
from samplers import SamplerOptions
from test_exposure import Features, cli, gray_images, write_dataset
from test_samplers import tiny_net

pytestmark = pytest.mark.filterwarnings('ignore:`torch.jit:DeprecationWarning')

#----------------------------------------------------------------------------
# Synthetic scores.


class Synthetic:
    """score(b, n) = scale (b - b_opt)^2 + noise. The noise is deterministic in (b, n): a part
    common to every b on the same n images (it cancels in paired differences) and a part of
    each b with standard deviation sigma / sqrt(n), so a paired difference has std
    sigma sqrt(2 / n), which difference_std reports."""

    def __init__(self, b_opt, scale=1e4, sigma=0.0):
        self.b_opt, self.scale, self.sigma = b_opt, scale, sigma
        self.calls = []

    def true(self, b):
        return self.scale * (b - self.b_opt) ** 2

    def score(self, b, n):
        self.calls.append((b, n))
        common = np.random.default_rng([n]).normal() * 10
        own = np.random.default_rng([n, round(b * 1e6)]).normal()
        return self.true(b) + self.sigma / math.sqrt(n) * (common + own)

    def difference_std(self, b1, b2, n):
        return self.sigma * math.sqrt(2 / n) if self.sigma else None

    def images(self):
        """Images a folder-backed scorer would generate: the largest n of each point."""
        most = {}
        for b, n in self.calls:
            most[b] = max(most.get(b, 0), n)
        return sum(most.values())


VALUES = parse_scalers('0.99:1.05:0.001')  # 61 values


@pytest.mark.parametrize('b_opt', [1.0237, 0.9931, 1.0, 1.0449, 1.0172, 0.95, 1.2])
def test_finds_the_minimum_of_a_noiseless_score(b_opt):
    score = Synthetic(b_opt)
    result = golden_section_search(VALUES, score, start_images=1000, max_images=1000)
    assert result.eps_scaler == min(VALUES, key=score.true)  # the best value, even at an end of the range
    assert result.stopped == 'tolerance' and result.num_images == 1000
    assert len({b for b, _ in score.calls}) <= 13  # of 61
    assert all(step.decision in ('left', 'right') for step in result.steps)
    lo, hi = result.bracket
    assert lo <= result.eps_scaler <= hi and hi - lo <= 0.0021


@pytest.mark.parametrize('b_opt', [1.0237, 1.0021, 1.0413, 0.9987, 1.0306])
def test_noisy_score_grows_the_images_and_lands_within_the_noise(b_opt):
    score = Synthetic(b_opt, sigma=2.0)
    result = golden_section_search(VALUES, score, start_images=125, max_images=1000)
    std_max = score.difference_std(0, 0, 1000)
    # Within the stated tolerance: no worse than 2 z paired standard deviations (all images) above the best value.
    assert score.true(result.eps_scaler) - min(map(score.true, VALUES)) <= 2 * SEARCH_Z * std_max
    assert abs(result.eps_scaler - b_opt) <= 0.007
    assert any(step.decision == 'more images' for step in result.steps) and result.num_images > 125
    assert sorted({n for _, n in score.calls}) == [125, 250, 500, 1000][:len({n for _, n in score.calls})]
    assert score.images() < 0.25 * len(VALUES) * 1000  # a quarter of the grid's cost at most
    again = Synthetic(b_opt, sigma=2.0)
    assert golden_section_search(VALUES, again, start_images=125, max_images=1000).eps_scaler == result.eps_scaler
    assert again.calls == score.calls  # deterministic: what makes a folder search resumable


def test_flat_score_stops_within_the_noise_with_all_images():
    score = Synthetic(1.02, scale=0.0, sigma=2.0)
    result = golden_section_search(VALUES, score, start_images=100, max_images=800)
    assert result.stopped == 'noise' and result.num_images == 800
    assert [s.decision for s in result.steps] == ['more images'] * 3 + ['within noise']
    assert result.eps_scaler in (result.steps[-1].left, result.steps[-1].right)


def test_few_values():
    for values in ([1.0], [1.0, 1.01], [1.0, 1.01, 1.02]):
        score = Synthetic(1.008)
        assert golden_section_search(values, score, start_images=10, max_images=10).eps_scaler == min(values, key=score.true)

#----------------------------------------------------------------------------
# On a sweep folder.


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp('search')
    net = tiny_net(label_dim=3, channels=1)
    pkl = str(folder / 'net.pkl')
    with open(pkl, 'wb') as f:
        pickle.dump(dict(ema=net), f)
    data = write_dataset(folder / 'data', gray_images(12), [0, 1, 2] * 4)
    det = str(folder / 'det.pkl')
    with open(det, 'wb') as f:
        f.write(pickle_torchscript(torch.jit.script(Features())))
    ref = calc_reference(data, str(folder / 'ref.npz'), detector_url=det, num_workers=0, verbose=False)
    return dict(net=net, pkl=pkl, det=det, ref=ref)


SEEDS = list(range(16))
SCALERS = parse_scalers('0.8:1.2:0.04')  # 11 values


def search(setup, outdir, **kwargs):
    return run_search(setup['net'], setup['pkl'], SEEDS, str(outdir), SCALERS, setup['ref'], detector_url=setup['det'],
                      base=SamplerOptions(num_steps=3, solver='euler'), start_images=4, replicates=20, progress=False,
                      log=lambda *_: None, **kwargs)


@pytest.fixture
def written(monkeypatch):
    """The PNG paths generate.py writes, as a list that the test reads."""
    paths, real = [], jobs._write_batch

    def counting(batch_paths, images):
        paths.extend(p for p in batch_paths if p)
        return real(batch_paths, images)
    monkeypatch.setattr(jobs, '_write_batch', counting)
    return paths


def outcome(doc):
    return {key: doc[key] for key in ('eps_scaler', 'score_value', 'num_images', 'bracket', 'stopped', 'steps', 'evaluations',
                                      'baseline_score', 'delta', 'delta_std', 'images_used')}


def test_search_on_a_folder_resumes_without_sampling_again(setup, tmp_path, written):
    first = search(setup, tmp_path / 's')
    assert first['images_new'] == len(written) == first['images_used'] > 0
    assert first['eps_scaler'] in SCALERS and first['num_images'] in (4, 8, 16)
    assert first['images_used'] < first['grid_images'] == len(SCALERS) * len(SEEDS)
    stored = json.loads((tmp_path / 's' / 'search.json').read_text())
    assert stored['eps_scaler'] == first['eps_scaler'] and stored['steps'] == first['steps']
    assert not list((tmp_path / 's' / 'search').glob('*/images'))  # PNGs removed once scored
    # Each point holds the features of a prefix of the seeds, in seed order.
    for (b, n), value in {(e['eps_scaler'], e['num_images']): e['score'] for e in first['evaluations']}.items():
        features = np.load(tmp_path / 's' / 'search' / f'b{b:.5f}' / 'features.npy')
        assert features.shape[0] >= n

    # A second run spends no image and finds the same.
    written.clear()
    again = search(setup, tmp_path / 's')
    assert written == [] and again['images_new'] == 0 and outcome(again) == outcome(first)


def test_interrupted_search_continues_where_it_stopped(setup, tmp_path, written, monkeypatch):
    whole = search(setup, tmp_path / 'whole')
    written.clear()
    real, passes = search_lib.compute_feature_stats, []

    def interrupted(*args, **kwargs):
        passes.append(1)
        if len(passes) == 3:
            raise KeyboardInterrupt  # killed after sampling the third chunk, before its features
        return real(*args, **kwargs)
    monkeypatch.setattr(search_lib, 'compute_feature_stats', interrupted)
    with pytest.raises(KeyboardInterrupt):
        search(setup, tmp_path / 'cut')
    before = list(written)
    assert before and len(before) < whole['images_new']
    monkeypatch.setattr(search_lib, 'compute_feature_stats', real)
    written.clear()
    resumed = search(setup, tmp_path / 'cut')
    assert not set(written) & set(before)  # nothing sampled twice: the interrupted chunk's PNGs are used
    assert len(before) + len(written) == whole['images_new']
    assert outcome(resumed) == outcome(whole)


def test_search_reuses_finished_grid_points(setup, tmp_path, monkeypatch):
    base = SamplerOptions(num_steps=3, solver='euler')
    run_sweep(setup['net'], setup['pkl'], SEEDS, str(tmp_path / 's'), grid_points([1.0, 0.96, 1.04], [(0, 1.0)]),
              setup['ref'], detector_url=setup['det'], base=base, replicates=20, progress=False, log=lambda *_: None)
    fresh = search(setup, tmp_path / 'fresh')
    calls, real = [], jobs.generate_images

    def counting(net, seeds, outdir, options, **kwargs):
        calls.append(options.eps_scaler)
        return real(net, seeds, outdir, options, **kwargs)
    monkeypatch.setattr(jobs, 'generate_images', counting)
    doc = search(setup, tmp_path / 's')
    assert 1.0 not in calls and 0.96 not in calls and 1.04 not in calls  # the grid's features, reordered by seed
    assert outcome(doc) == outcome(fresh) and doc['images_new'] < fresh['images_new']


def test_search_cli(setup, tmp_path):
    args = [f'--network={setup["pkl"]}', f'--outdir={tmp_path / "s"}', '--seeds=0-15', '--steps=3', '--solver=euler',
            '--device=cpu', f'--ref={setup["ref"]}', f'--detector={setup["det"]}', '--eps_scaler=0.8:1.2:0.04',
            '--bootstrap=20']
    res = cli('sweep', *args, '--search', '--search-images=4')
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / 's' / 'search.json').read_text())
    assert f'Best b={doc["eps_scaler"]:.5f}' in res.output and f'({doc["images_new"]} generated by this run)' in res.output
    for bad, message in ((['--ts=off,10:1'], 'one --ts'), (['--keep-images'], 'no --keep-images'),
                         (['--bootstrap=0'], '--bootstrap'), (['--search-images=17'], 'between 2 and')):
        res = cli('sweep', *args, '--search', *bad)
        assert res.exit_code != 0 and message in res.output and 'Traceback' not in res.output, (bad, res.output)
