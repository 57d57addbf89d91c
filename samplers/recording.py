"""What the exposure analysis needs to know about the solvers, in one place: which network
evaluations a step makes, and wrappers that record them or stop after one step.

- `EVALUATIONS`: per solver, the evaluations of each step in call order (their kind and the
  level they are scheduled at). A solver added to `samplers/` adds its entry here; the
  recorder checks the entry against the calls the solver actually makes.
- `EpsNormRecorder` and `FirstStepOnly` are `StepDependent` wrappers, so they see the solver
  step without any change to the solvers: within one `at_step(i)` they count the calls.
- `step_levels()` and `run_one_step()` cover both families of `Sampler`: EDM's sigma schedule
  (Euler, Heun) and the respaced discrete process of an ADM network (DDPM, DDIM).
"""

import numpy as np
import torch

from .denoisers import StepDependent, at_step, network_denoiser
from .discrete import Respacing
from .schedules import per_sample
from .solvers import NO_CHURN

EULER, CORRECTION, DDPM, DDIM = 'euler', 'correction', 'ddpm', 'ddim'

MIDPOINT = 'midpoint'

# The evaluations of step i of N for each solver, in the order the solver makes them, as
# (kind, level): level 0 is the step's starting level sigma_i, 1 its end sigma_{i+1}, 0.5 the
# midpoint (sigma_i + sigma_{i+1}) / 2. Every solver's last step is one evaluation at sigma_i.
EVALUATIONS = dict(
    euler=lambda i, n: [(EULER, 0)],
    heun=lambda i, n: [(EULER, 0)] + ([(CORRECTION, 1)] if i < n - 1 else []),  # no correction on the last step
    ddpm=lambda i, n: [(DDPM, 0)],
    ddim=lambda i, n: [(DDIM, 0)],
    # S-PNDM: a pseudo improved Euler first step, then one evaluation per step (samplers/multistep.py).
    spndm=lambda i, n: [(EULER, 0)] + ([(CORRECTION, 1)] if i == 0 < n - 1 else []),
    # F-PNDM: pseudo Runge-Kutta (RK4) in the first three steps, then one evaluation per step.
    fpndm=lambda i, n: [(EULER, 0)] + ([(MIDPOINT, 0.5), (MIDPOINT, 0.5), (CORRECTION, 1)] if i < min(3, n - 1) else []),
    **{'fpndm-pndm': lambda i, n: [(EULER, 0)] + ([(MIDPOINT, 0.5), (MIDPOINT, 0.5), (CORRECTION, 1)] if i < min(3, n - 1) else [])},
    dpmsolver=lambda i, n: [(EULER, 0)],
    **{'dpmsolver-ref': lambda i, n: [(EULER, 0)]},
    dpmpp2m=lambda i, n: [(EULER, 0)],
    deis=lambda i, n: [(EULER, 0)],
)


class LayoutError(ValueError):
    """A solver without a registered evaluation layout, or one that made other calls; one line."""


def _evaluations(num_steps, solver):
    if solver not in EVALUATIONS:
        raise LayoutError(f'no evaluation layout is registered for --solver={solver} (samplers/recording.py, EVALUATIONS)')
    return [(i, kind, level) for i in range(num_steps) for kind, level in EVALUATIONS[solver](i, num_steps)]


def evaluation_layout(num_steps, solver):
    """[(step i, kind)] of every network evaluation of `solver` with `num_steps` steps, in the
    order the solver makes them (Euler: 'euler' per step; Heun: 'euler' and 'correction' at
    every step but the last; DDPM, DDIM: 'ddpm', 'ddim' per step)."""
    return [(i, kind) for i, kind, _level in _evaluations(num_steps, solver)]


def evaluation_levels(levels, solver):
    """The scheduled sigma of every evaluation, from the N + 1 step levels (step_levels())."""
    return [levels[i] + level * (levels[i + 1] - levels[i]) if level == 0.5 else levels[i + level]
            for i, _kind, level in _evaluations(len(levels) - 1, solver)]


def evaluation_index(layout):
    """{(step i, call c within the step): position in `layout`}: the c-th evaluation of step i."""
    index, calls = {}, {}
    for j, (i, _kind) in enumerate(layout):
        index[(i, calls.get(i, 0))] = j
        calls[i] = calls.get(i, 0) + 1
    return index


def layout_note(layout):
    """How to read an x-axis that counts evaluations from the end (1 = the last): '' for one
    evaluation per step, e.g. 'odd: euler, even: correction' when the kinds alternate."""
    if len({i for i, _kind in layout}) == len(layout):
        return ''
    by_parity = {}
    for n, (_i, kind) in enumerate(reversed(layout)):
        by_parity.setdefault(n % 2, set()).add(kind)
    if all(len(kinds) == 1 for kinds in by_parity.values()):
        return f'odd: {min(by_parity[0])}, even: {min(by_parity[1])}'
    kinds = list(dict.fromkeys(kind for _i, kind in layout))
    return 'per step: ' + ', '.join(kinds)

#----------------------------------------------------------------------------
# The two families of Sampler.


def step_levels(sampler):
    """The scheduled sigma at the start of each of the N steps of a Sampler, in step order,
    then 0 (N + 1 values). For a discrete sampler, step i is at respaced index N - 1 - i and
    sigma = sqrt(1 / alpha_bar - 1), the level its network call gets without time shift."""
    if sampler.options.discrete:
        return [float(np.sqrt(1.0 / a - 1)) for a in sampler.process.alpha_bar[::-1]] + [0.0]
    return sampler.sigmas.tolist()


def run_one_step(sampler, denoiser, x0, n, i, class_labels=None, randn_like=torch.randn_like):
    """Step i of `sampler`'s solver from x0 + sigma_i n (the unscaled state at the step's
    scheduled level), with `denoiser` (a wrapper around unscaled_denoiser(sampler)) instead
    of the sampler's own, no churn and no time shift; later steps of the call see D(x) = x
    (FirstStepOnly). For what the denoiser records; the returned state is of no use.
    """
    levels = step_levels(sampler)
    denoiser = FirstStepOnly(denoiser)
    if not sampler.options.discrete:
        sigmas = torch.tensor([levels[i], levels[i + 1], 0.0][:3 if levels[i + 1] > 0 else 2], dtype=torch.float64,
                              device=x0.device)
        # The solver starts from sigma_0 * latents: latents = x0 / sigma_i + n gives x0 + sigma_i n.
        return sampler.solver(denoiser, x0 / levels[i] + n, sigmas, randn_like, class_labels,
                              churn=NO_CHURN, time_shift=None, ode=sampler.ode)
    # The process cut to respaced index j (and the one below it, where the step lands): its
    # first step is step i of the full process, with the same alpha_bar and alpha_bar_prev.
    process, j = sampler.process, sampler.process.num_steps - 1 - i
    lo = max(j - 1, 0)
    cut = Respacing(timesteps=process.timesteps[lo:j + 1], alpha_bar=process.alpha_bar[lo:j + 1])
    abar = float(process.alpha_bar[j])
    x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * n  # the network then sees x_t / sqrt(abar) = x0 + sigma_j n
    # The step's own noise enters after the evaluation: zeros keep `randn_like`'s stream untouched.
    return sampler.solver(denoiser, x_t, cut, torch.zeros_like, class_labels, **dict(sampler.solver_kwargs, time_shift=None))


def unscaled_denoiser(sampler):
    """The sampler's network as a denoiser without epsilon scaling. For a discrete sampler it
    is the VarianceTap its solver reads the learned variance from, so a wrapper around it
    (EpsNormRecorder) can stand in for the sampler's denoiser in run_one_step()."""
    return sampler.solver_kwargs['tap'] if sampler.options.discrete else network_denoiser(sampler.net)

#----------------------------------------------------------------------------
# Denoiser wrappers.


def eps_norms(x, denoised, sigma):
    """Per-sample L2 norm [N] (float64) of eps = (x - D(x; sigma)) / sigma over all C*H*W values."""
    eps = (x.to(torch.float64) - denoised.to(torch.float64)) / per_sample(torch.as_tensor(sigma, dtype=torch.float64, device=x.device))
    return eps.flatten(1).norm(dim=1)


class EpsNormRecorder(StepDependent):
    """Passes every evaluation through to `denoiser` and records, per sample, ||eps||_2 and the
    sigma it was evaluated at.

    eps is computed from what `denoiser` returns, so a recorder around an epsilon-scaled
    denoiser records the scaled eps that the solver uses. `records` maps (step i, evaluation
    number within the step) to a list of (norms [N], sigmas [N]) pairs, one per call; `take()`
    empties it.
    """

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self.records = {}

    def at_step(self, i):
        inner = at_step(self.denoiser, i)
        calls = [0]

        def recorded(x, sigma, class_labels=None):
            denoised = inner(x, sigma, class_labels)
            sigmas = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0])
            self.records.setdefault((i, calls[0]), []).append((eps_norms(x, denoised, sigma), sigmas.clone()))
            calls[0] += 1
            return denoised
        return recorded

    def __call__(self, x, sigma, class_labels=None):
        raise TypeError('EpsNormRecorder depends on the solver step; call at_step(i) first')

    def take(self):
        """The records so far, as {(i, j): (norms [N], sigmas [N])} with the calls of each
        evaluation concatenated; the recorder is emptied."""
        out = {key: tuple(torch.cat(parts) for parts in zip(*calls)) for key, calls in self.records.items()}
        self.records = {}
        return out


def _identity(x, sigma, class_labels=None):
    return x


class FirstStepOnly(StepDependent):
    """Evaluates `denoiser` in step 0 only; later steps see D(x) = x (zero derivative, no
    network call). Runs exactly one solver step from a given state at the cost of one step."""

    def __init__(self, denoiser):
        self.denoiser = denoiser

    def at_step(self, i):
        return at_step(self.denoiser, i) if i == 0 else _identity

    def __call__(self, x, sigma, class_labels=None):
        raise TypeError('FirstStepOnly depends on the solver step; call at_step(i) first')
