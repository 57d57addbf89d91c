"""DDPM and DDIM on ADM networks (samplers/discrete.py), epsilon scaling and both time-shift
modes on discrete grids, generate.py and image_sample.py with converted checkpoints.

docs/adm.md records the parity measured against guided-diffusion, ADM-ES and TS-DPM-ADM; here
an independent DDPM/DDIM written out in the test checks the samplers on tiny networks.
"""

import math
import os
import pickle
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import generate
import image_sample
from adm_helpers import TINY, tiny_adm
from samplers import Sampler, SamplerOptionError, SamplerOptions, SeedNoise, latents_and_labels
from samplers import discrete, jobs, solvers
from samplers.time_shift import DiscreteTimeShift, TimeShiftError, TSDPMTimeShift
from networks import adm, edm as networks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = TINY + ' --diffusion_steps 100'               # learned sigma, cosine, 100 timesteps
COND = ('--image_size 16 --num_channels 32 --channel_mult 1,2 --num_res_blocks 1 --attention_resolutions 8 '
        '--num_heads 1 --class_cond True --num_classes 4 --diffusion_steps 100')   # fixed variance, linear


@pytest.fixture(scope='module')
def small():
    return tiny_adm(SMALL)[0]


@pytest.fixture(scope='module')
def cond():
    return tiny_adm(COND, num_classes=4)[0]


def draws(net, seeds, steps):
    """(latents, labels, the per-step float64 noise) of the seeds, in the sampler's order."""
    noise = SeedNoise(seeds)
    shape = [net.img_channels, net.img_resolution, net.img_resolution]
    latents, labels = latents_and_labels(noise, shape, net.label_dim)
    return latents, labels, [noise.randn([len(seeds), *shape], dtype=torch.float64) for _ in range(steps)]


def sample(net, options, seeds=range(4)):
    noise = SeedNoise(list(seeds))
    latents, labels = latents_and_labels(noise, [net.img_channels, net.img_resolution, net.img_resolution], net.label_dim)
    return Sampler(net, options)(latents, labels, noise.randn_like)

#----------------------------------------------------------------------------
# Respacing.


def test_respacing_tables_for_the_documented_strings():
    assert discrete.space_timesteps(1000, 'ddim5') == [0, 200, 400, 600, 800]
    assert discrete.space_timesteps(1000, 'ddim50') == list(range(0, 1000, 20))
    assert discrete.space_timesteps(1000, '10') == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert discrete.space_timesteps(1000, '5') == [0, 250, 500, 749, 999]  # round(499.5) = 500, round(749.25) = 749
    def section(start, size, count):  # the position accumulates the stride, then rounds (ties to even)
        out, position = [], 0.0
        for _ in range(count):
            out.append(start + round(position))
            position += (size - 1) / (count - 1)
        return out
    expected = section(0, 100, 10) + section(100, 100, 15) + section(200, 100, 20)
    assert expected[17] == 149  # 7 * 99 / 14 = 49.5 exactly would round to 50; accumulated it is just below
    assert discrete.space_timesteps(300, '10,15,20') == expected
    assert discrete.space_timesteps(10, '3,2') == [0, 2, 4, 5, 9]  # 10 = 5 + 5
    assert discrete.space_timesteps(11, '2,2') == [0, 5, 6, 10]    # the first section gets the extra step
    assert discrete.space_timesteps(1000, '') == list(range(1000))
    assert len(discrete.space_timesteps(1000, '1000')) == 1000
    alpha_bar = networks.adm_alpha_bar('cosine', 1000)
    process = discrete.respace(alpha_bar, 'ddim5')
    betas = 1 - alpha_bar[[0, 200, 400, 600, 800]] / np.append(1.0, alpha_bar[[0, 200, 400, 600]])
    assert np.array_equal(process.alpha_bar, np.cumprod(1 - betas))  # rebuilt from the betas, as guided-diffusion
    assert np.allclose(process.alpha_bar, alpha_bar[[0, 200, 400, 600, 800]], rtol=1e-13, atol=0)
    assert process.alpha_bar_prev()[0] == 1.0


@pytest.mark.parametrize('text, message', [
    ('ddim600', 'no integer stride gives exactly 600 of 1000 steps'),
    ('ddimx', 'expected ddimN'),
    ('1001', 'cannot take 1001 steps from a section of 1000'),
    ('10,a', 'expected ddimN, N or comma-separated counts'),
    ('0,5', 'every section needs at least 1 step'),
    ('1', 'keeps 1 step; at least 2 are needed'),
])
def test_bad_respacing_is_one_line(text, message):
    with pytest.raises(discrete.RespacingError, match=message):
        discrete.respace(networks.adm_alpha_bar('linear', 1000), text)

#----------------------------------------------------------------------------
# DDPM and DDIM against an independent implementation.


def reference(net, seeds, timesteps, ddim, eta=0.0, clip=True, variance='learned', scalers=None):
    """guided-diffusion's p_sample / ddim_sample loop, written out from the papers' equations."""
    latents, labels, noises = draws(net, list(seeds), len(timesteps))
    alpha_bar = net.alpha_bar.numpy()
    x = latents.double()
    steps = len(timesteps)
    for i in range(steps):
        j = steps - 1 - i
        a = alpha_bar[timesteps[j]]
        a_prev = alpha_bar[timesteps[j - 1]] if j > 0 else 1.0
        with torch.no_grad():
            out = net.model(x.float(), torch.full([len(x)], float(timesteps[j])), labels).double()
        eps = out[:, :3] / (1.0 if scalers is None else scalers[i])
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        if clip:
            x0 = x0.clamp(-1, 1)
        if ddim:
            eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
            sigma = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma ** 2) * eps + (sigma * noises[i] if j else 0)
            continue
        beta = 1 - a / a_prev
        mean = math.sqrt(a_prev) * beta / (1 - a) * x0 + math.sqrt(1 - beta) * (1 - a_prev) / (1 - a) * x
        posterior = beta * (1 - a_prev) / (1 - a)
        if j == 0:
            x = mean
            continue
        if variance == 'learned':
            frac = (out[:, 3:] + 1) / 2
            log_var = frac * math.log(beta) + (1 - frac) * math.log(posterior)
        else:
            log_var = torch.full_like(x, math.log(beta if variance == 'large' else posterior))
        x = mean + (0.5 * log_var).exp() * noises[i]
    return x


CASES = [
    ('ddim eta 0', dict(solver='ddim', respacing='10'), dict(ddim=True)),
    ('ddim eta 0.5 no clip', dict(solver='ddim', respacing='ddim8', eta=0.5, clip_denoised=False), dict(ddim=True, eta=0.5, clip=False)),
    ('ddpm learned', dict(solver='ddpm', respacing='10'), dict(ddim=False)),
    ('ddpm large no clip', dict(solver='ddpm', respacing='10', variance='large', clip_denoised=False), dict(ddim=False, variance='large', clip=False)),
    ('ddpm small', dict(solver='ddpm', respacing='10', variance='small'), dict(ddim=False, variance='small')),
    ('ddpm es b', dict(solver='ddpm', respacing='10', eps_scaler=1.05), dict(ddim=False, scalers=[1.05] * 10)),
    ('ddim es b+k', dict(solver='ddim', respacing='10', eps_scaler=1.01, eps_scaler_k=0.01), dict(ddim=True, scalers=[1.01 + 0.01 * (9 - i) for i in range(10)])),
]


@pytest.mark.parametrize('name, options, ref', CASES, ids=[c[0] for c in CASES])
def test_samplers_match_an_independent_implementation(small, name, options, ref):
    process = discrete.respace(small.alpha_bar.numpy(), options['respacing'])
    ours = sample(small, SamplerOptions(**options))
    theirs = reference(small, range(4), list(process.timesteps), **ref)
    assert ours.dtype == torch.float64 and torch.isfinite(ours).all()
    assert torch.allclose(ours, theirs, rtol=0, atol=2e-4 * max(1.0, float(theirs.abs().max()))), float((ours - theirs).abs().max())


def test_conditional_fixed_variance_network_and_default_variance(cond):
    assert discrete.default_variance(cond) == 'large' and not cond.learn_sigma
    ours = sample(cond, SamplerOptions(solver='ddpm', respacing='ddim10'))
    theirs = reference(cond, range(4), list(range(0, 100, 10)), ddim=False, variance='large')
    assert torch.allclose(ours, theirs, rtol=0, atol=2e-4)
    with pytest.raises(SamplerOptionError, match='--variance=learned needs a network with learned sigma'):
        Sampler(cond, SamplerOptions(solver='ddpm', variance='learned'))


@pytest.mark.parametrize('solver', ['ddpm', 'ddim'])
def test_scaler_one_and_window_zero_are_bit_identical_to_off(small, solver):
    plain = sample(small, SamplerOptions(solver=solver, respacing='8'))
    assert torch.equal(plain, sample(small, SamplerOptions(solver=solver, respacing='8', eps_scaler=1.0, eps_scaler_k=0.0)))
    assert torch.equal(plain, sample(small, SamplerOptions(solver=solver, respacing='8', ts_window=0, ts_cutoff=0.1)))
    assert not torch.equal(plain, sample(small, SamplerOptions(solver=solver, respacing='8', eps_scaler=1.02)))


def test_steps_mean_respacing_n_and_the_edm_solvers_still_work(small):
    assert torch.equal(sample(small, SamplerOptions(solver='ddim', num_steps=6)),
                       sample(small, SamplerOptions(solver='ddim', respacing='6')))
    assert SamplerOptions(solver='ddim', respacing='ddim25').nfe == 25 and SamplerOptions(solver='ddpm', respacing='3,4').nfe == 7
    images = sample(small, SamplerOptions(solver='euler', num_steps=5))
    assert images.shape == (4, 3, 16, 16) and torch.isfinite(images).all()


@pytest.mark.parametrize('options, message', [
    (dict(solver='ddim', eta=-0.5), '--eta must be a non-negative number'),
    (dict(solver='ddpm', eta=0.5), '--eta applies to --solver=ddim only'),
    (dict(solver='heun', eta=0.5), '--eta applies to --solver=ddpm|ddim only'),
    (dict(solver='euler', respacing='10', disc='vp'), '--disc and --timestep_respacing both choose the levels'),
    (dict(solver='ddim', variance='small'), "--variance must be one of learned|large|small with --solver=ddpm"),
    (dict(solver='ddpm', ts_mode='tsdpm', ts_window=10), 'defined for --solver=ddim only'),
    (dict(solver='ddim', S_churn=5), '--S_churn applies to the EDM solvers'),
    (dict(solver='ddim', disc='vp'), '--disc applies to the EDM solvers'),
    (dict(solver='ddim', ts_mode='tsdpm', ts_cutoff=2.5), 'original timestep'),
    (dict(solver='ddim', ts_window=-1), '--ts_window must not be negative'),
    (dict(solver='ddim', respacing='ddim600'), 'no integer stride'),
    (dict(solver='ddim', respacing='10', eps_scaler=0.5, eps_scaler_k=-0.1), 'epsilon scalers must be positive'),
])
def test_bad_discrete_options_are_one_line(small, options, message):
    with pytest.raises(SamplerOptionError, match=message.replace('|', r'\|')) as info:
        Sampler(small, SamplerOptions(**options))
    assert '\n' not in str(info.value)


def test_discrete_solvers_refuse_continuous_networks():
    from test_samplers import tiny_net
    with pytest.raises(SamplerOptionError, match='needs a discrete-time network.*EDMPrecond is continuous'):
        Sampler(tiny_net(), SamplerOptions(solver='ddim'))
    with pytest.raises(SamplerOptionError, match='--timestep_respacing needs a discrete-time network'):
        Sampler(tiny_net(), SamplerOptions(solver='dpmpp2m', respacing='10'))


@pytest.mark.parametrize('solver', ['heun', 'spndm', 'fpndm', 'dpmsolver', 'dpmpp2m', 'deis'])
def test_continuous_solvers_run_on_the_respaced_grid(small, solver):
    # Any solver on an ADM network, over guided-diffusion's respaced timesteps (DDIM's levels).
    options = SamplerOptions(solver=solver, respacing='ddim10')
    sampler = Sampler(small, options)
    timesteps = discrete.space_timesteps(100, 'ddim10')
    assert sampler.sigmas[:-1].tolist() == small.sigmas[timesteps].flip(0).tolist() and sampler.sigmas[-1] == 0
    images = sample(small, options)
    assert images.shape == (4, 3, 16, 16) and torch.isfinite(images).all()
    assert options.nfe == solvers.evaluations(solver, 10)
    assert torch.equal(images, sample(small, SamplerOptions(solver=solver, respacing='ddim10', eps_scaler=1.0)))
    assert not torch.equal(images, sample(small, SamplerOptions(solver=solver, respacing='ddim10', eps_scaler=1.05)))
    shifted = sample(small, SamplerOptions(solver=solver, respacing='ddim10', ts_window=3, ts_cutoff=0.2))
    assert torch.isfinite(shifted).all()

#----------------------------------------------------------------------------
# Time shift on discrete grids.


class _Process:
    """A Respacing stand-in over the cosine table."""


def _state_with_variance(values, shape=(3, 8, 8)):
    """States [N, C, H, W] whose unbiased pixel variances are exactly `values`."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn([len(values), *shape], generator=g, dtype=torch.float64)
    x = (x - x.flatten(1).mean(1).reshape(-1, 1, 1, 1)) / x.flatten(1).std(1).reshape(-1, 1, 1, 1)
    return x * torch.tensor(values, dtype=torch.float64).sqrt().reshape(-1, 1, 1, 1)


def test_tsdpm_quirks_on_states_with_known_variances():
    alpha_bar = networks.adm_alpha_bar('cosine', 1000)
    process = discrete.respace(alpha_bar, 'ddim5')                  # 0, 200, 400, 600, 800; offset 1000 // 4 = 250
    shift = TSDPMTimeShift(alpha_bar, window=80, cutoff=300)
    prev_all = np.append(1.0, alpha_bar[:-1])
    flipped = alpha_bar[::-1]
    # At ct = 600 the candidates are k = 560..640, compared with abar[999 - k]; the step lands at abar[k - 251].
    targets = [565, 600, 637]
    x = _state_with_variance([flipped[k] for k in targets])
    levels = shift.levels(x, 1, 3, process)
    assert levels.abar_prev.tolist() == [prev_all[k - 250] for k in targets]
    assert levels.abar.tolist() == [process.alpha_bar[3]] * 3      # the network stays at the grid timestep
    # A variance above every candidate picks the top of the window (k = 640 -> 389).
    assert shift.levels(_state_with_variance([5.0]), 1, 3, process).abar_prev.tolist() == [alpha_bar[389]]
    # The first step and steps at or below the cutoff are not shifted.
    assert shift.levels(x, 0, 4, process).abar_prev.tolist() == [process.alpha_bar[3]] * 3
    assert shift.levels(x, 3, 1, process).abar_prev.tolist() == [process.alpha_bar[0]] * 3
    # Near t = 0 (ct - W//2 <= 0) the candidates are k = 0..W.
    near = TSDPMTimeShift(alpha_bar, window=80, cutoff=10)
    process10 = discrete.respace(alpha_bar, '10')                   # ..., 111, 222, ...; offset 111
    k = 150
    levels = near.levels(_state_with_variance([flipped[k]]), 5, 1, process10)
    assert levels.abar_prev.tolist() == [prev_all[k - 111]]        # window [71, 151] around ct = 111
    # Window 0 still lands at the offset target (not the grid): TS-DPM-ADM's --window 0.
    zero = TSDPMTimeShift(alpha_bar, window=0, cutoff=300)
    assert zero.levels(x, 1, 3, process).abar_prev.tolist() == [prev_all[600 - 250]] * 3


def test_tsdpm_nan_settings_are_refused():
    alpha_bar = networks.adm_alpha_bar('cosine', 1000)
    process = discrete.respace(alpha_bar, 'ddim5')
    with pytest.raises(TimeShiftError, match='NaN with cutoff 0'):
        TSDPMTimeShift(alpha_bar, window=80, cutoff=0).check(process)
    TSDPMTimeShift(alpha_bar, window=40, cutoff=0).check(discrete.respace(alpha_bar, '10'))  # lands at index 0: fine
    # A wide window over a fine grid can land above the current level: refused when it happens.
    shift = TSDPMTimeShift(alpha_bar, window=80, cutoff=100)
    fine = discrete.respace(alpha_bar, 'ddim100')                   # stride 10, offset 1000 // 99 = 10
    x = _state_with_variance([alpha_bar[::-1][530]])                # at ct = 500 picks k = 530 -> lands at 519
    with pytest.raises(TimeShiftError, match='noisier than it'):
        shift.levels(x, 10, 50, fine)


def test_clean_time_shift_on_states_with_known_variances():
    alpha_bar = networks.adm_alpha_bar('cosine', 1000)
    process = discrete.respace(alpha_bar, 'ddim10')                 # 0, 100, ..., 900
    shift = DiscreteTimeShift(alpha_bar, window=30, cutoff=0.5, signal_var=0.25)
    expected = lambda k: alpha_bar[k] * 0.25 + 1 - alpha_bar[k]
    ct = 500
    targets = [ct, 480, 520, 530, 470]
    x = _state_with_variance([expected(k) for k in targets])
    levels = shift.levels(x, 4, 5, process)
    chosen = [int(np.argmin(np.abs(alpha_bar - a))) for a in levels.abar.tolist()]
    assert chosen == targets
    assert levels.abar[0] == process.alpha_bar[5]                   # no shift: the respaced level itself
    assert torch.allclose(levels.sigma, (1 / levels.abar - 1).sqrt())
    assert levels.abar_prev.tolist() == [process.alpha_bar[4]] * 5  # the step lands on the grid
    # Beyond the window the nearest end wins; below the next grid timestep is not a candidate.
    far = shift.levels(_state_with_variance([expected(700), expected(300)]), 4, 5, process)
    assert [int(np.argmin(np.abs(alpha_bar - a))) for a in far.abar.tolist()] == [530, 470]
    assert shift.levels(x, 0, 9, process).abar.tolist() == [process.alpha_bar[9]] * 5   # first step
    low = discrete.respace(alpha_bar, 'ddim10')
    assert shift.levels(x, 8, 1, low).abar.tolist() == [low.alpha_bar[1]] * 5          # sigma(100) < cutoff


@pytest.mark.parametrize('solver', ['ddpm', 'ddim'])
def test_clean_time_shift_runs_and_changes_images(small, solver):
    plain = sample(small, SamplerOptions(solver=solver, respacing='10'))
    shifted = sample(small, SamplerOptions(solver=solver, respacing='10', ts_window=5, ts_cutoff=0.1))
    assert torch.isfinite(shifted).all() and not torch.equal(plain, shifted)

#----------------------------------------------------------------------------
# generate.py and image_sample.py.


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """A guided-diffusion checkpoint and the same network converted to a pickle."""
    folder = tmp_path_factory.mktemp('adm')
    net, flags, state = tiny_adm(SMALL)
    torch.save(state, folder / 'model.pt')
    with open(folder / 'net.pkl', 'wb') as f:
        pickle.dump(dict(ema=net), f)
    return dict(pt=str(folder / 'model.pt'), pkl=str(folder / 'net.pkl'), flags=SMALL)


def gen(*args):
    return CliRunner().invoke(generate.main, [str(a) for a in args], prog_name='generate.py')


def read_pngs(folder):
    return {name: np.asarray(PIL.Image.open(os.path.join(folder, name)), dtype=np.int64)
            for name in sorted(os.listdir(folder)) if name.endswith('.png')}


def test_generate_ddim_is_independent_of_batch_size(tmp_path, checkpoints):
    runs = []
    for batch in (1, 3, 6):
        res = gen(f'--network={checkpoints["pkl"]}', f'--outdir={tmp_path / str(batch)}', '--seeds=0-5', f'--batch={batch}',
                  '--solver=ddim', '--timestep_respacing=ddim10', '--eps_scaler=1.01', '--ts_window=3', '--ts_cutoff=0.5')
        assert res.exit_code == 0, res.output
        runs.append(read_pngs(tmp_path / str(batch)))
    assert len(runs[0]) == 6
    for other in runs[1:]:
        assert all(np.abs(runs[0][name] - other[name]).max() <= 1 for name in runs[0])


def test_generate_one_or_two_processes_give_the_same_files(tmp_path, checkpoints):
    def torchrun(nproc, out):
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}',
               os.path.join(ROOT, 'generate.py'), f'--network={checkpoints["pkl"]}', f'--outdir={out}', '--seeds=0-6',
               '--batch=2', '--solver=ddpm', '--steps=6', '--device=cpu']
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, res.stderr
    torchrun(2, tmp_path / 'two')
    torchrun(1, tmp_path / 'one')
    one, two = read_pngs(tmp_path / 'one'), read_pngs(tmp_path / 'two')
    assert len(one) == 7 and one.keys() == two.keys() and all(np.array_equal(one[k], two[k]) for k in one)


def test_generate_points_guided_diffusion_checkpoints_to_the_converter(tmp_path, checkpoints):
    res = gen(f'--network={checkpoints["pt"]}', f'--outdir={tmp_path / "o"}', '--seeds=0')
    assert res.exit_code != 0 and res.output.count('\n') == 1
    assert 'guided-diffusion (ADM) checkpoint: convert it with convert.py' in res.output


def test_generate_refuses_discrete_solvers_on_edm_networks(tmp_path):
    res = gen(f'--outdir={tmp_path / "o"}', '--seeds=0', '--solver=ddim')  # the bundled EDM model
    assert res.exit_code != 0 and res.output.count('\n') == 1
    assert 'needs a discrete-time network' in res.output and not (tmp_path / 'o' / 'generate-options.json').exists()


def flags_args(text):
    return text.split()


def run_image_sample(*args):
    return CliRunner().invoke(image_sample.main, [str(a) for a in args], prog_name='image_sample.py')


def test_image_sample_npz_layout_equals_generate_and_resumes(tmp_path, checkpoints, monkeypatch):
    common = [f'--model_path={checkpoints["pt"]}', *flags_args(checkpoints['flags']), '--timestep_respacing', 'ddim10',
              '--use_ddim', 'True', '--num_samples', '5', '--batch_size', '2', '--seed', '3', '--data_type', 'cifar10',
              '--model_type', 'adm']
    res = run_image_sample(*common, '--out_dir', tmp_path / 'a')
    assert res.exit_code == 0, res.output
    assert os.listdir(tmp_path / 'a') == ['samples_5x16x16x3.npz']
    with np.load(tmp_path / 'a' / 'samples_5x16x16x3.npz') as data:
        assert data.files == ['arr_0']
        images = data['arr_0']
    assert images.dtype == np.uint8 and images.shape == (5, 16, 16, 3)
    # The same seeds through generate.py: same float images, EDM's rounding instead of truncation.
    res = gen(f'--network={checkpoints["pkl"]}', f'--outdir={tmp_path / "png"}', '--seeds=3-7', '--solver=ddim',
              '--timestep_respacing=ddim10')
    assert res.exit_code == 0, res.output
    pngs = np.stack(list(read_pngs(tmp_path / 'png').values()))
    assert ((pngs - images) >= 0).all() and ((pngs - images) <= 1).all() and (pngs != images).any()

    # A run killed after its first batch leaves no samples file; the next run resumes.
    calls = []
    real = jobs._write_part  # pylint: disable=protected-access

    def write_then_die(*args):
        real(*args)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(jobs, '_write_part', write_then_die)
    with pytest.raises(KeyboardInterrupt):
        image_sample.run(dict(image_sample_values(common, tmp_path / 'b')))
    assert [name for name in os.listdir(tmp_path / 'b') if not name.startswith('.')] == []
    monkeypatch.setattr(jobs, '_write_part', real)
    res = run_image_sample(*common, '--out_dir', tmp_path / 'b')
    assert res.exit_code == 0 and '3 images sampled, 2 resumed' in res.output, res.output
    assert os.listdir(tmp_path / 'b') == ['samples_5x16x16x3.npz']
    with np.load(tmp_path / 'b' / 'samples_5x16x16x3.npz') as data:
        assert np.array_equal(data['arr_0'], images)


def image_sample_values(args, out_dir):
    """The values dict image_sample.main would receive for `args`."""
    ctx = image_sample.main.make_context('image_sample.py', [str(a) for a in args] + ['--out_dir', str(out_dir)])
    return ctx.params


def test_image_sample_conditional_labels(tmp_path):
    net, flags, state = tiny_adm(COND, num_classes=4)
    torch.save(state, tmp_path / 'cond.pt')
    res = run_image_sample('--model_path', tmp_path / 'cond.pt', *flags_args(COND), '--timestep_respacing', '4',
                           '--num_samples', '6', '--batch_size', '4', '--out_dir', tmp_path / 'o')
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / 'o' / 'samples_6x16x16x3.npz') as data:
        assert data.files == ['arr_0', 'arr_1'] and data['arr_1'].dtype == np.int64
        noise = SeedNoise(range(6))
        _, labels = latents_and_labels(noise, [3, 16, 16], 4)
        assert data['arr_1'].tolist() == labels.argmax(1).tolist()


@pytest.mark.parametrize('extra, message', [
    (['--timestep_respacing', 'ddim600'], 'no integer stride gives exactly 600'),
    (['--use_ddim', 'True', '--eta', '-1'], '--eta must be a non-negative number'),
    (['--use_ddim', 'True', '--do_time_shift', 'True', '--window', '-2'], '--ts_window must not be negative'),
    (['--use_ddim', 'True', '--do_time_shift', 'True', '--cutoff', '0', '--timestep_respacing', 'ddim5'], 'NaN with cutoff 0'),
    (['--do_time_shift', 'True'], "time shift for DDIM: add --use_ddim True"),
    (['--num_channels', '64'], 'has shape'),
    (['--learn_sigma', 'False'], 'has shape [6, 32, 3, 3], the flags give [3, 32, 3, 3]'),
    (['--use_ddim', 'maybe'], 'boolean value expected'),
    (['--num_chanels', '32'], 'No such option'),
    (['--num_samples', '0'], '0 is not in the range x>=1'),
])
def test_image_sample_bad_input_is_one_line_and_writes_nothing(tmp_path, checkpoints, extra, message):
    args = [f'--model_path={checkpoints["pt"]}', *flags_args(checkpoints['flags']), '--num_samples', '2',
            '--out_dir', tmp_path / 'o', *extra]
    res = run_image_sample(*args)
    assert res.exit_code != 0
    lines = [line for line in res.output.strip().splitlines() if line.startswith('Error')]
    assert len(lines) == 1 and message in lines[0] and 'Traceback' not in res.output, res.output
    assert not (tmp_path / 'o').exists() or not [n for n in os.listdir(tmp_path / 'o') if n.endswith('.npz')]


def test_the_seeds_ts_dpm_command_runs_verbatim(tmp_path):
    # TS-DPM-ADM's README command on a checkpoint in the published CIFAR-10 shapes (random weights).
    from adm_helpers import random_state
    torch.save(random_state(adm.parse_adm_flags(preset='cifar10-32')), tmp_path / 'ADM.pt')
    command = ('--image_size 32 --timestep_respacing ddim5 --model_path PATH --num_channels 128 --num_head_channels 32 '
               '--num_res_blocks 3 --attention_resolutions 16,8 --resblock_updown True --use_new_attention_order True '
               '--learn_sigma True --dropout 0.3 --diffusion_steps 1000 --noise_schedule cosine --use_scale_shift_norm True '
               '--batch_size 512 --num_samples 50000 --use_ddim True --do_time_shift True --cutoff 300 --window 80 '
               '--out_dir OUTPUT_DIR --data_type cifar10 --model_type adm')
    args = command.replace('PATH', str(tmp_path / 'ADM.pt')).replace('OUTPUT_DIR', str(tmp_path / 'out'))
    args = args.replace('--num_samples 50000', '--num_samples 2').split()
    res = subprocess.run([sys.executable, os.path.join(ROOT, 'image_sample.py'), *args], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    with np.load(tmp_path / 'out' / 'samples_2x32x32x3.npz') as data:
        assert data['arr_0'].shape == (2, 32, 32, 3)


def test_image_sample_one_or_two_processes_give_the_same_file(tmp_path, checkpoints):
    def torchrun(nproc, out):
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}',
               os.path.join(ROOT, 'image_sample.py'), f'--model_path={checkpoints["pt"]}', *flags_args(checkpoints['flags']),
               '--timestep_respacing', '6', '--num_samples', '5', '--batch_size', '2', '--device', 'cpu', '--out_dir', str(out)]
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, res.stderr
        assert res.stdout.count('Wrote ') == 1  # one summary line, from rank 0
        with np.load(out / 'samples_5x16x16x3.npz') as data:
            return data['arr_0']
    two, one = torchrun(2, tmp_path / 'two'), torchrun(1, tmp_path / 'one')
    assert np.array_equal(one, two) and os.listdir(tmp_path / 'two') == ['samples_5x16x16x3.npz']


def test_image_sample_takes_the_few_step_solvers(tmp_path, checkpoints):
    args = [f'--model_path={checkpoints["pt"]}', *flags_args(checkpoints['flags']), '--timestep_respacing', 'ddim10',
            '--num_samples', '3', '--solver', 'dpmpp2m', '--out_dir', tmp_path / 'o']
    res = run_image_sample(*args)
    assert res.exit_code == 0 and 'with dpmpp2m' in res.output, res.output
    with np.load(tmp_path / 'o' / 'samples_3x16x16x3.npz') as data:
        images = data['arr_0']
    net = tiny_adm(SMALL)[0]
    expected = jobs.to_uint8_guided(sample(net, SamplerOptions(solver='dpmpp2m', respacing='ddim10'), seeds=range(3)))
    assert np.array_equal(images, expected)
