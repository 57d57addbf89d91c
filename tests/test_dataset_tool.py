import gzip
import io
import json
import os
import pickle
import sys
import tarfile
import time
import types
import zipfile

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import dataset_tool
from dataset_tool import DatasetToolError, convert_dataset

LANCZOS = PIL.Image.Resampling.LANCZOS

#----------------------------------------------------------------------------
# Helpers: sources built here, outputs read back independently of dataset_tool.


def rand_image(rng, h, w, c=3):
    shape = (h, w) if c == 1 else (h, w, c)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def save(path, arr, fmt=None, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(arr).save(path, format=fmt, **kwargs)


def read_dataset(dest):
    """Return ([(archive name, HW[C] array)], labels) from a ZIP or folder dataset."""
    if str(dest).endswith('.zip'):
        with zipfile.ZipFile(dest) as z:
            names = sorted(n for n in z.namelist() if n.endswith('.png'))
            imgs = [(n, np.array(PIL.Image.open(io.BytesIO(z.read(n))))) for n in names]
            meta = json.loads(z.read('dataset.json'))
    else:
        names = sorted(os.path.relpath(os.path.join(r, f), dest).replace(os.sep, '/')
                       for r, _, fs in os.walk(dest) for f in fs if f.endswith('.png'))
        imgs = [(n, np.array(PIL.Image.open(os.path.join(dest, n)))) for n in names]
        with open(os.path.join(dest, 'dataset.json')) as f:
            meta = json.load(f)
    return imgs, meta['labels']


def check_output(dest, arrays, labels):
    """The dataset at dest holds exactly `arrays`, in order, with these labels (None: labels null)."""
    imgs, got_labels = read_dataset(dest)
    assert len(imgs) == len(arrays)
    for i, ((_, got), exp) in enumerate(zip(imgs, arrays)):
        assert np.array_equal(got, exp), f'image {i}'
    assert (None if got_labels is None else [lab for _, lab in got_labels]) == labels
    return imgs


def leftovers(folder):
    return [f for f in os.listdir(folder) if f.startswith('.')]


def run(tmp_path, source, dest_name='out.zip', **kwargs):
    dest = tmp_path / dest_name
    kwargs.setdefault('workers', 1)
    kwargs.setdefault('progress', False)
    summary = convert_dataset(str(source), str(dest), **kwargs)
    return dest, summary


def write_idx(path, arr, gz):
    header = bytes([0, 0, 8, arr.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, 'wb') as f:
        f.write(data)


def write_cifar(path, batches, extra_members=()):
    """CIFAR-10 python layout: cifar-10-batches-py/data_batch_N, each a pickled dict."""
    with tarfile.open(path, 'w:gz') as tar:
        members = [(f'cifar-10-batches-py/data_batch_{i + 1}', dict(batch_label=f'batch {i + 1}', data=data,
                    labels=list(labels), filenames=[f'{j}.png' for j in range(len(labels))]))
                   for i, (data, labels) in enumerate(batches)] + list(extra_members)
        for name, obj in members:
            blob = obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


@pytest.fixture
def mixed_folder(tmp_path):
    """Folder with PNG and JPEG images of different sizes in two class folders."""
    rng = np.random.default_rng(0)
    root = tmp_path / 'src'
    save(str(root / 'cats' / 'b.png'), rand_image(rng, 40, 60))
    save(str(root / 'cats' / 'a.jpg'), rand_image(rng, 64, 48), quality=95)
    save(str(root / 'dogs' / 'c.png'), rand_image(rng, 20, 20))
    (root / 'dogs' / 'notes.txt').write_text('not an image, ignored by extension')
    return root

#----------------------------------------------------------------------------
# Folder source: order, labels, resize.


def test_folder_resize_pixels_labels_and_order(tmp_path, mixed_folder):
    dest, summary = run(tmp_path, mixed_folder, resolution=(32, 32))
    imgs, labels = read_dataset(dest)
    order = ['cats/a.jpg', 'cats/b.png', 'dogs/c.png']
    assert [n for n, _ in imgs] == ['00000/img00000000.png', '00000/img00000001.png', '00000/img00000002.png']
    for (_, got), rel in zip(imgs, order):
        expected = np.array(PIL.Image.open(mixed_folder / rel).convert('RGB').resize((32, 32), LANCZOS))
        assert np.array_equal(got, expected), rel
    assert labels == [['00000/img00000000.png', 0], ['00000/img00000001.png', 0], ['00000/img00000002.png', 1]]
    assert summary['images'] == 3 and summary['shape'] == (32, 32, 3) and summary['labels']


def test_folder_labels_from_dataset_json_and_path_order(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / 'src'
    arrs = {rel: rand_image(rng, 8, 8) for rel in ['a/b.png', 'a-c.png', 'z.png']}
    for rel, arr in arrs.items():
        save(str(root / rel), arr)
    (root / 'dataset.json').write_text(json.dumps({'labels': [['a-c.png', 5], ['a/b.png', 3], ['z.png', 7]]}))
    dest, _ = run(tmp_path, root)
    # Path-component order ('a' < 'a-c.png'), not plain string order ('a-c.png' < 'a/b.png').
    check_output(dest, [arrs[rel] for rel in ['a/b.png', 'a-c.png', 'z.png']], [3, 5, 7])


def test_unlabelled_folder_writes_null_labels_and_max_images(tmp_path):
    rng = np.random.default_rng(2)
    arrs = [rand_image(rng, 16, 16, c=1) for _ in range(5)]
    for i, arr in enumerate(arrs):
        save(str(tmp_path / 'src' / f'{i}.png'), arr)
    dest, summary = run(tmp_path, tmp_path / 'src', 'out', max_images=3)
    imgs = check_output(dest, arrs[:3], None)
    assert not summary['labels'] and imgs[0][1].ndim == 2  # grayscale stays one channel without a crop transform


def test_partially_labelled_folder_warns_and_writes_null(tmp_path, capsys):
    rng = np.random.default_rng(3)
    for name in ['a.png', 'b.png']:
        save(str(tmp_path / 'src' / name), rand_image(rng, 8, 8))
    (tmp_path / 'src' / 'dataset.json').write_text(json.dumps({'labels': [['a.png', 1]]}))
    dest, _ = run(tmp_path, tmp_path / 'src')
    assert read_dataset(dest)[1] is None
    assert '1 of 2 images have no label' in capsys.readouterr().err


def test_mode_conversions(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / 'src'
    rgb = rand_image(rng, 8, 8)
    pal = PIL.Image.fromarray(rgb).quantize(colors=16)
    os.makedirs(root)
    pal.save(root / 'a_palette.png')
    PIL.Image.fromarray(rgb).convert('CMYK').save(root / 'b_cmyk.tif')
    dest, _ = run(tmp_path, root)
    imgs, _ = read_dataset(dest)
    assert np.array_equal(imgs[0][1], np.array(pal.convert('RGB')))
    assert np.array_equal(imgs[1][1], np.array(PIL.Image.open(root / 'b_cmyk.tif').convert('RGB')))

#----------------------------------------------------------------------------
# Crop geometry.


def test_center_crop_exact_geometry(tmp_path):
    rng = np.random.default_rng(5)
    wide, tall, gray = rand_image(rng, 32, 48), rand_image(rng, 35, 32), rand_image(rng, 32, 40, c=1)
    for name, arr in [('a.png', wide), ('b.png', tall), ('c.png', gray)]:
        save(str(tmp_path / 'src' / name), arr)
    dest, _ = run(tmp_path, tmp_path / 'src', resolution=(32, 32), transform='center-crop')
    imgs, _ = read_dataset(dest)
    assert np.array_equal(imgs[0][1], wide[:, 8:40])          # crop == output size: no resampling
    assert np.array_equal(imgs[1][1], tall[1:33])             # (35 - 32) // 2 = 1 row off the top
    assert np.array_equal(imgs[2][1], np.repeat(gray[:, 4:36, None], 3, axis=2))  # grayscale -> RGB


def test_center_crop_resamples_like_pillow_lanczos(tmp_path):
    arr = rand_image(np.random.default_rng(6), 50, 70)
    save(str(tmp_path / 'src' / 'a.png'), arr)
    dest, _ = run(tmp_path, tmp_path / 'src', resolution=(16, 16), transform='center-crop')
    expected = np.array(PIL.Image.fromarray(arr[:, 10:60]).resize((16, 16), LANCZOS))
    assert np.array_equal(read_dataset(dest)[0][0][1], expected)


def test_center_crop_wide_geometry_and_skip(tmp_path, capsys):
    rng = np.random.default_rng(7)
    big, small = rand_image(rng, 48, 64), rand_image(rng, 20, 20)
    save(str(tmp_path / 'src' / 'a.png'), big)
    save(str(tmp_path / 'src' / 'b.png'), small)     # narrower than 32: skipped, as in EDM
    save(str(tmp_path / 'src' / 'c.png'), big[::-1])
    dest, summary = run(tmp_path, tmp_path / 'src', resolution=(32, 16), transform='center-crop-wide')
    imgs, _ = read_dataset(dest)
    assert summary['skipped'] == 1 and len(imgs) == 2
    assert [n for n, _ in imgs] == ['00000/img00000000.png', '00000/img00000001.png']
    # ch = round(32 * 48 / 64) = 24 source rows (12..35) at full width, resized to 32x16, padded to 32x32.
    band = np.array(PIL.Image.fromarray(big[12:36]).resize((32, 16), LANCZOS))
    got = imgs[0][1]
    assert got.shape == (32, 32, 3)
    assert np.array_equal(got[8:24], band) and not got[:8].any() and not got[24:].any()
    assert 'skipped 1 image' in capsys.readouterr().err

#----------------------------------------------------------------------------
# Other sources.


def test_zip_source_sorted_with_labels(tmp_path):
    rng = np.random.default_rng(8)
    arrs = {name: rand_image(rng, 8, 8) for name in ['x/2.png', 'x/1.png', 'a.png']}
    src = tmp_path / 'in.zip'
    with zipfile.ZipFile(src, 'w') as z:
        z.writestr('x/', b'')
        for name, arr in arrs.items():
            buf = io.BytesIO()
            PIL.Image.fromarray(arr).save(buf, format='png')
            z.writestr(name, buf.getvalue())
        z.writestr('dataset.json', json.dumps({'labels': [['a.png', 0], ['x/1.png', 1], ['x/2.png', 2]]}))
    dest, _ = run(tmp_path, src)
    check_output(dest, [arrs[name] for name in ['a.png', 'x/1.png', 'x/2.png']], [0, 1, 2])


def test_cifar_tarball(tmp_path):
    rng = np.random.default_rng(9)
    batches = [(rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), labels) for n, labels in [(3, [4, 0, 9]), (2, [1, 7])]]
    src = tmp_path / 'cifar-10-python.tar.gz'
    write_cifar(src, batches, extra_members=[('cifar-10-batches-py/test_batch', dict(data=np.zeros((1, 3072), np.uint8), labels=[3]))])
    dest, _ = run(tmp_path, src)
    expected = np.concatenate([d for d, _ in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    check_output(dest, expected, [4, 0, 9, 1, 7])  # test_batch is not part of the training set


def test_cifar_refuses_code_in_pickles(tmp_path):
    src = tmp_path / 'evil.tar.gz'
    write_cifar(src, [], extra_members=[('cifar-10-batches-py/data_batch_1', pickle.dumps(os.system, protocol=2))])
    with pytest.raises(DatasetToolError, match='refusing to load'):
        run(tmp_path, src)
    assert not (tmp_path / 'out.zip').exists()


@pytest.mark.parametrize('prefix, gz', [('train', True), ('t10k', False)])
def test_mnist_idx_padded_with_labels(tmp_path, prefix, gz):
    rng = np.random.default_rng(10)
    images, labels = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=7, dtype=np.uint8)
    sfx = '.gz' if gz else ''
    write_idx(tmp_path / f'{prefix}-images-idx3-ubyte{sfx}', images, gz)
    write_idx(tmp_path / f'{prefix}-labels-idx1-ubyte{sfx}', labels, gz)
    for source in [tmp_path / f'{prefix}-images-idx3-ubyte{sfx}', tmp_path]:  # the file, or its folder
        dest, _ = run(tmp_path, source, f'out-{source.name}.zip')
        imgs, got_labels = read_dataset(dest)
        assert len(imgs) == 7 and imgs[0][1].shape == (32, 32)
        for (_, got), img in zip(imgs, images):
            assert np.array_equal(got[2:30, 2:30], img) and got.sum() == img.sum()  # zero border of 2
        assert [lab for _, lab in got_labels] == labels.tolist()


def test_mnist_errors(tmp_path):
    images = np.zeros((2, 28, 28), np.uint8)
    write_idx(tmp_path / 'train-images-idx3-ubyte.gz', images, True)
    with pytest.raises(DatasetToolError, match='labels file not found'):
        run(tmp_path, tmp_path / 'train-images-idx3-ubyte.gz')
    write_idx(tmp_path / 't10k-images-idx3-ubyte', images, False)
    with pytest.raises(DatasetToolError, match='several MNIST image files'):
        run(tmp_path, tmp_path)
    write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', np.zeros(3, np.uint8), True)
    with pytest.raises(DatasetToolError, match='expected N images and N labels'):
        run(tmp_path, tmp_path / 'train-images-idx3-ubyte.gz')


class _FakeLmdb(types.ModuleType):
    """Just the py-lmdb calls dataset_tool makes, over a dict."""
    Error = RuntimeError

    def __init__(self, db):
        super().__init__('lmdb')
        self.db = db

    def open(self, path, readonly, lock):
        db = self.db

        class Txn:
            def cursor(self):
                return types.SimpleNamespace(iternext=lambda keys, values: iter(sorted(db)))

            def get(self, key):
                return db.get(key)

        return types.SimpleNamespace(begin=lambda write: Txn(), close=lambda: None)


def test_lmdb_source_in_key_order(tmp_path, monkeypatch):
    rng = np.random.default_rng(11)
    arrs = [rand_image(rng, 8, 8) for _ in range(3)]
    blobs = {}
    for key, arr in zip([b'k2', b'k0', b'k1'], arrs):
        buf = io.BytesIO()
        PIL.Image.fromarray(arr).save(buf, format='webp', lossless=True)
        blobs[key] = buf.getvalue()
    monkeypatch.setitem(sys.modules, 'lmdb', _FakeLmdb(blobs))
    os.makedirs(tmp_path / 'cat_lmdb')
    dest, _ = run(tmp_path, tmp_path / 'cat_lmdb')
    check_output(dest, [arrs[i] for i in [1, 2, 0]], None)


def test_lmdb_missing_dependency(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'lmdb', None)
    os.makedirs(tmp_path / 'cat_lmdb')
    with pytest.raises(DatasetToolError, match='pip install lmdb'):
        run(tmp_path, tmp_path / 'cat_lmdb')

#----------------------------------------------------------------------------
# Workers and destinations.


def test_output_identical_across_worker_counts_and_runs(tmp_path, mixed_folder, monkeypatch):
    rng = np.random.default_rng(12)
    for i in range(6):
        save(str(mixed_folder / 'more' / f'{i}.png'), rand_image(rng, 24 + i, 30))
    one, _ = run(tmp_path, mixed_folder, 'one.zip', resolution=(16, 16), workers=1)
    monkeypatch.setattr(time, 'time', lambda: 2e9)  # a later run: ZIP entries must not carry the clock
    two, _ = run(tmp_path, mixed_folder, 'two.zip', resolution=(16, 16), workers=2, chunk=1)
    assert one.read_bytes() == two.read_bytes()
    folder, _ = run(tmp_path, mixed_folder, 'dir', resolution=(16, 16), workers=2, chunk=2)
    with zipfile.ZipFile(one) as z:
        for name in z.namelist():
            assert (folder / name).read_bytes() == z.read(name)


def test_unreadable_image_named_and_nothing_left(tmp_path, mixed_folder):
    (mixed_folder / 'dogs' / 'broken.png').write_bytes(b'this is not a png')
    for workers in (1, 2):
        with pytest.raises(DatasetToolError, match=r'cannot read image dogs/broken\.png'):
            run(tmp_path, mixed_folder, resolution=(32, 32), workers=workers, chunk=1)
        assert not (tmp_path / 'out.zip').exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize('kwargs, match', [
    (dict(), r'must be square, got 48x64 \(cats/a\.jpg\)'),
    (dict(resolution=(32, 16)), 'must be square'),
    (dict(resolution=(24, 24)), 'power of two'),
    (dict(transform='center-crop'), 'needs --resolution'),
    (dict(transform='center-crop-wide', resolution=(32, 64)), 'height no larger than the width'),
])
def test_bad_geometry(tmp_path, mixed_folder, kwargs, match):
    for dest in ('out.zip', 'outdir'):
        with pytest.raises(DatasetToolError, match=match):
            run(tmp_path, mixed_folder, dest, **kwargs)
        assert not (tmp_path / dest).exists() and leftovers(tmp_path) == []


def test_mixed_sizes_channels_and_alpha(tmp_path):
    rng = np.random.default_rng(13)
    save(str(tmp_path / 'sizes' / 'a.png'), rand_image(rng, 16, 16))
    save(str(tmp_path / 'sizes' / 'b.png'), rand_image(rng, 8, 8))
    with pytest.raises(DatasetToolError, match=r'image b\.png is 8x8 with 3 channel\(s\) but earlier images are 16x16'):
        run(tmp_path, tmp_path / 'sizes')
    save(str(tmp_path / 'src' / 'a.png'), rand_image(rng, 8, 8))
    save(str(tmp_path / 'src' / 'b.png'), rand_image(rng, 8, 8, c=1))
    with pytest.raises(DatasetToolError, match='b.png is 8x8 with 1 channel'):
        run(tmp_path, tmp_path / 'src')
    save(str(tmp_path / 'alpha' / 'a.png'), rand_image(rng, 8, 8, c=4))
    with pytest.raises(DatasetToolError, match='cannot use image a.png: image has an alpha channel'):
        run(tmp_path, tmp_path / 'alpha')


def test_destination_and_source_checks(tmp_path, mixed_folder):
    (tmp_path / 'full').mkdir()
    (tmp_path / 'full' / 'keep.txt').write_text('x')
    (tmp_path / 'exists.zip').write_bytes(b'old')
    for dest in ('full', 'exists.zip'):
        with pytest.raises(DatasetToolError, match='already exists'):
            run(tmp_path, mixed_folder, dest, resolution=(32, 32))
    assert (tmp_path / 'exists.zip').read_bytes() == b'old' and os.listdir(tmp_path / 'full') == ['keep.txt']
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DatasetToolError, match='no images found'):
        run(tmp_path, tmp_path / 'empty', 'x.zip')
    with pytest.raises(DatasetToolError, match='source not found'):
        run(tmp_path, tmp_path / 'missing', 'x.zip')
    (tmp_path / 'data.bin').write_bytes(b'1234')
    with pytest.raises(DatasetToolError, match='unrecognised source'):
        run(tmp_path, tmp_path / 'data.bin', 'x.zip')
    # An existing empty folder is filled; a missing parent folder is created.
    run(tmp_path, mixed_folder, 'empty', resolution=(32, 32))
    run(tmp_path, mixed_folder, 'deep/er/out.zip', resolution=(32, 32))
    assert len(read_dataset(tmp_path / 'empty')[0]) == 3 and len(read_dataset(tmp_path / 'deep/er/out.zip')[0]) == 3

#----------------------------------------------------------------------------
# CLI.


def test_cli_success_and_one_line_error(tmp_path, mixed_folder):
    runner = CliRunner()
    res = runner.invoke(dataset_tool.main, [f'--source={mixed_folder}', f'--dest={tmp_path / "o.zip"}',
                                            '--resolution=32x32', '--workers=1'])
    assert res.exit_code == 0, res.output
    assert 'Wrote 3 images (32x32, 3 channels, labels: yes)' in res.output
    res = runner.invoke(dataset_tool.main, [f'--source={mixed_folder}', f'--dest={tmp_path / "o.zip"}'])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [f'Error: destination already exists: {tmp_path / "o.zip"}']
    res = runner.invoke(dataset_tool.main, [f'--source={mixed_folder}', '--dest=x.zip', '--resolution=big'])
    assert res.exit_code == 2 and "'big' is not WxH" in res.output


def test_help_text_in_sync(repo_root):
    res = CliRunner().invoke(dataset_tool.main, ['--help'], prog_name='dataset_tool.py')
    assert res.exit_code == 0
    with open(os.path.join(repo_root, 'docs', 'dataset-tool-help.txt'), encoding='utf8') as f:
        assert res.output == f.read(), 'regenerate with: python dataset_tool.py --help > docs/dataset-tool-help.txt'


def test_cli_writes_what_the_library_writes(tmp_path, mixed_folder):
    """dataset_tool.py is a shell over training/dataset_convert.py: same bytes, same errors."""
    from training import dataset_convert
    res = CliRunner().invoke(dataset_tool.main, [f'--source={mixed_folder}', f'--dest={tmp_path / "cli.zip"}',
                                                 '--resolution=16x16', '--workers=2'])
    assert res.exit_code == 0, res.output
    summary = dataset_convert.convert_dataset(str(mixed_folder), str(tmp_path / 'lib.zip'), resolution=(16, 16), workers=1,
                                              progress=False)
    assert summary['images'] == 3 and (tmp_path / 'cli.zip').read_bytes() == (tmp_path / 'lib.zip').read_bytes()
    assert dataset_tool.DatasetToolError is dataset_convert.DatasetToolError


def test_npz_samples_and_reference_batches_convert(tmp_path):
    # guided-diffusion's sample files: uint8 NHWC in arr_0, labels in arr_1; the same images as a
    # folder give the same dataset, byte for byte, with the labels of arr_1.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / 'samples_5x8x8x3.npz', images, np.array([3, 0, 1, 1, 2]))
    convert_dataset(str(tmp_path / 'samples_5x8x8x3.npz'), str(tmp_path / 'a.zip'), workers=1, progress=False)
    with zipfile.ZipFile(tmp_path / 'a.zip') as zf:
        labels = json.loads(zf.read('dataset.json'))['labels']
        assert [label for _, label in labels] == [3, 0, 1, 1, 2]
        got = [np.asarray(PIL.Image.open(io.BytesIO(zf.read(name)))) for name, _ in labels]
    assert all(np.array_equal(a, b) for a, b in zip(got, images))
    np.savez_compressed(tmp_path / 'grey.npz', images[..., 0])  # [N, H, W] grey, compressed, no labels
    convert_dataset(str(tmp_path / 'grey.npz'), str(tmp_path / 'b.zip'), workers=1, progress=False)
    with zipfile.ZipFile(tmp_path / 'b.zip') as zf:
        assert json.loads(zf.read('dataset.json'))['labels'] is None
        assert np.array_equal(np.asarray(PIL.Image.open(io.BytesIO(zf.read('00000/img00000004.png')))), images[4, ..., 0])
    np.savez(tmp_path / 'bad.npz', images, np.array([3, 0, -1, 1, 2]))
    with pytest.raises(DatasetToolError, match='arr_1 must hold 5 integer labels'):
        convert_dataset(str(tmp_path / 'bad.npz'), str(tmp_path / 'c.zip'), workers=1, progress=False)
    np.savez(tmp_path / 'float.npz', images.astype(np.float32))
    with pytest.raises(DatasetToolError, match='images must be uint8'):
        convert_dataset(str(tmp_path / 'float.npz'), str(tmp_path / 'd.zip'), workers=1, progress=False)
    assert not (tmp_path / 'c.zip').exists() and not (tmp_path / 'd.zip').exists()
