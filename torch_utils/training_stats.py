"""Cheap scalar statistics for training: `report(name, values)` anywhere, `Collector`
to read means and standard deviations over a period, summed across devices and ranks.

Every rank must report each name (an empty list is fine) in the same order, because the
collector all-reduces the counters of all names at once.
"""

import re

import numpy as np
import torch

import dnnlib

_rank = 0
_sync_device = None     # None: single process, nothing to all-reduce.
_counters = dict()      # name -> device -> float64 tensor [count, sum, sum of squares]
_totals = dict()        # name -> float64 CPU tensor, cumulative over the whole run


def init_multiprocessing(rank, sync_device):
    """Set this process's rank and the device used for the all-reduce (None: no all-reduce).

    Calling it again (e.g. several tools run in one process) is allowed; counters are kept.
    """
    global _rank, _sync_device
    _rank = rank
    _sync_device = sync_device


def report(name, value):
    """Add the scalars in `value` to the statistic `name`; returns `value` unchanged."""
    per_device = _counters.setdefault(name, dict())
    elems = torch.as_tensor(value)
    if elems.numel() == 0:
        return value
    elems = elems.detach().flatten().to(torch.float32)
    moments = torch.stack([torch.ones_like(elems).sum(), elems.sum(), elems.square().sum()]).to(torch.float64)
    if moments.device not in per_device:
        per_device[moments.device] = torch.zeros_like(moments)
    per_device[moments.device].add_(moments)
    return value


def report0(name, value):
    """report() from rank 0 only; the other ranks register the name with no values."""
    report(name, value if _rank == 0 else [])
    return value


def _sync(names):
    """Fold per-device counters into the cumulative totals, all-reduced across ranks."""
    if not names:
        return []
    device = _sync_device if _sync_device is not None else torch.device('cpu')
    deltas = []
    for name in names:
        delta = torch.zeros(3, dtype=torch.float64, device=device)
        for counter in _counters[name].values():
            delta.add_(counter.to(device))
            counter.zero_()
        deltas.append(delta)
    deltas = torch.stack(deltas)
    if _sync_device is not None:
        torch.distributed.all_reduce(deltas)
    deltas = deltas.cpu()
    result = []
    for name, delta in zip(names, deltas):
        total = _totals.setdefault(name, torch.zeros(3, dtype=torch.float64))
        total.add_(delta)
        result.append((name, total))
    return result


class Collector:
    """Means and standard deviations of reported statistics between the last two update() calls."""

    def __init__(self, regex='.*', keep_previous=True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._seen = dict()      # name -> cumulative totals at the last update
        self._moments = dict()   # name -> moments of the last period
        self.update()
        self._moments.clear()

    def names(self):
        return [name for name in _counters if self._regex.fullmatch(name)]

    def update(self):
        """Take the values reported since the previous update() as the current period."""
        if not self._keep_previous:
            self._moments.clear()
        for name, total in _sync(self.names()):
            previous = self._seen.setdefault(name, torch.zeros(3, dtype=torch.float64))
            delta = total - previous
            previous.copy_(total)
            if float(delta[0]) != 0:
                self._moments[name] = delta

    def _period(self, name):
        assert self._regex.fullmatch(name)
        return self._moments.get(name, torch.zeros(3, dtype=torch.float64))

    def num(self, name):
        return int(self._period(name)[0])

    def mean(self, name):
        count, total, _ = self._period(name).tolist()
        return float('nan') if count == 0 else total / count

    def std(self, name):
        count, total, squares = self._period(name).tolist()
        if count == 0 or not np.isfinite(total):
            return float('nan')
        if count == 1:
            return 0.0
        mean = total / count
        return float(np.sqrt(max(squares / count - mean * mean, 0.0)))

    def as_dict(self):
        return dnnlib.EasyDict({name: dnnlib.EasyDict(num=self.num(name), mean=self.mean(name), std=self.std(name))
                                for name in self.names()})

    def __getitem__(self, name):
        return self.mean(name)
