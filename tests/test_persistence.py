import os
import pickle
import subprocess
import sys
import textwrap

import torch

from torch_utils import persistence

MODULE_V1 = '''
import torch
from torch_utils import persistence

@persistence.persistent_class
class Scale(torch.nn.Module):
    def __init__(self, n, factor=2.0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.arange(n, dtype=torch.float32))
        self.factor = factor
    def forward(self, x):
        return x * self.weight * self.factor  # VERSION 1
'''


def run_python(code, cwd, extra_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([extra_path, os.environ.get('PYTHONPATH', '')]))
    res = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_pickle_carries_source_and_survives_source_change(tmp_path, repo_root):
    mod_dir = tmp_path / 'mods'
    mod_dir.mkdir()
    (mod_dir / 'mymod.py').write_text(MODULE_V1)
    pkl = tmp_path / 'net.pkl'
    run_python(f'''
        import pickle, mymod
        net = mymod.Scale(3, factor=3.0)
        with open({str(pkl)!r}, 'wb') as f:
            pickle.dump(dict(ema=net), f)
    ''', cwd=str(tmp_path), extra_path=os.pathsep.join([str(mod_dir), repo_root]))

    # Change the module on disk: the pickle must still run the stored version 1 source.
    (mod_dir / 'mymod.py').write_text(MODULE_V1.replace('* self.factor  # VERSION 1', '* 0  # VERSION 2'))
    out = run_python(f'''
        import pickle, torch
        with open({str(pkl)!r}, 'rb') as f:
            net = pickle.load(f)['ema']
        print(net(torch.ones(3)).tolist(), net.init_args, dict(net.init_kwargs))
    ''', cwd=str(tmp_path), extra_path=os.pathsep.join([str(mod_dir), repo_root]))
    assert out.strip() == "[0.0, 3.0, 6.0] (3,) {'factor': 3.0}"

    # The module is not even needed on the path any more.
    out = run_python(f'''
        import pickle, torch
        net = pickle.load(open({str(pkl)!r}, 'rb'))['ema']
        print(type(net).__module__.startswith('_imported_module_'), net(torch.ones(3)).sum().item())
    ''', cwd=str(tmp_path), extra_path=repo_root)
    assert out.strip() == 'True 9.0'


def test_pickle_layout_is_edm_format(tmp_path):
    mod = tmp_path / 'layoutmod.py'
    mod.write_text(MODULE_V1)
    sys.path.insert(0, str(tmp_path))
    try:
        import layoutmod
        net = layoutmod.Scale(2)
        func, args, state = net.__reduce__()[:3]
        assert func is persistence._reconstruct_persistent_obj
        assert func.__module__ == 'torch_utils.persistence'
        meta = args[0]
        assert meta['type'] == 'class' and meta['version'] == 6 and meta['class_name'] == 'Scale'
        assert 'VERSION 1' in meta['module_src'] and state is None
        assert meta['state']['_init_args'] == (2,) and meta['state']['_init_kwargs'] == {}
        assert persistence.is_persistent(net) and persistence.is_persistent(type(net))
        data = pickle.dumps(net)
        assert b'torch_utils.persistence' in data and b'_reconstruct_persistent_obj' in data
        clone = pickle.loads(data)
        assert torch.equal(clone(torch.ones(2)), net(torch.ones(2)))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop('layoutmod', None)


def test_import_hook_can_patch_source(tmp_path):
    mod = tmp_path / 'hookmod.py'
    mod.write_text(MODULE_V1)
    sys.path.insert(0, str(tmp_path))
    try:
        import hookmod
        data = pickle.dumps(hookmod.Scale(2, factor=1.0))

        def patch(meta):
            if meta.class_name == 'Scale':
                meta.module_src = meta.module_src.replace('* self.factor  # VERSION 1', '* 10  # PATCHED')
            return meta
        persistence.import_hook(patch)
        try:
            clone = pickle.loads(data)
        finally:
            persistence._import_hooks.remove(patch)
        assert clone(torch.ones(2)).tolist() == [0.0, 10.0]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop('hookmod', None)
