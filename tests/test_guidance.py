"""Classifier guidance: guided-diffusion's noisy classifier (networks/classifier.py), the guidance
rules (samplers/guidance.py, samplers/discrete.py) and classifier_sample.py.

The classifier's state-dict layout is checked against a description of EncoderUNetModel written
here from its construction rules; the guided DDPM and DDIM against a sampler loop written out
here from guided-diffusion's condition_mean / condition_score, with wrong variants that must
fail. The networks are tiny, with random weights in the published tensor layouts.
"""

import math
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import classifier_sample
import image_sample
from adm_helpers import tiny_adm
from networks import adm
from networks import classifier as noisy
from samplers import Sampler, SamplerOptionError, SamplerOptions, SeedNoise, discrete, jobs, latents_and_labels
from samplers.guidance import ClassifierGuidance, guided

MODEL = ('--image_size 32 --num_channels 32 --channel_mult 1,2 --num_res_blocks 1 --attention_resolutions 8 '
         '--num_head_channels 32 --learn_sigma True --noise_schedule cosine --diffusion_steps 100')
COND_MODEL = ('--image_size 32 --num_channels 32 --channel_mult 1,2 --num_res_blocks 1 --attention_resolutions 8 '
              '--num_heads 1 --class_cond True --diffusion_steps 100')   # fixed (large) variance, linear
TINY_CLASSIFIER = dict(classifier_width=32, classifier_depth=1, classifier_attention_resolutions='8')
TINY_CLASSIFIER_ARGS = ['--classifier_width', '32', '--classifier_depth', '1', '--classifier_attention_resolutions', '8']

#----------------------------------------------------------------------------
# The classifier's tensors, from EncoderUNetModel's construction rules.


def encoder_shapes(image_size, classifier_width=128, classifier_depth=2, classifier_attention_resolutions='32,16,8',
                   classifier_use_scale_shift_norm=True, classifier_resblock_updown=True, classifier_pool='attention',
                   **_):
    """{name: shape} of guided-diffusion's EncoderUNetModel state dict as create_classifier builds it."""
    mult = {32: (1, 2, 2, 2), 64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4),
            512: (0.5, 1, 1, 2, 2, 4, 4)}[image_size]
    ds_attn = [image_size // int(r) for r in classifier_attention_resolutions.split(',')]
    c, emb = classifier_width, 4 * classifier_width
    shapes = {}

    def lin(name, cin, cout, kernel=()):
        shapes[f'{name}.weight'], shapes[f'{name}.bias'] = (cout, cin, *kernel), (cout,)

    def norm(name, ch):
        shapes[f'{name}.weight'], shapes[f'{name}.bias'] = (ch,), (ch,)

    def res(name, cin, cout):
        norm(f'{name}.in_layers.0', cin)
        lin(f'{name}.in_layers.2', cin, cout, (3, 3))
        lin(f'{name}.emb_layers.1', emb, 2 * cout if classifier_use_scale_shift_norm else cout)
        norm(f'{name}.out_layers.0', cout)
        lin(f'{name}.out_layers.3', cout, cout, (3, 3))
        if cin != cout:
            lin(f'{name}.skip_connection', cin, cout, (1, 1))

    def attn(name, ch):
        norm(f'{name}.norm', ch)
        lin(f'{name}.qkv', ch, 3 * ch, (1,))
        lin(f'{name}.proj_out', ch, ch, (1,))

    lin('time_embed.0', c, emb)
    lin('time_embed.2', emb, emb)
    ch = int(mult[0] * c)
    lin('input_blocks.0.0', 3, ch, (3, 3))
    features, k, ds = ch, 1, 1
    for level, m in enumerate(mult):
        for _ in range(classifier_depth):
            res(f'input_blocks.{k}.0', ch, int(m * c))
            ch = int(m * c)
            if ds in ds_attn:
                attn(f'input_blocks.{k}.1', ch)
            features += ch
            k += 1
        if level != len(mult) - 1:
            if classifier_resblock_updown:
                res(f'input_blocks.{k}.0', ch, ch)
            else:
                lin(f'input_blocks.{k}.0.op', ch, ch, (3, 3))
            features += ch
            k += 1
            ds *= 2
    res('middle_block.0', ch, ch)
    attn('middle_block.1', ch)
    res('middle_block.2', ch, ch)
    features += ch
    if classifier_pool == 'adaptive':
        norm('out.0', ch)
        lin('out.3', ch, 1000, (1, 1))
    elif classifier_pool == 'attention':
        norm('out.0', ch)
        shapes['out.2.positional_embedding'] = (ch, (image_size // ds) ** 2 + 1)
        lin('out.2.qkv_proj', ch, 3 * ch, (1,))
        lin('out.2.c_proj', ch, 1000, (1,))
    else:
        lin('out.0', features, 2048)
        if classifier_pool == 'spatial':
            lin('out.2', 2048, 1000)
        else:
            norm('out.1', 2048)
            lin('out.3', 2048, 1000)
    return shapes


def published_flags(name):
    preset = noisy.PRESETS[name]
    return noisy.classifier_flags(preset['image_size'], **{k: v for k, v in preset.items() if k not in ('image_size', 'scale')})


@pytest.mark.parametrize('name', list(noisy.PRESETS))
def test_published_classifier_layouts(name):
    flags = published_flags(name)
    with torch.device('meta'):
        net = noisy.build_classifier(flags)
    ours = {k: tuple(v.shape) for k, v in noisy.classifier_state_dict(net).items()}
    assert ours == encoder_shapes(**flags)


@pytest.mark.parametrize('pool', noisy.POOLS)
@pytest.mark.parametrize('updown, scale_shift', [(True, True), (False, False)])
def test_every_pool_and_variant_layout_and_strict_load(pool, updown, scale_shift):
    kw = dict(TINY_CLASSIFIER, classifier_pool=pool, classifier_resblock_updown=updown,
              classifier_use_scale_shift_norm=scale_shift)
    flags = noisy.classifier_flags(32, **kw)
    shapes = encoder_shapes(32, **kw)
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) / math.sqrt(np.prod(s[1:]) if len(s) > 1 else 10) for k, s in shapes.items()}
    net = noisy.load_state_dict(noisy.build_classifier(flags), state)
    assert {k: tuple(v.shape) for k, v in noisy.classifier_state_dict(net).items()} == shapes
    back = noisy.classifier_state_dict(net)
    assert all(torch.equal(back[k], state[k]) for k in state)  # every tensor lands somewhere and comes back
    logits = net(torch.randn(2, 3, 32, 32, generator=g), torch.tensor([3, 70]))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()


def test_attention_pool_against_an_independent_computation():
    torch.manual_seed(0)
    pool = noisy.AttentionPool2d(spatial=2, channels=128, num_classes=5)
    x = torch.randn(3, 128, 2, 2)
    tokens = torch.cat([x.flatten(2).mean(-1, keepdim=True), x.flatten(2)], -1) + pool.positional_embedding
    qkv = torch.nn.functional.conv1d(tokens, pool.qkv_proj.weight, pool.qkv_proj.bias)
    q, k, v = qkv.chunk(3, dim=1)               # [(q, k, v), head, channel]: new order
    heads = []
    for h in range(2):                          # 128 channels, 64 per head
        sl = slice(64 * h, 64 * (h + 1))
        w = torch.softmax(torch.einsum('nct,ncs->nts', q[:, sl], k[:, sl]) / 8.0, dim=-1)
        heads.append(torch.einsum('nts,ncs->nct', w, v[:, sl]))
    expected = torch.nn.functional.conv1d(torch.cat(heads, 1), pool.c_proj.weight, pool.c_proj.bias)[:, :, 0]
    assert torch.allclose(pool(x), expected, atol=1e-5)


def test_classifier_flags_refused_in_one_line():
    with pytest.raises(adm.ADMError, match='supports --image_size'):
        noisy.classifier_flags(48)
    with pytest.raises(adm.ADMError, match='classifier_pool must be one of'):
        noisy.classifier_flags(64, classifier_pool='max')
    with pytest.raises(adm.ADMError, match='64 channels per head'):
        noisy.classifier_flags(32, classifier_width=32, classifier_attention_resolutions='32')

#----------------------------------------------------------------------------
# Guidance rules against a sampler written out here.


def random_classifier(seed=1):
    net = noisy.build_classifier(noisy.classifier_flags(32, **TINY_CLASSIFIER))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.1 if p.ndim == 1 else 1 / math.sqrt(p[0].numel())))
    return net.requires_grad_(False)


@pytest.fixture(scope='module')
def models():
    return dict(uncond=tiny_adm(MODEL)[0], cond=tiny_adm(COND_MODEL)[0], classifier=random_classifier())


def log_prob_grad(classifier, x_t, t, y, scale):
    """scale * d/dx_t log softmax(classifier(x_t, t))[y], per sample."""
    x_in = x_t.detach().float().requires_grad_(True)
    with torch.enable_grad():
        lp = torch.log_softmax(classifier(x_in, torch.full([len(y)], float(t))), dim=1)
        total = sum(lp[n, y[n]] for n in range(len(y)))
        grad, = torch.autograd.grad(total, x_in)
    return grad.double() * scale


def reference_guided(net, classifier, rule, respacing, scale, seeds, clip=True, eps_scaler=1.0, variant='right',
                     adm_es=False):
    """guided-diffusion's guided p_sample_loop / ddim_sample_loop (eta 0), written out per step."""
    noise = SeedNoise(seeds)
    latents, labels = latents_and_labels(noise, [3, 32, 32], 1000)
    y = labels.argmax(1)
    if variant == 'wrong label':
        y = (y + 1) % 1000
    process = discrete.respace(net.alpha_bar.numpy(), respacing)
    ab, ts = process.alpha_bar, process.timesteps
    x = latents.double()
    for j in reversed(range(len(ts))):
        step_noise = noise.randn(list(x.shape), dtype=torch.float64)
        a, a_prev = ab[j], (ab[j - 1] if j else 1.0)
        with torch.no_grad():
            d, v = net(x / math.sqrt(a), torch.full([len(seeds)], math.sqrt(1 / a - 1)), labels, return_var_values=True)
        eps = (x / math.sqrt(a) - d.double()) / math.sqrt(1 / a - 1) / eps_scaler
        x0 = x / math.sqrt(a) - math.sqrt(1 / a - 1) * eps
        if clip:
            x0 = x0.clamp(-1, 1)
        g = log_prob_grad(classifier, x, ts[j], y, scale)
        if variant == 'flipped sign':
            g = -g
        beta = 1 - a / a_prev
        if rule == 'ddim' and variant != 'ddpm rule':
            eps = (x / math.sqrt(a) - x0) / math.sqrt(1 / a - 1)
            eps = (eps - math.sqrt(1 - a) * g) / (eps_scaler if adm_es else 1.0)
            x0 = x / math.sqrt(a) - math.sqrt(1 / a - 1) * eps
            eps = (x / math.sqrt(a) - x0) / math.sqrt(1 / a - 1)
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
            continue
        mean = beta * math.sqrt(a_prev) / (1 - a) * x0 + (1 - a_prev) * math.sqrt(1 - beta) / (1 - a) * x
        posterior = [b * (1 - p) / (1 - q) for b, p, q in
                     [(1 - ab[k] / (ab[k - 1] if k else 1.0), ab[k - 1] if k else 1.0, ab[k]) for k in range(len(ts))]]
        min_log = math.log(posterior[j] if j else posterior[1])
        if v is None:   # fixed large: betas, posterior_variance[1] at t = 0
            var = torch.full_like(x, beta if j else posterior[1])
        else:
            frac = (v.double() + 1) / 2
            var = torch.exp(frac * math.log(beta) + (1 - frac) * min_log)
        if rule == 'ddim':   # the DDPM rule used for DDIM: its mean shift on the DDIM step
            eps = (x / math.sqrt(a) - x0) / math.sqrt(1 / a - 1)
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps + var * g
            continue
        x = mean + var * g + (torch.exp(0.5 * (frac * math.log(beta) + (1 - frac) * min_log)) if v is not None
                              else math.sqrt(beta)) * step_noise * (j > 0)
    return x


def library_guided(net, classifier, rule, respacing, scale, seeds, clip=True, eps_scaler=1.0, mode='clean'):
    options = SamplerOptions(solver=rule, respacing=respacing, clip_denoised=clip, eps_scaler=eps_scaler)
    sampler = Sampler(net, options, guidance=ClassifierGuidance(classifier, scale=scale, mode=mode))
    noise = SeedNoise(seeds)
    latents, labels = latents_and_labels(noise, [3, 32, 32], sampler.label_dim)
    return sampler(latents, labels, noise.randn_like)


CASES = [('uncond', 'ddpm', '4', True), ('uncond', 'ddim', '5', True), ('cond', 'ddpm', '3', False),
         ('cond', 'ddim', 'ddim4', False)]


@pytest.mark.parametrize('model, rule, respacing, clip', CASES)
def test_guided_samplers_match_the_written_out_rules_and_wrong_variants_fail(models, model, rule, respacing, clip):
    net, classifier = models[model], models['classifier']
    seeds = [0, 7]
    ours = library_guided(net, classifier, rule, respacing, 100.0, seeds, clip=clip)
    expected = reference_guided(net, classifier, rule, respacing, 100.0, seeds, clip=clip)
    assert (ours - expected).abs().max() < 1e-4
    unguided = reference_guided(net, classifier, rule, respacing, 0.0, seeds, clip=clip)
    gap = (expected - unguided).abs().max()
    assert gap > 0.05  # the guidance moves the samples well beyond the tolerance
    variants = ['flipped sign', 'wrong label'] + (['ddpm rule'] if rule == 'ddim' else [])
    for variant in variants:
        wrong = reference_guided(net, classifier, rule, respacing, 100.0, seeds, clip=clip, variant=variant)
        assert (ours - wrong).abs().max() > 0.01, variant


def test_adm_es_mode_divides_the_guided_ddim_eps_twice(models):
    net, classifier = models['uncond'], models['classifier']
    seeds = [3]
    kw = dict(rule='ddim', respacing='4', scale=30.0, seeds=seeds, eps_scaler=1.1)
    clean = library_guided(net, classifier, mode='clean', **kw)
    original = library_guided(net, classifier, mode='adm-es', **kw)
    assert (clean - reference_guided(net, classifier, **kw)).abs().max() < 1e-4
    assert (original - reference_guided(net, classifier, adm_es=True, **kw)).abs().max() < 1e-4
    assert (clean - original).abs().max() > 0.01
    # DDPM: one division in both modes
    kw['rule'] = 'ddpm'
    assert torch.equal(library_guided(net, classifier, mode='clean', **kw), library_guided(net, classifier, mode='adm-es', **kw))


def test_the_classifier_sees_the_original_timesteps(models):
    seen = []

    class Recorder(torch.nn.Module):
        num_classes, img_resolution = 1000, 32

        def forward(self, x, t):
            seen.append(t.tolist())
            return models['classifier'](x, t)
    for rule in ('ddpm', 'ddim'):
        seen.clear()
        library_guided(models['uncond'], Recorder(), rule, '5', 1.0, [0, 1])
        assert seen == [[t, t] for t in reversed(discrete.space_timesteps(100, '5'))] == [[t] * 2 for t in (99, 74, 50, 25, 0)]


def test_guided_denoiser_wrapper_shifts_eps_by_the_score_rule(models):
    net, classifier = models['uncond'], models['classifier']
    guidance = ClassifierGuidance(classifier, scale=4.0).bind(net)
    denoiser = lambda x, sigma, labels=None: net(x, sigma, labels).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    labels = torch.eye(1000)[[5, 900]]
    t = 40
    sigma = torch.full([2], float(net.sigmas[t]), dtype=torch.float64)
    abar = float(net.alpha_bar[t])
    ours = guided(denoiser, guidance)(x, sigma, labels)
    g = log_prob_grad(classifier, x * math.sqrt(abar), t, [5, 900], 4.0)
    eps = (x - denoiser(x, sigma)) / sigma[0] - math.sqrt(1 - abar) * g
    assert (ours - (x - sigma[0] * eps)).abs().max() < 1e-5
    with torch.no_grad():  # a few-step solver composes with it
        out = Sampler(net, SamplerOptions(solver='dpmpp2m', respacing='4'), guidance=guidance)(x.float(), labels)
    assert torch.isfinite(out).all()


def test_guidance_refuses_what_it_cannot_guide(models):
    guidance = ClassifierGuidance(models['classifier'])
    small = tiny_adm(MODEL.replace('--image_size 32', '--image_size 16'))[0]
    with pytest.raises(SamplerOptionError, match='classifier is for 32x32'):
        Sampler(small, SamplerOptions(solver='ddim', respacing='4'), guidance=guidance)
    four = tiny_adm(COND_MODEL + ' --num_classes 4', num_classes=4)[0]
    with pytest.raises(SamplerOptionError, match='4 classes, the classifier 1000'):
        Sampler(four, SamplerOptions(solver='ddim', respacing='4'), guidance=guidance)

#----------------------------------------------------------------------------
# classifier_sample.py and image_sample.py.


@pytest.fixture(scope='module')
def files(tmp_path_factory, models):
    root = tmp_path_factory.mktemp('guidance')
    for name, flags in (('uncond', MODEL), ('cond', COND_MODEL)):
        torch.save(tiny_adm(flags)[2], root / f'{name}.pt')
    torch.save(noisy.classifier_state_dict(models['classifier']), root / 'classifier.pt')
    return root


def run(module, *args):
    return CliRunner().invoke(module.main, [str(a) for a in args])


def guided_args(files, model, out, *extra):
    flags = MODEL if model == 'uncond' else COND_MODEL
    return ['--model_path', files / f'{model}.pt', *flags.split(), '--classifier_path', files / 'classifier.pt',
            *TINY_CLASSIFIER_ARGS, '--classifier_scale', '30', '--timestep_respacing', '4', '--num_samples', '3',
            '--out_dir', out, *extra]


@pytest.mark.parametrize('model, rule', [('uncond', 'ddpm'), ('cond', 'ddim')])
def test_classifier_sample_npz_labels_batch_independence_and_resume(files, models, tmp_path, monkeypatch, model, rule):
    extra = ['--use_ddim', 'True'] if rule == 'ddim' else []
    res = run(classifier_sample, *guided_args(files, model, tmp_path / 'a', '--batch_size', '3', *extra))
    assert res.exit_code == 0, res.output
    assert os.listdir(tmp_path / 'a') == ['samples_3x32x32x3.npz']
    with np.load(tmp_path / 'a' / 'samples_3x32x32x3.npz') as data:
        assert data.files == ['arr_0', 'arr_1']
        images, labels = data['arr_0'], data['arr_1']
    assert images.dtype == np.uint8 and images.shape == (3, 32, 32, 3) and labels.dtype == np.int64
    # labels: the second draw of each seed's generator, over the classifier's 1000 classes
    _, drawn = latents_and_labels(SeedNoise(range(3)), [3, 32, 32], 1000)
    assert labels.tolist() == drawn.argmax(1).tolist()
    # the pixels are the written-out guided sampler's, truncated as guided-diffusion does
    expected = reference_guided(models[model], models['classifier'], rule, '4', 30.0, list(range(3)))
    expected = ((expected + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(expected.astype(int) - images).max() <= 1 and (expected == images).mean() > 0.99

    # batch size 1, killed after its first image, then resumed: the same images and labels
    real = jobs._write_part  # pylint: disable=protected-access
    calls = []

    def write_then_die(*args):
        real(*args)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(jobs, '_write_part', write_then_die)
    args = [str(a) for a in guided_args(files, model, tmp_path / 'b', '--batch_size', '1', *extra)]
    with pytest.raises(KeyboardInterrupt):
        classifier_sample.run(classifier_sample.main.make_context('classifier_sample.py', list(args)).params)
    assert [n for n in os.listdir(tmp_path / 'b') if not n.startswith('.')] == []
    monkeypatch.setattr(jobs, '_write_part', real)
    res = run(classifier_sample, *args)
    assert res.exit_code == 0 and '2 images sampled, 1 resumed' in res.output, res.output
    with np.load(tmp_path / 'b' / 'samples_3x32x32x3.npz') as data:
        # float32 convolutions round differently by batch size (the unguided model's too): within a level
        assert np.abs(data['arr_0'].astype(int) - images).max() <= 1 and (data['arr_0'] == images).mean() > 0.99
        assert np.array_equal(data['arr_1'], labels)


def test_scale_zero_is_image_sample_for_a_1000_class_model(files, tmp_path):
    res = run(classifier_sample, *guided_args(files, 'cond', tmp_path / 'g', '--classifier_scale', '0'))
    assert res.exit_code == 0, res.output
    res = run(image_sample, '--model_path', files / 'cond.pt', *COND_MODEL.split(), '--timestep_respacing', '4',
              '--num_samples', '3', '--out_dir', tmp_path / 'u')
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / 'g' / 'samples_3x32x32x3.npz') as a, np.load(tmp_path / 'u' / 'samples_3x32x32x3.npz') as b:
        assert np.array_equal(a['arr_1'], b['arr_1'])
        assert np.abs(a['arr_0'].astype(int) - b['arr_0']).max() <= 1


@pytest.mark.parametrize('flag', ['--classifier_scale 0.5', '--classifier_path /nonexistent.pt', '--classifier_depth 4',
                                  '--classifier_pool spatial', '--classifier_use_fp16 True'])
def test_image_sample_refuses_guidance_flags_in_one_line(files, tmp_path, flag):
    res = run(image_sample, '--model_path', files / 'uncond.pt', *MODEL.split(), '--num_samples', '1',
              '--out_dir', tmp_path / 'o', *flag.split())
    assert res.exit_code != 0 and res.output.strip().count('\n') == 0, res.output
    assert 'classifier_sample.py' in res.output and flag.split()[0] in res.output
    assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('change, message', [
    (['--classifier_path', '/nonexistent/c.pt'], 'cannot read /nonexistent/c.pt'),
    (['--classifier_width', '64'], 'has shape'),
    (['--classifier_pool', 'adaptive'], 'lacks'),
    (['--classifier_pool', 'max'], "'max' is not one of"),
    (['--classifier_depth', '2'], 'lacks'),
    (['--classifier_scale', 'x'], 'x'),
    (['--use_ddim', 'True', '--eps_scaler', '0'], 'epsilon scalers must be positive'),
])
def test_classifier_sample_bad_input_is_one_line_and_writes_nothing(files, tmp_path, change, message):
    args = guided_args(files, 'uncond', tmp_path / 'o') + change
    res = run(classifier_sample, *args)
    assert res.exit_code != 0
    lines = [line for line in res.output.strip().splitlines() if line.startswith('Error')]
    assert len(lines) == 1 and message in lines[0] and 'Traceback' not in res.output, res.output
    assert not (tmp_path / 'o').exists() or not [n for n in os.listdir(tmp_path / 'o') if n.endswith('.npz')]


def test_classifier_sample_refuses_a_model_with_other_classes(files, tmp_path):
    torch.save(tiny_adm(COND_MODEL + ' --num_classes 4', num_classes=4)[2], tmp_path / 'four.pt')
    args = guided_args(files, 'cond', tmp_path / 'o')
    args[1] = tmp_path / 'four.pt'
    res = run(classifier_sample, *args)
    assert res.exit_code != 0 and 'the network has 4 classes, the classifier 1000' in res.output, res.output

#----------------------------------------------------------------------------
# generate.py


def test_generate_guides_a_converted_adm_network(files, models, tmp_path):
    import generate
    import pickle
    net = tiny_adm(MODEL)[0]
    with open(tmp_path / 'net.pkl', 'wb') as f:
        pickle.dump(dict(ema=net), f)
    args = [f'--network={tmp_path / "net.pkl"}', '--seeds=0-1', '--solver=ddim', '--timestep_respacing=4',
            f'--classifier={files / "classifier.pt"}', '--classifier_scale=100',
            '--classifier-flags=--classifier_width 32 --classifier_depth 1 --classifier_attention_resolutions 8']
    res = run(generate, *args, f'--outdir={tmp_path / "g"}')
    assert res.exit_code == 0, res.output
    images = np.stack([np.asarray(__import__('PIL.Image').Image.open(tmp_path / 'g' / f'{s:06d}.png')) for s in range(2)])
    expected = reference_guided(models['uncond'], models['classifier'], 'ddim', '4', 100.0, [0, 1])
    expected = (expected * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # EDM rounds
    assert np.abs(images.astype(int) - expected).max() <= 1
    res = run(generate, *args[:4], '--classifier_scale=2', f'--outdir={tmp_path / "h"}')
    assert res.exit_code != 0 and 'need --classifier PATH' in res.output
    res = run(generate, *args, f'--outdir={tmp_path / "g"}', '--classifier_scale=3')
    assert res.exit_code != 0 and 'classifier_scale' in res.output  # resuming a folder made with another scale


def test_exposure_sweep_takes_guidance_options_and_refuses_a_scale_alone(tmp_path):
    import exposure
    res = CliRunner().invoke(exposure.main, ['sweep', '--outdir', str(tmp_path / 's'), '--ref', str(tmp_path / 'r.npz'),
                                             '--classifier_scale', '2', '--seeds', '0-1'])
    assert res.exit_code != 0 and 'need --classifier PATH' in res.output and 'Traceback' not in res.output, res.output

#----------------------------------------------------------------------------
# The published commands parse verbatim; the bench runs.


def test_adm_es_imagenet128_command_parses_verbatim():
    command = ('--image_size 128 --timestep_respacing 100 --eps_scaler 1.004 --model_path MODEL_PATH '
               '--classifier_path CLASSIFIER_PATH --classifier_scale 0.5 --class_cond True '
               '--use_fp16 True --num_channels 256 --num_heads 4 --num_res_blocks 2 '
               '--attention_resolutions 32,16,8 --resblock_updown True '
               '--learn_sigma True --diffusion_steps 1000 --noise_schedule linear --use_scale_shift_norm True '
               '--batch_size 100 --num_samples 50000')
    values = classifier_sample.main.make_context('classifier_sample.py', command.split()).params
    assert values['classifier_scale'] == 0.5 and values['guidance_mode'] == 'adm-es' and values['eps_scaler'] == 1.004
    flags = noisy.classifier_flags(128, **{k: values[k] for k in noisy.CLASSIFIER_FLAGS})
    assert flags == published_flags('imagenet-128')
    flags = adm.make_flags(**{k: values[k] for k in [*adm.MODEL_FLAGS, *adm.DIFFUSION_FLAGS]})
    assert flags.timestep_respacing == '100'
    assert dict(flags, timestep_respacing='') == adm.parse_adm_flags(preset='imagenet-128')


def test_bench_guidance_prints_its_figures():
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench', 'bench_guidance.py')
    spec = importlib.util.spec_from_file_location('bench_guidance', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    res = CliRunner().invoke(module.main, ['--batch', '1', '--steps', '2', '--repeat', '1', '--device', 'cpu'],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    figures = [float(v) for v in res.output.strip().splitlines()[-1].split()]
    assert len(figures) == 7 and all(v > 0 for v in figures[:6])


def test_classifier_sample_composes_with_tsdpm_time_shift_and_few_step_solvers(files, tmp_path):
    outputs = {}
    for name, extra in (('ddim', ['--use_ddim', 'True']),
                        ('ts', ['--use_ddim', 'True', '--do_time_shift', 'True', '--window', '40', '--cutoff', '10']),
                        ('dpmpp2m', ['--solver', 'dpmpp2m'])):
        res = run(classifier_sample, *guided_args(files, 'uncond', tmp_path / name, '--num_samples', '2', *extra))
        assert res.exit_code == 0, res.output
        with np.load(tmp_path / name / 'samples_2x32x32x3.npz') as data:
            outputs[name] = data['arr_0']
    assert (outputs['ts'] != outputs['ddim']).any() and (outputs['dpmpp2m'] != outputs['ddim']).any()
