"""The boundary between a network and the solvers: options in, a ready sampler out.

Everything the solvers need from the network (noise range, `round_sigma`, `sigma_data`) is
read here once. The defaults reproduce NVIDIA's EDM `generate.py`: its `edm_sampler` and its
`ablation_sampler` are one algorithm, and both are covered by these options.
"""

import dataclasses
import functools
import math
from typing import Optional

import torch

from . import denoisers, schedules, solvers
from .fast import FastPaths, prepare_network
from .time_shift import TimeShift


class SamplerOptionError(ValueError):
    """Sampler options that cannot work; the message is one line."""


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
    num_steps: int = 18                     # Solver steps N (Heun: 2N - 1 evaluations).
    sigma_min: Optional[float] = None       # Lowest level; None = EDM's default for `disc`.
    sigma_max: Optional[float] = None       # Highest level; None = EDM's default for `disc`.
    rho: float = 7                          # Exponent of the EDM discretization.
    solver: str = 'heun'                    # A name in solvers.SOLVERS (docs/solvers.md).
    order: Optional[int] = None             # dpmsolver and deis: 1, 2 or 3; None = 3.
    disc: str = 'edm'                       # Discretization: 'edm', 'vp', 've', 'iddpm'.
    schedule: str = 'linear'                # Noise schedule sigma(t): 'linear', 'vp', 've'.
    scaling: str = 'none'                   # Signal scaling s(t): 'none', 'vp'.
    S_churn: float = 0                      # Stochasticity strength.
    S_min: float = 0                        # Churn only for levels >= S_min ...
    S_max: float = float('inf')             # ... and <= S_max.
    S_noise: float = 1                      # Noise inflation of the churn.
    eps_scaler: float = 1.0                 # Epsilon scaling b: lambda_i = b + k (N - 1 - i).
    eps_scaler_k: float = 0.0               # Epsilon scaling slope k.
    ts_window: int = 0                      # Time shift window (grid positions each side); 0 = off.
    ts_cutoff: float = 1.0                  # Time shift only at steps with sigma_i above this.
    ts_signal_var: Optional[float] = None   # Expected signal variance; None = sigma_data^2.

    @property
    def nfe(self):
        """Network evaluations per image."""
        return solvers.evaluations(self.solver, self.num_steps)

    @property
    def solver_order(self):
        """The order that dpmsolver and deis run with."""
        return 3 if self.order is None else self.order

    def check(self):
        """Raise SamplerOptionError for options that no network can sample with."""
        choices = dict(solver=tuple(solvers.SOLVERS), disc=schedules.DISCRETIZATIONS,
                       schedule=schedules.SCHEDULES, scaling=schedules.SCALINGS)
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SamplerOptionError(f'--{name} must be one of {"|".join(allowed)}, not "{getattr(self, name)}"')
        self._check_solver()
        if self.num_steps < 2:
            hint = ' (Heun with 1 step would be a single Euler step)' if self.solver == 'heun' else ''
            raise SamplerOptionError(f'--steps must be at least 2, got {self.num_steps}{hint}')
        for name in ('sigma_min', 'sigma_max'):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise SamplerOptionError(f'--{name} must be a positive number, got {value}')
        if self.sigma_min is not None and self.sigma_max is not None and self.sigma_min >= self.sigma_max:
            raise SamplerOptionError(f'--sigma_min ({self.sigma_min:g}) must be below --sigma_max ({self.sigma_max:g})')
        if not self.rho > 0:
            raise SamplerOptionError(f'--rho must be positive, got {self.rho}')
        if self.S_churn < 0 or self.S_min < 0 or self.S_max < 0:
            raise SamplerOptionError('--S_churn, --S_min and --S_max must not be negative')
        scalers = denoisers.eps_scalers(self.num_steps, self.eps_scaler, self.eps_scaler_k)
        if not all(s > 0 and math.isfinite(s) for s in scalers):
            raise SamplerOptionError(f'epsilon scalers must be positive: --eps_scaler={self.eps_scaler:g} with '
                                     f'--eps_scaler_k={self.eps_scaler_k:g} gives {min(scalers):g} at some step')
        if self.ts_window < 0:
            raise SamplerOptionError(f'--ts_window must not be negative, got {self.ts_window}')
        if self.ts_cutoff < 0:
            raise SamplerOptionError(f'--ts_cutoff must not be negative, got {self.ts_cutoff:g}')
        if self.ts_signal_var is not None and self.ts_signal_var < 0:
            raise SamplerOptionError(f'--ts_signal_var must not be negative, got {self.ts_signal_var:g}')


    def _check_solver(self):
        if self.order is not None:
            if self.solver not in solvers.WITH_ORDER:
                raise SamplerOptionError(f'--order applies to --solver={"|".join(solvers.WITH_ORDER)}, not to {self.solver}')
            if self.order not in (1, 2, 3):
                raise SamplerOptionError(f'--order must be 1, 2 or 3, got {self.order}')
        if self.solver in solvers.WITH_CHURN:
            return
        if self.S_churn > 0:
            raise SamplerOptionError(f'--S_churn applies to --solver={"|".join(solvers.WITH_CHURN)}; {self.solver} is deterministic')
        if self.schedule != 'linear' or self.scaling != 'none':
            raise SamplerOptionError(f'--schedule and --scaling apply to --solver={"|".join(solvers.WITH_CHURN)}; '
                                     f'{self.solver} integrates in log(sigma) and takes neither')


def sigma_range(net, options):
    """(sigma_min, sigma_max): the options or EDM's defaults for the discretization, clipped
    to the network's supported range as EDM does."""
    default_min, default_max = schedules.default_sigma_range(options.disc)
    sigma_min = default_min if options.sigma_min is None else options.sigma_min
    sigma_max = default_max if options.sigma_max is None else options.sigma_max
    clipped_min, clipped_max = max(sigma_min, net.sigma_min), min(sigma_max, net.sigma_max)
    if not clipped_min < clipped_max:
        raise SamplerOptionError(f'sigma_min {clipped_min:g} is not below sigma_max {clipped_max:g} after clipping '
                                 f'[{sigma_min:g}, {sigma_max:g}] to the network\'s range [{net.sigma_min:g}, {net.sigma_max:g}]')
    return clipped_min, clipped_max


class Sampler:
    """Samples images from a network with fixed options; call it once per batch.

    `fast` switches on inference fast paths (samplers.fast); they change only how the network
    runs, not what the sampler computes.
    """

    def __init__(self, net, options=SamplerOptions(), device=None, fast=FastPaths()):
        options.check()
        self.options = options
        self.fast = fast
        device = torch.device('cpu') if device is None else torch.device(device)
        sigma_min, sigma_max = sigma_range(net, options)
        levels = schedules.noise_levels(options.disc, options.num_steps, sigma_min, sigma_max, options.rho, device=device)
        self.sigmas = schedules.with_zero(net.round_sigma(levels))
        if options.solver not in solvers.WITH_CHURN and not bool((self.sigmas[1:] < self.sigmas[:-1]).all()):
            raise SamplerOptionError(f'--solver={options.solver} needs distinct noise levels, but {options.num_steps} steps '
                                     'repeat levels after rounding to the network\'s; use fewer --steps')
        self.ode = schedules.time_param(options.schedule, options.scaling, sigma_min, sigma_max)
        self.churn = solvers.Churn(options.S_churn, options.S_min, options.S_max, options.S_noise, net.round_sigma)
        self.net = prepare_network(net, fast, device)
        self.denoiser = denoisers.with_epsilon_scaling(denoisers.network_denoiser(self.net), options.num_steps,
                                                       options.eps_scaler, options.eps_scaler_k)
        self.time_shift = None
        if options.ts_window > 0:
            grid = net.round_sigma(schedules.reference_grid(options.disc, sigma_min, sigma_max, options.rho, device=device))
            signal_var = options.ts_signal_var
            if signal_var is None:
                signal_var = getattr(net, 'sigma_data', 0.5) ** 2
            self.time_shift = TimeShift(grid, options.ts_window, options.ts_cutoff, signal_var)
        self.solver = solvers.SOLVERS[options.solver]
        if options.solver in solvers.WITH_ORDER:
            self.solver = functools.partial(self.solver, order=options.solver_order)

    def __call__(self, latents, class_labels=None, randn_like=torch.randn_like):
        """Images [N, C, H, W] float64, roughly in [-1, 1]."""
        with self.fast.grad_mode():
            images = self.solver(self.denoiser, latents, self.sigmas, randn_like, class_labels,
                                 churn=self.churn, time_shift=self.time_shift, ode=self.ode)
        # A tensor made under inference_mode cannot be changed in place later; return an ordinary one.
        return images.clone() if images.is_inference() else images
