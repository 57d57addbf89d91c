"""Time shift (TS-DPM, arXiv 2305.15583) for continuous noise levels; docs/sampling.md defines it.

At a step whose state should be at level sigma_hat, each sample's pixel variance v is
compared with the variance the state would have at level sigma', signal_var + sigma'^2,
for the candidate levels sigma' of a fine reference grid near sigma_hat, and the step is
taken from the best-matching level instead.
"""

import torch


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


def select_sigma(x, sigma_hat, sigma_next, grid, window, signal_var):
    """Per-sample shifted levels sigma' [N] for unscaled states x [N, C, H, W] at sigma_hat.

    sigma' minimises |v - (signal_var + sigma'^2)| over the candidates, v being each
    sample's unbiased pixel variance; ties go to sigma_hat, then to the higher level.
    """
    levels, usable = candidate_levels(grid, sigma_hat, sigma_next, window)
    v = x.to(torch.float64).flatten(1).var(dim=1)
    cost = (v[:, None] - (signal_var + levels[None, :] ** 2)).abs()
    cost = cost.masked_fill(~usable[None, :], float('inf'))
    return levels[cost.argmin(dim=1)]


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

    def active(self, i, sigma_i):
        return self.window > 0 and i >= 1 and sigma_i > self.cutoff

    def shift(self, x_unscaled, sigma_hat, sigma_next):
        """sigma' [N] for the unscaled state at sigma_hat."""
        grid = self.grid.to(x_unscaled.device)
        return select_sigma(x_unscaled, sigma_hat, sigma_next, grid, self.window, self.signal_var)
