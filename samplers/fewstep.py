"""Second-round few-step solvers: UniPC, DPM-Solver++(3M), iPNDM (deterministic) and Euler
ancestral, DPM-Solver++ SDE, DPM-Solver++(2M) SDE (stochastic), in EDM form.

They run in samplers.multistep's loop, so they share its conventions (docs/solvers.md): step
i runs from sigma_i (or the time shift's per-sample sigma'_i) to sigma_{i+1}, every evaluation
of step i goes through at_step(denoiser, i) (epsilon scaling), and the step into sigma_N = 0 is
x_N = D(x_{N-1}; sigma_{N-1}). In EDM form x = y + sigma n the data-prediction exponential
integrators read x_t = (sigma_t / sigma_s) x_s - (e^{-h} - 1) D + ..., h = lambda_t - lambda_s,
lambda = -log(sigma) (their VP updates divided by alpha_t).

The stochastic samplers draw their noise with the sampler's `randn_like` (samplers.noise.SeedNoise
in generate.py: one generator per seed), one standard normal tensor per draw, in step order,
so an image depends only on its seed.
"""

import dataclasses
import math

import torch

from .multistep import _integrate, _lam, _LazySteps, _same, _StepScalars
from .schedules import per_sample

UNIPC_VARIANTS = ('bh1', 'bh2')
IPNDM_WEIGHTS = ((1,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))

#----------------------------------------------------------------------------
# UniPC (arXiv 2302.04867): UniP-p predictor and UniC-p corrector with data prediction (its
# Algorithms 2 and 3 with B(h) = h (bh1) or e^h - 1 (bh2)). The corrector of step i-1 uses the
# evaluation at the start of step i, so it costs nothing: N evaluations for N steps.


def _unipc_coefficients(h, h_phi_1, ratios, order, variant, corrector):
    """(B(h), [rho_k]) of UniP-order (corrector False) or UniC-order over a step of size h, with
    h_phi_1 = e^{-h} - 1 and the previous values at the ratios r_k (newest first). rho solves
    R rho = b, b_k = (k-1)! phi_{k+1}(h) / B(h) for the data prediction (in -h), R the rows r^(k-1)
    of the ratios and 1; UniPC's code takes rho = 1/2 for the second-order predictor and the
    first-order corrector. h may have any batch shape: samples (time shift) or steps (_UniPCPlan)."""
    ratios = torch.broadcast_tensors(*ratios, torch.ones_like(h))  # per-sample levels in any of them
    hh = -h
    b_h = hh if variant == 'bh1' else h_phi_1
    size = order if corrector else order - 1
    if size <= 1:
        return b_h, [0.5] * size
    h_phi_k = h_phi_1 / hh - 1
    b = [h_phi_k / b_h]  # k = 1, (k-1)! = 1
    factorial = 1
    for k in range(2, size + 1):
        factorial *= k
        h_phi_k = h_phi_k / hh - 1 / factorial
        b.append(h_phi_k * factorial / b_h)
    r = torch.stack(ratios[:size], dim=-1)
    R = torch.stack([torch.ones_like(r), r, r * r][:size], dim=-2)  # rows r^0, r^1, r^2 (what r ** k gives)
    return b_h, list(torch.linalg.solve(R, torch.stack(b, dim=-1).expand(R.shape[:-1])).unbind(-1))


@dataclasses.dataclass
class _UniPCWeights:
    """One UniPC update's scalars: sigma_next / sigma, e^{-h} - 1, the ratios r_k, B(h) and the
    predictor's and the corrector's rho."""
    scale: object
    h_phi_1: object
    ratios: list
    b_h: object
    predictor: list
    corrector: list


class _UniPCPlan(_LazySteps):
    """The weights of the update from every scheduled level to the next (orders as _unipc_step
    runs them), computed at the first request for all steps at once: the formulas of
    _unipc_coefficients on [S] tensors of the steps, one batched solve per order, instead of some
    thirty tiny tensor operations and a solve per update. The logarithms and e^{-h} - 1 are taken
    per level as the per-step code takes them, and the rest is exact arithmetic and per-matrix
    LAPACK solves, so the weights are the ones the per-step code gives, bit for bit."""

    def __init__(self, sigmas, order, variant):
        super().__init__(sigmas)
        self.order, self.variant = order, variant

    def _compute(self):
        sigmas = self.sigmas.to(torch.float64)
        num_steps = len(sigmas) - 1
        lam = torch.stack([_lam(sigma) for sigma in sigmas[:-1].unbind(0)])
        orders = [min(self.order, j + 1, num_steps - j) for j in range(num_steps - 1)]
        steps = [None] * len(orders)
        for order in sorted(set(orders)):
            js = [j for j, p in enumerate(orders) if p == order]
            index = torch.tensor(js, device=lam.device)
            lam_0 = lam[index]
            h = lam[index + 1] - lam_0
            h_phi_1 = torch.stack([torch.expm1(hh) for hh in (-h).unbind(0)])
            ratios = [(lam[index - k] - lam_0) / h for k in range(1, order)]
            b_h, predictor = _unipc_coefficients(h, h_phi_1, ratios, order, self.variant, corrector=False)
            _, corrector = _unipc_coefficients(h, h_phi_1, ratios, order, self.variant, corrector=True)
            columns = [sigmas[index + 1] / sigmas[index], h_phi_1, b_h] + ratios + predictor + corrector
            columns = [c.unbind(0) if isinstance(c, torch.Tensor) else [c] * len(js) for c in columns]
            for n, j in enumerate(js):
                scale, phi, b, *rest = (c[n] for c in columns)
                steps[j] = _UniPCWeights(scale, phi, rest[:order - 1], b, rest[order - 1:2 * order - 2],
                                         rest[2 * order - 2:])
        return steps


def _unipc_base(x, values, scale, h_phi_1, ratios):
    """(sigma_next / sigma) x - (e^{-h} - 1) D_0 and the differences (D_k - D_0) / r_k of the
    previous values (newest first), from the state x at the level of the newest value D_0."""
    d_0 = values[-1][1]
    diffs = [(d_k - d_0) / per_sample(r) for r, (_, d_k) in zip(ratios, values[-2::-1])]
    return per_sample(scale) * x - per_sample(h_phi_1) * d_0, diffs


def _unipc_corrected(base, diffs, b_h, rhos):
    """base - B(h) sum_k rho_k diff_k."""
    if not rhos:
        return base
    return base - per_sample(b_h) * sum(per_sample(rho) * diff for rho, diff in zip(rhos, diffs))


def _unipc_update(x, sigma, sigma_next, values, order, variant, denoised_next=None):
    """UniP-order from (x, sigma) with the values [(lambda, D)] (oldest first, newest at sigma) to
    sigma_next; with denoised_next = D at sigma_next, UniC-order instead. Per-sample levels."""
    values = values[-order:]
    lam_0 = values[-1][0]
    h = _lam(sigma_next) - lam_0
    ratios = [(lam_k - lam_0) / h for lam_k, _ in values[-2::-1]]
    h_phi_1 = torch.expm1(-h)
    b_h, rhos = _unipc_coefficients(h, h_phi_1, ratios, order, variant, corrector=denoised_next is not None)
    base, diffs = _unipc_base(x, values, sigma_next / sigma, h_phi_1, ratios)
    if denoised_next is not None:
        diffs.append(denoised_next - values[-1][1])
    return _unipc_corrected(base, diffs, b_h, rhos)


def _unipc_step(order, variant, plan):
    def step(evaluate, x, sigma, sigma_next, i, num_steps, history, round_sigma):
        denoised = evaluate.denoised(x, sigma)
        scheduled = sigma.ndim == 0  # not moved by the time shift
        if history:
            # UniC of the previous step: its start, values and order, with D at this step's level.
            x_prev, sigma_prev, prev_values, prev_order, predicted = history.pop()
            if predicted is not None and scheduled:
                # The predictor's update landed here: its base, differences and planned weights.
                base, diffs, weights = predicted
                x = _unipc_corrected(base, diffs + [denoised - prev_values[-1][1]], weights.b_h, weights.corrector)
            else:
                x = _unipc_update(x_prev, sigma_prev, sigma, prev_values, prev_order, variant, denoised)
            values = prev_values[-(order - 1):] if order > 1 else []
        else:
            values = []
        values = values + [(_lam(sigma), denoised)]
        # Warm-up, and diffusers' lower_order_final at any N: ..., 3, 2 into sigma_{N-1}, 1 into 0.
        p = min(order, len(values), num_steps - i)
        if all(lam.ndim == 0 for lam, _ in values[-p:]):  # scheduled levels only: the plan's weights
            weights = plan[i]
            base, diffs = _unipc_base(x, values[-p:], weights.scale, weights.h_phi_1, weights.ratios)
            history.append((x, sigma, values, p, (base, diffs, weights)))
            return _unipc_corrected(base, diffs, weights.b_h, weights.predictor)
        history.append((x, sigma, values, p, None))
        return _unipc_update(x, sigma, sigma_next, values, p, variant)
    return step

#----------------------------------------------------------------------------
# DPM-Solver++(3M) (arXiv 2211.01095, the multistep third-order data-prediction solver):
# D extrapolated from the last three evaluations. The reference code (k-diffusion's
# sample_dpmpp_3m_sde with eta = 0, diffusers' DPMSolverMultistepScheduler order 3) halves the
# second-derivative term as DPM-Solver's code does (docs/solvers.md); `reference=True` keeps it.


def _dpmpp3m_step(reference=False):
    def step(evaluate, x, sigma, sigma_next, i, num_steps, history, round_sigma):
        denoised = evaluate.denoised(x, sigma)
        lam, lam_next = _lam(sigma), _lam(sigma_next)
        h = lam_next - lam
        x_next = per_sample(sigma_next / sigma) * x - per_sample(torch.expm1(-h)) * denoised
        phi_2 = torch.expm1(-h) / h + 1
        if len(history) >= 2:
            (lam_2, d_2), (lam_1, d_1) = history[-2], history[-1]
            r_0, r_1 = (lam - lam_1) / h, (lam_1 - lam_2) / h
            d1_0 = (denoised - d_1) / per_sample(r_0)
            d1_1 = (d_1 - d_2) / per_sample(r_1)
            d1 = d1_0 + per_sample(r_0 / (r_0 + r_1)) * (d1_0 - d1_1)             # ~ h D'
            d2 = (1 if reference else 2) * (d1_0 - d1_1) / per_sample(r_0 + r_1)  # ~ h^2 D''
            phi_3 = phi_2 / h - 0.5
            x_next = x_next + per_sample(phi_2) * d1 - per_sample(phi_3) * d2
        elif history:
            lam_1, d_1 = history[-1]
            x_next = x_next + per_sample(phi_2 * h / (lam - lam_1)) * (denoised - d_1)
        history[:] = history[-1:] + [(lam, denoised)]
        return x_next
    return step

#----------------------------------------------------------------------------
# iPNDM (DEIS, arXiv 2204.13902, Appendix; the "improved PNDM"): PNDM's pseudo linear multistep
# in sigma with eps, warmed up by lower-order multistep steps instead of Runge-Kutta ones, so
# every step costs one evaluation. The weights are Adams-Bashforth's for equal steps.


def _ipndm_step(evaluate, x, sigma, sigma_next, i, num_steps, history, round_sigma):
    eps = evaluate.eps(x, sigma)
    history[:] = history[-3:] + [eps]
    weights = IPNDM_WEIGHTS[len(history) - 1]
    eps_prime = sum(w * e for w, e in zip(weights, history[::-1]))
    return x + per_sample(sigma_next - sigma) * eps_prime

#----------------------------------------------------------------------------
# Stochastic samplers, as k-diffusion defines them (eta = 1, s_noise = 1).


def ancestral_levels(sigma, sigma_next, eta=1.0, sqrt=torch.sqrt):
    """(sigma_down, sigma_up): the deterministic step goes to sigma_down, then noise of std
    sigma_up brings the level back to sigma_next (k-diffusion's get_ancestral_step)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    sigma_next = torch.as_tensor(sigma_next, dtype=torch.float64)
    sigma_up = torch.minimum(sigma_next, eta * sqrt(sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2))
    return sqrt(sigma_next ** 2 - sigma_up ** 2), sigma_up


def _euler_ancestral_scalars(sigma, sigma_next, per_level=_same):
    """(sigma_down - sigma, sigma_up)."""
    sigma_down, sigma_up = ancestral_levels(sigma, sigma_next, sqrt=per_level(torch.sqrt))
    return sigma_down - sigma, sigma_up


def _euler_ancestral_step(randn_like, scalars):
    def step(evaluate, x, sigma, sigma_next, i, num_steps, history, round_sigma):
        d = evaluate.eps(x, sigma)
        down, up = scalars[i] if sigma.ndim == 0 else _euler_ancestral_scalars(sigma, sigma_next)
        x = x + per_sample(down) * d
        return x + per_sample(up) * randn_like(x)
    return step


def _dpmpp_sde_scalars(round_sigma, r=0.5):
    """scalars(sigma, sigma_next, per_level) of DPM-Solver++ SDE's step: sigma_s, then the
    (x, D) factors and the noise std of each of its two stages."""
    def scalars(sigma, sigma_next, per_level=_same):
        log, expm1, sqrt = per_level(torch.log), per_level(torch.expm1), per_level(torch.sqrt)
        lam, lam_next = -log(sigma), -log(sigma_next)
        h = lam_next - lam
        sigma_s = per_level(lambda v: round_sigma(torch.exp(v)).to(torch.float64))(-(lam + r * h))
        stages = []
        for target in (sigma_s, sigma_next):
            sigma_down, sigma_up = ancestral_levels(sigma, target, sqrt=sqrt)
            stages += [sigma_down / sigma, expm1(lam - -log(sigma_down)), sigma_up]
        return (sigma_s, *stages)
    return scalars


def _dpmpp_sde_step(randn_like, r, scalars, scheduled):
    def step(evaluate, x, sigma, sigma_next, i, num_steps, history, round_sigma):
        # DPM-Solver++(2S) with ancestral noise in both stages (k-diffusion's sample_dpmpp_sde).
        denoised = evaluate.denoised(x, sigma)
        sigma_s, x_1, d_1, up_1, x_2, d_2, up_2 = scheduled[i] if sigma.ndim == 0 else scalars(sigma, sigma_next)
        x_s = per_sample(x_1) * x - per_sample(d_1) * denoised
        x_s = x_s + per_sample(up_1) * randn_like(x)
        denoised_2 = evaluate.denoised(x_s, sigma_s)
        fac = 1 / (2 * r)
        d = (1 - fac) * denoised + fac * denoised_2
        x = per_sample(x_2) * x - per_sample(d_2) * d
        return x + per_sample(up_2) * randn_like(x)
    return step


def _dpmpp2m_sde_scalars(eta):
    """scalars(sigma, sigma_next, per_level) of DPM-Solver++(2M) SDE's step: h, the (x, D)
    factors, e^{-h - eta h} - 1 and the noise std."""
    def scalars(sigma, sigma_next, per_level=_same):
        log, exp, expm1 = per_level(torch.log), per_level(torch.exp), per_level(torch.expm1)
        h = -log(sigma_next) - -log(sigma)
        eta_h = eta * h
        phi = expm1(-h - eta_h)
        noise = sigma_next * per_level(torch.sqrt)(-expm1(-2 * eta_h))
        return h, sigma_next / sigma * exp(-eta_h), phi, noise
    return scalars


def _dpmpp2m_sde_step(randn_like, scalars, scheduled):
    def step(evaluate, x, sigma, sigma_next, i, num_steps, history, round_sigma):
        # DPM-Solver++(2M) SDE, midpoint form (k-diffusion's sample_dpmpp_2m_sde).
        denoised = evaluate.denoised(x, sigma)
        h, scale, phi, noise = scheduled[i] if sigma.ndim == 0 else scalars(sigma, sigma_next)
        x = per_sample(scale) * x - per_sample(phi) * denoised
        if history:
            h_last, denoised_last = history[-1]
            x = x - per_sample(0.5 * phi * h / h_last) * (denoised - denoised_last)
        history[:] = [(h, denoised)]
        return x + per_sample(noise) * randn_like(x)
    return step

#----------------------------------------------------------------------------
# The solvers, with the signature of samplers.solvers.sample_euler.


def sample_unipc(denoiser, latents, sigmas, randn_like=torch.randn_like, class_labels=None, *,
                 churn=None, time_shift=None, ode=None, order=3, variant='bh2'):
    """Images (float64) by UniPC-`order` (UniP predictor, UniC corrector, B(h) of `variant`);
    N evaluations for N steps."""
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f'UniPC variant must be one of {", ".join(UNIPC_VARIANTS)}, got {variant}')
    order = _order(order)
    return _integrate(f'unipc-{variant}', _unipc_step(order, variant, _UniPCPlan(sigmas, order, variant)), denoiser,
                      latents, sigmas, class_labels, churn, time_shift, ode)


def sample_unipc_bh1(*args, **kwargs):
    """sample_unipc with B(h) = h."""
    return sample_unipc(*args, **kwargs, variant='bh1')


def sample_dpmpp3m(denoiser, latents, sigmas, randn_like=torch.randn_like, class_labels=None, *,
                   churn=None, time_shift=None, ode=None):
    """Images (float64) by DPM-Solver++(3M) with the third-order term as its Taylor expansion
    needs it; N evaluations for N steps."""
    return _integrate('dpmpp3m', _dpmpp3m_step(), denoiser, latents, sigmas, class_labels, churn, time_shift, ode)


def sample_dpmpp3m_ref(denoiser, latents, sigmas, randn_like=torch.randn_like, class_labels=None, *,
                       churn=None, time_shift=None, ode=None):
    """DPM-Solver++(3M) as k-diffusion's sample_dpmpp_3m_sde(eta=0) computes it (halved D2:
    second order); N evaluations for N steps."""
    return _integrate('dpmpp3m-ref', _dpmpp3m_step(reference=True), denoiser, latents, sigmas, class_labels,
                      churn, time_shift, ode)


def sample_ipndm(denoiser, latents, sigmas, randn_like=torch.randn_like, class_labels=None, *,
                 churn=None, time_shift=None, ode=None):
    """Images (float64) by iPNDM (multistep orders 1, 2, 3, then 4); N evaluations for N steps."""
    return _integrate('ipndm', _ipndm_step, denoiser, latents, sigmas, class_labels, churn, time_shift, ode)


def sample_euler_ancestral(denoiser, latents, sigmas, randn_like=torch.randn_like, class_labels=None, *,
                           churn=None, time_shift=None, ode=None):
    """Images (float64) by Euler ancestral sampling; N evaluations and N - 1 noise draws for N steps."""
    scheduled = _StepScalars(sigmas, _euler_ancestral_scalars)
    return _integrate('euler_a', _euler_ancestral_step(randn_like, scheduled), denoiser, latents, sigmas, class_labels,
                      churn, time_shift, ode)


def sample_dpmpp_sde(denoiser, latents, sigmas, randn_like=torch.randn_like, class_labels=None, *,
                     churn=None, time_shift=None, ode=None):
    """Images (float64) by DPM-Solver++ SDE (two stages a step, the second at sqrt(sigma_i sigma_{i+1}));
    2N - 1 evaluations for N steps."""
    r = 0.5
    scalars = _dpmpp_sde_scalars(torch.as_tensor if churn is None else churn.round_sigma, r)  # _integrate's round_sigma
    return _integrate('dpmpp-sde', _dpmpp_sde_step(randn_like, r, scalars, _StepScalars(sigmas, scalars)), denoiser,
                      latents, sigmas, class_labels, churn, time_shift, ode)


def sample_dpmpp2m_sde(denoiser, latents, sigmas, randn_like=torch.randn_like, class_labels=None, *,
                       churn=None, time_shift=None, ode=None):
    """Images (float64) by DPM-Solver++(2M) SDE (midpoint form, eta = 1); N evaluations for N steps."""
    scalars = _dpmpp2m_sde_scalars(eta=1.0)
    return _integrate('dpmpp2m-sde', _dpmpp2m_sde_step(randn_like, scalars, _StepScalars(sigmas, scalars)), denoiser,
                      latents, sigmas, class_labels, churn, time_shift, ode)


def _order(order):
    if order not in (1, 2, 3):
        raise ValueError(f'order must be 1, 2 or 3, got {order}')
    return int(order)


SOLVERS = {'unipc-bh1': sample_unipc_bh1, 'unipc-bh2': sample_unipc, 'dpmpp3m': sample_dpmpp3m,
           'dpmpp3m-ref': sample_dpmpp3m_ref, 'ipndm': sample_ipndm, 'euler_a': sample_euler_ancestral,
           'dpmpp-sde': sample_dpmpp_sde, 'dpmpp2m-sde': sample_dpmpp2m_sde}
WITH_ORDER = ('unipc-bh1', 'unipc-bh2')
STOCHASTIC = ('euler_a', 'dpmpp-sde', 'dpmpp2m-sde')


def evaluations(solver, num_steps):
    """Denoiser evaluations per image of the solvers here for `num_steps` steps."""
    return 2 * num_steps - 1 if solver == 'dpmpp-sde' else num_steps


assert math.isclose(sum(IPNDM_WEIGHTS[3]), 1)
