"""Noise levels and time parametrizations of EDM's sampler design space (EDM paper, Table 1).

A *discretization* is data: a descending float64 tensor of noise levels sigma_0 > ... >
sigma_{N-1} (no trailing zero). A *time parametrization* says how the ODE is integrated:
the noise schedule sigma(t) and the signal scaling s(t) of EDM Eq. 4. The arithmetic
follows EDM's `generate.py` operation by operation, so the levels agree bit for bit.
"""

import functools
import math

import numpy as np
import torch

DISCRETIZATIONS = ('edm', 'vp', 've', 'iddpm')
SCHEDULES = ('linear', 'vp', 've')
SCALINGS = ('none', 'vp')

# EDM's sampler constants (EDM paper, Table 1 and Appendix D).
VP_EPSILON_S = 1e-3                      # Smallest t of the VP discretization.
VP_BETA_D, VP_BETA_MIN = 19.9, 0.1       # VP schedule used for the default VP sigma range.
IDDPM_C1, IDDPM_C2, IDDPM_M = 0.001, 0.008, 1000
REFERENCE_LEVELS = 1000                  # Size of the fine grid the time shift chooses from.

#----------------------------------------------------------------------------
# Default noise range per discretization.


def _vp_sigma_of_t(beta_d, beta_min, t):
    # sigma(t) = sqrt(e^(beta_d t^2 / 2 + beta_min t) - 1)   (EDM Table 1, VP)
    return (math.e ** (0.5 * beta_d * (t ** 2) + beta_min * t) - 1) ** 0.5


def default_sigma_range(disc):
    """EDM's (sigma_min, sigma_max) for a discretization, before clipping to the network."""
    if disc not in DISCRETIZATIONS:
        raise ValueError(f'unknown discretization "{disc}"; expected one of {", ".join(DISCRETIZATIONS)}')
    vp = (_vp_sigma_of_t(VP_BETA_D, VP_BETA_MIN, VP_EPSILON_S), _vp_sigma_of_t(VP_BETA_D, VP_BETA_MIN, 1))
    return dict(edm=(0.002, 80), vp=vp, ve=(0.02, 100), iddpm=(0.002, 81))[disc]


def vp_betas(sigma_min, sigma_max, epsilon_s=VP_EPSILON_S):
    """(beta_d, beta_min) of the VP schedule with sigma(epsilon_s) = sigma_min, sigma(1) = sigma_max."""
    beta_d = 2 * (np.log(sigma_min ** 2 + 1) / epsilon_s - np.log(sigma_max ** 2 + 1)) / (epsilon_s - 1)
    beta_min = np.log(sigma_max ** 2 + 1) - 0.5 * beta_d
    return beta_d, beta_min

#----------------------------------------------------------------------------
# Discretizations: N noise levels from sigma_max down to sigma_min.


def edm_levels(num_steps, sigma_min, sigma_max, rho=7, device='cpu'):
    """EDM Eq. 5: (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    return (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def vp_levels(num_steps, sigma_min, sigma_max, device='cpu'):
    """VP: sigma(t_i) with t_i uniform from 1 down to epsilon_s (EDM Table 1)."""
    beta_d, beta_min = vp_betas(sigma_min, sigma_max)
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    t = 1 + i / (num_steps - 1) * (VP_EPSILON_S - 1)
    return _vp_sigma_of_t(beta_d, beta_min, t)


def ve_levels(num_steps, sigma_min, sigma_max, device='cpu'):
    """VE: geometric in sigma^2 from sigma_max^2 down to sigma_min^2 (EDM Table 1)."""
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    return ((sigma_max ** 2) * ((sigma_min ** 2 / sigma_max ** 2) ** (i / (num_steps - 1)))).sqrt()


@functools.lru_cache(maxsize=4)
def _iddpm_u(M, C_1, C_2):
    # u_{j-1} = sqrt((u_j^2 + 1) / max(alpha_bar(j-1)/alpha_bar(j), C_1) - 1), u_M = 0 (EDM Eq. 30).
    # Scalar tensor ops in EDM's order and dtypes (alpha_bar in float32, u in float64).
    u = torch.zeros(M + 1, dtype=torch.float64)
    alpha_bar = lambda j: (0.5 * np.pi * j / M / (C_2 + 1)).sin() ** 2
    for j in torch.arange(M, 0, -1):
        u[j - 1] = ((u[j] ** 2 + 1) / (alpha_bar(j - 1) / alpha_bar(j)).clip(min=C_1) - 1).sqrt()
    return u


def iddpm_grid(sigma_min, sigma_max, device='cpu', M=IDDPM_M, C_1=IDDPM_C1, C_2=IDDPM_C2):
    """The iDDPM levels u_j inside [sigma_min, sigma_max], descending."""
    u = _iddpm_u(M, C_1, C_2).to(device)
    return u[torch.logical_and(u >= sigma_min, u <= sigma_max)]


def iddpm_levels(num_steps, sigma_min, sigma_max, device='cpu'):
    """iDDPM: N levels picked evenly (by rounded index) from the iDDPM grid (EDM Table 1)."""
    grid = iddpm_grid(sigma_min, sigma_max, device=device)
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    return grid[((len(grid) - 1) / (num_steps - 1) * i).round().to(torch.int64)]


def noise_levels(disc, num_steps, sigma_min, sigma_max, rho=7, device='cpu'):
    """The N levels of discretization `disc` (not rounded, no trailing zero)."""
    if disc == 'edm':
        return edm_levels(num_steps, sigma_min, sigma_max, rho, device=device)
    makers = dict(vp=vp_levels, ve=ve_levels, iddpm=iddpm_levels)
    if disc not in makers:
        raise ValueError(f'unknown discretization "{disc}"; expected one of {", ".join(DISCRETIZATIONS)}')
    return makers[disc](num_steps, sigma_min, sigma_max, device=device)


def reference_grid(disc, sigma_min, sigma_max, rho=7, device='cpu'):
    """The fine grid of the time shift: the same discretization with 1000 levels, or the iDDPM grid."""
    if disc == 'iddpm':
        return iddpm_grid(sigma_min, sigma_max, device=device)
    return noise_levels(disc, REFERENCE_LEVELS, sigma_min, sigma_max, rho, device=device)


def with_zero(sigmas):
    """Append sigma_N = 0."""
    return torch.cat([sigmas, torch.zeros_like(sigmas[:1])])

#----------------------------------------------------------------------------
# Time parametrizations: x(t) = s(t) (y + sigma(t) n), integrated in t (EDM Eq. 4).


class LinearSchedule:
    """sigma(t) = t (EDM's choice)."""
    name = 'linear'

    def sigma(self, t):
        return t

    def sigma_deriv(self, t):
        return 1

    def sigma_inv(self, sigma):
        return sigma


class VESchedule:
    """sigma(t) = sqrt(t) (EDM Table 1, VE)."""
    name = 've'

    def sigma(self, t):
        return t.sqrt()

    def sigma_deriv(self, t):
        return 0.5 / t.sqrt()

    def sigma_inv(self, sigma):
        return sigma ** 2


class VPSchedule:
    """sigma(t) = sqrt(e^(beta_d t^2 / 2 + beta_min t) - 1) (EDM Table 1, VP)."""
    name = 'vp'

    def __init__(self, beta_d, beta_min):
        self.beta_d = beta_d
        self.beta_min = beta_min

    def sigma(self, t):
        return _vp_sigma_of_t(self.beta_d, self.beta_min, t)

    def sigma_deriv(self, t):
        sigma = self.sigma(t)
        return 0.5 * (self.beta_min + self.beta_d * t) * (sigma + 1 / sigma)

    def sigma_inv(self, sigma):
        return ((self.beta_min ** 2 + 2 * self.beta_d * (sigma ** 2 + 1).log()).sqrt() - self.beta_min) / self.beta_d


def per_sample(v):
    """v broadcast against [N, C, H, W]: [N] tensors become [N, 1, 1, 1]."""
    return v.reshape(-1, 1, 1, 1) if isinstance(v, torch.Tensor) and v.ndim > 0 else v


class TimeParam:
    """The ODE of EDM Eq. 4 for a noise schedule sigma(t) and optional VP scaling s(t).

    The state is x = s(t) * (image + noise); the network always sees x / s(t). `t` may be a
    0-dim tensor (one level for the batch) or an [N] tensor (one level per sample).
    """

    def __init__(self, schedule=None, vp_scaling=False):
        self.schedule = LinearSchedule() if schedule is None else schedule
        self.vp_scaling = bool(vp_scaling)
        self.is_edm = isinstance(self.schedule, LinearSchedule) and not self.vp_scaling

    def sigma(self, t):
        return self.schedule.sigma(t)

    def t(self, sigma):
        return self.schedule.sigma_inv(sigma)

    def s(self, t):
        # s(t) = 1 / sqrt(1 + sigma(t)^2)   (EDM Table 1, VP scaling)
        return 1 / (1 + self.sigma(t) ** 2).sqrt()

    def s_deriv(self, t):
        return -self.sigma(t) * self.schedule.sigma_deriv(t) * (self.s(t) ** 3)

    def initial_state(self, latents, t0):
        """x(t_0) = sigma(t_0) s(t_0) * latents, in float64."""
        scale = self.sigma(t0) * self.s(t0) if self.vp_scaling else self.sigma(t0)
        return latents.to(torch.float64) * scale

    def network_input(self, x, t):
        """x / s(t): the unscaled noisy image the denoiser expects."""
        return x / per_sample(self.s(t)) if self.vp_scaling else x

    def rescale(self, x, t_from, t_to):
        """The same unscaled image expressed at time t_to instead of t_from."""
        return per_sample(self.s(t_to) / self.s(t_from)) * x if self.vp_scaling else x

    def derivative(self, x, denoised, t):
        """dx/dt of EDM Eq. 4 given the denoiser output at (x, t)."""
        if self.is_edm:
            return (x - denoised) / per_sample(t)  # EDM Algorithm 2, line 7
        sigma, sigma_deriv = self.sigma(t), self.schedule.sigma_deriv(t)
        if not self.vp_scaling:
            return per_sample(sigma_deriv / sigma) * x - per_sample(sigma_deriv / sigma) * denoised
        s, s_deriv = self.s(t), self.s_deriv(t)
        return per_sample(sigma_deriv / sigma + s_deriv / s) * x - per_sample(sigma_deriv * s / sigma) * denoised


def time_param(schedule, scaling, sigma_min, sigma_max):
    """TimeParam for EDM's --schedule and --scaling names; the VP schedule spans [sigma_min, sigma_max]."""
    if schedule not in SCHEDULES:
        raise ValueError(f'unknown schedule "{schedule}"; expected one of {", ".join(SCHEDULES)}')
    if scaling not in SCALINGS:
        raise ValueError(f'unknown scaling "{scaling}"; expected one of {", ".join(SCALINGS)}')
    sched = dict(linear=LinearSchedule, ve=VESchedule)[schedule]() if schedule != 'vp' else VPSchedule(*vp_betas(sigma_min, sigma_max))
    return TimeParam(sched, vp_scaling=(scaling == 'vp'))
