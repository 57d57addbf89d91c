import io
import json
import os
import pickle
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

import dnnlib.util
from training.dataset import ImageFolderDataset

N = 6


def _png(arr):
    buf = io.BytesIO()
    PIL.Image.fromarray(arr).save(buf, format='png', compress_level=0)
    return buf.getvalue()


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(N, 8, 8, 3), dtype=np.uint8)


def write_dataset(dest, images, labels, as_zip=True):
    """The layout dataset_tool writes, made by hand: 00000/img%08d.png plus dataset.json."""
    names = [f'00000/img{i:08d}.png' for i in range(len(images))]
    meta = json.dumps({'labels': None if labels is None else [[n, lab] for n, lab in zip(names, labels)]})
    if as_zip:
        with zipfile.ZipFile(dest, 'w', compression=zipfile.ZIP_STORED) as z:
            for name, img in zip(names, images):
                z.writestr(name, _png(img))
            z.writestr('dataset.json', meta)
    else:
        os.makedirs(os.path.join(dest, '00000'))
        for name, img in zip(names, images):
            with open(os.path.join(dest, name), 'wb') as f:
                f.write(_png(img))
        with open(os.path.join(dest, 'dataset.json'), 'w') as f:
            f.write(meta)
    return str(dest)


@pytest.mark.parametrize('as_zip', [True, False])
def test_items_labels_and_properties(tmp_path, images, as_zip):
    labels = [2, 0, 1, 2, 0, 1]
    path = write_dataset(tmp_path / ('cls.zip' if as_zip else 'cls'), images, labels, as_zip)
    ds = ImageFolderDataset(path, use_labels=True)
    assert (len(ds), ds.name, ds.resolution, ds.num_channels, ds.image_shape) == (N, 'cls', 8, 3, [3, 8, 8])
    assert (ds.label_shape, ds.label_dim, ds.has_labels, ds.has_onehot_labels) == ([3], 3, True, True)
    for i in range(N):
        img, label = ds[i]
        assert img.dtype == np.uint8 and np.array_equal(img, images[i].transpose(2, 0, 1))
        assert label.dtype == np.float32 and np.array_equal(label, np.eye(3, dtype=np.float32)[labels[i]])
    assert ds.get_details(4) == dict(raw_idx=4, xflip=False, raw_label=0)
    unlabelled = ImageFolderDataset(path, use_labels=False)
    assert unlabelled.label_shape == [0] and not unlabelled.has_labels and unlabelled[0][1].shape == (0,)


def test_float_labels_grayscale_and_null_labels(tmp_path, images):
    gray = images[..., 0]
    vecs = [[float(i), 0.5] for i in range(N)]
    ds = ImageFolderDataset(write_dataset(tmp_path / 'f.zip', gray, vecs), use_labels=True)
    assert ds.image_shape == [1, 8, 8] and np.array_equal(ds[3][0][0], gray[3])
    assert not ds.has_onehot_labels and ds.label_shape == [2]
    assert ds[3][1].dtype == np.float32 and ds[3][1].tolist() == [3.0, 0.5]
    ds = ImageFolderDataset(write_dataset(tmp_path / 'n.zip', images, None), use_labels=True)
    assert ds.label_dim == 0 and not ds.has_labels


def test_max_size_subset_is_seeded_like_edm(tmp_path, images):
    path = write_dataset(tmp_path / 'd.zip', images, list(range(N)))
    ds = ImageFolderDataset(path, max_size=4, random_seed=7, use_labels=True)
    expected = np.arange(N)
    np.random.RandomState(7).shuffle(expected)
    expected = np.sort(expected[:4])
    assert len(ds) == 4 and [ds.get_details(i).raw_idx for i in range(4)] == expected.tolist()
    assert all(np.array_equal(ds[i][0], images[j].transpose(2, 0, 1)) for i, j in enumerate(expected))
    subsets = {tuple(ImageFolderDataset(path, max_size=3, random_seed=s)._raw_idx) for s in range(5)}
    assert len(subsets) > 1
    assert len(ImageFolderDataset(path, max_size=100)) == N


def test_xflip_doubles_after_max_size(tmp_path, images):
    ds = ImageFolderDataset(write_dataset(tmp_path / 'd.zip', images, None), xflip=True, max_size=4)
    assert len(ds) == 8
    for i in range(4):
        assert np.array_equal(ds[i + 4][0], ds[i][0][:, :, ::-1])
        assert ds.get_details(i + 4).raw_idx == ds.get_details(i).raw_idx and ds.get_details(i + 4).xflip


def test_cache_loads_each_image_once(tmp_path, images, monkeypatch):
    ds = ImageFolderDataset(write_dataset(tmp_path / 'd.zip', images, None), cache=True)
    calls = []
    original = ds._load_raw_image
    monkeypatch.setattr(ds, '_load_raw_image', lambda i: calls.append(i) or original(i))
    first = ds[2][0]
    first[:] = 0  # items are copies: the cache must not change
    assert np.array_equal(ds[2][0], images[2].transpose(2, 0, 1)) and calls == [2]


def test_zip_handle_reopened_per_process(tmp_path, images, monkeypatch):
    ds = ImageFolderDataset(write_dataset(tmp_path / 'd.zip', images, None))
    parent_handle = ds._get_zipfile()
    assert ds._get_zipfile() is parent_handle
    monkeypatch.setattr(os, 'getpid', lambda: -1)  # as seen from a forked DataLoader worker
    assert ds._get_zipfile() is not parent_handle
    clone = pickle.loads(pickle.dumps(ds))        # as sent to a spawned worker
    assert clone._zipfile is None and np.array_equal(clone[5][0], images[5].transpose(2, 0, 1))


def test_dataloader_workers_match_direct_access(tmp_path, images):
    labels = [1, 0, 1, 0, 1, 0]
    ds = ImageFolderDataset(write_dataset(tmp_path / 'd.zip', images, labels), use_labels=True, xflip=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    got_img, got_lab = map(torch.cat, zip(*loader))
    assert torch.equal(got_img, torch.stack([torch.from_numpy(ds[i][0]) for i in range(len(ds))]))
    assert torch.equal(got_lab, torch.stack([torch.from_numpy(ds[i][1]) for i in range(len(ds))]))


def test_constructed_by_name_like_training_options(tmp_path, images):
    kwargs = dnnlib.util.EasyDict(class_name='training.dataset.ImageFolderDataset', path=write_dataset(tmp_path / 'd.zip', images, None),
                                  use_labels=False, xflip=False, cache=True, resolution=8, max_size=N, random_seed=0)
    ds = dnnlib.util.construct_class_by_name(**kwargs)
    assert len(ds) == N and ds.resolution == 8


def test_errors(tmp_path, images):
    path = write_dataset(tmp_path / 'd.zip', images, None)
    with pytest.raises(IOError, match='not 16x16'):
        ImageFolderDataset(path, resolution=16)
    with pytest.raises(IOError, match='folder or a .zip'):
        ImageFolderDataset(str(tmp_path / 'nothing.tar'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(IOError, match='No image files'):
        ImageFolderDataset(str(tmp_path / 'empty'))
    partial = write_dataset(tmp_path / 'p', images, list(range(N)), as_zip=False)
    with open(os.path.join(partial, 'dataset.json'), 'w') as f:
        json.dump({'labels': [['00000/img00000000.png', 0]]}, f)
    with pytest.raises(IOError, match='no label for 00000/img00000001.png'):
        ImageFolderDataset(partial, use_labels=True).get_label(0)
    odd = tmp_path / 'odd'
    os.makedirs(odd)
    PIL.Image.fromarray(images[0]).save(odd / 'a.png')
    PIL.Image.fromarray(images[1, :4]).save(odd / 'b.png')
    with pytest.raises(ValueError, match='expected uint8 \\[3, 8, 8\\]'):
        ImageFolderDataset(str(odd))[1]


def test_reads_dataset_tool_output(tmp_path):
    import dataset_tool
    rng = np.random.default_rng(1)
    for i, cls in enumerate(['a', 'b', 'a']):
        os.makedirs(tmp_path / 'src' / cls, exist_ok=True)
        PIL.Image.fromarray(rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)).save(tmp_path / 'src' / cls / f'{i}.png')
    dataset_tool.convert_dataset(str(tmp_path / 'src'), str(tmp_path / 'out.zip'), resolution=(4, 4), workers=1, progress=False)
    ds = ImageFolderDataset(str(tmp_path / 'out.zip'), use_labels=True)
    assert ds.image_shape == [3, 4, 4] and ds.label_dim == 2
    assert [int(np.argmax(ds.get_label(i))) for i in range(3)] == [0, 0, 1]  # a/0, a/2, b/1
