"""networks/edm.py: EDM's U-Nets and preconditioners at tiny sizes, on the CPU.

The EDM_* tables are figures measured with NVIDIA's EDM code on the same configurations.
"""

import ast
import inspect
import pickle

import numpy as np
import pytest
import torch

from torch_utils import persistence
from networks import edm as networks

ARCHS = dict(
    ddpmpp=dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
                channel_mult_noise=1, resample_filter=[1, 1], model_channels=8, channel_mult=[1, 2], num_blocks=1,
                attn_resolutions=[4]),
    ncsnpp=dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
                channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=8, channel_mult=[1, 2], num_blocks=1,
                attn_resolutions=[4]),
    # ADM gives attention out_channels // 64 heads: 64 channels at 4x4 for one head.
    adm=dict(model_type='DhariwalUNet', model_channels=16, channel_mult=[1, 4], num_blocks=1, attn_resolutions=[4]),
)
PRECONDS = ['VPPrecond', 'VEPrecond', 'iDDPMPrecond', 'EDMPrecond']
PAIRS = [(p, a) for p in PRECONDS for a in ARCHS]

# Facts of NVIDIA's EDM for these configs (img_resolution=8, img_channels=2, label_dim=3,
# augment_dim=4, torch.manual_seed(0) before construction): number of state_dict entries,
# number of parameters, and the sum of |parameter| over the whole network.
EDM_FACTS = {
    ('VPPrecond', 'ddpmpp'): (149, 48194, 3252.227190344829),
    ('VPPrecond', 'ncsnpp'): (153, 48666, 3340.9832578701976),
    ('VPPrecond', 'adm'): (150, 641458, 14729.39008928824),
    ('VEPrecond', 'ddpmpp'): (149, 48194, 3252.227190344829),
    ('VEPrecond', 'ncsnpp'): (153, 48666, 3340.9832578701976),
    ('VEPrecond', 'adm'): (150, 641458, 14729.39008928824),
    ('iDDPMPrecond', 'ddpmpp'): (150, 48340, 3252.2273431086833),
    ('iDDPMPrecond', 'ncsnpp'): (154, 48812, 3340.9834103975836),
    ('iDDPMPrecond', 'adm'): (151, 641748, 14729.39008928824),
    ('EDMPrecond', 'ddpmpp'): (149, 48194, 3252.227190344829),
    ('EDMPrecond', 'ncsnpp'): (153, 48666, 3340.9832578701976),
    ('EDMPrecond', 'adm'): (150, 641458, 14729.39008928824),
}

# EDM's outputs for the same networks after _perturbed(), on the inputs of _inputs():
# (sum |D|, sum D * cos(arange)) in float64.
EDM_OUTPUTS = {
    ('VPPrecond', 'ddpmpp'): (2049.346486357972, 133.28583216013635),
    ('VPPrecond', 'ncsnpp'): (1919.1169693227857, -1.425181622866134),
    ('VPPrecond', 'adm'): (2315.9165578866377, 196.98738204404663),
    ('VEPrecond', 'ddpmpp'): (3180.157613158226, -217.9402542395228),
    ('VEPrecond', 'ncsnpp'): (2958.4044567644596, -173.88394207051977),
    ('VEPrecond', 'adm'): (3785.6444681901485, 310.8898029606346),
    ('iDDPMPrecond', 'ddpmpp'): (2563.5587804056704, 152.51435866886692),
    ('iDDPMPrecond', 'ncsnpp'): (2992.040320845321, -94.22040589369058),
    ('iDDPMPrecond', 'adm'): (3660.122580888681, 219.05522883516772),
    ('EDMPrecond', 'ddpmpp'): (148.9682075893652, -1.1668960138475233),
    ('EDMPrecond', 'ncsnpp'): (143.6674498289358, 2.48648870055316),
    ('EDMPrecond', 'adm'): (157.83034569676965, -3.5688778681248947),
}

N, C, RES, LABELS, AUG = 3, 2, 8, 3, 4
SIGMAS = {'VPPrecond': [0.02, 0.7, 40.0], 'VEPrecond': [0.02, 1.5, 60.0],
          'iDDPMPrecond': [0.01, 1.5, 60.0], 'EDMPrecond': [0.002, 1.5, 60.0]}




def _build(precond, arch, seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = dict(dict(img_resolution=RES, img_channels=C, label_dim=LABELS, augment_dim=AUG), **kwargs)
    return getattr(networks, precond)(**kwargs, **ARCHS[arch])


def _perturbed(net, seed=1):
    """Move every parameter off its initial value; zero-initialised output layers would hide bugs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.1)
    return net.eval()


def _inputs(precond, seed=2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, RES, RES, generator=gen)
    sigma = torch.tensor(SIGMAS[precond])
    labels = torch.nn.functional.one_hot(torch.tensor([0, 2, 1]), LABELS).to(torch.float32)
    augment = torch.randn(N, AUG, generator=gen)
    return x, sigma, labels, augment

def _assert_close_fp32(actual, expected):
    # Batch size changes the summation order inside convolutions: allow float32 rounding.
    scale = expected.abs().max().item()
    assert (actual - expected).abs().max().item() <= 1e-5 * scale, (actual - expected).abs().max().item() / scale

#----------------------------------------------------------------------------
# Source and format.


def test_module_imports_only_what_edm_provides():
    # The source travels inside pickles and must run in EDM's own code base too.
    tree = ast.parse(inspect.getsource(networks))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.update(f'{node.module}.{alias.name}' for alias in node.names)
    assert imported <= {'math', 'numpy', 'torch', 'torch.nn.functional.silu', 'torch_utils.persistence'}, imported


def test_every_module_class_is_persistent():
    modules = [v for v in vars(networks).values() if isinstance(v, type) and issubclass(v, torch.nn.Module)]
    names = {m.__name__ for m in modules}
    assert {'Linear', 'Conv2d', 'GroupNorm', 'UNetBlock', 'PositionalEmbedding', 'FourierEmbedding', 'SongUNet',
            'DhariwalUNet', 'VPPrecond', 'VEPrecond', 'iDDPMPrecond', 'EDMPrecond'} <= names
    assert all(persistence.is_persistent(m) for m in modules), [m.__name__ for m in modules if not persistence.is_persistent(m)]


def test_pickle_carries_source_and_gives_same_output():
    net = _perturbed(_build('EDMPrecond', 'ncsnpp'))
    x, sigma, labels, augment = _inputs('EDMPrecond')
    data = pickle.dumps(net)
    meta = net.__reduce__()[1][0]
    assert meta['class_name'] == 'EDMPrecond' and meta['module_src'] == inspect.getsource(networks)
    assert b'class DhariwalUNet(' in data and b'class AttentionOp(' in data
    copy = pickle.loads(data)
    assert type(copy).__name__ == 'EDMPrecond' and copy.init_kwargs.model_type == 'SongUNet'
    with torch.no_grad():
        assert torch.equal(copy(x, sigma, labels, augment_labels=augment), net(x, sigma, labels, augment_labels=augment))

#----------------------------------------------------------------------------
# Architecture and initialisation agree with EDM.


@pytest.mark.parametrize('precond,arch', PAIRS)
def test_parameters_and_initialisation_match_edm(precond, arch):
    net = _build(precond, arch, seed=0)
    entries, numel, abs_sum = EDM_FACTS[(precond, arch)]
    assert len(net.state_dict()) == entries
    assert sum(p.numel() for p in net.parameters()) == numel
    # Same random draws in the same order as EDM: the seed fixes every initial weight.
    assert sum(p.double().abs().sum().item() for p in net.parameters()) == pytest.approx(abs_sum, rel=1e-6)


def test_state_dict_names_and_shapes_of_edm():
    sd = _build('EDMPrecond', 'ncsnpp').state_dict()
    expected = {
        'model.map_noise.freqs': (8,), 'model.map_label.weight': (16, 3), 'model.map_augment.weight': (16, 4),
        'model.map_layer0.weight': (32, 16), 'model.map_layer1.bias': (32,),
        'model.enc.8x8_conv.weight': (8, 2, 3, 3), 'model.enc.4x4_down.skip.resample_filter': (1, 1, 4, 4),
        'model.enc.4x4_aux_residual.weight': (8, 2, 3, 3), 'model.enc.4x4_block0.qkv.weight': (48, 16, 1, 1),
        'model.enc.4x4_block0.affine.weight': (16, 32), 'model.dec.4x4_in0.proj.weight': (16, 16, 1, 1),
        'model.dec.4x4_block0.skip.weight': (16, 32, 1, 1), 'model.dec.8x8_up.conv0.resample_filter': (1, 1, 4, 4),
        'model.dec.8x8_block1.norm0.weight': (16,), 'model.dec.8x8_aux_norm.weight': (8,),
        'model.dec.8x8_aux_conv.weight': (2, 8, 3, 3),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    assert 'model.map_augment.bias' not in sd and 'model.dec.4x4_in1.qkv.weight' not in sd
    adm = _build('iDDPMPrecond', 'adm').state_dict()
    assert tuple(adm['u'].shape) == (1001,)
    assert tuple(adm['model.map_label.weight'].shape) == (64, 3) and 'model.map_label.bias' not in adm
    assert tuple(adm['model.dec.4x4_in0.affine.weight'].shape) == (128, 64)  # scale and shift
    assert tuple(adm['model.out_conv.weight'].shape) == (4, 16, 3, 3)  # mean and variance channels


def test_weight_init_statistics():
    torch.manual_seed(0)
    fan_in, fan_out = 400, 200
    for mode, std in [('xavier_uniform', np.sqrt(2 / 600)), ('xavier_normal', np.sqrt(2 / 600)),
                      ('kaiming_uniform', np.sqrt(1 / 400)), ('kaiming_normal', np.sqrt(1 / 400))]:
        w = networks.weight_init([300, 400], mode, fan_in, fan_out)
        assert w.dtype == torch.float32 and w.shape == (300, 400)
        assert w.std().item() == pytest.approx(std, rel=0.02), mode
        if mode.endswith('uniform'):
            assert w.abs().max().item() <= np.sqrt(3) * std
    with pytest.raises(ValueError, match='Invalid init mode'):
        networks.weight_init([2], 'he_normal', 1, 1)
    layer = networks.Linear(50, 20, init_mode='kaiming_uniform', init_weight=0, init_bias=0)
    assert not layer.weight.any() and not layer.bias.any()

#----------------------------------------------------------------------------
# Forward behaviour of every preconditioner x architecture pair.


@pytest.mark.parametrize('precond,arch', PAIRS)
def test_forward_per_sample_sigma_and_state_dict_round_trip(precond, arch):
    net = _perturbed(_build(precond, arch))
    x, sigma, labels, augment = _inputs(precond)
    with torch.no_grad():
        out = net(x, sigma, labels, augment_labels=augment)
        assert out.shape == x.shape and out.dtype == torch.float32 and out.isfinite().all()
        abs_sum, weighted_sum = EDM_OUTPUTS[(precond, arch)]
        weights = torch.cos(torch.arange(out.numel(), dtype=torch.float64)).reshape(out.shape)
        assert out.double().abs().sum().item() == pytest.approx(abs_sum, rel=1e-5)
        assert (out.double() * weights).sum().item() == pytest.approx(weighted_sum, abs=1e-5 * abs_sum)
        # Each sample only depends on its own sigma and label.
        for i in range(N):
            single = net(x[i:i + 1], sigma[i:i + 1], labels[i:i + 1], augment_labels=augment[i:i + 1])
            _assert_close_fp32(single, out[i:i + 1])
        # A scalar sigma applies to the whole batch.
        for scalar in (sigma[1], float(sigma[1])):
            _assert_close_fp32(net(x, scalar, labels, augment_labels=augment),
                               net(x, sigma[1].repeat(N), labels, augment_labels=augment))
        # Strict state_dict round trip into a differently seeded network.
        other = _build(precond, arch, seed=5).eval()
        assert not torch.equal(other(x, sigma, labels, augment_labels=augment), out)
        other.load_state_dict(net.state_dict(), strict=True)
        assert torch.equal(other(x, sigma, labels, augment_labels=augment), out)


@pytest.mark.parametrize('arch', list(ARCHS))
def test_missing_labels_mean_zero_labels_and_label_dropout(arch):
    net = _perturbed(_build('EDMPrecond', arch, dropout=0, label_dropout=1))
    x, sigma, labels, _ = _inputs('EDMPrecond')
    with torch.no_grad():
        unlabelled = net(x, sigma, None)
        torch.testing.assert_close(unlabelled, net(x, sigma, torch.zeros(N, LABELS)), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(unlabelled, net(x, sigma, labels))
        # label_dropout=1 drops every label while training, and none in eval mode.
        torch.testing.assert_close(net.train()(x, sigma, labels), unlabelled, rtol=1e-5, atol=1e-5)
        uncond = _build('EDMPrecond', arch, label_dim=0)
        assert uncond.model.map_label is None and uncond.label_dim == 0


def test_fp16_flag_runs_in_float32_on_cpu():
    half = _perturbed(_build('EDMPrecond', 'adm', use_fp16=True))
    full = _build('EDMPrecond', 'adm', seed=3, use_fp16=False).eval()
    full.load_state_dict(half.state_dict())
    x, sigma, labels, augment = _inputs('EDMPrecond')
    with torch.no_grad():
        expected = full(x, sigma, labels, augment_labels=augment)
        for force_fp32 in (False, True):
            out = half(x, sigma, labels, force_fp32=force_fp32, augment_labels=augment)
            assert out.dtype == torch.float32 and torch.equal(out, expected)
    assert half.use_fp16 and not full.use_fp16

#----------------------------------------------------------------------------
# Preconditioning coefficients (EDM paper, Table 1) seen through a stub model.


class _StubModel(torch.nn.Module):
    """Records what the preconditioner feeds the model and returns a fixed F."""

    def __init__(self, out_channels):
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x, noise_labels, class_labels=None, **kwargs):
        self.seen = (x.clone(), noise_labels.clone(), class_labels, kwargs)
        F = torch.arange(x.numel() // x.shape[1] * self.out_channels, dtype=x.dtype).reshape(x.shape[0], self.out_channels, *x.shape[2:])
        return torch.cos(F)


def _with_stub(net, out_channels=C):
    net.model = _StubModel(out_channels)
    return net


def _check_coefficients(net, sigma, c_skip, c_out, c_in, c_noise, out_channels=C):
    x = torch.randn(len(sigma), C, 4, 4, dtype=torch.float64)
    D = net(x, torch.tensor(sigma, dtype=torch.float64), None, extra='passed')
    fed, noise_labels, class_labels, kwargs = net.model.seen
    F = torch.cos(torch.arange(x[0, 0].numel() * out_channels * len(sigma), dtype=torch.float64)).reshape(len(sigma), out_channels, 4, 4)
    col = lambda v: torch.as_tensor(v, dtype=torch.float64).reshape(-1, 1, 1, 1)
    assert kwargs == dict(extra='passed') and class_labels is None and fed.dtype == torch.float32
    torch.testing.assert_close(fed.double(), col(c_in) * x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(noise_labels.double(), torch.as_tensor(c_noise, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(D.double(), col(c_skip) * x + col(c_out) * F[:, :C], rtol=1e-5, atol=1e-4)


def test_edm_coefficients_follow_the_paper():
    sigma_data = 0.7
    net = _with_stub(networks.EDMPrecond(img_resolution=4, img_channels=C, sigma_data=sigma_data, model_type='SongUNet',
                                         model_channels=4, channel_mult=[1], num_blocks=1))
    s = np.array([0.002, 0.3, 1.0, 80.0])
    var = s ** 2 + sigma_data ** 2
    _check_coefficients(net, s.tolist(), c_skip=sigma_data ** 2 / var, c_out=s * sigma_data / np.sqrt(var),
                        c_in=1 / np.sqrt(var), c_noise=np.log(s) / 4)
    assert (net.sigma_min, net.sigma_max, net.sigma_data) == (0, float('inf'), sigma_data)


def test_vp_sigma_schedule_and_coefficients():
    net = _with_stub(networks.VPPrecond(img_resolution=4, img_channels=C, model_channels=4, channel_mult=[1], num_blocks=1))
    beta_d, beta_min, M = 19.9, 0.1, 1000
    t = np.array([1e-5, 0.01, 0.3, 1.0])
    sigma_np = np.sqrt(np.exp(0.5 * beta_d * t ** 2 + beta_min * t) - 1)
    np.testing.assert_allclose(net.sigma(torch.tensor(t)).numpy(), sigma_np, rtol=1e-6)
    np.testing.assert_allclose(net.sigma_inv(torch.tensor(sigma_np)).numpy(), t, rtol=1e-6)
    np.testing.assert_allclose(net.sigma_inv(net.sigma(torch.tensor([0.2, 0.9]))).numpy(), [0.2, 0.9], rtol=1e-5)
    # As in EDM, sigma_min is evaluated in float32, where exp(x) - 1 cancels badly at t = 1e-5.
    assert net.sigma_min == float(net.sigma(1e-5)) == pytest.approx(sigma_np[0], rel=0.03)
    assert net.sigma_max == pytest.approx(sigma_np[-1], rel=1e-6)
    s = sigma_np[1:]
    _check_coefficients(net, s.tolist(), c_skip=1, c_out=-s, c_in=1 / np.sqrt(s ** 2 + 1), c_noise=(M - 1) * t[1:])
    assert torch.equal(net.round_sigma(torch.tensor([0.123, 4.5])), torch.tensor([0.123, 4.5]))


def test_ve_coefficients():
    net = _with_stub(networks.VEPrecond(img_resolution=4, img_channels=C, model_channels=4, channel_mult=[1], num_blocks=1))
    s = np.array([0.02, 1.0, 100.0])
    _check_coefficients(net, s.tolist(), c_skip=1, c_out=s, c_in=1, c_noise=np.log(s / 2))
    assert (net.sigma_min, net.sigma_max) == (0.02, 100)
    assert net.round_sigma(3.25).item() == 3.25


def test_iddpm_levels_rounding_and_coefficients():
    net = networks.iDDPMPrecond(img_resolution=4, img_channels=C, model_type='SongUNet', model_channels=4,
                                channel_mult=[1], num_blocks=1)
    M, C_1, C_2 = 1000, 0.001, 0.008
    u = net.u.double().numpy()
    assert u.shape == (M + 1,) and u[M] == 0 and np.all(np.diff(u) < 0)
    # u_{j-1} = sqrt((u_j^2 + 1) / max(alpha_bar(j-1) / alpha_bar(j), C_1) - 1), alpha_bar(j) = sin^2(pi j / (2 M (1 + C_2))).
    alpha_bar = np.sin(0.5 * np.pi * np.arange(M + 1) / M / (C_2 + 1)) ** 2
    ratio = np.maximum(alpha_bar[:-1] / alpha_bar[1:], C_1)
    # (u is computed in float32, as in EDM; the ratios lose digits where alpha_bar is close to 1.)
    np.testing.assert_allclose(u[:-1], np.sqrt((u[1:] ** 2 + 1) / ratio - 1), rtol=1e-3)
    assert (net.sigma_min, net.sigma_max) == (float(net.u[M - 1]), float(net.u[0]))

    # round_sigma snaps to the nearest level of the grid and keeps the input's shape.
    gen = torch.Generator().manual_seed(0)
    queries = torch.exp(torch.empty(2, 50).uniform_(np.log(net.sigma_min), np.log(net.sigma_max), generator=gen))
    snapped = net.round_sigma(queries)
    index = net.round_sigma(queries, return_index=True)
    assert snapped.shape == queries.shape and index.shape == queries.shape and index.dtype == torch.int64
    assert torch.equal(net.u[index], snapped)
    best = (queries[..., None] - net.u).abs().min(dim=-1).values
    assert ((snapped - queries).abs() <= best + 1e-5 * queries).all()
    assert torch.equal(net.round_sigma(net.u[[0, 7, 999]], return_index=True), torch.tensor([0, 7, 999]))
    assert net.round_sigma(torch.tensor(1e6)).item() == net.sigma_max

    # c_noise is the reversed timestep index; the model's second half of channels is ignored.
    _with_stub(net, out_channels=2 * C)
    s = net.u[[3, 500, 998]].double().numpy() * np.array([1.0001, 0.9999, 1.0])
    _check_coefficients(net, s.tolist(), c_skip=1, c_out=-s, c_in=1 / np.sqrt(s ** 2 + 1),
                        c_noise=[M - 1 - 3, M - 1 - 500, M - 1 - 998], out_channels=2 * C)

#----------------------------------------------------------------------------
# Layers.


def test_resampling_layers():
    x = torch.randn(2, 3, 8, 8)
    down = networks.Conv2d(3, 3, kernel=0, down=True)
    torch.testing.assert_close(down(x), torch.nn.functional.avg_pool2d(x, 2))
    up = networks.Conv2d(3, 3, kernel=0, up=True)
    torch.testing.assert_close(up(x), torch.nn.functional.interpolate(x, scale_factor=2, mode='nearest'))
    assert down.weight is None and down.bias is None
    fir = networks.Conv2d(3, 5, kernel=3, down=True, resample_filter=[1, 3, 3, 1]).resample_filter
    assert fir.shape == (1, 1, 4, 4) and fir.sum().item() == pytest.approx(1)
    assert networks.Conv2d(3, 5, kernel=3).resample_filter is None
    for fused in (False, True):
        assert networks.Conv2d(3, 5, 3, down=True, resample_filter=[1, 3, 3, 1], fused_resample=fused)(x).shape == (2, 5, 4, 4)
        assert networks.Conv2d(3, 5, 3, up=True, resample_filter=[1, 3, 3, 1], fused_resample=fused)(x).shape == (2, 5, 16, 16)
    with pytest.raises(AssertionError):
        networks.Conv2d(3, 3, 3, up=True, down=True)


def test_group_norm_groups_and_embeddings():
    assert networks.GroupNorm(256).num_groups == 32 and networks.GroupNorm(8).num_groups == 2
    emb = networks.PositionalEmbedding(num_channels=8, endpoint=True)(torch.tensor([0.0, 2.0]))
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.tensor([1, 10000 ** (-1 / 3), 10000 ** (-2 / 3), 1e-4])
    torch.testing.assert_close(emb[1], torch.cat([(2 * freqs).cos(), (2 * freqs).sin()]))
    fourier = networks.FourierEmbedding(num_channels=6, scale=16)
    assert fourier.freqs.shape == (3,) and 'freqs' in fourier.state_dict()
    out = fourier(torch.tensor([0.25]))
    torch.testing.assert_close(out, torch.cat([(0.5 * np.pi * fourier.freqs).cos(), (0.5 * np.pi * fourier.freqs).sin()])[None])


def test_attention_op_gradients_match_autograd():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(4, 8, 12, generator=gen, requires_grad=True)
    k = torch.randn(4, 8, 10, generator=gen, requires_grad=True)
    dw = torch.randn(4, 12, 10, generator=gen)
    w = networks.AttentionOp.apply(q, k)
    grads = torch.autograd.grad(w, (q, k), dw)
    q2, k2 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    w2 = (torch.einsum('ncq,nck->nqk', q2, k2) / np.sqrt(8)).softmax(dim=2)
    torch.testing.assert_close(w.double(), w2, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, torch.autograd.grad(w2, (q2, k2), dw.double())):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_unet_block_variants():
    torch.manual_seed(0)
    emb = torch.randn(2, 16)
    x = torch.randn(2, 8, 8, 8)
    plain = networks.UNetBlock(8, 8, 16)
    assert plain.skip is None and plain.num_heads == 0
    assert plain.affine.out_features == 16  # adaptive scale: scale and shift
    heads = networks.UNetBlock(8, 128, 16, attention=True)
    assert heads.num_heads == 2 and heads.qkv.out_channels == 384 and heads.skip.weight.shape == (128, 8, 1, 1)
    assert heads(x, emb).shape == (2, 128, 8, 8)
    down = networks.UNetBlock(8, 8, 16, down=True, adaptive_scale=False)
    assert down.skip.weight is None and down(x, emb).shape == (2, 8, 4, 4)
    up = networks.UNetBlock(8, 8, 16, up=True, resample_proj=True, attention=True, num_heads=1)
    assert up.skip.weight.shape == (8, 8, 1, 1) and up(x, emb).shape == (2, 8, 16, 16)
    # conv1 and proj start at zero (init_zero), so the block starts as its shortcut.
    torch.testing.assert_close(plain(x, emb), x)
