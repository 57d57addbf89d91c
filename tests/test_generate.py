"""generate.py and torch_utils/images.py: PNGs per seed, batch and process independence,
resume, one-line errors, and EDM parity figures."""

import io
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import generate
from samplers import Sampler, SamplerOptions, SeedNoise, latents_and_labels
from test_samplers import tiny_net
from torch_utils import images as image_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def pickles(tmp_path_factory):
    """Network pickles written with this toolkit's persistence."""
    folder = tmp_path_factory.mktemp('nets')
    paths = {}
    for name, kwargs in dict(cond=dict(label_dim=3), uncond=dict(), gray=dict(channels=1),
                             vp=dict(precond='VPPrecond'), iddpm=dict(precond='iDDPMPrecond')).items():
        paths[name] = str(folder / f'{name}.pkl')
        with open(paths[name], 'wb') as f:
            pickle.dump(dict(ema=tiny_net(**kwargs), loss_fn=None), f)
    return paths


def cli(*args):
    return CliRunner().invoke(generate.main, [str(a) for a in args], prog_name='generate.py')


def pngs(folder):
    """{relative path: bytes} of every PNG under folder."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            if name.endswith('.png'):
                with open(os.path.join(root, name), 'rb') as f:
                    out[os.path.relpath(os.path.join(root, name), folder)] = f.read()
    return out


def pixels(data):
    return np.asarray(PIL.Image.open(io.BytesIO(data)), dtype=np.int64)


def generated(tmp_path, pickles, name, *args, net='cond'):
    out = tmp_path / name
    result = cli(f'--network={pickles[net]}', f'--outdir={out}', '--device=cpu', *args)
    assert result.exit_code == 0, result.output
    return pngs(out)

#----------------------------------------------------------------------------
# Parity with NVIDIA's EDM (and EDM-ES): figures of the PNGs that their generate.py wrote for
# the same pickles (tiny_net(...) networks), seeds 0-7, --batch=8, on the CPU with 1 thread
# (conftest.py runs the tests on one thread):
# (sum of all pixel values, sum of pixel value * (flat index mod 251)).

EDM_FIGURES = [
    ('cond', ['--steps=6'], (203634, 24566030)),
    ('cond', ['--steps=6', '--S_churn=20', '--S_min=0.01', '--S_max=10', '--S_noise=1.007'], (207074, 25379573)),
    ('cond', ['--steps=6', '--class=2'], (203755, 24580563)),
    ('cond', ['--steps=6', '--disc=vp', '--schedule=vp', '--scaling=vp'], (209107, 25345239)),
    ('cond', ['--steps=6', '--disc=ve', '--schedule=ve', '--S_churn=5'], (200430, 25095825)),
    ('cond', ['--steps=6', '--disc=iddpm', '--solver=euler'], (205087, 24976002)),
    ('cond', ['--steps=5', '--scaling=vp', '--S_churn=5', '--rho=5', '--sigma_min=0.01', '--sigma_max=50'], (217434, 26799920)),
    ('vp', ['--steps=6', '--solver=euler'], (194872, 23475309)),
    ('iddpm', ['--steps=6', '--disc=iddpm'], (205476, 24910231)),
    ('gray', ['--steps=6'], (70212, 8561223)),
    # EDM-ES (forever208/EDM-ES generate.py): Euler with eps scaling; Heun scaling both evaluations.
    ('cond', ['--steps=6', '--solver=euler', '--eps_scaler=1.0048'], (204900, 24998046)),
    ('cond', ['--steps=6', '--eps_scaler=0.995', '--S_churn=10'], (207261, 25385481)),
]


@pytest.mark.parametrize('net, args, expected', EDM_FIGURES, ids=[' '.join(a) for _, a, _ in EDM_FIGURES])
def test_same_images_as_edm(tmp_path, pickles, net, args, expected):
    files = generated(tmp_path, pickles, 'out', '--seeds=0-7', '--batch=8', *args, net=net)
    assert sorted(files) == [f'{seed:06d}.png' for seed in range(8)]
    values = np.concatenate([pixels(files[name]).reshape(-1) for name in sorted(files)])
    figures = (int(values.sum()), int((values * (np.arange(values.size) % 251)).sum()))
    # Other CPUs may round a few float32 kernel results differently: allow two 1-level flips.
    assert abs(figures[0] - expected[0]) <= 2 and abs(figures[1] - expected[1]) <= 2 * 250, figures

#----------------------------------------------------------------------------
# Independence of batch size and process count.


def test_same_images_for_any_batch_size(tmp_path, pickles):
    runs = [generated(tmp_path, pickles, f'b{batch}', '--seeds=0-7', f'--batch={batch}', '--steps=5', '--S_churn=5')
            for batch in (1, 3, 8)]
    assert sorted(runs[0]) == sorted(runs[1]) == sorted(runs[2]) and len(runs[0]) == 8
    differing = 0
    for name in runs[0]:
        for other in runs[1:]:
            diff = np.abs(pixels(runs[0][name]) - pixels(other[name]))
            assert diff.max() <= 1
            differing += int((diff > 0).sum())
    print(f'pixels differing by 1 level across --batch 1/3/8: {differing} of {2 * 8 * 8 * 8 * 3}')


def torchrun(nproc, outdir, network, *args):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}',
           os.path.join(ROOT, 'generate.py'), f'--network={network}', f'--outdir={outdir}', *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_same_bytes_for_one_or_two_processes(tmp_path, pickles):
    args = ['--seeds=0-9', '--batch=3', '--steps=4', '--S_churn=3', f'--grid={tmp_path / "grid.png"}']
    two = torchrun(2, tmp_path / 'two', pickles['cond'], *args)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count('Done: 10 images') == 1  # one summary line, from rank 0
    one = torchrun(1, tmp_path / 'one', pickles['cond'], *args[:-1])
    assert one.returncode == 0, one.stderr
    plain = generated(tmp_path, pickles, 'plain', *args[:-1])
    assert pngs(tmp_path / 'two') == pngs(tmp_path / 'one') == plain and len(plain) == 10
    grid = image_io.read_png(tmp_path / 'grid.png')
    tiles = [image_io.read_png(tmp_path / 'two' / f'{seed:06d}.png') for seed in range(10)]
    assert np.array_equal(grid, image_io.make_grid(tiles))

#----------------------------------------------------------------------------
# Resuming.


def test_resume_after_an_interrupted_run_gives_the_same_files(tmp_path, pickles, monkeypatch):
    args = ['--seeds=0-11', '--batch=4', '--steps=4']
    clean = generated(tmp_path, pickles, 'clean', *args)
    real_save = image_io.save_png
    written = []

    def dying_save(path, image):
        if len(written) == 6:
            raise KeyboardInterrupt  # the process is stopped while writing its 7th PNG
        written.append(path)
        real_save(path, image)

    monkeypatch.setattr(image_io, 'save_png', dying_save)
    result = cli(f'--network={pickles["cond"]}', f'--outdir={tmp_path / "run"}', '--device=cpu', *args)
    assert result.exit_code != 0
    assert sorted(pngs(tmp_path / 'run')) == sorted(os.path.relpath(p, tmp_path / 'run') for p in written)
    assert not [f for f in os.listdir(tmp_path / 'run') if f.endswith('.tmp')]
    monkeypatch.setattr(image_io, 'save_png', real_save)
    before = {name: os.stat(tmp_path / 'run' / name).st_mtime_ns for name in pngs(tmp_path / 'run')}
    result = cli(f'--network={pickles["cond"]}', f'--outdir={tmp_path / "run"}', '--device=cpu', *args)
    assert result.exit_code == 0 and '6 images' in result.output and '6 already existed' in result.output
    assert pngs(tmp_path / 'run') == clean
    assert all(os.stat(tmp_path / 'run' / name).st_mtime_ns == t for name, t in before.items())  # not rewritten


def test_resume_after_sigkill(tmp_path, pickles):
    args = ['--seeds=0-23', '--batch=1', '--steps=10', '--subdirs']
    out = tmp_path / 'killed'
    proc = subprocess.Popen([sys.executable, 'generate.py', f'--network={pickles["cond"]}', f'--outdir={out}', *args],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(pngs(out)) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = pngs(out)
    for data in partial.values():
        pixels(data)  # every PNG that exists is complete
    generated(tmp_path, pickles, 'killed', *args)
    assert pngs(out) == generated(tmp_path, pickles, 'clean', *args)
    print(f'{len(partial)} PNGs existed when the run was killed (of 24)')


def test_resume_refuses_images_made_with_other_options(tmp_path, pickles):
    generated(tmp_path, pickles, 'out', '--seeds=0-3', '--steps=4')
    result = cli(f'--network={pickles["cond"]}', f'--outdir={tmp_path / "out"}', '--seeds=0-3', '--steps=5')
    assert result.exit_code == 1 and result.output.count('\n') == 1
    assert 'num_steps=4, not 5' in result.output
    again = generated(tmp_path, pickles, 'out', '--seeds=0-3', '--steps=5', '--no-resume')
    assert again == generated(tmp_path, pickles, 'fresh', '--seeds=0-3', '--steps=5')

#----------------------------------------------------------------------------
# Options and layout.


def test_subdirs_class_and_grayscale(tmp_path, pickles):
    files = generated(tmp_path, pickles, 'sub', '--seeds=998-1001', '--subdirs', '--steps=3')
    assert sorted(files) == ['000000/000998.png', '000000/000999.png', '001000/001000.png', '001000/001001.png']
    files = generated(tmp_path, pickles, 'cls', '--seeds=5,9', '--class=1', '--steps=3', '--S_churn=2')
    net = generate.loader.load_network(pickles['cond'])
    noise = SeedNoise([5, 9])
    latents, labels = latents_and_labels(noise, [3, 8, 8], 3, class_idx=1)
    expected = image_io.to_uint8(Sampler(net, SamplerOptions(num_steps=3, S_churn=2))(latents, labels, noise.randn_like))
    assert np.array_equal(pixels(files['000005.png']), expected[0]) and np.array_equal(pixels(files['000009.png']), expected[1])
    random_labels = generated(tmp_path, pickles, 'rnd', '--seeds=5,9', '--steps=3', '--S_churn=2')
    assert random_labels != files
    gray = generated(tmp_path, pickles, 'gray', '--seeds=0-1', '--steps=3', net='gray')
    assert PIL.Image.open(tmp_path / 'gray' / '000000.png').mode == 'L' and pixels(gray['000001.png']).shape == (8, 8)


def test_all_features_from_the_command_line(tmp_path, pickles):
    base = generated(tmp_path, pickles, 'base', '--seeds=0-3', '--steps=5', '--solver=euler')
    for extra in (['--eps_scaler=1.01', '--eps_scaler_k=0.001'], ['--ts_window=30', '--ts_cutoff=0.5'],
                  ['--ts_window=30', '--ts_cutoff=0.5', '--ts_signal_var=0.1', '--S_churn=5', '--eps_scaler=1.005']):
        assert generated(tmp_path, pickles, '_'.join(extra), '--seeds=0-3', '--steps=5', '--solver=euler', *extra) != base
    assert generated(tmp_path, pickles, 'off', '--seeds=0-3', '--steps=5', '--solver=euler', '--eps_scaler=1',
                     '--ts_window=0') == base


@pytest.mark.parametrize('args, message', [
    (['--seeds=1-x'], 'invalid --seeds "1-x"'),
    (['--seeds=9-3'], 'end before start'),
    (['--seeds= '], 'invalid --seeds'),
    (['--class=3'], 'out of range: the network has classes 0-2'),
    (['--steps=1'], '--steps must be at least 2'),
    (['--sigma_min=2', '--sigma_max=1'], 'must be below --sigma_max'),
    (['--sigma_min=100'], 'not below sigma_max 80'),
    (['--eps_scaler_k=-0.1', '--steps=20'], 'epsilon scalers must be positive'),
])
def test_one_line_errors(tmp_path, pickles, args, message):
    result = cli(f'--network={pickles["cond"]}', f'--outdir={tmp_path / "out"}', *args)
    assert result.exit_code == 1 and result.output.startswith('Error: ') and result.output.count('\n') == 1, result.output
    assert message in result.output
    assert not pngs(tmp_path)


def test_one_line_errors_for_network_and_outdir(tmp_path, pickles, monkeypatch):
    monkeypatch.setattr(generate, 'DEFAULT_NETWORK', str(tmp_path / 'no-bundled-model.pkl'))
    (tmp_path / 'junk.pkl').write_bytes(b'not a pickle')
    (tmp_path / 'file').write_text('x')
    cases = [
        ([f'--network={pickles["uncond"]}', '--class=0'], 'network is unconditional'),
        ([f'--network={tmp_path / "junk.pkl"}'], 'cannot load network'),
        ([f'--network={tmp_path / "missing.pkl"}'], 'no such file'),
        ([], 'no --network given and the bundled model'),
        ([f'--network={pickles["cond"]}', f'--outdir={tmp_path / "file" / "sub"}'], 'cannot write to --outdir'),
    ]
    for args, message in cases:
        if not any(a.startswith('--outdir') for a in args):
            args = args + [f'--outdir={tmp_path / "out"}']
        result = cli(*args)
        assert result.exit_code == 1 and result.output.count('\n') == 1 and message in result.output, result.output
    assert not pngs(tmp_path)


def test_parse_seeds_and_batches():
    assert generate.parse_seeds('0-3,10,2') == [0, 1, 2, 3, 10]
    assert generate.parse_seeds('0-9,100-109')[-1] == 109
    with pytest.raises(generate.GenerateError, match='negative'):
        generate.parse_seeds('-5')
    assert generate.split_batches(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert generate.image_path('o', 12345, subdirs=True) == os.path.join('o', '012000', '012345.png')


def test_help_text_in_sync(repo_root):
    result = CliRunner().invoke(generate.main, ['--help'], prog_name='generate.py')
    with open(os.path.join(repo_root, 'docs', 'generate-help.txt'), encoding='utf8') as f:
        assert result.output == f.read(), 'regenerate: python -c "import generate; from click.testing import ' \
            'CliRunner; print(CliRunner().invoke(generate.main, [\'--help\'], prog_name=\'generate.py\').output, ' \
            'end=\'\')" > docs/generate-help.txt'

#----------------------------------------------------------------------------
# torch_utils/images.py


def test_png_round_trip_and_grid(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 4, 6, 3), dtype=np.uint8)
    gray = rgb[..., :1].copy()
    for name, image in (('rgb.png', rgb[0]), ('gray.png', gray[0]), ('hw.png', gray[0, :, :, 0])):
        image_io.save_png(tmp_path / name, image)
        back = image_io.read_png(tmp_path / name)
        assert np.array_equal(back.reshape(image.shape), image)
    assert image_io.read_png(tmp_path / 'hw.png').shape == (4, 6, 1)
    grid = image_io.make_grid(rgb, cols=2)
    assert grid.shape == (12, 12, 3)
    assert np.array_equal(grid[4:8, 6:12], rgb[3]) and not grid[8:12, 6:12].any()
    assert image_io.make_grid(gray).shape == (8, 18, 1)  # ceil(sqrt(5)) = 3 columns
    with pytest.raises(ValueError):
        image_io.save_png(tmp_path / 'bad.png', rgb[0].astype(np.float32))
    with pytest.raises(ValueError):
        image_io.save_png(tmp_path / 'bad.png', np.zeros((4, 4, 2), np.uint8))
    assert not (tmp_path / 'bad.png').exists() and sorted(os.listdir(tmp_path)) == ['gray.png', 'hw.png', 'rgb.png']


def test_png_writes_are_atomic(tmp_path, monkeypatch):
    image_io.save_png(tmp_path / 'a.png', np.zeros((4, 4, 3), np.uint8))
    original = (tmp_path / 'a.png').read_bytes()

    def failing_open(*args, **kwargs):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr('builtins.open', failing_open)
    with pytest.raises(OSError):
        image_io.save_png(tmp_path / 'a.png', np.full((4, 4, 3), 255, np.uint8))
    monkeypatch.undo()
    assert (tmp_path / 'a.png').read_bytes() == original and os.listdir(tmp_path) == ['a.png']


def test_to_uint8_quantises_like_edm():
    x = torch.tensor([-1.5, -1.0, -0.0039, 0.0, 0.99, 1.0, 2.0], dtype=torch.float64).reshape(1, 1, 1, -1)
    assert image_io.to_uint8(x).reshape(-1).tolist() == [0, 0, 127, 128, 254, 255, 255]


def test_default_network_is_used_when_none_given(tmp_path, pickles, monkeypatch):
    monkeypatch.setattr(generate, 'DEFAULT_NETWORK', str(pickles['cond']))
    result = cli(f'--outdir={tmp_path / "default"}', '--seeds=0-1', '--steps=2', '--class=1')
    assert result.exit_code == 0, result.output
    explicit = cli(f'--outdir={tmp_path / "explicit"}', '--seeds=0-1', '--steps=2', '--class=1', f'--network={pickles["cond"]}')
    assert explicit.exit_code == 0, explicit.output
    assert pngs(tmp_path / 'default') == pngs(tmp_path / 'explicit') and len(pngs(tmp_path / 'default')) == 2
