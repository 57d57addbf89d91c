"""Tests for train.py and training/{training_loop,loss,augment}.py on tiny synthetic datasets (CPU)."""

import glob
import json
import os
import pickle
import subprocess
import sys

import click
import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import train
from torch_utils import training_stats
from safeload import networks as loader
from training import training_loop as tl
from training.augment import AugmentPipe
from training.loss import EDMLoss, SampleRNG, VELoss, VPLoss

TINY_NET = ['--cbase=8', '--cres=1,2', '--blocks=1', '--attn=none']


def make_dataset(path, resolution=8, count=64, labels=True):
    """Noisy quadrant images: class c lights up quadrant c."""
    os.makedirs(path)
    rng = np.random.default_rng(0)
    entries = []
    half = resolution // 2
    for i in range(count):
        c = i % 4
        image = rng.integers(0, 40, [resolution, resolution]).astype(np.uint8)
        image[(c // 2) * half:(c // 2 + 1) * half, (c % 2) * half:(c % 2 + 1) * half] += 200
        name = f'img{i:04d}.png'
        PIL.Image.fromarray(image).save(os.path.join(path, name))
        entries.append([name, c])
    if labels:
        with open(os.path.join(path, 'dataset.json'), 'w') as f:
            json.dump(dict(labels=entries), f)
    return str(path)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp('train') / 'quadrants')


@pytest.fixture(autouse=True)
def _fresh_training_stats(monkeypatch):
    """Each training run starts with empty statistics, as in a fresh process."""
    for name, value in dict(_rank=0, _sync_device=None, _counters=dict(), _totals=dict()).items():
        monkeypatch.setattr(training_stats, name, value)




def run_cli(args):
    return CliRunner().invoke(train.main, args, prog_name='train.py')


def train_cpu(run_dir, args):
    """Parse CLI args as train.py does and train on the CPU in this process; returns the config."""
    opts = train.main.make_context('train.py', list(args)).params
    c, _desc = train.training_config(opts)
    c.seed, c.run_dir = opts['seed'], str(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    tl.training_loop(**c, device='cpu')
    return c


def read_stats(run_dir):
    with open(os.path.join(run_dir, 'stats.jsonl')) as f:
        return [json.loads(line) for line in f]

#----------------------------------------------------------------------------
# Command line.


def test_help_text_in_sync(repo_root):
    res = CliRunner().invoke(train.main, ['--help'], prog_name='train.py')
    assert res.exit_code == 0
    with open(os.path.join(repo_root, 'docs', 'train-help.txt'), encoding='utf8') as f:
        assert res.output == f.read(), 'regenerate with: python -c "from click.testing import CliRunner; import train; ' \
            'print(CliRunner().invoke(train.main, [\'--help\'], prog_name=\'train.py\').output, end=\'\')" > docs/train-help.txt'


def test_dry_run_prints_options_and_creates_nothing(data, tmp_path):
    res = run_cli([f'--outdir={tmp_path / "runs"}', f'--data={data}', '--cond=1', '--seed=3', '--duration=0.5', '-n', *TINY_NET])
    assert res.exit_code == 0, res.output
    assert 'Dry run; exiting.' in res.output
    options = json.loads(res.output.split('Training options:')[1].split('\n\n')[0])
    assert options['total_kimg'] == 500 and options['seed'] == 3
    assert options['network_kwargs']['num_blocks'] == 1 and options['network_kwargs']['attn_resolutions'] == []
    assert options['dataset_kwargs']['resolution'] == 8 and options['dataset_kwargs']['max_size'] == 64
    assert options['augment_kwargs']['p'] == 0.12 and options['network_kwargs']['augment_dim'] == 9
    assert not os.path.exists(tmp_path / 'runs')


def test_default_network_options_are_edms(data, tmp_path):
    """Without the extension options, the network config is exactly EDM's train.py's."""
    for arch, precond in [('ddpmpp', 'vp'), ('ncsnpp', 've'), ('adm', 'edm')]:
        opts = train.main.make_context('train.py', [f'--outdir={tmp_path}', f'--data={data}', f'--arch={arch}', f'--precond={precond}', '--augment=0']).params
        c, desc = train.training_config(opts)
        assert 'num_blocks' not in c.network_kwargs and 'attn_resolutions' not in c.network_kwargs
        assert c.network_kwargs.class_name == f'training.networks.{precond.upper()}Precond'
        assert c.loss_kwargs.class_name == f'training.loss.{precond.upper()}Loss'
        assert c.network_kwargs.model_channels == (192 if arch == 'adm' else 128)
        assert desc == f'quadrants-uncond-{arch}-{precond}-gpus1-batch512-fp32'
    assert c.lr_rampup_kimg == 10000 and c.ema_halflife_kimg == 500 and c.total_kimg == 200000


@pytest.mark.parametrize('args, message', [
    (['--data={missing}'], '--data: '),
    (['--cond=1', '--data={unlabeled}'], '--cond=True requires labels'),
    (['--cres=1,1,1,1,1'], 'does not fit --arch=ddpmpp with 5 resolution levels'),
    (['--resume={missing}/training-state-000001.pt'], '--resume must point to training-state-*.pt'),
    (['--transfer=x.pkl', '--resume=y.pt'], 'cannot be specified at the same time'),
    (['--cres=1,x'], 'Invalid value for \'--cres\''),
])
def test_bad_input_is_one_line_error(data, tmp_path, args, message):
    unlabeled = make_dataset(tmp_path / 'unlabeled', count=4, labels=False)
    args = [a.format(missing=tmp_path / 'missing', unlabeled=unlabeled) for a in args]
    res = run_cli([f'--outdir={tmp_path / "runs"}', f'--data={data}', *args])
    assert res.exit_code != 0
    assert isinstance(res.exception, SystemExit)
    error_lines = [line for line in res.output.splitlines() if line.startswith('Error:')]
    assert len(error_lines) == 1 and message in error_lines[0], res.output
    assert 'Traceback' not in res.output
    assert not os.path.exists(tmp_path / 'runs')


def test_unreadable_state_dump_is_one_line_error(data, tmp_path):
    bad = tmp_path / 'training-state-000001.pt'
    bad.write_bytes(b'not a state dump')
    res = run_cli([f'--outdir={tmp_path / "runs"}', f'--data={data}', f'--resume={bad}'])
    assert res.exit_code != 0 and 'Traceback' not in res.output
    assert res.output.startswith(f'Error: --resume: cannot read {bad}: ') and res.output.count('\n') == 1


def test_batch_must_split_over_processes(data, tmp_path):
    opts = train.main.make_context('train.py', [f'--outdir={tmp_path}', f'--data={data}', '--batch=32']).params
    with pytest.raises(click.ClickException, match=r'--batch=32 is not divisible by the number of processes \(3\)'):
        train.training_config(opts, world_size=3)
    opts = train.main.make_context('train.py', [f'--outdir={tmp_path}', f'--data={data}', '--batch=32', '--batch-gpu=6']).params
    with pytest.raises(click.ClickException, match=r'--batch-gpu=6 does not divide the batch per process \(16\)'):
        train.training_config(opts, world_size=2)
    train.training_config(opts, world_size=8)  # 4 per process: --batch-gpu=6 is only a limit

#----------------------------------------------------------------------------
# Training runs.


def euler_sample(net, labels, steps=8, seed=0):
    """Deterministic Euler steps of the probability-flow ODE from sigma_max to 0 (EDM eq. 1)."""
    sigmas = torch.cat([torch.linspace(80 ** (1 / 7), 0.002 ** (1 / 7), steps) ** 7, torch.zeros(1)]).to(torch.float64)
    x = torch.randn([labels.shape[0], net.img_channels, net.img_resolution, net.img_resolution],
                    generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * sigmas[0]
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        denoised = net(x.to(torch.float32), sigma.reshape(1).to(torch.float32), labels).to(torch.float64)
        x = x + (sigma_next - sigma) * (x - denoised) / sigma
    return x


def test_training_run_learns_and_writes_edm_snapshots(data, tmp_path):
    res = run_cli([f'--outdir={tmp_path / "runs"}', f'--data={data}', '--cond=1', *TINY_NET, '--batch=32',
                   '--duration=0.004', '--tick=1', '--snap=2', '--dump=2', '--lr=2e-3', '--lr-rampup=1',
                   '--ema=0.0005', '--workers=0', '--seed=1', '--desc=tiny'])
    assert res.exit_code == 0, res.output
    [run_dir] = glob.glob(str(tmp_path / 'runs' / '00000-quadrants-cond-ddpmpp-edm-gpus1-batch32-fp32-tiny'))
    files = sorted(os.listdir(run_dir))
    assert files == ['log.txt', 'network-snapshot-000000.pkl', 'network-snapshot-000002.pkl', 'network-snapshot-000004.pkl',
                     'stats.jsonl', 'training-state-000002.pt', 'training-state-000004.pt', 'training_options.json']
    with open(os.path.join(run_dir, 'log.txt')) as f:
        log = f.read()
    assert 'tick 4' in log and 'sec/kimg' in log and 'cpumem' in log and 'Exiting...' in log

    # Loss goes down: mean of the second tick (kimg 0-1) against the last (kimg 3-4).
    stats = read_stats(run_dir)
    assert [s['Progress/tick']['mean'] for s in stats] == [0, 1, 2, 3, 4]
    losses = [s['Loss/loss']['mean'] for s in stats]
    assert losses[-1] < 0.75 * losses[1], losses

    # EDM's snapshot layout, loadable by the toolkit's loader and by executing the stored code.
    snapshot = os.path.join(run_dir, 'network-snapshot-000004.pkl')
    data_dict = loader.load_network_pickle(snapshot)
    assert sorted(data_dict) == ['augment_pipe', 'dataset_kwargs', 'ema', 'loss_fn']
    assert type(data_dict['loss_fn']).__name__ == 'EDMLoss' and data_dict['augment_pipe'].p == 0.12
    assert data_dict['dataset_kwargs']['path'] == data and data_dict['dataset_kwargs']['use_labels'] is True
    with open(snapshot, 'rb') as f:
        raw = pickle.load(f)
    assert type(raw['ema']).__name__ == 'EDMPrecond' and type(raw['augment_pipe']).__name__ == 'AugmentPipe'

    # The EMA network samples images like the data: one bright quadrant each (class conditioning needs longer).
    net = loader.load_network(snapshot)
    assert net.label_dim == 4 and net.img_resolution == 8 and net.img_channels == 1
    labels = torch.eye(4).repeat(4, 1)
    with torch.no_grad():
        images = euler_sample(net, labels)
    assert images.shape == (16, 1, 8, 8) and torch.isfinite(images).all()
    with torch.no_grad():
        images2 = euler_sample(raw['ema'].eval(), labels)
    assert torch.allclose(images, images2, atol=1e-4)
    quadrants = images.reshape(16, 2, 4, 2, 4).mean(dim=(2, 4)).reshape(16, 4).sort(dim=1).values
    assert ((quadrants[:, 3] - quadrants[:, 2]) > 0.3).sum() >= 10, quadrants


def test_resume_continues_exactly(data, tmp_path):
    args = [f'--outdir={tmp_path}', f'--data={data}', '--cond=1', *TINY_NET, '--batch=32', '--batch-gpu=16',
            '--duration=0.004', '--tick=1', '--snap=4', '--dump=2', '--lr=2e-3', '--lr-rampup=1', '--ema=0.0005',
            '--dropout=0.2', '--workers=1', '--seed=7']
    train_cpu(tmp_path / 'full', args)
    train_cpu(tmp_path / 'resumed', [*args, f'--resume={tmp_path / "full" / "training-state-000002.pt"}'])
    full = tl.load_state_dump(tmp_path / 'full' / 'training-state-000004.pt')
    resumed = tl.load_state_dump(tmp_path / 'resumed' / 'training-state-000004.pt')
    assert full['cur_nimg'] == resumed['cur_nimg'] == 4000 and full['cur_tick'] == resumed['cur_tick'] == 5
    for key in ('net', 'ema'):
        assert full[key].keys() == resumed[key].keys()
        for name in full[key]:
            assert torch.equal(full[key][name], resumed[key][name]), f'{key}.{name}'
    assert full['optimizer_state']['state'][0]['step'] == resumed['optimizer_state']['state'][0]['step']
    # The resumed run keeps the tick schedule: it writes the same later snapshot, byte for byte in its weights.
    assert sorted(os.listdir(tmp_path / 'resumed')) == ['network-snapshot-000004.pkl', 'stats.jsonl', 'training-state-000004.pt']
    a = loader.load_network(tmp_path / 'full' / 'network-snapshot-000004.pkl')
    b = loader.load_network(tmp_path / 'resumed' / 'network-snapshot-000004.pkl')
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_two_process_ddp_matches_one_process(data, tmp_path, repo_root):
    args = [f'--data={data}', '--cond=1', *TINY_NET, '--batch=16', '--duration=0.0002', '--tick=1', '--lr=2e-3',
            '--lr-rampup=0.05', '--ema=0.0001', '--dropout=0', '--workers=0', '--seed=5', '--nosubdir']
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py',
                           f'--outdir={tmp_path / "ddp"}', *args], cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'Number of processes:     2' in proc.stdout
    train_cpu(tmp_path / 'single', [f'--outdir={tmp_path / "single"}', *args, '--batch-gpu=8'])
    ddp = tl.load_state_dump(tmp_path / 'ddp' / 'training-state-000000.pt')
    single = tl.load_state_dump(tmp_path / 'single' / 'training-state-000000.pt')
    assert ddp['cur_nimg'] == single['cur_nimg'] == 208
    for key in ('net', 'ema'):
        for name in single[key]:
            torch.testing.assert_close(ddp[key][name], single[key][name], rtol=0, atol=1e-4, msg=f'{key}.{name}')
    a = loader.load_network(tmp_path / 'ddp' / 'network-snapshot-000000.pkl')
    b = loader.load_network(tmp_path / 'single' / 'network-snapshot-000000.pkl')
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-4)
    # The stats of both runs cover the same 208 images with the same noise.
    assert read_stats(tmp_path / 'ddp')[-1]['Loss/loss']['num'] == read_stats(tmp_path / 'single')[-1]['Loss/loss']['num']

#----------------------------------------------------------------------------
# Building blocks.


def test_sampler_is_resumable_and_split_across_ranks():
    def take(sampler, count):
        it = iter(sampler)
        return [next(it) for _ in range(count)]
    stream = take(tl.ResumableSampler(10, seed=3), 35)
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10)) and stream[:10] != stream[10:20]
    assert take(tl.ResumableSampler(10, seed=3, start=17), 18) == stream[17:]
    ranks = [take(tl.ResumableSampler(10, rank=r, num_replicas=3, seed=3, start=6), 9) for r in range(3)]
    assert ranks[0] == stream[6::3][:9] and ranks[1] == stream[7::3][:9] and ranks[2] == stream[8::3][:9]
    assert take(tl.ResumableSampler(10, seed=4), 10) != stream[:10]


class _ScaledIdentity(torch.nn.Module):
    def forward(self, x, sigma, labels, augment_labels=None):
        return x * 0.5


@pytest.mark.parametrize('loss_class', [EDMLoss, VPLoss, VELoss])
def test_losses_depend_only_on_each_images_seed(loss_class):
    images = torch.randn(6, 1, 8, 8)
    pipe = AugmentPipe(p=0.5, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    seeds = [11, 12, 13, 14, 15, 16]
    whole = loss_class()(_ScaledIdentity(), images, None, augment_pipe=pipe, rng=SampleRNG(seeds))
    parts = [loss_class()(_ScaledIdentity(), images[i:i + 2], None, augment_pipe=pipe, rng=SampleRNG(seeds[i:i + 2])) for i in (0, 2, 4)]
    torch.testing.assert_close(whole, torch.cat(parts), rtol=1e-3, atol=1e-4)  # padding depends on the batch
    assert whole.shape == images.shape and (whole >= 0).all()
    other = loss_class()(_ScaledIdentity(), images, None, augment_pipe=pipe, rng=SampleRNG([s + 100 for s in seeds]))
    assert not torch.allclose(whole, other)
    torch.manual_seed(0)
    assert loss_class()(_ScaledIdentity(), images, None).shape == images.shape  # global RNG, as in EDM


def test_edm_loss_weighting():
    """EDM loss at a fixed sigma: lambda(sigma) * |D - y|^2 with lambda = (sigma^2 + 0.25) / (0.5 sigma)^2."""
    loss_fn = EDMLoss(P_mean=0.0, P_std=0.0)  # sigma = 1
    images = torch.zeros(2, 1, 4, 4)

    class Zero(torch.nn.Module):
        def forward(self, x, sigma, labels, augment_labels=None):
            assert torch.allclose(sigma, torch.ones_like(sigma)) and augment_labels is None
            return torch.ones_like(x)
    loss = loss_fn(Zero(), images, None, rng=SampleRNG([1, 2]))
    torch.testing.assert_close(loss, torch.full_like(images, 1.25 / 0.25))


def test_augment_pipe_labels_and_identity():
    images = torch.rand(8, 3, 16, 16)
    config = dict(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    out, labels = AugmentPipe(p=0, **config)(images, rng=SampleRNG(range(8)))
    assert labels.shape == (8, 9) and not labels.any()
    torch.testing.assert_close(out, images, rtol=0, atol=1e-5)  # resampled as in EDM, but with identity maps

    # x-flip label 1 <=> flipped image.
    out, labels = AugmentPipe(p=1, xflip=1)(images, rng=SampleRNG(range(8)))
    assert 0 < labels.sum() < 8
    for img, res, w in zip(images, out, labels[:, 0]):
        assert torch.equal(res, img.flip(2) if w == 1 else img)

    # The geometric resampling path with an identity transform leaves smooth images nearly unchanged.
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing='ij')
    smooth = torch.stack([torch.sin(xx * 2), torch.cos(yy * 2), xx * yy])[None].repeat(2, 1, 1, 1)
    out, labels = AugmentPipe(p=1, scale=1, scale_std=0)(smooth, rng=SampleRNG([0, 1]))
    assert out.shape == smooth.shape and labels.shape == (2, 1)  # labels report w; scale_std=0 makes it a no-op
    assert (out - smooth)[:, :, 2:-2, 2:-2].abs().max() < 0.02

    # Rotation by w = pi turns the image upside down (up to the filters' sub-pixel blur, as in EDM).
    out, labels = AugmentPipe(p=1, rotate_frac=1, rotate_frac_max=1)(smooth, rng=_Const(1.0))
    assert (out - smooth.flip(2, 3))[:, :, 2:-2, 2:-2].abs().max() < 0.06
    assert (out - smooth)[:, :, 2:-2, 2:-2].abs().max() > 0.5
    torch.testing.assert_close(labels, torch.tensor([[-2.0, 0.0]] * 2), atol=1e-6, rtol=0)

    # Color transformations on grayscale images: contrast c scales the values.
    gray = torch.rand(4, 1, 8, 8)
    out, labels = AugmentPipe(p=1, contrast=1, contrast_std=1)(gray, rng=_Const(0.5))
    torch.testing.assert_close(out, gray * 2 ** 0.5)


class _Const:
    """An rng whose draws are all one value (rand < 1 always passes the probability gates)."""

    def __init__(self, value):
        self.value = value

    def rand(self, size):
        return torch.full(list(size), min(self.value, 1 - 1e-7))

    def randn(self, size):
        return torch.full(list(size), self.value)
