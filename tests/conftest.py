import os
import sys

# The test networks are tiny: a second intra-op thread only adds stalls when the cores are
# busy (CI has 2). Subprocesses (CLI and torchrun tests) inherit this too.
os.environ.setdefault('OMP_NUM_THREADS', '1')

import pytest
import torch

torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture
def repo_root():
    return ROOT


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Keep every test's download cache inside its own tmp_path."""
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'dnnlib-cache'))
    import dnnlib.util
    monkeypatch.setattr(dnnlib.util, '_cache_dir', None)
