"""fid.py with guided-diffusion's formats (.npz samples, reference batches, cached reference
statistics), bad .npz files, precision/recall with its own detector, KID's standard deviation,
the Frechet distance of a set with itself, NaN/inf refusals and images the detector cannot take."""

import json
import os
import struct
import subprocess
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

import metrics.reference
from metrics.detector import pickle_torchscript
from metrics.evaluate import calc_metrics
from metrics.frechet import frechet_distance
from metrics.kid import kernel_inception_distance_std
from metrics.precision_recall import precision_recall
from metrics.reference import ReferenceFile, choose_source
from test_fid import StandIn, _error_line, direct_features, random_images, run_fid, write_images

pytestmark = pytest.mark.filterwarnings('ignore:`torch.jit:DeprecationWarning')


class OtherStandIn(torch.nn.Module):
    """A second detector with other features (8 of them), for precision/recall."""

    def forward(self, x, return_features: bool = False):
        x = torch.nn.functional.adaptive_avg_pool2d(x.to(torch.float32) / 255, 2).flatten(1)
        return torch.cat([x[:, :4] * 3, x[:, 4:8] - x[:, 8:]], dim=1)


class NaNDetector(torch.nn.Module):
    def forward(self, x, return_features: bool = False):
        return x.to(torch.float32).flatten(1)[:, :4] * float('nan')


@pytest.fixture(scope='module')
def detectors(tmp_path_factory):
    root = tmp_path_factory.mktemp('det')
    paths = dict()
    for name, module in (('main', StandIn()), ('other', OtherStandIn()), ('nan', NaNDetector())):
        paths[name] = str(root / f'{name}.pkl')
        with open(paths[name], 'wb') as f:
            f.write(pickle_torchscript(torch.jit.script(module)))
    return paths


def write_zip(path, images):
    with zipfile.ZipFile(path, 'w') as zf:
        for i, img in enumerate(images):
            with zf.open(f'img{i:04d}.png', 'w') as f:
                PIL.Image.fromarray(img).save(f, format='png')
    return str(path)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """30 samples and 50 reference images as PNG folders, ZIP and .npz batches."""
    root = tmp_path_factory.mktemp('npzdata')
    gen, real = random_images(30, seed=10), random_images(50, seed=11) // 2 + 60
    out = dict(root=root, gen=gen, real=real)
    out['gen_dir'] = write_images(root / 'gen', gen)
    out['gen_npz'] = str(root / 'samples_30x8x8x3.npz')
    np.savez(out['gen_npz'], arr_0=gen, arr_1=np.arange(30) % 10)  # what guided-diffusion's samplers write
    out['gen_npz_compressed'] = str(root / 'samples_compressed.npz')
    np.savez_compressed(out['gen_npz_compressed'], arr_0=gen)
    out['real_zip'] = write_zip(root / 'real.zip', real)
    out['real_batch'] = str(root / 'VIRTUAL_real.npz')
    np.savez(out['real_batch'], arr_0=real)
    return out


def fid_json(args, log):
    res = run_fid(args + [f'--json={log}', '--workers=0'])
    assert res.exit_code == 0, res.output
    return json.loads(open(log).read().splitlines()[-1])


def npz_of(path):
    with np.load(path) as npz:
        return {key: npz[key] for key in npz.files}

#----------------------------------------------------------------------------
# Samples and reference batches.


@pytest.mark.parametrize('kind', ['gen_npz', 'gen_npz_compressed'])
def test_npz_samples_give_the_same_statistics_and_scores_as_pngs(data, detectors, tmp_path, kind):
    stats = []
    for source in (data['gen_dir'], data[kind]):
        dest = tmp_path / f'{len(stats)}.npz'
        res = run_fid(['ref', f'--data={source}', f'--dest={dest}', f'--detector={detectors["main"]}', '--workers=0', '--batch=7', '--features=30'])
        assert res.exit_code == 0, res.output
        stats.append(npz_of(dest))
    for key in ('mu', 'sigma', 'features'):
        assert np.array_equal(stats[0][key], stats[1][key]), key

    ref = tmp_path / 'ref.npz'
    assert run_fid(['ref', f'--data={data["real_zip"]}', f'--dest={ref}', f'--detector={detectors["main"]}', '--features=50', '--workers=0']).exit_code == 0
    records = [fid_json(['calc', f'--images={source}', f'--ref={ref}', f'--detector={detectors["main"]}', '--num=20', '--seed=3',
                         '--batch=6', '--metrics=fid,kid,is,pr'], tmp_path / 'log.jsonl')
               for source in (data['gen_dir'], data[kind])]
    assert records[0]['metrics'] == records[1]['metrics'] and records[0]['num_images'] == 20
    res = run_fid(['calc', f'--images={data[kind]}', f'--ref={ref}', f'--detector={detectors["main"]}', '--num=31', '--workers=0'])
    assert 'found 30 images, but 31 are needed' in _error_line(res)


@pytest.mark.parametrize('layout', ['NHW1', 'NHW'])
def test_grayscale_npz_matches_grayscale_pngs(tmp_path, detectors, layout):
    gray = random_images(9, seed=4)[..., 0]
    folder = tmp_path / 'gray'
    os.makedirs(folder)
    for i, img in enumerate(gray):
        PIL.Image.fromarray(img, mode='L').save(folder / f'{i:02d}.png')
    batch = tmp_path / 'gray.npz'
    np.savez(batch, arr_0=gray[..., None] if layout == 'NHW1' else gray)
    stats = []
    for source in (folder, batch):
        dest = tmp_path / f'{len(stats)}.npz'
        res = run_fid(['ref', f'--data={source}', f'--dest={dest}', f'--detector={detectors["main"]}', '--workers=0'])
        assert res.exit_code == 0, res.output
        stats.append(npz_of(dest))
    assert np.array_equal(stats[0]['mu'], stats[1]['mu']) and np.array_equal(stats[0]['sigma'], stats[1]['sigma'])


def test_reference_batch_gives_the_statistics_of_fid_ref_on_a_zip(data, detectors, tmp_path, monkeypatch):
    ref_zip, ref_batch = tmp_path / 'zip.npz', tmp_path / 'batch.npz'
    for source, dest in ((data['real_zip'], ref_zip), (data['real_batch'], ref_batch)):
        res = run_fid(['ref', f'--data={source}', f'--dest={dest}', f'--detector={detectors["main"]}', '--features=50', '--workers=0'])
        assert res.exit_code == 0, res.output
    zip_stats, batch_stats = npz_of(ref_zip), npz_of(ref_batch)
    for key in ('mu', 'sigma', 'features'):
        assert np.array_equal(zip_stats[key], batch_stats[key]), key

    # calc --ref=<reference batch>: the statistics it computes (and caches) are those of 'fid.py ref'.
    cache = tmp_path / 'cache'
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(cache))
    common = [f'--images={data["gen_npz"]}', f'--detector={detectors["main"]}', '--num=30', '--metrics=fid,kid,pr']
    on_batch = fid_json(['calc', f'--ref={data["real_batch"]}'] + common, tmp_path / 'log.jsonl')
    on_stats = fid_json(['calc', f'--ref={ref_zip}'] + common, tmp_path / 'log.jsonl')
    assert on_batch['metrics'] == on_stats['metrics']
    assert on_batch['reference']['statistics'] == 'images' and on_batch['reference']['features'] == 'images'
    assert on_stats['reference']['statistics'] == 'stored' and on_stats['reference']['features'] == 'stored'
    (cached,) = on_batch['reference']['cache']
    assert os.path.dirname(cached) == str(cache / 'fid-refs')
    cached_stats = npz_of(cached)
    for key in ('mu', 'sigma', 'features'):
        assert np.array_equal(cached_stats[key], zip_stats[key]), key


def test_reference_cache_is_hit_and_invalidated(data, detectors, tmp_path, monkeypatch):
    passes = []
    real_pass = metrics.reference.compute_feature_stats

    def counting_pass(dataset, *args, **kwargs):
        passes.append(len(dataset))
        return real_pass(dataset, *args, **kwargs)
    monkeypatch.setattr(metrics.reference, 'compute_feature_stats', counting_pass)
    batch = tmp_path / 'ref.npz'
    np.savez(batch, arr_0=data['real'])

    def fid(detector='main'):
        out = calc_metrics(data['gen_npz'], str(batch), num_expected=30, detector_url=detectors[detector], num_workers=0, verbose=False)
        return out.results['fid'], out.reference['cache']

    first, cache = fid()
    assert passes == [50] and os.path.isfile(cache[0])
    second, cache2 = fid()
    assert passes == [50] and second == first and cache2 == cache  # the detector did not run on the reference again
    _other, cache3 = fid('other')  # another detector: another cache entry
    assert passes == [50, 50] and cache3 != cache
    np.savez(batch, arr_0=data['real'][:40])  # a changed file
    third, cache4 = fid()
    assert passes == [50, 50, 40] and cache4 != cache and third != first
    with open(cache4[0], 'wb') as f:  # a damaged cache entry is recomputed, not trusted
        f.write(b'garbage')
    assert fid()[0] == third and passes == [50, 50, 40, 40]


def test_stored_or_image_statistics(data, detectors, tmp_path):
    """A file with images and mu/sigma (OpenAI's reference batches) and --ref-stats."""
    both = tmp_path / 'both.npz'
    mu, sigma = np.full(16, 0.5), np.eye(16) * 0.1
    np.savez(both, arr_0=data['real'], mu=mu, sigma=sigma)
    images_only = tmp_path / 'images.npz'
    np.savez(images_only, arr_0=data['real'])
    common = [f'--images={data["gen_npz"]}', f'--detector={detectors["main"]}', '--num=30']
    auto = fid_json(['calc', f'--ref={both}'] + common, tmp_path / 'log.jsonl')
    images = fid_json(['calc', f'--ref={images_only}'] + common, tmp_path / 'log.jsonl')
    stored = fid_json(['calc', f'--ref={both}', '--ref-stats=stored'] + common, tmp_path / 'log.jsonl')
    assert auto['reference']['statistics'] == 'images' and auto['metrics'] == images['metrics']  # not the default detector
    feats = direct_features(detectors['main'], data['gen'])
    expected = frechet_distance(feats.mean(0), np.cov(feats, rowvar=False), mu, sigma)
    assert stored['reference']['statistics'] == 'stored' and stored['metrics']['fid'] == pytest.approx(expected, rel=1e-6)

    ref = lambda **arrays: ReferenceFile('x.npz', 'x.npz', arrays)  # noqa: E731 (headers are all choose_source reads)
    assert choose_source(ref(mu=1, sigma=1, arr_0=1)) == 'stored'  # with NVIDIA's Inception, as guided-diffusion
    assert choose_source(ref(mu=1, sigma=1, arr_0=1), detector_url='other.pkl') == 'images'
    assert choose_source(ref(mu=1, sigma=1), detector_url='other.pkl') == 'stored'
    assert choose_source(ref(arr_0=1)) == 'images'
    res = run_fid(['calc', f'--ref={images_only}', '--ref-stats=stored'] + common)
    assert 'no stored mu and sigma' in _error_line(res)

#----------------------------------------------------------------------------
# Bad .npz files: one line each, for --images, --ref and ref --data.


def write_npy_member(path, header_shape, payload, dtype='|u1', fortran=False, compress=zipfile.ZIP_STORED):
    """An .npz whose arr_0 header says one thing and whose data may hold another."""
    header = "{'descr': '%s', 'fortran_order': %s, 'shape': %r, }" % (dtype, fortran, tuple(header_shape))
    header = header.encode('latin1')
    header += b' ' * (63 - (10 + len(header)) % 64) + b'\n'
    blob = b'\x93NUMPY\x01\x00' + struct.pack('<H', len(header)) + header + payload
    with zipfile.ZipFile(path, 'w', compression=compress) as zf:
        zf.writestr('arr_0.npy', blob)
    return str(path)


@pytest.mark.parametrize('case, message', [
    ('float', 'arr_0 is float32 [4, 8, 8, 3]; images must be uint8'),
    ('ndim', 'arr_0 is uint8 [4, 192]; images must be uint8 [N, H, W, C]'),
    ('rgba', 'arr_0[0] has 4 channels; images must be grayscale or RGB'),
    ('objects', 'holds Python objects'),
    ('truncated', 'not a .npz file or damaged'),
    ('no_arr_0', 'no arr_0 array of images (found: images)'),
    ('shape_lies', 'arr_0 declares uint8 [1000000000, 64, 64, 3] (12288000000000 bytes) but holds 768 bytes'),
    ('fortran', 'Fortran order'),
    ('text', 'not a .npz file or damaged'),
    ('bomb_claim', 'claims'),
])
@pytest.mark.parametrize('role', ['images', 'ref', 'ref_data'])
def test_bad_npz_files_are_one_line(data, detectors, tmp_path, case, message, role):
    path = tmp_path / 'bad.npz'
    imgs = random_images(4, seed=0)
    if case == 'float':
        np.savez(path, arr_0=imgs.astype(np.float32))
    elif case == 'ndim':
        np.savez(path, arr_0=imgs.reshape(4, -1))
    elif case == 'rgba':
        np.savez(path, arr_0=np.concatenate([imgs, imgs[..., :1]], axis=3))
    elif case == 'objects':
        np.savez(path, arr_0=np.array([{'a': 1}, None], dtype=object))
    elif case == 'truncated':
        np.savez(path, arr_0=imgs)
        path.write_bytes(path.read_bytes()[:-40])
    elif case == 'no_arr_0':
        np.savez(path, images=imgs)
    elif case == 'shape_lies':
        write_npy_member(path, [10 ** 9, 64, 64, 3], imgs.tobytes())
    elif case == 'fortran':
        write_npy_member(path, [4, 8, 8, 3], imgs.tobytes(), fortran=True)
    elif case == 'text':
        path.write_text('not an npz')
    elif case == 'bomb_claim':
        write_npy_member(path, [4, 8, 8, 3], imgs.tobytes())
        raw = bytearray(path.read_bytes())  # claim a huge uncompressed size in the central directory
        cd = raw.rindex(b'PK\x01\x02')
        raw[cd + 24:cd + 28] = struct.pack('<I', 0xFFFFFF00)
        path.write_bytes(bytes(raw))
    if role == 'ref' and case == 'no_arr_0':
        message = 'no mu or sigma array and no arr_0 images (found: images)'
    det = detectors['main']
    if role == 'images':
        args = ['calc', f'--images={path}', f'--ref={data["real_batch"]}', f'--detector={det}', '--num=4']
    elif role == 'ref':
        args = ['calc', f'--images={data["gen_npz"]}', f'--ref={path}', f'--detector={det}', '--num=30']
    else:
        args = ['ref', f'--data={path}', f'--dest={tmp_path / "out.npz"}', f'--detector={det}']
    line = _error_line(run_fid(args + ['--workers=0']))
    assert message in line and str(path) in line
    assert not os.path.exists(tmp_path / 'out.npz')

#----------------------------------------------------------------------------
# Precision/recall, KID, Frechet distance.


def independent_precision_recall(real, gen, k=3):
    """guided-diffusion's definition written out: k-th neighbour radii (self included at rank 0), <= tests."""
    def radii(x):
        d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
        return np.sort(d, axis=1)[:, k]

    def inside(manifold, r, probes):
        d = np.sqrt(((probes[:, None, :] - manifold[None, :, :]) ** 2).sum(-1))
        return (d <= r[None, :]).any(axis=1).mean()
    return inside(real, radii(real), gen), inside(gen, radii(gen), real)


def test_precision_recall_uses_all_features_of_both_sets():
    rng = np.random.default_rng(0)
    real, gen = rng.standard_normal([70, 5]).astype(np.float32), (rng.standard_normal([45, 5]) * 0.8 + 0.6).astype(np.float32)
    expected = independent_precision_recall(real.astype(np.float64), gen.astype(np.float64))
    assert precision_recall(real, gen) == pytest.approx(expected, abs=1e-12)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1


def test_pr_detector(data, detectors, tmp_path):
    log = tmp_path / 'log.jsonl'
    common = [f'--images={data["gen_npz"]}', f'--detector={detectors["main"]}', '--num=30', '--metrics=fid,kid,pr']
    record = fid_json(['calc', f'--ref={data["real_batch"]}', f'--pr-detector={detectors["other"]}'] + common, log)
    assert record['detectors'] == dict(fid=detectors['main'], kid=detectors['main'], pr=detectors['other'])
    assert record['options']['pr_detector'] == detectors['other']
    real, gen = direct_features(detectors['other'], data['real']), direct_features(detectors['other'], data['gen'])
    expected = independent_precision_recall(real.astype(np.float32).astype(np.float64), gen.astype(np.float32).astype(np.float64))
    assert (record['metrics']['precision'], record['metrics']['recall']) == pytest.approx(expected, abs=1e-12)
    main = fid_json(['calc', f'--ref={data["real_batch"]}'] + common, log)
    assert main['detectors']['pr'] == detectors['main'] and main['metrics']['fid'] == record['metrics']['fid']
    assert (main['metrics']['precision'], main['metrics']['recall']) != (record['metrics']['precision'], record['metrics']['recall'])

    # The same through 'fid.py ref --pr-detector' (pr_features stored next to the features).
    ref = tmp_path / 'ref.npz'
    res = run_fid(['ref', f'--data={data["real_zip"]}', f'--dest={ref}', f'--detector={detectors["main"]}',
                   f'--pr-detector={detectors["other"]}', '--features=50', '--workers=0'])
    assert res.exit_code == 0, res.output
    assert sorted(npz_of(ref)) == ['features', 'image_channels', 'mu', 'pr_features', 'sigma']
    stored = fid_json(['calc', f'--ref={ref}', f'--pr-detector={detectors["other"]}'] + common, log)
    assert stored['metrics'] == record['metrics']
    plain = tmp_path / 'plain.npz'
    assert run_fid(['ref', f'--data={data["real_zip"]}', f'--dest={plain}', f'--detector={detectors["main"]}', '--features=50', '--workers=0']).exit_code == 0
    res = run_fid(['calc', f'--ref={plain}', f'--pr-detector={detectors["other"]}', '--workers=0'] + common)
    assert '--pr-detector needs reference images (arr_0) or pr_features' in _error_line(res)


def test_kid_standard_deviation_against_an_independent_computation(data, detectors, tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal([40, 6]), rng.standard_normal([30, 6]) + 0.3

    def by_hand(x, y, subsets, size, seed):
        rs, values = np.random.RandomState(seed), []
        for _ in range(subsets):
            xs, ys = x[rs.choice(len(x), size, replace=False)], y[rs.choice(len(y), size, replace=False)]
            k = lambda a, b: (a @ b.T / x.shape[1] + 1) ** 3  # noqa: E731
            kxx, kyy, kxy = k(xs, xs), k(ys, ys), k(xs, ys)
            values.append((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (size * (size - 1)) - 2 * kxy.mean())
        return np.mean(values), np.sqrt(np.mean((np.array(values) - np.mean(values)) ** 2))
    mean, std = kernel_inception_distance_std(x, y, num_subsets=7, max_subset_size=20, seed=5)
    assert (mean, std) == pytest.approx(by_hand(x, y, 7, 20, 5), rel=1e-12) and std > 0

    record = fid_json(['calc', f'--images={data["gen_npz"]}', f'--ref={data["real_batch"]}', f'--detector={detectors["main"]}',
                       '--num=30', '--metrics=kid', '--seed=2'], tmp_path / 'log.jsonl')
    gen, real = direct_features(detectors['main'], data['gen']), direct_features(detectors['main'], data['real'])
    expected = by_hand(gen.astype(np.float32).astype(np.float64), real.astype(np.float32).astype(np.float64), 100, 30, 2)
    assert (record['metrics']['kid'], record['metrics']['kid_std']) == pytest.approx(expected, rel=1e-5)


def wide_spectrum_features(n, d, decay, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal([d, d]) * (1.0 + np.arange(d))[:, None] ** -decay
    return np.abs(rng.standard_normal([n, d]) @ mix) + 0.3


@pytest.mark.parametrize('n, d', [(500, 2048), (700, 256)])
def test_frechet_distance_of_a_set_with_itself_is_zero(n, d):
    """Rank-deficient (500 x 2048) and full-rank covariances with eigenvalues over many decades."""
    feats = wide_spectrum_features(n, d, decay=2.0)
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    assert abs(frechet_distance(mu, sigma, mu, sigma.copy())) <= 1e-12 * np.trace(sigma)
    f32 = feats.astype(np.float32).astype(np.float64)  # accumulated as the feature pass does: sum of outer products
    mu = f32.sum(0) / n
    sigma = (f32.T @ f32 - np.outer(mu, mu) * n) / (n - 1)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) <= 1e-12 * np.trace(sigma)

def test_frechet_distance_of_rank_deficient_sets_matches_the_features_exactly():
    """With centred features C1, C2 the trace term is the nuclear norm of the small C1 C2^T: an
    independent computation that never forms the covariances."""
    f1, f2 = wide_spectrum_features(120, 512, 2.0, seed=1), wide_spectrum_features(90, 512, 1.5, seed=2)
    c1, c2 = f1 - f1.mean(0), f2 - f2.mean(0)
    exact = np.square(f1.mean(0) - f2.mean(0)).sum() + np.square(c1).sum() / 119 + np.square(c2).sum() / 89 \
        - 2 * np.linalg.svd(c1 @ c2.T, compute_uv=False).sum() / np.sqrt(119 * 89)
    ours = frechet_distance(f1.mean(0), c1.T @ c1 / 119, f2.mean(0), c2.T @ c2 / 89)
    assert ours == pytest.approx(exact, rel=1e-12)

#----------------------------------------------------------------------------
# NaN/inf and images the detector cannot take.


@pytest.mark.parametrize('key', ['mu', 'sigma', 'features'])
def test_nan_in_reference_statistics_is_refused(data, detectors, tmp_path, key):
    ref = tmp_path / 'ref.npz'
    arrays = dict(mu=np.zeros(16), sigma=np.eye(16), features=np.ones([5, 16], dtype=np.float32))
    arrays[key] = arrays[key].copy()
    arrays[key].flat[3] = np.nan if key != 'sigma' else np.inf
    np.savez(ref, **arrays)
    res = run_fid(['calc', f'--images={data["gen_npz"]}', f'--ref={ref}', f'--detector={detectors["main"]}', '--num=30',
                   '--workers=0', '--metrics=fid,kid'])
    assert f'{key} holds NaN or infinite values' in _error_line(res)


def test_nan_features_are_refused(data, detectors, tmp_path):
    ref = tmp_path / 'ref4.npz'
    np.savez(ref, mu=np.zeros(4), sigma=np.eye(4))
    res = run_fid(['calc', f'--images={data["gen_dir"]}', f'--ref={ref}', f'--detector={detectors["nan"]}', '--num=30', '--workers=0'])
    line = _error_line(res)
    assert 'the detector returned NaN or infinite features' in line and data['gen_dir'] in line


def test_images_the_detector_cannot_take_are_named(data, detectors, tmp_path):
    rgba = tmp_path / 'rgba'
    os.makedirs(rgba)
    for i, img in enumerate(random_images(3, seed=5)):
        PIL.Image.fromarray(np.concatenate([img, img[..., :1]], axis=2), mode='RGBA').save(rgba / f'{i}.png')
    common = [f'--ref={data["real_batch"]}', f'--detector={detectors["main"]}', '--num=3', '--workers=0']
    line = _error_line(run_fid(['calc', f'--images={rgba}'] + common))
    assert f'{rgba}: 0.png has 4 channels; images must be grayscale or RGB' in line and 'the detector' not in line
    mixed = write_images(tmp_path / 'mixed', random_images(3, seed=6))
    PIL.Image.fromarray(random_images(1, seed=7)[0, ..., 0], mode='L').save(os.path.join(mixed, 'img0001b.png'))
    line = _error_line(run_fid(['calc', f'--images={mixed}'] + common[:-2] + ['--num=4', '--workers=0', '--batch=2']))
    assert f'{mixed}: images of different sizes or formats (img0001b.png' in line
    # A detector that fails on the images (here: one that needs 32x32 input): the images are named.
    cls = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'models', 'mnist-classifier.pkl')
    ref64 = tmp_path / 'ref64.npz'
    np.savez(ref64, mu=np.zeros(64), sigma=np.eye(64))
    line = _error_line(run_fid(['calc', f'--images={data["gen_npz"]}', f'--ref={ref64}', f'--detector={cls}', '--num=30', '--workers=0']))
    assert f'{data["gen_npz"]}: arr_0[0]: the detector cannot take these 8x8 RGB images' in line

#----------------------------------------------------------------------------


def test_two_processes_fill_and_hit_the_cache_and_agree_with_one(data, detectors, tmp_path, repo_root, monkeypatch):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=repo_root, DNNLIB_CACHE_DIR=str(tmp_path / 'cache'))
    args = ['calc', f'--images={data["gen_npz"]}', f'--ref={data["real_batch"]}', '--num=24', '--seed=5',
            '--metrics=fid,kid,pr', f'--pr-detector={detectors["other"]}', f'--detector={detectors["main"]}', '--batch=5']
    logs = []
    for run in range(2):  # the first run fills the cache, the second hits it
        log = str(tmp_path / f'log{run}.jsonl')
        launch = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'fid.py', '--']
        res = subprocess.run(launch + args + [f'--json={log}', '--workers=0'], cwd=repo_root, env=env, capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, res.stdout + res.stderr
        assert ('from the cache' in res.stdout) == (run == 1), res.stdout
        logs.append(json.loads(open(log).read()))
        assert logs[-1]['options']['world_size'] == 2
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache1'))
    one = fid_json(args, tmp_path / 'one.jsonl')
    for name, value in logs[0]['metrics'].items():
        assert logs[1]['metrics'][name] == value, name
        assert one['metrics'][name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
