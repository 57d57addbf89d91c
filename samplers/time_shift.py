"""Time shift (TS-DPM, arXiv 2305.15583); docs/sampling.md defines it.

At a step whose state should be at some noise level, each sample's pixel variance v is
compared with the variance the state would have at each candidate level near it, and the
network is evaluated at the best-matching level instead (`nearest_candidate`, one rule):

- `TimeShift`: continuous levels (EDM networks and solvers). The unscaled state at sigma'
  has variance signal_var + sigma'^2; the candidates come from a fine reference grid.
- `DiscreteTimeShift`: the timesteps of a discrete (ADM) model, for DDPM and DDIM. The
  VP state x_t at timestep k has variance abar_k signal_var + 1 - abar_k; the step then
  lands on the scheduled next timestep.
- `TSDPMTimeShift`: TS-DPM-ADM's published code, reproduced with its quirks (DDIM only).
"""

import dataclasses

import numpy as np
import torch

from .discrete import grid_levels


class TimeShiftError(ValueError):
    """The time shift cannot proceed (TS-DPM-ADM would produce NaN); the message is one line."""


def nearest_candidate(v, expected, usable):
    """Per sample, the index [N] of the usable candidate whose expected variance ([K] or [N, K])
    is closest to the sample's variance v [N]; ties go to the lower index."""
    cost = (v[:, None] - expected).abs()  # [N, K]
    return cost.masked_fill_(~usable, float('inf')).argmin(dim=1)


def pixel_variance(x):
    """Each sample's unbiased pixel variance [N], float64."""
    return x.to(torch.float64).flatten(1).var(dim=1)


def candidate_levels(grid, sigma_hat, sigma_next, window):
    """Candidates for one step: [sigma_hat] + the grid levels within `window` positions of
    the level nearest to sigma_hat that lie above sigma_next, in grid order.

    Returned as a [2 + 2 w] tensor, w = min(window, len(grid) - 1), with a mask of the usable
    entries: only the window is gathered, so the cost does not grow with the grid, and the
    shapes do not depend on the data (no host sync on a GPU).
    """
    grid = grid.to(torch.float64)
    sigma_hat = torch.as_tensor(sigma_hat, dtype=torch.float64, device=grid.device).reshape(1)
    center = (grid - sigma_hat).abs().argmin()
    w = min(int(window), len(grid) - 1)
    index = center + torch.arange(-w, w + 1, device=grid.device)
    inside = (index >= 0) & (index < len(grid))
    levels = grid[index.clamp(0, len(grid) - 1)]
    usable = inside & (levels > sigma_next)
    return torch.cat([sigma_hat, levels]), torch.cat([torch.ones_like(usable[:1]), usable])


def candidates(grid, sigma_hat, sigma_next, window, signal_var):
    """(levels [K], expected variances [K], usable [K]) of one step's candidates (candidate_levels):
    what select_sigma compares the samples with, which depends on the step only."""
    levels, usable = candidate_levels(grid, sigma_hat, sigma_next, window)
    return levels, signal_var + levels ** 2, usable


def choose(x, levels, expected, usable):
    """Per-sample level [N] among a step's `candidates` for unscaled states x [N, C, H, W]."""
    return levels[nearest_candidate(pixel_variance(x), expected, usable)]


def select_sigma(x, sigma_hat, sigma_next, grid, window, signal_var):
    """Per-sample shifted levels sigma' [N] for unscaled states x [N, C, H, W] at sigma_hat.

    sigma' minimises |v - (signal_var + sigma'^2)| over the candidates, v being each
    sample's unbiased pixel variance; ties go to sigma_hat, then to the higher level.
    """
    return choose(x, *candidates(grid, sigma_hat, sigma_next, window, signal_var))


class TimeShift:
    """Step helper: moves each sample's starting level of step i to its best-matching level.

    Active at steps i >= 1 whose scheduled level sigma_i exceeds `cutoff`; the first step
    starts from exact noise and is never shifted (as in TS-DPM).
    """

    def __init__(self, grid, window, cutoff, signal_var):
        self.grid = grid.to(torch.float64)
        self.window = int(window)
        self.cutoff = float(cutoff)
        self.signal_var = float(signal_var)
        self._steps = {}  # (sigma_hat, sigma_next, device) -> the step's candidates, for float levels

    def active(self, i, sigma_i):
        return self.window > 0 and i >= 1 and sigma_i > self.cutoff

    def shift(self, x_unscaled, sigma_hat, sigma_next):
        """sigma' [N] for the unscaled state at sigma_hat. The candidates of a step whose levels
        are Python floats (a scheduled level) are computed once and kept: every batch sampled
        with the same schedule reuses them."""
        device = x_unscaled.device
        if not (isinstance(sigma_hat, float) and isinstance(sigma_next, float)):
            return select_sigma(x_unscaled, sigma_hat, sigma_next, self.grid.to(device), self.window, self.signal_var)
        key = (sigma_hat, sigma_next, device)
        if key not in self._steps:
            self._steps[key] = candidates(self.grid.to(device), sigma_hat, sigma_next, self.window, self.signal_var)
        return choose(x_unscaled, *self._steps[key])


class DiscreteTimeShift:
    """Step helper of the discrete samplers: evaluates the network of step i at each sample's
    best-matching timestep.

    Active at steps i >= 1 whose scheduled sigma exceeds `cutoff` (as TimeShift). Candidates
    are the scheduled timestep t and the timesteps within `window` of it that lie above the
    next scheduled timestep, highest first; ties go to t, then to the higher timestep. A
    sample whose choice is t keeps the respaced process's levels exactly.
    """

    def __init__(self, alpha_bar, window, cutoff, signal_var):
        self.alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64)
        self.window = int(window)
        self.cutoff = float(cutoff)
        self.signal_var = float(signal_var)

    def levels(self, x, i, j, process):
        grid = grid_levels(process, j, x)
        if not (self.window > 0 and i >= 1 and float(grid.sigma[0]) > self.cutoff):
            return grid
        t = process.timesteps[j]
        t_next = process.timesteps[j - 1] if j > 0 else -1
        alpha_bar = self.alpha_bar.to(x.device)
        offsets = torch.arange(self.window, -self.window - 1, -1, device=x.device)
        candidates = torch.cat([torch.tensor([t], device=x.device), t + offsets])
        usable = (candidates > t_next) & (candidates < len(alpha_bar))
        abar = alpha_bar[candidates.clamp(0, len(alpha_bar) - 1)]
        expected = abar * self.signal_var + (1 - abar)
        choice = nearest_candidate(pixel_variance(x), expected[None, :], usable[None, :])
        shifted = candidates[choice] != t
        abar_shifted = abar[choice]
        return dataclasses.replace(grid, abar=torch.where(shifted, abar_shifted, grid.abar),
                                   sigma=torch.where(shifted, (1 / abar_shifted - 1).sqrt(), grid.sigma))


class TSDPMTimeShift:
    """TS-DPM-ADM's time shift for DDIM, as its code computes it (`ddim_sample` and
    `get_next_time_window` of tingyu215/TS-DPM-ADM). It differs from DiscreteTimeShift:

    - the network is evaluated at the scheduled timestep; only the alpha_bar the step lands
      at moves;
    - the variance of x_t is compared with alpha_bar of the mirrored timestep, abar[T-1-k]
      (the flipped alpha_bar array stands for the noise variance 1 - abar[k]), and the
      closest k wins (first on ties);
    - `window` W is the full width in original timesteps: k in [ct - W//2, ct + W//2], or
      [0, W] when ct - W//2 <= 0; cutoff is an original timestep: active from the second
      step on while ct > cutoff (cutoff 0: no search, k = ct);
    - the step lands at abar[k - T // (S - 1) - 1] (1 at index -1): the offset is the stride
      of 'N' respacing with S steps, also for 'ddimN'; negative indices wrap to the end of
      the table. Where the landing alpha_bar lies below the current one the original's DDIM
      step takes a square root of a negative number (NaN); that raises TimeShiftError here.
    """

    def __init__(self, alpha_bar, window, cutoff):
        alpha_bar = np.asarray(alpha_bar, dtype=np.float64)
        self.flipped = torch.as_tensor(alpha_bar[::-1].copy())
        self.alpha_bar_prev_all = torch.as_tensor(np.append(1.0, alpha_bar[:-1]))
        self.window = int(window)
        self.cutoff = int(cutoff)

    def offset(self, process):
        return len(self.flipped) // (process.num_steps - 1)

    def check(self, process):
        """Raise TimeShiftError where the original certainly produces NaN: cutoff 0, whose
        steps all land at k = ct, with a landing index that wraps or lies above ct."""
        if self.cutoff != 0:
            return
        for j in range(process.num_steps - 1):
            ct = process.timesteps[j]
            if ct > 0 and self._landing(torch.tensor([ct]), process) < process.alpha_bar[j]:
                raise TimeShiftError(f'TS-DPM-ADM\'s time shift gives NaN with cutoff 0 and {process.num_steps} steps '
                                     f'(the step from timestep {ct} lands at timestep {ct - self.offset(process) - 1}); '
                                     'use a cutoff above the first steps, e.g. --ts_cutoff=300')

    def _landing(self, k, process):
        index = k - self.offset(process)
        index = torch.where(index < 0, index + len(self.alpha_bar_prev_all), index)  # wraps like numpy/torch indexing
        return self.alpha_bar_prev_all.to(k.device)[index]

    def levels(self, x, i, j, process):
        grid = grid_levels(process, j, x)
        ct = process.timesteps[j]
        if i == 0 or ct <= self.cutoff:
            return grid
        total = len(self.flipped)
        if self.cutoff == 0:
            k = torch.full([x.shape[0]], ct, device=x.device)
        else:
            half = self.window // 2
            first = ct - half if ct - half > 0 else 0
            last = ct + half + 1 if ct - half > 0 else self.window + 1
            candidates = torch.arange(first, min(last, total), device=x.device)
            values = self.flipped.to(x.device)[candidates]
            k = candidates[((pixel_variance(x)[:, None] - values[None, :]) ** 2).argmin(dim=1)]
        abar_prev = self._landing(k, process)
        bad = abar_prev.float() < grid.abar.float()  # compared as the original's float32 tables
        if bool(bad.any()):
            n = int(bad.nonzero()[0, 0])
            raise TimeShiftError(f'TS-DPM-ADM\'s time shift gives NaN: at timestep {ct} a sample chose timestep {int(k[n])}, '
                                 f'whose landing step {int(k[n]) - self.offset(process) - 1} is noisier than it '
                                 '(the original takes the square root of a negative number); raise --ts_cutoff or narrow --ts_window')
        return dataclasses.replace(grid, abar_prev=abar_prev)
