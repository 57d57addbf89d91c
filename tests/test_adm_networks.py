"""guided-diffusion (ADM) checkpoints: flags, state-dict mapping, ADMPrecond, conversion.

The tests build ADM state dicts themselves from guided-diffusion's construction rules
(`adm_state_shapes` below, written from the architecture, not from networks/adm.py), so a
wrong mapping fails here; docs/adm.md records the parity measured against the original code.
"""

import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import convert
from adm_helpers import TINY, adm_state_shapes, random_state, shapes_of
from networks import adm, edm as networks
from safeload import networks as loader

TINY_VARIANTS = {
    'new order, ch/head, learned sigma': TINY,
    'legacy order, 2 heads, up 1, linear, cond': ('--image_size 16 --num_channels 64 --channel_mult 1,2 --num_res_blocks 1 '
                                                   '--attention_resolutions 16,8 --num_heads 2 --num_heads_upsample 1 '
                                                   '--class_cond True --num_classes 5'),
    'conv resampling, no scale-shift, 3 levels': ('--image_size 16 --num_channels 32 --channel_mult 1,1,2 --num_res_blocks 2 '
                                                  '--attention_resolutions 4 --num_heads 1 --use_scale_shift_norm False'),
}

#----------------------------------------------------------------------------
# Flags.


def test_flags_defaults_are_guided_diffusions():
    flags = adm.parse_adm_flags('')
    assert (flags.image_size, flags.num_channels, flags.num_res_blocks, flags.num_heads, flags.num_head_channels) == (64, 128, 2, 4, -1)
    assert (flags.attention_resolutions, flags.use_scale_shift_norm, flags.resblock_updown) == ('16,8', True, False)
    assert (flags.learn_sigma, flags.noise_schedule, flags.diffusion_steps, flags.dropout) == (False, 'linear', 1000, 0.0)
    assert adm.channel_mult(flags) == (1, 2, 3, 4)
    assert adm.channel_mult(adm.parse_adm_flags('--image_size 32')) == (1, 2, 2, 2)
    assert adm.channel_mult(adm.parse_adm_flags('--image_size 512 --num_channels 256')) == (0.5, 1, 1, 2, 2, 4, 4)
    # Booleans as guided-diffusion's str2bool reads them; both --flag value and --flag=value.
    for text, value in (('True', True), ('false', False), ('y', True), ('0', False), ('YES', True)):
        assert adm.parse_adm_flags(f'--learn_sigma={text}').learn_sigma is value
    # Flags of training and of the forks' sampling scripts are accepted and ignored.
    flags = adm.parse_adm_flags('--lr 1e-4 --batch_size 64 --input_pertub 0.1 --eps_scaler 1.017 --window 80 '
                                '--model_path x.pt --data_type cifar10 --model_type adm --use_ddim True')
    assert flags == adm.parse_adm_flags('')
    # A preset gives the flags, explicit flags override them.
    assert adm.parse_adm_flags('--dropout 0.0', preset='cifar10-32').dropout == 0.0
    assert adm.parse_adm_flags(preset='cifar10-32').dropout == 0.3


def test_attention_resolutions_follow_guided_diffusions_rounding():
    # ds = image_size // r: 24 at 64 pixels is ds 2, i.e. attention at 32x32; 48 gives ds 1.
    flags = adm.parse_adm_flags('--image_size 64 --attention_resolutions 24,8')
    assert adm.attention_resolutions(flags) == [32, 8]
    assert adm.attention_resolutions(adm.parse_adm_flags('--image_size 64 --attention_resolutions 48')) == [64]
    assert adm.attention_resolutions(adm.parse_adm_flags('--image_size 64 --attention_resolutions 3')) == []


@pytest.mark.parametrize('flags, message', [
    ('--num_chanels 128', 'unrecognized arguments: --num_chanels'),
    ('--learn_sigma maybe', 'boolean value expected'),
    ('--num_channels 12.5', 'invalid int value'),
    ('--noise_schedule sqrt', 'noise_schedule must be linear or cosine'),
    ('--image_size 48', 'no default --channel_mult for --image_size 48'),
    ('--image_size 36 --channel_mult 1,2,2,2', 'cannot be halved 3 times'),
    ('--num_channels 48', 'multiple of 32'),
    ('--num_channels 96 --num_heads 5 --channel_mult 1,2', 'cannot be split into 5 heads'),
    ('--num_channels 96 --num_head_channels 64', 'cannot have --num_head_channels 64'),
    ('--num_channels 64 --channel_mult 1,2 --num_heads 2 --num_heads_upsample 3 --attention_resolutions 64',
     'split into 3 heads (--num_heads_upsample)'),
    ('--predict_xstart True', 'not supported'),
    ('--dropout 1.5', 'dropout must be in'),
    ('--channel_mult 1,x', 'comma-separated integers'),
    ('--image_size "unclosed', 'cannot split'),
])
def test_bad_flags_are_one_line(flags, message):
    with pytest.raises(adm.ADMError, match=message.replace('(', r'\(').replace(')', r'\)')) as info:
        adm.parse_adm_flags(flags)
    assert '\n' not in str(info.value)

#----------------------------------------------------------------------------
# The state dict mapping, for every published configuration at full size (no memory used).


@pytest.mark.parametrize('preset', list(adm.PRESETS))
@pytest.mark.parametrize('order', ['new', 'legacy'])
def test_every_published_configuration_maps_key_by_key(preset, order):
    flags = adm.parse_adm_flags(f'--use_new_attention_order {order == "new"}', preset=preset)
    with torch.device('meta'):
        net = adm.build_network(flags)
    expected, heads = shapes_of(flags)
    ours = net.state_dict()
    specs = adm.tensor_map(net)
    mapped = {spec.adm: tuple(adm.adm_shape(spec, ours[spec.ours].shape)) for spec in specs}
    assert mapped == expected  # every tensor consumed, none invented, shapes right
    assert len({spec.ours for spec in specs}) == len(specs)
    unmapped = set(ours) - {spec.ours for spec in specs}
    assert unmapped and all(name.endswith('resample_filter') for name in unmapped)  # buffers, not weights
    for spec in specs:
        if spec.kind == 'qkv':
            assert spec.heads == heads[spec.adm.rsplit('.qkv.', 1)[0]]


def test_published_parameter_counts():
    # Sizes of the published models (random weights in the published shapes).
    counts = {}
    for preset in ('cifar10-32', 'imagenet-64', 'imagenet-128'):
        with torch.device('meta'):
            net = adm.build_network(adm.parse_adm_flags(preset=preset))
        counts[preset] = sum(p.numel() for p in net.parameters())
    assert counts == {'cifar10-32': 57094662, 'imagenet-64': 295904454, 'imagenet-128': 421529606}


@pytest.mark.parametrize('new_order', [True, False])
def test_qkv_layouts_give_guided_diffusions_attention(new_order):
    # One attention block: guided-diffusion's QKV attention written out here from its definition.
    torch.manual_seed(0)
    c, heads, n, hw = 64, 4, 2, 4
    block = networks.UNetBlock(in_channels=c, out_channels=c, emb_channels=8, attention=True, num_heads=heads,
                               min_channels_per_group=1).eval()
    w, b = torch.randn(3 * c, c, 1), torch.randn(3 * c)
    spec = adm.Tensor('qkv.weight', 'qkv.weight', 'qkv', heads)
    with torch.no_grad():
        block.qkv.weight.copy_(adm.to_ours(spec, w, new_order))
        block.qkv.bias.copy_(adm.to_ours(spec, b, new_order))
        block.proj.weight.copy_(torch.eye(c)[..., None, None])
        block.proj.bias.zero_()
        x = torch.randn(n, c, hw, hw)
        qkv = torch.einsum('oc,nct->not', w[..., 0], block.norm2(x).reshape(n, c, -1)) + b[None, :, None]
        ch = c // heads
        if new_order:
            q, k, v = (part.reshape(n * heads, ch, -1) for part in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(n * heads, 3 * ch, -1).split(ch, dim=1)
        weights = torch.softmax(torch.einsum('bct,bcs->bts', q, k) / math.sqrt(ch), dim=-1)
        expected = x + torch.einsum('bts,bcs->bct', weights, v).reshape(n, c, hw, hw)
        got = block._attend(x)  # pylint: disable=protected-access
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(adm.to_adm(spec, adm.to_ours(spec, w, new_order), new_order), w)

#----------------------------------------------------------------------------
# ADMPrecond: schedules, the grid, and D.


def test_beta_and_alpha_bar_tables_against_closed_forms():
    t = np.arange(1000)
    betas = networks.adm_betas('linear', 1000)
    assert betas.dtype == np.float64 and betas[0] == 1e-4 and betas[-1] == 0.02
    assert np.allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=0, atol=1e-15)
    assert np.allclose(networks.adm_betas('linear', 250), np.linspace(4e-4, 0.08, 250), rtol=0, atol=0)
    f = lambda s: np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2
    alpha_bar = networks.adm_alpha_bar('cosine', 1000)
    # Unclipped steps telescope: alpha_bar_t = f((t+1)/T) / f(0); beta is clipped to 0.999 at the end only.
    clipped = networks.adm_betas('cosine', 1000) == 0.999
    assert clipped.sum() == 1 and clipped[-1]
    assert np.allclose(alpha_bar[:-1], f((t[:-1] + 1) / 1000) / f(0), rtol=1e-12, atol=0)
    assert np.isclose(alpha_bar[-1], alpha_bar[-2] * 0.001, rtol=1e-12)
    linear = networks.adm_alpha_bar('linear', 1000)
    assert np.array_equal(linear, np.cumprod(1 - betas))
    with pytest.raises(ValueError, match='unknown noise schedule'):
        networks.adm_betas('quadratic', 1000)


def test_grid_rounding_and_coefficients():
    net = adm.build_network(adm.parse_adm_flags(TINY))
    sigmas = net.sigmas
    assert sigmas.dtype == torch.float64 and len(sigmas) == 1000
    assert np.array_equal(sigmas.numpy(), np.sqrt(1.0 / net.alpha_bar.numpy() - 1))  # guided-diffusion's sqrt_recipm1_alphas_cumprod
    assert (net.sigma_min, net.sigma_max) == (float(sigmas[0]), float(sigmas[-1]))
    assert torch.all(sigmas[1:] > sigmas[:-1])
    # Grid values round to themselves, points between two levels to the nearer one.
    assert torch.equal(net.round_sigma(sigmas), sigmas)
    assert torch.equal(net.round_sigma(sigmas, return_index=True), torch.arange(1000))
    mid = 0.5 * (sigmas[:-1] + sigmas[1:])
    assert torch.equal(net.round_sigma(mid - 1e-9, return_index=True), torch.arange(999))
    assert torch.equal(net.round_sigma(mid + 1e-9, return_index=True), torch.arange(1, 1000))
    assert int(net.round_sigma(torch.tensor(1e9), return_index=True)) == 999
    assert int(net.round_sigma(torch.tensor(0.0), return_index=True)) == 0
    sigma = sigmas[[3, 300]].to(torch.float32).reshape(-1, 1, 1, 1)
    c_skip, c_out, c_in, c_noise = net.coefficients(sigma)
    assert c_skip == 1 and torch.equal(c_out, -sigma) and torch.allclose(c_in, 1 / (1 + sigma ** 2).sqrt())
    assert c_noise.flatten().tolist() == [3.0, 300.0]
    rescaled = adm.build_network(adm.parse_adm_flags(f'{TINY} --diffusion_steps 250 --rescale_timesteps True'))
    assert rescaled.coefficients(rescaled.sigmas[[10]].float())[3].tolist() == [40.0]


@pytest.mark.parametrize('variant', list(TINY_VARIANTS))
def test_denoiser_is_pred_xstart_and_exposes_the_variance(variant):
    flags = adm.parse_adm_flags(TINY_VARIANTS[variant])
    net = adm.load_state_dict(adm.build_network(flags), random_state(flags), flags)
    torch.manual_seed(1)
    n = 3
    labels = torch.eye(net.label_dim)[torch.tensor([0, 2, 4])] if net.label_dim else None
    for t in (0, 250, 999):
        x_t = torch.randn(n, 3, flags.image_size, flags.image_size)
        abar = net.alpha_bar[t]
        with torch.no_grad():
            out = net.model(x_t, torch.full([n], float(t)), labels)
            eps = out[:, :3]
            expected = (1 / abar).sqrt() * x_t - (1 / abar - 1).sqrt() * eps  # guided-diffusion's pred_xstart
            denoised, v = net(x_t.double() / abar.sqrt(), net.sigmas[t].expand(n), labels, return_var_values=True)
        assert torch.allclose(denoised, expected.float(), rtol=0, atol=1e-5 * float(expected.abs().max()))
        assert (v is None) == (not flags.learn_sigma)
        if flags.learn_sigma:
            assert torch.allclose(v, out[:, 3:], rtol=0, atol=1e-5)


def test_edm_solvers_run_on_an_adm_network():
    from samplers import Sampler, SamplerOptions
    flags = adm.parse_adm_flags(TINY)
    net = adm.load_state_dict(adm.build_network(flags), random_state(flags), flags)
    sampler = Sampler(net, SamplerOptions(num_steps=4, solver='heun'))
    assert sampler.sigmas[0] <= net.sigma_max and all(float(s) in net.sigmas.tolist() for s in sampler.sigmas[:-1])
    images = sampler(torch.randn(2, 3, 16, 16))
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()

#----------------------------------------------------------------------------
# Checkpoints and conversion.


def _save(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


def _run_convert(repo_root, *args):
    return subprocess.run([sys.executable, os.path.join(repo_root, 'convert.py'), *args], capture_output=True, text=True)


def test_conversion_round_trip_gives_identical_outputs(tmp_path):
    flags = adm.parse_adm_flags(TINY_VARIANTS['legacy order, 2 heads, up 1, linear, cond'])
    state = random_state(flags, seed=3, num_classes=5)
    src = _save(tmp_path, 'ema_0.9999_000100.pt', state)
    pkl, pt, pkl2 = (str(tmp_path / name) for name in ('a.pkl', 'b.pt', 'c.pkl'))
    assert convert.convert(src, pkl, adm_flags=TINY_VARIANTS['legacy order, 2 heads, up 1, linear, cond']) == 'pickle'
    assert convert.convert(pkl, pt) == 'weights'
    assert convert.convert(pt, pkl2) == 'pickle'
    with open(pkl, 'rb') as f:
        assert isinstance(pickle.load(f)['ema'], networks.ADMPrecond)  # EDM's snapshot layout
    nets = [loader.load_network(path) for path in (pkl, pt, pkl2)]
    assert all(isinstance(net, networks.ADMPrecond) and net.label_dim == 5 for net in nets)
    x, sigma = torch.randn(2, 3, 16, 16) * 3, nets[0].sigmas[[100, 700]]
    labels = torch.eye(5)[[1, 4]]
    outputs = [net(x, sigma, labels) for net in nets]
    assert all(torch.equal(outputs[0], out) for out in outputs[1:])
    # And back to guided-diffusion's layout, tensor for tensor.
    back = adm.adm_state_dict(nets[2], flags)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_full_size_cifar10_checkpoint_converts_through_the_cli(tmp_path, repo_root):
    flags = adm.parse_adm_flags(preset='cifar10-32')
    src = _save(tmp_path, 'cifar10.pt', random_state(flags))
    res = _run_convert(repo_root, f'--src={src}', f'--dest={tmp_path / "cifar10.pkl"}', '--adm-preset=cifar10-32')
    assert res.returncode == 0, res.stderr
    net = loader.load_network(str(tmp_path / 'cifar10.pkl'))
    assert sum(p.numel() for p in net.parameters()) == 57094662 and net.learn_sigma and net.label_dim == 0


@pytest.mark.parametrize('case, message', [
    ('missing', 'lacks 1 tensor(s) the flags need: input_blocks.1.0.in_layers.2.weight'),
    ('extra', 'has 1 tensor(s) the flags do not use: label_emb.weight'),
    ('shape', 'out.2.weight has shape [3, 32, 3, 3], the flags give [6, 32, 3, 3]'),
    ('integer', 'is not a floating-point tensor'),
    ('list', 'does not hold a state dict of tensors (found list)'),
    ('code', 'loading it would run code from the file'),
    ('garbage', 'cannot read'),
    ('no-file', 'no such file'),
    ('bad-flag', 'unrecognized arguments: --num_chanels'),
])
def test_conversion_errors_are_one_line_and_write_nothing(tmp_path, repo_root, case, message):
    flags = adm.parse_adm_flags(TINY)
    state = random_state(flags)
    extra_flags = ''
    if case == 'missing':
        del state['input_blocks.1.0.in_layers.2.weight']
    elif case == 'extra':
        state['label_emb.weight'] = torch.zeros(10, 128)
    elif case == 'shape':
        state['out.2.weight'] = state['out.2.weight'][:3]
    elif case == 'integer':
        state['out.2.bias'] = torch.zeros(6, dtype=torch.int64)
    elif case == 'list':
        state = [state]
    elif case == 'code':
        state = dict(model=loader.NetworkLoadError('x'))  # any object whose reconstruction runs code
    elif case == 'bad-flag':
        extra_flags = ' --num_chanels 64'
    src = str(tmp_path / 'model.pt')
    if case == 'garbage':
        (tmp_path / 'model.pt').write_bytes(b'PK\x03\x04 not really a zip')
    elif case != 'no-file':
        torch.save(state, src)
    dest = tmp_path / 'out.pkl'
    res = _run_convert(repo_root, f'--src={src}', f'--dest={dest}', f'--adm-flags={TINY}{extra_flags}')
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('Error: ') and 'Traceback' not in res.stderr, res.stderr
    assert message in lines[0]
    assert not dest.exists() and os.listdir(tmp_path) == (['model.pt'] if case != 'no-file' else [])


def test_flags_far_larger_than_the_checkpoint_fail_at_once_and_ddp_prefixes_load(tmp_path):
    flags = adm.parse_adm_flags(TINY)
    state = random_state(flags)
    torch.save(state, tmp_path / 'model.pt')
    # 65536 channels would be ~10^11 weights: refused from the flags alone (networks/adm.py bounds).
    with pytest.raises(adm.ADMError, match='above the limit of 16384'):
        adm.parse_adm_flags(TINY.replace('--num_channels 32', '--num_channels 65536'))
    # Within the bounds but far larger than the file: refused from the estimate, before building.
    big = adm.parse_adm_flags(TINY.replace('--num_channels 32', '--num_channels 2048'))
    with pytest.raises(adm.ADMError, match=r'the flags describe about [\d,]+ parameters, the checkpoint holds'):
        adm.load_adm_checkpoint(str(tmp_path / 'model.pt'), big)
    torch.save({f'module.{k}': v for k, v in state.items()}, tmp_path / 'ddp.pt')  # saved from a DDP wrapper
    a, b = (adm.load_adm_checkpoint(str(tmp_path / name), flags) for name in ('model.pt', 'ddp.pt'))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
