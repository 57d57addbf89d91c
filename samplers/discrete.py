"""DDPM and DDIM over guided-diffusion's respaced timesteps, for discrete-time (ADM) networks.

The process is data: `Respacing` holds the timesteps kept from the model's T and
guided-diffusion's float64 alpha_bar for them (`space_timesteps`, `respace`). DDPM (Ho et al.
2020, with iDDPM's learned-range variance) and DDIM (Song et al. 2021, Eq. 12) are two step
rules over it that share one loop, one noise draw per step and the step helpers: epsilon
scaling is the denoiser wrapper of samplers/denoisers.py, the time shift a helper of
samplers/time_shift.py.

The state is x_t (variance preserving) in float64. The network is called through the
denoiser interface with x = x_t / sqrt(abar) and sigma = sqrt(1 / abar - 1), so D returns
guided-diffusion's pred_xstart; the eps of a step is (x - D) / sigma. The learned variance
comes from a `VarianceTap` at the same call.
"""

import dataclasses
from typing import Optional

import numpy as np
import torch

from .denoisers import at_step
from .guidance import condition_score as guidance_score
from .schedules import per_sample

VARIANCES = ('learned', 'large', 'small')


class RespacingError(ValueError):
    """A timestep respacing that cannot be built; the message is one line."""


def space_timesteps(num_timesteps, respacing):
    """The original timesteps kept by guided-diffusion's `timestep_respacing`, ascending.

    'ddimN': the integer stride giving exactly N steps from 0 (ddim5 -> 0, 200, ..., 800).
    'N' or 'N1,N2,...': the T steps cut into equal sections (the first T mod K one longer),
    each strided evenly with Python's round(), ends included ('10' -> 0, 111, ..., 999).
    '' keeps all T steps.
    """
    text = str(respacing).strip()
    if text == '':
        return list(range(num_timesteps))
    if text.startswith('ddim'):
        try:
            count = int(text[len('ddim'):])
        except ValueError:
            raise RespacingError(f'timestep respacing "{text}": expected ddimN with an integer N') from None
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == count:
                return list(range(0, num_timesteps, stride))
        raise RespacingError(f'timestep respacing "{text}": no integer stride gives exactly {count} of {num_timesteps} steps')
    try:
        counts = [int(part) for part in text.split(',')]
    except ValueError:
        raise RespacingError(f'timestep respacing "{text}": expected ddimN, N or comma-separated counts') from None
    if min(counts) < 1:
        raise RespacingError(f'timestep respacing "{text}": every section needs at least 1 step')
    size_per, extra = divmod(num_timesteps, len(counts))
    start, steps = 0, []
    for index, count in enumerate(counts):
        size = size_per + (1 if index < extra else 0)
        if size < count:
            raise RespacingError(f'timestep respacing "{text}": cannot take {count} steps from a section of {size}')
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            steps.append(start + round(position))  # Python's round: ties to even, as guided-diffusion
            position += stride
        start += size
    return sorted(set(steps))


@dataclasses.dataclass(frozen=True)
class Respacing:
    """The kept timesteps t_0 < ... < t_{S-1} and guided-diffusion's respaced alpha_bar for them.

    guided-diffusion rebuilds the respaced process from its betas, 1 - abar(t_j) / abar(t_{j-1}),
    so `alpha_bar` is their cumulative product, equal to abar(t_j) up to float64 rounding.
    """
    timesteps: tuple            # Original timesteps kept, ascending.
    alpha_bar: np.ndarray       # float64 [S]: the respaced process's alpha_bar.

    @property
    def num_steps(self):
        return len(self.timesteps)

    def alpha_bar_prev(self):
        """abar of the step below each kept timestep (1 below the first)."""
        return np.append(1.0, self.alpha_bar[:-1])


def respace(alpha_bar_all, respacing):
    """The Respacing of a model's float64 alpha_bar [T] for a `timestep_respacing` string."""
    alpha_bar_all = np.asarray(alpha_bar_all, dtype=np.float64)
    timesteps = space_timesteps(len(alpha_bar_all), respacing)
    if len(timesteps) < 2:
        raise RespacingError(f'timestep respacing "{respacing}" keeps {len(timesteps)} step; at least 2 are needed')
    betas, last = [], 1.0
    for t in timesteps:
        betas.append(1 - alpha_bar_all[t] / last)
        last = alpha_bar_all[t]
    return Respacing(timesteps=tuple(timesteps), alpha_bar=np.cumprod(1.0 - np.array(betas, dtype=np.float64)))


@dataclasses.dataclass
class Levels:
    """Per-sample levels of one step, float64 [N]: where the network is evaluated (abar, sigma)
    and the alpha_bar the step lands at (abar_prev)."""
    abar: torch.Tensor
    sigma: torch.Tensor
    abar_prev: torch.Tensor


def grid_levels(process, j, x):
    """The scheduled levels of respaced step j for a batch like x."""
    full = lambda value: torch.full([x.shape[0]], float(value), dtype=torch.float64, device=x.device)
    abar = process.alpha_bar[j]
    return Levels(abar=full(abar), sigma=full(np.sqrt(1.0 / abar - 1)), abar_prev=full(process.alpha_bar_prev()[j]))

#----------------------------------------------------------------------------
# Step rules. x is x_t, x0 the (clipped) prediction, all float64; `last` is the step to t = 0.


def _ddpm_step(x, x0, noise, levels, last, var_frac, variance, eta, mean_shift=None):
    """Ancestral step: the posterior q(x_prev | x_t, x0) (DDPM Eq. 7), variance per `variance`;
    `mean_shift` (classifier guidance) is added to the mean."""
    abar, abar_prev = per_sample(levels.abar), per_sample(levels.abar_prev)
    beta = 1 - abar / abar_prev
    mean = (beta * abar_prev.sqrt() / (1 - abar)) * x0 + ((1 - abar_prev) * (1 - beta).sqrt() / (1 - abar)) * x
    if mean_shift is not None:
        mean = mean + mean_shift
    if last:
        return mean  # guided-diffusion masks the noise of the step to t = 0
    posterior = beta * (1 - abar_prev) / (1 - abar)
    if variance == 'large':
        log_var = beta.log().expand_as(x)
    elif variance == 'small':
        log_var = posterior.log().expand_as(x)
    else:  # iDDPM Eq. 15: v in [-1, 1] interpolates the log variance between the two
        log_var = var_frac * beta.log() + (1 - var_frac) * posterior.log()
    return mean + (0.5 * log_var).exp() * noise


def guided_variance(x, levels, process, j, var_frac, variance):
    """Sigma of respaced step j as guided-diffusion's condition_mean uses it (its p_mean_variance
    "variance"): as the step's noise, except at the last step (j = 0), where guided-diffusion's
    tables put the posterior variance of step 1 (posterior_variance[1], the clipped log of 'small'
    and 'learned'; 'large' holds it too) and 'small' holds 0."""
    abar, abar_prev = per_sample(levels.abar), per_sample(levels.abar_prev)
    beta = 1 - abar / abar_prev
    posterior = beta * (1 - abar_prev) / (1 - abar)
    if j == 0:
        a0, a1 = process.alpha_bar[0], process.alpha_bar[1]
        posterior = torch.full_like(posterior, (1 - a1 / a0) * (1 - a0) / (1 - a1))
        if variance == 'large':
            return posterior.expand_as(x)
        if variance == 'small':
            return torch.zeros_like(x)
    if variance == 'large':
        return beta.expand_as(x)
    if variance == 'small':
        return posterior.expand_as(x)
    return (var_frac * beta.log() + (1 - var_frac) * posterior.log()).exp()


def _ddim_step(x, x0, noise, levels, last, var_frac, variance, eta, mean_shift=None):
    """DDIM Eq. 12 with eps re-derived from the (clipped) x0, as guided-diffusion does."""
    abar, abar_prev = per_sample(levels.abar), per_sample(levels.abar_prev)
    eps = (x / abar.sqrt() - x0) / (1 / abar - 1).sqrt()
    sigma = eta * ((1 - abar_prev) / (1 - abar)).sqrt() * (1 - abar / abar_prev).sqrt()
    x_prev = x0 * abar_prev.sqrt() + (1 - abar_prev - sigma ** 2).sqrt() * eps
    return x_prev if last else x_prev + sigma * noise


RULES = dict(ddpm=_ddpm_step, ddim=_ddim_step)


def sample_discrete(rule, denoiser, latents, process, randn_like=torch.randn_like, class_labels=None, *,
                    clip_denoised=True, eta=0.0, variance='large', tap=None, time_shift=None, guidance=None):
    """Images (float64) from unit-variance `latents` = x_T by the step rule 'ddpm' or 'ddim'
    over the Respacing `process`: one denoiser evaluation and one noise draw per step.

    `tap` (a VarianceTap inside `denoiser`) supplies the learned variance for
    variance='learned'; `time_shift` (samplers.time_shift) may move each sample's levels;
    `guidance` (a bound samplers.guidance.ClassifierGuidance) guides towards `class_labels`,
    which it always sees (the denoiser passes them on as its network takes them): DDPM shifts
    the mean by Sigma g, DDIM the clipped x0's eps by -sqrt(1 - abar) g (guided-diffusion's
    condition_mean and condition_score), at the levels the network was evaluated at.
    """
    step = RULES[rule]
    x = latents.to(torch.float64)
    num_steps = process.num_steps
    for i in range(num_steps):
        j = num_steps - 1 - i  # respaced index: step 0 starts at the highest timestep
        D = at_step(denoiser, i)
        noise = randn_like(x)
        levels = grid_levels(process, j, x) if time_shift is None else time_shift.levels(x, i, j, process)
        x0 = D(x / per_sample(levels.abar.sqrt()), levels.sigma, class_labels)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        var_frac = None
        if variance == 'learned' and (j > 0 or guidance is not None):
            var_frac = (tap.var_values.to(torch.float64) + 1) / 2
        mean_shift = None
        if guidance is not None:
            g = guidance.gradient(x, levels.sigma, class_labels)
            if rule == 'ddim':
                x0 = guidance_score(x, x0, per_sample(levels.abar), g, guidance.extra_scaler(i))
            else:
                mean_shift = guided_variance(x, levels, process, j, var_frac, variance) * g
        x = step(x, x0, noise, levels, j == 0, var_frac, variance, eta, mean_shift)
    return x


def sample_ddpm(denoiser, latents, process, randn_like=torch.randn_like, class_labels=None, **kwargs):
    """DDPM ancestral sampling over `process` (guided-diffusion's p_sample_loop)."""
    return sample_discrete('ddpm', denoiser, latents, process, randn_like, class_labels, **kwargs)


def sample_ddim(denoiser, latents, process, randn_like=torch.randn_like, class_labels=None, **kwargs):
    """DDIM sampling over `process` (guided-diffusion's ddim_sample_loop), eta via kwargs."""
    return sample_discrete('ddim', denoiser, latents, process, randn_like, class_labels, **kwargs)


DISCRETE_SOLVERS = dict(ddpm=sample_ddpm, ddim=sample_ddim)


def default_variance(net, variance: Optional[str] = None):
    """The DDPM variance: as given, else guided-diffusion's choice for the model
    (learned range with learn_sigma, fixed large without)."""
    if variance is not None:
        return variance
    return 'learned' if getattr(net, 'learn_sigma', False) else 'large'
