"""Tensor and module helpers. EDM's pickled network sources call some of these
(`constant`, `assert_shape`, ...), so the names and signatures follow EDM."""

import contextlib
import re
import warnings

import numpy as np
import torch

import dnnlib

#----------------------------------------------------------------------------
# Constant tensors, cached so that a repeated constant costs no host-to-device copy.

_constant_cache = dict()


def constant(value, shape=None, dtype=None, device=None, memory_format=None):
    """Return a cached tensor holding `value`, broadcast to `shape` if given."""
    array = np.asarray(value)
    shape = None if shape is None else tuple(shape)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    device = torch.device('cpu') if device is None else torch.device(device)
    memory_format = torch.contiguous_format if memory_format is None else memory_format
    key = (array.shape, array.dtype, array.tobytes(), shape, dtype, device, memory_format)
    cached = _constant_cache.get(key)
    if cached is None:
        cached = torch.as_tensor(array.copy(), dtype=dtype, device=device)
        if shape is not None:
            cached = torch.broadcast_to(cached, shape)
        cached = cached.contiguous(memory_format=memory_format)
        _constant_cache[key] = cached
    return cached


def const_like(ref, value, shape=None, dtype=None, device=None, memory_format=None):
    """constant() with dtype and device taken from the tensor `ref` unless given."""
    return constant(value, shape=shape, dtype=ref.dtype if dtype is None else dtype,
                    device=ref.device if device is None else device, memory_format=memory_format)


nan_to_num = torch.nan_to_num
symbolic_assert = torch._assert  # pylint: disable=protected-access

#----------------------------------------------------------------------------


@contextlib.contextmanager
def suppress_tracer_warnings():
    """Silence torch.jit.TracerWarning inside the block."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', category=torch.jit.TracerWarning)
        yield


def assert_shape(tensor, ref_shape):
    """Assert that `tensor` has shape `ref_shape`; None in ref_shape matches any size."""
    if tensor.ndim != len(ref_shape):
        raise AssertionError(f'Wrong number of dimensions: got {tensor.ndim}, expected {len(ref_shape)}')
    for idx, (size, ref_size) in enumerate(zip(tensor.shape, ref_shape)):
        if ref_size is None:
            continue
        if isinstance(ref_size, torch.Tensor):
            with suppress_tracer_warnings():
                symbolic_assert(torch.equal(torch.as_tensor(size), ref_size), f'Wrong size for dimension {idx}')
        elif isinstance(size, torch.Tensor):
            with suppress_tracer_warnings():
                symbolic_assert(torch.equal(size, torch.as_tensor(ref_size)), f'Wrong size for dimension {idx}: expected {ref_size}')
        elif size != ref_size:
            raise AssertionError(f'Wrong size for dimension {idx}: got {size}, expected {ref_size}')


def profiled_function(fn):
    """Decorator: record calls of `fn` under its name in the autograd profiler."""
    def decorated(*args, **kwargs):
        with torch.autograd.profiler.record_function(fn.__name__):
            return fn(*args, **kwargs)
    decorated.__name__ = fn.__name__
    return decorated

#----------------------------------------------------------------------------


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless index stream for a DataLoader, split across ranks.

    With shuffle, the order starts as a seeded permutation and keeps drifting: after each
    index, the current slot is swapped with a random slot up to `window_size` of the dataset
    behind it, so consecutive epochs differ without a hard epoch boundary.
    """

    def __init__(self, dataset, rank=0, num_replicas=1, shuffle=True, seed=0, window_size=0.5):
        assert len(dataset) > 0 and num_replicas > 0 and 0 <= rank < num_replicas
        assert 0 <= window_size <= 1
        super().__init__()
        self.dataset = dataset
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.window_size = window_size

    def __iter__(self):
        n = len(self.dataset)
        order = np.arange(n)
        rng = None
        window = 0
        if self.shuffle:
            rng = np.random.RandomState(self.seed)
            rng.shuffle(order)
            window = int(np.rint(n * self.window_size))
        step = 0
        while True:
            slot = step % n
            if step % self.num_replicas == self.rank:
                yield order[slot]
            if window >= 2:
                other = (slot - rng.randint(window)) % n
                order[slot], order[other] = order[other], order[slot]
            step += 1

#----------------------------------------------------------------------------
# Parameters and buffers.


def params_and_buffers(module):
    assert isinstance(module, torch.nn.Module)
    return [*module.parameters(), *module.buffers()]


def named_params_and_buffers(module):
    assert isinstance(module, torch.nn.Module)
    return [*module.named_parameters(), *module.named_buffers()]


@torch.no_grad()
def copy_params_and_buffers(src_module, dst_module, require_all=False):
    """Copy every parameter and buffer of `dst_module` that `src_module` has by name."""
    source = dict(named_params_and_buffers(src_module))
    for name, tensor in named_params_and_buffers(dst_module):
        if name in source:
            tensor.copy_(source[name])
        elif require_all:
            raise KeyError(f'{name} missing from the source module')


@contextlib.contextmanager
def ddp_sync(module, sync):
    """Inside the block, DDP gradient all-reduce happens only if `sync` is true."""
    if sync or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        yield
    else:
        with module.no_sync():
            yield


def check_ddp_consistency(module, ignore_regex=None):
    """Assert that every parameter and buffer equals rank 0's copy."""
    for name, tensor in named_params_and_buffers(module):
        full_name = f'{type(module).__name__}.{name}'
        if ignore_regex is not None and re.fullmatch(ignore_regex, full_name):
            continue
        local = tensor.detach()
        if local.is_floating_point():
            local = torch.nan_to_num(local)
        reference = local.clone()
        torch.distributed.broadcast(tensor=reference, src=0)
        assert torch.equal(local, reference), full_name

#----------------------------------------------------------------------------


def print_module_summary(module, inputs, max_nesting=3, skip_redundant=True):
    """Run `module(*inputs)`, print a table of submodules with parameter counts and output shapes."""
    assert isinstance(module, torch.nn.Module) and isinstance(inputs, (tuple, list))
    records = []
    depth = [0]

    def enter(_mod, _inputs):
        depth[0] += 1

    def leave(mod, _inputs, outputs):
        depth[0] -= 1
        if depth[0] <= max_nesting:
            outs = outputs if isinstance(outputs, (tuple, list)) else [outputs]
            records.append(dnnlib.EasyDict(mod=mod, outputs=[t for t in outs if isinstance(t, torch.Tensor)]))

    handles = [m.register_forward_pre_hook(enter) for m in module.modules()]
    handles += [m.register_forward_hook(leave) for m in module.modules()]
    try:
        outputs = module(*inputs)
    finally:
        for h in handles:
            h.remove()

    seen = set()
    for r in records:
        r.params = [t for t in r.mod.parameters() if id(t) not in seen]
        r.buffers = [t for t in r.mod.buffers() if id(t) not in seen]
        r.new_outputs = [t for t in r.outputs if id(t) not in seen]
        seen.update(id(t) for t in r.params + r.buffers + r.new_outputs)
    if skip_redundant:
        records = [r for r in records if r.params or r.buffers or r.new_outputs]

    names = {m: n for n, m in module.named_modules()}
    table = [[type(module).__name__, 'Parameters', 'Buffers', 'Output shape', 'Datatype'], None]
    total_params = total_buffers = 0
    for r in records:
        name = '<top-level>' if r.mod is module else names[r.mod]
        n_params = sum(t.numel() for t in r.params)
        n_buffers = sum(t.numel() for t in r.buffers)
        total_params += n_params
        total_buffers += n_buffers
        shapes = [str(list(t.shape)) for t in r.outputs] or ['-']
        dtypes = [str(t.dtype).split('.')[-1] for t in r.outputs] or ['-']
        suffix = ':0' if len(r.outputs) > 1 else ''
        table.append([name + suffix, str(n_params or '-'), str(n_buffers or '-'), shapes[0], dtypes[0]])
        for i in range(1, len(r.outputs)):
            table.append([f'{name}:{i}', '-', '-', shapes[i], dtypes[i]])
    table += [None, ['Total', str(total_params), str(total_buffers), '-', '-']]
    widths = [max(len(row[c]) for row in table if row is not None) for c in range(5)]
    print()
    for row in table:
        cells = ['-' * w for w in widths] if row is None else [cell.ljust(w) for cell, w in zip(row, widths)]
        print('  '.join(cells))
    print()
    return outputs
