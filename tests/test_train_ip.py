"""EDM train.py's input perturbation (--input-pertub, DDPM-IP): the network sees
y + sigma (n + gamma n'), the target stays y, for every preconditioning; gamma 0 is EDM's loss."""

import glob
import json
import math
import os

import pytest
import torch

import train
from safeload import networks as loader
from tests.test_train import TINY_NET, _fresh_training_stats, make_dataset, run_cli, train_cpu  # noqa: F401
from training.loss import EDMLoss, SampleRNG, VELoss, VPLoss


class _Spy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, sigma, labels, augment_labels=None):
        self.seen.append((x.clone(), sigma.clone()))
        return x * 0.5


def _expected_sigma(loss, generator):
    """The loss's sigma for one image from its generator's first draw (EDM Table 1 / training/loss.py)."""
    if isinstance(loss, EDMLoss):
        return math.exp(torch.randn([1, 1, 1], generator=generator).item() * loss.P_std + loss.P_mean)
    u = torch.rand([1, 1, 1], generator=generator).item()
    if isinstance(loss, VELoss):
        return loss.sigma_min * (loss.sigma_max / loss.sigma_min) ** u
    t = 1 + u * (loss.epsilon_t - 1)
    return math.sqrt(math.exp(0.5 * loss.beta_d * t ** 2 + loss.beta_min * t) - 1)


@pytest.mark.parametrize('loss_class', [EDMLoss, VPLoss, VELoss])
@pytest.mark.parametrize('gamma', [0.0, 0.15])
def test_network_input_and_target(loss_class, gamma):
    images = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    seeds = [5, 6, 7]
    loss = loss_class(input_pertub=gamma)
    spy = _Spy()
    result = loss(spy, images, None, rng=SampleRNG(seeds))
    x, sigma = spy.seen[0]
    for i, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(seed)
        s = _expected_sigma(loss, g)
        n = torch.randn(images.shape[1:], generator=g)
        n2 = torch.randn(images.shape[1:], generator=g)
        torch.testing.assert_close(sigma[i].flatten(), torch.tensor([s]), rtol=1e-5, atol=0)
        torch.testing.assert_close(x[i], images[i] + s * (n + gamma * n2), rtol=1e-5, atol=1e-5)
        # The target stays y: loss = weight * (D - y)^2 with D = x / 2.
        weight = loss.weight(torch.tensor(s))
        torch.testing.assert_close(result[i], weight * (x[i] * 0.5 - images[i]) ** 2, rtol=1e-5, atol=1e-6)
        if gamma:  # a deliberately wrong variant: the perturbation also in the target
            wrong = weight * (x[i] * 0.5 - (images[i] + s * gamma * n2)) ** 2
            assert not torch.allclose(result[i], wrong, rtol=1e-3)


@pytest.mark.parametrize('loss_class', [EDMLoss, VPLoss, VELoss])
def test_gamma_zero_is_edms_loss_exactly(loss_class):
    images = torch.randn(4, 3, 8, 8)
    a = loss_class()(_Spy(), images, None, rng=SampleRNG([1, 2, 3, 4]))
    b = loss_class(input_pertub=0.0)(_Spy(), images, None, rng=SampleRNG([1, 2, 3, 4]))
    c = loss_class(input_pertub=0.1)(_Spy(), images, None, rng=SampleRNG([1, 2, 3, 4]))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert loss_class.input_pertub == 0.0  # losses pickled without the attribute


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp('train_ip') / 'quadrants')


def test_option_recorded_and_default_unchanged(data, tmp_path):
    def options(extra):
        res = run_cli([f'--outdir={tmp_path / "runs"}', f'--data={data}', '-n', *TINY_NET, *extra])
        assert res.exit_code == 0, res.output
        return json.loads(res.output.split('Training options:')[1].split('\n\n')[0])
    default, ip = options([]), options(['--input-pertub=0.15'])
    assert 'input_pertub' not in default['loss_kwargs']
    assert ip['loss_kwargs'] == dict(default['loss_kwargs'], input_pertub=0.15)
    opts = train.main.make_context('train.py', [f'--outdir={tmp_path}', f'--data={data}', '--input-pertub=0.15']).params
    assert train.training_config(opts)[1].endswith('-ip0.15')
    res = run_cli([f'--outdir={tmp_path / "runs"}', f'--data={data}', '-n', '--input-pertub=-1'])
    assert res.exit_code != 0 and not os.path.exists(tmp_path / 'runs')


def test_training_with_and_without_perturbation(data, tmp_path):
    args = [f'--data={data}', '--outdir=unused', *TINY_NET, '--batch=16', '--duration=0.00005', '--tick=1', '--snap=1',
            '--lr=2e-3', '--lr-rampup=1', '--ema=0.0005', '--workers=0', '--seed=1', '--augment=0']
    weights = {}
    for name, extra in [('default', []), ('zero', ['--input-pertub=0']), ('ip', ['--input-pertub=0.2'])]:
        train_cpu(tmp_path / name, args + extra)
        [snapshot] = sorted(glob.glob(str(tmp_path / name / 'network-snapshot-*.pkl')))[-1:]
        weights[name] = loader.load_network(snapshot).state_dict()
    assert all(torch.equal(weights['default'][k], weights['zero'][k]) for k in weights['default'])
    assert not all(torch.equal(weights['default'][k], weights['ip'][k]) for k in weights['default'])
