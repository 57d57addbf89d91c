"""Euler and Heun solvers for the EDM probability-flow ODE, with stochastic churn; the registry
of every solver (`SOLVERS`, the few-step ones from `samplers.multistep`).

Euler and Heun share one signature and one loop; stochastic churn and the time shift are step
helpers used by both. Every network call goes through the denoiser interface of
`samplers.denoisers`. The state is float64 and is cast only by the network (EDM Algorithm 2).
"""

import dataclasses

import numpy as np
import torch

from . import denoisers, fewstep, multistep
from .schedules import TimeParam, per_sample


@dataclasses.dataclass(frozen=True)
class Churn:
    """EDM's stochastic sampling (Algorithm 2): raise sigma_i by gamma_i, adding fresh noise."""
    S_churn: float = 0
    S_min: float = 0
    S_max: float = float('inf')
    S_noise: float = 1
    round_sigma: object = torch.as_tensor   # The network's level rounding (identity for continuous nets).

    def gamma(self, sigma, num_steps):
        """gamma_i for a scheduled level sigma_i (EDM Algorithm 2, line 4)."""
        return min(self.S_churn / num_steps, np.sqrt(2) - 1) if self.S_min <= sigma <= self.S_max else 0


NO_CHURN = Churn()


def _churn_step(x, t_cur, gamma, noise, churn, ode):
    """(x_hat, t_hat): the state after churn (EDM Algorithm 2, lines 4-5); `noise` is None
    when it would be multiplied by zero."""
    sigma_cur = ode.sigma(t_cur)
    t_hat = ode.t(churn.round_sigma(sigma_cur + gamma * sigma_cur))
    x_hat = ode.rescale(x, t_cur, t_hat)
    if noise is not None:
        amplitude = (ode.sigma(t_hat) ** 2 - sigma_cur ** 2).clip(min=0).sqrt()
        if ode.vp_scaling:
            amplitude = amplitude * ode.s(t_hat)
        x_hat = x_hat + amplitude * churn.S_noise * noise
    return x_hat, t_hat


def _shift_step(x_hat, t_hat, sigma_next, time_shift, ode):
    """(x', t') with per-sample t' [N] from the time shift."""
    sigma_prime = time_shift.shift(ode.network_input(x_hat, t_hat), ode.sigma(t_hat), sigma_next)
    t_prime = ode.t(sigma_prime)
    return ode.rescale(x_hat, t_hat, t_prime), t_prime


def _solve(order, denoiser, latents, sigmas, randn_like, class_labels, churn, time_shift, ode):
    num_steps = len(sigmas) - 1
    levels = sigmas.tolist()
    if not (num_steps >= 1 and levels[0] > 0 and levels[-1] == 0 and all(a >= b for a, b in zip(levels, levels[1:]))):
        raise ValueError('sigmas must be a non-increasing tensor of positive levels followed by 0')
    t_steps = torch.cat([ode.t(sigmas[:-1].to(torch.float64)), torch.zeros_like(sigmas[:1], dtype=torch.float64)])
    gammas = [churn.gamma(sigma, num_steps) for sigma in levels[:-1]]
    # EDM draws noise at every step. The draws can be skipped only when they are always scaled
    # by zero: no churn, and sigma(t) = t (other schedules round-trip t_hat = t(sigma(t_cur))
    # inexactly, and EDM then adds noise of ~1e-8 even without churn).
    draw_noise = any(g > 0 for g in gammas) or not ode.is_edm

    x_next = ode.initial_state(latents, t_steps[0])
    for i in range(num_steps):
        D = denoisers.at_step(denoiser, i)
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        noise = randn_like(x_next) if draw_noise else None
        x_hat, t_hat = _churn_step(x_next, t_cur, gammas[i], noise, churn, ode)
        if time_shift is not None and time_shift.active(i, levels[i]):
            x_hat, t_hat = _shift_step(x_hat, t_hat, levels[i + 1], time_shift, ode)
        h = t_next - t_hat

        # Euler step (EDM Algorithm 2, lines 6-8).
        denoised = D(ode.network_input(x_hat, t_hat), ode.sigma(t_hat), class_labels)
        d_cur = ode.derivative(x_hat, denoised, t_hat)
        x_next = x_hat + per_sample(h) * d_cur

        # Second-order correction, skipped on the last step (lines 9-11). EDM evaluates it at
        # t_next in edm_sampler and at t_hat + h in ablation_sampler (the only one with other
        # schedules); the two differ in the last bit, and each form is kept where EDM uses it.
        if order == 2 and i < num_steps - 1:
            t_prime = t_next if ode.is_edm else t_hat + h
            denoised = D(ode.network_input(x_next, t_prime), ode.sigma(t_prime), class_labels)
            d_prime = ode.derivative(x_next, denoised, t_prime)
            x_next = x_hat + per_sample(h) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


def sample_euler(denoiser, latents, sigmas, randn_like=torch.randn_like, class_labels=None, *,
                 churn=NO_CHURN, time_shift=None, ode=None):
    """Images (float64) from unit-variance `latents` by Euler steps over the levels `sigmas`
    (descending, ending in 0): one denoiser evaluation per step."""
    ode = TimeParam() if ode is None else ode
    return _solve(1, denoiser, latents, sigmas, randn_like, class_labels, churn, time_shift, ode)


def sample_heun(denoiser, latents, sigmas, randn_like=torch.randn_like, class_labels=None, *,
                churn=NO_CHURN, time_shift=None, ode=None):
    """Images (float64) from unit-variance `latents` by Heun steps over the levels `sigmas`
    (descending, ending in 0): 2N - 1 denoiser evaluations for N steps."""
    ode = TimeParam() if ode is None else ode
    return _solve(2, denoiser, latents, sigmas, randn_like, class_labels, churn, time_shift, ode)


SOLVERS = dict(euler=sample_euler, heun=sample_heun, spndm=multistep.sample_spndm, fpndm=multistep.sample_fpndm,
               dpmsolver=multistep.sample_dpmsolver, dpmpp2m=multistep.sample_dpmpp2m, deis=multistep.sample_deis)
SOLVERS['dpmsolver-ref'] = multistep.sample_dpmsolver_ref  # DPM-Solver's code, its third-order slip included
SOLVERS['fpndm-pndm'] = multistep.sample_fpndm_pndm  # F-PNDM with PNDM's timestep midpoint (discrete networks)
SOLVERS.update(fewstep.SOLVERS)  # UniPC, DPM-Solver++(3M), iPNDM, Euler ancestral, DPM-Solver++ SDEs
WITH_ORDER = ('dpmsolver', 'dpmsolver-ref', 'deis') + fewstep.WITH_ORDER   # take order=1|2|3 (default 3)
WITH_CHURN = ('euler', 'heun')       # the only ones with stochastic churn, --schedule and --scaling
STOCHASTIC = fewstep.STOCHASTIC      # draw noise at every step (per seed, with the sampler's randn_like)


def evaluations(solver, num_steps):
    """Denoiser evaluations per image of `solver` for `num_steps` steps."""
    if solver == 'heun':
        return 2 * num_steps - 1
    if solver == 'euler':
        return num_steps
    if solver in fewstep.SOLVERS:
        return fewstep.evaluations(solver, num_steps)
    return multistep.evaluations(solver, num_steps)
