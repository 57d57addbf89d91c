"""fid.py's feature pass: images (features) per second of metrics.features.compute_feature_stats.

    python bench/bench_fid.py                                          # 2000 32x32 PNGs, stand-in detector, cpu
    python bench/bench_fid.py --format=npz                             # the same images as one .npz batch
    python bench/bench_fid.py --device=cuda --images=20000 --batch=250 --detector=inception-shaped
    python bench/bench_fid.py --device=cuda --detector=downloads/inception-2015-12-05.pkl

NVIDIA's Inception pickle (what fid.py uses) cannot be downloaded everywhere, so `--detector`
chooses what extracts the features:

- `standin` (default): 2048 features from a 4x4 average pool and a fixed random projection.
  It costs next to nothing, so its figure is the throughput of everything around the detector:
  reading and decoding the PNGs, the DataLoader, the copy to the device, and the float64
  accumulation of the mean and the 2048x2048 covariance. It is an upper bound for fid.py,
  not fid.py's speed.
- `inception-shaped`: torchvision's Inception-v3 architecture with random weights on inputs
  resized to 299x299, 2048 pool features; needs torchvision. Same architecture and input size
  as NVIDIA's detector, hence about its cost, but not its features.
- a path or URL of a detector pickle, loaded as fid.py loads it (`load_detector`): with
  NVIDIA's Inception pickle this is fid.py's own speed.

Printed: the detector alone on one batch already on the device, the accumulation alone, and
the whole pass (`compute_feature_stats`, as `fid.py calc` and `fid.py ref` run it) for each
`--workers` count. The whole pass includes starting the DataLoader workers (new processes
each pass), so a pass over one batch is timed too, and the rate beyond it is printed: with
50000 images that is the rate that counts.
"""

import os
import sys
import tempfile
import time

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.options import bench_device, int_list  # noqa: E402
from metrics.detector import MetricError, load_detector  # noqa: E402
from metrics.features import compute_feature_stats, open_images  # noqa: E402
from torch_utils import images as image_io  # noqa: E402


class StandIn(torch.nn.Module):
    """2048 features of a 4x4 average pool and a fixed random projection; called like NVIDIA's detector."""

    def __init__(self, dim=2048):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer('proj', torch.randn(48, dim, generator=gen) / 48 ** 0.5)

    def forward(self, x, return_features: bool = False):
        x = torch.nn.functional.adaptive_avg_pool2d(x.to(torch.float32) / 127.5 - 1, 4).flatten(1)
        return torch.relu(x @ self.proj)


class InceptionShaped(torch.nn.Module):
    """torchvision's Inception-v3 with random weights, 2048 pool features of 299x299 inputs."""

    def __init__(self):
        super().__init__()
        import torchvision  # pylint: disable=import-outside-toplevel
        torch.manual_seed(0)
        self.net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
        self.net.fc = torch.nn.Identity()

    def forward(self, x, return_features: bool = False):
        x = torch.nn.functional.interpolate(x.to(torch.float32), size=(299, 299), mode='bilinear', align_corners=False)
        return self.net((x - 128) / 128)


def make_detector(name, device):
    if name == 'standin':
        return StandIn().to(device).eval()
    if name == 'inception-shaped':
        try:
            return InceptionShaped().to(device).eval()
        except ImportError:
            raise click.ClickException('--detector=inception-shaped needs torchvision') from None
    try:
        return load_detector(name, device=device)
    except MetricError as err:
        raise click.ClickException(str(err)) from None


def write_images(folder, count, resolution, image_format, seed=0):
    """`count` random RGB images of resolution x resolution pixels: PNGs in `folder`, or one .npz
    batch as guided-diffusion's samplers write it; returns the path to read."""
    gen = np.random.default_rng(seed)
    images = (gen.integers(0, 256, [resolution, resolution, 3], dtype=np.uint8) for _ in range(count))
    if image_format == 'npz':
        path = os.path.join(folder, f'samples_{count}x{resolution}x{resolution}x3.npz')
        np.savez(path, arr_0=np.stack(list(images)))
        return path
    for i, image in enumerate(images):
        image_io.save_png(os.path.join(folder, f'{i:06d}.png'), image)
    return folder


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def best_seconds(fn, repeat, device):
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def detector_alone(detector, batch, resolution, device, repeat, calls=10):
    """Features/s of the detector on one uint8 batch that is already on the device."""
    images = torch.randint(0, 256, [batch, 3, resolution, resolution], dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        dim = detector(images, return_features=True).shape[1]  # warm-up

        def run():
            for _ in range(calls):
                detector(images, return_features=True)
        return dim, batch * calls / best_seconds(run, repeat, device)


def accumulation_alone(dim, batch, device, repeat, calls=10):
    """Features/s of the float64 mean/covariance update of compute_feature_stats."""
    feats = torch.rand([batch, dim], dtype=torch.float64, device=device)
    mu = torch.zeros([dim], dtype=torch.float64, device=device)
    sigma = torch.zeros([dim, dim], dtype=torch.float64, device=device)

    def run():
        for _ in range(calls):
            mu.add_(feats.sum(0))
            sigma.add_(feats.T @ feats)
    run()  # warm-up
    return batch * calls / best_seconds(run, repeat, device)


def whole_pass(dataset, detector, batch, workers, device):
    """compute_feature_stats over `dataset`, as fid.py runs it."""
    stats = compute_feature_stats(dataset, detector, max_batch_size=batch, num_workers=workers, device=device,
                                  verbose=False)
    assert stats.num_images == len(dataset)


@click.command()
@click.option('--device', 'device_name', type=click.Choice(['cpu', 'cuda']), default='cpu', show_default=True, help='Device')
@click.option('--detector', 'detector_name', default='standin', show_default=True, metavar='standin|inception-shaped|PKL|URL', help='Feature detector')
@click.option('--images', 'num_images', type=click.IntRange(min=2), default=2000, show_default=True, help='Synthetic images to write and read')
@click.option('--format', 'image_format', type=click.Choice(['png', 'npz']), default='png', show_default=True, help='Synthetic images as PNGs or one .npz batch')
@click.option('--data', type=str, default=None, metavar='DIR|ZIP|NPZ', help='Read these images instead of synthetic ones')
@click.option('--resolution', type=click.IntRange(min=8), default=32, show_default=True, help='Size of the synthetic images')
@click.option('--batch', type=click.IntRange(min=1), default=64, show_default=True, help='Batch size (fid.py --batch)')
@click.option('--workers', 'worker_counts', default='0,3', show_default=True, callback=int_list(0), help='DataLoader workers (fid.py --workers), e.g. 0,3')
@click.option('--repeat', type=click.IntRange(min=1), default=2, show_default=True, help='Timed runs (fastest kept)')
@click.option('--threads', type=click.IntRange(min=1), default=None, help='torch intra-op threads  [default: torch\'s]')
def main(device_name, detector_name, num_images, image_format, data, resolution, batch, worker_counts, repeat, threads):
    """Print features/s of the detector alone, the accumulation alone and compute_feature_stats."""
    device = bench_device(device_name, threads)
    detector = make_detector(detector_name, device)
    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            data = write_images(tmp, num_images, resolution, image_format)
        try:
            dataset = open_images(data)
        except MetricError as err:
            raise click.ClickException(str(err)) from None
        resolution = dataset.resolution
        where = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'
        print(f'torch {torch.__version__}, {where}; detector {detector_name}; {len(dataset)} {resolution}x{resolution} '
              f'images; batch {batch}; best of {repeat}')
        dim, det_rate = detector_alone(detector, batch, resolution, device, repeat)
        print(f'detector alone ({dim} features):      {det_rate:10.1f} features/s')
        print(f'mean/covariance accumulation alone: {accumulation_alone(dim, batch, device, repeat):10.1f} features/s')
        one_batch = open_images(data, max_size=min(batch, len(dataset)))
        print(f'{"compute_feature_stats":22s} {"images/s":>9s} {"one-batch pass s":>17s} {"images/s after it":>18s}')
        for workers in worker_counts:
            seconds = best_seconds(lambda: whole_pass(dataset, detector, batch, workers, device), repeat, device)
            start_up = best_seconds(lambda: whole_pass(one_batch, detector, batch, workers, device), repeat, device)
            marginal = (len(dataset) - len(one_batch)) / max(seconds - start_up, 1e-9)
            print(f'{f"{workers} workers":22s} {len(dataset) / seconds:9.1f} {start_up:17.2f} {marginal:18.1f}', flush=True)

if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
