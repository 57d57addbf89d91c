"""What a new user trips over (issue 27): each test fails if its trap comes back.

1 README's main job then fid.py calc on its folder; 2 offline detector download; 3 train.py
snapshot names, resume folder and differing options; 4 CPU thread / worker defaults;
5 scripts/image_sample_1gpu.py; 6 image_sample.py's --do_time_shift answer; 7 grid.py;
8 exposure.py's plot and calibrate; 9 fid.py channel and KID warnings; 10 docs/api.md runs.
"""

import glob
import importlib.util
import os
import re
import shlex

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import dnnlib
import fid
import generate
import grid
import image_sample
import train
from adm_helpers import random_state
from analysis import calibration, plots
from analysis.norms import EpsNorms, norms_record
from networks import adm
from samplers import SamplerOptions, jobs
from samplers.recording import evaluation_layout
from test_train import TINY_NET, _fresh_training_stats, make_dataset  # noqa: F401 (an autouse fixture)
from torch_utils import threads
from training import training_loop as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSIFIER = os.path.join(ROOT, 'models', 'mnist-classifier.pkl')


def invoke(command, args, name):
    return CliRunner().invoke(command, [str(a) for a in args], prog_name=name)


def one_error_line(res):
    text = res.stderr if res.stderr else res.output
    assert res.exit_code != 0 and text.startswith('Error: ') and text.count('\n') == 1, text
    return text


def write_pngs(folder, images):
    os.makedirs(folder, exist_ok=True)
    for i, image in enumerate(images):
        PIL.Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(os.path.join(folder, f'{i:06d}.png'))


def random_images(n, channels, seed=0, size=32):
    return np.random.default_rng(seed).integers(0, 256, [n, size, size, channels], dtype=np.uint8)

#----------------------------------------------------------------------------
# 1. README's two commands, then fid.py calc on the main job's folder.


def readme_main_job():
    """The generate.py part of README's set-up command (the first command block)."""
    with open(os.path.join(ROOT, 'README.md'), encoding='utf8') as f:
        text = f.read()
    setup = text[text.index('## Set-up'):]
    command = re.search(r'```\.bash\n(.*?)\n```', setup, re.S).group(1)
    return shlex.split(command.split('&& python generate.py', 1)[1])


def test_readme_main_job_then_fid_calc_on_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = readme_main_job()
    outdir = [a.split('=', 1)[1] for a in args if a.startswith('--outdir=')][0]
    # The README's own command, on 4 seeds and 2 steps to keep the test short.
    args = [a for a in args if not a.startswith('--seeds=')] + ['--seeds=0-3', '--steps=2']
    res = invoke(generate.main, args, 'generate.py')
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(outdir)) == ['000000.png', '000001.png', '000002.png', '000003.png', 'generate-options.json']
    grids = [a.split('=', 1)[1] for a in args if a.startswith('--grid=')]
    assert grids and os.path.isfile(grids[0])  # the grid is written, outside the image folder
    # The next natural step: score the folder (a reference of other images, a local detector).
    write_pngs(tmp_path / 'real', random_images(6, 1))
    res = invoke(fid.main, ['ref', '--data=real', '--dest=ref.npz', f'--detector={CLASSIFIER}', '--workers=0'], 'fid.py')
    assert res.exit_code == 0, res.output
    res = invoke(fid.main, ['calc', f'--images={outdir}', '--ref=ref.npz', f'--detector={CLASSIFIER}', '--num=4',
                            '--workers=0'], 'fid.py')
    assert res.exit_code == 0, res.stderr + res.output
    assert re.search(r'^fid\s+\d', res.output, re.M)
    # The trap itself: a grid inside the folder breaks the score, hence the refusal below.
    PIL.Image.open(grids[0]).save(os.path.join(outdir, 'grid.png'))
    res = invoke(fid.main, ['calc', f'--images={outdir}', '--ref=ref.npz', f'--detector={CLASSIFIER}', '--num=5',
                            '--workers=0'], 'fid.py')
    assert res.exit_code != 0


def test_readme_setup_is_two_commands_and_says_how_to_install_cpu_torch():
    with open(os.path.join(ROOT, 'README.md'), encoding='utf8') as f:
        text = f.read()
    setup = text[text.index('## Set-up'):text.index('\n## ', text.index('## Set-up') + 5)]
    assert len(re.findall(r'```\.bash\n', setup)) == 2
    assert 'pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu' in setup
    assert '--grid=out/' not in text and '(./docs/api.md)' in text


def test_generate_refuses_a_grid_inside_outdir_before_sampling(tmp_path):
    for grid_path in (tmp_path / 'out' / 'grid.png', tmp_path / 'out' / 'sub' / 'g.png'):
        res = invoke(generate.main, [f'--outdir={tmp_path / "out"}', '--seeds=0', '--steps=2', f'--grid={grid_path}'],
                     'generate.py')
        text = one_error_line(res)
        assert 'lies inside --outdir' in text and '--grid=' in text
        assert not (tmp_path / 'out').exists()  # nothing sampled, nothing written
    # A name that merely starts like the folder is outside it.
    jobs.check_grid_path(str(tmp_path / 'out.png'), str(tmp_path / 'out'))
    jobs.check_grid_path(str(tmp_path / 'out-grid' / 'g.png'), str(tmp_path / 'out'))

#----------------------------------------------------------------------------
# 2. Offline fid.py: the way out of a failed detector download.


def test_offline_detector_download_names_the_ways_out(tmp_path):
    write_pngs(tmp_path / 'imgs', random_images(4, 1))
    url = 'http://127.0.0.1:9/metrics/inception-2015-12-05.pkl'  # nothing listens on port 9
    ref = tmp_path / 'ref.npz'
    res = invoke(fid.main, ['ref', f'--data={tmp_path / "imgs"}', f'--dest={ref}', f'--detector={url}', '--workers=0'],
                 'fid.py')
    text = one_error_line(res)
    cache_file = dnnlib.util.url_cache_file(url)
    assert cache_file.startswith(str(tmp_path)) and cache_file in text  # the test's private cache
    assert '--detector=PKL' in text and 'models/mnist-classifier.pkl' in text
    # The advice works: a copy at that path serves the URL offline.
    os.makedirs(os.path.dirname(cache_file), exist_ok=True)
    with open(CLASSIFIER, 'rb') as src, open(cache_file, 'wb') as dst:
        dst.write(src.read())
    res = invoke(fid.main, ['ref', f'--data={tmp_path / "imgs"}', f'--dest={ref}', f'--detector={url}', '--workers=0'],
                 'fid.py')
    assert res.exit_code == 0, res.output
    # A local path that does not exist gets no download advice.
    res = invoke(fid.main, ['ref', f'--data={tmp_path / "imgs"}', f'--dest={ref}', f'--detector={tmp_path / "no.pkl"}'],
                 'fid.py')
    assert 'put a copy' not in one_error_line(res) and '--detector=PKL' not in one_error_line(res)

#----------------------------------------------------------------------------
# 3. train.py: fractional ticks, resume in the run's folder, differing options named.


def test_kimg_names_keep_edms_and_never_collide():
    # EDM's names with whole-kimg ticks (which keep them apart), and at whole kimg.
    assert tl.kimg_name(32) == '000000' and tl.kimg_name(100032) == '000100' and tl.kimg_name(2000, True) == '000002'
    names = [tl.kimg_name(n, True) for n in range(0, 5000, 32)]
    assert len(set(names)) == len(names)
    assert tl.kimg_name(512, True) == '000000.512' and tl.kimg_name(2500, True) == '000002.500'
    assert all(tl.nimg_of_name(tl.kimg_name(n, True)) == n for n in range(0, 5000, 32))
    assert tl.nimg_of_name('000001.5') is None and tl.nimg_of_name('x') is None


def test_fractional_ticks_resume_in_the_same_folder_and_name_differing_options(tmp_path):
    data = make_dataset(tmp_path / 'quadrants')
    common = [f'--outdir={tmp_path / "runs"}', f'--data={data}', '--cond=1', '--batch=32', '--tick=0.25', '--snap=1',
              '--dump=1', '--lr-rampup=1', '--workers=0', '--seed=1', '--desc=t']
    res = invoke(train.main, [*common, *TINY_NET, '--duration=0.0005'], 'train.py')
    assert res.exit_code == 0, res.output
    [run] = glob.glob(str(tmp_path / 'runs' / '*'))
    snaps = sorted(os.path.basename(p) for p in glob.glob(os.path.join(run, 'network-snapshot-*.pkl')))
    # Ticks end after the first batch, then every 256 images: EDM's names would all be 000000.
    assert snaps == ['network-snapshot-000000.032.pkl', 'network-snapshot-000000.288.pkl', 'network-snapshot-000000.512.pkl']
    with open(os.path.join(run, 'stats.jsonl')) as f:
        ticks = len(f.readlines())
    # Resume from the middle state: same folder, one stats.jsonl that grows.
    state = os.path.join(run, 'training-state-000000.288.pt')
    res = invoke(train.main, [*common, *TINY_NET, '--duration=0.0007', f'--resume={state}'], 'train.py')
    assert res.exit_code == 0, res.output
    assert glob.glob(str(tmp_path / 'runs' / '*')) == [run]
    assert os.path.isfile(os.path.join(run, 'network-snapshot-000000.544.pkl'))
    assert os.path.isfile(os.path.join(run, 'network-snapshot-000000.704.pkl'))
    with open(os.path.join(run, 'stats.jsonl')) as f:
        assert len(f.readlines()) > ticks
    # Options that do not fit the weights: the message names them.
    other = ['--cbase=16' if a.startswith('--cbase') else a for a in TINY_NET]
    res = invoke(train.main, [*common, *other, '--duration=0.0007', f'--resume={state}'], 'train.py')
    text = one_error_line(res)
    assert 'do not fit' in text and '--cbase (8 in the run, 16 now)' in text and '--cres' not in text

#----------------------------------------------------------------------------
# 4. CPU thread and worker defaults.


def test_thread_defaults_count_idle_cores_per_process(monkeypatch):
    assert threads.default_cpu_threads(cores=2, load=1.9) == 1     # a shared 2-core machine: one thread
    assert threads.default_cpu_threads(cores=2, load=0.0) == 2
    assert threads.default_cpu_threads(cores=16, load=0.2) == 16
    assert threads.default_cpu_threads(processes=4, cores=16, load=0.0) == 4
    assert threads.default_cpu_threads(processes=4, cores=2, load=0.0) == 1
    assert threads.default_cpu_threads(cores=4, load=9.0) == 1
    assert [threads.default_workers(cores=c) for c in (1, 2, 3, 16)] == [0, 1, 2, 3]
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads, 'idle_cores', lambda cores=None, load=None: 3)
        monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
        torch.set_num_threads(1)
        assert threads.set_cpu_threads('cpu') == 3
        monkeypatch.setenv('OMP_NUM_THREADS', '1')  # the user's choice wins
        torch.set_num_threads(2)
        assert threads.set_cpu_threads('cpu') == 2
    finally:
        torch.set_num_threads(before)


def test_fid_workers_default_is_not_above_the_cores(monkeypatch):
    seen = {}
    monkeypatch.setattr(fid, 'calc_reference', lambda *a, **k: seen.update(k) or 'x.npz')
    monkeypatch.setattr(threads, 'usable_cores', lambda: 2)
    res = invoke(fid.main, ['ref', '--data=x', '--dest=x.npz'], 'fid.py')
    assert res.exit_code == 0 and seen['num_workers'] == 1
    res = invoke(fid.main, ['ref', '--data=x', '--dest=x.npz', '--workers=3'], 'fid.py')
    assert seen['num_workers'] == 3

#----------------------------------------------------------------------------
# 5, 6. TS-DPM-ADM's script and image_sample.py's answer about the time shift.

# TS-DPM-ADM's README command with a smaller network (its flags otherwise as they are).
SEED_COMMAND = ('--image_size 32 --timestep_respacing ddim5 --model_path {ckpt} --num_channels 32 --num_head_channels 32 '
                '--num_res_blocks 1 --attention_resolutions 16,8 --resblock_updown True --use_new_attention_order True '
                '--learn_sigma True --dropout 0.3 --diffusion_steps 1000 --noise_schedule cosine '
                '--use_scale_shift_norm True --batch_size 3 --num_samples 3 --use_ddim True --do_time_shift True '
                '--cutoff 300 --window 80 --out_dir {out} --data_type cifar10 --model_type adm')


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp('ckpt')
    flags = adm.parse_adm_flags(SEED_COMMAND.format(ckpt='x', out='x'))
    torch.save(random_state(flags, seed=1), folder / 'model.pt')
    return str(folder / 'model.pt')


def test_image_sample_1gpu_script_runs_and_names_its_output_as_the_original(tmp_path, checkpoint):
    # The script file itself, run in this process (its command is a click command).
    spec = importlib.util.spec_from_file_location('image_sample_1gpu', os.path.join(ROOT, 'scripts', 'image_sample_1gpu.py'))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    res = invoke(script.main, [*shlex.split(SEED_COMMAND.format(ckpt=checkpoint, out=tmp_path / 'a')), '--gpu_id', '0'],
                 'image_sample_1gpu.py')
    assert res.exit_code == 0, res.output
    assert 'adm_cifar10_ddim5step_80win_300cut.npz' in res.output
    assert os.listdir(tmp_path / 'a') == ['adm_cifar10_ddim5step_80win_300cut.npz']
    # The same pixels as image_sample.py's samples file.
    res = invoke(image_sample.main, shlex.split(SEED_COMMAND.format(ckpt=checkpoint, out=tmp_path / 'b')), 'image_sample.py')
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / 'a' / 'adm_cifar10_ddim5step_80win_300cut.npz') as a, \
            np.load(tmp_path / 'b' / 'samples_3x32x32x3.npz') as b:
        assert a.files == ['arr_0'] and np.array_equal(a['arr_0'], b['arr_0'])
    values = dict(model_type=None, data_type=None, timestep_respacing='ddim5', do_time_shift=False, window=2, cutoff=300)
    assert image_sample.tsdpm_1gpu_name(values) == 'adm_cifar_ddim5step.npz'  # the original's defaults


def test_time_shift_without_ddim_is_answered_in_image_samples_flags(tmp_path):
    base = shlex.split(SEED_COMMAND.format(ckpt=tmp_path / 'none.pt', out=tmp_path / 'o'))
    i = base.index('--use_ddim')
    args = base[:i] + base[i + 2:]
    text = one_error_line(invoke(image_sample.main, args, 'image_sample.py'))
    assert '--use_ddim True' in text and '--do_time_shift' in text and '--ts_mode' not in text
    text = one_error_line(invoke(image_sample.main, [*args, '--solver', 'dpmpp2m'], 'image_sample.py'))
    assert '--solver dpmpp2m' in text and '--ts_mode' not in text

#----------------------------------------------------------------------------
# 7. A grid of an .npz without code.


def test_grid_of_an_npz_is_the_first_images_tiled_row_by_row(tmp_path):
    images = random_images(7, 3, seed=3, size=4)
    np.savez(tmp_path / 's.npz', images)
    res = invoke(grid.main, [f'--images={tmp_path / "s.npz"}', f'--dest={tmp_path / "g.png"}', '--num=5', '--cols=3'], 'grid.py')
    assert res.exit_code == 0, res.output
    got = np.asarray(PIL.Image.open(tmp_path / 'g.png'))
    expected = np.zeros([8, 12, 3], np.uint8)  # 2 rows of 3, the sixth cell black
    for n in range(5):
        expected[(n // 3) * 4:(n // 3) * 4 + 4, (n % 3) * 4:(n % 3) * 4 + 4] = images[n]
    assert np.array_equal(got, expected)
    write_pngs(tmp_path / 'pngs', images[:, :, :, :1])
    text = one_error_line(invoke(grid.main, [f'--images={tmp_path / "pngs"}', f'--dest={tmp_path / "pngs" / "g.png"}'], 'grid.py'))
    assert 'inside' in text
    (tmp_path / 'bad.npz').write_bytes(b'not a zip')
    one_error_line(invoke(grid.main, [f'--images={tmp_path / "bad.npz"}', f'--dest={tmp_path / "b.png"}'], 'grid.py'))

#----------------------------------------------------------------------------
# 8. exposure.py: one curve per evaluation kind, off-scale ratios explained, which scaler.


def heun_record(steps=4):
    layout = evaluation_layout(steps, 'heun')
    count = len(layout)
    training = np.tile(np.linspace(30, 10, count), (8, 1))
    sampling = training * 1.02
    sampling[:, -1] *= 3  # the last evaluation far off the ratio scale
    levels = list(np.geomspace(80, 0.002, count))
    result = EpsNorms(layout=layout, levels=levels, scalers=[1.0] * count, dim=1024, sampling=sampling,
                      sampling_sigma=np.tile(levels, (8, 1)), training=training)
    return norms_record(result, network='n', data='d', seeds='0-7', options=SamplerOptions(solver='heun', num_steps=steps))


def test_heun_norms_plot_has_one_monotone_curve_per_kind_and_explains_off_scale(tmp_path, monkeypatch):
    pytest.importorskip('matplotlib')
    figures = []
    monkeypatch.setattr(plots, '_save', lambda fig, path: figures.append(fig) or path)
    record = heun_record()
    plots.plot_norms([record], str(tmp_path / 'p.png'))
    ax, axr = figures[0].axes
    kinds = {r['kind'] for r in record['evaluations']}
    assert len(kinds) == 2 and len(axr.lines) == 2 + 1  # one ratio curve per kind, and the line at 1
    for line in axr.lines[:2]:
        x = list(line.get_xdata())
        expect = sorted((r['timestep'] for r in record['evaluations'] if f'{r["kind"]}' in line.get_label()), reverse=True)
        assert x == expect  # the kind's own evaluations, in order: no zig-zag between kinds
    texts = [t.get_text() for t in axr.texts]
    assert any(t.startswith('\u2191') and '3.06' in t for t in texts)
    assert any('off this axis' in t for t in texts)


def test_calibrate_says_which_scaler_to_use():
    record = heun_record()
    rows = record['evaluations']
    cal, other = calibration.calibrate(rows, 4), calibration.calibrate(rows, 4, fit='ratio')
    lines = calibration.describe_calibration(record, cal, other)
    S = np.array([r['sampling'] for r in rows])
    T = np.array([r['training'] for r in rows])
    b_norm = float(S @ T / (T @ T))
    assert lines[-1].startswith(f'Use: --eps_scaler={b_norm:.4f} (fit "norm"')
    assert f'{other.eps_scaler:.4f}' not in lines[-1] and 'for comparison only' in lines[-1]
    assert calibration.describe_calibration(record, other, cal)[-1].startswith(f'Use: --eps_scaler={np.mean(S / T):.4f}')

#----------------------------------------------------------------------------
# 9. fid.py: RGB against a grayscale reference, KID on few images.


def test_fid_warns_on_channel_mismatch_and_on_kid_from_few_images(tmp_path):
    write_pngs(tmp_path / 'gray', random_images(12, 1, seed=1))
    write_pngs(tmp_path / 'rgb', random_images(12, 3, seed=2))
    write_pngs(tmp_path / 'gray2', random_images(12, 1, seed=3))
    res = invoke(fid.main, ['ref', f'--data={tmp_path / "gray"}', f'--dest={tmp_path / "ref.npz"}', '--features=12',
                            f'--detector={CLASSIFIER}', '--workers=0'], 'fid.py')
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / 'ref.npz') as ref:
        assert int(ref['image_channels']) == 1
    calc = ['calc', f'--ref={tmp_path / "ref.npz"}', f'--detector={CLASSIFIER}', '--num=12', '--workers=0']
    res = invoke(fid.main, [*calc, f'--images={tmp_path / "rgb"}'], 'fid.py')
    assert res.exit_code == 0, res.output
    assert 'warning:' in res.stderr and 'RGB images' in res.stderr and 'grayscale images' in res.stderr
    res = invoke(fid.main, [*calc, f'--images={tmp_path / "gray2"}'], 'fid.py')
    assert res.exit_code == 0 and 'warning' not in res.stderr, res.stderr
    res = invoke(fid.main, [*calc, f'--images={tmp_path / "gray2"}', '--metrics=fid,kid'], 'fid.py')
    assert res.exit_code == 0, res.output
    assert 'KID from 12 images per set is unreliable' in res.stderr and re.search(r'^kid\s', res.output, re.M)
    # A reference batch says its channels through its images.
    np.savez(tmp_path / 'batch.npz', random_images(12, 3, seed=4))
    res = invoke(fid.main, ['calc', f'--ref={tmp_path / "batch.npz"}', f'--detector={CLASSIFIER}', '--num=12', '--workers=0',
                            f'--images={tmp_path / "gray2"}'], 'fid.py')
    assert res.exit_code == 0 and 'grayscale images but' in res.stderr, res.stderr

#----------------------------------------------------------------------------
# 10. docs/api.md: its example runs as written.


def test_api_doc_example_runs(tmp_path, monkeypatch, capsys):
    with open(os.path.join(ROOT, 'docs', 'api.md'), encoding='utf8') as f:
        blocks = re.findall(r'```python\n(.*?)```', f.read(), re.S)
    assert len(blocks) == 1
    os.symlink(os.path.join(ROOT, 'models'), tmp_path / 'models')
    monkeypatch.chdir(tmp_path)  # the example's relative paths, from a fresh folder
    exec(compile(blocks[0], 'docs/api.md', 'exec'), {'__name__': '__main__'})  # pylint: disable=exec-used
    stdout = capsys.readouterr().out
    assert re.search(r'^images: \(8, 32, 32, 1\) uint8 - ES\+TS moved [1-9]\d* values$', stdout, re.M), stdout
    value = float(re.search(r'FD_MNIST of ES\+TS against plain Heun: (\S+)', stdout).group(1))
    assert np.isfinite(value) and value > 0
    assert sorted(os.listdir(tmp_path / 'api-example')) == ['es_ts.npz', 'plain.npz', 'ref.npz']


def test_grid_help_text_in_sync():
    res = CliRunner().invoke(grid.main, ['--help'], prog_name='grid.py')
    with open(os.path.join(ROOT, 'docs', 'grid-help.txt'), encoding='utf8') as f:
        assert res.output == f.read(), 'regenerate with: python -c "from click.testing import CliRunner; import grid; ' \
            'print(CliRunner().invoke(grid.main, [\'--help\'], prog_name=\'grid.py\').output, end=\'\')" > docs/grid-help.txt'
