"""samplers/multistep.py: S-PNDM, F-PNDM, DPM-Solver, DPM-Solver++(2M) and DEIS.

Convergence order on Gaussian data against the closed-form ODE solution, parity with
k-diffusion's sample_dpmpp_2m, evaluation counts and levels, epsilon scaling and time shift,
and the options through Sampler, generate_images and the command line.
"""

import itertools
import os

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import generate
from samplers import (Churn, EpsilonScaling, Sampler, SamplerOptionError, SamplerOptions, TimeShift, at_step,
                      noise_levels, reference_grid, with_zero)
from samplers import multistep
from samplers.denoisers import StepDependent
from samplers.solvers import SOLVERS, evaluations, sample_euler
from test_samplers import draw, tiny_net

from bench.peers import kdiffusion_sampling  # noqa: F401  (test_solvers_round2 imports it from here too)

NEW = ('spndm', 'fpndm', 'dpmsolver', 'dpmpp2m', 'deis')
# (solver, keyword arguments) of every variant here.
VARIANTS = [('spndm', {}), ('fpndm', {}), ('dpmpp2m', {})] + [(name, dict(order=k)) for name in ('dpmsolver', 'deis') for k in (1, 2, 3)]
VARIANT_IDS = [name + ''.join(f'-{k}{v}' for k, v in kw.items()) for name, kw in VARIANTS]


@pytest.fixture(scope='module')
def net():
    return tiny_net()


def edm_sigmas(num_steps, sigma_min=0.002, sigma_max=80.0):
    return with_zero(noise_levels('edm', num_steps, sigma_min, sigma_max))

#----------------------------------------------------------------------------
# Data with known denoisers.


class Gaussian:
    """Data y ~ N(mu_c, s_c^2) per channel c: D(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu), and
    the probability-flow ODE moves x(sigma) = mu + (x_T - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_T^2)."""

    mu = torch.tensor([0.3, -0.2, 0.0, 0.5], dtype=torch.float64).reshape(1, 4, 1, 1)
    s = torch.tensor([0.05, 0.2, 0.5, 1.0], dtype=torch.float64).reshape(1, 4, 1, 1)

    @staticmethod
    def _sigma(sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return sigma.reshape(-1, 1, 1, 1) if sigma.ndim else sigma

    def __call__(self, x, sigma, class_labels=None):
        var = self._sigma(sigma) ** 2
        return self.mu + self.s ** 2 / (self.s ** 2 + var) * (x - self.mu)

    def exact(self, x_start, sigma_start, sigma):
        return self.mu + (x_start - self.mu) * ((self.s ** 2 + sigma ** 2) / (self.s ** 2 + sigma_start ** 2)).sqrt()


class Mixture:
    """Data y = +-a + s n per pixel (equal weights): a nonlinear denoiser in closed form."""

    a, s = 0.6, 0.2

    def __call__(self, x, sigma, class_labels=None):
        var = Gaussian._sigma(sigma) ** 2 + self.s ** 2
        logit = 2 * self.a * x / var  # log p(+a | x) - log p(-a | x)
        mean = torch.tanh(0.5 * logit) * self.a
        return mean + self.s ** 2 / var * (x - mean)


def latents(n=8, shape=(4, 1, 1), seed=0):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def gaussian_error(name, kwargs, sigmas, z):
    """Max error of a solver on Gaussian data: against the exact ODE solution at sigma_{N-1},
    followed by the shared last step x_N = D(x; sigma_{N-1})."""
    gauss = Gaussian()
    out = SOLVERS[name](gauss, z, sigmas, **kwargs)
    last = sigmas[-2]
    expected = gauss(gauss.exact(z * sigmas[0], sigmas[0], last), last)
    return (out - expected).abs().max().item()


def fitted_order(name, kwargs, make_sigmas, steps):
    z = latents()
    errors = [gaussian_error(name, kwargs, make_sigmas(n), z) for n in steps]
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0], errors

#----------------------------------------------------------------------------
# Convergence order.

# (solver, kwargs, order on EDM's grid). F-PNDM's fixed Adams-Bashforth weights assume equal
# steps in sigma: on other grids its multistep part is second order (docs/solvers.md).
ORDERS = [('euler', {}, 1), ('heun', {}, 2), ('spndm', {}, 2), ('fpndm', {}, 2), ('dpmpp2m', {}, 2)] + \
         [(name, dict(order=k), k) for name in ('dpmsolver', 'deis') for k in (1, 2, 3)]


@pytest.mark.parametrize('name, kwargs, order', ORDERS, ids=[f'{n}{kw.get("order", "")}' for n, kw, _ in ORDERS])
def test_convergence_order_on_gaussian_data(name, kwargs, order):
    slope, errors = fitted_order(name, kwargs, edm_sigmas, [64, 90, 128, 181, 256])
    print(f'{name} {kwargs}: order {slope:.2f}, errors {errors[0]:.2e} .. {errors[-1]:.2e}')
    assert abs(slope - order) < 0.25, (slope, errors)
    assert errors[-1] < 0.03


def test_dpmsolver_ref_reproduces_the_reference_codes_third_order_slip():
    # Orders 1 and 2 are the same computation; at order 3 the reference code's halved D2 makes
    # the method second order (docs/solvers.md), which the named mode keeps.
    z = latents()
    for order in (1, 2):
        assert gaussian_error('dpmsolver-ref', dict(order=order), edm_sigmas(12), z) == \
            gaussian_error('dpmsolver', dict(order=order), edm_sigmas(12), z)
    slope, errors = fitted_order('dpmsolver-ref', dict(order=3), edm_sigmas, [64, 90, 128, 181, 256])
    assert 1.4 < slope < 2.3, (slope, errors)
    fixed, _ = fitted_order('dpmsolver', dict(order=3), edm_sigmas, [64, 90, 128, 181, 256])
    assert fixed > slope + 0.5


def test_fpndm_is_fourth_order_on_a_grid_uniform_in_sigma():
    uniform = lambda n: with_zero(torch.linspace(2.0, 0.5, n, dtype=torch.float64))  # noqa: E731
    steps = [16, 23, 32, 45]
    fpndm, errors = fitted_order('fpndm', {}, uniform, steps)
    assert fpndm > 3.5, (fpndm, errors)
    spndm, _ = fitted_order('spndm', {}, uniform, steps)
    assert abs(spndm - 2) < 0.25


def test_first_order_variants_are_euler():
    # DPM-Solver-1 and DEIS tAB0 are DDIM, which is an Euler step in sigma.
    z, sigmas, mix = latents(shape=(2, 3, 3)), edm_sigmas(9), Mixture()
    euler = sample_euler(mix, z, sigmas)
    for name in ('dpmsolver', 'deis'):
        torch.testing.assert_close(SOLVERS[name](mix, z, sigmas, order=1), euler, rtol=1e-12, atol=1e-12)

#----------------------------------------------------------------------------
# DPM-Solver++(2M) against k-diffusion.


@pytest.mark.parametrize('sigmas', [edm_sigmas(10), edm_sigmas(4, 0.01, 20),
                                    with_zero(noise_levels('vp', 7, 0.002, 80)),
                                    with_zero(reference_grid('iddpm', 0.002, 81)[::97])],
                         ids=['edm10', 'edm4', 'vp7', 'iddpm-grid'])
def test_dpmpp2m_equals_k_diffusion(sigmas):
    sampling = kdiffusion_sampling()
    if sampling is None:
        pytest.skip('k-diffusion is not installed (pip install --no-deps k-diffusion)')
    mix, z = Mixture(), latents(4, (3, 4, 4), seed=1)
    expected = sampling.sample_dpmpp_2m(lambda x, sigma: mix(x, sigma), z * sigmas[0], sigmas, disable=True)
    ours = SOLVERS['dpmpp2m'](mix, z, sigmas)
    torch.testing.assert_close(ours, expected, rtol=1e-13, atol=1e-13)
    assert ours.abs().max() > 0.3

#----------------------------------------------------------------------------
# Evaluations: how many, at which levels, in which step.


class StepLog(StepDependent):
    """Records (step i, sigma) of every evaluation and the last output."""

    def __init__(self, denoiser):
        self.denoiser, self.calls, self.last = denoiser, [], None

    def at_step(self, i):
        inner = at_step(self.denoiser, i)

        def logged(x, sigma, class_labels=None):
            self.calls.append((i, torch.as_tensor(sigma).clone()))
            self.last = inner(x, sigma, class_labels)
            return self.last
        return logged


def test_deis_plan_has_the_per_step_coefficients_bit_for_bit():
    # _DEISPlan computes the coefficients of all steps at once ([S, Q] quadrature); they must equal
    # what each step computes on its 0-dim levels (deis_coefficients, vp_time), to the last bit.
    levels = with_zero(torch.linspace(3.0, 0.1, 7, dtype=torch.float64))
    times = multistep.vp_time(levels[:-1], multistep._one_level_at_a_time)
    assert [float(t) for t in times] == [float(multistep.vp_time(sigma)) for sigma in levels[:-1]]
    for order, sigmas in itertools.product((1, 2, 3), (edm_sigmas(4), edm_sigmas(18), levels)):
        plan = multistep._DEISPlan(sigmas, order)
        for i in range(len(sigmas) - 2):
            nodes = [multistep.vp_time(sigmas[m]) for m in range(i, max(i - order, -1), -1)]  # newest first
            expected = multistep.deis_coefficients(sigmas[i], sigmas[i + 1], nodes)
            assert [float(c).hex() for c in plan[i]] == [float(c).hex() for c in expected], (order, i)


@pytest.mark.parametrize('name', NEW)
@pytest.mark.parametrize('num_steps', [2, 3, 4, 5, 12])
def test_evaluation_counts_and_levels(name, num_steps):
    sigmas = edm_sigmas(num_steps)
    levels = sigmas.tolist()
    log = StepLog(Mixture())
    out = SOLVERS[name](log, latents(2, (1, 2, 2)), sigmas)
    assert len(log.calls) == evaluations(name, num_steps) == SamplerOptions(num_steps=num_steps, solver=name).nfe
    per_step = [sum(1 for i, _ in log.calls if i == step) for step in range(num_steps)]
    warmup = dict(spndm=[2], fpndm=[4, 4, 4]).get(name, [])[:num_steps - 1]
    assert per_step == warmup + [1] * (num_steps - len(warmup))
    assert [i for i, _ in log.calls] == sorted(i for i, _ in log.calls)
    for i, sigma in log.calls:
        assert sigma.ndim == 0
        midpoint = 0.5 * (levels[i] + levels[i + 1])
        allowed = {levels[i], levels[i + 1]} | ({midpoint} if name == 'fpndm' else set())
        assert sigma.item() in allowed
    assert log.calls[-1][0] == num_steps - 1 and log.calls[-1][1].item() == levels[-2]
    assert torch.equal(out, log.last)  # the step into sigma = 0 is x = D(x; sigma_{N-1})


def test_fpndm_midpoints_pass_through_round_sigma():
    grid = torch.linspace(0.01, 80, 500, dtype=torch.float64)
    rounding = lambda s: grid[(grid.reshape(-1, 1) - torch.as_tensor(s).reshape(1, -1)).abs().argmin(0)].reshape(torch.as_tensor(s).shape)  # noqa: E731
    sigmas = with_zero(rounding(noise_levels('edm', 6, 0.01, 80)))
    log = StepLog(Mixture())
    SOLVERS['fpndm'](log, latents(2, (1, 2, 2)), sigmas, churn=Churn(round_sigma=rounding))
    on_grid = set(grid.tolist())
    assert all(sigma.item() in on_grid for _, sigma in log.calls)
    assert len({sigma.item() for _, sigma in log.calls} - set(sigmas.tolist())) == 3  # one midpoint per RK step


def test_bad_levels_and_arguments_are_refused():
    z, mix = latents(1, (1, 2, 2)), Mixture()
    repeated = torch.tensor([10.0, 1.0, 1.0, 0.1, 0.0], dtype=torch.float64)
    for name in NEW:
        with pytest.raises(ValueError, match='strictly decreasing'):
            SOLVERS[name](mix, z, repeated)
        with pytest.raises(ValueError, match='churn'):
            SOLVERS[name](mix, z, edm_sigmas(4), churn=Churn(S_churn=10))
        # Churn that no level reaches is no churn.
        SOLVERS[name](mix, z, edm_sigmas(4), churn=Churn(S_churn=10, S_min=1000))
    with pytest.raises(ValueError, match='order'):
        SOLVERS['deis'](mix, z, edm_sigmas(4), order=4)

#----------------------------------------------------------------------------
# Epsilon scaling and time shift.


def run(net, seeds=(0, 1, 2), **options):
    lat, labels, noise = draw(net, list(seeds))
    return Sampler(net, SamplerOptions(**options))(lat, labels, noise.randn_like)


@pytest.mark.parametrize('name, kwargs', VARIANTS, ids=VARIANT_IDS)
def test_eps_scaling_and_time_shift_off_are_identical_to_off(net, name, kwargs):
    options = dict(num_steps=6, solver=name, **kwargs)
    base = run(net, **options)
    assert torch.equal(base, run(net, **options, eps_scaler=1.0, eps_scaler_k=0.0))
    assert torch.equal(base, run(net, **options, ts_window=0, ts_cutoff=0.5))
    sampler = Sampler(net, SamplerOptions(**options))
    lat, labels, noise = draw(net, [0, 1, 2])
    grid = reference_grid('edm', 0.002, 80)
    direct = sampler.solver(EpsilonScaling(sampler.denoiser, [1.0] * 6), lat, sampler.sigmas, noise.randn_like, labels,
                            time_shift=TimeShift(grid, 0, 0.5, 0.25))
    assert torch.equal(direct, base)
    # And both change the images when on.
    assert not torch.equal(base, run(net, **options, eps_scaler=1.01))
    assert not torch.equal(base, run(net, **options, ts_window=40, ts_cutoff=0.1))


@pytest.mark.parametrize('name', NEW)
def test_eps_scaling_applies_to_every_evaluation_of_a_step(name):
    # D = 0 makes eps = x / sigma: with lambda_i, step i sees x / (lambda_i sigma), i.e. the
    # same run as an unscaled D_i(x) = x (1 - 1 / lambda_i) at that step.
    lam = [1.3, 0.8, 1.1, 1.05, 0.9, 1.2]
    zero = lambda x, sigma, class_labels=None: torch.zeros_like(x)  # noqa: E731

    class Equivalent(StepDependent):
        def at_step(self, i):
            return lambda x, sigma, class_labels=None: x * (1 - 1 / lam[i])

    sigmas, z = edm_sigmas(6, 0.1, 10), latents(2, (1, 2, 2))
    scaled = SOLVERS[name](EpsilonScaling(zero, lam), z, sigmas)
    torch.testing.assert_close(scaled, SOLVERS[name](Equivalent(), z, sigmas), rtol=1e-13, atol=1e-13)
    assert not torch.allclose(scaled, SOLVERS[name](zero, z, sigmas))


@pytest.mark.parametrize('name, kwargs', VARIANTS, ids=VARIANT_IDS)
def test_time_shift_with_multistep_history(name, kwargs):
    """Shifted steps call the network with per-sample levels between the next level and the
    previous evaluation's, and every sample's image is the one it gets on its own."""
    num_steps, cutoff, window = 8, 0.3, 60
    sigmas, grid = edm_sigmas(num_steps), reference_grid('edm', 0.002, 80)
    levels = sigmas.tolist()
    mix = Mixture()
    ts = TimeShift(grid, window, cutoff, signal_var=mix.a ** 2 + mix.s ** 2)
    z = latents(5, (3, 4, 4), seed=3) * torch.tensor([1.0, 0.9, 1.1, 0.8, 1.25], dtype=torch.float64).reshape(-1, 1, 1, 1)
    log = StepLog(mix)
    shifted = SOLVERS[name](log, z, sigmas, time_shift=ts, **kwargs)
    firsts, previous = {}, None
    for i, sigma in log.calls:
        firsts.setdefault(i, sigma)
    for i in range(num_steps):
        sigma = firsts[i]
        if i >= 1 and levels[i] > cutoff:
            assert sigma.shape == (5,) and bool((sigma > levels[i + 1]).all()) and bool((sigma < previous).all())
        else:
            assert sigma.ndim == 0 and sigma.item() == levels[i]
        previous = sigma
    assert any(len(set(s.tolist())) > 1 for s in firsts.values() if s.ndim)  # samples shifted differently
    assert not torch.equal(shifted, SOLVERS[name](mix, z, sigmas, **kwargs))
    for n in range(5):
        alone = SOLVERS[name](mix, z[n:n + 1], sigmas, time_shift=ts, **kwargs)
        torch.testing.assert_close(alone[0], shifted[n], rtol=1e-12, atol=1e-12)

#----------------------------------------------------------------------------
# Options, generate_images and the command line.


@pytest.mark.parametrize('bad, message', [
    (dict(solver='heun', order=2), '--order applies to --solver=dpmsolver|dpmsolver-ref|deis|unipc-bh1|unipc-bh2, not to heun'),
    (dict(solver='deis', order=4), '--order must be 1, 2 or 3'),
    (dict(solver='dpmpp2m', S_churn=1), '--S_churn applies to --solver=euler|heun'),
    (dict(solver='fpndm', scaling='vp'), '--schedule and --scaling apply'),
    (dict(solver='spndm', schedule='ve'), '--schedule and --scaling apply'),
    (dict(solver='rk4'), 'euler|heun|spndm|fpndm|dpmsolver|dpmpp2m|deis'),
])
def test_option_errors(bad, message):
    with pytest.raises(SamplerOptionError, match=message.replace('|', r'\|')):
        SamplerOptions(**bad).check()


def test_options_nfe_and_order():
    assert [SamplerOptions(num_steps=10, solver=s).nfe for s in ('euler', 'heun', *NEW)] == [10, 19, 11, 19, 10, 10, 10]
    assert SamplerOptions(num_steps=3, solver='fpndm').nfe == 9
    assert SamplerOptions(solver='deis').solver_order == 3 and SamplerOptions(solver='deis', order=1).solver_order == 1


def test_sampler_refuses_levels_that_round_to_the_same():
    iddpm = tiny_net('iDDPMPrecond')
    with pytest.raises(SamplerOptionError, match='distinct noise levels'):
        Sampler(iddpm, SamplerOptions(num_steps=1200, solver='dpmpp2m', disc='edm'))
    Sampler(iddpm, SamplerOptions(num_steps=1200, solver='euler', disc='edm'))


@pytest.mark.parametrize('name, extra', [('spndm', {}), ('fpndm', dict(ts_window=20, ts_cutoff=0.5)),
                                         ('dpmsolver', dict(order=2, eps_scaler=1.01)), ('dpmpp2m', dict(ts_window=20)),
                                         ('deis', dict(eps_scaler_k=0.002, ts_window=20, ts_cutoff=0.5))])
def test_images_do_not_depend_on_the_batch(tmp_path, net, name, extra):
    options = SamplerOptions(num_steps=5, solver=name, **extra)
    seeds = list(range(6))
    for batch in (1, 4, 6):
        generate.generate_images(net, seeds, str(tmp_path / f'b{batch}'), options, max_batch_size=batch, progress=False)
    for seed in seeds:
        files = [tmp_path / f'b{batch}' / f'{seed:06d}.png' for batch in (1, 4, 6)]
        images = [np.asarray(PIL.Image.open(f), dtype=np.int64) for f in files]
        assert all(np.abs(images[0] - other).max() <= 1 for other in images[1:])  # float kernels, as in test_generate


@pytest.mark.parametrize('args, message', [
    (['--solver=heun', '--order=2'], '--order applies to --solver=dpmsolver|dpmsolver-ref|deis'),
    (['--solver=dpmsolver', '--order=0'], '--order must be 1, 2 or 3, got 0'),
    (['--solver=deis', '--S_churn=5'], '--S_churn applies to --solver=euler|heun; deis is deterministic'),
    (['--solver=spndm', '--scaling=vp'], '--schedule and --scaling apply to --solver=euler|heun'),
])
def test_one_line_errors(tmp_path, args, message):
    result = CliRunner().invoke(generate.main, [f'--outdir={tmp_path / "out"}', *args], prog_name='generate.py')
    assert result.exit_code == 1 and result.output.startswith('Error: ') and result.output.count('\n') == 1, result.output
    assert message in result.output
    assert not (tmp_path / 'out').exists()


def test_command_line_runs_every_solver(tmp_path):
    import pickle
    path = tmp_path / 'net.pkl'
    with open(path, 'wb') as f:
        pickle.dump(dict(ema=tiny_net(label_dim=3), loss_fn=None), f)
    for args in (['--solver=spndm'], ['--solver=fpndm'], ['--solver=dpmsolver', '--order=2'], ['--solver=dpmpp2m'],
                 ['--solver=deis', '--order=3', '--eps_scaler=1.005', '--ts_window=10']):
        out = tmp_path / args[0][9:]
        result = CliRunner().invoke(generate.main, [f'--network={path}', f'--outdir={out}', '--seeds=0-1', '--steps=4',
                                                    '--device=cpu', *args], prog_name='generate.py')
        assert result.exit_code == 0, result.output
        nfe = SamplerOptions(num_steps=4, solver=args[0][9:]).nfe
        assert f'({nfe} evaluations each)' in result.output and len(os.listdir(out)) == 3  # 2 PNGs + options record
