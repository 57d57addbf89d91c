"""The default loader runs no code from a pickle, and gives the same network as EDM's way."""

import os
import pickle
import subprocess
import sys

import pytest
import torch

import convert
from torch_utils import persistence
from networks import edm as networks
from safeload import networks as loader, weights
from training import augment, loss
from safeload.networks import NetworkLoadError


class _Reduce:
    """Pickles as a call of `func(*args)`: how a malicious pickle runs code."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _persistent_record(class_name, module_src, init_kwargs=None):
    meta = dict(type='class', version=6, module_src=module_src, class_name=class_name,
                state=dict(_init_args=(), _init_kwargs=init_kwargs or {}, training=False,
                           _parameters={}, _buffers={}, _modules={}))
    return _Reduce(persistence._reconstruct_persistent_obj, meta)


def _tiny_edm(label_dim=0):
    return networks.EDMPrecond(img_resolution=8, img_channels=1, label_dim=label_dim, model_type='SongUNet',
                               model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])


def test_reduce_calling_os_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / 'marker'
    path = tmp_path / 'evil.pkl'
    path.write_bytes(pickle.dumps(dict(ema=_Reduce(os.system, f'touch {marker}'))))
    with pytest.raises(NetworkLoadError, match=r'refus.*(posix|os|nt)\.system') as info:
        loader.load_network(str(path))
    assert '\n' not in str(info.value)
    assert not marker.exists()
    # The same file loaded the EDM way does run the command: the test above is meaningful.
    with pytest.raises(NetworkLoadError):
        loader.load_network(str(path), allow_pickle_code=True)
    assert marker.exists()


def test_builtin_exec_is_refused(tmp_path):
    marker = tmp_path / 'marker'
    path = tmp_path / 'evil.pkl'
    path.write_bytes(pickle.dumps(_Reduce(exec, f'open({str(marker)!r}, "w").write("x")')))
    with pytest.raises(NetworkLoadError, match=r'refus.*builtins\.exec'):
        loader.load_network(str(path))
    assert not marker.exists()


def test_embedded_source_never_runs(tmp_path):
    marker = tmp_path / 'marker'
    src = f'open({str(marker)!r}, "w").write("ran")\nimport os\nclass Evil:\n    pass\n'
    path = tmp_path / 'evil.pkl'
    path.write_bytes(pickle.dumps(dict(ema=_persistent_record('Evil', src))))
    with pytest.raises(NetworkLoadError, match='refus.*persistent class "Evil"'):
        loader.load_network(str(path))
    assert not marker.exists()
    # A known class name with hostile source: the class is rebuilt from this toolkit's code.
    kwargs = dict(img_resolution=8, img_channels=1, label_dim=0, model_type='SongUNet',
                  model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    reference = networks.EDMPrecond(**kwargs)
    record = _persistent_record('EDMPrecond', src.replace('class Evil', 'class EDMPrecond'), kwargs)
    record.args[0]['state']['_modules'] = dict(model=reference.model)
    path.write_bytes(pickle.dumps(dict(ema=record)))
    net = loader.load_network(str(path))
    assert not marker.exists()
    assert type(net).__module__ == 'networks.edm'
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 2.0])
    assert torch.equal(net(x, sigma), reference.eval()(x, sigma))


PRECONDS = ['VPPrecond', 'VEPrecond', 'iDDPMPrecond', 'EDMPrecond']
ARCHS = {
    'ddpmpp': dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
                   channel_mult_noise=1, resample_filter=[1, 1], model_channels=8, channel_mult=[1, 2], num_blocks=1,
                   attn_resolutions=[4]),
    'ncsnpp': dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=8, channel_mult=[1, 2],
                   num_blocks=1, attn_resolutions=[4]),
    'adm': dict(model_type='DhariwalUNet', model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4]),
}


@pytest.mark.parametrize('precond', PRECONDS)
@pytest.mark.parametrize('arch', list(ARCHS))
def test_safe_load_equals_code_executing_load(tmp_path, precond, arch):
    torch.manual_seed(0)
    net = getattr(networks, precond)(img_resolution=8, img_channels=2, label_dim=3, **ARCHS[arch])
    snapshot = dict(ema=net, loss_fn=loss.EDMLoss(), augment_pipe=augment.AugmentPipe(p=0.12, xflip=1e8),
                    dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path='x.zip'))
    data = pickle.dumps(snapshot)
    safe = loader.load_network_pickle(_write(tmp_path, data))
    executed = pickle.loads(data)
    assert type(safe['ema']).__name__ == precond and type(safe['ema']).__module__ == 'networks.edm'
    assert type(safe['loss_fn']).__name__ == 'EDMLoss' and type(safe['augment_pipe']).__name__ == 'AugmentPipe'
    assert safe['augment_pipe'].init_kwargs == executed['augment_pipe'].init_kwargs
    assert safe['dataset_kwargs'] == snapshot['dataset_kwargs']
    x = torch.randn(3, 2, 8, 8)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    labels = torch.eye(3)
    with torch.no_grad():
        assert torch.equal(safe['ema'].eval()(x, sigma, labels), executed['ema'].eval()(x, sigma, labels))


def _write(tmp_path, data):
    path = tmp_path / 'net.pkl'
    path.write_bytes(data)
    return str(path)


def test_converter_round_trip(tmp_path):
    torch.manual_seed(1)
    net = _tiny_edm(label_dim=4)
    src = tmp_path / 'net.pkl'
    src.write_bytes(pickle.dumps(dict(ema=net, loss_fn=loss.EDMLoss(P_mean=-1.0), augment_pipe=None,
                                      dataset_kwargs=dict(path='d.zip', use_labels=True))))
    pt = tmp_path / 'net.pt'
    back = tmp_path / 'back.pkl'
    assert convert.convert(str(src), str(pt)) == 'weights'
    assert convert.convert(str(pt), str(back)) == 'pickle'
    # The weights file needs nothing but torch's weights_only loader.
    payload = torch.load(str(pt), weights_only=True)
    assert payload['format'] == weights.FORMAT and 'ema' in payload['tensors']
    x, sigma, labels = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 3.0]), torch.eye(4)[:2]
    outputs = [loader.load_network(str(p))(x, sigma, labels) for p in (src, pt, back)]
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])
    restored = loader.load_network_pickle(str(back))
    assert restored['loss_fn'].P_mean == -1.0 and restored['augment_pipe'] is None
    assert restored['dataset_kwargs'] == dict(path='d.zip', use_labels=True)


def test_converter_cli_errors_are_one_line(tmp_path, repo_root):
    bad = tmp_path / 'bad.pkl'
    bad.write_bytes(b'not a pickle')
    res = subprocess.run([sys.executable, os.path.join(repo_root, 'convert.py'), '--src', str(bad), '--dest', str(tmp_path / 'o.pt')],
                         capture_output=True, text=True, cwd=repo_root)
    assert res.returncode != 0 and res.stderr.strip().count('\n') == 0 and 'Traceback' not in res.stderr
    assert not (tmp_path / 'o.pt').exists()


def test_pickle_written_here_loads_with_plain_pickle_in_new_process(tmp_path, repo_root):
    torch.manual_seed(2)
    net = _tiny_edm().eval()
    path = tmp_path / 'net.pkl'
    path.write_bytes(pickle.dumps(dict(ema=net)))
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 5.0])
    torch.save(dict(x=x, sigma=sigma, y=net(x, sigma)), tmp_path / 'io.pt')
    code = (f'import pickle, torch; net = pickle.load(open({str(path)!r}, "rb"))["ema"]; d = torch.load({str(tmp_path / "io.pt")!r}); '
            f'print(torch.equal(net(d["x"], d["sigma"]), d["y"]), type(net).__module__.startswith("_imported_module_"))')
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=str(tmp_path),
                         env=dict(os.environ, PYTHONPATH=repo_root))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ['True', 'True']
