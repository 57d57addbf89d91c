"""Time-shift search: the windowed candidate search of samplers/time_shift.py against a search
over the whole reference grid (the form it replaced), per shifted step.

    python bench/bench_time_shift.py                     # N = 16 and 512, window 5, 1000-level grid
    python bench/bench_time_shift.py --device=cuda --batches=512,4096

Both searches get the same float64 states [N, 3, 32, 32]; the levels they choose are compared
(they must be identical), and the pixel variance alone is timed too, since every form of the
time shift needs it.
"""

import os
import sys
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.options import bench_device, positive_int_list  # noqa: E402
from samplers import reference_grid  # noqa: E402
from samplers.time_shift import select_sigma  # noqa: E402


def full_grid_select(x, sigma_hat, sigma_next, grid, window, signal_var):
    """The whole-grid search: a [N, 1 + len(grid)] cost matrix, masked outside the window."""
    sigma_hat_t = torch.as_tensor(sigma_hat, dtype=torch.float64, device=grid.device).reshape(1)
    center = (grid - sigma_hat_t).abs().argmin()
    offset = (torch.arange(len(grid), device=grid.device) - center).abs()
    usable = torch.cat([torch.ones(1, dtype=torch.bool, device=grid.device), (offset <= window) & (grid > sigma_next)])
    levels = torch.cat([sigma_hat_t, grid])
    v = x.flatten(1).var(dim=1)
    cost = (v[:, None] - (signal_var + levels[None, :] ** 2)).abs().masked_fill(~usable[None, :], float('inf'))
    return levels[cost.argmin(dim=1)]


def per_call_ms(fn, device, calls):
    for _ in range(calls):  # warm-up (and, on a GPU, its clocks)
        fn()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / calls * 1e3


@click.command()
@click.option('--device', 'device_name', type=click.Choice(['cpu', 'cuda']), default='cpu', show_default=True, help='Device')
@click.option('--batches', 'batch_sizes', default='16,512', show_default=True, callback=positive_int_list, help='Batch sizes N')
@click.option('--window', type=click.IntRange(min=0), default=5, show_default=True, help='--ts_window')
@click.option('--calls', type=click.IntRange(min=1), default=200, show_default=True, help='Calls per timing')
@click.option('--repeat', type=click.IntRange(min=1), default=3, show_default=True, help='Timings (fastest kept)')
def main(device_name, batch_sizes, window, calls, repeat):
    """Print ms per shifted step of the windowed and the whole-grid search."""
    device = bench_device(device_name)
    grid = reference_grid('edm', 0.002, 80, device=device)
    sigma_hat, sigma_next = grid[300].item() * 1.001, grid[420].item()
    print(f'torch {torch.__version__}, {device.type}; {len(grid)}-level grid, window {window}, '
          f'ms per shifted step (best of {repeat} x {calls} calls)')
    print(f'{"N":>5s} {"variance":>9s} {"windowed":>9s} {"whole grid":>11s} {"saved":>7s} {"same levels":>12s}')
    for n in batch_sizes:
        gen = torch.Generator(device).manual_seed(n)
        x = torch.randn(n, 3, 32, 32, generator=gen, dtype=torch.float64, device=device)
        x *= (sigma_hat ** 2 + 0.25) ** 0.5 * (1 + 0.1 * torch.randn(n, 1, 1, 1, generator=gen, dtype=torch.float64, device=device))
        args = (x, sigma_hat, sigma_next, grid, window, 0.25)
        same = torch.equal(select_sigma(*args), full_grid_select(*args))
        t_var = min(per_call_ms(lambda: x.flatten(1).var(dim=1), device, calls) for _ in range(repeat))
        t_new = min(per_call_ms(lambda: select_sigma(*args), device, calls) for _ in range(repeat))
        t_old = min(per_call_ms(lambda: full_grid_select(*args), device, calls) for _ in range(repeat))
        print(f'{n:5d} {t_var:9.3f} {t_new:9.3f} {t_old:11.3f} {1 - t_new / t_old:7.1%} {str(same):>12s}', flush=True)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
