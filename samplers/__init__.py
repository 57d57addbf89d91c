"""How to integrate: EDM's Euler/Heun samplers with churn, epsilon scaling and time shift.

- `schedules`: noise levels (edm, vp, ve, iddpm) and time parametrizations sigma(t), s(t).
- `solvers`: `sample_euler`, `sample_heun` (one signature), stochastic churn; `SOLVERS`, every solver by name.
- `multistep`: the few-step solvers S-PNDM, F-PNDM, DPM-Solver, DPM-Solver++(2M), DEIS (docs/solvers.md).
- `fewstep`: UniPC, DPM-Solver++(3M), iPNDM, Euler ancestral, DPM-Solver++ SDE and 2M SDE.
- `nfe`: the configuration `--nfe=N` picks, and schedule files as options.
- `denoisers`: the denoiser interface and wrappers (epsilon scaling).
- `time_shift`: the time-shift step helper.
- `guidance`: classifier guidance (guided-diffusion's rules for DDPM and DDIM, a denoiser wrapper for the others).
- `adm_cli`: guided-diffusion's command lines (image_sample.py, classifier_sample.py) as a library.
- `noise`: per-seed random numbers in EDM's order.
- `sampler`: `SamplerOptions` and `Sampler`, which read the network once and run a solver.

docs/sampling.md defines epsilon scaling and the time shift exactly.
"""

from .denoisers import EpsilonScaling, at_step, eps_scaled, eps_scalers, network_denoiser, with_epsilon_scaling
from .noise import SeedNoise, latents_and_labels
from .sampler import Sampler, SamplerOptionError, SamplerOptions, sigma_range
from .schedules import TimeParam, noise_levels, reference_grid, time_param, with_zero
from .solvers import NO_CHURN, SOLVERS, Churn, sample_euler, sample_heun
from .time_shift import TimeShift, select_sigma
