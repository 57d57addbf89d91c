"""The bundled MNIST model is present, small, loads safely and is what generate.py uses by default."""

import os

import numpy as np
import PIL.Image
import torch
from click.testing import CliRunner

import generate
from safeload import networks as loader


def test_bundled_model_loads_safely_and_runs():
    path = generate.DEFAULT_NETWORK
    assert os.path.isfile(path), 'models/mnist-cond-32x32.pkl is missing'
    assert os.path.getsize(path) < 20 * 1024 * 1024
    data = loader.load_network_pickle(path)  # restricted loader: no code from the file runs
    net = loader.network_from_pickle_data(data, path)
    assert type(net).__module__ == 'networks.edm' and type(net).__name__ == 'EDMPrecond'
    assert (net.img_resolution, net.img_channels, net.label_dim) == (32, 1, 10)
    assert data['dataset_kwargs']['path'] == 'datasets/mnist-32x32.zip'  # no machine path inside
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        out = net.eval()(x, torch.tensor([0.5, 5.0]), torch.eye(10)[[3, 7]])
    assert out.shape == x.shape and torch.isfinite(out).all()


def _ink(outdir, count):
    """Mean fraction of bright pixels over the PNGs written to `outdir`."""
    values = []
    for name in sorted(os.listdir(outdir))[:count]:
        values.append((np.asarray(PIL.Image.open(os.path.join(outdir, name))) > 127).mean())
    assert len(values) == count
    return float(np.mean(values))


def test_default_network_draws_the_requested_digit(tmp_path):
    # No --network: generate.py samples the bundled model. Ones use about half the ink of
    # zeros and eights (measured here: 0.066 against 0.137 and 0.116 of the pixels); a model
    # that ignored the class would not separate them, and noise would be near 0.5.
    runner = CliRunner()
    ink = {}
    for digit in (0, 1, 8):
        outdir = tmp_path / str(digit)
        result = runner.invoke(generate.main, [f'--outdir={outdir}', '--seeds=0-7', f'--class={digit}',
                                               '--steps=8', '--batch=8'])
        assert result.exit_code == 0, result.output
        ink[digit] = _ink(outdir, 8)
    assert 0.02 < ink[1] < 0.75 * min(ink[0], ink[8]), ink
    assert max(ink.values()) < 0.4, ink  # white digits on black, not noise
