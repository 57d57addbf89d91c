import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import scipy.linalg
import torch
from click.testing import CliRunner

import fid
from metrics.detector import MetricError, load_detector, pickle_torchscript
from metrics.frechet import frechet_distance
from metrics.inception_score import inception_score
from metrics.kid import kernel_inception_distance
from metrics.precision_recall import precision_recall
from metrics.reference import load_reference, save_reference

pytestmark = pytest.mark.filterwarnings('ignore:`torch.jit:DeprecationWarning')

#----------------------------------------------------------------------------
# A tiny TorchScript stand-in for NVIDIA's Inception pickle: same call signature, 16 features.


class StandIn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.register_buffer('proj', torch.randn(48, 16, generator=gen))
        self.register_buffer('head', torch.randn(16, 5, generator=gen))
        self.register_buffer('bias', torch.randn(5, generator=gen))

    def forward(self, x, return_features: bool = False, no_output_bias: bool = False):
        x = torch.nn.functional.adaptive_avg_pool2d(x.to(torch.float32) / 127.5 - 1, 4).flatten(1)
        feats = torch.relu(x @ self.proj)
        if return_features:
            return feats
        logits = feats @ self.head
        if not no_output_bias:
            logits = logits + self.bias
        return torch.softmax(logits, dim=1)


class FeaturesOnly(torch.nn.Module):
    def forward(self, x, return_features: bool = False):
        return torch.nn.functional.adaptive_avg_pool2d(x.to(torch.float32), 2).flatten(1)


@pytest.fixture(scope='module')
def detector_pkl(tmp_path_factory):
    path = tmp_path_factory.mktemp('det') / 'standin.pkl'
    path.write_bytes(pickle_torchscript(torch.jit.script(StandIn())))
    return str(path)


def write_images(folder, images):
    os.makedirs(folder, exist_ok=True)
    for i, img in enumerate(images):
        PIL.Image.fromarray(img).save(os.path.join(folder, f'img{i:04d}.png'))
    return str(folder)


def random_images(n, seed, size=8):
    return np.random.default_rng(seed).integers(0, 256, [n, size, size, 3], dtype=np.uint8)


def direct_features(detector_pkl, images):
    """Features computed here without the toolkit's feature pass."""
    with open(detector_pkl, 'rb') as f:
        net = pickle.load(f)
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.repeat([1, 3, 1, 1])
    with torch.no_grad():
        return net(x, return_features=True).double().numpy()


def scipy_fid(mu1, sigma1, mu2, sigma2):
    """EDM's formula, written out with scipy's general matrix square root."""
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(np.real(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root)))


def run_fid(args):
    res = CliRunner().invoke(fid.main, args, prog_name='fid.py')
    return res


@pytest.fixture(scope='module')
def dataset(tmp_path_factory, detector_pkl):
    """40 generated and 60 reference images, and a reference file made by 'fid.py ref'."""
    root = tmp_path_factory.mktemp('data')
    gen = random_images(40, seed=0)
    real = random_images(60, seed=1) // 2 + 64
    gen_dir = write_images(root / 'gen', gen)
    real_dir = write_images(root / 'real', real)
    ref = str(root / 'ref.npz')
    res = run_fid(['ref', f'--data={real_dir}', f'--dest={ref}', f'--detector={detector_pkl}', '--features=100', '--workers=0', '--batch=16'])
    assert res.exit_code == 0, res.output
    return dict(root=root, gen=gen, real=real, gen_dir=gen_dir, real_dir=real_dir, ref=ref)

#----------------------------------------------------------------------------
# Frechet distance.


def test_frechet_closed_form_for_commuting_covariances():
    rng = np.random.default_rng(0)
    d = 12
    q, _ = np.linalg.qr(rng.standard_normal([d, d]))  # shared eigenvectors: sqrtm is elementwise
    a, b = rng.uniform(0, 3, d), rng.uniform(0, 3, d)
    a[:3] = 0  # singular covariances are allowed
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9


def correlated_features(rng, n, d, shift=0.0):
    mix = rng.standard_normal([d, d]) / np.sqrt(1 + np.arange(d))[:, None]
    return np.maximum(rng.standard_normal([n, d]) @ (mix + shift * rng.standard_normal([d, d])), 0)


@pytest.mark.parametrize('n, d', [(500, 64), (3000, 256)])
def test_frechet_matches_scipy_sqrtm(n, d):
    rng = np.random.default_rng(n + d)
    stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in (correlated_features(rng, n, d), correlated_features(rng, n, d, 0.1))]
    ours = frechet_distance(*stats[0], *stats[1])
    ref = scipy_fid(*stats[0], *stats[1])
    assert abs(ours - ref) <= 1e-6 * max(1.0, abs(ref))


def test_frechet_is_exact_for_rank_deficient_covariances():
    """Fewer samples than dimensions: the trace term reduces to a small exact eigenproblem."""
    rng = np.random.default_rng(0)
    f1, f2 = correlated_features(rng, 30, 200), correlated_features(rng, 50, 200, 0.3)
    c1, c2 = f1 - f1.mean(0), f2 - f2.mean(0)
    s1, s2 = c1.T @ c1 / 29, c2.T @ c2 / 49
    small = c1 @ s2 @ c1.T / 29  # same non-zero eigenvalues as s1 @ s2
    exact = ((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) \
        - 2 * np.sqrt(np.clip(np.linalg.eigvalsh((small + small.T) / 2), 0, None)).sum()
    assert frechet_distance(f1.mean(0), s1, f2.mean(0), s2) == pytest.approx(exact, rel=1e-9)


def test_frechet_rejects_bad_shapes():
    with pytest.raises(ValueError, match='sigma'):
        frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match='different dimensions'):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))

#----------------------------------------------------------------------------
# KID, Inception Score, precision/recall.


def test_kid_is_the_unbiased_polynomial_mmd():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal([30, 8]), rng.standard_normal([25, 8]) + 0.5
    k = lambda a, b: (a @ b.T / 8 + 1) ** 3  # noqa: E731
    m = 25  # every subset takes all of y and 25 of x; with one subset, compare by hand
    rs = np.random.RandomState(3)
    xs, ys = x[rs.choice(30, m, replace=False)], y[rs.choice(25, m, replace=False)]
    off = lambda kk: (kk.sum() - np.trace(kk)) / (m * (m - 1))  # noqa: E731
    expected = off(k(xs, xs)) + off(k(ys, ys)) - 2 * k(xs, ys).mean()
    assert kernel_inception_distance(x, y, num_subsets=1, seed=3) == pytest.approx(expected, rel=1e-12)
    same, shifted, other = rng.standard_normal([400, 8]), rng.standard_normal([400, 8]) + 0.5, rng.standard_normal([400, 8])
    assert kernel_inception_distance(same, shifted, num_subsets=10) > 10 * abs(kernel_inception_distance(same, other, num_subsets=10))


def test_inception_score_known_answers():
    one_hot = np.eye(5)[np.arange(50) % 5]  # each split of 5 holds every class once
    mean, std = inception_score(one_hot, num_splits=10)
    assert mean == pytest.approx(5.0) and std == pytest.approx(0.0, abs=1e-12)
    mean, _ = inception_score(np.full([20, 7], 1 / 7), num_splits=10)
    assert mean == pytest.approx(1.0)


def test_precision_recall_extremes():
    rng = np.random.default_rng(0)
    a = rng.standard_normal([40, 4])
    assert precision_recall(a, a.copy()) == (1.0, 1.0)
    p, r = precision_recall(a, a + 100)
    assert (p, r) == (0.0, 0.0)
    p, r = precision_recall(a, np.concatenate([a[:20], a[:20] + 100]))  # half the fakes are far away
    assert p == pytest.approx(0.5) and r < 1.0

#----------------------------------------------------------------------------
# Detector and reference files.


def test_detector_pickle_round_trip(detector_pkl):
    net = load_detector(detector_pkl)
    x = torch.from_numpy(random_images(3, 5)).permute(0, 3, 1, 2)
    assert net(x, return_features=True).shape == (3, 16)
    with open(detector_pkl, 'rb') as f:
        assert isinstance(pickle.load(f), torch.jit.ScriptModule)  # a plain pickle, like EDM's


@pytest.mark.parametrize('case, message', [
    ('missing', 'no such file'),
    ('garbage', 'not a pickled module'),
    ('truncated', 'truncated'),
    ('not_module', 'not a module'),
])
def test_detector_load_errors(tmp_path, detector_pkl, case, message):
    path = tmp_path / 'det.pkl'
    if case == 'garbage':
        path.write_bytes(b'definitely not a pickle')
    elif case == 'truncated':
        with open(detector_pkl, 'rb') as f:
            path.write_bytes(f.read()[:-50])
    elif case == 'not_module':
        path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(MetricError, match=message) as info:
        load_detector(str(path))
    assert '\n' not in str(info.value)


def test_reference_files_match_edm_format(tmp_path):
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(6), np.eye(6)
    edm = tmp_path / 'edm.npz'
    np.savez(edm, mu=mu, sigma=sigma)  # what EDM's 'fid.py ref' writes
    ref = load_reference(str(edm))
    assert sorted(ref) == ['mu', 'sigma'] and np.array_equal(ref['mu'], mu)
    written = save_reference(tmp_path / 'ours', mu, sigma)  # '.npz' appended, as numpy does for EDM
    assert written.endswith('ours.npz')
    with np.load(written) as npz:  # what EDM's 'fid.py calc' reads
        assert sorted(npz.files) == ['mu', 'sigma'] and npz['sigma'].dtype == np.float64
        assert np.array_equal(npz['mu'], mu) and np.array_equal(npz['sigma'], sigma)

#----------------------------------------------------------------------------
# The command line: values, --num rules, grayscale, JSON, processes.


def test_ref_and_calc_match_a_direct_computation(dataset, detector_pkl, tmp_path):
    feats_real = direct_features(detector_pkl, dataset['real'])
    with np.load(dataset['ref']) as npz:
        assert sorted(npz.files) == ['features', 'image_channels', 'mu', 'sigma'] and npz['image_channels'] == 3
        # The float32 detector may round differently for other batch shapes: compare to 1e-6.
        np.testing.assert_allclose(npz['mu'], feats_real.mean(0), rtol=1e-6)
        np.testing.assert_allclose(npz['sigma'], np.cov(feats_real, rowvar=False), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(npz['features'], feats_real, rtol=1e-6)  # 60 <= --features=100: all kept

    log = tmp_path / 'log.jsonl'
    args = ['calc', f'--images={dataset["gen_dir"]}', f'--ref={dataset["ref"]}', f'--detector={detector_pkl}',
            '--num=40', '--workers=0', '--batch=7', '--metrics=fid,kid,is,pr', f'--json={log}']
    res = run_fid(args)
    assert res.exit_code == 0, res.output
    assert run_fid(args).exit_code == 0  # a second line is appended
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == json.loads(lines[1])
    record = json.loads(lines[0])
    assert record['num_images'] == 40 and record['ref'] == dataset['ref'] and record['images'] == dataset['gen_dir']
    assert record['options']['metrics'] == ['fid', 'kid', 'is', 'pr'] and record['options']['num'] == 40
    assert set(record['metrics']) == {'fid', 'kid', 'kid_std', 'is_mean', 'is_std', 'precision', 'recall'}

    feats_gen = direct_features(detector_pkl, dataset['gen'])
    expected = scipy_fid(feats_gen.mean(0), np.cov(feats_gen, rowvar=False), feats_real.mean(0), np.cov(feats_real, rowvar=False))
    assert record['metrics']['fid'] == pytest.approx(expected, rel=1e-6)
    assert record['metrics']['kid'] == pytest.approx(kernel_inception_distance(feats_gen, feats_real), rel=1e-5)
    shown = re.escape(f'{record["metrics"]["fid"]:.6g}')
    assert re.search(rf'^fid +{shown}$', res.output, re.M) and 'is_mean' in res.output


def test_num_uses_a_seeded_subset_and_rejects_too_few(dataset, detector_pkl, tmp_path):
    def fid_of(num, seed):
        log = tmp_path / f'{num}-{seed}.jsonl'
        res = run_fid(['calc', f'--images={dataset["gen_dir"]}', f'--ref={dataset["ref"]}', f'--detector={detector_pkl}',
                       f'--num={num}', f'--seed={seed}', '--workers=0', f'--json={log}'])
        assert res.exit_code == 0, res.output
        return json.loads(log.read_text().splitlines()[-1])['metrics']['fid']

    feats_gen = direct_features(detector_pkl, dataset['gen'])
    feats_real = direct_features(detector_pkl, dataset['real'])
    for seed in (0, 7):
        order = np.arange(40)
        np.random.RandomState(seed).shuffle(order)  # EDM's subset rule: shuffle, keep the first --num, sort
        sub = feats_gen[np.sort(order[:30])]
        expected = scipy_fid(sub.mean(0), np.cov(sub, rowvar=False), feats_real.mean(0), np.cov(feats_real, rowvar=False))
        assert fid_of(30, seed) == pytest.approx(expected, rel=1e-6)
    assert fid_of(30, 0) != fid_of(30, 7)

    res = run_fid(['calc', f'--images={dataset["gen_dir"]}', f'--ref={dataset["ref"]}', f'--detector={detector_pkl}', '--num=41', '--workers=0'])
    assert res.exit_code != 0 and 'found 40 images, but 41 are needed' in res.output


def test_grayscale_is_repeated_to_rgb(tmp_path, detector_pkl):
    gray = random_images(12, seed=3)[..., 0]
    gray_dir = tmp_path / 'gray'
    os.makedirs(gray_dir)
    for i, img in enumerate(gray):
        PIL.Image.fromarray(img, mode='L').save(gray_dir / f'{i:02d}.png')
    rgb_dir = write_images(tmp_path / 'rgb', np.repeat(gray[..., None], 3, axis=3))
    stats = []
    for folder in (gray_dir, rgb_dir):
        dest = tmp_path / f'{os.path.basename(folder)}.npz'
        res = run_fid(['ref', f'--data={folder}', f'--dest={dest}', f'--detector={detector_pkl}', '--workers=0'])
        assert res.exit_code == 0, res.output
        stats.append(dict(np.load(dest)))
    assert np.array_equal(stats[0]['mu'], stats[1]['mu']) and np.array_equal(stats[0]['sigma'], stats[1]['sigma'])


def test_inception_score_skipped_for_a_features_only_detector(dataset, tmp_path):
    det = tmp_path / 'features_only.pkl'
    det.write_bytes(pickle_torchscript(torch.jit.script(FeaturesOnly())))
    ref = tmp_path / 'ref12.npz'
    save_reference(ref, np.zeros(12), np.eye(12))
    res = run_fid(['calc', f'--images={dataset["gen_dir"]}', f'--ref={ref}', f'--detector={det}', '--num=40',
                   '--workers=0', '--metrics=fid,is'])
    assert res.exit_code == 0, res.output
    assert re.search(r'^is +skipped: the detector does not accept no_output_bias=True', res.output, re.M)
    assert re.search(r'^fid +\d', res.output, re.M)


def test_one_and_two_processes_agree(dataset, detector_pkl, tmp_path, repo_root):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=repo_root)
    logs, refs = [], []
    for nproc in (1, 2):
        ref = str(tmp_path / f'ref{nproc}.npz')
        log = str(tmp_path / f'log{nproc}.jsonl')
        launch = [sys.executable, 'fid.py'] if nproc == 1 else \
            [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', 'fid.py', '--']
        for args in (['ref', f'--data={dataset["real_dir"]}', f'--dest={ref}', '--features=100'],
                     ['calc', f'--images={dataset["gen_dir"]}', f'--ref={ref}', '--num=32', '--seed=5', '--metrics=fid,kid,is,pr', f'--json={log}']):
            res = subprocess.run(launch + args + [f'--detector={detector_pkl}', '--workers=0', '--batch=6'],
                                 cwd=repo_root, env=env, capture_output=True, text=True, timeout=180)
            assert res.returncode == 0, res.stdout + res.stderr
        refs.append(dict(np.load(ref)))
        logs.append(json.loads(open(log).read()))
    for key in ('mu', 'sigma'):
        np.testing.assert_allclose(refs[0][key], refs[1][key], rtol=1e-12, atol=1e-12)
    assert np.array_equal(refs[0]['features'], refs[1]['features'])
    assert logs[1]['options']['world_size'] == 2
    for name, value in logs[0]['metrics'].items():
        assert logs[1]['metrics'][name] == pytest.approx(value, rel=1e-9, abs=1e-12), name

#----------------------------------------------------------------------------
# One-line errors.


def _error_line(res):
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if line.startswith('Error:')]
    assert len(lines) == 1 and 'Traceback' not in res.output, res.output
    return lines[0]


@pytest.mark.parametrize('case, message', [
    ('ref_missing', 'no such file'),
    ('ref_not_npz', 'not a .npz file'),
    ('ref_no_sigma', 'no sigma array'),
    ('ref_bad_shape', 'mu has shape [16] and sigma [16, 15]'),
    ('ref_other_dim', 'gives 16 features per image but the reference statistics have 8'),
    ('ref_no_features', 'KID and precision/recall also need per-image features'),
    ('images_missing', 'no such folder or file'),
    ('images_empty', 'No image files found'),
    ('detector_missing', 'cannot load detector'),
    ('detector_garbage', 'not a pickled module'),
    ('mixed_sizes', 'images of different sizes'),
])
def test_calc_errors_are_one_line(dataset, detector_pkl, tmp_path, case, message):
    images, ref, det, extra = dataset['gen_dir'], dataset['ref'], detector_pkl, []
    if case == 'ref_missing':
        ref = str(tmp_path / 'nope.npz')
    elif case == 'ref_not_npz':
        ref = str(tmp_path / 'bad.npz')
        open(ref, 'wb').write(b'not an npz')
    elif case in ('ref_no_sigma', 'ref_bad_shape', 'ref_other_dim', 'ref_no_features'):
        ref = str(tmp_path / 'ref.npz')
        arrays = dict(ref_no_sigma=dict(mu=np.zeros(16)), ref_bad_shape=dict(mu=np.zeros(16), sigma=np.zeros([16, 15])),
                      ref_other_dim=dict(mu=np.zeros(8), sigma=np.eye(8)), ref_no_features=dict(mu=np.zeros(16), sigma=np.eye(16)))[case]
        np.savez(ref, **arrays)
        extra = ['--metrics=fid,kid'] if case == 'ref_no_features' else []
    elif case == 'images_missing':
        images = str(tmp_path / 'nowhere')
    elif case == 'images_empty':
        images = str(tmp_path / 'empty')
        os.makedirs(images)
        open(os.path.join(images, 'notes.txt'), 'w').write('no images here')
    elif case == 'detector_missing':
        det = str(tmp_path / 'nodet.pkl')
    elif case == 'detector_garbage':
        det = str(tmp_path / 'garbage.pkl')
        open(det, 'wb').write(b'garbage')
    elif case == 'mixed_sizes':
        images = write_images(tmp_path / 'mixed', random_images(5, seed=2))
        PIL.Image.fromarray(random_images(1, seed=3, size=16)[0]).save(os.path.join(images, 'img0002b.png'))
    res = run_fid(['calc', f'--images={images}', f'--ref={ref}', f'--detector={det}', '--num=6' if case == 'mixed_sizes' else '--num=40',
                   '--workers=0', '--batch=2'] + extra)
    assert message in _error_line(res)


@pytest.mark.parametrize('case', ['images_missing', 'detector_garbage', 'dest_is_folder'])
def test_ref_errors_leave_no_file(dataset, detector_pkl, tmp_path, case):
    data, det, dest = dataset['real_dir'], detector_pkl, tmp_path / 'out' / 'ref.npz'
    if case == 'images_missing':
        data = str(tmp_path / 'nowhere')
    elif case == 'detector_garbage':
        det = str(tmp_path / 'garbage.pkl')
        open(det, 'wb').write(b'garbage')
    else:
        dest = tmp_path
    res = run_fid(['ref', f'--data={data}', f'--dest={dest}', f'--detector={det}', '--workers=0'])
    _error_line(res)
    assert not os.path.exists(tmp_path / 'out')

#----------------------------------------------------------------------------


def test_help_text_in_sync(repo_root):
    parts = [run_fid(args).output for args in (['--help'], ['calc', '--help'], ['ref', '--help'])]
    with open(os.path.join(repo_root, 'docs', 'fid-help.txt'), encoding='utf8') as f:
        assert '\n'.join(parts) == f.read(), 'regenerate with: python -c "from click.testing import CliRunner; import fid; ' \
            'print(\'\\n\'.join(CliRunner().invoke(fid.main, [*c, \'--help\'], prog_name=\'fid.py\').output ' \
            'for c in ([], [\'calc\'], [\'ref\'])), end=\'\')" > docs/fid-help.txt'
