"""The few-step solvers against diffusers' own schedulers (skipped when diffusers is not installed).

Each test runs a diffusers scheduler (bench.peers.run_diffusers_scheduler: diffusers' VP state
x / sqrt(1 + sigma^2), the model returning D or eps) and one of our solvers on the same levels,
latents and denoiser (the closed-form mixture denoiser of test_solvers_multistep), and asserts
equal images in float64. The levels are EDM's Karras levels and diffusers' own (the sigmas of
its default "linspace" timesteps on the linear-beta alpha_bar table), both in float64.
docs/solvers.md (*Checked against diffusers*) lists what agrees, to what precision, and where
the methods differ.
"""

import warnings

import pytest
import torch

from bench.peers import run_diffusers_scheduler
from samplers import SeedNoise, noise_levels, with_zero
from samplers.solvers import SOLVERS
from test_solvers_multistep import Mixture, latents

diffusers = pytest.importorskip('diffusers')
# diffusers 0.42.1 builds its tables with np.array(tensor), which numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')

EXACT = dict(rtol=1e-12, atol=1e-12)


def diffusers_levels(num_steps):
    """The levels diffusers' DPMSolverMultistepScheduler picks for num_steps by default, then 0."""
    scheduler = diffusers.DPMSolverMultistepScheduler()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        scheduler.set_timesteps(num_steps)
    return scheduler.sigmas.to(torch.float64)


# 16 levels: diffusers' lower_order_final rules change at 15 steps.
GRIDS = {'edm10': with_zero(noise_levels('edm', 10, 0.002, 80)), 'edm5': with_zero(noise_levels('edm', 5, 0.05, 20)),
         'edm16': with_zero(noise_levels('edm', 16, 0.002, 80)), 'diffusers8': diffusers_levels(8)}


def images_of(name, sigmas, scheduler, **run):
    """(ours, diffusers' images, D of diffusers' last evaluation) from the same latents."""
    mix, z = Mixture(), latents(4, (3, 4, 4), seed=1)
    ours = SOLVERS[name](mix, z, sigmas, **run.pop('ours', {}))
    theirs, last = run_diffusers_scheduler(scheduler, mix, z, sigmas, **run)
    assert ours.abs().max() > 0.3
    print(f'{name} vs {type(scheduler).__name__}: max |difference| {(ours - theirs).abs().max():.2e}, '
          f'to its last evaluation {(ours - last).abs().max():.2e}')  # pytest -s shows the figures
    return ours, theirs, last


def test_diffusers_levels_are_its_own():
    levels = GRIDS['diffusers8']
    assert levels[-1] == 0 and bool((levels[1:] < levels[:-1]).all()) and len(levels) == 9
    assert 150 < levels[0] < 160  # sigma of timestep 999 of the linear betas 1e-4 .. 0.02

#----------------------------------------------------------------------------
# UniPC: UniPCMultistepScheduler (predict_x0, solver_type bh1 | bh2, its corrector) against
# unipc-bh1 / unipc-bh2 --order=1|2|3.


@pytest.mark.parametrize('grid', GRIDS)
@pytest.mark.parametrize('order', [1, 2, 3])
@pytest.mark.parametrize('variant', ['bh1', 'bh2'])
def test_unipc_equals_diffusers(grid, order, variant):
    scheduler = diffusers.UniPCMultistepScheduler(solver_order=order, solver_type=variant, prediction_type='sample')
    ours, theirs, last = images_of(f'unipc-{variant}', GRIDS[grid], scheduler, ours=dict(order=order))
    # Every step into a positive level agrees: the last evaluation is at the same state ...
    torch.testing.assert_close(ours, last, **EXACT)
    # ... and diffusers' step into sigma = 0 returns it (bh2). With bh1 that step computes
    # B(h) * 0 with B(h) = -h = -inf (its sign) in diffusers 0.42.1, which is NaN (docs/solvers.md).
    if variant == 'bh2' or bool(torch.isfinite(theirs).all()):
        torch.testing.assert_close(ours, theirs, **EXACT)


@pytest.mark.parametrize('order', [1, 2, 3])
def test_unipc_equals_diffusers_with_noise_prediction(order):
    scheduler = diffusers.UniPCMultistepScheduler(solver_order=order, prediction_type='epsilon')
    ours, theirs, _ = images_of('unipc-bh2', GRIDS['edm10'], scheduler, ours=dict(order=order), prediction='epsilon')
    torch.testing.assert_close(ours, theirs, **EXACT)


def test_unipc_corrector_and_order_matter_in_the_comparison():
    # The comparison can tell the methods apart: diffusers without its corrector, or at another
    # order, is far from ours.
    for kwargs in (dict(solver_order=3, disable_corrector=list(range(10))), dict(solver_order=2)):
        scheduler = diffusers.UniPCMultistepScheduler(prediction_type='sample', **kwargs)
        ours, theirs, _ = images_of('unipc-bh2', GRIDS['edm10'], scheduler, ours=dict(order=3))
        assert (ours - theirs).abs().max() > 1e-3

#----------------------------------------------------------------------------
# DPM-Solver++: DPMSolverMultistepScheduler, algorithm_type dpmsolver++.


def dpmsolver(order, **kwargs):
    return diffusers.DPMSolverMultistepScheduler(algorithm_type='dpmsolver++', solver_order=order,
                                                 prediction_type='sample', **kwargs)


@pytest.mark.parametrize('grid', GRIDS)
def test_dpmpp2m_equals_diffusers(grid):
    # diffusers' defaults: solver_type midpoint, lower_order_final, final_sigmas_type zero.
    ours, theirs, _ = images_of('dpmpp2m', GRIDS[grid], dpmsolver(2))
    torch.testing.assert_close(ours, theirs, **EXACT)
    # As diffusers ships it, its step casts the state to float32: equal to float32 rounding.
    _, stock, _ = images_of('dpmpp2m', GRIDS[grid], dpmsolver(2), float64=False)
    torch.testing.assert_close(ours, stock, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize('grid', GRIDS)
def test_dpmpp3m_ref_equals_diffusers_order_3(grid):
    # solver_type heun is the second-order warm-up step that dpmpp3m-ref (k-diffusion) takes,
    # and lower_order_final=False keeps the third order into sigma_{N-1}, as dpmpp3m-ref does.
    ours, theirs, _ = images_of('dpmpp3m-ref', GRIDS[grid], dpmsolver(3, solver_type='heun', lower_order_final=False))
    torch.testing.assert_close(ours, theirs, **EXACT)


def test_dpmpp3m_ref_differs_from_diffusers_defaults_only_where_documented():
    # diffusers' defaults differ in two places: solver_type midpoint is another second-order
    # warm-up step, and lower_order_final takes the step into sigma_{N-1} at second order below
    # 15 steps. From 15 steps on, lower_order_final changes nothing.
    sigmas = GRIDS['edm10']
    ours, _, _ = images_of('dpmpp3m-ref', sigmas, dpmsolver(3, solver_type='heun', lower_order_final=False))
    for kwargs in (dict(solver_type='heun'), dict(lower_order_final=False), {}):
        _, theirs, _ = images_of('dpmpp3m-ref', sigmas, dpmsolver(3, **kwargs))
        assert (ours - theirs).abs().max() > 1e-6, kwargs  # equal would be ~1e-15
    ours, theirs, _ = images_of('dpmpp3m-ref', GRIDS['edm16'], dpmsolver(3, solver_type='heun'))
    torch.testing.assert_close(ours, theirs, **EXACT)

#----------------------------------------------------------------------------
# Stochastic samplers, with the noise our sampler draws.


@pytest.mark.parametrize('grid', GRIDS)
def test_euler_ancestral_equals_diffusers(grid):
    # Our sampler draws per seed (SeedNoise: one generator per image); diffusers' randn_tensor
    # draws one image at a time from a list of generators, so the same seeds give the same noise.
    seeds = [3, 1, 4, 1]
    ours, theirs, _ = images_of('euler_a', GRIDS[grid], diffusers.EulerAncestralDiscreteScheduler(), state='edm',
                                prediction='epsilon', ours=dict(randn_like=SeedNoise(seeds).randn_like),
                                step_kwargs=lambda i, g=[torch.Generator().manual_seed(s) for s in seeds]: dict(generator=g))
    torch.testing.assert_close(ours, theirs, **EXACT)
    assert not torch.allclose(ours, SOLVERS['euler_a'](Mixture(), latents(4, (3, 4, 4), seed=1), GRIDS[grid],
                                                       SeedNoise([5, 6, 7, 8]).randn_like))


@pytest.mark.parametrize('grid', GRIDS)
def test_dpmpp2m_sde_equals_diffusers(grid):
    # sde-dpmsolver++ (midpoint, order 2) is k-diffusion's sample_dpmpp_2m_sde with eta = 1.
    # diffusers takes the noise of step i as variance_noise: our draws, in order; it also draws
    # for the step into 0, where the noise is multiplied by sigma = 0.
    gen, draws = torch.Generator().manual_seed(5), []

    def randn_like(x):
        draws.append(torch.randn(x.shape, generator=gen, dtype=x.dtype))
        return draws[-1]

    sigmas = GRIDS[grid]
    mix, z = Mixture(), latents(4, (3, 4, 4), seed=1)
    ours = SOLVERS['dpmpp2m-sde'](mix, z, sigmas, randn_like)
    assert len(draws) == len(sigmas) - 2
    scheduler = diffusers.DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++', prediction_type='sample')
    noise = lambda i: dict(variance_noise=draws[i] if i < len(draws) else torch.zeros_like(z))  # noqa: E731
    theirs, _ = run_diffusers_scheduler(scheduler, mix, z, sigmas, step_kwargs=noise)
    torch.testing.assert_close(ours, theirs, **EXACT)
    assert (ours - SOLVERS['dpmpp2m'](mix, z, sigmas)).abs().max() > 1e-2


def test_stock_euler_ancestral_agrees_to_float32_rounding():
    # As diffusers ships it, the step casts the state to float32 (~1e-7 here).
    _, stock, _ = images_of('euler_a', GRIDS['edm10'], diffusers.EulerAncestralDiscreteScheduler(), state='edm',
                            prediction='epsilon', ours=dict(randn_like=SeedNoise([0, 1, 2, 3]).randn_like), float64=False,
                            step_kwargs=lambda i, g=[torch.Generator().manual_seed(s) for s in range(4)]: dict(generator=g))
    ours = SOLVERS['euler_a'](Mixture(), latents(4, (3, 4, 4), seed=1), GRIDS['edm10'], SeedNoise(range(4)).randn_like)
    torch.testing.assert_close(ours, stock, rtol=2e-6, atol=2e-6)
