"""A catalogue of bad inputs per command-line tool. Each one must give a non-zero exit, exactly
one error line and no traceback, and leave no output file behind.

The inputs are built here: tiny networks and datasets, hostile and malformed network files,
NaN/inf options, unavailable devices, seeds past 2^32, labels that are not class indices, and
write errors (a failing fsync in-process, RLIMIT_FSIZE in a subprocess)."""

import errno
import io
import json
import os
import pickle
import re
import resource
import subprocess
import sys
import time
import tracemalloc

import click
import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import convert
import dataset_tool
import exposure
import fid
import generate
import image_sample
from samplers import jobs
import train
from torch_utils import cli
from torch_utils import images as image_io
from torch_utils import training_stats
from networks import edm as networks
from safeload import weights

COMMANDS = dict(generate=generate.main, convert=convert.main, dataset_tool=dataset_tool.main, train=train.main,
                exposure=exposure.main, fid=fid.main, image_sample=image_sample.main)


def run(command, *args):
    return CliRunner().invoke(COMMANDS[command], [str(a) for a in args], prog_name=f'{command}.py')


def assert_one_error_line(result, *leftovers):
    """Non-zero exit, one 'Error: ' line, no traceback, no uncaught exception, nothing left."""
    output = result.output
    assert result.exit_code != 0, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert 'Traceback' not in output, output
    errors = [line for line in output.splitlines() if line.startswith('Error')]
    assert len(errors) == 1, output
    if result.exit_code == 1:  # application errors: stderr holds that line only (and cleared progress bars)
        lines = [line for line in result.stderr.splitlines() if line.strip() and '%|' not in line]
        assert lines == errors, result.stderr
    for path in leftovers:
        assert not os.path.exists(path), f'{path} was left behind'
    return errors[0]


def no_files_under(folder):
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]

#----------------------------------------------------------------------------
# Inputs built once.


def tiny_net(resolution=8, channels=1, label_dim=3):
    torch.manual_seed(0)
    return networks.EDMPrecond(img_resolution=resolution, img_channels=channels, label_dim=label_dim,
                               model_type='SongUNet', model_channels=8, channel_mult=[1], num_blocks=1,
                               attn_resolutions=[])


def write_images(folder, count=4, labels=None):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        PIL.Image.fromarray(rng.integers(0, 255, [8, 8], dtype=np.uint8)).save(os.path.join(folder, f'{i}.png'))
    if labels is not None:
        with open(os.path.join(folder, 'dataset.json'), 'w') as f:
            f.write(json.dumps(dict(labels=[[f'{i}.png', label] for i, label in enumerate(labels)])))
    return str(folder)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp('inputs')
    net = tiny_net()
    paths = dict(root=root, net=root / 'net.pkl', weights=root / 'net.pt', data=root / 'data')
    paths['net'].write_bytes(pickle.dumps(dict(ema=net)))
    with open(paths['weights'], 'wb') as f:
        weights.save_weights(dict(ema=net), f)
    write_images(paths['data'], count=8, labels=[0, 1, 2, 0, 1, 2, 0, 1])
    (root / 'garbage.pkl').write_bytes(b'this is not a pickle at all')
    (root / 'truncated.pkl').write_bytes(paths['net'].read_bytes()[:-100])
    (root / 'empty.pkl').write_bytes(b'')
    (root / 'a-file').write_text('x')
    # ema is a bare torch.nn.Identity with network-like attributes.
    identity = torch.nn.Identity()
    identity.img_resolution, identity.img_channels, identity.label_dim = 8, 1, 3
    (root / 'identity.pkl').write_bytes(pickle.dumps(dict(ema=identity)))
    (root / 'laughs.pkl').write_bytes(pickle.PROTO + b'\x04' + pickle.EMPTY_DICT + b'\x8c\x03ema' + b']\x940'
                                      + b''.join(pickle.EMPTY_LIST + pickle.MARK + (b'h' + bytes([i])) * 10
                                                 + pickle.APPENDS + pickle.MEMOIZE + pickle.POP for i in range(30))
                                      + b'h\x1e' + pickle.SETITEM + pickle.STOP)
    payload = torch.load(str(paths['weights']), weights_only=True)
    payload['config'] = '{"ema": not json'
    torch.save(payload, str(root / 'badconfig.pt'))
    return paths


BAD_NETWORKS = [
    ('garbage.pkl', 'not a network pickle'),
    ('truncated.pkl', 'truncated'),
    ('empty.pkl', 'empty'),
    ('missing.pkl', 'no such file'),
    ('identity.pkl', r'refus.*torch\.nn\.Identity'),
    ('laughs.pkl', 'expands to more than'),
    ('badconfig.pt', 'not JSON'),
]

#----------------------------------------------------------------------------
# Every numeric option of every CLI goes through torch_utils/cli.py.


def _all_commands():
    for name, command in COMMANDS.items():
        if isinstance(command, click.Group):
            for sub_name, sub in command.commands.items():
                yield f'{name} {sub_name}', sub
        else:
            yield name, command


def test_every_float_and_device_option_uses_the_shared_types():
    found = 0
    for name, command in _all_commands():
        for param in command.params:
            if isinstance(param.type, (click.types.FloatParamType, click.FloatRange)):
                assert isinstance(param.type, cli.FloatRange), f'{name} {param.opts}: not a torch_utils.cli.FloatRange'
                found += 1
            if param.name == 'device':
                assert param.type is cli.DEVICE, f'{name} --device is not torch_utils.cli.DEVICE'
            if param.name == 'seed' and isinstance(param.type, click.types._NumberRangeBase):
                assert param.type.min == 0, f'{name} --seed accepts negative seeds'
    assert found >= 20


@pytest.mark.parametrize('text', ['nan', 'NaN', 'inf', '-inf', '1e999'])
def test_float_type_refuses_nan_and_inf(text):
    with pytest.raises(click.BadParameter):
        cli.FLOAT.convert(text, None, None)
    assert cli.FloatRange(min=0, allow_inf=True).convert('inf', None, None) == float('inf')
    with pytest.raises(click.BadParameter, match='not a number'):
        cli.FloatRange(min=0, allow_inf=True).convert('nan', None, None)

#----------------------------------------------------------------------------
# generate.py


@pytest.mark.parametrize('args', [
    ['--S_noise=nan', '--S_churn=10'], ['--S_churn=inf'], ['--S_min=nan'], ['--S_max=nan'], ['--rho=nan'],
    ['--sigma_min=nan'], ['--sigma_max=inf'], ['--eps_scaler=nan'], ['--eps_scaler_k=inf'], ['--ts_cutoff=nan'],
    ['--ts_signal_var=inf'], ['--S_noise=-inf'],
    ['--device=bogus'], ['--device=meta'], ['--device=cuda:99'],
    ['--seeds=4294967296'], ['--seeds=0-4294967296'], ['--seeds=-1'], ['--seeds=1-x'], ['--seeds=,'],
    ['--class=3'], ['--class=-1'], ['--batch=0'], ['--batch=65537'], ['--steps=1'],
])
def test_generate_bad_options(files, tmp_path, args):
    out = tmp_path / 'out'
    line = assert_one_error_line(run('generate', f'--network={files["net"]}', f'--outdir={out}', *args), out)
    if 'seeds=4294967296' in ''.join(args):
        assert '2^32' in line


def test_generate_device_cuda_without_cuda(files, tmp_path):
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    line = assert_one_error_line(run('generate', f'--network={files["net"]}', f'--outdir={tmp_path / "o"}', '--device=cuda'),
                                 tmp_path / 'o')
    assert 'CUDA is not available' in line


@pytest.mark.parametrize('name, message', BAD_NETWORKS)
def test_generate_bad_networks_leave_no_outdir(files, tmp_path, name, message):
    out = tmp_path / 'out'
    line = assert_one_error_line(run('generate', f'--network={files["root"] / name}', f'--outdir={out}', '--seeds=0'), out)
    assert __import__('re').search(message, line), line


def test_generate_outdir_under_a_file(files):
    assert_one_error_line(run('generate', f'--network={files["net"]}', f'--outdir={files["root"] / "a-file" / "out"}'))


def _fail_fsync_of(suffix, monkeypatch):
    """os.fsync raises ENOSPC for the temporary files of atomic writes to names ending in `suffix`."""
    if not sys.platform.startswith('linux'):
        pytest.skip('needs /proc/self/fd')
    real = os.fsync

    def fsync(fd):
        name = os.path.basename(os.readlink(f'/proc/self/fd/{fd}'))
        if name.startswith('.') and name.endswith('.tmp') and f'{suffix}.' in name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(os, 'fsync', fsync)


def test_generate_disk_full_while_writing_pngs(files, tmp_path, monkeypatch):
    _fail_fsync_of('.png', monkeypatch)
    out = tmp_path / 'out'
    line = assert_one_error_line(run('generate', f'--network={files["net"]}', f'--outdir={out}', '--seeds=0-3', '--steps=2'))
    assert 'No space left on device' in line and '.png' in line
    assert sorted(os.listdir(out)) == [generate.OPTIONS_RECORD]  # no PNG, no temporary file


def test_generate_disk_full_while_writing_the_record(files, tmp_path, monkeypatch):
    _fail_fsync_of('.json', monkeypatch)
    out = tmp_path / 'out'
    line = assert_one_error_line(run('generate', f'--network={files["net"]}', f'--outdir={out}', '--seeds=0'), out)
    assert 'No space left on device' in line


def test_generate_file_size_limit_in_a_subprocess(files, tmp_path, repo_root):
    """RLIMIT_FSIZE below one PNG: the write fails with EFBIG; one line, no PNG, no temporary file."""
    out = tmp_path / 'out'
    net = tiny_net(resolution=32, channels=3, label_dim=0)
    (tmp_path / 'rgb.pkl').write_bytes(pickle.dumps(dict(ema=net)))

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600))  # the options record fits, a PNG does not
    res = subprocess.run([sys.executable, '-B', 'generate.py', f'--network={tmp_path / "rgb.pkl"}', f'--outdir={out}',
                          '--seeds=0', '--steps=2'], cwd=repo_root, capture_output=True, text=True, timeout=300,
                         preexec_fn=limit)
    lines = [line for line in res.stderr.splitlines() if line.strip() and '%|' not in line]  # not progress bars
    assert res.returncode == 1 and len(lines) == 1 and 'File too large' in lines[0], res.stderr
    assert sorted(os.listdir(out)) == [generate.OPTIONS_RECORD]


def test_generate_out_of_memory(files, tmp_path, monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    monkeypatch.setattr(generate.Sampler, '__call__', no_memory)
    out = tmp_path / 'out'
    line = assert_one_error_line(run('generate', f'--network={files["net"]}', f'--outdir={out}', '--seeds=0-3', '--batch=4'))
    assert 'use a smaller --batch' in line and not [f for f in os.listdir(out) if f.endswith('.png')]


def test_generate_a_billion_seeds_start_at_once_in_flat_memory(files, tmp_path, monkeypatch):
    """--seeds=0-999999999 is kept as a range: the first batch is written at once, and the
    memory used before it does not grow with the number of seeds."""
    class FirstBatchWritten(Exception):
        pass

    real_write = jobs._write_batch

    def write_then_stop(paths, images):
        real_write(paths, images)
        raise FirstBatchWritten()
    monkeypatch.setattr(jobs, '_write_batch', write_then_stop)
    tracemalloc.start()
    start = time.monotonic()
    result = run('generate', f'--network={files["net"]}', f'--outdir={tmp_path / "out"}', '--seeds=0-999999999',
                 '--batch=2', '--steps=2')
    seconds = time.monotonic() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert isinstance(result.exception, FirstBatchWritten), result.output
    assert 'Generating 1000000000 images' in result.output
    assert sorted(os.listdir(tmp_path / 'out')) == ['000000.png', '000001.png', generate.OPTIONS_RECORD]
    assert seconds < 60 and peak < 64 * 2 ** 20


def test_batches_are_the_same_as_a_list_of_seeds():
    seeds = generate.parse_seeds('5-9,0-12,100')
    assert list(seeds) == [5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 10, 11, 12, 100]
    batches = generate.split_batches(list(seeds), 4)
    assert [seeds[i * 4:(i + 1) * 4] for i in range(len(batches))] == batches


def test_resume_regenerates_truncated_and_empty_pngs(files, tmp_path):
    out = tmp_path / 'out'
    args = [f'--network={files["net"]}', f'--outdir={out}', '--seeds=0-3', '--steps=2', '--batch=2']
    assert run('generate', *args).exit_code == 0
    good = {name: (out / name).read_bytes() for name in os.listdir(out) if name.endswith('.png')}
    assert all(image_io.is_complete_png(out / name) for name in good)
    (out / '000001.png').write_bytes(good['000001.png'][:-20])   # truncated
    (out / '000002.png').write_bytes(b'')                         # empty
    for name in ('000001.png', '000002.png'):
        assert not image_io.is_complete_png(out / name)
    result = run('generate', *args)
    assert result.exit_code == 0 and 'Done: 2 images' in result.output, result.output  # both batches sampled again
    assert {name: (out / name).read_bytes() for name in good} == good

#----------------------------------------------------------------------------
# convert.py


@pytest.mark.parametrize('name, message', BAD_NETWORKS)
def test_convert_bad_sources(files, tmp_path, name, message):
    dest = tmp_path / 'out.pt'
    line = assert_one_error_line(run('convert', f'--src={files["root"] / name}', f'--dest={dest}'), dest)
    assert __import__('re').search(message, line), line
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('dest', ['missing-dir/out.pt', 'a-dir'])
def test_convert_bad_destinations(files, tmp_path, dest):
    (tmp_path / 'a-dir').mkdir()
    assert_one_error_line(run('convert', f'--src={files["net"]}', f'--dest={tmp_path / dest}'))
    assert sorted(os.listdir(tmp_path)) == ['a-dir'] and os.listdir(tmp_path / 'a-dir') == []


def test_convert_disk_full(files, tmp_path, monkeypatch):
    _fail_fsync_of('.pt', monkeypatch)
    line = assert_one_error_line(run('convert', f'--src={files["net"]}', f'--dest={tmp_path / "out.pt"}'))
    assert 'No space left' in line and os.listdir(tmp_path) == []


def test_convert_file_size_limit_in_a_subprocess(files, tmp_path, repo_root):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    res = subprocess.run([sys.executable, '-B', 'convert.py', f'--src={files["net"]}', f'--dest={tmp_path / "out.pt"}'],
                         cwd=repo_root, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 1 and len(lines) == 1 and 'File too large' in lines[0], res.stderr
    assert os.listdir(tmp_path) == []

#----------------------------------------------------------------------------
# dataset_tool.py


@pytest.mark.parametrize('label', [-1, 1.5, 2.0, True, '3', [1], 2 ** 31])
def test_dataset_tool_labels_must_be_class_indices(tmp_path, label):
    source = write_images(tmp_path / 'src', count=3, labels=[0, label, 1])
    dest = tmp_path / 'out.zip'
    line = assert_one_error_line(run('dataset_tool', f'--source={source}', f'--dest={dest}', '--workers=1'), dest)
    assert 'dataset.json' in line and 'labels must be integers' in line


@pytest.mark.parametrize('args', [['--resolution=131072x131072'], ['--resolution=0x0'], ['--resolution=64'],
                                  ['--max-images=0'], ['--workers=0'], ['--transform=center-crop']])
def test_dataset_tool_bad_options(tmp_path, args):
    source = write_images(tmp_path / 'src', count=2, labels=[0, 1])
    dest = tmp_path / 'out.zip'
    assert_one_error_line(run('dataset_tool', f'--source={source}', f'--dest={dest}', *args), dest)


def test_dataset_tool_labels_in_a_zip_source(tmp_path):
    source = write_images(tmp_path / 'src', count=2, labels=[0, -3])
    import zipfile
    with zipfile.ZipFile(tmp_path / 'src.zip', 'w') as z:
        for name in os.listdir(source):
            z.write(os.path.join(source, name), name)
    dest = tmp_path / 'out'
    line = assert_one_error_line(run('dataset_tool', f'--source={tmp_path / "src.zip"}', f'--dest={dest}', '--workers=1'), dest)
    assert 'src.zip:dataset.json' in line


def test_dataset_tool_disk_full(tmp_path, monkeypatch):
    source = write_images(tmp_path / 'src', count=3, labels=[0, 1, 2])
    import zipfile
    real = zipfile.ZipFile.writestr

    def writestr(self, info, data, *args, **kwargs):
        if str(getattr(info, 'filename', info)).endswith('dataset.json'):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, info, data, *args, **kwargs)
    monkeypatch.setattr(zipfile.ZipFile, 'writestr', writestr)
    line = assert_one_error_line(run('dataset_tool', f'--source={source}', f'--dest={tmp_path / "out.zip"}', '--workers=1'))
    assert 'No space left on device' in line
    assert sorted(os.listdir(tmp_path)) == ['src']

#----------------------------------------------------------------------------
# train.py


@pytest.fixture
def fresh_stats(monkeypatch):
    for name, value in dict(_rank=0, _sync_device=None, _counters=dict(), _totals=dict()).items():
        monkeypatch.setattr(training_stats, name, value)


TRAIN_TINY = ['--cbase=8', '--cres=1', '--blocks=1', '--attn=none', '--batch=4', '--duration=0.000004', '--workers=0',
              '--augment=0', '--seed=0', '--tick=0.004', '--snap=1', '--dump=1']


@pytest.mark.parametrize('args', [
    ['--lr=nan'], ['--duration=inf'], ['--dropout=nan'], ['--ema=inf'], ['--lr-rampup=nan'], ['--ls=inf'],
    ['--tick=nan'], ['--augment=nan'], ['--seed=-1'],
])
def test_train_bad_options(files, tmp_path, args):
    out = tmp_path / 'runs'
    assert_one_error_line(run('train', f'--outdir={out}', f'--data={files["data"]}', '--cond=1', *TRAIN_TINY, *args), out)


@pytest.mark.parametrize('name', ['garbage.pkl', 'identity.pkl', 'badconfig.pt'])
def test_train_transfer_from_bad_networks(files, tmp_path, fresh_stats, name):
    result = run('train', f'--outdir={tmp_path / "runs"}', f'--data={files["data"]}', '--cond=1', *TRAIN_TINY,
                 f'--transfer={files["root"] / name}')
    assert_one_error_line(result)
    assert not [f for f in no_files_under(tmp_path) if f.endswith(('.pkl', '.pt'))]


def test_train_transfer_from_another_architecture(files, tmp_path, fresh_stats):
    other = tmp_path / 'other.pkl'
    net = networks.EDMPrecond(img_resolution=8, img_channels=1, label_dim=3, model_type='SongUNet', model_channels=16,
                              channel_mult=[1], num_blocks=1, attn_resolutions=[])
    other.write_bytes(pickle.dumps(dict(ema=net)))
    line = assert_one_error_line(run('train', f'--outdir={tmp_path / "runs"}', f'--data={files["data"]}', '--cond=1',
                                     *TRAIN_TINY, f'--transfer={other}'))
    assert 'do not fit' in line


def test_train_resume_from_garbage(files, tmp_path):
    state = tmp_path / 'training-state-000000.pt'
    state.write_bytes(b'PK\x03\x04 not a zip')
    assert_one_error_line(run('train', f'--outdir={tmp_path / "runs"}', f'--data={files["data"]}', '--cond=1',
                              *TRAIN_TINY, f'--resume={state}'), tmp_path / 'runs')


def test_train_outdir_under_a_file(files, fresh_stats):
    line = assert_one_error_line(run('train', f'--outdir={files["root"] / "a-file" / "runs"}', f'--data={files["data"]}',
                                     '--cond=1', *TRAIN_TINY))
    assert 'Not a directory' in line or 'File exists' in line

#----------------------------------------------------------------------------
# exposure.py and fid.py (options and networks; detectors and statistics are tested elsewhere)


@pytest.mark.parametrize('args', [
    ['norms', '--eps_scaler=nan'], ['norms', '--ts_cutoff=inf'], ['norms', '--device=bogus'], ['norms', '--rho=nan'],
    ['norms', '--seeds=0-4294967296'], ['norms', '--seeds=0-99999999'], ['norms', '--sigma_max=inf'],
])
def test_exposure_norms_bad_options(files, tmp_path, args):
    out = tmp_path / 'out'
    assert_one_error_line(run('exposure', *args, f'--network={files["net"]}', f'--data={files["data"]}', f'--outdir={out}',
                              '--steps=2'), out)


@pytest.mark.parametrize('scalers', ['nan', '1:inf:0.1', '1:2:1e-9', 'inf'])
def test_exposure_sweep_bad_scalers(files, tmp_path, scalers):
    out = tmp_path / 'out'
    assert_one_error_line(run('exposure', 'sweep', f'--network={files["net"]}', f'--outdir={out}', f'--ref={tmp_path / "r.npz"}',
                              f'--eps_scaler={scalers}', '--steps=2'), out)


@pytest.mark.parametrize('name, message', BAD_NETWORKS[:5])
def test_exposure_bad_networks(files, tmp_path, name, message):
    out = tmp_path / 'out'
    line = assert_one_error_line(run('exposure', 'norms', f'--network={files["root"] / name}', f'--data={files["data"]}',
                                     f'--outdir={out}', '--steps=2', '--seeds=0'), out)
    assert __import__('re').search(message, line), line


def test_exposure_calibrate_nan_min_sigma(tmp_path):
    assert_one_error_line(run('exposure', 'calibrate', f'--norms={tmp_path / "n.json"}', '--min-sigma=nan'))


@pytest.mark.parametrize('args', [['calc', '--seed=-1'], ['calc', '--seed=4294967296'], ['calc', '--num=1']])
def test_fid_bad_numeric_options(tmp_path, args):
    assert_one_error_line(run('fid', *args, f'--images={tmp_path}', f'--ref={tmp_path / "r.npz"}'))

#----------------------------------------------------------------------------
# Second round (issue 26): non-finite results.


def _nan_net(files, tmp_path, name='nan.pkl'):
    net = tiny_net()
    with torch.no_grad():
        next(p for n, p in net.named_parameters() if n.endswith('weight')).view(-1)[0] = float('nan')
    path = tmp_path / name
    path.write_bytes(pickle.dumps(dict(ema=net)))
    return path


def test_generate_network_with_nan_weights_writes_nothing(files, tmp_path):
    out = tmp_path / 'out'
    line = assert_one_error_line(run('generate', f'--network={_nan_net(files, tmp_path)}', f'--outdir={out}',
                                     '--seeds=0-3', '--batch=2', '--steps=4'))
    assert 'NaN or infinite' in line and 'seeds 0, 1' in line and 'solver step 1 of 4' in line, line
    assert not [f for f in no_files_under(out) if f.endswith('.png')]


class _NaNLate(torch.nn.Module):
    """Wraps a network: NaN for the images whose first latent pixel is positive, below sigma 1."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.img_channels, self.img_resolution, self.label_dim = net.img_channels, net.img_resolution, net.label_dim
        self.sigma_min, self.sigma_max = net.sigma_min, net.sigma_max

    def round_sigma(self, sigma):
        return self.net.round_sigma(sigma)

    def forward(self, x, sigma, class_labels=None, **kwargs):
        out = self.net(x, sigma, class_labels, **kwargs)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        if float(sigma[0]) < 1:
            out = torch.where((x[:, :1, :1, :1] > 0), torch.full_like(out, float('nan')), out)
        return out


def test_sample_batch_names_only_the_bad_seeds_and_the_step():
    from samplers import Sampler, SamplerOptions
    from samplers.noise import SeedNoise, latents_and_labels
    net = _NaNLate(tiny_net().eval().requires_grad_(False))
    sampler = Sampler(net, SamplerOptions(num_steps=6, solver='euler'))
    seeds = list(range(8))
    with pytest.raises(jobs.NonFiniteError) as info:
        jobs.sample_batch(sampler, net, seeds)
    text = str(info.value)
    # Independently: each seed sampled alone, and the first level below 1 (where _NaNLate starts).
    bad = []
    for seed in seeds:
        noise = SeedNoise([seed])
        latents, labels = latents_and_labels(noise, [1, 8, 8], 3, None)
        if not sampler(latents, labels, noise.randn_like).isfinite().all():
            bad.append(seed)
    assert 0 < len(bad) < len(seeds)
    step = next(i for i, s in enumerate(sampler.sigmas.tolist()) if s < 1)
    assert f'solver step {step + 1} of 6' in text, text
    assert f' {", ".join(map(str, bad))} ({len(bad)} of 8 in the batch)' in text, text
    assert len(text.splitlines()) == 1


def test_exposure_norms_of_a_nan_network(files, tmp_path):
    line = assert_one_error_line(run('exposure', 'norms', f'--network={_nan_net(files, tmp_path)}',
                                     f'--data={files["data"]}', f'--outdir={tmp_path / "out"}', '--seeds=0-1',
                                     '--steps=3'), tmp_path / 'out' / 'norms.json')
    assert 'NaN or infinite' in line, line

#----------------------------------------------------------------------------
# Second round (issue 26): everything the toolkit reads back is hostile input.


def _npy_header_bomb(path, shape, dtype='<f4'):
    """A .npy file whose header declares `shape` but which holds 16 bytes of data."""
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (dtype, tuple(shape))
    header = header + ' ' * (63 - (10 + len(header)) % 64) + '\n'
    path.write_bytes(b'\x93NUMPY\x01\x00' + len(header).to_bytes(2, 'little') + header.encode() + b'\0' * 16)
    return path


def _killed_npz_run(net, out, monkeypatch, seeds=range(4)):
    """sample_to_npz stopped after its first part file, as a killed run leaves it."""
    from samplers import SamplerOptions
    written = []
    real = jobs._write_part

    def write_then_die(*args):
        real(*args)
        written.append(args[0])
        raise KeyboardInterrupt
    monkeypatch.setattr(jobs, '_write_part', write_then_die)
    with pytest.raises(KeyboardInterrupt):
        jobs.sample_to_npz(net, list(seeds), str(out), SamplerOptions(num_steps=2), record=dict(x=1), max_batch_size=2,
                           progress=False)
    monkeypatch.setattr(jobs, '_write_part', real)
    return written[0]


@pytest.mark.parametrize('tamper, match', [
    (lambda d: d.update(arr_1=np.array([7, 0], dtype=np.int64)), 'labels outside 0-2'),
    (lambda d: d.update(seeds=np.array([5, 6], dtype=np.int64)), 'other seeds'),
    (lambda d: d.update(arr_0=d['arr_0'].astype(np.float32)), 'arr_0 is float32'),
    (lambda d: d.update(extra=np.zeros(1)), 'holds arrays'),
    (lambda d: d.pop('arr_1'), 'holds arrays'),
])
def test_npz_resume_refuses_a_tampered_part(tmp_path, monkeypatch, tamper, match):
    net = tiny_net().eval().requires_grad_(False)
    part = _killed_npz_run(net, tmp_path / 'o', monkeypatch)
    with np.load(part) as data:
        arrays = dict(data)
    tamper(arrays)
    with open(part, 'wb') as f:
        np.savez(f, **arrays)
    from samplers import SamplerOptions
    with pytest.raises(jobs.JobError, match=match) as info:
        jobs.sample_to_npz(net, list(range(4)), str(tmp_path / 'o'), SamplerOptions(num_steps=2), record=dict(x=1),
                           max_batch_size=2, progress=False)
    assert os.path.basename(part) in str(info.value) and len(str(info.value).splitlines()) == 1
    assert not [f for f in os.listdir(tmp_path / 'o') if f.endswith('.npz')]  # no sample file


def test_npz_resume_untampered_part_is_used(tmp_path, monkeypatch):
    """The wrong-variant control: the same killed run, not tampered, resumes and matches a fresh run."""
    from samplers import SamplerOptions
    net = tiny_net().eval().requires_grad_(False)
    _killed_npz_run(net, tmp_path / 'o', monkeypatch)
    opts = dict(record=dict(x=1), max_batch_size=2, progress=False)
    stats = jobs.sample_to_npz(net, list(range(4)), str(tmp_path / 'o'), SamplerOptions(num_steps=2), **opts)
    fresh = jobs.sample_to_npz(net, list(range(4)), str(tmp_path / 'f'), SamplerOptions(num_steps=2), **opts)
    assert stats.num_resumed == 2 and fresh.num_resumed == 0
    with np.load(stats.path) as a, np.load(fresh.path) as b:
        assert np.array_equal(a['arr_0'], b['arr_0']) and np.array_equal(a['arr_1'], b['arr_1'])


def test_npz_part_with_a_huge_declared_array_is_refused_before_allocation(tmp_path, monkeypatch):
    net = tiny_net().eval().requires_grad_(False)
    part = _killed_npz_run(net, tmp_path / 'o', monkeypatch)
    import zipfile
    bomb = _npy_header_bomb(tmp_path / 'arr_0.npy', (1 << 20, 8, 8, 1 << 12), '|u1')
    with zipfile.ZipFile(part, 'w') as zf:
        zf.write(bomb, 'arr_0.npy')
    start = time.time()
    with pytest.raises(jobs.JobError, match='declares'):
        jobs._read_part(part, [0, 1], [8, 8, 1], True, 3)
    assert time.time() - start < 5


@pytest.mark.parametrize('content', ['[1, 2]', '{"network": ' * 100000, 'NaN', '{"class_idx": NaN}'])
def test_generate_resume_with_a_tampered_options_record(files, tmp_path, content):
    out = tmp_path / 'out'
    res = run('generate', f'--network={files["net"]}', f'--outdir={out}', '--seeds=0-1', '--batch=2', '--steps=2')
    assert res.exit_code == 0, res.output
    (out / generate.OPTIONS_RECORD).write_text(content)
    before = sorted(os.listdir(out))
    line = assert_one_error_line(run('generate', f'--network={files["net"]}', f'--outdir={out}', '--seeds=0-1',
                                     '--batch=2', '--steps=2'))
    assert generate.OPTIONS_RECORD in line and 'no-resume' in line, line
    assert sorted(os.listdir(out)) == before


def test_generate_resume_with_a_huge_options_record(files, tmp_path, monkeypatch):
    from safeload import state
    monkeypatch.setattr(state, 'MAX_JSON_BYTES', 1000)
    out = tmp_path / 'out'
    assert run('generate', f'--network={files["net"]}', f'--outdir={out}', '--seeds=0-1', '--batch=2', '--steps=2').exit_code == 0
    (out / generate.OPTIONS_RECORD).write_text('{"a": "' + 'x' * 2000 + '"}')
    line = assert_one_error_line(run('generate', f'--network={files["net"]}', f'--outdir={out}', '--seeds=0-1',
                                     '--batch=2', '--steps=2'))
    assert 'more than the 1000' in line, line


def _sweep_point(tmp_path, result=None, features=None):
    from analysis import sweep
    point = sweep.GridPoint(1.0)
    folder = tmp_path / 'points' / point.name
    folder.mkdir(parents=True)
    good = dict(point=dict(eps_scaler=1.0, ts_window=0, ts_cutoff=sweep.GridPoint.ts_cutoff, ts_mode='clean',
                           eps_scaler_k=0.0), name=point.name, score=3.5, num_images=4, options={})
    (folder / 'result.json').write_text(json.dumps(good if result is None else result(good)))
    np.save(folder / 'features.npy', np.ones([4, 6], dtype=np.float32) if features is None else features)
    return sweep, point, folder


@pytest.mark.parametrize('result, features, match', [
    (lambda r: dict(r, score='3.5'), None, '"score" is a string'),
    (lambda r: dict(r, score=float('inf')), None, 'not finite'),
    (lambda r: dict(r, num_images=True), None, '"num_images" is true or false'),
    (lambda r: {k: v for k, v in r.items() if k != 'point'}, None, '"point" is missing'),
    (lambda r: dict(r, point=dict(r['point'], eps_scaler='big')), None, 'eps_scaler'),
    (lambda r: dict(r, point=dict(r['point'], ts_mode='evil')), None, 'ts_mode'),
    (lambda r: dict(r, point=dict(r['point'], extra=1)), None, 'exactly the fields'),
    (None, np.ones([4, 6], dtype=np.float64), 'float64'),
    (None, np.ones([3, 6], dtype=np.float32), 'shape'),
    (None, np.full([4, 6], np.nan, dtype=np.float32), 'NaN'),
    (None, np.array([[None]] * 4, dtype=object), 'object'),
])
def test_sweep_resume_refuses_a_tampered_point(tmp_path, result, features, match):
    sweep, point, folder = _sweep_point(tmp_path, result, features)
    from analysis.common import ExposureError
    with pytest.raises(ExposureError, match=match):
        sweep.finished_points(str(tmp_path))
    with pytest.raises(ExposureError, match=match):
        sweep.load_point(str(tmp_path), point)


def test_sweep_untampered_point_loads(tmp_path):
    sweep, point, _folder = _sweep_point(tmp_path)
    points, results, features = sweep.finished_points(str(tmp_path))
    assert points == [point] and results[0]['score'] == 3.5 and features[0].shape == (4, 6)


def test_feature_array_with_a_huge_header_is_refused_quickly_and_small(tmp_path, repo_root):
    """A features.npy declaring 2^40 floats over 16 bytes: refused before allocation (peak RSS)."""
    path = _npy_header_bomb(tmp_path / 'features.npy', (1 << 20, 1 << 20))
    code = ('import resource, sys; from safeload import state\n'
            'try:\n    state.read_npy(sys.argv[1], ("<f4",), shape=(None, None))\n'
            'except state.StateFileError as err:\n    print("refused:", err)\n'
            # VmHWM: this process image's peak (ru_maxrss may include the forking parent's pages)
            'hwm = [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")]\n'
            'print(hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)')
    start = time.time()
    res = subprocess.run([sys.executable, '-c', code, str(path)], cwd=repo_root, capture_output=True, text=True)
    assert time.time() - start < 30
    lines = res.stdout.splitlines()
    assert lines[0].startswith('refused:') and 'declares' in lines[0], res.stdout + res.stderr
    assert int(lines[1]) < 400 * 1024  # KiB: the interpreter and numpy only


@pytest.mark.parametrize('doc, match', [
    ('{"kind": "eps-norms", "evaluations": [1]}', 'missing|not an object'),
    ('{"kind": "eps-norms", "evaluations": [{"step": 0}], "dim": 64, "num_images": 2, "options": {}}', '"kind" is missing'),
    ('[' * 100000, 'not valid JSON'),
    ('{"kind": "eps-norms", "evaluations": [{"step": 0, "kind": "euler", "sigma": NaN}]}', 'NaN'),
])
def test_exposure_calibrate_tampered_norms(tmp_path, doc, match):
    path = tmp_path / 'norms.json'
    path.write_text(doc)
    line = assert_one_error_line(run('exposure', 'calibrate', f'--norms={path}'))
    assert re.search(match, line), line

#----------------------------------------------------------------------------
# Second round (issue 26): integers outside int64, channel counts dataset_tool cannot convert.


@pytest.mark.parametrize('command, args', [
    ('generate', ['--outdir=OUT', '--seeds=0', f'--steps={2 ** 70}']),
    ('generate', ['--outdir=OUT', '--seeds=0', f'--ts_window={2 ** 70}']),
    ('generate', ['--outdir=OUT', '--seeds=0', f'--order={-2 ** 70}']),
    ('fid', ['calc', '--images=OUT', '--ref=x.npz', f'--num={2 ** 70}']),
    ('dataset_tool', ['--source=OUT', '--dest=OUT/x.zip', f'--max-images={2 ** 70}']),
])
def test_integers_past_int64_are_one_line(tmp_path, command, args):
    args = [a.replace('OUT', str(tmp_path / 'out')) for a in args]
    start = time.time()
    line = assert_one_error_line(run(command, *args), tmp_path / 'out')
    assert '64-bit integer' in line and time.time() - start < 10, line


def test_every_integer_option_is_bounded():
    for name, command in _all_commands():
        for param in command.params:
            if isinstance(param.type, click.IntRange) or param.type is click.INT:
                assert isinstance(param.type, cli._BoundedIntRange), f'{name} {param.opts[0]}'


def test_bounded_ints_keep_their_own_range():
    line = assert_one_error_line(run('generate', '--outdir=x', '--batch=0'))
    assert '1<=x<=65536' in line, line
    assert cli._BoundedIntRange(click.IntRange(min=1)).convert('7', None, None) == 7


@pytest.mark.parametrize('channels', [2, 4, 5])
def test_dataset_tool_npz_with_unconvertible_channels(tmp_path, channels):
    src = tmp_path / 'in.npz'
    np.savez(src, arr_0=np.zeros([2, 8, 8, channels], dtype=np.uint8))
    line = assert_one_error_line(run('dataset_tool', f'--source={src}', f'--dest={tmp_path / "x.zip"}'), tmp_path / 'x.zip')
    assert f'{channels}-channel' in line, line


def test_dataset_tool_npz_with_rgb_converts(tmp_path):
    src = tmp_path / 'in.npz'
    np.savez(src, arr_0=np.zeros([2, 8, 8, 3], dtype=np.uint8))
    assert run('dataset_tool', f'--source={src}', f'--dest={tmp_path / "x.zip"}').exit_code == 0

#----------------------------------------------------------------------------
# Second round (issue 26): networks from flags bounded before construction; batches that cannot fit.


def _adm_flags(text):
    from networks import adm
    return adm.parse_adm_flags(text.split())


def test_adm_parameter_estimate_matches_the_built_network():
    from networks import adm
    for text in ['--image_size 32 --num_channels 64 --num_res_blocks 1',
                 '--image_size 64 --num_channels 32 --num_res_blocks 2 --class_cond True --use_scale_shift_norm False',
                 '--image_size 32 --num_channels 64 --num_res_blocks 2 --resblock_updown True --attention_resolutions 16,8']:
        flags = _adm_flags(text)
        with torch.device('meta'):
            count = sum(p.numel() for p in adm.build_network(flags).parameters())
        assert abs(adm.estimate_parameters(flags) - count) < 0.01 * count, text


@pytest.mark.parametrize('text, match', [
    ('--image_size 32 --num_channels 64 --num_res_blocks 1000000', 'num_res_blocks 1000000 is above'),
    ('--image_size 1048576 --num_channels 64 --channel_mult 1', 'image_size 1048576 is above'),
    ('--image_size 32 --num_channels 65536 --channel_mult 1', 'is above the limit of 16384'),
    ('--image_size 32 --num_channels 4096 --num_res_blocks 64 --channel_mult 1,2', 'parameters, above the limit'),
    ('--image_size 4096 --num_channels 32 --channel_mult ' + ','.join(['1'] * 13), 'channel_mult entries 13'),
    ('--image_size 32 --num_channels 64 --class_cond True --num_classes 1000000000', 'num_classes 1000000000'),
])
def test_adm_flags_above_the_bounds_are_refused_at_once(text, match):
    from networks import adm
    start = time.time()
    with pytest.raises(adm.ADMError, match=match):
        adm.parse_adm_flags(text.split())
    assert time.time() - start < 2


def test_adm_checkpoint_far_smaller_than_the_flags_is_refused_before_building(tmp_path):
    from networks import adm
    path = tmp_path / 'small.pt'
    torch.save({'time_embed.0.weight': torch.zeros(4, 4)}, path)
    flags = _adm_flags('--image_size 64 --num_channels 192 --num_res_blocks 3')
    with pytest.raises(adm.ADMError, match='describe about .* parameters, the checkpoint holds 16'):
        adm.load_adm_checkpoint(str(path), flags)


def test_generate_refuses_a_batch_that_cannot_fit(files, tmp_path, monkeypatch):
    class Tiny:
        available = 1 << 10
    monkeypatch.setattr(jobs.psutil, 'virtual_memory', lambda: Tiny)
    out = tmp_path / 'out'
    line = assert_one_error_line(run('generate', f'--network={files["net"]}', f'--outdir={out}', '--seeds=0-3',
                                     '--batch=4', '--steps=2'))
    assert 'GiB are available; use a smaller --batch' in line, line
    assert not [f for f in no_files_under(out) if f.endswith('.png')]


def test_batch_memory_estimate_scales_with_the_batch():
    net = tiny_net()
    one = jobs.activation_bytes(net, 1)
    assert one > 0 and jobs.activation_bytes(net, 64) == 64 * one
    assert jobs.activation_bytes(torch.nn.Identity(), 4) is None

#----------------------------------------------------------------------------
# Second round (issue 26): zip archives bounded before inflating; detector widths and dtypes.


def test_compressed_checkpoint_entry_is_refused_before_inflating(tmp_path):
    import zipfile
    from safeload import checkpoints
    src = tmp_path / 'ok.pt'
    torch.save({'w': torch.zeros(4)}, src)
    bomb = tmp_path / 'bomb.pt'
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bomb, 'w', zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        zout.writestr('ok/data/99', b'\0' * (64 << 20))  # 64 MiB of zeros in a few KB
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(checkpoints.CheckpointError, match='is compressed'):
        checkpoints.read_state_dict(str(bomb))
    assert checkpoints.read_state_dict(str(src))['w'].shape == (4,)  # the control: torch.save's own file reads


def test_legacy_checkpoint_format_is_one_line(tmp_path):
    from safeload import checkpoints
    path = tmp_path / 'old.pt'
    torch.save({'w': torch.zeros(4)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(checkpoints.CheckpointError, match='legacy format'):
        checkpoints.read_state_dict(str(path))


def test_npz_whole_array_read_is_bounded(tmp_path, monkeypatch):
    from safeload import npz
    path = tmp_path / 'stats.npz'
    np.savez_compressed(path, mu=np.zeros(4096), sigma=np.zeros([4096, 4096]))  # 128 MiB of sigma in ~130 KB
    arrays = npz.inspect_npz(str(path))
    monkeypatch.setattr(npz, 'MAX_READ_BYTES', 64 << 20)
    with pytest.raises(npz.NpzError, match='more than the 67108864 bytes'):
        npz.read_array(str(path), arrays['sigma'])
    assert npz.read_array(str(path), arrays['mu']).shape == (4096,)


class _WideDetector(torch.nn.Module):
    def __init__(self, width, dtype=torch.float32):
        super().__init__()
        self.width, self.dtype = width, dtype

    def forward(self, images, return_features=True):
        return torch.zeros([images.shape[0], 1], dtype=self.dtype).expand(images.shape[0], self.width)


@pytest.mark.parametrize('width, dtype, match', [
    (1 << 30, torch.float32, 'at most 16384'),   # would be a 2^60-element sigma
    (0, torch.float32, 'at most 16384'),
    (8, torch.int64, 'floating-point'),
])
def test_detector_output_is_checked_before_statistics_are_allocated(tmp_path, width, dtype, match):
    from metrics.detector import MetricError
    from metrics.features import compute_feature_stats, open_images
    folder = write_images(tmp_path / 'imgs', count=2)
    with pytest.raises(MetricError, match=match):
        compute_feature_stats(open_images(folder), _WideDetector(width, dtype), image_path=folder, num_workers=0,
                              verbose=False)


def test_reference_with_a_huge_dimension_is_refused_before_reading(tmp_path):
    from metrics.detector import MetricError
    from metrics.reference import load_reference
    path = tmp_path / 'ref.npz'
    np.savez(path, mu=np.zeros(20000, dtype=np.float32), sigma=np.zeros([20000, 1], dtype=np.float32))
    with pytest.raises(MetricError, match='at most 16384'):
        load_reference(str(path))

#----------------------------------------------------------------------------
# Second round (issue 26): tampered training states.


def _state_dump(**changes):
    from training import training_loop
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    state = dict(format=training_loop.STATE_FORMAT, net=net.state_dict(), ema=net.state_dict(),
                 optimizer_state=opt.state_dict(), cur_nimg=64, cur_tick=1, seed=0, batch_size=8, augment_kwargs=None)
    state.update(changes)
    return {k: v for k, v in state.items() if v is not _DROP}


_DROP = object()


@pytest.mark.parametrize('changes, match', [
    (dict(cur_nimg=-64), 'cur_nimg'),
    (dict(cur_nimg=1.5), 'cur_nimg'),
    (dict(cur_tick=True), 'cur_tick'),
    (dict(seed=_DROP), 'seed'),
    (dict(net={'weight': torch.full([2, 2], float('nan')), 'bias': torch.zeros(2)}), 'NaN'),
    (dict(ema={'weight': 'x'}), 'state dict of tensors'),
    (dict(optimizer_state=[1, 2]), 'optimizer state dict'),
    (dict(optimizer_state=dict(state={}, param_groups=[dict(lr=float('inf'), params=[0, 1])])), 'optimizer "lr"'),
])
def test_train_resume_from_a_tampered_state(files, tmp_path, changes, match):
    from training import training_loop
    path = tmp_path / 'training-state-000000.pt'
    torch.save(_state_dump(**changes), path)
    with pytest.raises(ValueError, match=match):
        training_loop.load_state_dump(str(path))
    line = assert_one_error_line(run('train', f'--outdir={tmp_path / "runs"}', f'--data={files["data"]}', '--cond=1',
                                     *TRAIN_TINY, f'--resume={path}'), tmp_path / 'runs')
    assert re.search(match, line), line


def test_train_untampered_state_dump_reads():
    import tempfile
    from training import training_loop
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'training-state-000000.pt')
        torch.save(_state_dump(), path)
        assert training_loop.load_state_dump(path)['cur_nimg'] == 64


def test_generate_absurd_steps_is_one_line_at_once(tmp_path):
    """--steps within int64 but far past any grid (2^62) is refused before anything is built or written."""
    start = time.time()
    line = assert_one_error_line(run('generate', f'--outdir={tmp_path / "o"}', '--seeds=0', f'--steps={1 << 62}'))
    assert 'MAX_STEPS' in line and time.time() - start < 30
    assert not (tmp_path / 'o').exists()
