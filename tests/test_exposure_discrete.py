"""exposure.py for DDPM and DDIM on ADM networks: eps norms on a tiny converted network against
an independent computation, calibration of b and b + k on a discrete denoiser with an injected
gap, the evaluation layouts, and sweeps over b, k and both time-shift modes (resumed)."""

import json
import math
import pickle

import numpy as np
import pytest
import torch

import exposure
import generate
from adm_helpers import TINY, tiny_adm
from analysis.sweep import GridPoint, grid_points, parse_slopes, parse_ts, run_sweep
from analysis.search import run_search
from samplers import SamplerOptionError, SamplerOptions, SeedNoise, latents_and_labels
from samplers import discrete, jobs, recording
from samplers.recording import LayoutError, evaluation_layout, layout_note
from test_exposure import cli, gray_images, scoring, write_dataset  # noqa: F401 (scoring: a fixture over this module's files)
from networks import edm as networks
from training.dataset import ImageFolderDataset

pytestmark = pytest.mark.filterwarnings('ignore:`torch.jit:DeprecationWarning')

SMALL = TINY + ' --diffusion_steps 100'  # learned sigma, cosine schedule, 100 timesteps, 3x16x16
RES = 16


@pytest.fixture(scope='module')
def small():
    return tiny_adm(SMALL)[0]


@pytest.fixture(scope='module')
def files(tmp_path_factory, small):
    folder = tmp_path_factory.mktemp('exposure-adm')
    pkl = folder / 'net.pkl'
    with open(pkl, 'wb') as f:
        pickle.dump(dict(ema=small), f)
    images = np.random.default_rng(3).integers(0, 256, [6, RES, RES, 3], dtype=np.uint8)
    data = write_dataset(folder / 'data', images)  # unconditional: labels null
    return dict(pkl=str(pkl), data=data, folder=folder)

#----------------------------------------------------------------------------
# Norms against an independent computation: guided-diffusion's loops written out, with the
# model's raw eps output at every step.


def independent_norms(net, data, seeds, timesteps, ddim, scalers):
    """(sampling norms [S, N], training norms [S, N]) of the model's eps, step by step."""
    alpha_bar = net.alpha_bar.numpy()
    steps = len(timesteps)
    noise = SeedNoise(seeds)
    latents, labels = latents_and_labels(noise, [3, RES, RES], net.label_dim)
    step_noise = [noise.randn([len(seeds), 3, RES, RES], dtype=torch.float64) for _ in range(steps)]

    def model(x_t, t):
        with torch.no_grad():
            out = net.model(x_t.float(), torch.full([len(x_t)], float(t)), labels).double()
        return out[:, :3], out[:, 3:]

    x = latents.double()
    sampling = []
    for i in range(steps):
        j = steps - 1 - i
        a = alpha_bar[timesteps[j]]
        a_prev = alpha_bar[timesteps[j - 1]] if j > 0 else 1.0
        eps, v = model(x, timesteps[j])
        sampling.append(eps.flatten(1).norm(dim=1))
        x0 = ((x - math.sqrt(1 - a) * eps / scalers[i]) / math.sqrt(a)).clamp(-1, 1)
        if ddim:  # eta 0
            eps_x0 = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps_x0
            continue
        beta = 1 - a / a_prev
        mean = math.sqrt(a_prev) * beta / (1 - a) * x0 + math.sqrt(1 - beta) * (1 - a_prev) / (1 - a) * x
        if j == 0:
            x = mean
            continue
        frac = (v + 1) / 2  # learned range (iDDPM Eq. 15)
        log_var = frac * math.log(beta) + (1 - frac) * math.log(beta * (1 - a_prev) / (1 - a))
        x = mean + (0.5 * log_var).exp() * step_noise[i]

    ds = ImageFolderDataset(data, use_labels=True)
    x0 = torch.stack([torch.from_numpy(ds[seed % len(ds)][0]).double() / 127.5 - 1 for seed in seeds])
    gens = [torch.Generator().manual_seed((seed + 2 ** 31) % 2 ** 32) for seed in seeds]
    training = []
    for i in range(steps):
        j = steps - 1 - i
        a = alpha_bar[timesteps[j]]
        n = torch.stack([torch.randn([3, RES, RES], generator=g) for g in gens]).double()
        eps, _v = model(math.sqrt(a) * x0 + math.sqrt(1 - a) * n, timesteps[j])
        training.append(eps.flatten(1).norm(dim=1))
    return torch.stack(sampling, 1).numpy(), torch.stack(training, 1).numpy()


@pytest.mark.parametrize('options', [
    dict(solver='ddim', respacing='ddim5', eps_scaler=1.02, eps_scaler_k=0.01),
    dict(solver='ddpm', num_steps=4),
    dict(solver='ddpm', num_steps=18, respacing='3,2', eps_scaler=0.97),  # --steps does not count with a respacing
], ids=['ddim b+k', 'ddpm learned', 'ddpm sections b'])
def test_norms_match_an_independent_computation(small, files, options):
    seeds = [0, 1, 2, 5]
    options = SamplerOptions(**options)
    process = discrete.respace(small.alpha_bar.numpy(), options.timestep_respacing)
    steps = process.num_steps
    result = exposure.measure_norms(small, ImageFolderDataset(files['data'], use_labels=True), seeds, options, max_batch_size=3)
    scalers = [options.eps_scaler + options.eps_scaler_k * (steps - 1 - i) for i in range(steps)]
    sampling, training = independent_norms(small, files['data'], seeds, list(process.timesteps), options.solver == 'ddim', scalers)
    assert result.layout == [(i, options.solver) for i in range(steps)] == evaluation_layout(steps, options.solver)
    np.testing.assert_allclose(result.sampling, sampling, rtol=1e-5)
    np.testing.assert_allclose(result.training, training, rtol=1e-5)
    # The levels are sqrt(1 / alpha_bar - 1) of the respaced timesteps, from the first step (the highest) down.
    sigmas = [math.sqrt(1 / small.alpha_bar[t].item() - 1) for t in reversed(process.timesteps)]
    np.testing.assert_allclose(result.levels, sigmas, rtol=1e-9)
    np.testing.assert_allclose(result.sampling_sigma, np.tile(sigmas, (len(seeds), 1)), rtol=1e-9)
    assert result.scalers == pytest.approx(scalers, rel=1e-12)
    for j, r in enumerate(result.rows()):
        assert r['kind'] == options.solver and r['step'] == j and r['timestep'] == steps - j
        assert r['sampling_used'] == pytest.approx(sampling[:, j].mean() / scalers[j], rel=1e-5)  # the eps DDIM/DDPM used
        assert r['ratio'] == pytest.approx(sampling[:, j].mean() / training[:, j].mean(), rel=1e-5)


def test_time_shift_modes_record_where_the_network_ran(small, files):
    dataset = ImageFolderDataset(files['data'], use_labels=True)
    plain = exposure.measure_norms(small, dataset, [0, 1, 2], SamplerOptions(solver='ddim', respacing='5'))
    clean = exposure.measure_norms(small, dataset, [0, 1, 2], SamplerOptions(solver='ddim', respacing='5', ts_window=3, ts_cutoff=0.3))
    # This toolkit's time shift moves the network's timestep per sample (never in the first step) ...
    np.testing.assert_array_equal(clean.sampling_sigma[:, 0], plain.sampling_sigma[:, 0])
    assert not np.allclose(clean.sampling_sigma[:, 1:4], plain.sampling_sigma[:, 1:4])
    assert np.allclose(clean.training, plain.training)  # the training side has no time shift
    # ... TS-DPM-ADM's keeps it at the grid timestep and moves where the step lands.
    tsdpm = exposure.measure_norms(small, dataset, [0, 1, 2], SamplerOptions(solver='ddim', respacing='5', ts_mode='tsdpm',
                                                                             ts_window=20, ts_cutoff=50))
    np.testing.assert_array_equal(tsdpm.sampling_sigma, plain.sampling_sigma)
    np.testing.assert_array_equal(tsdpm.sampling[:, :2], plain.sampling[:, :2])  # the first shifted step lands elsewhere
    assert not np.allclose(tsdpm.sampling[:, 2:], plain.sampling[:, 2:])

#----------------------------------------------------------------------------
# Evaluation layouts.


def test_layouts_of_every_solver_and_their_plot_note():
    assert evaluation_layout(3, 'heun') == [(0, 'euler'), (0, 'correction'), (1, 'euler'), (1, 'correction'), (2, 'euler')]
    assert evaluation_layout(2, 'euler') == [(0, 'euler'), (1, 'euler')]
    assert evaluation_layout(3, 'ddim') == [(0, 'ddim'), (1, 'ddim'), (2, 'ddim')]
    assert recording.evaluation_levels([5.0, 2.0, 1.0, 0.0], 'heun') == [5.0, 2.0, 2.0, 1.0, 1.0]
    assert recording.evaluation_levels([5.0, 2.0, 0.0], 'ddpm') == [5.0, 2.0]
    assert layout_note(evaluation_layout(4, 'heun')) == 'odd: euler, even: correction'
    assert layout_note(evaluation_layout(4, 'ddim')) == layout_note(evaluation_layout(4, 'euler')) == ''
    assert layout_note([(0, 'a'), (0, 'b'), (0, 'c'), (1, 'a')]) == 'per step: a, b, c'
    with pytest.raises(LayoutError, match='no evaluation layout is registered for --solver=rk45'):
        evaluation_layout(3, 'rk45')
    # The few-step solvers: S-PNDM's improved-Euler first step, F-PNDM's Runge-Kutta warm-up.
    assert evaluation_layout(3, 'spndm') == [(0, 'euler'), (0, 'correction'), (1, 'euler'), (2, 'euler')]
    assert len(evaluation_layout(5, 'fpndm')) == 5 + 3 * 3 and len(evaluation_layout(3, 'fpndm')) == 3 + 3 * 2
    assert recording.evaluation_levels([4.0, 2.0, 1.0, 0.0], 'fpndm')[:4] == [4.0, 3.0, 3.0, 2.0]
    assert evaluation_layout(3, 'deis') == evaluation_layout(3, 'dpmsolver') == evaluation_layout(3, 'euler')


@pytest.mark.parametrize('solver', ['spndm', 'fpndm', 'dpmsolver', 'dpmpp2m', 'deis'])
def test_norms_of_the_few_step_solvers_on_the_respaced_grid(small, files, solver):
    from samplers import solvers
    options = SamplerOptions(solver=solver, respacing='ddim5')
    result = exposure.measure_norms(small, ImageFolderDataset(files['data'], use_labels=True), [0, 1, 2], options)
    assert len(result.layout) == solvers.evaluations(solver, 5) == options.nfe  # every call recorded, as registered
    assert np.isfinite(result.sampling).all()
    first = [n for n, (i, kind) in enumerate(result.layout) if kind == 'euler']
    assert len(first) == 5 and np.isfinite(result.training[:, first]).all()  # each step's own evaluation, both sides


def test_a_layout_that_does_not_match_the_calls_is_one_error(small, files, monkeypatch):
    dataset = ImageFolderDataset(files['data'], use_labels=True)
    monkeypatch.setitem(recording.EVALUATIONS, 'ddim', lambda i, n: [('ddim', 0), ('ddim', 1)])
    with pytest.raises(exposure.ExposureError, match='made no call 2 in step 0'):
        exposure.measure_norms(small, dataset, [0], SamplerOptions(solver='ddim', respacing='3'))
    monkeypatch.setitem(recording.EVALUATIONS, 'ddim', lambda i, n: [('ddim', 0)] if i else [])
    with pytest.raises(exposure.ExposureError, match='made call 1 of step 0'):
        exposure.measure_norms(small, dataset, [0], SamplerOptions(solver='ddim', respacing='3'))

#----------------------------------------------------------------------------
# Calibration on a discrete denoiser whose eps norm gap is known.


class DiscreteGapDenoiser(torch.nn.Module):
    """A discrete-time (ADM-like) denoiser over the cosine alpha_bar of T timesteps whose eps has
    norm sqrt(C H W) along x / ||x||, larger by lambda(sigma) for class 1. The training images
    are of class 0 and the sampled seeds draw class 1, so the sampling/training ratio of the
    model's eps is lambda(sigma) at every step: an injected gap."""
    img_channels, img_resolution, label_dim, learn_sigma = 1, 8, 2, False

    def __init__(self, gap, T=100):
        super().__init__()
        self.gap = gap
        alpha_bar = networks.adm_alpha_bar('cosine', T)
        self.register_buffer('alpha_bar', torch.as_tensor(alpha_bar, dtype=torch.float64))
        self.sigma_min, self.sigma_max = float(np.sqrt(1 / alpha_bar[0] - 1)), float(np.sqrt(1 / alpha_bar[-1] - 1))

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None, return_var_values=False):
        x = x.double()
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1, 1)
        unit = x / x.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
        lam = torch.tensor([self.gap(float(s)) for s in sigma.flatten()], dtype=torch.float64).reshape(-1, 1, 1, 1)
        factor = 1 + class_labels[:, 1].double().reshape(-1, 1, 1, 1) * (lam - 1)
        denoised = x - sigma * factor * math.sqrt(x[0].numel()) * unit
        return (denoised, None) if return_var_values else denoised


def class_one_seeds(count):
    seeds = [seed for seed in range(200) if latents_and_labels(SeedNoise([seed]), [1, 8, 8], 2)[1][0, 1] == 1]
    return seeds[:count]


@pytest.fixture(scope='module')
def class0_data(tmp_path_factory):
    return ImageFolderDataset(write_dataset(tmp_path_factory.mktemp('c0'), gray_images(4, seed=5), [0, 0, 0, 0]), use_labels=True)


@pytest.mark.parametrize('solver', ['ddpm', 'ddim'])
def test_calibrate_recovers_an_injected_scaler_for_a_discrete_sampler(class0_data, solver):
    seeds, b, k = class_one_seeds(3), 1.017, 0.0025
    options = SamplerOptions(solver=solver, respacing='ddim10', num_steps=30)  # 10 steps: --steps is not N
    result = exposure.measure_norms(DiscreteGapDenoiser(lambda s: b), class0_data, seeds, options)
    rows = result.rows()
    assert len(rows) == 10
    for fit in exposure.FITS:
        cal = exposure.calibrate(rows, 10, fit=fit)
        assert cal.eps_scaler == pytest.approx(b, abs=1e-9) and max(abs(r - 1) for r in cal.residual) < 1e-9
    # ADM-ES's linear form: lambda = b + k j at respaced index j = N - 1 - i (0 = the last step).
    process = discrete.respace(networks.adm_alpha_bar('cosine', 100), 'ddim10')
    sigma_of = [math.sqrt(1 / a - 1) for a in process.alpha_bar]
    index_of = lambda s: min(range(10), key=lambda j: abs(sigma_of[j] - s))  # noqa: E731
    gap = lambda s: b + k * index_of(s)  # noqa: E731
    linear = exposure.measure_norms(DiscreteGapDenoiser(gap), class0_data, seeds, options)
    cal = exposure.calibrate(linear.rows(), 10, linear=True)
    assert cal.eps_scaler == pytest.approx(b, abs=1e-9) and cal.eps_scaler_k == pytest.approx(k, abs=1e-9)
    # Sampling with the recovered scalers closes the gap in the eps the sampler uses, at every step.
    scaled = exposure.measure_norms(DiscreteGapDenoiser(gap), class0_data, seeds,
                                    SamplerOptions(solver=solver, respacing='ddim10', num_steps=30, eps_scaler=cal.eps_scaler,
                                                   eps_scaler_k=cal.eps_scaler_k)).rows()
    assert all(r['ratio_used'] == pytest.approx(1, abs=1e-8) for r in scaled)
    assert [r['eps_scaler'] for r in scaled] == pytest.approx([b + k * (9 - i) for i in range(10)], abs=1e-8)


def test_norms_and_calibrate_cli_count_the_respaced_steps(files, tmp_path):
    out = tmp_path / 'n'
    res = cli('norms', f'--network={files["pkl"]}', f'--data={files["data"]}', f'--outdir={out}', '--seeds=0-2',
              '--solver=ddim', '--steps=18', '--timestep_respacing=ddim5', '--eps_scaler=1.01', '--device=cpu')
    assert res.exit_code == 0, res.output
    assert 'ddim with respacing "ddim5" (5 evaluations)' in res.output
    record = json.loads((out / 'norms.json').read_text())
    assert [r['kind'] for r in record['evaluations']] == ['ddim'] * 5 and record['dim'] == 3 * RES * RES
    res = cli('calibrate', f'--norms={out / "norms.json"}', '--linear', f'--json={tmp_path / "cal.json"}')
    assert res.exit_code == 0, res.output
    cal = exposure.calibrate(record['evaluations'], 5, linear=True)  # N = 5, not --steps=18
    assert json.loads((tmp_path / 'cal.json').read_text())['eps_scaler'] == pytest.approx(cal.eps_scaler)
    assert f'--eps_scaler={cal.eps_scaler:.4f}' in res.output and 'ddim with respacing "ddim5"' in res.output
    res = cli('norms', f'--network={files["pkl"]}', f'--data={files["data"]}', f'--outdir={tmp_path / "x"}', '--seeds=0',
              '--solver=ddpm', '--ts_mode=tsdpm', '--ts_window=10', '--device=cpu')
    assert res.exit_code != 0 and 'defined for --solver=ddim only' in res.output and 'Traceback' not in res.output

#----------------------------------------------------------------------------
# Sweeps over b, k and both time-shift modes.


def test_time_shift_settings_carry_their_mode():
    assert parse_ts('off,10:1,tsdpm:80:300,clean:5:0.5,tsdpm:0:300') == [(0, 1.0), (10, 1.0), (80, 300.0, 'tsdpm'), (5, 0.5),
                                                                       (0, 300.0, 'tsdpm')]
    for bad in ('tsdpm:80', 'tsdpm:80:2.5', 'tsdpm:-1:300', 'foo:1:2'):
        with pytest.raises(exposure.ExposureError):
            parse_ts(bad)
    assert parse_slopes('0,0.001:0.003:0.001,-0.001') == [0.0, 0.001, 0.002, 0.003, -0.001]
    points = grid_points([1.0, 1.01], [(0, 1.0), (80, 300.0, 'tsdpm')], [0.0, 0.002])
    assert [p.name for p in points] == ['b1.00000', 'b1.01000', 'b1.00000-k0.002', 'b1.01000-k0.002',
                                        'b1.00000-tsdpm80-c300', 'b1.01000-tsdpm80-c300',
                                        'b1.00000-k0.002-tsdpm80-c300', 'b1.01000-k0.002-tsdpm80-c300']
    options = points[-1].options(SamplerOptions(solver='ddim'))
    assert (options.ts_mode, options.ts_window, options.ts_cutoff, options.eps_scaler_k) == ('tsdpm', 80, 300.0, 0.002)
    assert GridPoint(1.0, 0, 300.0, 'tsdpm').ts_on and GridPoint(1.0, 0, 300.0, 'tsdpm').name == 'b1.00000-tsdpm0-c300'
    assert GridPoint(1.0).options(SamplerOptions(solver='ddim', ts_mode='tsdpm', ts_window=5)).ts_mode == 'clean'


def test_discrete_sweep_over_b_k_and_both_time_shift_modes_resumes(small, files, scoring, tmp_path, monkeypatch):
    calls = []
    real = jobs.generate_images

    def counting(net, seeds, outdir, options, **kwargs):
        calls.append((options.eps_scaler, options.eps_scaler_k, options.ts_mode, options.ts_window))
        return real(net, seeds, outdir, options, **kwargs)
    monkeypatch.setattr(jobs, 'generate_images', counting)
    run = lambda points, **kw: run_sweep(  # noqa: E731
        small, files['pkl'], list(range(5)), str(tmp_path / 's'), points, scoring['ref'], detector_url=scoring['det'],
        base=SamplerOptions(solver='ddim', respacing='5'), replicates=10, progress=False, log=lambda *_: None, **kw)
    settings = parse_ts('off,3:0.5,tsdpm:20:50')
    first = run(grid_points([1.0, 1.05], settings))
    assert len(calls) == 6 and {c[2] for c in calls} == {'clean', 'tsdpm'}
    assert [r['name'] for r in first] == ['b1.00000', 'b1.05000', 'b1.00000-ts3-c0.5', 'b1.05000-ts3-c0.5',
                                          'b1.00000-tsdpm20-c50', 'b1.05000-tsdpm20-c50']
    assert [r['ts_mode'] for r in first] == [None, None, 'clean', 'clean', 'tsdpm', 'tsdpm']
    assert first[0]['delta'] == 0 and all(r['delta_std'] is not None for r in first[1:])
    assert len({r['score'] for r in first}) == 6  # every setting samples other images
    # The images of a point are generate.py's with the point's options.
    record = json.loads((tmp_path / 's' / 'points' / 'b1.05000-tsdpm20-c50' / 'result.json').read_text())
    assert record['options']['ts_mode'] == 'tsdpm' and record['options']['respacing'] == '5'

    # Again: nothing is sampled; with slopes k, only the new points are.
    calls.clear()
    assert [r['score'] for r in run(grid_points([1.0, 1.05], settings))] == [r['score'] for r in first]
    assert calls == []
    grown = run(grid_points([1.0], settings[:1], [0.0, 0.01]))
    assert calls == [(1.0, 0.01, 'clean', 0)]
    assert [r['name'] for r in grown][:3] == ['b1.00000', 'b1.05000', 'b1.00000-k0.01'] and grown[2]['eps_scaler_k'] == 0.01
    table = (tmp_path / 's' / 'sweep.csv').read_text().splitlines()
    assert table[0].endswith(',eps_scaler_k,ts_mode') and len(table) == 8
    text = exposure.format_sweep(grown)
    assert 'TS-DPM w20 c50' in text and 'TS w3 c0.5' in text and '0.010000' in text

    # A time shift the network's sampler cannot run is refused before anything is sampled.
    with pytest.raises(SamplerOptionError, match='TS-DPM-ADM'):
        run_sweep(small, files['pkl'], list(range(5)), str(tmp_path / 'p'), grid_points([1.0], parse_ts('tsdpm:20:50')),
                  scoring['ref'], detector_url=scoring['det'], base=SamplerOptions(solver='ddpm', respacing='5'),
                  progress=False, log=lambda *_: None)
    assert not (tmp_path / 'p').exists()


def test_folders_of_earlier_sweeps_resume(small, files, scoring, tmp_path):
    """Folders made when k and the time-shift mode were shared by all points still resume (with
    their default values) and are refused with another k."""
    args = (small, files['pkl'], list(range(3)), str(tmp_path / 's'), grid_points([1.0], [(0, 1.0)]), scoring['ref'])
    kwargs = dict(detector_url=scoring['det'], base=SamplerOptions(solver='ddim', respacing='3'), replicates=0,
                  progress=False, log=lambda *_: None)
    score = run_sweep(*args, **kwargs)[0]['score']
    path = tmp_path / 's' / 'sweep-options.json'
    old = json.loads(path.read_text())
    old['options'].update(eps_scaler_k=0.0, ts_mode='clean')
    path.write_text(json.dumps(old))
    assert run_sweep(*args, **kwargs)[0]['score'] == score
    old['options']['eps_scaler_k'] = 0.01
    path.write_text(json.dumps(old))
    with pytest.raises(exposure.ExposureError, match='another options'):
        run_sweep(*args, **kwargs)


def test_discrete_search_with_tsdpm_and_a_slope(small, files, scoring, tmp_path):
    search = lambda: run_search(  # noqa: E731
        small, files['pkl'], list(range(8)), str(tmp_path / 's'), [0.9, 0.95, 1.0, 1.05, 1.1], scoring['ref'],
        ts=(20, 50.0, 'tsdpm'), eps_scaler_k=0.005, base=SamplerOptions(solver='ddim', respacing='5'),
        detector_url=scoring['det'], start_images=4, replicates=10, progress=False, log=lambda *_: None)
    doc = search()
    assert doc['eps_scaler'] in (0.9, 0.95, 1.0, 1.05, 1.1) and doc['images_new'] > 0
    assert (doc['ts_mode'], doc['ts_window'], doc['ts_cutoff'], doc['eps_scaler_k']) == ('tsdpm', 20, 50.0, 0.005)
    assert all(p.name.endswith('-k0.005-tsdpm20-c50') for p in (tmp_path / 's' / 'search').iterdir())
    again = search()
    assert again['images_new'] == 0 and again['eps_scaler'] == doc['eps_scaler']


def test_sweep_cli_with_a_discrete_sampler(files, scoring, tmp_path):
    args = [f'--network={files["pkl"]}', f'--outdir={tmp_path / "s"}', '--seeds=0-3', '--solver=ddim', '--timestep_respacing=4',
            '--device=cpu', f'--ref={scoring["ref"]}', f'--detector={scoring["det"]}', '--bootstrap=5']
    res = cli('sweep', *args, '--eps_scaler=1,1.02', '--ts=off,tsdpm:10:50', '--eps_scaler_k=0')
    assert res.exit_code == 0, res.output
    assert 'ddim with respacing "4"' in res.output and 'b1.02000-tsdpm10-c50' in res.output
    res = cli('sweep', *args, '--search', '--eps_scaler=1,1.02', '--eps_scaler_k=0,0.01')
    assert res.exit_code != 0 and 'one --eps_scaler_k' in res.output and 'Traceback' not in res.output
    res = cli('sweep', *args, '--eps_scaler_k=0,abc')
    assert res.exit_code != 0 and 'abc' in res.output and 'Traceback' not in res.output
