"""samplers/: EDM's samplers, epsilon scaling and time shift, on tiny networks and on
synthetic denoisers with known outputs."""

import math

import numpy as np
import pytest
import torch

from samplers import (Churn, EpsilonScaling, Sampler, SamplerOptionError, SamplerOptions, SeedNoise, TimeShift,
                      at_step, eps_scalers, latents_and_labels, noise_levels, reference_grid, sample_euler,
                      sample_heun, select_sigma, with_zero)
from samplers import schedules
from networks import edm as networks


def tiny_net(precond='EDMPrecond', label_dim=0, channels=3, resolution=8, seed=0):
    """A small random EDM network whose output depends on its input (last layers are not zero)."""
    torch.manual_seed(seed)
    unet = dict(model_type='SongUNet', model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    net = getattr(networks, precond)(img_resolution=resolution, img_channels=channels, label_dim=label_dim, **unet)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return net.eval().requires_grad_(False)


@pytest.fixture(scope='module')
def net():
    return tiny_net()


def draw(net, seeds, class_idx=None):
    noise = SeedNoise(seeds)
    latents, labels = latents_and_labels(noise, [net.img_channels, net.img_resolution, net.img_resolution],
                                         net.label_dim, class_idx)
    return latents, labels, noise


def run(net, seeds=(0, 1, 2), **options):
    latents, labels, noise = draw(net, list(seeds))
    return Sampler(net, SamplerOptions(**options))(latents, labels, noise.randn_like)

#----------------------------------------------------------------------------
# EDM Algorithm 2, written out independently.


def algorithm2(net, latents, randn_like, num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0,
               S_churn=0.0, S_min=0.0, S_max=float('inf'), S_noise=1.0):
    steps = []
    for i in range(num_steps):
        a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
        steps.append((a + i / (num_steps - 1) * (b - a)) ** rho)
    steps.append(0.0)
    x = latents.double() * steps[0]
    for i in range(num_steps):
        t, t_next = steps[i], steps[i + 1]
        gamma = min(S_churn / num_steps, 2 ** 0.5 - 1) if S_min <= t <= S_max else 0.0
        t_hat = t * (1 + gamma)
        x_hat = x + math.sqrt(t_hat ** 2 - t ** 2) * S_noise * randn_like(x)
        d = (x_hat - net(x_hat, torch.tensor(t_hat, dtype=torch.float64)).double()) / t_hat
        x = x_hat + (t_next - t_hat) * d
        if i < num_steps - 1:
            d2 = (x - net(x, torch.tensor(t_next, dtype=torch.float64)).double()) / t_next
            x = x_hat + (t_next - t_hat) * (d + d2) / 2
    return x


@pytest.mark.parametrize('churn', [dict(), dict(S_churn=20, S_min=0.05, S_max=20, S_noise=1.007)])
def test_sampler_is_edm_algorithm_2(net, churn):
    seeds = [0, 1, 2, 3]
    latents, _, noise = draw(net, seeds)
    expected = algorithm2(net, latents, noise.randn_like, num_steps=6, **churn)
    latents, _, noise = draw(net, seeds)
    images = Sampler(net, SamplerOptions(num_steps=6, **churn))(latents, None, noise.randn_like)
    assert images.dtype == torch.float64
    torch.testing.assert_close(images, expected, rtol=1e-12, atol=1e-12)
    assert images.std() > 0.3  # a real image-like output, not a constant


def test_churn_changes_images_and_euler_differs_from_heun(net):
    base = run(net, num_steps=5)
    assert not torch.equal(base, run(net, num_steps=5, S_churn=10))
    assert not torch.equal(base, run(net, num_steps=5, solver='euler'))
    # No churn at all: the per-step noise draws cannot matter.
    assert torch.equal(base, run(net, num_steps=5, S_churn=10, S_min=1000))


def test_euler_and_heun_evaluation_counts(net):
    calls = []

    def D(x, sigma, labels):
        calls.append(float(torch.as_tensor(sigma).max()))
        return net(x, sigma, labels).double()

    latents, _, noise = draw(net, [0])
    sigmas = with_zero(noise_levels('edm', 4, 0.002, 80))
    sample_euler(D, latents, sigmas, noise.randn_like)
    assert len(calls) == 4
    calls.clear()
    sample_heun(D, latents, sigmas, noise.randn_like)
    assert len(calls) == 7 and calls[-1] == pytest.approx(0.002)  # no correction after the last step
    assert SamplerOptions(num_steps=4).nfe == 7 and SamplerOptions(num_steps=4, solver='euler').nfe == 4

#----------------------------------------------------------------------------
# Schedules.


def test_discretizations():
    edm = noise_levels('edm', 5, 0.002, 80, rho=7)
    i = np.arange(5) / 4
    np.testing.assert_allclose(edm.numpy(), (80 ** (1 / 7) + i * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7, rtol=1e-14)
    for disc in ('edm', 'vp', 've'):
        lo, hi = schedules.default_sigma_range(disc)
        levels = noise_levels(disc, 9, lo, hi)
        assert levels.dtype == torch.float64 and len(levels) == 9
        assert bool((levels[1:] < levels[:-1]).all())
        assert levels[0].item() == pytest.approx(hi, rel=1e-12) and levels[-1].item() == pytest.approx(lo, rel=1e-12)
    assert schedules.default_sigma_range('vp')[1] == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 + 0.1) - 1))
    ve = noise_levels('ve', 5, 0.02, 100)
    np.testing.assert_allclose((ve[1:] / ve[:-1]).numpy(), (0.02 / 100) ** 0.25, rtol=1e-12)  # geometric
    iddpm = noise_levels('iddpm', 6, 0.002, 81)
    grid = reference_grid('iddpm', 0.002, 81)
    assert set(iddpm.tolist()) <= set(grid.tolist()) and iddpm[0] == grid[0] and iddpm[-1] == grid[-1]
    assert 900 < len(grid) <= 1000 and bool((grid[1:] < grid[:-1]).all())
    assert len(reference_grid('edm', 0.002, 80)) == 1000


def test_sigma_range_defaults_and_clipping():
    vp_net = tiny_net('VPPrecond')
    sampler = Sampler(vp_net, SamplerOptions(num_steps=4))
    assert sampler.sigmas[0].item() == pytest.approx(min(80, vp_net.sigma_max))
    assert sampler.sigmas[-2].item() == pytest.approx(max(0.002, vp_net.sigma_min))
    iddpm_net = tiny_net('iDDPMPrecond')
    levels = Sampler(iddpm_net, SamplerOptions(num_steps=5, disc='edm')).sigmas[:-1]
    assert set(levels.tolist()) <= set(iddpm_net.u.double().tolist())  # rounded to the net's levels
    with pytest.raises(SamplerOptionError, match='not below'):
        Sampler(tiny_net(), SamplerOptions(sigma_min=90))


@pytest.mark.parametrize('bad, message', [
    (dict(num_steps=1), 'at least 2'),
    (dict(sigma_min=2.0, sigma_max=1.0), 'below'),
    (dict(solver='rk4'), 'euler|heun'),
    (dict(disc='cosine'), 'edm|vp|ve|iddpm'),
    (dict(eps_scaler=1.0, eps_scaler_k=-0.5, num_steps=4), 'positive'),
    (dict(ts_window=-1), 'ts_window'),
])
def test_option_errors(bad, message):
    with pytest.raises(SamplerOptionError, match=message):
        SamplerOptions(**bad).check()

#----------------------------------------------------------------------------
# Randomness per seed.


def test_noise_depends_only_on_the_seed():
    together = SeedNoise([7, 3, 11])
    a = together.randn([3, 2, 4, 4])
    labels = together.randint(10, size=[3])
    step = together.randn_like(a.double())
    for row, seed in enumerate([7, 3, 11]):
        gen = torch.Generator().manual_seed(seed)
        assert torch.equal(a[row], torch.randn([2, 4, 4], generator=gen))
        assert labels[row] == torch.randint(10, size=[], generator=gen)
        assert torch.equal(step[row], torch.randn([2, 4, 4], generator=gen, dtype=torch.float64))
    assert torch.equal(SeedNoise([(1 << 32) + 5]).randn([1, 3]), SeedNoise([5]).randn([1, 3]))


def test_noise_rows_are_torch_randn_of_each_generator():
    # Rows of fewer than 16, exactly 16 and an odd number above 16 values (torch's normal
    # sampler has a scalar path, a vectorised one and a tail), float32 and float64.
    for shape in ([3, 5], [3, 4, 4], [3, 5, 7]):
        for dtype in (torch.float32, torch.float64):
            noise = SeedNoise([2, 9, 4])
            first, second = noise.randn(shape, dtype=dtype), noise.randn(shape, dtype=dtype)
            for row, seed in enumerate([2, 9, 4]):
                gen = torch.Generator().manual_seed(seed)
                assert torch.equal(first[row], torch.randn(shape[1:], generator=gen, dtype=dtype))
                assert torch.equal(second[row], torch.randn(shape[1:], generator=gen, dtype=dtype))


def test_class_override_keeps_the_draw_order():
    noise_a, noise_b = SeedNoise([4, 5]), SeedNoise([4, 5])
    lat_a, lab_a = latents_and_labels(noise_a, [1, 2, 2], 10)
    lat_b, lab_b = latents_and_labels(noise_b, [1, 2, 2], 10, class_idx=3)
    assert torch.equal(lat_a, lat_b) and lab_b.argmax(1).tolist() == [3, 3] and lab_a.sum() == 2
    assert torch.equal(noise_a.randn([2, 3]), noise_b.randn([2, 3]))  # labels were drawn in both

#----------------------------------------------------------------------------
# Epsilon scaling.


def test_eps_scalers_formula():
    assert eps_scalers(4, b=1.01, k=0.002) == pytest.approx([1.016, 1.014, 1.012, 1.01])


def test_eps_scaling_on_a_known_denoiser():
    D = lambda x, sigma, labels=None: 0.25 * x  # noqa: E731
    wrapped = EpsilonScaling(D, [2.0, 1.0])
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(at_step(wrapped, 0)(x, torch.tensor(1.0)), x - (x - 0.25 * x) / 2.0, rtol=1e-15, atol=0)
    assert at_step(wrapped, 1) is D
    with pytest.raises(TypeError):
        wrapped(x, torch.tensor(1.0))


@pytest.mark.parametrize('solver', ['euler', 'heun'])
def test_eps_scaling_scales_every_evaluation_of_a_step(solver):
    # D = 0: eps = x / sigma, so each evaluation of step i gives dx/dsigma = x / (lambda_i sigma).
    N, b, k = 4, 1.05, 0.02
    lam = eps_scalers(N, b, k)
    sigmas = with_zero(noise_levels('edm', N, 0.5, 10))
    D = EpsilonScaling(lambda x, sigma, labels=None: torch.zeros_like(x), lam)
    latents = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    out = (sample_euler if solver == 'euler' else sample_heun)(D, latents, sigmas)
    s = sigmas.tolist()
    factor = s[0]
    for i in range(N):
        h = s[i + 1] - s[i]
        d_cur = 1 / (lam[i] * s[i])
        if solver == 'heun' and i < N - 1:
            factor *= 1 + h * (0.5 * d_cur + 0.5 * (1 + h * d_cur) / (lam[i] * s[i + 1]))
        else:
            factor *= 1 + h * d_cur
    torch.testing.assert_close(out, latents * factor, rtol=1e-12, atol=0)


def test_eps_scaler_one_is_identical_to_off(net):
    base = run(net, num_steps=5, S_churn=5)
    assert torch.equal(base, run(net, num_steps=5, S_churn=5, eps_scaler=1.0, eps_scaler_k=0.0))
    latents, _, noise = draw(net, [0, 1, 2])
    sampler = Sampler(net, SamplerOptions(num_steps=5, S_churn=5))
    wrapped = EpsilonScaling(sampler.denoiser, [1.0] * 5)
    assert torch.equal(sample_heun(wrapped, latents, sampler.sigmas, noise.randn_like, churn=sampler.churn), base)
    assert not torch.equal(base, run(net, num_steps=5, S_churn=5, eps_scaler=1.005))

#----------------------------------------------------------------------------
# Time shift.


def states_with_variance(variances, shape=(3, 8, 8), seed=0):
    """Samples whose unbiased pixel variance is exactly the given values."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(variances), *shape, generator=gen, dtype=torch.float64)
    x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / x.flatten(1).std(dim=1).reshape(-1, 1, 1, 1)
    return x * torch.tensor(variances, dtype=torch.float64).sqrt().reshape(-1, 1, 1, 1)


def brute_force_choice(v, sigma_hat, sigma_next, grid, window, signal_var):
    grid = grid.tolist()
    center = min(range(len(grid)), key=lambda j: (abs(grid[j] - sigma_hat), j))
    candidates = [sigma_hat] + [g for j, g in enumerate(grid) if abs(j - center) <= window and g > sigma_next]
    return min(candidates, key=lambda c: abs(v - (signal_var + c * c)))


def test_time_shift_picks_the_analytic_optimum_in_the_window():
    grid = reference_grid('edm', 0.002, 80)
    sigma_hat, sigma_next, s = grid[400].item(), grid[600].item(), 0.25
    optimum = torch.tensor([1.0, 0.9, 1.1, 0.7, 1.5]) * sigma_hat  # levels whose variance the states have
    variances = (s + optimum ** 2).tolist()
    x = states_with_variance(variances)
    for window in (3, 30, 150):
        chosen = select_sigma(x, sigma_hat, sigma_next, grid, window, s)
        expected = [brute_force_choice(v, sigma_hat, sigma_next, grid, window, s) for v in variances]
        assert chosen.tolist() == pytest.approx(expected, rel=1e-12)
        positions = [int((grid - c).abs().argmin()) for c in chosen.tolist()]
        assert all(abs(p - 400) <= window for p in positions)
    wide = select_sigma(x, sigma_hat, sigma_next, grid, 150, s)
    assert wide[0].item() == sigma_hat  # a state that matches its own level is not moved
    # Inside a wide window the choice is the grid level nearest to the analytic optimum (in variance).
    for c, opt in zip(wide[1:].tolist(), optimum[1:].tolist()):
        gaps = ((grid ** 2 - opt ** 2).abs())
        assert c == pytest.approx(grid[int(gaps.argmin())].item(), rel=1e-12)
    assert len(set(wide.tolist())) == 5  # different variances, different levels
    # Candidates never go down to the next level.
    low = select_sigma(states_with_variance([s + sigma_next ** 2 / 4]), sigma_hat, sigma_next, grid, 999, s)
    assert low.item() > sigma_next


class Recorder:
    """A denoiser that records the sigma of every call."""

    def __init__(self, net):
        self.net, self.sigmas = net, []

    def __call__(self, x, sigma, labels=None):
        self.sigmas.append(torch.as_tensor(sigma).clone())
        return self.net(x, sigma, labels).double()


@pytest.mark.parametrize('solver', [sample_euler, sample_heun])
def test_time_shift_in_the_solver(net, solver):
    latents, _, noise = draw(net, [0, 1, 2, 3])
    sigmas = with_zero(noise_levels('edm', 6, 0.002, 80))
    grid = reference_grid('edm', 0.002, 80)
    cutoff = 1.0
    rec = Recorder(net)
    ts = TimeShift(grid, window=40, cutoff=cutoff, signal_var=0.25)
    shifted = solver(rec, latents, sigmas, noise.randn_like, time_shift=ts)
    per_call = 1 if solver is sample_euler else 2
    levels = sigmas.tolist()
    first_evals = rec.sigmas[::per_call]  # the first evaluation of each step
    assert len(first_evals) == 6
    for i, sigma in enumerate(first_evals):
        if i >= 1 and levels[i] > cutoff:
            assert sigma.shape == (4,)  # per-sample levels reach the network
            assert bool((sigma > levels[i + 1]).all())
            positions = [int((grid - s).abs().argmin()) for s in sigma.tolist()]
            center = int((grid - levels[i]).abs().argmin())
            assert all(abs(p - center) <= 40 or s == levels[i] for p, s in zip(positions, sigma.tolist()))
        else:
            assert sigma.ndim == 0 and sigma.item() == levels[i]
    assert any(len(set(s.tolist())) > 1 for s in first_evals if s.ndim)  # samples were shifted differently
    plain = solver(net_denoiser(net), latents, sigmas, noise.randn_like)
    assert not torch.equal(shifted, plain)
    off = solver(net_denoiser(net), latents, sigmas, noise.randn_like, time_shift=TimeShift(grid, 0, cutoff, 0.25))
    assert torch.equal(off, plain)  # window 0 is bit-identical to no time shift
    above_all = solver(net_denoiser(net), latents, sigmas, noise.randn_like, time_shift=TimeShift(grid, 40, 100, 0.25))
    assert torch.equal(above_all, plain)  # a cutoff above sigma_max never shifts


def net_denoiser(net):
    return lambda x, sigma, labels=None: net(x, sigma, labels).double()


def test_time_shift_window_zero_is_off_in_the_sampler(net):
    assert torch.equal(run(net, num_steps=5, S_churn=3), run(net, num_steps=5, S_churn=3, ts_window=0, ts_cutoff=0.5))
    assert not torch.equal(run(net, num_steps=5), run(net, num_steps=5, ts_window=50, ts_cutoff=0.5))

#----------------------------------------------------------------------------
# Everything together.


@pytest.mark.parametrize('disc', ['edm', 'vp', 've', 'iddpm'])
def test_all_features_compose(net, disc):
    combined = dict(num_steps=5, disc=disc, S_churn=5, eps_scaler=1.01, eps_scaler_k=0.001, ts_window=30, ts_cutoff=0.5)
    for solver in ('euler', 'heun'):
        for scaling in ('none', 'vp'):
            out = run(net, solver=solver, scaling=scaling, **combined)
            assert out.shape == (3, 3, 8, 8) and bool(torch.isfinite(out).all())
            for off in (dict(S_churn=0), dict(eps_scaler=1.0, eps_scaler_k=0.0), dict(ts_window=0)):
                assert not torch.equal(out, run(net, solver=solver, scaling=scaling, **{**combined, **off}))


def test_per_sample_levels_match_scalar_levels(net):
    # The network gives each sample the same output whether sigma is shared or per-sample.
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    shared = net(x, torch.tensor(2.5, dtype=torch.float64))
    per_sample = net(x, torch.full([3], 2.5, dtype=torch.float64))
    torch.testing.assert_close(shared, per_sample, rtol=1e-6, atol=1e-6)


def test_churn_gamma():
    churn = Churn(S_churn=40, S_min=0.05, S_max=50)
    assert churn.gamma(10.0, 256) == pytest.approx(40 / 256)
    assert churn.gamma(60.0, 256) == 0 and churn.gamma(0.01, 256) == 0
    assert Churn(S_churn=1000).gamma(1.0, 10) == pytest.approx(math.sqrt(2) - 1)
