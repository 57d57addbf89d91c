"""Peer implementations loaded for side-by-side checks (benches and tests), when installed.

k-diffusion's k_diffusion/sampling.py is loaded by path, with stand-ins for its package
(`from . import utils`: only `append_dims` is used by the samplers compared here) and for
torchdiffeq and torchsde when they are missing, so that `pip install --no-deps k-diffusion`
is enough. Importing the package itself would import all of its dependencies.
"""

import functools
import importlib.util
import os
import sys
import types
from unittest import mock


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
