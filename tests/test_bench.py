"""Smoke tests: every bench/ script runs end to end with tiny settings and prints its figures.

No timing is asserted; the figures are checked only for being there and being positive.
"""

import importlib.util
import os
import re

import pytest
from click.testing import CliRunner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'bench', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def invoke(name, args):
    result = CliRunner().invoke(load_bench(name).main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_bench_sampler_prints_ratios():
    out = invoke('bench_sampler', ['--net=tiny', '--batch=2', '--steps=3', '--repeat=1',
                                   '--variants=euler,heun ES,heun TS'])
    rows = [line.split() for line in out.splitlines() if re.match(r'^(euler|heun)\b', line)]
    assert [' '.join(row[:-7]) for row in rows] == ['euler', 'heun ES', 'heun TS']
    nfes = [int(row[-7]) for row in rows]
    assert nfes == [3, 5, 5]
    for row in rows:
        ratio, best, solver_ms, estimate = map(float, row[-4:])
        assert ratio > 0 and best > 0 and solver_ms > 0 and estimate > 1


def test_bench_adm_sampler_prints_ratios():
    out = invoke('bench_adm_sampler', ['--net=tiny', '--batch=2', '--steps=3', '--repeat=1'])
    rows = [line.split() for line in out.splitlines() if re.match(r'^(ddpm|ddim)\b', line)]
    assert [' '.join(row[:-6]) for row in rows] == ['ddpm', 'ddim', 'ddpm ES', 'ddim ES', 'ddpm TS', 'ddim TS', 'ddim tsdpm']
    for row in rows:
        nfe, ratio, solver_ms, estimate = int(row[-6]), float(row[-3]), float(row[-2]), float(row[-1])
        assert nfe == 3 and ratio > 0 and solver_ms > 0 and estimate > 1


def test_bench_sampler_rejects_unknown_variant():
    result = CliRunner().invoke(load_bench('bench_sampler').main, ['--net=tiny', '--variants=rk4'])
    assert result.exit_code != 0 and 'selects none' in result.output


def test_bench_generate_prints_images_per_second():
    out = invoke('bench_generate', ['--batches=1,4', '--images=4', '--steps=2', '--resolution=8', '--repeat=1'])
    assert 'PNG encode + write alone' in out
    rows = [line.split() for line in out.splitlines() if re.match(r'^\s+\d+\s', line)]
    assert [int(row[0]) for row in rows] == [1, 4]
    for row in rows:
        assert all(float(v) > 0 for v in row[1:])


def test_bench_dataset_tool_prints_images_per_second():
    out = invoke('bench_dataset_tool', ['--images=40', '--workers=1,2'])
    rows = [line.split() for line in out.splitlines() if re.match(r'^\s+\d+\s', line)]
    assert [int(row[0]) for row in rows] == [1, 2]
    assert float(rows[0][3]) == 1.0 and all(float(row[2]) > 0 for row in rows)


def test_bench_dataset_tool_writes_a_readable_idx(tmp_path):
    import dataset_tool
    path = load_bench('bench_dataset_tool').make_mnist(str(tmp_path), 5)
    images = dataset_tool.read_idx(path)
    assert images.shape == (5, 28, 28) and images.max() > 0


def test_bench_train_prints_seconds_per_kimg():
    out = invoke('bench_train', ['--kimg=0.032', '--ticks=2', '--batch=16'])
    assert 'command: python train.py' in out
    match = re.search(r': ([\d.]+) sec/kimg', out)
    assert match and float(match.group(1)) > 0


def test_bench_fastpaths_prints_every_path():
    out = invoke('bench_fastpaths', ['--device=cpu', '--net=tiny', '--batch=4', '--steps=2', '--repeat=1', '--split=2',
                                     '--split-compiled', '--compile-backend=eager', '--threads=1'])
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if re.match(r'^[a-z_0-9]+ +[\d.]+ ', line)}
    assert re.search(r'^first call of compile: [\d.]+ s$', out, re.M)
    assert list(rows) == ['baseline', 'inference_mode', 'channels_last', 'autocast_bf16', 'compile', 'all']
    for name, (rate, speed_up, first, levels, fraction, visible, split_levels, split_fraction) in rows.items():
        assert float(rate) > 0 and float(speed_up) > 0 and float(first) > 0
        assert 0 <= int(levels) <= 255 and 0 <= float(visible) <= float(fraction) <= 1
        assert 0 <= int(split_levels) <= 255 and 0 <= float(split_fraction) <= 1
    assert rows['baseline'][1] == '1.000' and rows['baseline'][3] == '0'
    assert rows['inference_mode'][3:6] == ['0', '0.00e+00', '0.00e+00']  # bit-identical


def test_bench_fastpaths_checks_its_options():
    bench = load_bench('bench_fastpaths')
    for args, message in ((['--paths=warp'], '"warp" is not one of'),
                          (['--device=cpu', '--paths=autocast_fp16'], 'needs a CUDA device'),
                          (['--device=cpu', '--all-autocast=fp16'], 'needs --device=cuda')):
        result = CliRunner().invoke(bench.main, ['--net=tiny', *args])
        assert result.exit_code == 1 and message in result.output and 'Traceback' not in result.output, result.output


@pytest.mark.filterwarnings('ignore:`torch.jit:DeprecationWarning')
def test_bench_fid_prints_features_per_second(tmp_path):
    import pickle
    import torch
    from metrics.detector import pickle_torchscript
    bench = load_bench('bench_fid')
    path = tmp_path / 'standin.pkl'
    path.write_bytes(pickle_torchscript(torch.jit.script(bench.StandIn(dim=16))))
    with open(path, 'rb') as f:
        assert isinstance(pickle.load(f), torch.jit.ScriptModule)
    for detector, dim in (('standin', 2048), (str(path), 16)):
        out = invoke('bench_fid', [f'--detector={detector}', '--images=20', '--batch=8', '--workers=0', '--repeat=1'])
        assert re.search(rf'detector alone \({dim} features\): +[\d.]+ features/s', out), out
        assert re.search(r'accumulation alone: +[\d.]+ features/s', out)
        row = re.search(r'^0 workers +([\d.]+) +([\d.]+) +([\d.]+)$', out, re.M)
        assert row and float(row.group(1)) > 0 and float(row.group(2)) >= 0 and float(row.group(3)) > 0, out
    result = CliRunner().invoke(bench.main, [f'--detector={tmp_path / "missing.pkl"}'])
    assert result.exit_code == 1 and 'cannot load detector' in result.output


def test_bench_time_shift_compares_with_the_whole_grid_search():
    out = invoke('bench_time_shift', ['--batches=2,5', '--window=3', '--calls=2', '--repeat=1'])
    rows = [line.split() for line in out.splitlines() if re.match(r'^\s+\d+\s', line)]
    assert [int(row[0]) for row in rows] == [2, 5]
    assert all(row[-1] == 'True' and all(float(v) > 0 for v in row[1:4]) for row in rows), out


def test_gpu_figures_script_commands_parse():
    """Every command of bench/gpu_figures.sh is accepted by its script's options (not run: no GPU here)."""
    import shlex
    with open(os.path.join(ROOT, 'bench', 'gpu_figures.sh')) as f:
        text = f.read().replace('\\\n', ' ')
    commands = [shlex.split(line)[2:] for line in text.splitlines() if line.startswith('run ')]
    assert [c[0] for c in commands] == ['bench/bench_fastpaths.py', 'bench/bench_sampler.py', 'bench/bench_generate.py',
                                        'bench/bench_fid.py', 'bench/bench_time_shift.py']
    for script, *args in commands:
        name = os.path.basename(script)[:-3]
        command = load_bench(name).main
        with command.make_context(name, list(args)) as ctx:
            assert ctx.params['device_name'] == 'cuda'


@pytest.mark.skipif(__import__('torch').cuda.is_available(), reason='checks the message on a machine without CUDA')
@pytest.mark.parametrize('name', ['bench_fastpaths', 'bench_sampler', 'bench_generate', 'bench_fid', 'bench_time_shift'])
def test_bench_device_cuda_without_a_gpu_is_one_line(name):
    result = CliRunner().invoke(load_bench(name).main, ['--device=cuda'])
    assert result.exit_code == 1 and 'torch sees no CUDA device' in result.output and result.output.count('\n') == 1


@pytest.mark.parametrize('name, args', [('bench_generate', ['--batches=4,x']), ('bench_generate', ['--batches=0,4']),
                                        ('bench_dataset_tool', ['--workers=']), ('bench_dataset_tool', ['--workers=2-1']),
                                        ('bench_fid', ['--workers=-1']), ('bench_fid', ['--workers=0,x'])])
def test_bench_int_lists_are_checked(name, args):
    result = CliRunner().invoke(load_bench(name).main, args)
    assert result.exit_code == 2 and 'Invalid value' in result.output and 'Traceback' not in result.output


def test_bench_unipc_diffusers_compares_both_sides():
    pytest.importorskip('diffusers')
    out = invoke('bench_unipc_diffusers', ['--seeds=0', '--steps=5', '--variants=bh1', '--orders=3', '--threads=1'])
    row = re.search(r'^\s+5\s+unipc-bh1 p=3\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d+) of 1024$', out, re.M)
    assert row, out
    ours, theirs, difference = (float(v) for v in row.groups()[:3])
    assert ours > 1 and abs(ours - theirs) < 1e-3 and difference < 1e-4  # diffusers' bh1 image is its last D
