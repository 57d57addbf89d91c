"""guided-diffusion's training losses (Ho et al. 2020; Nichol & Dhariwal 2021) with DDPM-IP's
input perturbation (Ning et al. 2023).

The process is data: `Diffusion` holds guided-diffusion's float64 tables for the betas of
networks/edm.py (`adm_betas`, shared with sampling) and what the flags say about the model's
output and the loss. Each table is cast to float32 after it is indexed by t, as
guided-diffusion's `_extract_into_tensor` does, so the losses are its float32 computations.
`training_losses` returns guided-diffusion's per-sample terms: loss, mse, and vb with a
learned variance.
"""

import dataclasses
import math

import numpy as np
import torch

from networks.edm import adm_betas

LOSS_TYPES = ('mse', 'rescaled_mse', 'kl', 'rescaled_kl')


class DiffusionError(ValueError):
    """Diffusion flags that do not define a training loss; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Diffusion:
    """The discrete process and loss of guided-diffusion's GaussianDiffusion (no respacing)."""
    betas: np.ndarray               # float64 [T]
    predict_xstart: bool = False    # The model outputs x0 (START_X) instead of eps.
    learn_sigma: bool = False       # LEARNED_RANGE variance (extra output channels) instead of FIXED_LARGE.
    loss_type: str = 'mse'          # One of LOSS_TYPES.
    rescale_timesteps: bool = False  # Feed t * 1000 / T instead of t.
    input_pertub: float = 0.0       # DDPM-IP's gamma: x_t from noise + gamma * perturb_noise.

    def __post_init__(self):
        betas = np.asarray(self.betas, dtype=np.float64)
        if self.loss_type not in LOSS_TYPES:
            raise DiffusionError(f'loss type must be one of {", ".join(LOSS_TYPES)}, got "{self.loss_type}"')
        if betas.ndim != 1 or len(betas) < 2 or not ((betas > 0) & (betas <= 1)).all():
            raise DiffusionError('betas must be a 1-D table of at least 2 values in (0, 1]')
        if not math.isfinite(self.input_pertub) or self.input_pertub < 0:
            raise DiffusionError(f'--input_pertub must be a finite number >= 0, got {self.input_pertub}')
        abar = np.cumprod(1.0 - betas)
        abar_prev = np.append(1.0, abar[:-1])
        posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)  # DDPM Eq. 7
        tables = dict(
            sqrt_abar=np.sqrt(abar), sqrt_one_minus_abar=np.sqrt(1.0 - abar),
            sqrt_recip_abar=np.sqrt(1.0 / abar), sqrt_recipm1_abar=np.sqrt(1.0 / abar - 1),
            posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
            posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar),
            # log of the posterior variance with its t = 0 value (0) replaced by t = 1's
            posterior_log_variance_clipped=np.log(np.append(posterior_variance[1], posterior_variance[1:])),
            log_betas=np.log(betas),
            # FIXED_LARGE: beta_t, with the posterior variance at t = 0
            fixed_large_log_variance=np.log(np.append(posterior_variance[1], betas[1:])),
        )
        object.__setattr__(self, 'betas', betas)
        object.__setattr__(self, 'tables', tables)

    @property
    def num_timesteps(self):
        return len(self.betas)

    def at(self, name, t, like):
        """Table `name` at the timesteps t [N], float32, shaped to broadcast against `like`."""
        values = torch.from_numpy(self.tables[name]).to(like.device)[t.to(like.device)].to(torch.float32)
        return values.reshape(-1, *[1] * (like.ndim - 1))

    def model_timesteps(self, t):
        """What the network is given for t: the integer t, or t * 1000 / T with rescale_timesteps."""
        return t.to(torch.float32) * (1000.0 / self.num_timesteps) if self.rescale_timesteps else t

    def q_sample(self, x_start, t, noise):
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (DDPM Eq. 4)."""
        return self.at('sqrt_abar', t, x_start) * x_start + self.at('sqrt_one_minus_abar', t, x_start) * noise

    def q_posterior_mean(self, x_start, x_t, t):
        """The mean of q(x_{t-1} | x_t, x0) (DDPM Eq. 7)."""
        return self.at('posterior_mean_coef1', t, x_t) * x_start + self.at('posterior_mean_coef2', t, x_t) * x_t

    def p_mean_log_variance(self, output, x_t, t):
        """(mean, log variance) of p(x_{t-1} | x_t) from the network's raw output (no clipping)."""
        channels = x_t.shape[1]
        if self.learn_sigma:
            output, v = output[:, :channels], output[:, channels:]
            frac = (v + 1) / 2  # iDDPM Eq. 15
            log_variance = frac * self.at('log_betas', t, x_t) + (1 - frac) * self.at('posterior_log_variance_clipped', t, x_t)
        else:
            log_variance = self.at('fixed_large_log_variance', t, x_t).expand_as(x_t)
        if self.predict_xstart:
            pred_xstart = output
        else:
            pred_xstart = self.at('sqrt_recip_abar', t, x_t) * x_t - self.at('sqrt_recipm1_abar', t, x_t) * output
        return self.q_posterior_mean(pred_xstart, x_t, t), log_variance

    def vb_terms_bpd(self, output, x_start, x_t, t):
        """The VLB term per sample in bits: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) (DDPM Eq. 5),
        and at t = 0 the discretized-Gaussian decoder NLL of x0 instead."""
        true_mean = self.q_posterior_mean(x_start, x_t, t)
        true_log_variance = self.at('posterior_log_variance_clipped', t, x_t)
        mean, log_variance = self.p_mean_log_variance(output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, mean, log_variance)) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x_start, mean, 0.5 * log_variance)) / math.log(2.0)
        return torch.where(t.to(kl.device) == 0, nll, kl)


def mean_flat(x):
    """The mean over every dimension but the first."""
    return x.mean(dim=list(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x):
    """guided-diffusion's tanh approximation of the standard normal CDF."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log P(x) of data in [-1, 1] quantized to 256 levels (bins of width 2/255) under
    N(means, e^(2 log_scales)), the edge bins open-ended (DDPM Sec. 3.3)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def diffusion_from_flags(**flags):
    """The Diffusion of guided-diffusion's flags (create_gaussian_diffusion's rules); flags that
    do not concern it are ignored, missing ones take guided-diffusion's defaults."""
    get = lambda name, default: flags.get(name, default)
    if str(get('timestep_respacing', '') or '') not in ('', str(get('diffusion_steps', 1000))):
        raise DiffusionError('training uses every timestep: --timestep_respacing must be empty')
    try:
        betas = adm_betas(get('noise_schedule', 'linear'), get('diffusion_steps', 1000))
    except ValueError as err:
        raise DiffusionError(str(err)) from None
    if get('use_kl', False):
        loss_type = 'rescaled_kl'
    elif get('rescale_learned_sigmas', False):
        loss_type = 'rescaled_mse'
    else:
        loss_type = 'mse'
    return Diffusion(betas=betas, predict_xstart=bool(get('predict_xstart', False)), learn_sigma=bool(get('learn_sigma', False)),
                     loss_type=flags.get('loss_type') or loss_type, rescale_timesteps=bool(get('rescale_timesteps', False)),
                     input_pertub=float(get('input_pertub', 0.0) or 0.0))


def diffusion_losses(diffusion, model, x_start, t, noise, perturb_noise=None, model_kwargs=None):
    """{loss, mse[, vb]} per sample [N] of guided-diffusion's training_losses for `diffusion`.

    With `perturb_noise`, x_t is built from noise + input_pertub * perturb_noise (DDPM-IP); the
    MSE target stays `noise` (or x0). The KL losses return only 'loss', as guided-diffusion."""
    model_kwargs = model_kwargs or {}
    t = torch.as_tensor(t, device=x_start.device).long()
    new_noise = noise if perturb_noise is None else noise + diffusion.input_pertub * perturb_noise
    x_t = diffusion.q_sample(x_start, t, new_noise)
    output = model(x_t, diffusion.model_timesteps(t), **model_kwargs)
    if diffusion.loss_type in ('kl', 'rescaled_kl'):
        loss = diffusion.vb_terms_bpd(output, x_start, x_t, t)
        return dict(loss=loss * diffusion.num_timesteps if diffusion.loss_type == 'rescaled_kl' else loss)
    channels = x_t.shape[1]
    terms = {}
    if diffusion.learn_sigma:
        # The VLB trains only the variance: the mean part is detached (iDDPM Sec. 3.1).
        frozen = torch.cat([output[:, :channels].detach(), output[:, channels:]], dim=1)
        terms['vb'] = diffusion.vb_terms_bpd(frozen, x_start, x_t, t)
        if diffusion.loss_type == 'rescaled_mse':
            terms['vb'] = terms['vb'] * (diffusion.num_timesteps / 1000.0)  # guided-diffusion's rescaling
        output = output[:, :channels]
    target = x_start if diffusion.predict_xstart else noise
    terms['mse'] = mean_flat((target - output) ** 2)
    terms['loss'] = terms['mse'] + terms['vb'] if 'vb' in terms else terms['mse']
    return terms


def training_losses(model, x_start, t, noise, perturb_noise=None, model_kwargs=None, **flags):
    """guided-diffusion's training_losses for the diffusion of the flags (see diffusion_losses)."""
    return diffusion_losses(diffusion_from_flags(**flags), model, x_start, t, noise, perturb_noise, model_kwargs)
