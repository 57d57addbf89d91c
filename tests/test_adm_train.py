"""guided-diffusion training (training/adm_train.py, image_train.py): each loss term against its
formula computed here in float64, DDPM-IP's perturbation, the EMA rule, exact resume, 2
processes == 1, the files guided-diffusion and image_sample.py read, and bad input."""

import io
import math
import os
import subprocess
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import image_train
from networks import adm
from tests.adm_helpers import adm_state_shapes
from training.adm_train import TrainOptions, create_model, train, training_losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult='1,1', attention_resolutions='4',
            num_head_channels=16, learn_sigma=True, rescale_learned_sigmas=True, diffusion_steps=20,
            noise_schedule='cosine', resblock_updown=True, use_new_attention_order=True)
TINY_ARGS = [f'--{k}={v}' for k, v in TINY.items()]

#----------------------------------------------------------------------------
# Independent float64 formulas.


def cosine_betas(T):
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)])


def linear_betas(T):
    return np.linspace(0.1 / T, 20 / T, T)


def reference_terms(betas, out, x0, noise, t, learn_sigma, predict_xstart=False):
    """(x_t, mse target, the VLB term in bits per sample) in float64 from the DDPM / iDDPM formulas."""
    out, x0, noise = (a.double().numpy() for a in (out, x0, noise))
    abar = np.cumprod(1 - betas)
    res = []
    for i, ti in enumerate(t.tolist()):
        ab, ab_prev, beta = abar[ti], (abar[ti - 1] if ti else 1.0), betas[ti]
        x_t = math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * noise[i]
        c = x0.shape[1]
        pred = out[i, :c]
        x0_hat = pred if predict_xstart else (x_t - math.sqrt(1 - ab) * pred) / math.sqrt(ab)
        coef = lambda a: (math.sqrt(ab_prev) * beta / (1 - ab)) * a + (math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)) * x_t
        post_var = lambda s: betas[s] * (1 - (abar[s - 1] if s else 1.0)) / (1 - abar[s])
        var_q = post_var(ti) if ti else post_var(1)  # the clipped posterior variance
        if learn_sigma:
            frac = (out[i, c:] + 1) / 2
            var_p = np.exp(frac * math.log(beta) + (1 - frac) * math.log(post_var(max(ti, 1))))
        else:
            var_p = np.full_like(x_t, beta if ti else post_var(1))
        mean_q, mean_p = coef(x0[i]), coef(x0_hat)
        if ti > 0:
            kl = 0.5 * (np.log(var_p / var_q) + (var_q + (mean_q - mean_p) ** 2) / var_p - 1)
            vb = kl.mean() / math.log(2)
        else:
            cdf = lambda z: 0.5 * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))
            sd = np.sqrt(var_p)
            upper, lower = cdf((x0[i] - mean_p + 1 / 255) / sd), cdf((x0[i] - mean_p - 1 / 255) / sd)
            p = np.where(x0[i] < -0.999, upper, np.where(x0[i] > 0.999, 1 - lower, upper - lower))
            vb = -np.log(np.maximum(p, 1e-12)).mean() / math.log(2)
        res.append((x_t, x0[i] if predict_xstart else noise[i], vb))
    return res


class Spy(torch.nn.Module):
    """A 'model' returning a fixed output, recording what it was given."""

    def __init__(self, out):
        super().__init__()
        self.out = torch.nn.Parameter(out.clone())
        self.calls = []

    def forward(self, x, t, **kwargs):
        self.calls.append((x.detach().clone(), t.clone(), kwargs))
        return self.out * 1


def _losses(*args, **kwargs):
    return {name: value.detach() for name, value in training_losses(*args, **kwargs).items()}


def _inputs(n=4, c=3, size=4, seed=0, channels_out=6):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand([n, c, size, size], generator=g) * 2 - 1
    x0[0, 0, 0, :2] = torch.tensor([-1.0, 1.0])  # the open-ended edge bins
    noise = torch.randn([n, c, size, size], generator=g)
    out = torch.randn([n, channels_out, size, size], generator=g)
    out[:, :c] = noise + 0.3 * out[:, :c]  # a model that is roughly right, so x0_hat lies near x0
    out[:, c:] = out[:, c:].tanh()
    return x0, noise, out


@pytest.mark.parametrize('schedule,steps,rescale', [('cosine', 20, True), ('linear', 50, False), ('linear', 4000, True)])
def test_hybrid_loss_terms_match_the_formulas(schedule, steps, rescale):
    x0, noise, out = _inputs()
    t = torch.tensor([0, 1, steps // 2, steps - 1])
    spy = Spy(out)
    terms = _losses(spy, x0, t, noise, learn_sigma=True, rescale_learned_sigmas=rescale,
                            noise_schedule=schedule, diffusion_steps=steps)
    betas = cosine_betas(steps) if schedule == 'cosine' else linear_betas(steps)
    ref = reference_terms(betas, out, x0, noise, t, learn_sigma=True)
    x_t = spy.calls[0][0].double().numpy()
    scale = steps / 1000 if rescale else 1.0
    for i, (ref_x_t, target, vb) in enumerate(ref):
        assert np.isfinite(vb)
        np.testing.assert_allclose(x_t[i], ref_x_t, rtol=1e-5, atol=1e-6)
        mse = ((target - out[i, :3].double().numpy()) ** 2).mean()
        np.testing.assert_allclose(terms['mse'][i].item(), mse, rtol=1e-5)
        np.testing.assert_allclose(terms['vb'][i].item(), vb * scale, rtol=1e-3 if t[i] == 0 else 1e-4, atol=1e-6)
        np.testing.assert_allclose(terms['loss'][i].item(), mse + vb * scale, rtol=1e-4, atol=1e-6)
    assert torch.equal(spy.calls[0][1], t)  # the raw integer timesteps
    # A deliberately wrong variant: the unrescaled vb with RESCALED_MSE does not match.
    if rescale:
        assert not np.isclose(terms['vb'][2].item(), ref[2][2], rtol=1e-3)


def test_vb_trains_only_the_variance():
    x0, noise, out = _inputs()
    spy = Spy(out)
    terms = training_losses(spy, x0, torch.tensor([3, 5, 7, 9]), noise, learn_sigma=True, diffusion_steps=20)
    grad, = torch.autograd.grad(terms['vb'].sum(), spy.out)
    assert grad[:, :3].abs().max() == 0 and grad[:, 3:].abs().max() > 0


def test_mse_only_and_predict_xstart():
    x0, noise, out = _inputs(channels_out=3)
    t = torch.tensor([0, 3, 10, 19])
    terms = _losses(Spy(out), x0, t, noise, diffusion_steps=20, noise_schedule='linear')
    assert set(terms) == {'loss', 'mse'}
    np.testing.assert_allclose(terms['loss'].numpy(), ((noise - out) ** 2).mean(dim=(1, 2, 3)).numpy(), rtol=1e-6)
    terms = _losses(Spy(out), x0, t, noise, diffusion_steps=20, predict_xstart=True)
    np.testing.assert_allclose(terms['mse'].numpy(), ((x0 - out) ** 2).mean(dim=(1, 2, 3)).numpy(), rtol=1e-6)
    x0, noise, out = _inputs()
    out[:, :3] = x0 + 0.01 * (out[:, :3] - noise) / 0.3  # an x0 prediction that is roughly right
    terms = _losses(Spy(out), x0, t, noise, diffusion_steps=20, predict_xstart=True, learn_sigma=True,
                            noise_schedule='linear')
    ref = reference_terms(linear_betas(20), out, x0, noise, t, learn_sigma=True, predict_xstart=True)
    np.testing.assert_allclose(terms['vb'].numpy(), [r[2] for r in ref], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize('learn_sigma', [False, True])
def test_kl_losses(learn_sigma):
    x0, noise, out = _inputs(channels_out=6 if learn_sigma else 3)
    t = torch.tensor([0, 2, 11, 19])
    ref = np.array([r[2] for r in reference_terms(cosine_betas(20), out, x0, noise, t, learn_sigma)])
    terms = _losses(Spy(out), x0, t, noise, use_kl=True, learn_sigma=learn_sigma, diffusion_steps=20,
                            noise_schedule='cosine')
    assert set(terms) == {'loss'}
    np.testing.assert_allclose(terms['loss'].numpy(), ref * 20, rtol=1e-3, atol=2e-5)  # RESCALED_KL: times T
    terms = _losses(Spy(out), x0, t, noise, loss_type='kl', learn_sigma=learn_sigma, diffusion_steps=20,
                            noise_schedule='cosine')
    np.testing.assert_allclose(terms['loss'].numpy(), ref, rtol=1e-3, atol=1e-6)


def test_rescale_timesteps_feeds_scaled_t():
    x0, noise, out = _inputs(channels_out=3)
    spy = Spy(out)
    training_losses(spy, x0, torch.tensor([0, 1, 2, 3]), noise, diffusion_steps=4000, rescale_timesteps=True)
    np.testing.assert_allclose(spy.calls[0][1].numpy(), [0, 0.25, 0.5, 0.75])


def test_input_perturbation_changes_x_t_only():
    x0, noise, out = _inputs(channels_out=3)
    perturb = torch.randn(noise.shape, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([1, 5, 10, 19])
    spy = Spy(out)
    gamma = 0.15
    terms = _losses(spy, x0, t, noise, perturb_noise=perturb, input_pertub=gamma, diffusion_steps=20,
                            noise_schedule='linear')
    ref = reference_terms(linear_betas(20), out, x0, noise + gamma * perturb, t, learn_sigma=False)
    np.testing.assert_allclose(spy.calls[0][0].double().numpy(), np.stack([r[0] for r in ref]), rtol=1e-5, atol=1e-6)
    # The target stays the unperturbed noise (a wrong variant, noise + gamma n', does not match).
    np.testing.assert_allclose(terms['mse'].numpy(), ((noise - out) ** 2).mean(dim=(1, 2, 3)).numpy(), rtol=1e-6)
    wrong = ((noise + gamma * perturb - out) ** 2).mean(dim=(1, 2, 3))
    assert not torch.allclose(terms['mse'], wrong, rtol=1e-3)
    # Without the perturbation (or with gamma 0) x_t is the plain one.
    spy0 = Spy(out)
    training_losses(spy0, x0, t, noise, perturb_noise=perturb, input_pertub=0.0, diffusion_steps=20, noise_schedule='linear')
    training_losses(spy0, x0, t, noise, diffusion_steps=20, noise_schedule='linear', input_pertub=gamma)
    assert torch.equal(spy0.calls[0][0], spy0.calls[1][0]) and not torch.allclose(spy0.calls[0][0], spy.calls[0][0])

#----------------------------------------------------------------------------
# The model interface.


def test_create_model_speaks_guided_diffusions_state_dict():
    flags = dict(TINY, class_cond=True, input_pertub=0.1, lr=1e-4, schedule_sampler='uniform')
    model = create_model(dict(flags, num_classes=10))
    shapes, _ = adm_state_shapes(**dict(flags, channel_mult=(1, 1), num_classes=10))
    state = model.state_dict()
    assert list(state) == list(shapes) and [tuple(v.shape) for v in state.values()] == list(shapes.values())
    assert [n for n, _ in model.named_parameters()] == list(shapes)  # optimizer state in UNetModel's order
    other = create_model(dict(flags, num_classes=10))
    other.load_state_dict(state, strict=True)
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 19]), torch.tensor([3, 9])
    with torch.no_grad():
        assert torch.equal(model(x, t, y=y), other(x, t, y=y))
        # The same weights through the sampler's ADMPrecond: D = x - sigma eps at sigma_t.
        net = adm.load_state_dict(adm.build_network(adm.make_flags(**{k: v for k, v in TINY.items()}, class_cond=True), 10),
                                  state, adm.make_flags(**TINY, class_cond=True))
        sigma = net.sigmas[t]
        D = net(x * (1 + sigma.reshape(-1, 1, 1, 1) ** 2).sqrt(), sigma, torch.nn.functional.one_hot(y, 10))
        eps = model(x, t, y=y)[:, :3]
        np.testing.assert_allclose(D.numpy(), (x * (1 + sigma.reshape(-1, 1, 1, 1) ** 2).sqrt() - sigma.reshape(-1, 1, 1, 1) * eps).numpy(),
                                   rtol=1e-4, atol=1e-4)
    with pytest.raises(adm.ADMError):
        create_model(dict(TINY, num_channels=64)).load_state_dict(state)

#----------------------------------------------------------------------------
# Training runs.


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    os.makedirs(root / 'sub')
    for i in range(8):
        w, h = 8 + 3 * i, 9 + i  # mixed sizes: guided-diffusion resizes and center-crops each
        name = ('sub/' if i % 3 == 0 else '') + ('cat' if i % 2 else 'dog') + f'_{i}.png'
        PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
    return str(root)


def _run(folder, log_dir, flags=None, **kw):
    options = TrainOptions(data_dir=folder, log_dir=str(log_dir), batch_size=kw.pop('batch_size', 4),
                           ema_rate=kw.pop('ema_rate', '0.9,0.5'), progress=False, **kw)
    return train(flags or TINY, options, device='cpu', note=lambda *a: None)


def _load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def test_files_ema_and_names(folder, tmp_path):
    _run(folder, tmp_path, max_steps=2, save_interval=1, lr=1e-3)
    names = sorted(f for f in os.listdir(tmp_path) if f.endswith('.pt'))
    assert names == ['ema_0.5_000000.pt', 'ema_0.5_000001.pt', 'ema_0.9_000000.pt', 'ema_0.9_000001.pt', 'model000000.pt',
                     'model000001.pt', 'opt000000.pt', 'opt000001.pt', 'train_state000000.pt', 'train_state000001.pt']
    m0, m1 = _load(tmp_path / 'model000000.pt'), _load(tmp_path / 'model000001.pt')
    torch.manual_seed(0)
    init = create_model(TINY).state_dict()
    for rate in (0.9, 0.5):
        e0, e1 = _load(tmp_path / f'ema_{rate}_000000.pt'), _load(tmp_path / f'ema_{rate}_000001.pt')
        for name in m0:
            torch.testing.assert_close(e0[name], rate * init[name] + (1 - rate) * m0[name], rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(e1[name], rate * e0[name] + (1 - rate) * m1[name], rtol=1e-6, atol=1e-7)
        assert any(not torch.equal(e1[n], m1[n]) for n in m1)
    # Loadable with strict=True by a fresh model (guided-diffusion's state dict), optimizer by AdamW over it.
    model = create_model(TINY)
    model.load_state_dict(m1, strict=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    opt.load_state_dict(_load(tmp_path / 'opt000001.pt'))
    assert len(opt.state_dict()['state']) == len(m1)
    # image_sample.py samples the EMA file.
    out = tmp_path / 'samples'
    cmd = [sys.executable, 'image_sample.py', *TINY_ARGS, '--model_path', str(tmp_path / 'ema_0.9_000001.pt'),
           '--timestep_respacing', '3', '--num_samples', '2', '--batch_size', '2', '--out_dir', str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 0, result.stderr
    assert os.listdir(out) == ['samples_2x8x8x3.npz']


def test_resume_is_exact_and_ip_changes_the_trajectory(folder, tmp_path):
    common = dict(schedule_sampler='loss-second-moment', microbatch=2, save_interval=3, lr=1e-3, input_pertub=0.1,
                  lr_anneal_steps=9)
    # diffusion_steps 2: the loss-second-moment history fills within the run, so it must be resumed too.
    flags_small = dict(common, flags=dict(TINY, diffusion_steps=2))
    full, part = tmp_path / 'full', tmp_path / 'part'
    _run(folder, full, **flags_small)
    _run(folder, part, max_steps=7, **flags_small)   # saves 0, 3, 6 (file 6 holds 7 updates)
    state = _load(part / 'train_state000006.pt')
    assert state['updates'] == 7 and (state['sampler']['counts'] == 10).all()
    _run(folder, part, resume_checkpoint=str(part / 'model000006.pt'), **flags_small)
    for name in ('model000009.pt', 'ema_0.9_000009.pt', 'ema_0.5_000009.pt'):
        a, b = _load(full / name), _load(part / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # A deliberately wrong resume (guided-diffusion's: no sampler history) does not reach the same weights.
    os.remove(part / 'train_state000006.pt')
    wrong = tmp_path / 'wrong'
    os.makedirs(wrong)
    for f in ('model000006.pt', 'ema_0.9_000006.pt', 'ema_0.5_000006.pt', 'opt000006.pt'):
        os.link(part / f, wrong / f)
    _run(folder, wrong, resume_checkpoint=str(wrong / 'model000006.pt'), **flags_small)
    a, b = _load(full / 'model000009.pt'), _load(wrong / 'model000009.pt')
    assert not all(torch.equal(a[k], b[k]) for k in a)
    # Without input perturbation the trajectory differs.
    plain = tmp_path / 'plain'
    _run(folder, plain, **dict(flags_small, input_pertub=0.0))
    c = _load(plain / 'model000009.pt')
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_two_processes_equal_one(folder, tmp_path):
    args = ['image_train.py', '--data_dir', folder, *TINY_ARGS, '--lr', '1e-3', '--save_interval', '100', '--max_steps', '3',
            '--progress', 'False', '--schedule_sampler', 'loss-second-moment']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    two = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', *args,
                          '--batch_size', '2', '--log_dir', str(tmp_path / 'two')], cwd=ROOT, capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    same = dict(lr=1e-3, save_interval=100, max_steps=3, schedule_sampler='loss-second-moment', ema_rate='0.9999')
    _run(folder, tmp_path / 'one', batch_size=4, **same)
    a, b = _load(tmp_path / 'one' / 'model000003.pt'), _load(tmp_path / 'two' / 'model000003.pt')
    # Equal up to float summation order; Adam moves a weight by at most lr = 1e-3 an update.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4)
    # A deliberately wrong variant: 1 process with the per-process batch (2) does not match.
    _run(folder, tmp_path / 'half', batch_size=2, **same)
    c = _load(tmp_path / 'half' / 'model000003.pt')
    assert not all(torch.allclose(a[k], c[k], rtol=0, atol=1e-4) for k in a)

def test_fp16_loss_scaling_on_cpu(folder, tmp_path):
    # On the CPU --use_fp16 trains in float32 with guided-diffusion's loss scale 2^lg: scaling by a
    # power of 2 (growth 0 keeps lg = 20) and back leaves the weights exactly as without it.
    same = dict(lr=1e-3, save_interval=1, max_steps=3)
    _run(folder, tmp_path / 'fp32', **same)
    _run(folder, tmp_path / 'fp16', use_fp16=True, fp16_scale_growth=0, **same)
    a, b = _load(tmp_path / 'fp32' / 'model000002.pt'), _load(tmp_path / 'fp16' / 'model000002.pt')
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _load(tmp_path / 'fp16' / 'train_state000002.pt')['lg_loss_scale'] == 20
    # A scale that overflows (2^(20 + 120) > float32's range): the step and the EMA update are skipped, lg drops by 1.
    _run(folder, tmp_path / 'over', use_fp16=True, fp16_scale_growth=120, **same)
    m0, m2 = _load(tmp_path / 'over' / 'model000000.pt'), _load(tmp_path / 'over' / 'model000002.pt')
    e0, e2 = _load(tmp_path / 'over' / 'ema_0.9_000000.pt'), _load(tmp_path / 'over' / 'ema_0.9_000002.pt')
    assert all(torch.equal(m0[k], m2[k]) and torch.equal(e0[k], e2[k]) for k in m0)
    assert _load(tmp_path / 'over' / 'train_state000002.pt')['lg_loss_scale'] == 140 - 2


def test_folder_classes_and_crop(folder):
    from training.adm_data import TrainingImages
    data = TrainingImages(folder, 8, class_cond=True)
    names = [os.path.basename(f) for f in data.files]
    assert [data.label(i) for i in range(len(data))] == [0 if n.startswith('cat') else 1 for n in names]
    assert names[-1].startswith('dog_0') or any('sub' in f for f in data.files)  # subfolders are read too
    assert all(data.image(i).shape == (3, 8, 8) and data.image(i).dtype == np.uint8 for i in range(len(data)))
    # guided-diffusion's order: each folder's entries sorted, a subfolder where its name sorts.
    assert [os.path.relpath(f, folder) for f in data.files] == ['cat_1.png', 'cat_5.png', 'cat_7.png', 'dog_2.png',
                                                                 'dog_4.png', 'sub/cat_3.png', 'sub/dog_0.png', 'sub/dog_6.png']


#----------------------------------------------------------------------------
# Bad input: one line, non-zero exit, nothing written.


def test_help_text_in_sync():
    res = CliRunner().invoke(image_train.main, ['--help'], prog_name='image_train.py')
    assert res.exit_code == 0
    with open(os.path.join(ROOT, 'docs', 'image-train-help.txt'), encoding='utf8') as f:
        assert res.output == f.read(), 'regenerate with: python -c "from click.testing import CliRunner; import image_train; ' \
            'print(CliRunner().invoke(image_train.main, [\'--help\'], prog_name=\'image_train.py\').output, end=\'\')" > docs/image-train-help.txt'


def _cli(args):
    return CliRunner().invoke(image_train.main, [*TINY_ARGS, '--progress', 'False', '--max_steps', '1', *args])


def _zip(path, sizes):
    with zipfile.ZipFile(path, 'w') as z:
        for i, (w, h) in enumerate(sizes):
            buf = io.BytesIO()
            PIL.Image.new('RGB', (w, h)).save(buf, format='png')
            z.writestr(f'img{i}.png', buf.getvalue())


def test_zip_dataset_trains(tmp_path):
    _zip(tmp_path / 'd.zip', [(8, 8)] * 4)
    result = _run(str(tmp_path / 'd.zip'), tmp_path / 'run', max_steps=1, save_interval=1)
    assert result['updates'] == 1 and os.path.exists(tmp_path / 'run' / 'model000000.pt')


@pytest.mark.parametrize('case', ['empty', 'mixed_zip', 'other_arch', 'sampler', 'schedule', 'lr', 'ema', 'microbatch',
                                  'steps', 'not_a_checkpoint', 'fp16_opt', 'bad_state', 'batch_too_big'])
def test_bad_input(case, folder, tmp_path):
    log_dir = tmp_path / 'run'
    data = folder
    extra = []
    if case == 'empty':
        os.makedirs(tmp_path / 'empty')
        data = str(tmp_path / 'empty')
    elif case == 'mixed_zip':
        _zip(tmp_path / 'mixed.zip', [(8, 8), (8, 8), (16, 16), (8, 8)])
        data = str(tmp_path / 'mixed.zip')
    elif case == 'other_arch':
        other = tmp_path / 'other'
        os.makedirs(other)
        torch.save(create_model(dict(TINY, num_channels=64)).state_dict(), other / 'model000004.pt')
        extra = ['--resume_checkpoint', str(other / 'model000004.pt')]
    elif case in ('fp16_opt', 'bad_state'):
        run = tmp_path / 'prev'
        _run(folder, run, max_steps=1, save_interval=1)
        if case == 'fp16_opt':  # guided-diffusion's fp16 layout: two flat master tensors
            opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(10)), torch.nn.Parameter(torch.zeros(20))])
            torch.save(opt.state_dict(), run / 'opt000000.pt')
        else:
            torch.save(torch.zeros(3), run / 'train_state000000.pt')
        extra = ['--resume_checkpoint', str(run / 'model000000.pt')]
    elif case == 'batch_too_big':
        extra = ['--batch_size', '9']
    elif case == 'not_a_checkpoint':
        (tmp_path / 'model000001.pt').write_bytes(b'not a checkpoint')
        extra = ['--resume_checkpoint', str(tmp_path / 'model000001.pt')]
    else:
        extra = dict(sampler=['--schedule_sampler', 'importance'], schedule=['--noise_schedule', 'quadratic'],
                     lr=['--lr', '-1'], ema=['--ema_rate', '0.9,x'], microbatch=['--microbatch', '0'],
                     steps=['--diffusion_steps', '0'])[case]
    result = _cli(['--data_dir', data, '--log_dir', str(log_dir), *extra])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith('Error') and 'Traceback' not in result.output
    if case not in ('sampler',):  # click usage errors print a usage line first
        assert len(lines) == 1, result.output
    assert not log_dir.exists() or not [f for f in os.listdir(log_dir) if f.endswith('.pt') or f.endswith('.tmp')]
