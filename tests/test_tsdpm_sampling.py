"""TS-DPM's samplers (samplers/tsdpm.py) against step-by-step float64 computations written here,
per image with plain numpy, and run_generate.py end to end on a tiny backbone."""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from samplers import tsdpm
from samplers import tsdpm_jobs

T = 1000
BETAS = np.linspace(1e-4, 0.02, T)
TABLES = tsdpm.make_tables(BETAS)
AB = np.cumprod(1 - BETAS.astype(np.float32).astype(np.float64))    # float64 reference table
SHAPE = (3, 4, 4)
HAS_BACKBONES = importlib.util.find_spec('networks.tsdpm') is not None
needs_backbones = pytest.mark.skipif(not HAS_BACKBONES, reason='networks/tsdpm.py (issue 22 part A, branch tsdpm-net) is not merged yet')


def _toy_ab(t, exp):
    return exp(-(1e-4 * t + 0.5 * (0.02 - 1e-4) * t ** 2 / 1000))     # ~ alpha_bar of the linear schedule


def toy_eps(x, t):
    """A per-pixel eps model: the exact eps of N(0, 0.3^2) data plus a timestep-dependent wobble."""
    t = t.reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype)
    a = _toy_ab(t, torch.exp)
    return (1 - a).sqrt() * x / (0.09 * a + 1 - a) + 0.05 * torch.tanh(x) * torch.cos(t / 37)


def ref_eps(x, t):
    a = _toy_ab(t, np.exp)
    return np.sqrt(1 - a) * x / (0.09 * a + 1 - a) + 0.05 * np.tanh(x) * np.cos(t / 37)


def latents(n=3, seed=0, spread=(1.1, 0.95, 1.02)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn([n, *SHAPE], generator=g)
    return x * torch.tensor(spread[:n]).view(-1, 1, 1, 1)


def options(**kw):
    return tsdpm.TSDPMOptions(**kw)

#----------------------------------------------------------------------------
# pnm_solver, one image at a time in float64.


def ref_grid(S, drop_last=True):
    skip = T // S
    ts = list(range(1, T + 1, skip))
    if drop_last:
        ts = ts[:-1]
    nxt = [0] + ts[:-1]
    return ts[::-1], nxt[::-1]


def ref_window(var, j, half, lo_rule=True):
    lo = max(j - half, 0)
    hi = min(j + half, T - 1)
    ks = np.arange(lo, hi + 1)
    return int(ks[np.argmin((var - (1 - AB[ks])) ** 2)])


def ref_ddim(x, t, t_next, e):
    a, b = AB[int(t)], AB[int(t_next)]
    x0 = (x - np.sqrt(1 - a) * e) / np.sqrt(a)
    return np.sqrt(b) * x0 + np.sqrt(1 - b) * e       # the DDIM step the transfer formula equals


def ref_pnm(x, method, S, *, shift=None, scale=None, nor_var=False, eta=0.0, noise=None, shift_first=False,
            drop_last=True, es_everywhere=False):
    """One image [C, H, W] float64. shift = (W, cutoff); scale(k) the ES scale at step k."""
    ts, nxt = ref_grid(S, drop_last)
    hist = []
    for k, (i, j) in enumerate(zip(ts, nxt)):
        target = j
        if shift is not None and (k > 0 or shift_first) and j > shift[1]:
            target = ref_window(np.var(x, ddof=1), j, shift[0] // 2)
        if nor_var:
            x = x * np.sqrt((1 - AB[i]) / np.var(x, ddof=1))
        s = scale(k) if scale is not None and (method in ('euler', 'ddpm') or es_everywhere) else 1.0
        if method == 'euler':
            x = ref_ddim(x, i, target, ref_eps(x, i) / s)
        elif method == 'ddpm':
            e = ref_eps(x, i) / s
            a, b = AB[i], AB[target]
            x0 = (x - np.sqrt(1 - a) * e) / np.sqrt(a)
            c1 = eta * np.sqrt((1 - a / b) * (1 - b) / (1 - a))
            x = np.sqrt(b) * x0 + c1 * noise[k] + np.sqrt(1 - b - c1 ** 2) * e
        elif method == 'improved_euler_solver' or (method == 's_pndm' and not hist):
            e1 = ref_eps(x, i) / s
            e2 = ref_eps(ref_ddim(x, i, target, e1), target) / s
            hist.append(e1)
            x = ref_ddim(x, i, target, (e1 + e2) / 2)
        elif method == 's_pndm':
            hist.append(ref_eps(x, i) / s)
            x = ref_ddim(x, i, target, 1.5 * hist[-1] - 0.5 * hist[-2])
        elif method == 'runge_kutta' or (method == 'f_pndm' and len(hist) < 3):
            mid = (i + target) / 2
            e1 = ref_eps(x, i) / s
            e2 = ref_eps(ref_ddim(x, i, mid, e1), mid) / s
            e3 = ref_eps(ref_ddim(x, i, mid, e2), mid) / s
            e4 = ref_eps(ref_ddim(x, i, target, e3), target) / s
            hist.append(e1)
            x = ref_ddim(x, i, target, (e1 + 2 * e2 + 2 * e3 + e4) / 6)
        else:
            hist.append(ref_eps(x, i) / s)
            x = ref_ddim(x, i, target, (55 * hist[-1] - 59 * hist[-2] + 37 * hist[-3] - 9 * hist[-4]) / 24)
    return x


def run_pnm(method, S, noise=None, **kw):
    it = iter(noise or [])
    x = latents()
    return tsdpm.sample(toy_eps, x, TABLES, options(method=method, sample_speed=S, **kw),
                        randn_like=lambda y: next(it)).double().numpy(), x.double().numpy()


def close(a, b, tol=2e-4):
    return np.abs(a - b).max() < tol * max(1.0, np.abs(b).max())


def test_tables_are_float32_cumprod_with_ab0_one_minus_beta0():
    assert TABLES.alphas_cump.dtype == torch.float32
    assert TABLES.alphas_cump[0].item() == np.float32(1) - np.float32(BETAS[0])
    assert np.allclose(TABLES.alphas_cump.numpy(), AB, rtol=1e-5)


@pytest.mark.parametrize('S', [10, 3, 7, 50])
def test_pnm_grid_drops_the_last_point(S):
    times, nxt = tsdpm.pnm_grid(T, S)
    assert (times, nxt) == ref_grid(S)
    assert (times, nxt) != ref_grid(S, drop_last=False)
    if S == 10:
        assert times == [801, 701, 601, 501, 401, 301, 201, 101, 1] and nxt[-1] == 0


@pytest.mark.parametrize('method', tsdpm.PNM_METHODS)
def test_pnm_methods_match_the_formulas(method):
    noise = [torch.randn([3, *SHAPE], generator=torch.Generator().manual_seed(k)) for k in range(20)]
    got, x = run_pnm(method, 10, noise, eta=0.6)
    for n in range(3):
        ref = ref_pnm(x[n], method, 10, eta=0.6, noise=[z[n].double().numpy() for z in noise])
        assert close(got[n], ref), method
    # A grid that keeps the last point (one more step, from 901) is not TS-DPM's.
    assert not close(got[0], ref_pnm(x[0], method, 10, eta=0.6, noise=[z[0].double().numpy() for z in noise], drop_last=False))


@pytest.mark.parametrize('method', ['euler', 'f_pndm', 'improved_euler_solver'])
def test_pnm_time_shift_moves_the_target_from_the_second_step(method):
    kw = dict(time_shift=True, window_size=40, cut_off_value=300)
    got, x = run_pnm(method, 10, **kw)
    for n in range(3):
        assert close(got[n], ref_pnm(x[n], method, 10, shift=(40, 300)))
    assert not close(got[0], ref_pnm(x[0], method, 10))                                 # the shift matters here
    assert not close(got[0], ref_pnm(x[0], method, 10, shift=(40, 300), shift_first=True))   # not on the first step
    assert not close(got[0], ref_pnm(x[0], method, 10, shift=(80, 300)))                 # half width W // 2, not W


def test_pnm_cutoff_stops_the_shift():
    got, x = run_pnm('euler', 10, time_shift=True, window_size=40, cut_off_value=999 - 1)
    assert close(got[0], ref_pnm(x[0], 'euler', 10))


@pytest.mark.parametrize('es', [dict(step_size=0.01), dict(fix_scale=1.05)])
def test_epsilon_scaling_only_in_euler_and_ddpm(es):
    scale = (lambda k: 1 + 0.01 * k) if 'step_size' in es else (lambda k: 1.05)
    for method in tsdpm.PNM_METHODS:
        noise = [torch.zeros([3, *SHAPE])] * 20
        got, x = run_pnm(method, 10, noise, scale_method=True, **es)
        zeros = [np.zeros(SHAPE)] * 20
        assert close(got[1], ref_pnm(x[1], method, 10, scale=scale, noise=zeros)), method
        if method in tsdpm.SCALED_METHODS:
            assert not close(got[1], ref_pnm(x[1], method, 10, noise=zeros))
        else:   # ES applied in a method that ignores it must not match
            assert not close(got[1], ref_pnm(x[1], method, 10, scale=scale, noise=zeros, es_everywhere=True)), method
    # Without --scale_method the values do nothing.
    got, x = run_pnm('euler', 10, **es)
    assert close(got[0], ref_pnm(x[0], 'euler', 10))


@pytest.mark.parametrize('method', ['euler', 's_pndm'])
def test_nor_var_rescales_before_every_step(method):
    got, x = run_pnm(method, 10, nor_var=True)
    assert close(got[2], ref_pnm(x[2], method, 10, nor_var=True))
    assert not close(got[2], ref_pnm(x[2], method, 10))

#----------------------------------------------------------------------------
# dpm-solver.


def ref_dpm(x, S, shift=None, var_of_x=False, snap=True, gain=1.0):
    log_alpha = 0.5 * np.cumsum(np.log(1 - BETAS.astype(np.float32).astype(np.float64)))
    grid_t = np.arange(1, T + 1) / T
    la = lambda t: np.interp(t, grid_t, log_alpha)
    sig = lambda t: np.sqrt(1 - np.exp(2 * la(t)))
    lam = lambda t: la(t) - np.log(sig(t))
    eps = lambda x, t: gain * ref_eps(x, (t - 1 / T) * 1000)
    ts = np.linspace(1, 1 / T, S + 1, dtype=np.float32).astype(np.float64)
    first = lambda x, s, t, e: np.exp(la(t) - la(s)) * x - sig(t) * np.expm1(lam(t) - lam(s)) * e
    hist = [(ts[0], eps(x, ts[0]))]
    x = first(x, ts[0], ts[1], hist[0][1])
    hist.append((ts[1], eps(x, ts[1])))
    for step in range(2, S + 1):
        t = ts[step]
        if shift is not None:
            n = int((np.float32(t) - np.float32(1 / T)) * np.float32(1000))
            if n > shift[1]:
                n = ref_window(np.var(x if var_of_x else hist[-1][1], ddof=1), n, shift[0] // 2)
            t = n / 1000 + 1 / T if (snap or n > shift[1]) else t
        (t1, e1), (t0, e0) = hist[-2], hist[-1]
        h = lam(t) - lam(t0)
        if step == S and S < 15:
            x = first(x, t0, t, e0)
        else:
            r0 = (lam(t0) - lam(t1)) / h
            x = np.exp(la(t) - la(t0)) * x - sig(t) * np.expm1(h) * (e0 + 0.5 * (e0 - e1) / r0)
        hist.append((t, eps(x, t)))
    return x


@pytest.mark.parametrize('S', [2, 5, 20])
def test_dpm_solver_matches_the_multistep_formulas(S):
    x = latents()
    got = tsdpm.sample(toy_eps, x, TABLES, options(sampler='dpm-solver', sample_speed=S)).double().numpy()
    for n in range(3):
        assert close(got[n], ref_dpm(x[n].double().numpy(), S), 1e-3)


def test_dpm_solver_time_shift_snaps_and_uses_half_the_window():
    x = latents()
    kw = dict(sampler='dpm-solver', sample_speed=8, time_shift=True, window_size=200, cut_off_value=130)
    got = tsdpm.sample(toy_eps, x, TABLES, options(**kw)).double().numpy()
    xs = x.double().numpy()
    assert close(got[0], ref_dpm(xs[0], 8, shift=(200, 130)), 1e-4)
    assert not close(got[0], ref_dpm(xs[0], 8), 1e-4)
    assert not close(got[0], ref_dpm(xs[0], 8, shift=(200, 130), snap=False), 1e-4)    # unsnapped at 124.875: wrong
    assert not close(got[0], ref_dpm(xs[0], 8, shift=(400, 130)), 1e-4)                # half width W, not W // 2: wrong


def test_dpm_solver_shift_compares_the_variance_of_eps_not_x():
    g = torch.Generator().manual_seed(1)
    eps = torch.randn([2, *SHAPE], generator=g)
    eps = eps / eps.reshape(2, -1).std(dim=1).view(-1, 1, 1, 1) * torch.tensor([0.95, 0.98]).sqrt().view(-1, 1, 1, 1)
    ns = tsdpm._DiscreteVP(TABLES.betas)
    t = torch.full([2], 0.6 + 1 / T)        # model time 600
    o = options(sampler='dpm-solver', time_shift=True, window_size=300, cut_off_value=100)
    got = tsdpm.dpm_shift_target(eps, t, o, ns, TABLES)
    e = eps.double().numpy()
    expect = [ref_window(np.var(e[n], ddof=1), 600, 150) / 1000 + 1 / T for n in range(2)]
    assert np.allclose(got.numpy(), expect, atol=1e-6)
    assert 450 < round((got[0].item() - 1 / T) * 1000) < 750         # inside the window, not at an edge
    below = tsdpm.dpm_shift_target(eps, t, options(sampler='dpm-solver', time_shift=True, window_size=300, cut_off_value=600), ns, TABLES)
    assert np.allclose(below.numpy(), 0.6 + 1 / T, atol=1e-6)         # n = 600 is not above the cutoff


def test_dpm_solver_and_deis_ignore_es_and_method():
    x = latents()
    for sampler in ('dpm-solver', 'deis'):
        plain = tsdpm.sample(toy_eps, x, TABLES, options(sampler=sampler, sample_speed=5, method='anything'))
        scaled = tsdpm.sample(toy_eps, x, TABLES, options(sampler=sampler, sample_speed=5, scale_method=True, fix_scale=1.5))
        assert torch.equal(plain, scaled)

#----------------------------------------------------------------------------
# deis.


def ref_alpha(t):
    return np.interp(t, np.arange(T), AB)


def ref_deis_weights(t, t_next, nodes, fine=200001):
    """Weights of eps at nodes (current first) by a fine trapezoid integral in float64."""
    tau = np.linspace(t, t_next, fine)
    seg = np.clip(np.floor(tau).astype(int), 0, T - 2)
    dlog = (AB[seg + 1] - AB[seg]) / ref_alpha(tau)
    f = np.sqrt(ref_alpha(t_next) / ref_alpha(tau)) * (-0.5 * dlog / np.sqrt(1 - ref_alpha(tau)))
    out = []
    for j in range(len(nodes)):
        basis = np.prod([(tau - nodes[k]) / (nodes[j] - nodes[k]) for k in range(len(nodes)) if k != j], axis=0)
        out.append(np.trapezoid(f * basis, tau) if hasattr(np, 'trapezoid') else np.trapz(f * basis, tau))
    return out


def test_deis_grid():
    g5 = tsdpm.deis_grid(T, 5)
    assert np.allclose(g5, (np.sqrt(999) * (1 - np.arange(6) / 5)) ** 2, rtol=1e-6) and g5[-1] == 0
    g50 = tsdpm.deis_grid(T, 50)   # truncations repeat: an integer grid of 51 distinct times
    assert len(g50) == 51 and g50[0] == 999 and g50[-1] == 0 and np.all(np.diff(g50) < 0)
    assert np.all(g50 == np.round(g50))


def test_deis_coefficients_are_the_exponential_integrator_weights():
    times = tsdpm.deis_grid(T, 6)
    coef = tsdpm.deis_coefficients(TABLES.alphas_cump.numpy(), times)
    for i in range(6):
        t, t_next = float(times[i]), float(times[i + 1])
        assert np.isclose(coef[i, 0], np.sqrt(ref_alpha(t_next) / ref_alpha(t)), rtol=1e-5)
        # Constant eps: the weights sum to DDIM's eps weight (exact for the exponential integrator).
        ddim = np.sqrt(1 - ref_alpha(t_next)) - np.sqrt(ref_alpha(t_next) / ref_alpha(t)) * np.sqrt(1 - ref_alpha(t))
        assert np.isclose(coef[i, 1:].sum(), ddim, rtol=2e-3, atol=1e-4)
        nodes = [float(v) for v in times[max(0, i - 2):i + 1][::-1]]     # current, previous, the one before
        ref = ref_deis_weights(t, t_next, nodes)
        assert np.allclose(coef[i, 1:1 + len(nodes)], ref, rtol=2e-3, atol=2e-4), i
        assert np.all(coef[i, 1 + len(nodes):] == 0)


def ref_deis(x, S, shift=None, half=None):
    times = tsdpm.deis_grid(T, S).astype(np.float64)
    hist = []
    for i in range(S):
        t = times[i]
        model_t = t
        if shift is not None:
            n = int(t)
            model_t = ref_window(np.var(x, ddof=1), n, half if half is not None else shift[0]) if n > shift[1] else n
        hist.insert(0, ref_eps(x, model_t))
        nodes = list(times[max(0, i - 2):i + 1][::-1])
        w = ref_deis_weights(t, times[i + 1], nodes, fine=20001)
        x = np.sqrt(ref_alpha(times[i + 1]) / ref_alpha(t)) * x + sum(wk * e for wk, e in zip(w, hist))
        hist = hist[:2]
    return x


def test_deis_sampling_and_its_time_shift():
    x = latents()
    xs = x.double().numpy()
    got = tsdpm.sample(toy_eps, x, TABLES, options(sampler='deis', sample_speed=5)).double().numpy()
    assert close(got[1], ref_deis(xs[1], 5), 2e-3)
    kw = dict(sampler='deis', sample_speed=5, time_shift=True, window_size=10, cut_off_value=300)
    got = tsdpm.sample(toy_eps, x, TABLES, options(**kw)).double().numpy()
    assert close(got[0], ref_deis(xs[0], 5, shift=(10, 300)), 2e-3)
    assert not close(got[0], ref_deis(xs[0], 5, shift=(10, 300), half=5), 2e-3)   # W // 2: wrong for deis
    assert not close(got[0], ref_deis(xs[0], 5), 2e-3)

#----------------------------------------------------------------------------
# Options, quantisation, seeds and resume.


@pytest.mark.parametrize('kw, message', [
    (dict(sample_speed=1), 'sample_speed'), (dict(sample_speed=1001), 'sample_speed'),
    (dict(sampler='deis', sample_speed=1000), 'sample_speed'), (dict(method='F-PNDM'), 'method'),
    (dict(time_shift=True, window_size=5), 'cut_off_value'), (dict(time_shift=True, window_size=-1, cut_off_value=3), 'window_size'),
    (dict(time_shift=True, window_size=5, cut_off_value=1000), 'cut_off_value'),
    (dict(scale_method=True), 'step_size'), (dict(scale_method=True, fix_scale=0.0), 'zero'),
])
def test_bad_options(kw, message):
    with pytest.raises(tsdpm.TSDPMSamplerError, match=message):
        options(**kw).check(T)


def test_quantisation_is_torchvision_save_image():
    x = torch.linspace(-1.2, 1.2, 3 * 4 * 5).reshape(1, 3, 4, 5)
    y = np.clip((x.numpy().astype(np.float32) + 1) / 2, 0, 1)
    expect = np.floor(np.clip(y * np.float32(255) + np.float32(0.5), 0, 255)).astype(np.uint8).transpose(0, 2, 3, 1)
    assert np.array_equal(tsdpm.to_uint8(x), expect)
    gray = tsdpm.to_uint8(x[:, :1])
    assert gray.shape == (1, 4, 5, 3) and np.array_equal(gray[..., 0], gray[..., 2])


def test_seeds_batch_independent_and_first_draw_is_x_T():
    opts = options(method='ddpm', sample_speed=5, eta=0.5)
    together = tsdpm_jobs.sample_images(toy_eps, TABLES, opts, SHAPE, [7, 8, 9])
    alone = np.concatenate([tsdpm_jobs.sample_images(toy_eps, TABLES, opts, SHAPE, [s]) for s in (7, 8, 9)])
    assert np.array_equal(together, alone)
    # Image of seed 8: x_T is the generator's first randn([C, H, W]), then one randn per ddpm step.
    g = torch.Generator().manual_seed(8)
    x = torch.randn(SHAPE, generator=g)
    noise = [torch.randn(SHAPE, generator=g).double().numpy() for _ in range(4)]
    ref = ref_pnm(x.double().numpy(), 'ddpm', 5, eta=0.5, noise=noise)
    ref_u8 = np.floor(np.clip(np.clip((ref + 1) / 2, 0, 1) * 255 + 0.5, 0, 255)).astype(np.uint8).transpose(1, 2, 0)
    assert np.abs(together[1].astype(int) - ref_u8.astype(int)).max() <= 1


def test_generate_resumes_and_keeps_existing_images(tmp_path):
    opts = options(method='euler', sample_speed=5)
    folder = str(tmp_path / 'out')
    stats = tsdpm_jobs.generate(toy_eps, TABLES, opts, SHAPE, folder, 5, seed=3, batch_size=2, progress=False)
    assert stats.num_written == 5 and sorted(os.listdir(folder)) == sorted([f'{i}.png' for i in range(5)] + ['generate-options.json'])
    before = {i: open(os.path.join(folder, f'{i}.png'), 'rb').read() for i in range(5)}
    os.remove(os.path.join(folder, '2.png'))
    with open(os.path.join(folder, '4.png'), 'wb') as f:
        f.write(before[4][:20])     # truncated: regenerated
    mtime = os.stat(os.path.join(folder, '0.png')).st_mtime_ns
    stats = tsdpm_jobs.generate(toy_eps, TABLES, opts, SHAPE, folder, 5, seed=3, batch_size=3, progress=False)
    assert (stats.num_written, stats.num_skipped) == (2, 3)
    assert os.stat(os.path.join(folder, '0.png')).st_mtime_ns == mtime
    assert all(open(os.path.join(folder, f'{i}.png'), 'rb').read() == before[i] for i in range(5))
    from samplers.jobs import JobError
    with pytest.raises(JobError, match='sample_speed'):   # other options into the same folder: refused
        tsdpm_jobs.generate(toy_eps, TABLES, options(method='euler', sample_speed=6), SHAPE, folder, 5, seed=3, progress=False)


def test_folder_names_are_tsdpm_s():
    o = options(method='f_pndm', sample_speed=100, time_shift=True, window_size=5, cut_off_value=550)
    assert tsdpm_jobs.folder_name(o, 'cifar') == 'ts-ddim/cifar_pnm_solver_100_w_5_c_550_f_pndm'
    o = options(method='euler', sample_speed=100, scale_method=True, fix_scale=1.0012)
    assert tsdpm_jobs.folder_name(o, 'celeba') == 'scale-ddim/celeba_pnm_solver_100_fix_scale_1.0012_ets_0.0'
    assert tsdpm_jobs.folder_name(options(nor_var=True), 'cifar') == 'time-s-ddim/norm_var_cifar_pnm_solver_50_euler'
    assert tsdpm_jobs.folder_name(options(), 'cifar') == 'dpm-time-ts-order-2/cifar_pnm_solver_50_euler'


def test_config_resolution(tmp_path):
    assert tsdpm_jobs.shipped_configs() == ['ddim_bedroom', 'ddim_celeba', 'ddim_church', 'ddim_cifar10',
                                           'iddpm_cifar10', 'pf_cifar10', 'pf_deep_cifar10']
    assert tsdpm_jobs.resolve_config('ddim_cifar10.yml', cwd=str(tmp_path)).endswith(os.path.join('configs', 'tsdpm', 'ddim_cifar10.yml'))
    (tmp_path / 'config').mkdir()
    (tmp_path / 'config' / 'ddim_cifar10.yml').write_text('Schedule: {}\n')
    assert tsdpm_jobs.resolve_config('ddim_cifar10.yml', cwd=str(tmp_path)) == str(tmp_path / 'config' / 'ddim_cifar10.yml')
    from samplers.jobs import JobError
    with pytest.raises(JobError, match='not a shipped config'):
        tsdpm_jobs.resolve_config('nope.yml', cwd=str(tmp_path))

#----------------------------------------------------------------------------
# run_generate.py end to end.

TINY = """Schedule: {type: linear, beta_start: 0.0001, beta_end: 0.02, diffusion_step: 1000}
Dataset: {dataset: CIFAR10, image_size: 8, channels: 3}
Model: {struc: DDIM, type: simple, image_size: 8, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1, 2],
        num_res_blocks: 1, attn_resolutions: [4], dropout: 0.0, var_type: fixedlarge, resamp_with_conv: true}
"""


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    import yaml
    from networks import tsdpm as backbones
    (tmp_path / 'config').mkdir()
    (tmp_path / 'config' / 'tiny.yml').write_text(TINY)
    torch.manual_seed(0)
    torch.save(backbones.build_backbone(yaml.safe_load(TINY)).state_dict(), tmp_path / 'tiny.ckpt')
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(*args):
    import run_generate
    return CliRunner().invoke(run_generate.main, [str(a) for a in args], prog_name='run_generate.py')


@needs_backbones
def test_run_generate_end_to_end(tiny):
    import yaml
    from networks import tsdpm as backbones
    args = ['--config', 'tiny.yml', '--model_path', 'tiny.ckpt', '--method', 'f_pndm', '--sample_speed', 6,
            '--total_num_img', 3, '--batch_size', 2, '--time_shift', '--window_size', 5, '--cut_off_value', 550, '--seed', 4]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    record = json.loads(res.output.strip().splitlines()[-1])
    folder = tiny / 'ts-ddim' / 'cifar_pnm_solver_6_w_5_c_550_f_pndm'
    assert record['written'] == 3 and sorted(p.name for p in folder.glob('*.png')) == ['0.png', '1.png', '2.png']
    # Image 1 is seed 5's, sampled alone with the library.
    from torch_utils import images as image_io
    net = backbones.load_backbone(str(tiny / 'tiny.ckpt'), yaml.safe_load(TINY))
    opts = options(method='f_pndm', sample_speed=6, time_shift=True, window_size=5, cut_off_value=550)
    expect = tsdpm_jobs.sample_images(net, TABLES, opts, [3, 8, 8], [5])[0]
    assert np.array_equal(image_io.read_png(folder / '1.png'), expect)
    res = invoke(*args, '--image_path', tiny / 'mine')
    assert res.exit_code == 0 and sorted(p.name for p in (tiny / 'mine').glob('*.png')) == ['0.png', '1.png', '2.png']


@needs_backbones
@pytest.mark.parametrize('name', ['ddim_cifar10', 'ddim_celeba', 'ddim_church', 'ddim_bedroom', 'iddpm_cifar10',
                                  'pf_cifar10', 'pf_deep_cifar10'])
def test_shipped_configs_give_their_backbones(name):
    from networks import tsdpm as backbones
    config = backbones.read_config(tsdpm_jobs.resolve_config(name))
    schedule = backbones.schedule_of(config)
    assert schedule['diffusion_steps'] == 1000 and schedule['schedule'] == ('cosine' if name.startswith('iddpm') else 'linear')
    assert config['Dataset']['image_size'] == dict(ddim_celeba=64, ddim_church=256, ddim_bedroom=256).get(name, 32)
    with torch.device('meta'):
        net = backbones.build_backbone(config)
    assert sum(p.numel() for p in net.parameters()) > 10 ** 6


BAD_CONFIGS = [
    (TINY.replace('struc: DDIM', 'struc: Unet'), 'struc'),
    (TINY.replace('beta_start: 0.0001, ', ''), 'beta_start'),
    (TINY.replace('channels: 3}', 'size: 3}'), 'channels'),
    ('Schedule: [1, 2\n', 'YAML'),
]


@needs_backbones
@pytest.mark.parametrize('text, message', BAD_CONFIGS)
def test_run_generate_bad_configs(tiny, text, message):
    (tiny / 'config' / 'bad.yml').write_text(text)
    res = invoke('--config', 'bad.yml', '--model_path', 'tiny.ckpt', '--method', 'euler', '--image_path', 'out')
    assert res.exit_code != 0 and message in res.output and 'Traceback' not in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tiny / 'out').exists()


@needs_backbones
@pytest.mark.parametrize('args, message', [
    (['--sample_speed', 0], 'sample_speed'), (['--sample_speed', 5000], 'sample_speed'),
    (['--sample_speed', 'abc'], 'sample_speed'),
    (['--time_shift', '--window_size', -3, '--cut_off_value', 300], 'window_size'),
    (['--time_shift', '--window_size', 5, '--cut_off_value', 5000], 'cut_off_value'),
    (['--time_shift', '--window_size', 5], 'cut_off_value'),
    (['--method', 'F-PNDM'], 'method'), (['--model_path', 'missing.ckpt'], 'missing.ckpt'),
])
def test_run_generate_bad_options(tiny, args, message):
    base = ['--config', 'tiny.yml', '--model_path', 'tiny.ckpt', '--method', 'euler', '--image_path', 'out', '--sample_speed', 5]
    res = invoke(*base, *args)
    assert res.exit_code != 0 and message in res.output and 'Traceback' not in res.output
    assert not (tiny / 'out').exists()


@needs_backbones
def test_run_generate_checkpoint_that_does_not_fit(tiny):
    (tiny / 'config' / 'wide.yml').write_text(TINY.replace('ch: 32', 'ch: 64'))
    res = invoke('--config', 'wide.yml', '--model_path', 'tiny.ckpt', '--method', 'euler', '--sample_speed', 5, '--image_path', 'out')
    assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1 and 'Traceback' not in res.output
    assert not (tiny / 'out').exists()


@needs_backbones
def test_run_generate_two_processes_give_the_single_process_images(tiny, repo_root):
    import subprocess
    import sys
    import yaml
    from networks import tsdpm as backbones
    from torch_utils import images as image_io
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           os.path.join(repo_root, 'run_generate.py'), '--config', 'tiny.yml', '--model_path', 'tiny.ckpt',
           '--method', 'ddpm', '--eta', '0.5', '--sample_speed', 4, '--total_num_imgs', 5, '--batch_size', 2,
           '--device', 'cpu', '--image_path', tiny / 'two']
    res = subprocess.run([str(c) for c in cmd], cwd=tiny, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tiny / 'two').glob('*.png')) == [f'{i}.png' for i in range(5)]
    net = backbones.load_backbone(str(tiny / 'tiny.ckpt'), yaml.safe_load(TINY))
    expect = tsdpm_jobs.sample_images(net, TABLES, options(method='ddpm', eta=0.5, sample_speed=4), [3, 8, 8], list(range(5)))
    assert all(np.abs(image_io.read_png(tiny / 'two' / f'{i}.png').astype(int) - expect[i]).max() <= 1 for i in range(5))


@needs_backbones
def test_run_generate_unwritable_image_path(tiny):
    (tiny / 'file').write_text('x')
    res = invoke('--config', 'tiny.yml', '--model_path', 'tiny.ckpt', '--method', 'euler', '--sample_speed', 5,
                 '--image_path', tiny / 'file' / 'sub')
    lines = res.output.strip().splitlines()     # the first line is the progress note on stderr
    assert res.exit_code != 0 and lines[-1].startswith('Error: cannot create') and 'Traceback' not in res.output
    assert (tiny / 'file').read_text() == 'x'


def test_help_text_in_sync(repo_root):
    import run_generate
    result = CliRunner().invoke(run_generate.main, ['--help'], prog_name='run_generate.py')
    with open(os.path.join(repo_root, 'docs', 'run-generate-help.txt'), encoding='utf8') as f:
        assert result.output == f.read(), 'regenerate: python -c "import run_generate; from click.testing import ' \
            'CliRunner; print(CliRunner().invoke(run_generate.main, [\'--help\'], prog_name=\'run_generate.py\').output, ' \
            'end=\'\')" > docs/run-generate-help.txt'

#----------------------------------------------------------------------------
# The toolkit's --solver=fpndm-pndm: F-PNDM with PNDM's timestep midpoint on discrete networks.


def test_fpndm_pndm_evaluates_the_timestep_midpoint():
    from samplers import multistep
    levels = torch.tensor([0.01 * 1.5 ** k for k in range(20)], dtype=torch.float64)   # sigma_t, t = 0..19 (geometric)
    grid = torch.cat([levels[[19, 14, 9, 4, 1]], torch.zeros(1, dtype=torch.float64)])
    seen = []

    def denoiser(x, sigma, class_labels=None):
        seen.append(float(sigma.flatten()[0]))
        return x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)

    x = torch.randn([2, 1, 2, 2], generator=torch.Generator().manual_seed(0))
    out = multistep.sample_fpndm_pndm(denoiser, x, grid, midpoint=multistep.timestep_midpoint(levels))
    mids = [float(levels[(a + b) // 2]) for a, b in [(19, 14), (14, 9), (9, 4)]]    # timesteps 16, 11, 6
    assert [seen[1], seen[5], seen[9]] == mids and [seen[2], seen[6], seen[10]] == mids   # 4 evaluations a step
    # The default fpndm evaluates the level nearest the sigma midpoint, elsewhere on this grid.
    nearest = lambda s: float(levels[(levels - s).abs().argmin()])
    assert nearest(0.5 * (levels[19] + levels[14])) != mids[0]
    seen.clear()
    default = multistep.sample_fpndm(denoiser, x, grid, churn=solvers_churn(nearest))
    assert seen[1] == nearest(0.5 * float(levels[19] + levels[14])) and not torch.equal(default, out)
    with pytest.raises(ValueError, match='discrete'):
        multistep.sample_fpndm_pndm(denoiser, x, grid)


def solvers_churn(nearest):
    from samplers import solvers
    return solvers.Churn(round_sigma=lambda s: torch.tensor(nearest(float(s)), dtype=torch.float64))


def test_fpndm_pndm_needs_a_discrete_network():
    from test_samplers import tiny_net
    from samplers import Sampler, SamplerOptionError, SamplerOptions
    with pytest.raises(SamplerOptionError, match='fpndm-pndm needs a discrete-time network'):
        Sampler(tiny_net(), SamplerOptions(solver='fpndm-pndm', num_steps=5))


def test_fpndm_pndm_on_an_adm_network():
    from adm_helpers import TINY, tiny_adm
    from samplers import Sampler, SamplerOptions
    net = tiny_adm(TINY + ' --diffusion_steps 100')[0]
    x = torch.randn([1, net.img_channels, net.img_resolution, net.img_resolution], generator=torch.Generator().manual_seed(0))
    sampler = Sampler(net, SamplerOptions(solver='fpndm-pndm', respacing='10'))
    calls, inner = [], sampler.denoiser
    sampler.denoiser = lambda x, sigma, labels=None: calls.append(float(sigma.flatten()[0])) or inner(x, sigma, labels)
    assert torch.isfinite(sampler(x)).all()
    levels, grid = net.sigmas.tolist(), sampler.sigmas.tolist()
    t0, t1 = levels.index(grid[0]), levels.index(grid[1])
    assert calls[1] == calls[2] == levels[(t0 + t1) // 2]          # PNDM's midpoint, a timestep of the network
    assert calls[1] != float(net.round_sigma(torch.tensor(0.5 * (grid[0] + grid[1]), dtype=torch.float64)))
