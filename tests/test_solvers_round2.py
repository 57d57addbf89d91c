"""Second-round few-step solvers (samplers/fewstep.py), --nfe (samplers/nfe.py), schedule files
and the schedule search (analysis/schedule.py).

Convergence order on Gaussian data against the closed-form ODE solution, k-diffusion parity
where the methods agree (skipped when k-diffusion is not installed), the stochastic samplers'
per-seed noise and their distribution, --nfe spending exactly N evaluations, and the search's
dynamic programme against exhaustive search.
"""

import itertools
import json
import math
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import exposure
import generate
from analysis.schedule import best_path, fine_grid, reference_costs, refine_levels
from networks import edm as networks
from safeload.schedule import SCHEDULE_FORMAT, ScheduleError, check_schedule, read_schedule
from samplers import Sampler, SamplerOptionError, SamplerOptions, SeedNoise, TimeShift, noise_levels, reference_grid, with_zero
from samplers import fewstep
from samplers import nfe as nfe_rule
from samplers.fewstep import ancestral_levels
from samplers.solvers import SOLVERS, STOCHASTIC, evaluations
from test_samplers import draw, tiny_net
from test_solvers_multistep import Gaussian, Mixture, StepLog, edm_sigmas, fitted_order, latents
from bench.peers import kdiffusion_sampling

DETERMINISTIC = [('unipc-bh1', dict(order=k)) for k in (1, 2, 3)] + [('unipc-bh2', dict(order=k)) for k in (1, 2, 3)] + \
                [('dpmpp3m', {}), ('dpmpp3m-ref', {}), ('ipndm', {})]
NEW = ('unipc-bh1', 'unipc-bh2', 'dpmpp3m', 'dpmpp3m-ref', 'ipndm', 'euler_a', 'dpmpp-sde', 'dpmpp2m-sde')


@pytest.fixture(scope='module')
def net():
    return tiny_net()

#----------------------------------------------------------------------------
# Convergence order.

# UniPC-p: the UniC corrector raises the order of UniP-p by one (arXiv 2302.04867, Theorem 3.2).
# DPM-Solver++(3M) with the corrected D2 is third order; the reference form's halved D2 makes
# it second. iPNDM's first (Euler) step bounds it to second order, on any grid.
ORDERS = [('unipc-bh1', dict(order=k), k + 1) for k in (1, 2, 3)] + [('unipc-bh2', dict(order=k), k + 1) for k in (1, 2, 3)] + \
         [('dpmpp3m', {}, 3), ('dpmpp3m-ref', {}, 2), ('ipndm', {}, 2)]


@pytest.mark.parametrize('name, kwargs, order', ORDERS, ids=[f'{n}{kw.get("order", "")}' for n, kw, _ in ORDERS])
def test_convergence_order_on_gaussian_data(name, kwargs, order):
    slope, errors = fitted_order(name, kwargs, edm_sigmas, [64, 90, 128, 181, 256])
    print(f'{name} {kwargs}: order {slope:.2f}')
    assert abs(slope - order) < 0.3, (slope, errors)


def test_dpmpp3m_correction_matters_and_ipndm_is_warmup_limited():
    fixed, _ = fitted_order('dpmpp3m', {}, edm_sigmas, [64, 90, 128, 181, 256])
    ref, _ = fitted_order('dpmpp3m-ref', {}, edm_sigmas, [64, 90, 128, 181, 256])
    assert fixed > ref + 0.8
    uniform = lambda n: with_zero(torch.linspace(2.0, 0.5, n, dtype=torch.float64))  # noqa: E731
    ipndm, errors = fitted_order('ipndm', {}, uniform, [16, 23, 32, 45])
    assert 1.7 < ipndm < 2.6, (ipndm, errors)


def test_unipc_first_order_is_ddim_with_a_trapezoidal_corrector():
    # Written out independently: UniP-1 is DDIM in data prediction; UniC-1 (rho = 1/2) replaces
    # D by (D(x_i) + D(x_{i+1}^pred)) / 2 in the same step, with B(h) = e^{-h} - 1 (bh2).
    mix, z, sigmas = Mixture(), latents(3, (2, 3, 3)), edm_sigmas(7)
    levels = sigmas.tolist()
    x = z * sigmas[0]
    for i in range(len(levels) - 1):
        d = mix(x, sigmas[i])  # at the predicted state
        if i == len(levels) - 2:
            expected = d  # the step into 0
            break
        if i > 0:
            x = r_prev * x_start + (1 - r_prev) * 0.5 * (d_prev + d)  # UniC-1 (e^{-h} = sigma_t / sigma_s)
        r = levels[i + 1] / levels[i]
        x_start, d_prev, r_prev = x, d, r
        x = r * x + (1 - r) * d  # UniP-1 = DDIM
    ours = SOLVERS['unipc-bh2'](mix, z, sigmas, order=1)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(ours, SOLVERS['dpmsolver'](mix, z, sigmas, order=1))  # the corrector acts


@pytest.mark.parametrize('variant', fewstep.UNIPC_VARIANTS)
def test_unipc_plan_has_the_per_step_weights_bit_for_bit(variant):
    # _UniPCPlan computes every step's weights at once ([S] tensors over the steps, one solve per
    # order); they must equal what the per-step path computes on 0-dim levels, to the last bit.
    uniform = with_zero(torch.linspace(3.0, 0.1, 7, dtype=torch.float64))
    for order, sigmas in itertools.product((1, 2, 3), (edm_sigmas(4), edm_sigmas(18), uniform)):
        plan = fewstep._UniPCPlan(sigmas, order, variant)
        num_steps = len(sigmas) - 1
        for j in range(num_steps - 1):
            p = min(order, j + 1, num_steps - j)
            lam = [-torch.log(sigmas[m]) for m in range(j - p + 1, j + 1)]
            h = -torch.log(sigmas[j + 1]) - lam[-1]
            ratios = [(lam_k - lam[-1]) / h for lam_k in lam[-2::-1]]
            h_phi_1 = torch.expm1(-h)
            b_h, predictor = fewstep._unipc_coefficients(h, h_phi_1, ratios, p, variant, corrector=False)
            _, corrector = fewstep._unipc_coefficients(h, h_phi_1, ratios, p, variant, corrector=True)
            weights = plan[j]
            assert (len(weights.predictor), len(weights.corrector)) == (p - 1, p)
            expected = [sigmas[j + 1] / sigmas[j], h_phi_1, b_h, *ratios, *predictor, *corrector]
            got = [weights.scale, weights.h_phi_1, weights.b_h, *weights.ratios, *weights.predictor, *weights.corrector]
            assert [float(v).hex() for v in got] == [float(v).hex() for v in expected], (order, num_steps, j)


def test_step_scalars_are_the_per_step_values_bit_for_bit():
    # The stochastic samplers' per-step scalars, computed once for all steps (_StepScalars), must
    # equal what each step computes on its 0-dim levels, to the last bit.
    to_float32 = lambda sigma: torch.as_tensor(sigma).to(torch.float32)  # noqa: E731  (a rounding round_sigma)
    functions = [fewstep._euler_ancestral_scalars, fewstep._dpmpp_sde_scalars(torch.as_tensor),
                 fewstep._dpmpp_sde_scalars(to_float32), fewstep._dpmpp2m_sde_scalars(eta=1.0)]
    uniform = with_zero(torch.linspace(3.0, 0.1, 7, dtype=torch.float64))
    for scalars, sigmas in itertools.product(functions, (edm_sigmas(4), edm_sigmas(18), uniform)):
        table = fewstep._StepScalars(sigmas, scalars)
        for i in range(len(sigmas) - 2):
            expected = scalars(sigmas[i], sigmas[i + 1])
            assert [float(v).hex() for v in table[i]] == [float(v).hex() for v in expected], (scalars, i)


def test_stochastic_samplers_sample_the_data_distribution():
    # Gaussian data: after many steps, samples have the data's per-channel mean and std (Euler
    # ancestral is weakly first order: its std is 6% low at 96 steps, 2% at 192).
    gauss = Gaussian()
    n = 4000
    gen = torch.Generator().manual_seed(0)
    randn_like = lambda x: torch.randn(x.shape, generator=gen, dtype=x.dtype)  # noqa: E731
    z = randn_like(torch.zeros(n, 4, 1, 1, dtype=torch.float64))
    sigmas = edm_sigmas(192, 0.002, 80.0)
    for name in STOCHASTIC:
        out = SOLVERS[name](gauss, z, sigmas, randn_like)
        mean, std = out.mean(dim=(0, 2, 3)), out.std(dim=(0, 2, 3))
        torch.testing.assert_close(mean, gauss.mu.flatten(), atol=4 * 1.0 / math.sqrt(n), rtol=0)
        torch.testing.assert_close(std, gauss.s.flatten(), rtol=0.045, atol=0.004)
        ode = SOLVERS['dpmpp2m'](gauss, z, sigmas)
        assert (out - ode).abs().mean() > 0.01  # the noise really changes the path


def test_ancestral_levels():
    down, up = ancestral_levels(2.0, 1.0)
    assert math.isclose(down.item() ** 2 + up.item() ** 2, 1.0)
    assert math.isclose(up.item(), math.sqrt(1.0 * (4 - 1) / 4))

#----------------------------------------------------------------------------
# Against k-diffusion.


class Replay:
    """randn_like that records its draws; `sampler(sigma, sigma_next)` replays them in order."""

    def __init__(self, seed=5):
        self.gen, self.draws, self.used = torch.Generator().manual_seed(seed), [], 0

    def randn_like(self, x):
        self.draws.append(torch.randn(x.shape, generator=self.gen, dtype=x.dtype))
        return self.draws[-1]

    def sampler(self, sigma, sigma_next):
        self.used += 1
        return self.draws[self.used - 1]


PEER_GRIDS = [edm_sigmas(10), edm_sigmas(5, 0.05, 20), with_zero(noise_levels('vp', 7, 0.002, 80)),
              with_zero(reference_grid('iddpm', 0.002, 81)[::97])]


@pytest.mark.parametrize('sigmas', PEER_GRIDS, ids=['edm10', 'edm5', 'vp7', 'iddpm-grid'])
@pytest.mark.parametrize('name, peer, kwargs', [('dpmpp3m-ref', 'sample_dpmpp_3m_sde', dict(eta=0.0)),
                                                 ('euler_a', 'sample_euler_ancestral', {}),
                                                 ('dpmpp-sde', 'sample_dpmpp_sde', {}),
                                                 ('dpmpp2m-sde', 'sample_dpmpp_2m_sde', dict(solver_type='midpoint'))])
def test_equals_k_diffusion(sigmas, name, peer, kwargs):
    sampling = kdiffusion_sampling()
    if sampling is None:
        pytest.skip('k-diffusion is not installed (pip install --no-deps k-diffusion)')
    mix, z = Mixture(), latents(4, (3, 4, 4), seed=1)
    replay = Replay()
    ours = SOLVERS[name](mix, z, sigmas, replay.randn_like)
    expected = getattr(sampling, peer)(lambda x, sigma: mix(x, sigma), z * sigmas[0], sigmas, disable=True,
                                       noise_sampler=replay.sampler, **kwargs)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    assert replay.used == len(replay.draws) and (name == 'dpmpp3m-ref') == (not replay.draws)
    assert ours.abs().max() > 0.3


def test_corrected_dpmpp3m_differs_from_k_diffusion():
    sampling = kdiffusion_sampling()
    if sampling is None:
        pytest.skip('k-diffusion is not installed (pip install --no-deps k-diffusion)')
    mix, z, sigmas = Mixture(), latents(4, (3, 4, 4), seed=1), edm_sigmas(10)
    expected = sampling.sample_dpmpp_3m_sde(lambda x, sigma: mix(x, sigma), z * sigmas[0], sigmas, disable=True, eta=0.0,
                                            noise_sampler=lambda a, b: None)
    assert (SOLVERS['dpmpp3m'](mix, z, sigmas) - expected).abs().max() > 1e-4

#----------------------------------------------------------------------------
# Evaluations, epsilon scaling, time shift, per-seed noise.


@pytest.mark.parametrize('name', NEW)
@pytest.mark.parametrize('num_steps', [2, 3, 5, 12])
def test_evaluation_counts(name, num_steps):
    log = StepLog(Mixture())
    kwargs = dict(randn_like=torch.randn_like) if name in STOCHASTIC else {}
    SOLVERS[name](log, latents(2, (1, 2, 2)), edm_sigmas(num_steps), **kwargs)
    assert len(log.calls) == evaluations(name, num_steps) == SamplerOptions(num_steps=num_steps, solver=name).nfe
    assert log.calls[-1][0] == num_steps - 1


@pytest.mark.parametrize('name', NEW)
def test_eps_scaling_and_time_shift_compose(net, name):
    options = dict(num_steps=6, solver=name)

    def run(**extra):
        lat, labels, noise = draw(net, [0, 1, 2])
        return Sampler(net, SamplerOptions(**options, **extra))(lat, labels, noise.randn_like)
    base = run()
    assert torch.equal(base, run(eps_scaler=1.0)) and torch.equal(base, run(ts_window=0))
    assert not torch.equal(base, run(eps_scaler=1.02))
    assert not torch.equal(base, run(ts_window=40, ts_cutoff=0.1))


@pytest.mark.parametrize('name', NEW)
def test_time_shift_per_sample_equals_alone(name):
    mix, sigmas = Mixture(), edm_sigmas(8)
    ts = TimeShift(reference_grid('edm', 0.002, 80), 60, 0.3, signal_var=mix.a ** 2 + mix.s ** 2)
    z = latents(4, (3, 4, 4), seed=3) * torch.tensor([1.0, 0.9, 1.1, 1.25], dtype=torch.float64).reshape(-1, 1, 1, 1)
    noise = SeedNoise(range(4))
    shifted = SOLVERS[name](mix, z, sigmas, noise.randn_like, time_shift=ts)
    assert not torch.equal(shifted, SOLVERS[name](mix, z, sigmas, SeedNoise(range(4)).randn_like))
    for n in range(4):
        alone = SOLVERS[name](mix, z[n:n + 1], sigmas, SeedNoise([n]).randn_like, time_shift=ts)
        torch.testing.assert_close(alone[0], shifted[n], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('name', STOCHASTIC)
def test_stochastic_images_depend_only_on_their_seed(tmp_path, net, name):
    options = SamplerOptions(num_steps=5, solver=name)
    seeds = list(range(6))
    for batch in (1, 4, 6):
        generate.generate_images(net, seeds, str(tmp_path / f'b{batch}'), options, max_batch_size=batch, progress=False)
    import PIL.Image
    for seed in seeds:
        images = [np.asarray(PIL.Image.open(tmp_path / f'b{b}' / f'{seed:06d}.png'), dtype=np.int64) for b in (1, 4, 6)]
        assert all(np.abs(images[0] - other).max() <= 1 for other in images[1:])
    # ... and on the seed: other seeds, other noise; the same latents with other noise differ too.
    lat, labels, _ = draw(net, [0, 1])
    sampler = Sampler(net, options)
    a = sampler(lat, labels, SeedNoise([0, 1]).randn_like)
    assert torch.equal(a, sampler(lat, labels, SeedNoise([0, 1]).randn_like))
    assert not torch.allclose(a, sampler(lat, labels, SeedNoise([7, 8]).randn_like))


def test_bad_arguments_are_refused():
    mix, z = Mixture(), latents(1, (1, 2, 2))
    with pytest.raises(ValueError, match='strictly decreasing'):
        SOLVERS['unipc-bh2'](mix, z, torch.tensor([10.0, 1.0, 1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match='order'):
        SOLVERS['unipc-bh1'](mix, z, edm_sigmas(4), order=4)
    with pytest.raises(SamplerOptionError, match='--order applies'):
        SamplerOptions(solver='ipndm', order=2).check()
    with pytest.raises(SamplerOptionError, match='--S_churn applies'):
        SamplerOptions(solver='euler_a', S_churn=1).check()

#----------------------------------------------------------------------------
# --nfe and schedule files.


class CountingNet(torch.nn.Module):
    """Counts forward calls of the wrapped network (one per batch evaluation)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0
        for name in ('img_resolution', 'img_channels', 'label_dim', 'sigma_min', 'sigma_max', 'sigma_data'):
            setattr(self, name, getattr(inner, name))

    def round_sigma(self, sigma):
        return self.inner.round_sigma(sigma)

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


@pytest.mark.parametrize('nfe', [2, 3, 4, 5, 6, 7, 8, 10, 12, 20])
def test_nfe_spends_exactly_n_evaluations(net, nfe):
    counting = CountingNet(net)
    options = nfe_rule.options_for(nfe)
    lat, labels, noise = draw(net, [0, 1])
    Sampler(counting, options)(lat, labels, noise.randn_like)
    assert counting.calls == nfe == options.nfe
    assert options.sigma_min is not None and options.sigma_min > 0.002  # the rule ends later than EDM's default


def test_nfe_on_the_command_line(tmp_path, monkeypatch):
    path = tmp_path / 'net.pkl'
    with open(path, 'wb') as f:
        pickle.dump(dict(ema=tiny_net(label_dim=3), loss_fn=None), f)
    calls = []
    forward = networks.EDMPrecond.forward
    monkeypatch.setattr(networks.EDMPrecond, 'forward', lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    for nfe in (4, 7):
        calls.clear()
        out = tmp_path / f'n{nfe}'
        result = CliRunner().invoke(generate.main, [f'--network={path}', f'--outdir={out}', '--seeds=0-1', '--batch=2',
                                                    '--device=cpu', f'--nfe={nfe}'], prog_name='generate.py')
        assert result.exit_code == 0, result.output
        assert len(calls) == nfe and f'({nfe} evaluations each)' in result.output and f'--nfe={nfe}: ' in result.output
        record = json.load(open(out / generate.OPTIONS_RECORD))
        expected = nfe_rule.recommend(nfe)
        assert record['chosen_by'] == f'--nfe={nfe}' and record['solver'] == expected['solver']
        assert record['sigma_min'] == expected['sigma_min']


def test_explicit_options_override_the_rule():
    from samplers.cli_options import options_from_cli
    import click

    @click.command()
    @generate.sampler_options()
    def cmd(**kwargs):
        click.echo(json.dumps({k: v for k, v in vars(options_from_cli(kwargs)).items() if k in ('solver', 'order', 'sigma_min', 'num_steps', 'rho')}))
    run = lambda *args: json.loads(CliRunner().invoke(cmd, list(args), catch_exceptions=False).output)  # noqa: E731
    rule = nfe_rule.recommend(6)
    assert run('--nfe=6') == dict(num_steps=6, sigma_min=rule['sigma_min'], rho=7.0, solver=rule['solver'], order=rule['order'])
    assert run('--nfe=6', '--solver=dpmpp2m') == dict(num_steps=6, sigma_min=rule['sigma_min'], rho=7.0, solver='dpmpp2m', order=None)
    assert run('--nfe=6', '--solver=unipc-bh1')['order'] is None  # the rule's order belongs to its solver
    assert run('--nfe=6', '--sigma_min=0.002')['sigma_min'] == 0.002
    assert run('--nfe=6', '--solver=deis', '--order=2')['order'] == 2
    assert run('--steps=6') == dict(num_steps=6, sigma_min=None, rho=7.0, solver='heun', order=None)  # no --nfe: as before


def schedule_doc(levels, solver='unipc-bh2', order=3):
    return dict(format=SCHEDULE_FORMAT, nfe=len(levels), solver=solver, order=order, levels=levels)


def test_schedule_file_is_used(tmp_path, net):
    path = tmp_path / 's.json'
    path.write_text(json.dumps(schedule_doc([80.0, 5.0, 0.7, 0.1])))
    options = nfe_rule.options_for(4, schedule=read_schedule(path))
    sampler = Sampler(net, options)
    assert sampler.sigmas.tolist() == [80.0, 5.0, 0.7, 0.1, 0.0] and options.nfe == 4
    with pytest.raises(SamplerOptionError, match='searched for 4'):
        nfe_rule.options_for(5, schedule=read_schedule(path))
    result = CliRunner().invoke(generate.main, [f'--outdir={tmp_path / "o"}', '--seeds=0', f'--schedule={path}', '--sigma_min=0.1'],
                                prog_name='generate.py')
    assert result.exit_code == 1 and result.output.count('\n') == 1, result.output  # the levels come from one place only


@pytest.mark.parametrize('text, message', [
    ('{', 'not valid JSON'), ('[]', 'not a schedule file'), (json.dumps(schedule_doc([1.0, 2.0])), 'strictly decreasing'),
    (json.dumps(schedule_doc([1.0, -1.0])), 'strictly decreasing'), (json.dumps(dict(schedule_doc([1.0]), nfe=True)), '"nfe"'),
    (json.dumps(dict(schedule_doc([1.0]), solver=3)), '"solver"'), (' ' * (2 << 20), 'more than the 1048576'),
])
def test_bad_schedule_files(tmp_path, text, message):
    path = tmp_path / 'bad.json'
    path.write_text(text)
    with pytest.raises(ScheduleError, match=message):
        read_schedule(path)
    result = CliRunner().invoke(generate.main, [f'--outdir={tmp_path / "o"}', '--seeds=0', f'--schedule={path}'], prog_name='generate.py')
    assert result.exit_code == 1 and result.output.startswith('Error: ') and result.output.count('\n') == 1, result.output
    assert not (tmp_path / 'o').exists()


def test_check_schedule_accepts_a_written_document():
    assert check_schedule(schedule_doc([3.0, 1.0]))['levels'] == [3.0, 1.0]

#----------------------------------------------------------------------------
# The schedule search.


def test_dynamic_programme_finds_the_exhaustive_optimum():
    # Costs from Gaussian data with its exact ODE (any costs would do; these are the real kind).
    gauss, z = Gaussian(), latents(6, (4, 1, 1), seed=2)
    grid = fine_grid(12, 0.01, 80.0)
    costs, ends, final = reference_costs(gauss, z, grid, substeps=16)
    exact = gauss(gauss.exact(z * grid[0], grid[0], grid[-1]), grid[-1])
    assert (final - exact).abs().max() < 1e-3  # the reference trajectory is accurate
    for n in (2, 3, 4, 5):
        path, total = best_path(costs, ends, n)
        brute = min((sum(costs[a, b] for a, b in zip((0,) + rest, rest)) + ends[((0,) + rest)[-1]], (0,) + rest)
                    for rest in itertools.combinations(range(1, 12), n - 1))
        assert path == list(brute[1]) and math.isclose(total, brute[0], rel_tol=1e-12)


def test_dynamic_programme_recovers_a_planted_path():
    size, planted = 10, [0, 3, 4, 8]
    costs = np.full((size, size), 5.0)
    for a, b in zip(planted, planted[1:]):
        costs[a, b] = 1.0
    ends = np.full(size, 5.0)
    ends[8] = 0.5
    assert best_path(costs, ends, 4) == (planted, 3.5)
    with pytest.raises(ValueError):
        best_path(costs, ends, 11)


def test_refinement_recovers_a_known_optimum():
    target = [80.0, 9.0, 1.2, 0.31, 0.04]

    def error(levels):
        assert levels[0] == 80.0 and all(a > b for a, b in zip(levels, levels[1:]))
        return float(sum((math.log(a) - math.log(b)) ** 2 for a, b in zip(levels, target)))
    levels, value, count = refine_levels(error, [80.0, 20.0, 5.0, 1.0, 0.2], sweeps=12)
    assert max(abs(math.log(a / b)) for a, b in zip(levels, target)) < 1e-3 and value < 1e-6
    assert refine_levels(error, [80.0, 20.0, 5.0, 1.0, 0.2], sweeps=12) == (levels, value, count)  # deterministic
    # A floor on the last level, and levels an error refuses (None), are respected.
    floored, _, _ = refine_levels(error, [80.0, 20.0, 5.0, 1.0, 0.2], sweeps=12, lowest=0.1)
    assert floored[-1] > 0.1 and abs(math.log(floored[3] / 0.31)) < 1e-3
    capped, _, _ = refine_levels(lambda lv: None if lv[1] < 15 else error(lv), [80.0, 20.0, 5.0, 1.0, 0.2], sweeps=12)
    assert 15 <= capped[1] < 16


def test_schedule_command_is_deterministic_and_resumes(tmp_path):
    path = tmp_path / 'net.pkl'
    with open(path, 'wb') as f:
        pickle.dump(dict(ema=tiny_net(label_dim=3), loss_fn=None), f)
    args = [f'--network={path}', '--nfe=4', '--seeds=0-3', '--batch=2', '--grid=8', '--substeps=1', '--sweeps=2', '--device=cpu']
    first = CliRunner().invoke(exposure.main, ['schedule', *args, f'--out={tmp_path / "a.json"}'])
    assert first.exit_code == 0, first.output
    doc = json.load(open(tmp_path / 'a.json'))
    assert len(doc['levels']) == 4 and doc['levels'][0] == 80.0 and read_schedule(tmp_path / 'a.json')['nfe'] == 4
    again = CliRunner().invoke(exposure.main, ['schedule', *args, f'--out={tmp_path / "b.json"}'])
    assert json.load(open(tmp_path / 'b.json'))['levels'] == doc['levels'] and again.exit_code == 0
    # Resume: the work folder's batches are reused (a changed cost file changes the result's cost).
    costs = sorted((tmp_path / 'a.json.work').glob('*-costs.npy'))
    assert len(costs) == 2
    np.save(costs[0], np.load(costs[0]) * 0)
    CliRunner().invoke(exposure.main, ['schedule', *args, f'--out={tmp_path / "a.json"}'])
    assert json.load(open(tmp_path / 'a.json'))['search']['path_cost'] != doc['search']['path_cost']
    # The refinement fitted each candidate's levels to its own error, and wrote the best.
    refined = doc['search']['refined']
    assert set(refined) == {'deis-3', 'dpmpp2m'} and all(r['mse'] <= doc['search']['solver_mse'][k] for k, r in refined.items())
    top = min(refined, key=lambda k: refined[k]['mse'])
    assert doc['solver'] + (f'-{doc["order"]}' if doc['order'] else '') == top and doc['levels'] == refined[top]['levels']
    # Its errors are kept per solver: a cached error is reused on resume (a lowered one wins).
    caches = sorted((tmp_path / 'b.json.work').glob('refine-*-dpmpp2m.json'))
    assert len(caches) == 1
    cache = json.load(open(caches[0]))
    key = min(cache, key=lambda k: -1 if cache[k] is None else cache[k])
    cache = {k: (1e-9 if k == key else v) for k, v in cache.items()}
    json.dump(cache, open(caches[0], 'w'))
    CliRunner().invoke(exposure.main, ['schedule', *args, f'--out={tmp_path / "b.json"}'])
    assert json.load(open(tmp_path / 'b.json'))['search']['refined']['dpmpp2m']['mse'] == 1e-9
    assert json.load(open(tmp_path / 'b.json'))['solver'] == 'dpmpp2m'
    assert CliRunner().invoke(exposure.main, ['schedule', *args, '--no-refine', f'--out={tmp_path / "c.json"}']).exit_code == 0
    assert json.load(open(tmp_path / 'c.json'))['search']['refined'] == {}
    result = CliRunner().invoke(generate.main, [f'--network={path}', f'--outdir={tmp_path / "o"}', '--seeds=0-1', '--device=cpu',
                                                f'--schedule={tmp_path / "b.json"}'], prog_name='generate.py')
    assert result.exit_code == 0 and '(4 evaluations each)' in result.output, result.output

def test_schedule_search_ends_at_sigma_min(tmp_path):
    path = tmp_path / 'net.pkl'
    with open(path, 'wb') as f:
        pickle.dump(dict(ema=tiny_net(label_dim=3), loss_fn=None), f)
    args = [f'--network={path}', '--nfe=3', '--seeds=0-1', '--grid=6', '--substeps=1', '--sweeps=1', '--device=cpu']
    result = CliRunner().invoke(exposure.main, ['schedule', *args, '--sigma_min=0.3', f'--out={tmp_path / "s.json"}'])
    assert result.exit_code == 0, result.output
    doc = json.load(open(tmp_path / 's.json'))
    assert min(doc['levels']) >= 0.3 and doc['search']['sigma_min'] == 0.3
    bad = CliRunner().invoke(exposure.main, ['schedule', *args, '--sigma_min=100', f'--out={tmp_path / "t.json"}'])
    assert bad.exit_code != 0 and 'must be below' in bad.output and not (tmp_path / 't.json').exists()

#----------------------------------------------------------------------------
# On an ADM network's respaced grid.


@pytest.mark.parametrize('name', NEW)
def test_on_adm_respaced_levels(name):
    from adm_helpers import tiny_adm
    from test_adm_sampling import SMALL
    adm_net = tiny_adm(SMALL)[0]
    calls = []
    adm_net.register_forward_hook(lambda module, args, output: calls.append(1))
    options = SamplerOptions(solver=name, respacing='ddim6', eps_scaler=1.01, ts_window=3, ts_cutoff=0.5)
    sampler = Sampler(adm_net, options)
    assert sampler.sigmas.tolist()[:-1] == adm_net.sigmas[list(sampler_timesteps(adm_net, 'ddim6'))].flip(0).tolist()
    lat, labels, noise = draw(adm_net, [0, 1])
    out = sampler(lat, labels, noise.randn_like)
    assert len(calls) == options.nfe == evaluations(name, 6) and bool(torch.isfinite(out).all())


def sampler_timesteps(net, respacing):
    from samplers import discrete
    return discrete.respace(net.alpha_bar.cpu().numpy(), respacing).timesteps
