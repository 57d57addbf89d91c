"""exposure.py, samplers/recording.py, metrics/classifier.py: epsilon norms against an independent
computation, calibration on a denoiser with an injected gap, process split, resumable sweeps,
the classifier detector, one-line errors and the help text."""

import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import exposure
import generate
from metrics import classifier as digit_classifier
from metrics.detector import load_detector, pickle_torchscript
from metrics.evaluate import calc_reference
from metrics.features import probe_probs
from samplers import SamplerOptions, SeedNoise, latents_and_labels
from samplers import jobs
from samplers.recording import evaluation_layout
from test_samplers import tiny_net
from training.dataset import ImageFolderDataset

pytestmark = pytest.mark.filterwarnings('ignore:`torch.jit:DeprecationWarning')

RES = 8
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_dataset(folder, images, labels=None):
    """A dataset_tool-style folder: PNGs plus dataset.json (labels or null)."""
    os.makedirs(folder, exist_ok=True)
    names = []
    for n, image in enumerate(images):
        names.append(f'img{n:05d}.png')
        PIL.Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(os.path.join(folder, names[-1]))
    with open(os.path.join(folder, 'dataset.json'), 'w') as f:
        json.dump(dict(labels=None if labels is None else [[name, int(c)] for name, c in zip(names, labels)]), f)
    return str(folder)


def gray_images(n, seed=0, res=RES):
    return np.random.default_rng(seed).integers(0, 256, [n, res, res, 1], dtype=np.uint8)


@pytest.fixture(scope='module')
def net():
    return tiny_net(label_dim=3, channels=1)


@pytest.fixture(scope='module')
def files(tmp_path_factory, net):
    folder = tmp_path_factory.mktemp('exposure')
    pkl = folder / 'net.pkl'
    with open(pkl, 'wb') as f:
        pickle.dump(dict(ema=net), f)
    data = write_dataset(folder / 'data', gray_images(6), [0, 1, 2, 0, 1, 2])
    return dict(pkl=str(pkl), data=data, folder=folder)


def cli(*args):
    return CliRunner().invoke(exposure.main, [str(a) for a in args], prog_name='exposure.py')

#----------------------------------------------------------------------------
# Norms against an independent computation (EDM Algorithm 2 and the training noise written out).


def edm_levels(steps, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(a + i / (steps - 1) * (b - a)) ** rho for i in range(steps)] + [0.0]


def independent_norms(net, data, seeds, solver, steps, b):
    """(sampling norms [S, E], training norms [S, E]) computed directly, in evaluation order."""
    levels = edm_levels(steps)
    D = lambda x, s, c: net(x, torch.tensor(s, dtype=torch.float64), c).double()  # noqa: E731
    norm = lambda x, s, c: ((x - D(x, s, c)) / s).flatten(1).norm(dim=1)  # noqa: E731
    noise = SeedNoise(seeds)
    latents, labels = latents_and_labels(noise, [1, RES, RES], net.label_dim)
    scaled = lambda x, s, c: x.lerp(D(x, s, c), 1 / b)  # noqa: E731  eps / b, as docs/sampling.md writes it
    x = latents.double() * levels[0]
    sampling = []
    for i in range(steps):
        s, s_next = levels[i], levels[i + 1]
        d = (x - scaled(x, s, labels)) / s
        sampling.append(norm(x, s, labels))
        x_next = x + (s_next - s) * d
        if solver == 'heun' and i < steps - 1:
            sampling.append(norm(x_next, s_next, labels))
            x_next = x + (s_next - s) * (0.5 * d + 0.5 * (x_next - scaled(x_next, s_next, labels)) / s_next)
        x = x_next

    ds = ImageFolderDataset(data, use_labels=True)
    x0 = torch.stack([torch.from_numpy(ds[seed % len(ds)][0]).double() / 127.5 - 1 for seed in seeds])
    onehot = torch.stack([torch.from_numpy(ds.get_label(seed % len(ds))) for seed in seeds])
    gens = [torch.Generator().manual_seed((seed + 2 ** 31) % 2 ** 32) for seed in seeds]
    training = []
    for i in range(steps):
        s, s_next = levels[i], levels[i + 1]
        n = torch.stack([torch.randn([1, RES, RES], generator=g) for g in gens]).double()
        x = x0 + s * n
        training.append(norm(x, s, onehot))
        if solver == 'heun' and i < steps - 1:
            x_next = x + (s_next - s) * (x - D(x, s, onehot)) / s
            training.append(norm(x_next, s_next, onehot))
    return torch.stack(sampling, 1).numpy(), torch.stack(training, 1).numpy()


@pytest.mark.parametrize('solver,steps,b', [('euler', 4, 1.0), ('heun', 3, 1.05)])
def test_norms_match_an_independent_computation(net, files, solver, steps, b):
    seeds = [0, 1, 2, 3, 7]
    result = exposure.measure_norms(net, ImageFolderDataset(files['data'], use_labels=True), seeds,
                                    SamplerOptions(num_steps=steps, solver=solver, eps_scaler=b), max_batch_size=8)
    sampling, training = independent_norms(net, files['data'], seeds, solver, steps, b)
    assert result.layout == evaluation_layout(steps, solver) and result.sampling.shape == sampling.shape
    np.testing.assert_allclose(result.sampling, sampling, rtol=1e-6)
    # x0 + sigma n is formed in another order there (last-bit differences, amplified by 1/sigma at sigma = 0.002).
    np.testing.assert_allclose(result.training, training, rtol=2e-5)
    levels = edm_levels(steps)
    expected_sigma = [levels[i] if kind == 'euler' else levels[i + 1] for i, kind in result.layout]
    np.testing.assert_allclose(result.sampling_sigma, np.tile(expected_sigma, (len(seeds), 1)), rtol=1e-12)
    assert result.scalers == [b] * len(result.layout)
    rows = result.rows()
    assert [r['timestep'] for r in rows] == list(range(len(rows), 0, -1))
    for j, r in enumerate(rows):
        assert r['sampling'] == pytest.approx(sampling[:, j].mean(), rel=1e-6)
        assert r['sampling_used'] == pytest.approx(r['sampling'] / b, rel=1e-12)
        assert r['ratio'] == pytest.approx(sampling[:, j].mean() / training[:, j].mean(), rel=1e-6)
        assert r['sampling_sem'] == pytest.approx(sampling[:, j].std(ddof=1) / math.sqrt(len(seeds)), rel=1e-5)
    # Norms of N(0, I)-like noise at the top level: about sqrt(C H W) on both sides.
    assert rows[0]['sampling'] == pytest.approx(RES, rel=0.25) and rows[0]['training'] == pytest.approx(RES, rel=0.25)


def test_two_ranks_give_the_same_numbers_as_one(net, files, monkeypatch):
    """Each rank fills the rows of its batches; the sum over ranks is the single-process result, bit for bit."""
    dataset = ImageFolderDataset(files['data'], use_labels=True)
    options = SamplerOptions(num_steps=3, solver='heun')
    whole = exposure.measure_norms(net, dataset, list(range(7)), options, max_batch_size=2)
    parts = []
    monkeypatch.setattr(exposure.dist, 'get_world_size', lambda: 2)
    monkeypatch.setattr('analysis.norms._sum_over_ranks', lambda tensor, device: tensor)  # summed below instead
    for rank in (0, 1):
        monkeypatch.setattr(exposure.dist, 'get_rank', lambda rank=rank: rank)
        parts.append(exposure.measure_norms(net, dataset, list(range(7)), options, max_batch_size=2))
    for name in ('sampling', 'sampling_sigma', 'training'):
        a, b = getattr(parts[0], name), getattr(parts[1], name)
        assert not (a != 0).all() and not (b != 0).all()  # each rank did only part of the seeds
        assert np.array_equal(a + b, getattr(whole, name))


def test_norms_under_torchrun_two_processes_match_one(files, tmp_path):
    args = [f'--network={files["pkl"]}', f'--data={files["data"]}', '--seeds=0-6', '--steps=3', '--batch=2', '--device=cpu']
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           os.path.join(ROOT, 'exposure.py'), 'norms', f'--outdir={tmp_path / "two"}', *args]
    two = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count('Wrote ') == 1  # rank 0 writes
    one = cli('norms', f'--outdir={tmp_path / "one"}', *args)
    assert one.exit_code == 0, one.output
    for name in ('norms.json', 'norms.csv'):
        assert (tmp_path / 'two' / name).read_bytes() == (tmp_path / 'one' / name).read_bytes()


def test_time_shift_records_per_sample_sigma(net, files):
    dataset = ImageFolderDataset(files['data'], use_labels=True)
    result = exposure.measure_norms(net, dataset, [0, 1, 2, 3], SamplerOptions(num_steps=4, solver='euler', ts_window=200, ts_cutoff=0.01))
    levels = edm_levels(4)
    assert not np.allclose(result.sampling_sigma[:, 1], levels[1])  # shifted per sample
    np.testing.assert_allclose(result.sampling_sigma[:, 0], levels[0])  # the first step is never shifted

#----------------------------------------------------------------------------
# Calibration on a denoiser whose eps norm gap is known.


class GapDenoiser(torch.nn.Module):
    """eps has norm sqrt(C H W) * sigma / sqrt(0.25 + sigma^2) along x / ||x||, whatever x is, and is
    larger by lambda(sigma) for class 1. The training images are all of class 0 and the sampled
    seeds all draw class 1, so the sampling/training ratio is lambda(sigma) exactly: a known,
    injected exposure gap."""
    img_channels, img_resolution, label_dim, sigma_min, sigma_max, sigma_data = 1, RES, 2, 0.002, 80.0, 0.5

    def __init__(self, gap):
        super().__init__()
        self.gap = gap

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None):
        x = x.double()
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1, 1)
        unit = x / x.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
        lam = torch.tensor([self.gap(float(s)) for s in sigma.flatten()], dtype=torch.float64).reshape(-1, 1, 1, 1)
        factor = 1 + class_labels[:, 1].double().reshape(-1, 1, 1, 1) * (lam - 1)
        eps = factor * math.sqrt(x[0].numel()) * sigma / (0.25 + sigma ** 2).sqrt() * unit
        return x - sigma * eps


def class_one_seeds(count):
    seeds = []
    for seed in range(1000):
        _, labels = latents_and_labels(SeedNoise([seed]), [1, RES, RES], 2)
        if labels[0, 1] == 1:
            seeds.append(seed)
        if len(seeds) == count:
            return seeds


@pytest.fixture(scope='module')
def class0_data(tmp_path_factory):
    return ImageFolderDataset(write_dataset(tmp_path_factory.mktemp('c0'), gray_images(4, seed=5), [0, 0, 0, 0]), use_labels=True)


def test_calibrate_recovers_an_injected_constant_scaler(class0_data):
    seeds = class_one_seeds(4)
    b = 1.0375
    result = exposure.measure_norms(GapDenoiser(lambda s: b), class0_data, seeds, SamplerOptions(num_steps=4, solver='heun'))
    rows = result.rows()
    for fit in exposure.FITS:
        cal = exposure.calibrate(rows, 4, fit=fit)
        assert cal.eps_scaler == pytest.approx(b, abs=1e-9) and cal.eps_scaler_k == 0
        assert max(abs(r - 1) for r in cal.residual) < 1e-9
    # Sampling with the recovered scaler closes the gap in the eps the solver uses.
    scaled = exposure.measure_norms(GapDenoiser(lambda s: b), class0_data, seeds,
                                    SamplerOptions(num_steps=4, solver='heun', eps_scaler=b)).rows()
    assert all(r['ratio_used'] == pytest.approx(1, abs=1e-9) for r in scaled)
    assert all(r['ratio'] == pytest.approx(b, abs=1e-9) for r in scaled)


def test_calibrate_min_sigma_leaves_out_low_levels(class0_data):
    result = exposure.measure_norms(GapDenoiser(lambda s: 1.5 if s < 0.01 else 1.01), class0_data, class_one_seeds(2),
                                    SamplerOptions(num_steps=4, solver='euler'))
    assert exposure.calibrate(result.rows(), 4, fit='ratio').eps_scaler == pytest.approx((3 * 1.01 + 1.5) / 4)
    cal = exposure.calibrate(result.rows(), 4, fit='ratio', min_sigma=0.01)
    assert cal.eps_scaler == pytest.approx(1.01, abs=1e-9) and len(cal.rows) == 3
    with pytest.raises(exposure.ExposureError, match='min-sigma'):
        exposure.calibrate(result.rows(), 4, min_sigma=100)


def test_calibrate_recovers_an_injected_linear_scaler(class0_data):
    steps, b, k = 5, 1.01, 0.004
    levels = edm_levels(steps)[:-1]
    step_of = lambda s: min(range(steps), key=lambda i: abs(levels[i] - s))  # noqa: E731
    gap = lambda s: b + k * (steps - 1 - step_of(s))  # noqa: E731
    result = exposure.measure_norms(GapDenoiser(gap), class0_data, class_one_seeds(3), SamplerOptions(num_steps=steps, solver='euler'))
    cal = exposure.calibrate(result.rows(), steps, linear=True)
    assert cal.eps_scaler == pytest.approx(b, abs=1e-9) and cal.eps_scaler_k == pytest.approx(k, abs=1e-9)
    constant = exposure.calibrate(result.rows(), steps)
    assert b < constant.eps_scaler < b + k * (steps - 1)


def test_calibrate_cli_explains_and_writes_json(net, files, tmp_path):
    out = tmp_path / 'n'
    res = cli('norms', f'--network={files["pkl"]}', f'--data={files["data"]}', f'--outdir={out}', '--seeds=0-3',
              '--steps=3', '--solver=euler', '--device=cpu')
    assert res.exit_code == 0, res.output
    record = json.loads((out / 'norms.json').read_text())
    assert record['num_images'] == 4 and len(record['evaluations']) == 3 and record['dim'] == RES * RES
    assert (out / 'norms.csv').read_text().splitlines()[0].startswith('evaluation,timestep,step,kind,sigma')
    if exposure._figure() is not None:
        assert (out / 'norms.png').read_bytes()[:4] == b'\x89PNG'
    res = cli('calibrate', f'--norms={out / "norms.json"}', f'--json={tmp_path / "cal.json"}')
    assert res.exit_code == 0, res.output
    cal = exposure.calibrate(record['evaluations'], 3)
    assert f'--eps_scaler={cal.eps_scaler:.4f}' in res.output and 'least squares' in res.output
    assert json.loads((tmp_path / 'cal.json').read_text())['eps_scaler'] == pytest.approx(cal.eps_scaler)
    if exposure._figure() is not None:
        res = cli('plot', str(out / 'norms.json'), str(out / 'norms.json'), f'--dest={tmp_path / "p.png"}')
        assert res.exit_code == 0, res.output
        assert (tmp_path / 'p.png').read_bytes()[:4] == b'\x89PNG'

#----------------------------------------------------------------------------
# Sweeps.


class Features(torch.nn.Module):
    def forward(self, x, return_features: bool = False):
        x = x.to(torch.float32) / 127.5 - 1
        return torch.cat([torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1), x.flatten(1).std(dim=1, keepdim=True)], 1)


@pytest.fixture(scope='module')
def scoring(files):
    det = str(files['folder'] / 'det.pkl')
    with open(det, 'wb') as f:
        f.write(pickle_torchscript(torch.jit.script(Features())))
    ref = calc_reference(files['data'], str(files['folder'] / 'ref.npz'), detector_url=det, num_workers=0, verbose=False)
    return dict(det=det, ref=ref)


def test_sweep_resumes_and_skips_finished_points(net, files, scoring, tmp_path, monkeypatch):
    calls = []
    real = jobs.generate_images

    def counting(net, seeds, outdir, options, **kwargs):
        calls.append(options.eps_scaler)
        return real(net, seeds, outdir, options, **kwargs)
    monkeypatch.setattr(jobs, 'generate_images', counting)
    run = lambda points, **kw: exposure.run_sweep(  # noqa: E731
        net, files['pkl'], list(range(6)), str(tmp_path / 's'), points, scoring['ref'], detector_url=scoring['det'],
        base=SamplerOptions(num_steps=3, solver='euler'), replicates=20, progress=False, log=lambda *_: None, **kw)
    first = run(exposure.grid_points([1.0, 1.1], [(0, 1.0)]), keep_images=True)
    assert calls == [1.0, 1.1] and [r['name'] for r in first] == ['b1.00000', 'b1.10000']
    assert first[0]['delta'] == 0 and first[1]['delta'] == pytest.approx(first[1]['score'] - first[0]['score'])
    assert first[1]['delta_std'] is not None and first[0]['score_std'] > 0
    result_file = tmp_path / 's' / 'points' / 'b1.10000' / 'result.json'
    before = result_file.read_bytes()

    # Growing the grid computes only the new points.
    calls.clear()
    grown = run(exposure.grid_points([1.0, 1.1, 1.2], [(0, 1.0), (50, 0.1)]))
    assert calls == [1.2, 1.0, 1.1, 1.2]  # time-shift points are new, b=1.2 is new
    assert result_file.read_bytes() == before
    assert [r['score'] for r in grown[:2]] == [r['score'] for r in first]
    table = (tmp_path / 's' / 'sweep.csv').read_text().splitlines()
    assert table[0].startswith('name,eps_scaler,ts_window') and len(table) == 7
    assert not os.path.exists(tmp_path / 's' / 'points' / 'b1.20000' / 'images')  # scored images are removed

    # An interrupted point (images written, no result) is resumed without sampling again.
    os.remove(result_file)
    (tmp_path / 's' / 'points' / 'b1.10000' / 'features.npy').unlink()
    written = []
    monkeypatch.setattr(jobs, '_write_batch', lambda paths, images: written.extend(p for p in paths if p))
    again = run(exposure.grid_points([1.1], [(0, 1.0)]))
    assert written == [] and [r['score'] for r in again] == [r['score'] for r in grown]  # all points in the table

    # Other settings in the same folder are refused.
    with pytest.raises(exposure.ExposureError, match='another options'):
        exposure.run_sweep(net, files['pkl'], list(range(6)), str(tmp_path / 's'), exposure.grid_points([1.0], [(0, 1.0)]),
                           scoring['ref'], detector_url=scoring['det'], base=SamplerOptions(num_steps=4, solver='euler'),
                           progress=False, log=lambda *_: None)


def test_grid_parsing():
    assert exposure.parse_scalers('1:1.006:0.002') == [1.0, 1.002, 1.004, 1.006]
    assert exposure.parse_scalers('1.0045, 1, 1.0045') == [1.0045, 1.0]
    assert exposure.parse_ts('off,10:1,20:0.5') == [(0, 1.0), (10, 1.0), (20, 0.5)]
    points = exposure.grid_points([1.0, 1.01], [(0, 1.0), (10, 0.5)])
    assert [p.name for p in points] == ['b1.00000', 'b1.01000', 'b1.00000-ts10-c0.5', 'b1.01000-ts10-c0.5']
    assert points[3].options(SamplerOptions()).ts_window == 10
    for bad in ('1,abc', '0', '1:0.9:0.1', '1:2:0', ''):
        with pytest.raises(exposure.ExposureError):
            exposure.parse_scalers(bad)
    for bad in ('5', '0:1', 'a:b', '3:-1'):
        with pytest.raises(exposure.ExposureError):
            exposure.parse_ts(bad)

#----------------------------------------------------------------------------
# The classifier detector.


def bars(n, seed):
    """Class 0: a vertical bar, class 1: a horizontal bar, at random positions, with noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, [n, RES, RES, 1]).astype(np.uint8)
    labels = np.arange(n) % 2
    for image, label, pos in zip(images, labels, rng.integers(1, RES - 1, n)):
        if label:
            image[pos, :, 0] = 255
        else:
            image[:, pos, 0] = 255
    return images, labels


def test_classifier_trains_and_works_as_a_detector(tmp_path):
    data = write_dataset(tmp_path / 'bars', *bars(48, 0))
    res = CliRunner().invoke(exposure.main, ['classifier', f'--data={data}', f'--dest={tmp_path / "cls.pkl"}',
                                             '--holdout=12', '--epochs=12', '--batch=12'])
    assert res.exit_code == 0, res.output
    assert 'held-out images' in res.output
    accuracy = float(res.output.split('Accuracy ')[1].split('%')[0])
    assert accuracy >= 90
    det = load_detector(str(tmp_path / 'cls.pkl'))
    images = torch.from_numpy(bars(6, 1)[0]).permute(0, 3, 1, 2).repeat(1, 3, 1, 1)  # as the feature pass gives them
    feats = det(images, return_features=True)
    assert feats.shape == (6, 64) and feats.dtype == torch.float32
    assert probe_probs(det, images) == (2, None)
    probs = det(images)
    assert torch.allclose(probs.sum(1), torch.ones(6)) and (probs.argmax(1) == torch.tensor([0, 1] * 3)).float().mean() >= 0.8


def test_classifier_needs_labels(tmp_path):
    data = write_dataset(tmp_path / 'nolabels', gray_images(4))
    with pytest.raises(digit_classifier.MetricError, match='class labels'):
        digit_classifier.load_labelled_images(data)

#----------------------------------------------------------------------------
# Command line: one-line errors and the help text.


def _one_error_line(result):
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('Error: '), result.output
    assert 'Traceback' not in result.output
    return lines[0]


def test_one_line_errors(net, files, tmp_path):
    rgb = write_dataset(tmp_path / 'rgb', np.zeros([2, RES, RES, 3], np.uint8), [0, 1])
    unlabelled = write_dataset(tmp_path / 'nolab', gray_images(2))
    not_norms = tmp_path / 'x.json'
    not_norms.write_text('{"a": 1}')
    base = [f'--outdir={tmp_path / "o"}', '--seeds=0-1', '--steps=2', '--device=cpu']
    cases = [
        (['norms', f'--network={tmp_path / "missing.pkl"}', f'--data={files["data"]}', *base], 'missing.pkl'),
        (['norms', f'--network={files["pkl"]}', f'--data={tmp_path / "nodata.zip"}', *base], 'no such file'),
        (['norms', f'--network={files["pkl"]}', f'--data={rgb}', *base], 'expects 1x8x8'),
        (['norms', f'--network={files["pkl"]}', f'--data={unlabelled}', *base], 'no class labels'),
        (['norms', f'--network={files["pkl"]}', f'--data={files["data"]}', '--class=7', *base], '--class=7'),
        (['sweep', f'--network={files["pkl"]}', '--ref=r.npz', '--eps_scaler=1,abc', *base], 'abc'),
        (['sweep', f'--network={files["pkl"]}', '--ref=r.npz', '--ts=10', *base], 'WINDOW:CUTOFF'),
        (['sweep', f'--network={files["pkl"]}', f'--ref={tmp_path / "none.npz"}', *base], 'reference'),
        (['calibrate', f'--norms={not_norms}'], 'not a norms.json'),
        (['calibrate', f'--norms={tmp_path / "none.json"}'], 'cannot read'),
        (['classifier', f'--data={tmp_path / "none"}', f'--dest={tmp_path / "c.pkl"}'], 'no such file'),
    ]
    for args, message in cases:
        assert message in _one_error_line(cli(*args)), args
    assert not os.path.exists(tmp_path / 'o' / 'norms.json')


def test_help_text_in_sync(repo_root):
    commands = ([], ['norms'], ['calibrate'], ['sweep'], ['schedule'], ['plot'], ['classifier'])
    parts = [cli(*command, '--help').output for command in commands]
    with open(os.path.join(repo_root, 'docs', 'exposure-help.txt'), encoding='utf8') as f:
        assert '\n'.join(parts) == f.read(), 'regenerate with: python -c "from click.testing import CliRunner; ' \
            'import exposure; print(\'\\n\'.join(CliRunner().invoke(exposure.main, [*c, \'--help\'], ' \
            'prog_name=\'exposure.py\').output for c in ([], [\'norms\'], [\'calibrate\'], [\'sweep\'], [\'schedule\'], [\'plot\'], ' \
            '[\'classifier\'])), end=\'\')" > docs/exposure-help.txt'
