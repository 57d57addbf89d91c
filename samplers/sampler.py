"""The boundary between a network and the solvers: options in, a ready sampler out.

Everything the solvers need from the network (noise range, `round_sigma`, `sigma_data`, the
alpha_bar table of a discrete model) is read here once. The defaults reproduce NVIDIA's EDM
`generate.py`: its `edm_sampler` and its `ablation_sampler` are one algorithm, and both are
covered by these options. The solvers 'ddpm' and 'ddim' are guided-diffusion's, for
discrete-time (ADM) networks.
"""

import dataclasses
import functools
import math
from typing import Optional

import torch

from . import denoisers, discrete, multistep, schedules, solvers
from .fast import FastPaths, prepare_network
from .guidance import GUIDANCE_MODES, guided
from .time_shift import DiscreteTimeShift, TimeShift, TimeShiftError, TSDPMTimeShift

TS_MODES = ('clean', 'tsdpm')
TSDPM_DEFAULT_CUTOFF = 300      # TS-DPM-ADM's default --cutoff (an original timestep).


class SamplerOptionError(ValueError):
    """Sampler options that cannot work; the message is one line."""


MAX_STEPS = 100_000  # solver steps; EDM's and guided-diffusion's grids use at most 1000


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
    num_steps: int = 18                     # Solver steps N (Heun: 2N - 1 evaluations).
    sigma_min: Optional[float] = None       # Lowest level; None = EDM's default for `disc`.
    sigma_max: Optional[float] = None       # Highest level; None = EDM's default for `disc`.
    rho: float = 7                          # Exponent of the EDM discretization.
    solver: str = 'heun'                    # A name in solvers.SOLVERS (docs/solvers.md); 'ddpm', 'ddim' for ADM networks.
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
    ts_mode: str = 'clean'                  # Time shift: 'clean' or 'tsdpm' (TS-DPM-ADM's, ddim only).
    respacing: Optional[str] = None         # ddpm/ddim: guided-diffusion's timestep_respacing; None = str(num_steps).
    eta: float = 0.0                        # ddim: noise of each step (0: deterministic).
    clip_denoised: bool = True              # ddpm/ddim: clamp the predicted x0 to [-1, 1].
    variance: Optional[str] = None          # ddpm: 'learned', 'large', 'small'; None = the model's.
    levels: Optional[tuple] = None          # Explicit levels sigma_0 > ... > sigma_{N-1} (a schedule file); None = disc.

    @property
    def discrete(self):
        """Is the solver one of guided-diffusion's discrete samplers?"""
        return self.solver in discrete.DISCRETE_SOLVERS

    @property
    def timestep_respacing(self):
        """The respacing string of a discrete solver."""
        return str(self.num_steps) if self.respacing is None else self.respacing

    @property
    def nfe(self):
        """Network evaluations per image (None when it depends on the network: respacing '')."""
        if self.discrete:
            return self._respaced_count()
        steps = self.num_steps
        if self.respacing is not None:
            steps = self._respaced_count()
            if steps is None:
                return None
        return solvers.evaluations(self.solver, steps)

    def _respaced_count(self):
        text = self.timestep_respacing.strip()
        try:
            return int(text[4:]) if text.startswith('ddim') else sum(int(n) for n in text.split(','))
        except ValueError:
            return None

    @property
    def solver_order(self):
        """The order that dpmsolver and deis run with."""
        return 3 if self.order is None else self.order

    def check(self):
        """Raise SamplerOptionError for options that no network can sample with."""
        choices = dict(solver=tuple(solvers.SOLVERS) + tuple(discrete.DISCRETE_SOLVERS), disc=schedules.DISCRETIZATIONS,
                       schedule=schedules.SCHEDULES, scaling=schedules.SCALINGS, ts_mode=TS_MODES)
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SamplerOptionError(f'--{name} must be one of {"|".join(allowed)}, not "{getattr(self, name)}"')
        self._check_discrete()
        self._check_solver()
        self._check_levels()
        if self.num_steps < 2 and self.respacing is None:
            hint = ' (Heun with 1 step would be a single Euler step)' if self.solver == 'heun' else ''
            raise SamplerOptionError(f'--steps must be at least 2, got {self.num_steps}{hint}')
        if self.num_steps > MAX_STEPS:
            raise SamplerOptionError(f'--steps={self.num_steps} is more than the {MAX_STEPS} steps a sampler here takes '
                                     '(the noise levels alone would not fit in memory; samplers.sampler.MAX_STEPS)')
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
        scalers = denoisers.eps_scalers(self.nfe if self.discrete and self.nfe else self.num_steps,
                                        self.eps_scaler, self.eps_scaler_k)
        if not all(s > 0 and math.isfinite(s) for s in scalers):
            raise SamplerOptionError(f'epsilon scalers must be positive: --eps_scaler={self.eps_scaler:g} with '
                                     f'--eps_scaler_k={self.eps_scaler_k:g} gives {min(scalers):g} at some step')
        if self.ts_window < 0:
            raise SamplerOptionError(f'--ts_window must not be negative, got {self.ts_window}')
        if self.ts_cutoff < 0:
            raise SamplerOptionError(f'--ts_cutoff must not be negative, got {self.ts_cutoff:g}')
        if self.ts_signal_var is not None and self.ts_signal_var < 0:
            raise SamplerOptionError(f'--ts_signal_var must not be negative, got {self.ts_signal_var:g}')

    def _check_discrete(self):
        defaults = SamplerOptions()
        if not self.discrete:
            for name in ('eta', 'clip_denoised', 'variance'):
                if getattr(self, name) != getattr(defaults, name):
                    flag = '--no-clip_denoised' if name == 'clip_denoised' else f'--{name}'
                    raise SamplerOptionError(f'{flag} applies to --solver=ddpm|ddim only, not {self.solver}')
            if self.respacing is not None:  # the levels are an ADM network's respaced timesteps
                for name in ('sigma_min', 'sigma_max', 'rho', 'disc'):
                    if getattr(self, name) != getattr(defaults, name):
                        raise SamplerOptionError(f'--{name} and --timestep_respacing both choose the levels; give one')
            if self.ts_mode == 'tsdpm':
                raise SamplerOptionError(f'--ts_mode=tsdpm is TS-DPM-ADM\'s time shift for --solver=ddim, not {self.solver}')
            return
        for name in ('sigma_min', 'sigma_max', 'rho', 'disc', 'schedule', 'scaling', 'S_churn'):
            if getattr(self, name) != getattr(defaults, name):
                raise SamplerOptionError(f'--{name} applies to the EDM solvers (euler, heun), not --solver={self.solver}')
        if not (math.isfinite(self.eta) and self.eta >= 0):
            raise SamplerOptionError(f'--eta must be a non-negative number, got {self.eta}')
        if self.eta != 0 and self.solver != 'ddim':
            raise SamplerOptionError('--eta applies to --solver=ddim only')
        if self.variance is not None and (self.variance not in discrete.VARIANCES or self.solver != 'ddpm'):
            raise SamplerOptionError(f'--variance must be one of {"|".join(discrete.VARIANCES)} with --solver=ddpm, '
                                     f'not "{self.variance}" with {self.solver}')
        if self.ts_mode == 'tsdpm' and self.solver != 'ddim':
            raise SamplerOptionError('--ts_mode=tsdpm is TS-DPM-ADM\'s time shift, defined for --solver=ddim only '
                                     '(its DDPM ignores it); use --ts_mode=clean with ddpm')
        if self.ts_mode == 'tsdpm' and self.ts_cutoff != int(self.ts_cutoff):
            raise SamplerOptionError(f'--ts_cutoff is an original timestep with --ts_mode=tsdpm, got {self.ts_cutoff:g}')


    def _check_levels(self):
        if self.levels is None:
            return
        levels = list(self.levels)
        if not (levels and all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in levels)
                and all(a > b for a, b in zip(levels, levels[1:]))):
            raise SamplerOptionError('schedule levels must be strictly decreasing positive numbers')
        if len(levels) != self.num_steps:
            raise SamplerOptionError(f'the schedule has {len(levels)} levels, but --steps={self.num_steps}')
        defaults = SamplerOptions()
        for name in ('sigma_min', 'sigma_max', 'rho', 'disc', 'respacing'):
            if getattr(self, name) != getattr(defaults, name):
                flag = 'timestep_respacing' if name == 'respacing' else name
                raise SamplerOptionError(f'--{flag} and a schedule file both choose the levels; give one')
        if self.discrete:
            raise SamplerOptionError(f'a schedule file gives levels for the EDM solvers, not for --solver={self.solver}')

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
    runs, not what the sampler computes. `guidance` (samplers.guidance.ClassifierGuidance, for
    ADM networks) guides every solver towards the class labels it is called with; `label_dim`
    is the number of classes a label is drawn from (the classifier's with guidance).
    """

    def __init__(self, net, options=SamplerOptions(), device=None, fast=FastPaths(), guidance=None):
        options.check()
        self.options = options
        self.fast = fast
        device = torch.device('cpu') if device is None else torch.device(device)
        check_guidance(net, guidance)
        self.guidance = guidance
        self.label_dim = guidance.num_classes if guidance is not None else net.label_dim
        if options.discrete:
            self._init_discrete(net, options, device, fast)
            return
        if options.respacing is not None:
            # An ADM network's respaced timesteps as the levels (guided-diffusion's grid for any solver).
            grid = torch.as_tensor(discrete_process_levels(net, options), dtype=torch.float64, device=device)
            sigma_min, sigma_max = float(grid[-1]), float(grid[0])
            self.sigmas = schedules.with_zero(grid)
        elif options.levels is not None:
            levels = net.round_sigma(torch.as_tensor(options.levels, dtype=torch.float64, device=device)).to(torch.float64)
            sigma_min, sigma_max = float(levels[-1]), float(levels[0])
            self.sigmas = schedules.with_zero(levels)
        else:
            sigma_min, sigma_max = sigma_range(net, options)
            levels = schedules.noise_levels(options.disc, options.num_steps, sigma_min, sigma_max, options.rho, device=device)
            self.sigmas = schedules.with_zero(net.round_sigma(levels))
        num_steps = len(self.sigmas) - 1
        if options.solver not in solvers.WITH_CHURN and not bool((self.sigmas[1:] < self.sigmas[:-1]).all()):
            raise SamplerOptionError(f'--solver={options.solver} needs distinct noise levels, but {num_steps} steps '
                                     'repeat levels after rounding to the network\'s; use fewer --steps')
        self.ode = schedules.time_param(options.schedule, options.scaling, sigma_min, sigma_max)
        self.churn = solvers.Churn(options.S_churn, options.S_min, options.S_max, options.S_noise, net.round_sigma)
        self.net = prepare_network(net, fast, device)
        self.denoiser = denoisers.with_epsilon_scaling(denoisers.network_denoiser(self.net), num_steps,
                                                       options.eps_scaler, options.eps_scaler_k)
        self.time_shift = None
        if options.ts_window > 0:
            if isinstance(getattr(net, 'alpha_bar', None), torch.Tensor):  # a discrete network: its own levels
                grid = net.sigmas.flip(0).to(device=device, dtype=torch.float64)
                grid = grid[(grid >= sigma_min) & (grid <= sigma_max)]
            else:
                grid = net.round_sigma(schedules.reference_grid(options.disc, sigma_min, sigma_max, options.rho, device=device))
            self.time_shift = TimeShift(grid, options.ts_window, options.ts_cutoff, _signal_var(net, options))
        if guidance is not None:
            self.denoiser = guided(self.denoiser, guidance.bind(net))
        self.solver = solvers.SOLVERS[options.solver]
        if options.solver == 'fpndm-pndm':
            self.solver = functools.partial(self.solver, midpoint=multistep.timestep_midpoint(timestep_levels(net)))
        if options.solver in solvers.WITH_ORDER:
            self.solver = functools.partial(self.solver, order=options.solver_order)

    def _init_discrete(self, net, options, device, fast):
        self.process = discrete_process(net, options)
        variance = discrete.default_variance(net, options.variance)
        if variance == 'learned' and not getattr(net, 'learn_sigma', False):
            raise SamplerOptionError('--variance=learned needs a network with learned sigma (--learn_sigma True)')
        self.net = prepare_network(net, fast, device)
        tap = denoisers.VarianceTap(self.net)
        self.denoiser = denoisers.with_epsilon_scaling(tap, self.process.num_steps, options.eps_scaler, options.eps_scaler_k)
        alpha_bar = net.alpha_bar.cpu().numpy()
        self.time_shift = None
        if options.ts_mode == 'tsdpm':
            self.time_shift = TSDPMTimeShift(alpha_bar, options.ts_window, options.ts_cutoff)
            try:
                self.time_shift.check(self.process)
            except TimeShiftError as err:
                raise SamplerOptionError(str(err)) from None
        elif options.ts_window > 0:
            self.time_shift = DiscreteTimeShift(alpha_bar, options.ts_window, options.ts_cutoff, _signal_var(net, options))
        self.solver = discrete.DISCRETE_SOLVERS[options.solver]
        bound = None
        if self.guidance is not None:
            bound = self.guidance.bind(net, denoisers.eps_scalers(self.process.num_steps, options.eps_scaler,
                                                                  options.eps_scaler_k))
        self.solver_kwargs = dict(clip_denoised=options.clip_denoised, eta=options.eta, variance=variance, tap=tap,
                                  time_shift=self.time_shift, guidance=bound)

    def __call__(self, latents, class_labels=None, randn_like=torch.randn_like):
        """Images [N, C, H, W] float64, roughly in [-1, 1]."""
        if self.guidance is not None and class_labels is None:
            raise SamplerOptionError('classifier guidance needs class labels (one-hot, the classifier\'s classes) to guide towards')
        # Guidance differentiates the classifier, which inference_mode would forbid.
        with self.fast.grad_mode() if self.guidance is None else torch.no_grad():
            if self.options.discrete:
                images = self.solver(self.denoiser, latents, self.process, randn_like, class_labels, **self.solver_kwargs)
            else:
                images = self.solver(self.denoiser, latents, self.sigmas, randn_like, class_labels,
                                     churn=self.churn, time_shift=self.time_shift, ode=self.ode)
        # A tensor made under inference_mode cannot be changed in place later; return an ordinary one.
        return images.clone() if images.is_inference() else images


def timestep_levels(net):
    """The sigma of each timestep of a discrete network, ascending; SamplerOptionError for a continuous one."""
    if isinstance(getattr(net, 'alpha_bar', None), torch.Tensor):   # ADM-like: sigma_t of t = 0..T-1
        return net.sigmas.to(torch.float64)
    if isinstance(getattr(net, 'u', None), torch.Tensor):           # iDDPM: u_0 > ... > u_{M-1}
        return net.u.flip(0).to(torch.float64)
    raise SamplerOptionError(f'--solver=fpndm-pndm needs a discrete-time network (its midpoint is a timestep); '
                             f'{type(net).__name__} is continuous: use --solver=fpndm')


def check_guidance(net, guidance):
    """Raise SamplerOptionError if `guidance` cannot guide `net` (None always can)."""
    if guidance is None:
        return
    if guidance.mode not in GUIDANCE_MODES:
        raise SamplerOptionError(f'guidance mode must be one of {"|".join(GUIDANCE_MODES)}, not "{guidance.mode}"')
    if not isinstance(getattr(net, 'alpha_bar', None), torch.Tensor):
        raise SamplerOptionError(f'classifier guidance needs a discrete-time network (a converted ADM checkpoint), '
                                 f'not {type(net).__name__}: the classifier is trained on its timesteps')
    resolution = getattr(guidance.classifier, 'img_resolution', net.img_resolution)
    if resolution != net.img_resolution:
        raise SamplerOptionError(f'the classifier is for {resolution}x{resolution} images, the network makes '
                                 f'{net.img_resolution}x{net.img_resolution}')
    if net.label_dim and net.label_dim != guidance.num_classes:
        raise SamplerOptionError(f'the network has {net.label_dim} classes, the classifier {guidance.num_classes}')


def _signal_var(net, options):
    return getattr(net, 'sigma_data', 0.5) ** 2 if options.ts_signal_var is None else options.ts_signal_var


def discrete_process(net, options):
    """The Respacing of a discrete network for the options; SamplerOptionError if it has none."""
    alpha_bar = getattr(net, 'alpha_bar', None)
    if not isinstance(alpha_bar, torch.Tensor):
        what = f'--solver={options.solver}' if options.discrete else '--timestep_respacing'
        raise SamplerOptionError(f'{what} needs a discrete-time network (a converted ADM checkpoint); '
                                 f'{type(net).__name__} is continuous' + (': use --solver=euler or heun' if options.discrete else ''))
    try:
        process = discrete.respace(alpha_bar.cpu().numpy(), options.timestep_respacing)
    except discrete.RespacingError as err:
        raise SamplerOptionError(str(err)) from None
    scalers = denoisers.eps_scalers(process.num_steps, options.eps_scaler, options.eps_scaler_k)
    if not all(s > 0 and math.isfinite(s) for s in scalers):
        raise SamplerOptionError(f'epsilon scalers must be positive: --eps_scaler={options.eps_scaler:g} with '
                                 f'--eps_scaler_k={options.eps_scaler_k:g} gives {min(scalers):g} over {process.num_steps} steps')
    return process


def discrete_process_levels(net, options):
    """The sigma of each respaced timestep of a discrete network, descending (from the noisiest)."""
    process = discrete_process(net, options)
    return net.sigmas[list(process.timesteps)].flip(0).tolist()  # the model's own levels: D needs no rounding


def check_network(net, options):
    """Raise SamplerOptionError if `net` cannot be sampled with `options` (before any work starts)."""
    options.check()
    if options.discrete or options.respacing is not None:
        process = discrete_process(net, options)
        if options.ts_mode == 'tsdpm':
            try:
                TSDPMTimeShift(net.alpha_bar.cpu().numpy(), options.ts_window, options.ts_cutoff).check(process)
            except TimeShiftError as err:
                raise SamplerOptionError(str(err)) from None
        if options.variance == 'learned' and not getattr(net, 'learn_sigma', False):
            raise SamplerOptionError('--variance=learned needs a network with learned sigma (--learn_sigma True)')
    else:
        sigma_range(net, options)
    if options.solver == 'fpndm-pndm':
        timestep_levels(net)
