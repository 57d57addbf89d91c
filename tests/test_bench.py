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


def test_bench_sampler_rejects_unknown_variant():
    result = CliRunner().invoke(load_bench('bench_sampler').main, ['--net=tiny', '--variants=rk4'])
    assert result.exit_code != 0 and 'selects none' in result.output
