"""Denoiser wrappers for analysis: record the predicted noise of every evaluation, or stop after one step.

Both are `StepDependent` wrappers, so they see the solver step without any change to the
solvers: within one `at_step(i)` the first call is the Euler evaluation and the second, for
Heun, the correction (samplers/solvers.py evaluates them in that order).
"""

import torch

from .denoisers import StepDependent, at_step
from .sampler import SamplerOptionError
from .schedules import per_sample

EULER, CORRECTION = 'euler', 'correction'


def evaluation_layout(num_steps, solver):
    """[(step i, 'euler' | 'correction')] in the order the solver evaluates the network:
    Euler at every step, Heun's correction at every step but the last. Defined for Euler and
    Heun only (SamplerOptionError otherwise)."""
    if solver not in ('euler', 'heun'):
        raise SamplerOptionError(f'epsilon norms are recorded for --solver=euler|heun, not {solver}')
    layout = []
    for i in range(num_steps):
        layout.append((i, EULER))
        if solver == 'heun' and i < num_steps - 1:
            layout.append((i, CORRECTION))
    return layout


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
