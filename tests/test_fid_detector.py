"""Detector pickles load without running pickle code: NVIDIA's structure (a TorchScript archive
passed to torch.jit.load through io.BytesIO) is recognised; everything else needs
--allow-pickle-code / EDMKIT_ALLOW_PICKLE_CODE, as for network pickles."""

import io
import os
import pickle
import pickletools
import struct

import numpy as np
import pytest
import torch

from metrics.detector import MetricError, load_detector, pickle_torchscript
from test_fid import StandIn, _error_line, random_images, run_fid

pytestmark = pytest.mark.filterwarnings('ignore:`torch.jit:DeprecationWarning')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Reduce:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def archive_bytes(module):
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf)
    return buf.getvalue()


def hand_made_pickle(archive, load_global=b'torch.jit\nload'):
    """Protocol-2 opcodes of NVIDIA's structure: load(BytesIO object with state (archive, 0, None))."""
    return (b'\x80\x02c' + load_global + b'\nc_io\nBytesIO\n)\x81'
            + b'B' + struct.pack('<I', len(archive)) + archive + b'K\x00N\x87b\x85R.')


def globals_of(data):
    """The (module, name) pairs a pickle refers to."""
    found, strings = [], []
    for op, arg, _pos in pickletools.genops(data):
        if op.name in ('SHORT_BINUNICODE', 'BINUNICODE', 'UNICODE'):
            strings.append(arg)
        elif op.name == 'STACK_GLOBAL':
            found.append(tuple(strings[-2:]))
        elif op.name == 'GLOBAL':
            found.append(tuple(arg.split(' ')))
    return found


class WritesFile(torch.nn.Module):
    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x, return_features: bool = False):
        torch.save(x, self.path)
        return x.flatten(1).float()


class MapsFile(WritesFile):
    def forward(self, x, return_features: bool = False):
        return torch.from_file(self.path, True, 16, dtype=torch.uint8).float().expand(x.shape[0], 16)


def features(net, images):
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        return net(x, return_features=True)


def test_torchscript_pickles_load_without_pickle_code(tmp_path):
    data = pickle_torchscript(torch.jit.script(StandIn()))
    assert globals_of(data) == [('torch.jit._serialization', 'load'), ('_io', 'BytesIO')]
    images = random_images(4, seed=1)
    expected = features(pickle.loads(data), images)
    variants = dict(
        toolkit=data,
        protocol2=hand_made_pickle(archive_bytes(StandIn())),  # GLOBAL opcodes, torch < 1.7's torch.jit.load
        protocol2_codecs=pickle.dumps(_Reduce(torch.jit.load, io.BytesIO(archive_bytes(StandIn()))), protocol=2),
    )
    assert ('_codecs', 'encode') in globals_of(variants['protocol2_codecs'])
    for name, blob in variants.items():
        path = tmp_path / f'{name}.pkl'
        path.write_bytes(blob)
        net = load_detector(str(path))
        assert isinstance(net, torch.jit.ScriptModule)
        assert torch.equal(features(net, images), expected), name


def test_bundled_classifier_loads_safely_with_unchanged_features():
    path = os.path.join(REPO, 'models', 'mnist-classifier.pkl')
    with open(path, 'rb') as f:
        data = f.read()
    assert globals_of(data) == [('torch.jit._serialization', 'load'), ('_io', 'BytesIO')]  # saved in the safe structure
    images = random_images(5, seed=2, size=32)
    assert torch.equal(features(load_detector(path), images), features(pickle.loads(data), images))


@pytest.mark.parametrize('case, message', [
    ('os_system', 'refused global "posix.system"'),
    ('exec', 'refused global "builtins.exec"'),
    ('jit_load_of_a_path', 'torch.jit.load of a str, not of the bytes of an archive'),
    ('not_an_archive', 'the archive inside is not a TorchScript archive'),
    ('torch_save', 'calls save, which reaches the file system'),
    ('from_file', 'calls from_file, which reaches the file system'),
])
def test_other_pickles_are_refused_and_run_nothing(tmp_path, monkeypatch, case, message):
    marker = tmp_path / 'marker'
    if case == 'os_system':
        blob = pickle.dumps(_Reduce(os.system, f'touch {marker}'))
        message = message.replace('posix', os.system.__module__)
    elif case == 'exec':
        blob = pickle.dumps(_Reduce(exec, f'open({str(marker)!r}, "w").write("x")'))
    elif case == 'jit_load_of_a_path':
        torch.jit.save(torch.jit.script(StandIn()), str(tmp_path / 'plain.pt'))
        blob = pickle.dumps(_Reduce(torch.jit.load, str(tmp_path / 'plain.pt')))
    elif case == 'not_an_archive':
        blob = hand_made_pickle(b'PK\x03\x04 not really a zip', b'torch.jit._serialization\nload')
    else:
        module = (WritesFile if case == 'torch_save' else MapsFile)(str(marker))
        blob = pickle_torchscript(torch.jit.script(module))
    path = tmp_path / 'det.pkl'
    path.write_bytes(blob)
    with pytest.raises(MetricError, match='refusing to load detector') as info:
        load_detector(str(path))
    assert message in str(info.value) and '--allow-pickle-code' in str(info.value) and '\n' not in str(info.value)
    assert not marker.exists()

    # Through the command line: one line, non-zero exit, nothing run; opting in runs the pickle (EDM's behaviour).
    ref = tmp_path / 'ref.npz'
    np.savez(ref, mu=np.zeros(16), sigma=np.eye(16))
    images = tmp_path / 'images.npz'
    np.savez(images, arr_0=random_images(4, seed=0))
    args = ['calc', f'--images={images}', f'--ref={ref}', f'--detector={path}', '--num=4', '--workers=0']
    assert 'refusing to load detector' in _error_line(run_fid(args))
    assert not marker.exists()
    if case == 'os_system':
        _error_line(run_fid(args + ['--allow-pickle-code']))  # os.system returns an int: not a module
        assert marker.exists()
        os.remove(marker)
        monkeypatch.setenv('EDMKIT_ALLOW_PICKLE_CODE', '1')
        assert 'not a module' in _error_line(run_fid(args))
        assert marker.exists()
    if case == 'torch_save':  # the refused detector does write the file once it runs
        pickle.loads(blob)(torch.zeros([1, 3, 4, 4], dtype=torch.uint8), return_features=True)
        assert marker.exists()


def test_archive_size_claims_are_checked(tmp_path):
    archive = bytearray(archive_bytes(StandIn()))
    cd = archive.rindex(b'PK\x01\x02')  # the last central-directory record: claim a huge stored member
    while archive[cd + 10:cd + 12] != b'\x00\x00':  # find a stored one
        cd = archive.rindex(b'PK\x01\x02', 0, cd)
    archive[cd + 20:cd + 28] = struct.pack('<II', 0x7FFFFFF0, 0x7FFFFFF0)
    path = tmp_path / 'det.pkl'
    path.write_bytes(hand_made_pickle(bytes(archive)))
    with pytest.raises(MetricError, match='refusing to load detector.*declares more data than it holds'):
        load_detector(str(path))
