import pickle
import socket

import pytest
import torch

from safeload.networks import NetworkLoadError, load_network


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x, sigma, class_labels=None):
        return x * self.w


def _closed_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_custom_class_needs_allow_pickle_code(tmp_path, monkeypatch):
    path = tmp_path / 'net.pkl'
    path.write_bytes(pickle.dumps(dict(ema=Tiny(), loss_fn=None)))
    with pytest.raises(NetworkLoadError, match='refus.*test_loader.Tiny.*--allow-pickle-code'):
        load_network(str(path))
    net = load_network(str(path), allow_pickle_code=True)
    assert isinstance(net, Tiny) and not net.training and not net.w.requires_grad
    monkeypatch.setenv('EDMKIT_ALLOW_PICKLE_CODE', '1')
    net = load_network(path.as_uri())
    assert isinstance(net, Tiny)


@pytest.mark.parametrize('case, message', [
    ('missing', 'no such file'),
    ('garbage', 'not a network pickle'),
    ('truncated', 'truncated'),
    ('no_network', 'holds no network'),
    ('unreachable', 'cannot connect'),
])
def test_load_errors_are_one_line(tmp_path, case, message):
    path = tmp_path / 'net.pkl'
    if case == 'garbage':
        path.write_bytes(b'this is not a pickle at all')
    elif case == 'truncated':
        path.write_bytes(pickle.dumps(dict(ema=torch.nn.Linear(3, 3)))[:-40])
    elif case == 'no_network':
        path.write_bytes(pickle.dumps(dict(weights=[1, 2, 3])))
    target = str(path) if case != 'unreachable' else f'http://127.0.0.1:{_closed_port()}/net.pkl'
    with pytest.raises(NetworkLoadError, match=message) as info:
        load_network(target)
    assert '\n' not in str(info.value)


@pytest.mark.parametrize('case', ['missing', 'garbage', 'truncated', 'no_network', 'unreachable'])
def test_load_errors_through_the_cli(tmp_path, repo_root, case):
    import subprocess
    import sys
    path = tmp_path / 'net.pkl'
    if case == 'garbage':
        path.write_bytes(b'this is not a pickle at all')
    elif case == 'truncated':
        path.write_bytes(pickle.dumps(dict(ema=torch.nn.Linear(3, 3)))[:-40])
    elif case == 'no_network':
        path.write_bytes(pickle.dumps(dict(weights=[1, 2, 3])))
    target = str(path) if case != 'unreachable' else f'http://127.0.0.1:{_closed_port()}/net.pkl'
    res = subprocess.run([sys.executable, 'generate.py', f'--network={target}', f'--outdir={tmp_path / "out"}', '--seeds=0'],
                         cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('Error: ') and 'Traceback' not in res.stderr, res.stderr
    assert not list((tmp_path / 'out').glob('**/*.png'))
