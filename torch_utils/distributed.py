"""Process-group setup for torchrun (single- or multi-node), and a plain single process.

Under torchrun (WORLD_SIZE etc. set) the group uses nccl when the chosen device is CUDA and
gloo otherwise. Without torchrun nothing is initialised and rank 0 of 1 is reported.
"""

import os

import torch

from . import training_stats

_device = None

#----------------------------------------------------------------------------


class DeviceError(ValueError):
    """A device that does not exist or is not available here; the message is one line."""


def parse_device(name) -> torch.device:
    """torch.device(name), checked to exist on this machine; DeviceError otherwise."""
    if isinstance(name, torch.device):
        device = name
    else:
        try:
            device = torch.device(str(name).strip())
        except (RuntimeError, ValueError, TypeError):
            raise DeviceError(f'"{name}" is not a torch device (e.g. cpu, cuda, cuda:1)') from None
    if device.type == 'cpu':
        return device
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise DeviceError(f'"{name}": CUDA is not available on this machine')
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f'"{name}": this machine has {torch.cuda.device_count()} CUDA device(s)')
        return device
    backend = getattr(torch.backends, device.type, None) if device.type == 'mps' else getattr(torch, device.type, None)
    available = getattr(backend, 'is_available', None)
    if device.type == 'meta' or not callable(available) or not available():
        raise DeviceError(f'"{name}": no {device.type} device is available on this machine')
    return device


def default_device(name=None) -> torch.device:
    """The device to run on: `name` if given (checked), else this rank's GPU if there is one, else CPU."""
    if name is not None:
        return parse_device(name)
    if torch.cuda.is_available():
        return torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count())
    return torch.device('cpu')


def init(device=None) -> torch.device:
    """Join the torchrun process group if launched by torchrun; return this process's device.
    Raises DeviceError (one line) for a device that is not available."""
    global _device
    _device = default_device(device)
    if _device.type == 'cuda':
        if _device.index is None:
            _device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count())
        torch.cuda.set_device(_device)
    launched = 'WORLD_SIZE' in os.environ and 'RANK' in os.environ
    if launched and not torch.distributed.is_initialized():
        backend = 'nccl' if _device.type == 'cuda' else 'gloo'
        kwargs = dict(device_id=_device) if backend == 'nccl' else dict()
        torch.distributed.init_process_group(backend=backend, init_method='env://', **kwargs)
    sync_device = None
    if get_world_size() > 1:
        sync_device = _device if torch.distributed.get_backend() == 'nccl' else torch.device('cpu')
    training_stats.init_multiprocessing(rank=get_rank(), sync_device=sync_device)
    return _device


def device() -> torch.device:
    """The device chosen by init() (CPU if init() was not called)."""
    return _device if _device is not None else torch.device('cpu')


def get_rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def get_world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def barrier() -> None:
    if get_world_size() > 1:
        torch.distributed.barrier()


def shutdown() -> None:
    """Leave the process group (avoids a warning at exit)."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def should_stop() -> bool:
    """Hook for cluster schedulers that ask a job to stop early; never asks here."""
    return False


def update_progress(cur, total) -> None:
    """Hook for cluster schedulers that track progress; does nothing here."""
    _ = cur, total


def print0(*args, **kwargs) -> None:
    """print() on rank 0 only."""
    if get_rank() == 0:
        print(*args, **kwargs)


def run_on_rank0(fn, error_type):
    """Run fn() on rank 0 only; an `error_type` raised there is raised on every rank.

    Returns fn()'s result on rank 0 and None elsewhere. Used for work that must happen once
    (checking or creating an output folder, filling the download cache) before the others go on.
    """
    result, message = None, None
    if get_rank() == 0:
        try:
            result = fn()
        except error_type as err:
            message = str(err)
    if get_world_size() > 1:
        box = [message]
        torch.distributed.broadcast_object_list(box, src=0)
        message = box[0]
    if message is not None:
        raise error_type(message)
    return result


def leader_first(fn, error_type):
    """Run fn() on rank 0 first (e.g. to fill the download cache), then on the other ranks."""
    result = run_on_rank0(fn, error_type)
    return result if get_rank() == 0 else fn()
