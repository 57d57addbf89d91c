"""The safe loader's checks stay cheap without being dropped (issue 26, item 7).

No timing is asserted (bench/bench_loading.py measures); these tests check what makes the
loader cheap: the meta dry run computes elementwise results without torch's Python meta
kernels (which import torch._dynamo and sympy on first use), its outcome is remembered per
class and arguments but held against each file's limits, and nothing of it changes what loads.
"""

import os
import subprocess
import sys

import pytest
import torch

from networks import edm
from safeload import unpickle as safe_unpickle
from torch_utils import persistence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_net():
    torch.manual_seed(0)
    return edm.EDMPrecond(img_resolution=8, img_channels=1, label_dim=0, model_type='SongUNet', model_channels=4,
                          channel_mult=[1], num_blocks=1, attn_resolutions=[]).eval()


@pytest.mark.parametrize('func, args', [
    (torch.mul, (torch.empty(3, 1, 4), 2.5)),
    (torch.sub, (torch.empty(5, dtype=torch.int64), torch.empty(2, 1, dtype=torch.int64))),
    (torch.Tensor.__truediv__, (torch.empty(4, dtype=torch.int32), 3)),
    (torch.Tensor.__lt__, (torch.empty(2, 3), torch.empty(3))),
    (torch.sqrt, (torch.empty(7, 1, dtype=torch.float64),)),
    (torch.outer, (torch.empty(3), torch.empty(5, dtype=torch.float64))),
])
def test_meta_fast_path_matches_the_cpu_result(func, args):
    expected = func(*args)  # real CPU computation: the reference for shape and dtype
    budget = safe_unpickle._ConstructionBudget('test', 1000, 1 << 20)
    meta_args = [a.to('meta') if isinstance(a, torch.Tensor) else a for a in args]
    with budget:
        out = func(*meta_args)
    assert out.is_meta and out.shape == expected.shape and out.dtype == expected.dtype
    assert budget.calls > 0


def test_meta_fast_path_refuses_what_cannot_broadcast():
    with pytest.raises(RuntimeError):
        safe_unpickle._broadcast([(3, 2), (4, 2)])
    assert safe_unpickle._broadcast([(3, 1), (1, 4), (4,)]) == (3, 4)
    assert safe_unpickle._broadcast([(), (2, 1)]) == (2, 1)


def test_meta_fast_path_still_counts_created_bytes():
    budget = safe_unpickle._ConstructionBudget('test', 10_000, 1000)
    with torch.device('meta'), pytest.raises(safe_unpickle.BadPickleError, match='creates more than 1000 bytes'):
        with budget:
            torch.empty(10, 20) * 2  # 800 bytes each: the product tips it over


def test_safe_load_does_not_import_dynamo_or_sympy(tmp_path):
    path = tmp_path / 'net.pkl'
    import pickle
    with open(path, 'wb') as f:
        pickle.dump(dict(ema=tiny_net()), f)
    code = ('import sys; import networks.edm, training.loss, training.augment; from safeload import networks as n; '
            f'n.load_network({str(path)!r}); print("torch._dynamo" in sys.modules, "sympy" in sys.modules)')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ['False', 'False']


def test_dry_run_cache_is_held_against_each_files_limits():
    net = tiny_net()
    args, kwargs, tensors = net.init_args, net.init_kwargs, net.state_dict()
    safe_unpickle._DRY_RUNS.clear()
    big = 1 << 24
    first = safe_unpickle.build_object(edm.EDMPrecond, args, kwargs, tensors, max_bytes=big)
    assert len(safe_unpickle._DRY_RUNS) == 1
    again = safe_unpickle.build_object(edm.EDMPrecond, args, kwargs, tensors, max_bytes=big)
    assert len(safe_unpickle._DRY_RUNS) == 1
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    # The cached outcome still refuses a file too small for the weights or the dry run's budget.
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    with pytest.raises(safe_unpickle.BadPickleError, match='bytes of weights|bytes of tensors|torch operations'):
        safe_unpickle.build_object(edm.EDMPrecond, args, kwargs, tensors, max_bytes=nbytes // 2)
    # Different arguments are a different entry: mismatched weights are still found.
    kwargs2 = dict(kwargs, model_channels=8)
    with pytest.raises(safe_unpickle.BadPickleError, match='shape'):
        safe_unpickle.build_object(edm.EDMPrecond, args, kwargs2, tensors, max_bytes=big)


def test_rebuild_skips_only_the_construction_pickle_check():
    class Unpicklable:
        def __deepcopy__(self, memo):
            return self

        def __reduce__(self):
            raise TypeError('cannot pickle this')

    @persistence.persistent_class
    class Holder(torch.nn.Module):
        def __init__(self, thing):
            super().__init__()
            self.thing = thing

    with pytest.raises(TypeError):
        Holder(Unpicklable())
    with persistence.rebuilding_from_file():
        Holder(Unpicklable())
    with pytest.raises(TypeError):  # the check is back after the context
        Holder(Unpicklable())


def test_bench_loading_runs(tmp_path):
    out = subprocess.run([sys.executable, os.path.join('bench', 'bench_loading.py'), '--repeat=1'], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    lines = {line.split()[0]: line.split() for line in out.splitlines() if len(line.split()) == 3 and line.split()[0] in ('plain', 'safe')}
    assert float(lines['plain'][1]) > 0 and float(lines['safe'][2]) > 0
    assert 'safe / plain' in out
