"""A schedule search for N network evaluations (exposure.py schedule), after GITS (arXiv 2405.11326).

1. Reference trajectories: Heun with `substeps` steps between consecutive levels of a fine
   grid (EDM's Karras levels, rho 7, `grid_size` levels from sigma_max to sigma_min, then 0),
   from the latents of the search seeds; it records x_ref(sigma_g) and D(x_ref(sigma_g); sigma_g)
   at every grid level g, and the final image x_ref(0).
2. Costs: c(g, g') = mean squared error of one DDIM step from x_ref(sigma_g) to sigma_g' (g < g')
   against x_ref(sigma_g'), and the final cost f(g) = mean squared error of D(x_ref(sigma_g); sigma_g),
   the toolkit's last step into 0, against x_ref(0).
3. A dynamic programme finds the N levels g_0 = 0 < g_1 < ... < g_{N-1} minimising
   sum_k c(g_k, g_{k+1}) + f(g_{N-1}): it chooses where the schedule ends, too.
4. The solvers in `SOLVER_CANDIDATES` run on the found levels from the same latents; their mean
   squared errors to x_ref(0) are recorded; without refinement the closest is written.
5. Refinement (on by default): for each solver of `REFINE_CANDIDATES`, coordinate descent on
   log sigma_1, ..., log sigma_{N-1} (sigma_0 = sigma_max stays) minimises that solver's own
   error, the mean squared error of its images to x_ref(0), starting from the best of the
   programme's levels and a few Karras schedules. The DDIM step costs of the programme overrate
   the error of a higher-order solver's steps (so its schedules end too early or too late for
   it); the refinement measures the solver that will run. The refined solver and levels with
   the smallest error are written.

Deterministic (fixed seeds, no other randomness); resumable: the costs of every finished batch
of seeds are kept in OUT.work/ (plain .npy arrays) and reused; a tqdm bar shows the progress.
"""

import json
import math
import os

import numpy as np
import torch
import tqdm

import dnnlib
from safeload.schedule import SCHEDULE_FORMAT, check_schedule
from safeload.state import StateFileError, read_json
from samplers import SOLVERS, SamplerOptions, SeedNoise, latents_and_labels, noise_levels, with_zero
from samplers.denoisers import network_denoiser
from samplers.solvers import WITH_ORDER

from .common import ExposureError
from .plots import _figure, _save

# (solver, order) tried on the found levels.
SOLVER_CANDIDATES = (('unipc-bh2', 3), ('unipc-bh1', 3), ('deis', 3), ('dpmpp3m', None), ('dpmpp2m', None), ('ipndm', None))
# (solver, order) whose levels the refinement fits; Karras sigma_min values it also starts from.
REFINE_CANDIDATES = (('deis', 3), ('dpmpp2m', None))
REFINE_STARTS = (0.05, 0.15, 0.3)


def _key(solver, order):
    return solver + (f'-{order}' if order else '')


def fine_grid(grid_size, sigma_min, sigma_max, rho=7.0):
    """The candidate levels, descending (float64)."""
    return noise_levels('edm', grid_size, sigma_min, sigma_max, rho).to(torch.float64)


def reference_costs(denoiser, latents, grid, substeps):
    """(c [G, G], f [G], x_ref(0) [N, ...]) of one batch (sums over samples of squared errors
    per pixel, c[g, g'] for g < g', inf elsewhere) from Heun reference trajectories."""
    fine = [grid[0].item()]
    for a, b in zip(grid.tolist(), grid.tolist()[1:]):
        fine += [a + (b - a) * (k + 1) / substeps for k in range(substeps)]
    fine = torch.tensor(fine, dtype=torch.float64)
    x = latents.to(torch.float64) * grid[0]
    states, denoised = [], []
    for j in range(len(fine)):
        sigma = fine[j]
        d = denoiser(x, sigma)
        if j % substeps == 0:
            states.append(x)
            denoised.append(d)
        if j == len(fine) - 1:
            break
        sigma_next = fine[j + 1]
        slope = (x - d) / sigma
        x_euler = x + (sigma_next - sigma) * slope
        x = x + (sigma_next - sigma) * 0.5 * (slope + (x_euler - denoiser(x_euler, sigma_next)) / sigma_next)
    final = denoised[-1]  # the step from the last grid level into 0 (EDM's Euler = D)
    size = len(grid)
    costs = torch.full((size, size), float('inf'), dtype=torch.float64)
    for g in range(size - 1):
        slope = (states[g] - denoised[g]) / grid[g]
        for h in range(g + 1, size):
            step = states[g] + (grid[h] - grid[g]) * slope
            costs[g, h] = ((step - states[h]) ** 2).mean(dim=tuple(range(1, x.ndim))).sum()
    ends = torch.stack([((d - final) ** 2).mean(dim=tuple(range(1, x.ndim))).sum() for d in denoised])
    return costs.numpy(), ends.numpy(), final


def best_path(costs, ends, num_levels):
    """The indices g_0 = 0 < ... < g_{num_levels-1} minimising the path's costs plus ends[g_last],
    and that total (dynamic programme, O(num_levels G^2))."""
    size = len(ends)
    if not 1 <= num_levels <= size:
        raise ValueError(f'cannot choose {num_levels} levels from a grid of {size}')
    value = np.full(size, np.inf)
    value[0] = 0.0
    back = []
    for _ in range(num_levels - 1):
        total = value[:, None] + costs                    # [from, to]
        total[np.tril_indices(size)] = np.inf
        back.append(total.argmin(axis=0))
        value = total.min(axis=0)
    last = int(np.argmin(value + ends))
    path = [last]
    for pointers in reversed(back):
        path.append(int(pointers[path[-1]]))
    return path[::-1], float(value[last] + ends[last])


def refine_levels(error, levels, *, sweeps=4, step=0.4, lowest=0.0, on_evaluation=None):
    """Coordinate descent on the logs of levels[1:] (levels[0] stays) minimising error(levels).

    Each sweep takes every level in turn and moves its log by +step while that lowers the error,
    or else by -step while that does; a move must keep the levels strictly decreasing and above
    `lowest`, and `error` returns None for levels it refuses. The step halves after every sweep.
    Deterministic. Returns (levels, error, evaluations)."""
    first = float(levels[0])
    logs = np.log(np.asarray(levels, dtype=np.float64))

    def of(logs):
        return [first] + [float(v) for v in np.exp(logs[1:])]

    def tried(logs):
        nonlocal count
        if not (np.all(np.diff(logs) < 0) and np.exp(logs[-1]) > lowest):
            return None
        count += 1
        if on_evaluation:
            on_evaluation()
        return error(of(logs))
    count = 0
    best = tried(logs)
    if best is None:
        raise ValueError('the starting levels are refused')
    for _ in range(sweeps):
        for i in range(1, len(logs)):
            for move in (step, -step):
                moved = False
                while True:
                    trial = logs.copy()
                    trial[i] += move
                    value = tried(trial)
                    if value is None or not value < best:
                        break
                    best, logs, moved = value, trial, True
                if moved:
                    break
        step /= 2
    return of(logs), best, count


def _denoiser(net, labels):
    plain = network_denoiser(net)
    return lambda x, sigma, class_labels=None: plain(x.to(torch.float32), sigma, labels)


def search_schedule(net, nfe, seeds, out, *, grid_size=64, substeps=3, sigma_min=0.002, sigma_max=80.0,
                    max_batch_size=64, device='cpu', progress=True, network=None, refine=True, sweeps=4):
    """Find the levels and solver for `nfe` evaluations; write the schedule file `out` (JSON),
    its plot `out` + '.png' (when matplotlib is installed) and return the document."""
    if nfe < 2:
        raise ExposureError(f'--nfe must be at least 2, got {nfe}')
    sigma_min, sigma_max = max(sigma_min, net.sigma_min), min(sigma_max, net.sigma_max)
    if not sigma_min < sigma_max:
        raise ExposureError(f'--sigma_min={sigma_min:g} must be below the network\'s highest level {sigma_max:g}')
    grid = net.round_sigma(fine_grid(grid_size, sigma_min, sigma_max)).to(torch.float64)
    work = out + '.work'
    os.makedirs(work, exist_ok=True)
    batches = [seeds[i:i + max_batch_size] for i in range(0, len(seeds), max_batch_size)]
    shape = [net.img_channels, net.img_resolution, net.img_resolution]
    costs, ends = np.zeros((grid_size, grid_size)), np.zeros(grid_size)
    draws = []
    with torch.inference_mode(), tqdm.tqdm(total=len(batches), unit='batch', disable=not progress, leave=False) as bar:
        for b, batch in enumerate(batches):
            name = os.path.join(work, f'{b:05d}-{batch[0]}-{batch[-1]}-{grid_size}-{substeps}-{sigma_min:g}-{sigma_max:g}')
            noise = SeedNoise(batch, device=device)
            latents, labels = latents_and_labels(noise, shape, net.label_dim, device=device)
            if os.path.isfile(name + '-final.npy'):
                c, e = np.load(name + '-costs.npy'), np.load(name + '-ends.npy')
                final = torch.from_numpy(np.load(name + '-final.npy'))
            else:
                c, e, final = reference_costs(_denoiser(net, labels), latents, grid.to(device), substeps)
                for suffix, array in (('costs', c), ('ends', e), ('final', final.cpu().numpy())):
                    with dnnlib.util.atomic_write(f'{name}-{suffix}.npy') as f:
                        np.save(f, array)
            costs, ends = costs + c, ends + e
            draws.append((latents, labels, final.to(device)))
            bar.update(1)
    path, total = best_path(costs / len(seeds), ends / len(seeds), nfe)
    levels = [float(grid[g]) for g in path]

    def error(solver, order, levels):
        """Mean squared error of the solver's images on `levels` to x_ref(0); None if rounding merges levels."""
        rounded = net.round_sigma(torch.tensor(levels, dtype=torch.float64, device=device)).to(torch.float64)
        if not bool((rounded[1:] < rounded[:-1]).all()):
            return None
        kwargs = dict(order=order) if solver in WITH_ORDER else {}
        with torch.inference_mode():
            return sum(float(((SOLVERS[solver](_denoiser(net, labels), latents, with_zero(rounded), **kwargs) - final) ** 2)
                             .mean(dim=tuple(range(1, final.ndim))).sum()) for latents, labels, final in draws) / len(seeds)

    errors = {_key(solver, order): error(solver, order, levels) for solver, order in SOLVER_CANDIDATES}
    best = min(SOLVER_CANDIDATES, key=lambda so: errors[_key(*so)])
    refined = {}
    if refine:
        tag = f'{seeds[0]}-{seeds[-1]}-{len(seeds)}-{grid_size}-{substeps}-{sigma_min:g}-{sigma_max:g}-{nfe}-{sweeps}'
        with tqdm.tqdm(unit='eval', disable=not progress, leave=False, desc='refine') as bar:
            for solver, order in REFINE_CANDIDATES:
                refined[_key(solver, order)] = _refine(lambda lv: error(solver, order, lv), levels, nfe, sigma_min,
                                                       sigma_max, sweeps, os.path.join(work, f'refine-{tag}-{_key(solver, order)}.json'),
                                                       bar)
        # The refined candidates only: levels fitted to no solver can score a lower error by ending
        # later, since D at a higher level is a smoother image closer in mean square (not in FD).
        best = min(REFINE_CANDIDATES, key=lambda so: refined[_key(*so)]['mse'])
        levels = refined[_key(*best)]['levels']
    levels = [float(v) for v in net.round_sigma(torch.tensor(levels, dtype=torch.float64)).to(torch.float64)]
    method = 'GITS-style dynamic programme over DDIM step errors' + (
        ', then coordinate descent of each solver\'s own error to the reference images' if refine else '')
    doc = dict(format=SCHEDULE_FORMAT, nfe=nfe, solver=best[0], order=best[1], levels=levels,
               search=dict(method=method, network=network, seeds=[seeds[0], seeds[-1], len(seeds)], grid_size=grid_size,
                           substeps=substeps, sigma_min=sigma_min, sigma_max=sigma_max, path_cost=total,
                           path_levels=[float(grid[g]) for g in path], solver_mse=errors, refined=refined))
    check_schedule(doc, out)
    SamplerOptions(solver=best[0], order=best[1] if best[0] in WITH_ORDER else None, num_steps=nfe,
                   levels=tuple(levels)).check()
    with dnnlib.util.atomic_write(out, 'w') as f:
        json.dump(doc, f, indent=2)
        f.write('\n')
    doc['plot'] = plot_schedule(levels, sigma_min, sigma_max, out + '.png')
    return doc


def _refine(error, path_levels, nfe, sigma_min, sigma_max, sweeps, cache_path, bar):
    """refine_levels for one solver from the best of the programme's levels and REFINE_STARTS,
    with every error kept in `cache_path` (JSON, levels -> error) so a stopped search resumes."""
    cache = {}
    if os.path.isfile(cache_path):
        try:
            cache = read_json(cache_path, kind=dict, max_bytes=1 << 24, label=f'refinement cache {cache_path}')
        except StateFileError:
            cache = {}
        cache = {k: v for k, v in cache.items() if v is None or (isinstance(v, float) and math.isfinite(v))}

    def cached(levels):
        key = ','.join(repr(float(v)) for v in levels)
        if key not in cache:
            cache[key] = error(levels)
            with dnnlib.util.atomic_write(cache_path, 'w') as f:
                json.dump(cache, f)
        return cache[key]
    starts = [path_levels] + [noise_levels('edm', nfe, max(s, sigma_min), sigma_max, 7).tolist() for s in REFINE_STARTS]
    scored = [(cached(start), start) for start in starts]
    start = min((item for item in scored if item[0] is not None), key=lambda item: item[0])[1]
    bar.update(len(starts))
    levels, value, _ = refine_levels(cached, start, sweeps=sweeps, lowest=sigma_min * (1 - 1e-9),
                                     on_evaluation=lambda: bar.update(1))
    return dict(levels=levels, mse=value, start=start)


def plot_schedule(levels, sigma_min, sigma_max, path, default_min=0.002):
    """Plot the found levels against EDM's default Karras levels for the same N; the path, or
    None without matplotlib."""
    fig = _figure(figsize=(6, 4))
    if fig is None:
        return None
    ax = fig.subplots()
    n = len(levels)
    default = noise_levels('edm', n, default_min, sigma_max, 7).tolist()
    ax.semilogy(range(n), default, 'o--', label=f'Karras rho 7, sigma {default_min:g} to {sigma_max:g}')
    ax.semilogy(range(n), levels, 's-', label='searched')
    ax.set_xlabel('level index i (then sigma_N = 0)')
    ax.set_ylabel('sigma_i')
    ax.set_title(f'Schedule for {n} evaluations')
    ax.legend()
    _save(fig, path)
    return path


def format_schedule(doc):
    """Lines describing a schedule document."""
    levels = ', '.join(f'{v:.4g}' for v in doc['levels'])
    mse = ', '.join(f'{k} {v:.3g}' for k, v in sorted(doc['search']['solver_mse'].items(), key=lambda kv: kv[1]))
    refined = doc['search'].get('refined') or {}
    if refined:
        mse = f'on the programme\'s levels {mse}; refined ' + ', '.join(
            f'{k} {v["mse"]:.3g}' for k, v in sorted(refined.items(), key=lambda kv: kv[1]['mse']))
    return (f'{doc["nfe"]} evaluations: levels {levels}, 0\nsolver {doc["solver"]}'
            + (f' order {doc["order"]}' if doc['order'] else '') + f' (mean squared error to the reference: {mse})')
