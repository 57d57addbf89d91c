"""Peer implementations loaded for side-by-side checks (benches and tests), when installed.

k-diffusion's k_diffusion/sampling.py is loaded by path, with stand-ins for its package
(`from . import utils`: only `append_dims` is used by the samplers compared here) and for
torchdiffeq and torchsde when they are missing, so that `pip install --no-deps k-diffusion`
is enough. Importing the package itself would import all of its dependencies.

diffusers' schedulers are driven by `run_diffusers_scheduler` on a denoiser in EDM form
(docs/solvers.md, *Checked against diffusers*); the caller imports diffusers.
"""

import contextlib
import functools
import importlib.util
import os
import sys
import types
from unittest import mock

import torch


@functools.lru_cache(maxsize=1)
def kdiffusion_sampling():
    """k-diffusion's sampling module, or None when k-diffusion is not installed."""
    spec = importlib.util.find_spec('k_diffusion')
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], 'sampling.py')
    stubs = {'_kd': types.ModuleType('_kd'), '_kd.utils': types.ModuleType('_kd.utils')}
    stubs['_kd'].__path__ = []
    stubs['_kd'].utils = stubs['_kd.utils']
    stubs['_kd.utils'].append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    for name in ('torchdiffeq', 'torchsde'):
        if importlib.util.find_spec(name) is None:
            stubs[name] = types.ModuleType(name)
            stubs[name].odeint = None
    with mock.patch.dict(sys.modules, stubs):
        module_spec = importlib.util.spec_from_file_location('_kd.sampling', path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    return module


class _Float64Names:
    """Stands in for the `torch` module inside a diffusers scheduler module: the same module,
    except that the name `float32` means float64."""

    def __getattr__(self, name):
        return torch.float64 if name == 'float32' else getattr(torch, name)


def run_diffusers_scheduler(scheduler, denoiser, latents, sigmas, class_labels=None, *, state='vp',
                            prediction='sample', step_kwargs=None, float64=True):
    """Sample with a diffusers scheduler on the levels `sigmas` (descending, ending in 0) and a
    denoiser D(x, sigma, class_labels) in EDM form; return (images, D of the last evaluation).

    The scheduler is set to len(sigmas) - 1 steps and its `sigmas` replaced by `sigmas` in
    float64 (set_timesteps keeps its levels in float32); it starts at index 0 (set_begin_index),
    so its timesteps only label the steps. `state`: 'vp' for the schedulers whose state is
    x / sqrt(1 + sigma^2) (UniPC, DPM-Solver), 'edm' for the k-diffusion-style ones whose state
    is x and whose model input is scale_model_input(x) (Euler ancestral). The model sees the VP
    input x_vp and returns D (`prediction='sample'`) or eps = (x - D) / sigma ('epsilon'),
    with x = x_vp sqrt(1 + sigma^2). `step_kwargs(i)`: extra arguments of step i (noise).
    `float64`: run each step with `torch.float32` meaning float64 in the scheduler's module,
    which turns the casts of the state to float32 that some steps make (DPM-Solver, Euler
    ancestral) into no-ops; the arithmetic is otherwise diffusers' own.
    """
    sigmas = sigmas.to(torch.float64)
    num_steps = len(sigmas) - 1
    scheduler.set_timesteps(num_steps)
    if len(scheduler.timesteps) != num_steps:
        raise ValueError(f'{type(scheduler).__name__} made {len(scheduler.timesteps)} timesteps for {num_steps} steps')
    scheduler.sigmas = sigmas.cpu().clone()
    scheduler.set_begin_index(0)
    module = sys.modules[type(scheduler).__module__]
    x = latents.to(torch.float64) * sigmas[0]
    if state == 'vp':
        x = x / (1 + sigmas[0] ** 2).sqrt()
    denoised = None
    for i, t in enumerate(scheduler.timesteps):
        sigma = sigmas[i]
        x_in = scheduler.scale_model_input(x, t)
        x_edm = x_in * (1 + sigma ** 2).sqrt()
        denoised = denoiser(x_edm, sigma, class_labels).to(torch.float64)
        output = denoised if prediction == 'sample' else (x_edm - denoised) / sigma
        with mock.patch.object(module, 'torch', _Float64Names()) if float64 else contextlib.nullcontext():
            x = scheduler.step(output, t, x, **(step_kwargs(i) if step_kwargs else {})).prev_sample
    return x, denoised
