"""samplers/fast.py and generate.py's fast paths: inference_mode is bit-identical, channels_last,
bf16 autocast and torch.compile (through a cheap backend) stay within stated tolerances, options
fail with one line; and the windowed time-shift search picks what a full-grid search picks.

Tolerances on the tiny random network of test_samplers (6 Heun steps, 11 evaluations), in uint8
levels against the plain path: channels_last and compile at most 1 level on at most 1% of the
pixels (float rounding only); bf16 autocast at most 8 levels on at most 50% of the pixels
(measured: 2 levels, 18%). docs/performance.md has the figures on real-size networks.
"""

import json

import numpy as np
import pytest
import torch

import generate
from samplers import Sampler, SamplerOptions, SeedNoise, latents_and_labels, reference_grid
from samplers.fast import FastModule, FastPathError, FastPaths, prepare_network
from samplers.time_shift import select_sigma
from test_generate import cli, pickles, pngs, pixels  # noqa: F401 (pickles is a fixture)
from test_samplers import tiny_net
from torch_utils import images as image_io

OPTIONS = SamplerOptions(num_steps=6, S_churn=5)
SEEDS = list(range(6))


@pytest.fixture(scope='module')
def net():
    return tiny_net(label_dim=3)


def sample(net, fast, options=OPTIONS, seeds=SEEDS):
    noise = SeedNoise(seeds)
    latents, labels = latents_and_labels(noise, [net.img_channels, net.img_resolution, net.img_resolution],
                                         net.label_dim)
    return Sampler(net, options, fast=fast)(latents, labels, noise.randn_like)


@pytest.fixture(scope='module')
def plain(net):
    """Images of the plain path (torch.no_grad, eager float32 network, as EDM)."""
    return sample(net, FastPaths(inference_mode=False))


def pixel_diff(a, b):
    """(max uint8 difference, fraction of uint8 values that differ)."""
    diff = np.abs(image_io.to_uint8(a).astype(int) - image_io.to_uint8(b).astype(int))
    return int(diff.max()), float((diff > 0).mean())

#----------------------------------------------------------------------------
# Each path against the plain one.


def test_inference_mode_is_bit_identical(net, plain):
    options = SamplerOptions(num_steps=5, S_churn=5, eps_scaler=1.005, ts_window=20, ts_cutoff=0.5)
    assert FastPaths().inference_mode  # the default
    images = sample(net, FastPaths(), options)
    assert torch.equal(images, sample(net, FastPaths(inference_mode=False), options))
    assert torch.equal(sample(net, FastPaths()), plain)
    assert not images.is_inference()
    images += 1  # an ordinary tensor: callers may change it in place


COMPILED_GRAPHS = []


def _recording_backend(gm, example_inputs):
    """A torch.compile backend ('test_recording') that runs the traced graph eagerly and records
    it: proof that the compiled path ran, without a C compiler or compile time."""
    COMPILED_GRAPHS.append(gm)
    return gm.forward


if 'test_recording' not in torch.compiler.list_backends(exclude_tags=()):
    torch._dynamo.register_backend(_recording_backend, name='test_recording')


@pytest.fixture
def recording_backend():
    COMPILED_GRAPHS.clear()
    torch._dynamo.reset()
    yield COMPILED_GRAPHS
    torch._dynamo.reset()


@pytest.mark.parametrize('fast, max_levels, max_fraction', [
    (FastPaths(channels_last=True), 1, 0.01),
    (FastPaths(compile='test_recording'), 1, 0.01),
    (FastPaths(autocast='bf16'), 8, 0.5),
    (FastPaths(channels_last=True, autocast='bf16', compile='test_recording'), 8, 0.5),
], ids=['channels_last', 'compile', 'bf16', 'all'])
def test_fast_path_within_tolerance(net, plain, fast, max_levels, max_fraction, recording_backend):
    seen = []  # (input, output) of the U-Net's first convolution, when not compiled (a hook would recompile)
    conv = net.model.enc['8x8_conv']
    hook = None if fast.compile else conv.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    try:
        images = sample(net, fast)
    finally:
        if hook is not None:
            hook.remove()
    assert images.dtype == torch.float64 and images.shape == plain.shape
    levels, fraction = pixel_diff(images, plain)
    assert levels <= max_levels and fraction <= max_fraction, (levels, fraction)
    # The path was taken: the graph was compiled, or the U-Net's first convolution saw the
    # chosen memory format and computed in the chosen dtype; bf16 rounding moved the images.
    if fast.compile:
        assert recording_backend
    else:
        assert len(seen) == OPTIONS.nfe
        conv_in, conv_out = seen[0]
        assert conv_in.dtype == torch.float32
        assert conv_in.is_contiguous(memory_format=torch.channels_last) == fast.channels_last
        assert conv_out.dtype == (torch.bfloat16 if fast.autocast == 'bf16' else torch.float32)
    if fast.autocast == 'bf16':
        assert not torch.equal(images, plain) and levels >= 1
    print(f'{fast}: max {levels} levels, {fraction:.2%} of values differ')


def test_prepared_network_leaves_net_alone_and_keeps_dtypes(net):
    before = {name: t.clone() for name, t in net.state_dict().items()}
    fast_net = prepare_network(net, FastPaths(channels_last=True, autocast='bf16'))
    assert type(fast_net) is type(net) and fast_net is not net and isinstance(fast_net.model, FastModule)
    assert isinstance(net.model, torch.nn.Module) and not isinstance(net.model, FastModule)
    assert all(torch.equal(before[name], t) and t.is_contiguous() for name, t in net.state_dict().items())
    assert fast_net.sigma_data == net.sigma_data and fast_net.label_dim == net.label_dim
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    sigma = torch.tensor(2.0, dtype=torch.float64)
    labels = torch.eye(3)[[0, 2]]
    out = fast_net(x, sigma, labels)  # EDM's preconditioner asserts the U-Net's dtype
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, net(x, sigma, labels), atol=0.05, rtol=0)
    assert prepare_network(net, FastPaths()) is net  # nothing on: the network itself


def test_fast_module_wraps_a_network_without_inner_model():
    class Plain(torch.nn.Module):
        def forward(self, x, sigma, class_labels=None):
            return torch.nn.functional.avg_pool2d(x.to(torch.float32), 3, 1, 1)

    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    wrapped = prepare_network(Plain(), FastPaths(channels_last=True, autocast='bf16'))
    assert isinstance(wrapped, FastModule)
    out = wrapped(x, 1.0)
    assert out.dtype == torch.float64  # the input's dtype
    torch.testing.assert_close(out, Plain()(x, 1.0).double(), atol=0.05, rtol=0)


def test_channels_last_images_do_not_depend_on_batch_size(net):
    fast = FastPaths(channels_last=True)
    whole = sample(net, fast)
    parts = torch.cat([sample(net, fast, seeds=SEEDS[:2]), sample(net, fast, seeds=SEEDS[2:])])
    assert pixel_diff(whole, parts)[0] <= 1

#----------------------------------------------------------------------------
# Options.


@pytest.mark.parametrize('fast, device, message', [
    (FastPaths(autocast='fp8'), 'cpu', '--autocast must be one of none|fp16|bf16'),
    (FastPaths(autocast='fp16'), 'cpu', '--autocast=fp16 needs a CUDA device'),
    (FastPaths(compile='no-such-backend'), 'cpu', 'unknown to torch.compile'),
])
def test_bad_options(net, fast, device, message):
    with pytest.raises(FastPathError, match=message):
        fast.check(device)
    with pytest.raises(FastPathError, match=message):
        Sampler(net, OPTIONS, fast=fast)


@pytest.mark.parametrize('args, message', [
    (['--autocast=fp16', '--device=cpu'], '--autocast=fp16 needs a CUDA device, not cpu'),
    (['--compile=no-such-backend'], 'unknown to torch.compile'),
    (['--autocast=fp32'], "Invalid value for '--autocast'"),
])
def test_cli_one_line_errors(tmp_path, pickles, args, message):  # noqa: F811
    result = cli(f'--network={pickles["cond"]}', f'--outdir={tmp_path / "out"}', '--seeds=0-1', '--steps=2', *args)
    assert result.exit_code != 0 and message in result.output and 'Traceback' not in result.output, result.output
    assert result.output.startswith('Error: ') and result.output.count('\n') == 1 or 'Usage:' in result.output
    assert not pngs(tmp_path)


def test_cli_fast_paths_are_recorded_and_checked_on_resume(tmp_path, pickles, recording_backend):  # noqa: F811
    args = [f'--network={pickles["cond"]}', '--seeds=0-3', '--steps=3', '--device=cpu', '--batch=2']
    plain_out, fast_out = tmp_path / 'plain', tmp_path / 'fast'
    assert cli(*args, f'--outdir={plain_out}').exit_code == 0
    with open(plain_out / generate.OPTIONS_RECORD) as f:
        assert not {'channels_last', 'autocast', 'compile'} & set(json.load(f))  # old records still match
    result = cli(*args, f'--outdir={fast_out}', '--channels-last', '--compile=test_recording')
    assert result.exit_code == 0 and 'Fast paths: channels_last, compile (test_recording)' in result.output, result.output
    assert recording_backend
    with open(fast_out / generate.OPTIONS_RECORD) as f:
        record = json.load(f)
    assert record['channels_last'] is True and record['compile'] == 'test_recording' and 'autocast' not in record
    plain, fast = pngs(plain_out), pngs(fast_out)
    assert sorted(plain) == sorted(fast) and len(plain) == 4
    for name in plain:
        assert np.abs(pixels(plain[name]) - pixels(fast[name])).max() <= 1
    # Resuming a fast folder without its fast paths (or the reverse) is refused.
    for out, extra in ((fast_out, []), (plain_out, ['--autocast=bf16'])):
        result = cli(*args[:1], '--seeds=0-5', *args[2:], f'--outdir={out}', *extra)
        assert result.exit_code == 1 and 'holds images generated with' in result.output, result.output
    assert len(pngs(fast_out)) == 4

#----------------------------------------------------------------------------
# Time shift: the windowed candidate search equals a search over the whole grid.


def full_grid_choice(x, sigma_hat, sigma_next, grid, window, signal_var):
    """The search over the whole grid (masking everything outside the window), one sample at a time."""
    grid = grid.to(torch.float64)
    center = int((grid - sigma_hat).abs().argmin())  # lowest index on ties
    levels = [sigma_hat] + grid.tolist()
    usable = [True] + [abs(j - center) <= window and g > sigma_next for j, g in enumerate(grid.tolist())]
    out = []
    for v in x.flatten(1).var(dim=1).tolist():
        costs = [abs(v - (signal_var + c * c)) if ok else float('inf') for c, ok in zip(levels, usable)]
        out.append(levels[costs.index(min(costs))])  # first minimum: sigma_hat, then grid order
    return out


def test_windowed_search_matches_full_grid_on_random_inputs():
    gen = torch.Generator().manual_seed(0)
    for trial in range(60):
        size = int(torch.randint(2, 60, [1], generator=gen))
        grid = torch.rand(size, generator=gen, dtype=torch.float64).sort(descending=True).values * 10
        if trial % 3 == 1:
            grid = grid.flip(0)  # ascending, like the iDDPM grid
        if trial % 3 == 2:
            grid = (grid * 4).round() / 4  # repeated levels: ties between candidates
        sigma_hat = float(torch.rand([], generator=gen, dtype=torch.float64)) * 10
        sigma_next = float(torch.rand([], generator=gen, dtype=torch.float64)) * sigma_hat
        window = int(torch.randint(0, size + 5, [1], generator=gen))
        signal_var = float(torch.rand([], generator=gen, dtype=torch.float64))
        x = torch.randn(8, 2, 3, 3, generator=gen, dtype=torch.float64) * (1 + 10 * torch.rand(8, 1, 1, 1, generator=gen, dtype=torch.float64))
        chosen = select_sigma(x, sigma_hat, sigma_next, grid, window, signal_var)
        assert chosen.tolist() == full_grid_choice(x, sigma_hat, sigma_next, grid, window, signal_var), trial


def test_windowed_search_on_the_reference_grid():
    grid = reference_grid('edm', 0.002, 80)
    gen = torch.Generator().manual_seed(1)
    for center in (0, 3, 500, 995, 999):
        sigma_hat = grid[center].item() * 1.0001
        sigma_next = grid[min(center + 40, 999)].item() * 0.5
        x = torch.randn(16, 3, 8, 8, generator=gen, dtype=torch.float64) * (sigma_hat ** 2 + 0.25) ** 0.5
        x *= 1 + 0.2 * torch.randn(16, 1, 1, 1, generator=gen, dtype=torch.float64)
        for window in (1, 5, 20, 2000):
            chosen = select_sigma(x, sigma_hat, sigma_next, grid, window, 0.25)
            assert chosen.tolist() == full_grid_choice(x, sigma_hat, sigma_next, grid, window, 0.25)
