"""CPU thread and worker defaults that suit shared machines.

torch starts one thread per core. When the other cores are busy (another job, or the other
torchrun processes of the same run), those threads wait for each other at every operator and
sampling slows several-fold (docs/performance.md). The defaults here count only the cores that
are idle, shared between the processes of a run; OMP_NUM_THREADS, when set, always wins.
"""

import os

import torch


def usable_cores():
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def idle_cores(cores=None, load=None):
    """Cores not taken by other work: usable cores minus the 1-minute load average, at least 1."""
    cores = usable_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average on this system
            load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


def default_cpu_threads(processes=1, cores=None, load=None):
    """Threads per process: the idle cores divided between `processes` processes, at least 1."""
    return max(1, idle_cores(cores, load) // max(1, processes))


def set_cpu_threads(device, processes=1):
    """On a CPU device, set torch's thread count to default_cpu_threads() unless OMP_NUM_THREADS
    is set; return the count in use."""
    if torch.device(device).type == 'cpu' and not os.environ.get('OMP_NUM_THREADS'):
        torch.set_num_threads(default_cpu_threads(processes))
    return torch.get_num_threads()


def default_workers(cap=3, cores=None):
    """Data-loading processes per rank: `cap`, but no more than the cores beside the main process."""
    cores = usable_cores() if cores is None else cores
    return max(0, min(cap, cores - 1))
