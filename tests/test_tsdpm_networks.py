"""TS-DPM's DDPM backbones (networks/ddim.py, iddpm.py, score_sde.py, tsdpm.py).

The state-dict layouts are described here from each original architecture's construction rules
(ermongroup/ddim, improved-diffusion, score-SDE) and compared with what the modules build, for the
published configurations (on the meta device) and for small ones. Formulas (embeddings, attention,
the schedules, the denoiser) are recomputed here independently.
"""

import copy
import math
import os
import pickle
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import convert
import generate
from networks import ddim, iddpm, score_sde, tsdpm
from safeload import checkpoints, networks as loader, unpickle, weights

#----------------------------------------------------------------------------
# Configs: the published Model sections (TS-DPM config/*.yml) and small ones.

SCHEDULE = dict(type='linear', beta_start=0.0001, beta_end=0.02, diffusion_step=1000)
DDIM_KEYS = dict(struc='DDIM', type='simple', in_channels=3, out_ch=3, ch=128, num_res_blocks=2, attn_resolutions=[16],
                 resamp_with_conv=True, var_type='fixedlarge')
PUBLISHED = dict(
    ddim_cifar10=dict(Model=dict(DDIM_KEYS, image_size=32, ch_mult=[1, 2, 2, 2], dropout=0.1), size=32),
    ddim_celeba=dict(Model=dict(DDIM_KEYS, image_size=64, ch_mult=[1, 2, 2, 2, 4], dropout=0.1), size=64),
    ddim_church=dict(Model=dict(DDIM_KEYS, image_size=256, ch_mult=[1, 1, 2, 2, 4, 4], dropout=0.0), size=256),
    iddpm_cifar10=dict(Model=dict(struc='iDDPM', in_channels=3, model_channels=128, out_channels=6, num_res_blocks=3,
                                  attention_resolutions=[2, 4], dropout=0.3, channel_mult=[1, 2, 2, 2], dims=2,
                                  conv_resample=True, use_scale_shift_norm=True, use_checkpoint=False, num_heads=4,
                                  num_heads_upsample=4), size=32, schedule=dict(type='cosine', diffusion_step=1000)),
    pf_cifar10=dict(Model=dict(struc='PF', image_size=32, num_channels=3, nf=128, ch_mult=[1, 2, 2, 2], num_res_blocks=2,
                               attn_resolutions=[16], dropout=0.1, nonlinearity='swish', resamp_with_conv=True,
                               conditional=True, centered=True), size=32),
    pf_deep_cifar10=dict(Model=dict(struc='PF_deep', image_size=32, num_channels=3, nf=128, ch_mult=[1, 2, 2, 2],
                                    num_res_blocks=8, attn_resolutions=[16], dropout=0.1, nonlinearity='swish',
                                    resamp_with_conv=True, conditional=True, skip_rescale=True, resblock_type='biggan',
                                    progressive='none', progressive_input='none', embedding_type='positional',
                                    init_scale=0.0, combine_method='sum', fir=False, fir_kernel=[1, 3, 3, 1],
                                    continuous=True, centered=True, fourier_scale=16, scale_by_sigma=False), size=32),
)


def full_config(entry):
    return dict(Schedule=dict(entry.get('schedule', SCHEDULE)), Dataset=dict(image_size=entry['size'], channels=3),
                Model=copy.deepcopy(entry['Model']))


def small_config(struc, size=8, **model):
    """A tiny config of each backbone (widths 32, two resolutions, attention at the lower one)."""
    base = dict(
        DDIM=dict(DDIM_KEYS, image_size=size, ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[size // 2],
                  dropout=0.1),
        iDDPM=dict(PUBLISHED['iddpm_cifar10']['Model'], model_channels=32, channel_mult=[1, 2], num_res_blocks=1,
                   attention_resolutions=[2], num_heads=2, num_heads_upsample=-1, dropout=0.0),
        PF=dict(PUBLISHED['pf_cifar10']['Model'], image_size=size, nf=32, ch_mult=[1, 2], num_res_blocks=1,
                attn_resolutions=[size // 2]),
        PF_deep=dict(PUBLISHED['pf_deep_cifar10']['Model'], image_size=size, nf=32, ch_mult=[1, 2], num_res_blocks=1,
                     attn_resolutions=[size // 2]),
    )[struc]
    base.update(model)
    schedule = dict(type='cosine', diffusion_step=1000) if struc == 'iDDPM' else dict(SCHEDULE)
    return dict(Schedule=schedule, Dataset=dict(image_size=size, channels=3), Model=base)

#----------------------------------------------------------------------------
# State-dict layouts from the original construction rules.


class Shapes(dict):
    def conv(self, name, cin, cout, k=3):
        self[f'{name}.weight'], self[f'{name}.bias'] = (cout, cin, k, k), (cout,)

    def conv1d(self, name, cin, cout):
        self[f'{name}.weight'], self[f'{name}.bias'] = (cout, cin, 1), (cout,)

    def linear(self, name, cin, cout):
        self[f'{name}.weight'], self[f'{name}.bias'] = (cout, cin), (cout,)

    def norm(self, name, c):
        self[f'{name}.weight'], self[f'{name}.bias'] = (c,), (c,)

    def nin(self, name, cin, cout):
        self[f'{name}.W'], self[f'{name}.b'] = (cin, cout), (cout,)


def ddim_shapes(m):
    """ermongroup/ddim Model: widths tracked with a stack of skip widths, as the U-Net concatenates them."""
    s, ch, temb = Shapes(), m['ch'], 4 * m['ch']

    def res(name, cin, cout):
        s.norm(f'{name}.norm1', cin)
        s.conv(f'{name}.conv1', cin, cout)
        s.linear(f'{name}.temb_proj', temb, cout)
        s.norm(f'{name}.norm2', cout)
        s.conv(f'{name}.conv2', cout, cout)
        if cin != cout:
            s.conv(f'{name}.nin_shortcut', cin, cout, 1)

    def attn(name, c):
        s.norm(f'{name}.norm', c)
        for part in ('q', 'k', 'v', 'proj_out'):
            s.conv(f'{name}.{part}', c, c, 1)

    if m['type'] == 'bayesian':
        s['logvar'] = (1000,)
    s.linear('temb.dense.0', ch, temb)
    s.linear('temb.dense.1', temb, temb)
    s.conv('conv_in', m['in_channels'], ch)
    c, res_px, skips, levels = ch, m['image_size'], [ch], len(m['ch_mult'])
    for i, mult in enumerate(m['ch_mult']):
        for j in range(m['num_res_blocks']):
            res(f'down.{i}.block.{j}', c, ch * mult)
            c = ch * mult
            if res_px in m['attn_resolutions']:
                attn(f'down.{i}.attn.{j}', c)
            skips.append(c)
        if i < levels - 1:
            if m['resamp_with_conv']:
                s.conv(f'down.{i}.downsample.conv', c, c)
            skips.append(c)
            res_px //= 2
    res('mid.block_1', c, c)
    attn('mid.attn_1', c)
    res('mid.block_2', c, c)
    for i in reversed(range(levels)):
        for j in range(m['num_res_blocks'] + 1):
            res(f'up.{i}.block.{j}', c + skips.pop(), ch * m['ch_mult'][i])
            c = ch * m['ch_mult'][i]
            if res_px in m['attn_resolutions']:
                attn(f'up.{i}.attn.{j}', c)
        if i > 0:
            if m['resamp_with_conv']:
                s.conv(f'up.{i}.upsample.conv', c, c)
            res_px *= 2
    assert not skips
    s.norm('norm_out', c)
    s.conv('conv_out', c, m['out_ch'])
    return s


def iddpm_shapes(m):
    """improved-diffusion UNetModel (unconditional): input_blocks/middle_block/output_blocks/out."""
    s, mc = Shapes(), m['model_channels']
    emb = 4 * mc

    def res(name, cin, cout):
        s.norm(f'{name}.in_layers.0', cin)
        s.conv(f'{name}.in_layers.2', cin, cout)
        s.linear(f'{name}.emb_layers.1', emb, 2 * cout if m['use_scale_shift_norm'] else cout)
        s.norm(f'{name}.out_layers.0', cout)
        s.conv(f'{name}.out_layers.3', cout, cout)
        if cin != cout:
            s.conv(f'{name}.skip_connection', cin, cout, 1)

    def attn(name, c):
        s.norm(f'{name}.norm', c)
        s.conv1d(f'{name}.qkv', c, 3 * c)
        s.conv1d(f'{name}.proj_out', c, c)

    s.linear('time_embed.0', mc, emb)
    s.linear('time_embed.2', emb, emb)
    s.conv('input_blocks.0.0', m['in_channels'], mc)
    c, ds, k, skips = mc, 1, 1, [mc]
    levels = len(m['channel_mult'])
    for level, mult in enumerate(m['channel_mult']):
        for _ in range(m['num_res_blocks']):
            res(f'input_blocks.{k}.0', c, mult * mc)
            c = mult * mc
            if ds in m['attention_resolutions']:
                attn(f'input_blocks.{k}.1', c)
            skips.append(c)
            k += 1
        if level < levels - 1:
            if m['conv_resample']:
                s.conv(f'input_blocks.{k}.0.op', c, c)
            skips.append(c)
            k += 1
            ds *= 2
    res('middle_block.0', c, c)
    attn('middle_block.1', c)
    res('middle_block.2', c, c)
    k = 0
    for level in reversed(range(levels)):
        mult = m['channel_mult'][level]
        for i in range(m['num_res_blocks'] + 1):
            res(f'output_blocks.{k}.0', c + skips.pop(), mult * mc)
            c = mult * mc
            layer = 1
            if ds in m['attention_resolutions']:
                attn(f'output_blocks.{k}.1', c)
                layer = 2
            if level and i == m['num_res_blocks']:
                if m['conv_resample']:
                    s.conv(f'output_blocks.{k}.{layer}.conv', c, c)
                ds //= 2
            k += 1
    s.norm('out.0', c)
    s.conv('out.2', mc, m['out_channels'])
    return s


def score_sde_shapes(m, deep):
    """score-SDE DDPM (deep=False) or NCSN++ with biggan/ddpm blocks (deep=True): all_modules.{i}."""
    layers, nf = [], m['nf']
    temb = 4 * nf
    biggan = deep and m['resblock_type'] == 'biggan'

    def new():
        layers.append(Shapes())
        return layers[-1]

    def res(cin, cout=None, resample=False):
        cout = cout or cin
        s = new()
        s.norm('GroupNorm_0', cin)
        s.conv('Conv_0', cin, cout)
        s.linear('Dense_0', temb, cout)
        s.norm('GroupNorm_1', cout)
        s.conv('Conv_1', cout, cout)
        if biggan and (cin != cout or resample):
            s.conv('Conv_2', cin, cout, 1)
        elif not biggan and cin != cout:
            s.nin('NIN_0', cin, cout)

    def attn(c):
        s = new()
        s.norm('GroupNorm_0', c)
        for i in range(4):
            s.nin(f'NIN_{i}', c, c)

    def resample(c):
        if biggan:
            res(c, resample=True)
        else:
            s = new()
            if m['resamp_with_conv']:
                s.conv('Conv_0', c, c)

    fourier = deep and m['embedding_type'] == 'fourier'
    if fourier:
        new()['W'] = (nf,)
    if m['conditional']:
        new().linear('', 2 * nf if fourier else nf, temb)
        new().linear('', temb, temb)
    new().conv('', m['num_channels'], nf)
    sizes = [m['image_size'] // 2 ** i for i in range(len(m['ch_mult']))]
    c, skips = nf, [nf]
    for i, mult in enumerate(m['ch_mult']):
        for _ in range(m['num_res_blocks']):
            res(c, nf * mult)
            c = nf * mult
            if sizes[i] in m['attn_resolutions']:
                attn(c)
            skips.append(c)
        if i < len(sizes) - 1:
            resample(c)
            skips.append(c)
    res(c)
    attn(c)
    res(c)
    for i in reversed(range(len(sizes))):
        for _ in range(m['num_res_blocks'] + 1):
            res(c + skips.pop(), nf * m['ch_mult'][i])
            c = nf * m['ch_mult'][i]
        if sizes[i] in m['attn_resolutions']:
            attn(c)
        if i > 0:
            resample(c)
    new().norm('', c)
    new().conv('', c, m['num_channels'])
    out = {}
    for index, s in enumerate(layers):
        for name, shape in s.items():
            out[f'all_modules.{index}{name}' if name.startswith('.') else f'all_modules.{index}.{name}'] = shape
    return out


def expected_shapes(config):
    m = config['Model']
    return dict(DDIM=ddim_shapes, iDDPM=iddpm_shapes, PF=lambda m: score_sde_shapes(m, False),
                PF_deep=lambda m: score_sde_shapes(m, True))[m['struc']](m)


def layout(net):
    return {name: tuple(t.shape) for name, t in net.state_dict().items()}


@pytest.mark.parametrize('name', list(PUBLISHED))
def test_published_configurations_have_the_original_tensor_layout(name):
    config = full_config(PUBLISHED[name])
    with torch.device('meta'):
        net = tsdpm.build_backbone(config)
    assert layout(net) == expected_shapes(config)


# Parameter counts of the published networks (sums over the layouts above; DDPM's CIFAR-10 U-Net is 35.7 M).
PUBLISHED_PARAMS = dict(ddim_cifar10=35_746_307, iddpm_cifar10=52_546_438, pf_cifar10=35_218_947,
                        pf_deep_cifar10=106_632_579)


@pytest.mark.parametrize('name', list(PUBLISHED_PARAMS))
def test_published_parameter_counts(name):
    shapes = expected_shapes(full_config(PUBLISHED[name]))
    assert sum(math.prod(s) for s in shapes.values()) == PUBLISHED_PARAMS[name]


SMALL_VARIANTS = [
    ('DDIM', {}), ('DDIM', dict(type='bayesian', resamp_with_conv=False, ch_mult=[1, 1, 2], attn_resolutions=[8, 2])),
    ('iDDPM', {}), ('iDDPM', dict(use_scale_shift_norm=False, conv_resample=False, out_channels=3, attention_resolutions=[1])),
    ('PF', {}), ('PF', dict(centered=False, resamp_with_conv=False, num_res_blocks=2, attn_resolutions=[])),
    ('PF_deep', {}), ('PF_deep', dict(resblock_type='ddpm', skip_rescale=False, embedding_type='fourier', conditional=False)),
    ('PF_deep', dict(resblock_type='ddpm', embedding_type='fourier', nonlinearity='lrelu')),
]


@pytest.mark.parametrize('struc,model', SMALL_VARIANTS)
def test_small_configurations_have_the_original_tensor_layout_and_run(struc, model):
    config = small_config(struc, **model)
    net = tsdpm.build_backbone(config).eval()
    assert layout(net) == expected_shapes(config)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out = net(x, torch.tensor([10.0, 999.0]))
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_group_norms_are_the_originals():
    """32 groups (eps 1e-6) in ddim and score-SDE's DDPM, min(C/4, 32) in NCSN++, eps 1e-5 in iDDPM."""
    for struc, groups, eps in (('DDIM', lambda c: 32, 1e-6), ('PF', lambda c: 32, 1e-6),
                               ('PF_deep', lambda c: min(c // 4, 32), 1e-6), ('iDDPM', lambda c: 32, 1e-5)):
        norms = [m for m in tsdpm.build_backbone(small_config(struc)).modules() if isinstance(m, torch.nn.GroupNorm)]
        assert norms and all(n.num_groups == groups(n.num_channels) and n.eps == eps for n in norms), struc
    nf16 = tsdpm.build_backbone(small_config('PF_deep', nf=16))
    norms = [m for m in nf16.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert {m.num_groups for m in norms} == {4, 8, 12, 16}  # widths 16, 32 and the concatenations 48, 64
    assert all(m.num_groups == m.num_channels // 4 for m in norms)

#----------------------------------------------------------------------------
# Formulas.


def test_timestep_embeddings():
    """ddim and score-SDE: [sin, cos], 10000^(-i/(half-1)); improved-diffusion: [cos, sin], 10000^(-i/half)."""
    t = torch.tensor([0.0, 1.5, 999.0])
    half = 8
    args_ddim = t.double()[:, None] * torch.from_numpy(np.exp(-math.log(10000) * np.arange(half) / (half - 1)))[None]
    args_iddpm = t.double()[:, None] * torch.from_numpy(np.exp(-math.log(10000) * np.arange(half) / half))[None]
    want_ddim = torch.cat([args_ddim.sin(), args_ddim.cos()], dim=1)
    want_iddpm = torch.cat([args_iddpm.cos(), args_iddpm.sin()], dim=1)
    assert torch.allclose(ddim.timestep_embedding(t, 16).double(), want_ddim, atol=1e-4)
    assert torch.allclose(iddpm.timestep_embedding(t, 16).double(), want_iddpm, atol=1e-4)
    assert not torch.allclose(iddpm.timestep_embedding(t, 16).double(), want_ddim, atol=1e-2)  # the orders differ
    assert score_sde.timestep_embedding is ddim.timestep_embedding
    assert ddim.timestep_embedding(t, 17)[:, -1].abs().max() == 0  # odd widths: one zero column


def test_ddim_attention_is_single_head_softmax_attention():
    torch.manual_seed(0)
    block = ddim.DDIMAttnBlock(32).eval()
    x = torch.randn(2, 32, 4, 4)
    h = block.norm(x)
    q, k, v = (conv(h).flatten(2) for conv in (block.q, block.k, block.v))  # [b, c, n]
    w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(32), dim=-1)     # [b, n(query), n(key)]
    want = x + block.proj_out((v @ w.transpose(1, 2)).reshape(2, 32, 4, 4))
    assert torch.allclose(block(x), want, atol=1e-5)


@pytest.mark.parametrize('heads', [1, 2, 4])
def test_iddpm_attention_uses_the_legacy_qkv_order(heads):
    """The qkv rows are [head, (q, k, v), channel]: head h's q is rows h*3d .. h*3d+d."""
    torch.manual_seed(heads)
    block = iddpm.IDDPMAttentionBlock(64, heads).eval()
    x = torch.randn(2, 64, 4, 4)
    qkv = block.qkv(block.norm(x.flatten(2)))
    d = 64 // heads
    outs = []
    for h in range(heads):
        rows = qkv[:, 3 * d * h: 3 * d * (h + 1)]
        q, k, v = rows[:, :d], rows[:, d:2 * d], rows[:, 2 * d:]
        w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(d), dim=-1)
        outs.append(v @ w.transpose(1, 2))
    want = x + block.proj_out(torch.cat(outs, dim=1)).reshape(2, 64, 4, 4)
    assert torch.allclose(block(x), want, atol=1e-5)
    if heads > 1:  # the new order ([(q, k, v), head, channel]) gives something else
        q, k, v = qkv.reshape(2, 3, heads, d, 16).unbind(1)
        w = torch.softmax(q.transpose(2, 3) @ k / math.sqrt(d), dim=-1)
        wrong = x + block.proj_out((v @ w.transpose(2, 3)).reshape(2, 64, 16)).reshape(2, 64, 4, 4)
        assert not torch.allclose(block(x), wrong, atol=1e-3)


def test_iddpm_returns_the_first_half_of_its_output_and_takes_fractional_times():
    torch.manual_seed(0)
    net = tsdpm.build_backbone(small_config('iDDPM')).eval()
    captured = {}
    net.out[2].register_forward_hook(lambda module, args, out: captured.update(out=out))  # returns None: output kept
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        rounded = net(x, torch.tensor([3.0, 3.0]))
        eps = net(x, torch.tensor([3.5, 3.5]))
    assert captured['out'].shape[1] == 6 and torch.equal(eps, captured['out'][:, :3])
    assert not torch.allclose(eps, rounded)  # the time input is not rounded


def test_uncentered_score_sde_models_rescale_their_input():
    torch.manual_seed(0)
    config = small_config('PF', centered=False)
    net = tsdpm.build_backbone(config).eval()
    centered = tsdpm.build_backbone(small_config('PF', centered=True)).eval()
    centered.load_state_dict(net.state_dict())
    x, t = torch.rand(2, 3, 8, 8), torch.tensor([5.0, 500.0])
    with torch.no_grad():
        assert torch.allclose(net(x, t), centered(2 * x - 1, t), atol=1e-6)


def test_beta_schedules_against_closed_forms():
    T = 1000
    linear = tsdpm.beta_schedule('linear', T, 1e-4, 0.02)
    assert linear.dtype == np.float64 and linear[0] == 1e-4 and abs(linear[-1] - 0.02) < 1e-15
    assert np.allclose(np.diff(linear), (0.02 - 1e-4) / (T - 1), rtol=0, atol=1e-15)
    quad = tsdpm.beta_schedule('quad', T, 1e-4, 0.02)
    assert np.allclose(np.sqrt(quad), np.linspace(0.01, math.sqrt(0.02), T), rtol=0, atol=1e-15)
    cosine = tsdpm.beta_schedule('cosine', T)
    f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
    i = np.arange(T)
    want = np.minimum(1 - f((i + 1) / T) / f(i / T), 0.999)
    assert cosine.dtype == np.float64 and np.allclose(cosine, want, rtol=1e-12, atol=0) and cosine[-1] == 0.999
    for args, key in ((('sigmoid', T, 1e-4, 0.02), 'Schedule.type'), (('linear', T, None, 0.02), 'Schedule.beta_start'),
                      (('quad', T, 1e-4, 2.0), 'Schedule.beta_end'), (('linear', 0, 1e-4, 0.02), 'Schedule.diffusion_step')):
        with pytest.raises(tsdpm.TSDPMConfigError, match=key.replace('.', r'\.')):
            tsdpm.beta_schedule(*args)

#----------------------------------------------------------------------------
# The denoiser.


@pytest.mark.parametrize('struc', ['DDIM', 'iDDPM'])
def test_precond_is_the_discrete_vp_denoiser_of_the_backbone(struc):
    torch.manual_seed(0)
    config = small_config(struc)
    net = tsdpm.build_precond(config).eval()
    kind = config['Schedule']['type']
    betas = np.linspace(1e-4, 0.02, 1000) if kind == 'linear' else None
    if betas is None:  # cosine, recomputed here
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.array([min(1 - f((i + 1) / 1000) / f(i / 1000), 0.999) for i in range(1000)])
    abar = np.cumprod(1 - betas)
    sig = np.sqrt(1 / abar - 1)
    assert torch.equal(net.alpha_bar, torch.as_tensor(abar)) and net.alpha_bar.dtype == torch.float64
    assert net.sigma_min == sig[0] and net.sigma_max == sig[-1] and not net.learn_sigma and net.label_dim == 0
    x = torch.randn(3, 3, 8, 8) * 5
    sigma = torch.tensor([float(sig[0]), float(sig[400]) * 1.001, 1e5])  # on the grid, near it, past its top
    steps = [int(np.abs(sig - float(s)).argmin()) for s in sigma]
    assert steps[0] == 0 and steps[1] == 400 and steps[2] == 999
    with torch.no_grad():
        d = net(x, sigma)
        eps = net.model(x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2).sqrt(), torch.tensor(steps, dtype=torch.float32))
        d_var, v = net(x, sigma, return_var_values=True)
        wrong = net.model(x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2).sqrt(), torch.tensor(steps, dtype=torch.float32) + 1)
    want = x - sigma.reshape(-1, 1, 1, 1) * eps
    assert torch.allclose(d, want, atol=1e-5) and v is None and torch.equal(d, d_var)
    assert not torch.allclose(d, x - sigma.reshape(-1, 1, 1, 1) * wrong, atol=1e-3)  # the timestep offset matters
    assert torch.equal(net.round_sigma(sigma), torch.as_tensor(sig[steps], dtype=torch.float32))


def test_precond_class_names_are_unique_and_it_is_a_network():
    classes = unpickle.known_classes()
    assert classes['TSDPMPrecond'] is tsdpm.TSDPMPrecond
    assert tsdpm.TSDPMPrecond in unpickle.network_classes()
    assert unpickle.is_network(tsdpm.build_precond(small_config('PF')))

#----------------------------------------------------------------------------
# Checkpoints.


@pytest.fixture(scope='module')
def ddim_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp('tsdpm')
    config = small_config('DDIM')
    torch.manual_seed(1)
    net = tsdpm.build_backbone(config).eval()
    state = net.state_dict()
    torch.save(state, folder / 'dict.ckpt')
    optimizer_state = {'state': {0: {'exp_avg': torch.zeros(5)}}, 'param_groups': [{'lr': 2e-4, 'params': [0]}]}
    torch.save([state, optimizer_state], folder / 'list.ckpt')
    import yaml
    with open(folder / 'tiny.yml', 'w') as f:
        yaml.safe_dump(config, f)
    return dict(folder=folder, config=config, state=state, net=net, yml=str(folder / 'tiny.yml'))


def test_dict_and_list_checkpoints_load_strictly(ddim_files):
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([7.0, 700.0])
    with torch.no_grad():
        want = ddim_files['net'](x, t)
        for name in ('dict.ckpt', 'list.ckpt'):
            net = tsdpm.load_backbone(ddim_files['folder'] / name, ddim_files['config'])
            assert not net.training and not any(p.requires_grad for p in net.parameters())
            assert torch.equal(net(x, t), want)
            pre = tsdpm.load_precond(ddim_files['folder'] / name, ddim_files['config'])
            assert torch.equal(pre.model(x, t), want) and torch.equal(pre.eps(x.double(), t.tolist()), want)
            assert torch.equal(pre.eps(x, 7.0), net(x, torch.tensor([7.0, 7.0])))  # one time for the batch


def refusal(path, config):
    with pytest.raises(tsdpm.TSDPMCheckpointError) as info:
        tsdpm.load_backbone(path, config)
    text = str(info.value)
    assert '\n' not in text and len(text) < 400
    return text


def test_module_prefixed_checkpoints_are_refused_naming_the_tensor(ddim_files, tmp_path):
    torch.save({f'module.{k}': v for k, v in ddim_files['state'].items()}, tmp_path / 'ddp.ckpt')
    text = refusal(tmp_path / 'ddp.ckpt', ddim_files['config'])
    assert '"module.' in text and 'prefix' in text


@pytest.mark.parametrize('change,tensor,key', [
    (dict(ch=64), 'temb.dense.0.weight', 'Model.ch'),
    (dict(in_channels=1), 'conv_in.weight', 'Model.in_channels'),
    (dict(out_ch=1), 'conv_out.weight', 'Model.out_ch'),
    (dict(ch_mult=[1, 4]), '', 'Model.ch or Model.ch_mult'),
    (dict(attn_resolutions=[]), 'attn', 'Model.attn_resolutions'),
    (dict(type='bayesian'), 'logvar', 'Model.type'),
    (dict(num_res_blocks=2), 'block.1', 'Model.num_res_blocks'),
    (dict(resamp_with_conv=False), 'sample.conv', 'Model.resamp_with_conv'),
])
def test_checkpoints_of_another_config_are_refused_naming_tensor_and_key(ddim_files, tmp_path, change, tensor, key):
    """The checkpoint is of the small config with `change`; it is loaded with the small config."""
    arch = tsdpm.BACKBONES['DDIM'].arch(ddim_files['config'])
    arch.update({'model_type' if k == 'type' else k: v for k, v in change.items()})
    with torch.device('meta'):
        shapes = layout(ddim.DDIMModel(**arch))
    torch.save({k: torch.zeros(s) for k, s in shapes.items()}, tmp_path / 'other.ckpt')
    text = refusal(tmp_path / 'other.ckpt', ddim_files['config'])
    assert tensor in text and key in text


@pytest.mark.parametrize('struc,change,tensor,key', [
    ('iDDPM', dict(model_channels=64), 'time_embed.0.weight', 'Model.model_channels'),
    ('iDDPM', dict(use_scale_shift_norm=False), 'emb_layers.1.weight', 'Model.use_scale_shift_norm'),
    ('iDDPM', dict(out_channels=3), 'out.2.weight', 'Model.out_channels'),
    ('iDDPM', dict(attention_resolutions=[]), 'input_blocks.3.1.', 'Model.attention_resolutions'),
    ('PF', dict(nf=64), 'all_modules.0.weight', 'Model.nf'),
    ('PF_deep', dict(num_res_blocks=2), 'all_modules.', 'Model.num_res_blocks'),
])
def test_other_backbones_name_tensor_and_key(tmp_path, struc, change, tensor, key):
    with torch.device('meta'):
        shapes = layout(tsdpm.build_backbone(small_config(struc, **change)))
    torch.save({k: torch.zeros(s) for k, s in shapes.items()}, tmp_path / 'other.ckpt')
    text = refusal(tmp_path / 'other.ckpt', small_config(struc))
    assert tensor in text and key in text, text


def test_a_wrong_shape_is_named_with_both_shapes(ddim_files, tmp_path):
    state = dict(ddim_files['state'])
    state['down.0.block.0.conv1.weight'] = torch.zeros(32, 32, 1, 1)
    torch.save(state, tmp_path / 'bad.ckpt')
    text = refusal(tmp_path / 'bad.ckpt', ddim_files['config'])
    assert '"down.0.block.0.conv1.weight" has shape [32, 32, 1, 1], the config gives [32, 32, 3, 3]' in text


def test_huge_declared_tensors_are_refused_before_anything_is_allocated(ddim_files, tmp_path):
    state = dict(ddim_files['state'])
    state['conv_in.weight'] = torch.zeros(1).expand(1 << 40)  # a terabyte declared over one stored float
    torch.save(state, tmp_path / 'huge.ckpt')
    start = time.monotonic()
    text = refusal(tmp_path / 'huge.ckpt', ddim_files['config'])
    assert 'conv_in.weight' in text and 'shape [1099511627776]' in text and time.monotonic() - start < 10


def test_non_weights_only_and_truncated_files_are_one_line(ddim_files, tmp_path):
    torch.save(dict(ddim_files['state'], extra=time.struct_time((2026,) * 9)), tmp_path / 'code.ckpt')
    assert 'would run code' in refusal(tmp_path / 'code.ckpt', ddim_files['config'])
    with open(tmp_path / 'pickled.ckpt', 'wb') as f:
        pickle.dump(collections_counter(), f)
    assert 'would run code' in refusal(tmp_path / 'pickled.ckpt', ddim_files['config'])
    data = open(ddim_files['folder'] / 'dict.ckpt', 'rb').read()
    for cut in (len(data) // 2, 100):
        (tmp_path / 'cut.ckpt').write_bytes(data[:cut])
        assert 'truncated' in refusal(tmp_path / 'cut.ckpt', ddim_files['config'])
    torch.save(['not a state dict'], tmp_path / 'list.ckpt')
    assert 'neither a state dict' in refusal(tmp_path / 'list.ckpt', ddim_files['config'])
    assert 'cannot read' in refusal(tmp_path / 'missing.ckpt', ddim_files['config'])


def collections_counter():
    import collections
    return collections.Counter(a=1)


def test_listed_reader_maps_tensors_instead_of_reading_them(ddim_files):
    state = checkpoints.read_listed_state_dict(str(ddim_files['folder'] / 'list.ckpt'))
    assert state.keys() == ddim_files['state'].keys()
    assert all(torch.equal(state[k], v) for k, v in ddim_files['state'].items())
    # guided-diffusion's reader is unchanged: a list is not a state dict there
    with pytest.raises(checkpoints.CheckpointError, match='does not hold a state dict'):
        checkpoints.read_state_dict(str(ddim_files['folder'] / 'list.ckpt'))

#----------------------------------------------------------------------------
# Bad configs.


def config_error(config):
    with pytest.raises(tsdpm.TSDPMConfigError) as info:
        tsdpm.build_precond(config)
    text = str(info.value)
    assert '\n' not in text
    return text


def without(config, section, key=None):
    config = copy.deepcopy(config)
    if key is None:
        del config[section]
    else:
        del config[section][key]
    return config


@pytest.mark.parametrize('struc', list(tsdpm.BACKBONES))
def test_every_missing_key_is_named(struc):
    config = small_config(struc)
    optional = {'var_type', 'continuous', 'fourier_scale', 'scale_by_sigma'}
    for key in config['Model']:
        if key not in optional:
            assert f'Model.{key}' in config_error(without(config, 'Model', key)), key
    for section, key in (('Dataset', 'image_size'), ('Dataset', 'channels'), ('Schedule', 'type'),
                         ('Schedule', 'diffusion_step')):
        assert f'{section}.{key} is missing' in config_error(without(config, section, key))
    for section in ('Model', 'Dataset', 'Schedule'):
        assert f'section "{section}" is missing' in config_error(without(config, section))


@pytest.mark.parametrize('struc,change,message', [
    ('DDIM', dict(struc='UNet'), "Model.struc is 'UNet'"),
    ('DDIM', dict(ch='128'), 'Model.ch must be an integer'),
    ('DDIM', dict(ch_mult=[]), 'Model.ch_mult must be a list'),
    ('DDIM', dict(ch=48), 'does not give a valid DDIMModel'),      # GroupNorm(32) cannot split 48 channels
    ('DDIM', dict(in_channels=1), 'Model.in_channels (1) differs from Dataset.channels (3)'),
    ('DDIM', dict(type='deep'), 'Model.type must be one of'),
    ('DDIM', dict(dropout=1.5), 'Model.dropout must be a number'),
    ('iDDPM', dict(dims=3), 'Model.dims must be 2'),
    ('iDDPM', dict(out_channels=5), 'Model.out_channels must be 3 or 6'),
    ('iDDPM', dict(channel_mult=[2, 2]), 'Model.channel_mult must be a list starting with 1'),
    ('PF', dict(conditional=False), 'Model.conditional must be true'),
    ('PF', dict(nonlinearity='tanh'), 'Model.nonlinearity must be one of'),
    ('PF', dict(image_size=16), 'Model.image_size (16) differs from Dataset.image_size (8)'),
    ('PF_deep', dict(fir=True), 'Model.fir must be false'),
    ('PF_deep', dict(progressive='output_skip'), 'Model.progressive must be one of'),
    ('PF_deep', dict(resblock_type='ncsn'), 'Model.resblock_type must be one of'),
])
def test_bad_model_values_are_one_line(struc, change, message):
    config = small_config(struc)
    config['Model'].update(change)
    assert message in config_error(config)


def test_bad_schedules_and_top_levels_are_one_line():
    config = small_config('DDIM')
    config['Schedule'] = dict(type='linear', diffusion_step=1000)
    assert 'Schedule.beta_start is missing' in config_error(config)
    config['Schedule'] = dict(SCHEDULE, type='sigmoid')
    assert 'Schedule.type must be one of' in config_error(config)
    assert 'not a mapping of sections' in config_error(['Model'])
    assert 'section "Model" is not a mapping' in config_error(dict(small_config('PF'), Model='PF'))


def test_read_config_refuses_bad_files(tmp_path):
    (tmp_path / 'bad.yml').write_text('Model: [unclosed\n')
    (tmp_path / 'list.yml').write_text('- 1\n- 2\n')
    (tmp_path / 'code.yml').write_text('Model: !!python/object/apply:os.system ["echo hi"]\n')
    (tmp_path / 'big.yml').write_text('#' * (tsdpm.MAX_CONFIG_BYTES + 1))
    for name, message in (('bad', 'not valid YAML'), ('list', 'not a mapping'), ('code', 'not valid YAML'),
                          ('big', 'more than the 1048576'), ('none', 'cannot read')):
        with pytest.raises(tsdpm.TSDPMConfigError, match=message):
            tsdpm.read_config(tmp_path / f'{name}.yml')

#----------------------------------------------------------------------------
# Conversion and sampling with the toolkit's commands.


def run(cli, *args):
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


def test_conversion_round_trip_and_generate_with_ddim(ddim_files, tmp_path):
    src, yml = ddim_files['folder'] / 'list.ckpt', ddim_files['yml']
    want_net = tsdpm.load_precond(src, ddim_files['config'])
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 20.0])
    with torch.no_grad():
        want = want_net(x, sigma)
    for dest in ('net.pkl', 'net.pt'):
        res = run(convert, f'--src={src}', f'--dest={tmp_path / dest}', f'--tsdpm-config={yml}')
        assert res.exit_code == 0, res.output
        net = loader.load_network(str(tmp_path / dest))
        assert isinstance(net, tsdpm.TSDPMPrecond) and net.struc == 'DDIM'
        with torch.no_grad():
            assert torch.equal(net(x, sigma), want)
    res = run(generate, f'--network={tmp_path / "net.pkl"}', f'--outdir={tmp_path / "out"}', '--seeds=0-2',
              '--solver=ddim', '--steps=4', '--batch=2')
    assert res.exit_code == 0, res.output
    pngs = sorted(p for p in os.listdir(tmp_path / 'out') if p.endswith('.png'))
    assert pngs == ['000000.png', '000001.png', '000002.png']


@pytest.mark.parametrize('struc', list(tsdpm.BACKBONES))
def test_every_backbone_round_trips_through_both_formats(struc, tmp_path):
    torch.manual_seed(2)
    net = tsdpm.build_precond(small_config(struc)).eval()
    with open(tmp_path / 'net.pkl', 'wb') as f:
        pickle.dump(dict(ema=net), f)
    with open(tmp_path / 'net.pt', 'wb') as f:
        weights.save_weights(dict(ema=net), f)
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.1, 5.0])
    with torch.no_grad():
        want = net(x, sigma)
        for name in ('net.pkl', 'net.pt'):
            back = loader.load_network(str(tmp_path / name))
            assert type(back) is tsdpm.TSDPMPrecond and back.struc == struc and torch.equal(back(x, sigma), want)


def test_generate_points_tsdpm_checkpoints_to_the_converter(ddim_files, tmp_path):
    res = run(generate, f'--network={ddim_files["folder"] / "list.ckpt"}', f'--outdir={tmp_path / "o"}', '--seeds=0')
    assert res.exit_code != 0 and res.output.count('\n') == 1 and 'convert.py --tsdpm-config' in res.output


def test_conversion_errors_are_one_line_and_write_nothing(ddim_files, tmp_path):
    torch.save({f'module.{k}': v for k, v in ddim_files['state'].items()}, tmp_path / 'ddp.ckpt')
    bad_yml = tmp_path / 'bad.yml'
    bad_yml.write_text('Model: {struc: UNet}\nDataset: {image_size: 8, channels: 3}\n')
    cases = [(ddim_files['folder'] / 'dict.ckpt', bad_yml, "Model.struc is 'UNet'"),
             (tmp_path / 'ddp.ckpt', ddim_files['yml'], 'prefix')]
    for src, yml, message in cases:
        res = run(convert, f'--src={src}', f'--dest={tmp_path / "out.pkl"}', f'--tsdpm-config={yml}')
        assert res.exit_code != 0 and message in res.output and res.output.count('\n') == 1, res.output
        assert not (tmp_path / 'out.pkl').exists()
