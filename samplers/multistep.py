"""Few-step solvers on the denoiser interface: S-PNDM, F-PNDM, DPM-Solver, DPM-Solver++(2M), DEIS.

Every solver is written in the EDM form x = y + sigma n, where the probability-flow ODE is
dx/dsigma = eps(x; sigma) = (x - D(x; sigma)) / sigma. The papers' VP state is
x / sqrt(1 + sigma^2) and their half log-SNR is lambda = -log(sigma); in this form the
exponential integrators lose their linear part and the DDIM step is an Euler step in sigma.
docs/solvers.md defines each method, its evaluations and how epsilon scaling and the time
shift compose with it.

One loop (`_integrate`) is shared by all of them:
- step i runs from sigma_i to sigma_{i+1}; every network evaluation of step i uses
  at_step(denoiser, i), so epsilon scaling reaches all of them;
- the last step, into sigma_N = 0, is x_N = D(x_{N-1}; sigma_{N-1}) for every solver (one
  evaluation): the formulas in lambda are singular at sigma = 0, and this is what EDM's Euler
  step, k-diffusion's DPM-Solver++(2M) and DDIM do there;
- the network sees only the levels of `sigmas`, except F-PNDM's Runge-Kutta midpoints, which
  are rounded with the network's `round_sigma` (carried by `churn`, as for EDM's t_hat);
- with a time shift, step i starts from a per-sample level sigma'_i; the history keeps the
  levels it was evaluated at, and the variable-step formulas use them per sample.
The state is float64; the solvers are deterministic and draw no noise.
"""

import functools

import numpy as np
import torch

from . import denoisers
from .schedules import VP_BETA_D, VP_BETA_MIN, VPSchedule, per_sample

# DPM-Solver's multistep sampler uses lower orders at the end below this many evaluations
# ("lower_order_final", which its authors found to stabilise few-step sampling).
LOWER_ORDER_FINAL_BELOW = 15
# DEIS's tAB fits eps by a polynomial in the time t of the VP SDE with beta(t) = 0.1 + 19.9 t
# (DDPM's linear schedule in continuous time); its weights are integrals over sigma, taken
# by Gauss-Legendre quadrature with this many nodes (exact to float64 for these integrands).
DEIS_QUADRATURE_NODES = 32
_VP_TIME = VPSchedule(VP_BETA_D, VP_BETA_MIN)


def _check(name, sigmas, churn, ode):
    """The levels as floats, after refusing what these solvers do not define."""
    levels = sigmas.tolist()
    if not (len(levels) >= 2 and levels[-1] == 0 and levels[-2] > 0 and all(a > b for a, b in zip(levels, levels[1:]))):
        raise ValueError(f'{name} needs a strictly decreasing tensor of positive levels followed by 0')
    if ode is not None and not ode.is_edm:
        raise ValueError(f'{name} integrates in lambda = -log(sigma): it takes no other schedule or signal scaling')
    if churn is not None and any(churn.gamma(sigma, len(levels) - 1) > 0 for sigma in levels[:-1]):
        raise ValueError(f'{name} is deterministic: stochastic churn is defined for euler and heun only')
    return levels


def _shifted_level(time_shift, x, sigma, level, level_next, previous):
    """Per-sample sigma'_i [N] of the time shift, kept only below the previous evaluation's level
    (a window reaching back past it would leave the history without distinct levels). `level`,
    `level_next`: sigma_i (the tensor `sigma`) and sigma_{i+1} as floats."""
    shifted = time_shift.shift(x, level, level_next)
    return torch.where(shifted < previous, shifted, sigma)


def _same(fn):
    return fn


def _one_level_at_a_time(fn):
    """fn applied to each element of a 1-d tensor as a 0-dim tensor, as a step computes it."""
    return lambda v: torch.stack([fn(level) for level in v.unbind(0)])


class _LazySteps:
    """Per-step values of a schedule, computed by `_compute()` for all steps at the first request
    (item i: step i's values)."""

    def __init__(self, sigmas):
        self.sigmas = sigmas
        self.steps = None

    def __getitem__(self, i):
        if self.steps is None:
            self.steps = self._compute()
        return self.steps[i]


class _StepScalars(_LazySteps):
    """The scalars of every step of a schedule that starts at a scheduled level, computed at the
    first request for all steps at once: `scalars(sigma, sigma_next, per_level)` on the [S]
    tensors of the steps' levels, instead of a dozen tiny tensor operations per step. Its
    transcendental functions go through per_level, which applies them to one level at a time as
    the per-step call (per_level = _same on 0-dim levels) does, and the rest is exact elementwise
    arithmetic, so the values are the per-step ones bit for bit. Item i: a tuple of 0-dim tensors."""

    def __init__(self, sigmas, scalars):
        super().__init__(sigmas)
        self.scalars = scalars

    def _compute(self):
        sigmas = self.sigmas.to(torch.float64)
        columns = self.scalars(sigmas[:-2], sigmas[1:-1], _one_level_at_a_time)  # the steps into positive levels
        return list(zip(*(c.unbind(0) for c in columns)))


class _Evaluator:
    """The denoiser of one step, as D(x; sigma) or eps(x; sigma), in float64."""

    def __init__(self, denoiser, class_labels):
        self.denoiser = denoiser
        self.class_labels = class_labels

    def denoised(self, x, sigma):
        return self.denoiser(x, sigma, self.class_labels).to(torch.float64)

    def eps(self, x, sigma):
        """eps = (x - D(x; sigma)) / sigma."""
        return (x - self.denoised(x, sigma)) / per_sample(sigma)


def _integrate(name, step, denoiser, latents, sigmas, class_labels, churn, time_shift, ode):
    """Run `step(evaluate, x, sigma, sigma_next, i, num_steps, history, round_sigma)` for the
    steps into positive levels and D(x; sigma_{N-1}) into 0; return the images (float64)."""
    sigmas = sigmas.to(torch.float64)
    levels = _check(name, sigmas, churn, ode)
    num_steps = len(levels) - 1
    round_sigma = torch.as_tensor if churn is None else churn.round_sigma
    x = latents.to(torch.float64) * sigmas[0]
    history = []
    previous = None
    for i in range(num_steps):
        evaluate = _Evaluator(denoisers.at_step(denoiser, i), class_labels)
        sigma = sigmas[i]
        if time_shift is not None and time_shift.active(i, levels[i]):
            sigma = _shifted_level(time_shift, x, sigma, levels[i], levels[i + 1], previous)
        if i == num_steps - 1:
            return evaluate.denoised(x, sigma)  # the step into sigma = 0
        x = step(evaluate, x, sigma, sigmas[i + 1], i, num_steps, history, round_sigma)
        previous = sigma
    raise AssertionError('unreachable')

#----------------------------------------------------------------------------
# PNDM (arXiv 2202.09778): the DDIM step as the transfer part, with eps combined by
# pseudo Runge-Kutta or pseudo linear multistep rules.


def _transfer(x, eps, sigma, sigma_next):
    """PNDM's transfer part phi(x, eps, sigma -> sigma_next): DDIM, in EDM form an Euler step in sigma."""
    return x + per_sample(sigma_next - sigma) * eps


def _spndm_step(evaluate, x, sigma, sigma_next, i, num_steps, history, round_sigma):
    eps = evaluate.eps(x, sigma)
    if not history:
        # Pseudo improved Euler (S-PNDM's first step, 2 evaluations).
        eps_next = evaluate.eps(_transfer(x, eps, sigma, sigma_next), sigma_next)
        eps_prime = 0.5 * (eps + eps_next)
    else:
        # Pseudo linear multistep of order 2, fixed weights (3 e_i - e_{i-1}) / 2.
        eps_prime = 0.5 * (3 * eps - history[-1])
    history[:] = [eps]  # only eps at the step's start enters the history
    return _transfer(x, eps_prime, sigma, sigma_next)


def timestep_midpoint(levels):
    """PNDM's Runge-Kutta midpoint on a discrete network (named mode `fpndm-pndm`): sigma, sigma_next
    -> the level of timestep floor((t + t_next) / 2), t and t_next the timesteps of the levels
    nearest them. `levels` [T]: the network's sigma of each timestep, ascending."""
    levels = torch.as_tensor(levels, dtype=torch.float64)

    def timestep(sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return (sigma.reshape(-1, 1) - levels.to(sigma.device).reshape(1, -1)).abs().argmin(dim=1).reshape(sigma.shape)

    def midpoint(sigma, sigma_next):
        t_mid = torch.div(timestep(sigma) + timestep(sigma_next), 2, rounding_mode='floor')  # PNDM: ab[t_mid.long()]
        return levels.to(t_mid.device)[t_mid]
    return midpoint


def _fpndm_step(evaluate, x, sigma, sigma_next, i, num_steps, history, round_sigma, midpoint=None):
    eps = evaluate.eps(x, sigma)
    if len(history) < 3:
        # Pseudo Runge-Kutta (F-PNDM's first three steps, 4 evaluations): classical RK4 in sigma
        # with the transfer part; the midpoint is rounded to a level the network has (by default
        # the level nearest the sigma midpoint; `midpoint`: PNDM's timestep midpoint).
        if midpoint is not None:
            sigma_mid = midpoint(sigma, sigma_next)
        else:
            sigma_mid = round_sigma(0.5 * (sigma + sigma_next)).to(torch.float64)
        e_2 = evaluate.eps(_transfer(x, eps, sigma, sigma_mid), sigma_mid)
        e_3 = evaluate.eps(_transfer(x, e_2, sigma, sigma_mid), sigma_mid)
        e_4 = evaluate.eps(_transfer(x, e_3, sigma, sigma_next), sigma_next)
        eps_prime = (eps + 2 * e_2 + 2 * e_3 + e_4) / 6
    else:
        # Pseudo linear multistep of order 4, fixed weights (55, -59, 37, -9) / 24.
        eps_prime = (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
    history[:] = history[-2:] + [eps]
    return _transfer(x, eps_prime, sigma, sigma_next)

#----------------------------------------------------------------------------
# DPM-Solver (arXiv 2206.00927), multistep with noise prediction, as TS-DPM runs it; and
# DPM-Solver++(2M) (arXiv 2211.01095) with data prediction, as k-diffusion's sample_dpmpp_2m.


def _lam(sigma):
    """lambda = -log(sigma): the half log-SNR of the VP form."""
    return -torch.log(sigma)


def _dpmsolver_step(order, reference=False):
    def step(evaluate, x, sigma, sigma_next, i, num_steps, history, round_sigma):
        history[:] = history[-(order - 1):] if order > 1 else []
        history.append((_lam(sigma), evaluate.eps(x, sigma)))
        p = min(order, len(history))
        if num_steps < LOWER_ORDER_FINAL_BELOW:
            p = min(p, num_steps - 1 - i)  # orders ..., 2, 1 into sigma_{N-1}
        (lam, e_0), lam_next = history[-1], _lam(sigma_next)
        h = lam_next - lam
        phi_1 = torch.expm1(h)
        # x_t = x_s - sigma_t (e^h - 1) e_0 - ...: DPM-Solver's update divided by alpha_t.
        x_next = x - per_sample(sigma_next * phi_1) * e_0
        if p == 2:
            lam_1, e_1 = history[-2]
            r_0 = (lam - lam_1) / h
            d1_0 = (e_0 - e_1) / per_sample(r_0)
            x_next = x_next - per_sample(0.5 * sigma_next * phi_1) * d1_0
        elif p == 3:
            (lam_2, e_2), (lam_1, e_1) = history[-3], history[-2]
            r_0, r_1 = (lam - lam_1) / h, (lam_1 - lam_2) / h
            d1_0 = (e_0 - e_1) / per_sample(r_0)
            d1_1 = (e_1 - e_2) / per_sample(r_1)
            d1 = d1_0 + per_sample(r_0 / (r_0 + r_1)) * (d1_0 - d1_1)            # ~ h eps'
            # ~ h^2 eps''; DPM-Solver's code divides by (r_0 + r_1) only, which halves it (reference=True).
            d2 = (1 if reference else 2) * (d1_0 - d1_1) / per_sample(r_0 + r_1)
            phi_2 = phi_1 / h - 1
            phi_3 = phi_2 / h - 0.5
            x_next = x_next - per_sample(sigma_next * phi_2) * d1 - per_sample(sigma_next * phi_3) * d2
        return x_next
    return step


def _dpmpp2m_step(evaluate, x, sigma, sigma_next, i, num_steps, history, round_sigma):
    denoised = evaluate.denoised(x, sigma)
    lam, lam_next = _lam(sigma), _lam(sigma_next)
    h = lam_next - lam
    if history:
        # DPM-Solver++(2M) (arXiv 2211.01095, Algorithm 2): x0 extrapolated with r = h_{i-1} / h_i.
        lam_prev, denoised_prev = history[-1]
        r = (lam - lam_prev) / h
        weight = per_sample(1 / (2 * r))
        d = (1 + weight) * denoised - weight * denoised_prev
    else:
        d = denoised  # first step: DPM-Solver++(1) = DDIM
    history[:] = [(lam, denoised)]
    return per_sample(sigma_next / sigma) * x - per_sample(torch.expm1(-h)) * d

#----------------------------------------------------------------------------
# DEIS (arXiv 2204.13902), tAB: eps extrapolated by a polynomial in the VP time t through the
# last k evaluations, integrated exactly: x_{i+1} = x_i + sum_j C_ij eps_j,
# C_ij = integral from sigma_i to sigma_{i+1} of l_j(t(sigma)) dsigma (l_j: Lagrange basis).


def vp_time(sigma, per_level=None):
    """t(sigma) of the VP SDE with beta(t) = 0.1 + 19.9 t, DEIS's and DDPM's linear schedule.
    `per_level` (see _one_level_at_a_time): how its logarithm and square root are applied."""
    if per_level is None:
        return _VP_TIME.sigma_inv(sigma)
    beta_d, beta_min = _VP_TIME.beta_d, _VP_TIME.beta_min
    # VPSchedule.sigma_inv, operation by operation.
    return (per_level(torch.sqrt)(beta_min ** 2 + 2 * beta_d * per_level(torch.log)(sigma ** 2 + 1)) - beta_min) / beta_d


@functools.lru_cache(maxsize=8)
def _gauss_legendre(n, device):
    """Nodes and weights of n-point Gauss-Legendre quadrature on [-1, 1], float64 on `device`."""
    return tuple(torch.as_tensor(a, dtype=torch.float64, device=device) for a in np.polynomial.legendre.leggauss(n))


@functools.lru_cache(maxsize=8)
def _other_nodes(k, device):
    """[k, k - 1]: row j lists the node indices m != j."""
    return torch.tensor([[m for m in range(k) if m != j] for j in range(k)], device=device)


def deis_coefficients(sigma, sigma_next, nodes):
    """[C_j] for the Lagrange basis on the times `nodes` (newest first), each of sigma's shape."""
    if len(nodes) == 1:
        return [sigma_next - sigma]  # DDIM
    xi, w = _gauss_legendre(DEIS_QUADRATURE_NODES, sigma.device)
    half = 0.5 * (sigma_next - sigma)
    t = vp_time((0.5 * (sigma + sigma_next))[..., None] + half[..., None] * xi)  # [..., Q]
    t_nodes = torch.stack(torch.broadcast_tensors(*nodes))[..., None]            # [k, ..., 1]
    others = _other_nodes(len(nodes), t.device)                                   # [k, k - 1]
    # l_j(t) = prod_{m != j} (t - t_m) / (t_j - t_m), all j at once.
    numerators = (t - t_nodes)[others].prod(dim=1)                                # [k, ..., Q]
    denominators = (t_nodes[:, None] - t_nodes[others]).prod(dim=1)              # [k, ..., 1]
    return list((numerators / denominators * w).sum(dim=-1) * half)


class _DEISPlan(_LazySteps):
    """The coefficients C_ij of every step from a scheduled level with scheduled levels in its
    history, computed at the first request for all steps at once: deis_coefficients on the [S]
    tensors of the steps with the same number of nodes (the quadrature of all of them in one
    [S, Q] tensor), instead of some twenty small tensor operations per step. The node times are
    taken one level at a time, as the steps take them, and the quadrature's elementwise
    operations and sums run on rows of the same length, so the coefficients are the per-step
    ones bit for bit."""

    def __init__(self, sigmas, order):
        super().__init__(sigmas)
        self.order = order

    def _compute(self):
        sigmas = self.sigmas.to(torch.float64)
        num_steps = len(sigmas) - 1
        t = vp_time(sigmas[:-1], _one_level_at_a_time)
        counts = [min(self.order, i + 1) for i in range(num_steps - 1)]
        steps = [None] * len(counts)
        for k in sorted(set(counts)):
            js = [j for j, count in enumerate(counts) if count == k]
            index = torch.tensor(js, device=sigmas.device)
            coefficients = deis_coefficients(sigmas[index], sigmas[index + 1], [t[index - m] for m in range(k)])
            for j, row in zip(js, zip(*(c.unbind(0) for c in coefficients))):
                steps[j] = list(row)
        return steps


def _deis_step(order, plan):
    def step(evaluate, x, sigma, sigma_next, i, num_steps, history, round_sigma):
        history[:] = history[-(order - 1):] if order > 1 else []
        history.append((vp_time(sigma), evaluate.eps(x, sigma)))
        recent = history[::-1]  # newest first
        if all(t.ndim == 0 for t, _ in recent):  # scheduled levels only
            coefficients = plan[i]
        else:
            coefficients = deis_coefficients(sigma, sigma_next, [t for t, _ in recent])
        for c, (_, eps) in zip(coefficients, recent):
            x = x + per_sample(c) * eps
        return x
    return step

#----------------------------------------------------------------------------
# The solvers, with the signature of samplers.solvers.sample_euler. `churn` may be None (no
# churn, no level rounding); churn with gamma_i > 0 is refused.


def sample_spndm(denoiser, latents, sigmas, randn_like=torch.randn_like, class_labels=None, *,
                 churn=None, time_shift=None, ode=None):
    """Images (float64) by S-PNDM: a pseudo improved-Euler first step, then second-order pseudo
    linear multistep steps; N + 1 denoiser evaluations for N steps."""
    return _integrate('spndm', _spndm_step, denoiser, latents, sigmas, class_labels, churn, time_shift, ode)


def sample_fpndm(denoiser, latents, sigmas, randn_like=torch.randn_like, class_labels=None, *,
                 churn=None, time_shift=None, ode=None):
    """Images (float64) by F-PNDM: three pseudo Runge-Kutta steps (4 evaluations each), then
    fourth-order pseudo linear multistep steps; N + 9 evaluations for N >= 4 steps."""
    return _integrate('fpndm', _fpndm_step, denoiser, latents, sigmas, class_labels, churn, time_shift, ode)


def sample_fpndm_pndm(denoiser, latents, sigmas, randn_like=torch.randn_like, class_labels=None, *,
                      churn=None, time_shift=None, ode=None, midpoint=None):
    """sample_fpndm with PNDM's Runge-Kutta midpoint: the timestep (t + t_next) / 2 (truncated, as
    PNDM indexes its alpha_bar table), not the level nearest the sigma midpoint. Defined on
    discrete networks only: `midpoint` is timestep_midpoint(levels of the network)."""
    if midpoint is None:
        raise ValueError('fpndm-pndm needs a discrete-time network: its midpoint is a timestep')
    return _integrate('fpndm-pndm', functools.partial(_fpndm_step, midpoint=midpoint), denoiser, latents, sigmas,
                      class_labels, churn, time_shift, ode)


def sample_dpmsolver(denoiser, latents, sigmas, randn_like=torch.randn_like, class_labels=None, *,
                     churn=None, time_shift=None, ode=None, order=3):
    """Images (float64) by multistep DPM-Solver-`order` (noise prediction; lower orders for the
    first steps and, below 15 steps, the last ones); N evaluations for N steps."""
    return _integrate('dpmsolver', _dpmsolver_step(_order(order)), denoiser, latents, sigmas, class_labels,
                      churn, time_shift, ode)


def sample_dpmsolver_ref(denoiser, latents, sigmas, randn_like=torch.randn_like, class_labels=None, *,
                         churn=None, time_shift=None, ode=None, order=3):
    """sample_dpmsolver as DPM-Solver's reference code computes it: identical for orders 1 and
    2; its third-order update takes half the second-derivative term (docs/solvers.md), which
    makes it second order. Kept to reproduce published DPM-Solver-3 runs."""
    return _integrate('dpmsolver-ref', _dpmsolver_step(_order(order), reference=True), denoiser, latents, sigmas,
                      class_labels, churn, time_shift, ode)


def sample_dpmpp2m(denoiser, latents, sigmas, randn_like=torch.randn_like, class_labels=None, *,
                   churn=None, time_shift=None, ode=None):
    """Images (float64) by DPM-Solver++(2M), k-diffusion's sample_dpmpp_2m; N evaluations for N steps."""
    return _integrate('dpmpp2m', _dpmpp2m_step, denoiser, latents, sigmas, class_labels, churn, time_shift, ode)


def sample_deis(denoiser, latents, sigmas, randn_like=torch.randn_like, class_labels=None, *,
                churn=None, time_shift=None, ode=None, order=3):
    """Images (float64) by DEIS tAB of convergence order `order` (DEIS's tAB{order-1}: a
    polynomial of degree order - 1 in t); N evaluations for N steps."""
    order = _order(order)
    return _integrate('deis', _deis_step(order, _DEISPlan(sigmas, order)), denoiser, latents, sigmas, class_labels,
                      churn, time_shift, ode)


def _order(order):
    if order not in (1, 2, 3):
        raise ValueError(f'order must be 1, 2 or 3, got {order}')
    return int(order)


def evaluations(solver, num_steps):
    """Denoiser evaluations per image of the solvers here for `num_steps` steps."""
    if solver == 'spndm':
        return num_steps + 1
    if solver in ('fpndm', 'fpndm-pndm'):
        return num_steps + 3 * min(3, num_steps - 1)
    return num_steps

