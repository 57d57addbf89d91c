"""TS-DPM's own samplers (Mingxiao-Li/TS-DPM, `run_generate.py`), computed as its code computes them.

Everything here works on a discrete-time epsilon network `eps_model(x, t)` (t: raw timesteps
[N], float32, possibly fractional) and the float32 tables of a beta schedule of T steps.
The three samplers of TS-DPM and their quirks, reproduced on purpose (docs/tsdpm.md):

- `pnm_solver` (methods euler = DDIM eta 0, improved_euler_solver, runge_kutta, s_pndm, f_pndm,
  ddpm): grid t_k = k * (T // S) + 1 with the last point dropped (S - 1 steps for S | T), the
  alpha_bar table indexed by truncated times (ab[0] = 1 - beta_0, not 1), epsilon scaling in
  euler and ddpm only, --nor_var before every step, the time shift on the step's target only.
- `dpm-solver`: multistep order 2, noise prediction, uniform in t in [1/T, 1], model time
  (t - 1/T) * 1000, lower_order_final; the time shift compares the variance of the latest
  eps prediction (not of x) and snaps the target to the integer grid even unshifted.
- `deis`: tAB with ab_order 2 (three eps values) on TS-DPM's quadratic grid, coefficients by
  float32 left Riemann sums (10000 points) on the piecewise-linear alpha_bar; the time shift
  (half width W, not W // 2) changes only the model's time input.

Randomness is passed in: `randn_like(x)` gives one standard normal per image (one draw per
image per call, in TS-DPM's order), so an image depends on its own generator only.
"""

import dataclasses

import numpy as np
import torch

SAMPLERS = ('pnm_solver', 'dpm-solver', 'deis')
PNM_METHODS = ('euler', 'improved_euler_solver', 'runge_kutta', 's_pndm', 'f_pndm', 'ddpm')
SCALED_METHODS = ('euler', 'ddpm')      # the only methods that divide eps by the ES scale
DEIS_RIEMANN_POINTS = 10000             # left Riemann sum points of each DEIS coefficient
DPM_LOWER_ORDER_FINAL_BELOW = 15        # DPM-Solver's last step is first order below this many steps


class TSDPMSamplerError(ValueError):
    """Options TS-DPM's samplers cannot run; the message is one line."""

#----------------------------------------------------------------------------
# Options.


@dataclasses.dataclass(frozen=True)
class TSDPMOptions:
    """run_generate.py's sampling flags (TS-DPM's names)."""
    sampler: str = 'pnm_solver'
    method: str = 'euler'               # pnm_solver only; the other samplers ignore it
    sample_speed: int = 50              # S
    time_shift: bool = False
    window_size: int = None             # W
    cut_off_value: int = None
    scale_method: bool = False          # epsilon scaling on (needs step_size or fix_scale)
    step_size: float = None             # scale 1 + step_size * k at step k
    fix_scale: float = None             # constant scale
    nor_var: bool = False
    eta: float = 0.0                    # ddpm only

    def check(self, num_timesteps):
        """Raise TSDPMSamplerError unless the options run on a schedule of num_timesteps steps."""
        T = num_timesteps
        if self.sampler not in SAMPLERS:
            raise TSDPMSamplerError(f'--sampler {self.sampler}: expected one of {", ".join(SAMPLERS)}')
        if self.sampler == 'pnm_solver' and self.method not in PNM_METHODS:
            raise TSDPMSamplerError(f'--method {self.method} is not a method of pnm_solver: expected one of {", ".join(PNM_METHODS)}')
        low, high = (1, T - 1) if self.sampler == 'deis' else (2, T)
        if not low <= self.sample_speed <= high:
            raise TSDPMSamplerError(f'--sample_speed {self.sample_speed}: {self.sampler} needs {low} to {high} steps '
                                    f'on a {T}-step schedule')
        if self.time_shift:
            if self.window_size is None or self.cut_off_value is None:
                raise TSDPMSamplerError('--time_shift needs --window_size and --cut_off_value')
            if not 0 <= self.window_size <= T:
                raise TSDPMSamplerError(f'--window_size {self.window_size}: expected 0 to {T} timesteps')
            if not 0 <= self.cut_off_value < T:
                raise TSDPMSamplerError(f'--cut_off_value {self.cut_off_value}: expected a timestep 0 to {T - 1}')
        if self.scale_method and self.sampler == 'pnm_solver':
            if self.step_size is None and self.fix_scale is None:
                raise TSDPMSamplerError('--scale_method needs --step_size or --fix_scale')
            scales = es_scales(self, T)[:self.sample_speed]
            if any(not np.isfinite(s) or s == 0 for s in scales):
                raise TSDPMSamplerError('--step_size/--fix_scale give a zero epsilon scale: eps would be divided by zero')
        if not (np.isfinite(self.eta) and self.eta >= 0):
            raise TSDPMSamplerError(f'--eta {self.eta}: expected a number >= 0')


def es_scales(options, num_timesteps):
    """TS-DPM's epsilon scale per step counter k (0 = the first, noisiest step), T entries."""
    if not options.scale_method:
        return [1.0] * num_timesteps
    if options.step_size is not None:    # step_size wins when both are given, as in TS-DPM
        return [1.0 + options.step_size * k for k in range(num_timesteps)]
    return [options.fix_scale] * num_timesteps

#----------------------------------------------------------------------------
# Tables and grids.


@dataclasses.dataclass
class Tables:
    """TS-DPM's float32 tables of a beta schedule."""
    betas: torch.Tensor                 # [T] float32
    alphas_cump: torch.Tensor           # [T] float32, alpha_bar_t = prod_{s <= t} (1 - beta_s)

    @property
    def num_timesteps(self):
        return len(self.betas)

    @property
    def noise_var(self):
        """1 - alpha_bar, the noise variance the time shift compares against."""
        return 1 - self.alphas_cump


def make_tables(betas, device='cpu'):
    """Tables of float64 betas, cast to float32 first and accumulated in float32 as TS-DPM does."""
    betas = torch.as_tensor(np.asarray(betas, dtype=np.float64)).float().to(device)
    return Tables(betas=betas, alphas_cump=(1.0 - betas).cumprod(dim=0))


def pnm_grid(num_timesteps, num_steps):
    """(times, next times) of pnm_solver's steps, first step first: t_k = k * (T // S) + 1 with
    the last t_k dropped, next times shifted by one with 0 at the end."""
    skip = num_timesteps // num_steps
    times = [k + 1 for k in range(0, num_timesteps, skip)][:-1]
    return times[::-1], ([0] + times[:-1])[::-1]


def _full(x, value):
    return torch.full([x.shape[0]], float(value), dtype=torch.float32, device=x.device)


def _per_image_var(x):
    """Unbiased variance of each image, [N] float32."""
    return torch.var(x.reshape(x.shape[0], -1).float(), dim=-1)


def window_argmin(var, centre, half_width, noise_var):
    """Per image, the first timestep k in [centre - half_width, centre + half_width] (clipped to
    [0, T - 1]) minimising (var - (1 - alpha_bar_k))^2, as int64 [N]. TS-DPM's pnm_solver and
    dpm-solver crash where the window passes T - 1 (they name a missing attribute); here it is
    clipped there, as its deis does."""
    low = centre - half_width if centre - half_width > 0 else 0
    window = noise_var[low:centre + half_width + 1].to(var.device)
    dist = (var[:, None] - window[None, :]) ** 2
    return torch.argmin(dist, dim=1) + low

#----------------------------------------------------------------------------
# pnm_solver.


def transfer(x, t, t_next, eps, alphas_cump):
    """PNDM's transfer from t to t_next (the DDIM step written in alpha_bar), ab indexed by t.long()."""
    a = alphas_cump[t.long()].view(-1, 1, 1, 1)
    a_next = alphas_cump[t_next.long()].view(-1, 1, 1, 1)
    x_weight = 1 / (a.sqrt() * (a.sqrt() + a_next.sqrt()))
    eps_weight = 1 / (a.sqrt() * (((1 - a_next) * a).sqrt() + ((1 - a) * a_next).sqrt()))
    return x + (a_next - a) * (x_weight * x - eps_weight * eps)


class _PNMState:
    """What pnm_solver carries between steps: the eps history and the ES step counter."""

    def __init__(self, model, alphas_cump, scales, eta, randn_like):
        self.model, self.ab, self.scales, self.eta, self.randn_like = model, alphas_cump, scales, eta, randn_like
        self.ets = []
        self.counter = 0

    def scaled_eps(self, x, t):
        eps = self.model(x, t) / self.scales[self.counter]
        self.counter += 1
        return eps


def _euler(s, x, t, t_next):
    return transfer(x, t, t_next, s.scaled_eps(x, t), s.ab)


def _improved_euler_eps(s, x, t, t_next):
    e_1 = s.model(x, t)
    s.ets.append(e_1)            # only the first evaluation is kept (S-PNDM's history)
    e_2 = s.model(transfer(x, t, t_next, e_1, s.ab), t_next)
    return (e_1 + e_2) / 2


def _improved_euler(s, x, t, t_next):
    return transfer(x, t, t_next, _improved_euler_eps(s, x, t, t_next), s.ab)


def _runge_kutta_eps(s, x, t, t_next):
    t_mid = (t + t_next) / 2.0   # PNDM's midpoint in timesteps; ab at t_mid.long()
    e_1 = s.model(x, t)
    s.ets.append(e_1)
    e_2 = s.model(transfer(x, t, t_mid, e_1, s.ab), t_mid)
    e_3 = s.model(transfer(x, t, t_mid, e_2, s.ab), t_mid)
    e_4 = s.model(transfer(x, t, t_next, e_3, s.ab), t_next)
    return (1 / 6) * (e_1 + 2 * e_2 + 2 * e_3 + e_4)


def _runge_kutta(s, x, t, t_next):
    return transfer(x, t, t_next, _runge_kutta_eps(s, x, t, t_next), s.ab)


def _s_pndm(s, x, t, t_next):
    if not s.ets:
        return transfer(x, t, t_next, _improved_euler_eps(s, x, t, t_next), s.ab)
    s.ets = (s.ets + [s.model(x, t)])[-2:]
    return transfer(x, t, t_next, 0.5 * (3 * s.ets[-1] - s.ets[-2]), s.ab)


def _f_pndm(s, x, t, t_next):
    if len(s.ets) < 3:
        return transfer(x, t, t_next, _runge_kutta_eps(s, x, t, t_next), s.ab)
    s.ets = (s.ets + [s.model(x, t)])[-4:]
    e = (1 / 24) * (55 * s.ets[-1] - 59 * s.ets[-2] + 37 * s.ets[-3] - 9 * s.ets[-4])
    return transfer(x, t, t_next, e, s.ab)


def _ddpm(s, x, t, t_next):
    a = s.ab[t.long()].view(-1, 1, 1, 1)
    a_next = s.ab[t_next.long()].view(-1, 1, 1, 1)
    eps = s.scaled_eps(x, t)
    x0 = (x - eps * (1 - a).sqrt()) / a.sqrt()
    c1 = s.eta * ((1 - a / a_next) * (1 - a_next) / (1 - a)).sqrt()
    c2 = ((1 - a_next) - c1 ** 2).sqrt()
    return a_next.sqrt() * x0 + c1 * s.randn_like(x) + c2 * eps   # drawn even when eta = 0


_PNM_STEPS = dict(euler=_euler, improved_euler_solver=_improved_euler, runge_kutta=_runge_kutta,
                  s_pndm=_s_pndm, f_pndm=_f_pndm, ddpm=_ddpm)


def pnm_shift_target(x, j, options, tables):
    """pnm_solver's shifted target of a step into grid time j: window of half width W // 2 around
    j on the variance of the current x; kept only while j > cut_off_value. float32 [N]."""
    if j <= options.cut_off_value:
        return _full(x, j)
    k = window_argmin(_per_image_var(x), j, options.window_size // 2, tables.noise_var)
    return k.to(torch.float32)


def pnm_solver(eps_model, x_T, tables, options, randn_like=torch.randn_like):
    """x_0 of TS-DPM's pnm_solver from x_T (float32 [N, C, H, W]), before (x + 1) / 2."""
    times, next_times = pnm_grid(tables.num_timesteps, options.sample_speed)
    state = _PNMState(eps_model, tables.alphas_cump, es_scales(options, tables.num_timesteps), options.eta, randn_like)
    step = _PNM_STEPS[options.method]
    x = x_T
    for k, (i, j) in enumerate(zip(times, next_times)):
        t = _full(x, i)
        # The shift starts at the second step and moves only this step's target.
        t_next = pnm_shift_target(x, j, options, tables) if options.time_shift and k > 0 else _full(x, j)
        if options.nor_var:     # rescale x to the grid time's noise variance
            ratio = (1 - tables.alphas_cump[t.long()].view(-1)) / _per_image_var(x)
            x = x * torch.sqrt(ratio).view(-1, 1, 1, 1)
        x = step(state, x, t, t_next)
    return x

#----------------------------------------------------------------------------
# dpm-solver (multistep, order 2, noise prediction).


def _interp(x, xp, yp):
    """Piecewise-linear y(x) through (xp, yp), extended by the outer segments (DPM-Solver's interpolate_fn)."""
    K = xp.shape[0]
    seg = (torch.searchsorted(xp, x.contiguous()) - 1).clamp(0, K - 2)
    x0, x1, y0, y1 = xp[seg], xp[seg + 1], yp[seg], yp[seg + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


class _DiscreteVP:
    """DPM-Solver's NoiseScheduleVP('discrete') of float32 betas: log alpha on t = (1..T)/T."""

    def __init__(self, betas):
        self.total_N = len(betas)
        self.log_alpha = 0.5 * torch.log(1 - betas).cumsum(dim=0)
        self.t_array = torch.linspace(0., 1., self.total_N + 1)[1:].to(betas.device)

    def log_alpha_at(self, t):
        return _interp(t, self.t_array, self.log_alpha)

    def std(self, t):
        return torch.sqrt(1. - torch.exp(2. * self.log_alpha_at(t)))

    def lam(self, t):
        la = self.log_alpha_at(t)
        return la - 0.5 * torch.log(1. - torch.exp(2. * la))

    def model_time(self, t):
        return (t - 1. / self.total_N) * 1000.


def _dpm_first_update(ns, x, s, t, eps_s):
    h = ns.lam(t) - ns.lam(s)
    x_weight = torch.exp(ns.log_alpha_at(t) - ns.log_alpha_at(s))
    return x_weight.view(-1, 1, 1, 1) * x - (ns.std(t) * torch.expm1(h)).view(-1, 1, 1, 1) * eps_s


def _dpm_second_update(ns, x, eps_list, t_list, t):
    (eps_1, eps_0), (t_1, t_0) = eps_list, t_list
    lam_1, lam_0, lam_t = ns.lam(t_1), ns.lam(t_0), ns.lam(t)
    h_0, h = lam_0 - lam_1, lam_t - lam_0
    d1 = (1. / (h_0 / h)).view(-1, 1, 1, 1) * (eps_0 - eps_1)
    x_weight = torch.exp(ns.log_alpha_at(t) - ns.log_alpha_at(t_0)).view(-1, 1, 1, 1)
    phi = (ns.std(t) * (torch.exp(h) - 1.)).view(-1, 1, 1, 1)
    return x_weight * x - phi * eps_0 - 0.5 * phi * d1


def dpm_shift_target(eps, t, options, ns, tables):
    """dpm-solver's target time of a step into continuous time t [N]: n = int((t - 1/T) * 1000)
    of the first image; window of half width W // 2 on the variance of the latest eps
    prediction; k / 1000 + 1/T if n > cut_off_value, else n / 1000 + 1/T (snapped either way)."""
    n = int(ns.model_time(t).int()[0])
    if n > options.cut_off_value:
        k = window_argmin(_per_image_var(eps), n, options.window_size // 2, tables.noise_var)
    else:
        k = torch.full([eps.shape[0]], n, dtype=torch.int64, device=eps.device)
    return k / 1000 + 1 / ns.total_N


def dpm_solver(eps_model, x_T, tables, options):
    """x_0 of TS-DPM's dpm-solver sampler (DPM-Solver-2 multistep) from x_T."""
    ns = _DiscreteVP(tables.betas)
    steps = options.sample_speed
    grid = torch.linspace(1., 1. / ns.total_N, steps + 1).to(x_T.device)
    model = lambda x, t: eps_model(x, ns.model_time(t))
    x = x_T
    t_prev = grid[0].expand(x.shape[0])
    eps_list, t_list = [model(x, t_prev)], [t_prev]
    t = grid[1].expand(x.shape[0])
    x = _dpm_first_update(ns, x, t_prev, t, eps_list[-1])
    eps_list.append(model(x, t))
    t_list.append(t)
    for step in range(2, steps + 1):
        t = grid[step].expand(x.shape[0])
        if options.time_shift:
            t = dpm_shift_target(eps_list[-1], t, options, ns, tables)
        order = min(2, steps + 1 - step) if steps < DPM_LOWER_ORDER_FINAL_BELOW else 2
        if order == 1:
            x = _dpm_first_update(ns, x, t_list[-1], t, eps_list[-1])
        else:
            x = _dpm_second_update(ns, x, eps_list, t_list, t)
        eps_list, t_list = eps_list[1:], t_list[1:] + [t]
        if step < steps:    # the last model value is never needed
            eps_list.append(model(x, t))
        else:
            eps_list.append(eps_list[-1])
    return x

#----------------------------------------------------------------------------
# deis (tAB, ab_order 2).


def deis_grid(num_timesteps, num_steps):
    """DEIS's times for TS-DPM (ts_phase t, ts_order 2): (sqrt(T-1) (1 - i/S))^2 in float32,
    numpy float32 [S + 1]. If truncating them to integers repeats one (S >~ 32 for T = 1000),
    the grid becomes integers: the distinct truncations plus the smallest missing timesteps."""
    top = np.float32(num_timesteps - 1)
    root = np.power(top, np.float32(0.5))
    frac = np.arange(num_steps + 1, dtype=np.float32) / np.float32(num_steps)
    ts = np.power(root * (np.float32(1) - frac), np.float32(2.0)).astype(np.float32)
    ts[-1] = 0
    ints = ts.astype(np.int64)
    _, first = np.unique(ints, return_index=True)
    ints = ints[np.sort(first)]
    missing = num_steps + 1 - len(ints)
    if missing > 0:
        present = set(ints.tolist())
        extra = [i for i in range(int(top), 0, -1) if i not in present][-missing:]
        ts = np.sort(np.concatenate([ints, extra]))[::-1].astype(np.float32)
    return ts


class _PiecewiseAlpha:
    """alpha_bar(t) linear between the integer timesteps 0..T-1, clipped to [1e-7, 1 - 1e-7], float32."""

    def __init__(self, alphas_cump):
        self.fp = np.asarray(alphas_cump, dtype=np.float32)
        self.xp = np.arange(len(self.fp), dtype=np.float32)

    def _segment(self, t):
        return np.clip(np.searchsorted(self.xp, t, side='right'), 1, len(self.xp) - 1)

    def __call__(self, t):
        t = np.asarray(t, dtype=np.float32)
        i = self._segment(t)
        df = self.fp[i] - self.fp[i - 1]
        value = self.fp[i - 1] + ((t - self.xp[i - 1]) / np.float32(1)) * df
        return np.clip(value, np.float32(1e-7), np.float32(1 - 1e-7)).astype(np.float32)

    def dlog(self, t):
        """d log alpha / dt: the segment's slope over alpha (zero where the clip binds)."""
        t = np.asarray(t, dtype=np.float32)
        i = self._segment(t)
        raw = self.fp[i - 1] + (t - self.xp[i - 1]) * (self.fp[i] - self.fp[i - 1])
        inside = (raw > np.float32(1e-7)) & (raw < np.float32(1 - 1e-7))
        return np.where(inside, (self.fp[i] - self.fp[i - 1]) / self(t), np.float32(0)).astype(np.float32)


def _lagrange(tau, nodes, j):
    """Lagrange basis of node j of `nodes` at tau: prod_k (tau - t_k) / prod_k (t_j - t_k), k != j (float32)."""
    num, den = np.ones_like(tau), np.float32(1)
    for k, node in enumerate(nodes):
        if k != j:
            num = num * (tau - node)
            den = den * (nodes[j] - node)
    return (num / den).astype(np.float32)


def deis_coefficients(alphas_cump, times, order=2, points=DEIS_RIEMANN_POINTS):
    """[S, 1 + order + 1] float32: per step i, the x weight sqrt(alpha(t_{i+1}) / alpha(t_i)) and the
    weights of eps at t_i, t_{i-1}, ... (DEIS tAB, Lagrange fit through min(i, order) + 1 past times)."""
    alpha = _PiecewiseAlpha(alphas_cump)
    times = np.asarray(times, dtype=np.float32)
    rows = []
    for i in range(len(times) - 1):
        start, end = times[i], times[i + 1]
        dt = (end - start) / np.float32(points)
        tau = (start * (np.float32(1) - np.arange(points, dtype=np.float32) / np.float32(points))
               + end * (np.arange(points, dtype=np.float32) / np.float32(points))).astype(np.float32)
        # DEIS's integrand: psi(tau, t') * (-1/2) dlog alpha/dtau / sqrt(1 - alpha(tau)).
        integrand = (np.sqrt(alpha(end) / alpha(tau)) * (np.float32(-0.5) * alpha.dlog(tau) / np.sqrt(1 - alpha(tau)))).astype(np.float32)
        nodes = times[max(0, i - order):i + 1]          # oldest first, current last
        row = [np.sqrt(alpha(end) / alpha(start))]
        for j in reversed(range(len(nodes))):           # current time first
            row.append(np.sum(integrand * _lagrange(tau, nodes, j), dtype=np.float32) * dt)
        rows.append(row + [np.float32(0)] * (order + 2 - len(row)))
    return np.asarray(rows, dtype=np.float32)


def deis_model_time(x, t, options, tables):
    """The time DEIS's network sees at grid time t: t itself, or with the time shift the window
    argmin around n = int(t) (half width W, on the variance of the current x) if n > cut_off_value,
    else n."""
    if not options.time_shift:
        return _full(x, t)
    n = int(t)
    if n <= options.cut_off_value:
        return _full(x, n)
    return window_argmin(_per_image_var(x), n, options.window_size, tables.noise_var).to(torch.float32)


def deis(eps_model, x_T, tables, options):
    """x_0 of TS-DPM's deis sampler (tAB, ab_order 2) from x_T."""
    times = deis_grid(tables.num_timesteps, options.sample_speed)
    coef = torch.from_numpy(deis_coefficients(tables.alphas_cump.cpu().numpy(), times)).to(x_T.device)
    x = x_T
    history = [x_T, x_T]        # placeholders, weighted 0 until real eps values exist
    for i in range(options.sample_speed):
        eps = eps_model(x, deis_model_time(x, float(times[i]), options, tables))
        terms = [eps] + history
        out = coef[i, 0] * x
        for weight, e in zip(coef[i, 1:], terms):
            out = out + weight * e
        x, history = out, terms[:-1]
    return x

#----------------------------------------------------------------------------
# Entry point and output.


def sample(eps_model, x_T, tables, options, randn_like=torch.randn_like):
    """The final x (before (x + 1) / 2) of TS-DPM's sampler `options.sampler` from x_T [N, C, H, W]."""
    options.check(tables.num_timesteps)
    x_T = x_T.to(torch.float32)
    with torch.no_grad():
        if options.sampler == 'pnm_solver':
            return pnm_solver(eps_model, x_T, tables, options, randn_like)
        if options.sampler == 'dpm-solver':
            return dpm_solver(eps_model, x_T, tables, options)
        return deis(eps_model, x_T, tables, options)


def to_uint8(x):
    """Final x [N, C, H, W] -> uint8 numpy [N, H, W, 3] as TS-DPM writes it: clamp((x + 1) / 2, 0, 1),
    then torchvision's save_image (x * 255 + 0.5, clamped, truncated; one channel made RGB)."""
    images = torch.clamp((x.to(torch.float32) + 1.0) / 2.0, 0.0, 1.0)
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    return images.mul(255).add_(0.5).clamp_(0, 255).permute(0, 2, 3, 1).to('cpu', torch.uint8).numpy()
