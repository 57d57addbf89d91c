"""Optional inference fast paths: inference mode, channels_last, autocast and torch.compile.

`FastPaths` says which are on; `prepare_network()` returns the network to call during
sampling. Only the network changes: the sampler state stays float64 and the preconditioning
(c_skip, c_out, c_in, c_noise) stays float32, because autocast and channels_last are applied
to the inner U-Net (`net.model`) alone and its output is cast back to the dtype it was given,
which is what EDM's preconditioners expect. docs/performance.md lists how far each path moves
the pixels and how fast it is.
"""

import copy
import dataclasses
from typing import Optional

import torch

AUTOCAST_DTYPES = dict(none=None, fp16=torch.float16, bf16=torch.bfloat16)


class FastPathError(ValueError):
    """Fast-path options that cannot run; the message is one line."""


def compile_backends():
    """Names torch.compile accepts as `backend` (debug backends such as 'eager' included)."""
    return torch.compiler.list_backends(exclude_tags=())


@dataclasses.dataclass(frozen=True)
class FastPaths:
    inference_mode: bool = True     # torch.inference_mode instead of no_grad (bit-identical; not with compile).
    channels_last: bool = False     # NHWC activations and weights in the U-Net.
    autocast: str = 'none'          # U-Net under torch.autocast: 'none', 'fp16' (CUDA only), 'bf16'.
    compile: Optional[str] = None   # torch.compile backend for the U-Net ('inductor'); None = eager.

    def check(self, device='cpu'):
        """Raise FastPathError (one line) for a combination that cannot run on `device`."""
        device = torch.device(device)
        if self.autocast not in AUTOCAST_DTYPES:
            raise FastPathError(f'--autocast must be one of {"|".join(AUTOCAST_DTYPES)}, not "{self.autocast}"')
        if self.autocast == 'fp16' and device.type != 'cuda':
            raise FastPathError(f'--autocast=fp16 needs a CUDA device, not {device.type}; '
                                'use --autocast=bf16 on the CPU')
        if self.compile is not None and self.compile not in compile_backends():
            raise FastPathError(f'--compile backend "{self.compile}" is unknown to torch.compile '
                                '(try inductor; torch.compiler.list_backends() lists the others)')

    @property
    def changes_network(self):
        return self.channels_last or self.autocast != 'none' or self.compile is not None

    def record(self):
        """The options that may move pixels (all but inference_mode), where not at their defaults."""
        defaults = FastPaths()
        return {name: getattr(self, name) for name in ('channels_last', 'autocast', 'compile')
                if getattr(self, name) != getattr(defaults, name)}

    def grad_mode(self):
        """The context that switches autograd off while sampling: inference_mode, except for a
        compiled network (torch.compile's guards fail on the networks' numpy constants under
        inference_mode, torch 2.13), which runs under no_grad."""
        return torch.inference_mode() if self.inference_mode and self.compile is None else torch.no_grad()


class FastModule(torch.nn.Module):
    """Runs `module` on channels_last input and/or under autocast; returns the input's dtype.

    The dtype cast at the end keeps the caller's arithmetic in its own precision (EDM's
    preconditioners assert that the U-Net returns the dtype they passed in).
    """

    def __init__(self, module, channels_last=False, autocast_dtype=None, device_type='cpu'):
        super().__init__()
        self.module = module
        self.channels_last = channels_last
        self.autocast_dtype = autocast_dtype
        self.device_type = device_type

    def forward(self, x, *args, **kwargs):
        dtype = x.dtype
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is None:
            y = self.module(x, *args, **kwargs)
        else:
            with torch.autocast(self.device_type, dtype=self.autocast_dtype):
                y = self.module(x, *args, **kwargs)
        return y.to(dtype)


def _with_model(net, model):
    """A shallow copy of `net` (sharing its weights) whose submodule `model` is replaced.

    Built by hand rather than with copy.copy, which would go through the pickle reduction of
    persistent classes (and rebuild the class from its stored source).
    """
    clone = object.__new__(type(net))
    clone.__dict__.update(net.__dict__)
    clone._modules = dict(net._modules)  # pylint: disable=protected-access
    clone.model = model
    return clone


def prepare_network(net, fast=FastPaths(), device='cpu'):
    """The network to call for sampling with the fast paths `fast` on `device`.

    With every option off (inference_mode aside) this is `net` itself. Otherwise the inner
    U-Net `net.model` (the whole `net` for networks without one) is wrapped in FastModule and
    compiled if asked; `net` is never modified (channels_last converts a copy of the U-Net's
    weights).
    """
    fast.check(device)
    if not fast.changes_network:
        return net
    inner = getattr(net, 'model', None)
    target = inner if isinstance(inner, torch.nn.Module) else net
    if fast.channels_last:
        target = copy.deepcopy(target).to(memory_format=torch.channels_last)
    module = FastModule(target, fast.channels_last, AUTOCAST_DTYPES[fast.autocast], torch.device(device).type)
    if fast.compile is not None:
        module = torch.compile(module, backend=fast.compile)
    return _with_model(net, module) if isinstance(inner, torch.nn.Module) else module
