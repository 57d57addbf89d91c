"""Inference fast paths (samplers/fast.py): images/s against the plain path, and how far each
moves the pixels.

    python bench/bench_fastpaths.py --device=cuda                        # CIFAR-10 DDPM++, batch 256, 18 steps
    python bench/bench_fastpaths.py --device=cpu --net=bundled --batch=16 --steps=18
    python bench/bench_fastpaths.py --device=cpu --net=cifar10 --batch=2 --steps=4 --paths=baseline,inference_mode,channels_last

Every path samples the same seeds with the same options as generate.py would (Sampler,
SeedNoise, latents_and_labels). `baseline` is EDM's plain path (torch.no_grad, eager float32
network); every other path is the default (torch.inference_mode) plus its option, and `all`
is channels_last + autocast (--all-autocast: fp16 on CUDA, bf16 on the CPU) + compile. Each
path's first call is timed on its own (it holds torch.compile's compile time, with an empty
inductor cache unless --warm-cache, and cuDNN's first-call set-up); then the timed calls go round all paths `--repeat` times, so that load
from other processes hits every path alike (median per path, torch.cuda.synchronize on CUDA).

Columns: `img/s` and `speed-up` against baseline; `max`/`frac`/`frac>2` the largest uint8
difference from the baseline images, the fraction of uint8 values that differ and the fraction
that differ by more than 2 levels; `split max`/`split frac`
the same between this path's images sampled as one batch and as `--split` smaller batches
(an image should depend on its seed only, not on the batch it was sampled in). For compiled
paths the split is measured only with --split-compiled: the new batch size recompiles.

Networks: `cifar10` is EDM's CIFAR-10 DDPM++ configuration (56M parameters) and `tiny` a
0.05M-parameter 8x8 one, both with random weights (speed does not depend on them); `bundled`
is the trained 0.7M-parameter MNIST model of models/, whose images show what the pixel
differences mean for a real model.
"""

import os
import statistics
import sys
import tempfile
import time

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import generate  # noqa: E402
from bench.bench_sampler import build_net  # noqa: E402
from bench.options import bench_device  # noqa: E402
from samplers import Sampler, SamplerOptions, SeedNoise, latents_and_labels  # noqa: E402
from samplers.fast import FastPathError, FastPaths  # noqa: E402
from torch_utils import images as image_io  # noqa: E402
from safeload import networks as loader  # noqa: E402


def paths(compile_backend, all_autocast):
    """(name, FastPaths) of every path, in the order measured."""
    return [
        ('baseline', FastPaths(inference_mode=False)),
        ('inference_mode', FastPaths()),
        ('channels_last', FastPaths(channels_last=True)),
        ('autocast_bf16', FastPaths(autocast='bf16')),
        ('autocast_fp16', FastPaths(autocast='fp16')),
        ('compile', FastPaths(compile=compile_backend)),
        ('all', FastPaths(channels_last=True, autocast=all_autocast, compile=compile_backend)),
    ]


def load_net(name, device):
    if name == 'bundled':
        return loader.load_network(generate.DEFAULT_NETWORK, device=device)
    return build_net(name).to(device)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def sample(sampler, net, seeds, device):
    """(uint8 images [N, H, W, C], seconds) for one sampler call on `seeds`."""
    noise = SeedNoise(seeds, device=device)
    shape = [net.img_channels, net.img_resolution, net.img_resolution]
    latents, labels = latents_and_labels(noise, shape, net.label_dim, device=device)
    sync(device)
    start = time.perf_counter()
    images = sampler(latents, labels, noise.randn_like)
    sync(device)
    seconds = time.perf_counter() - start
    return image_io.to_uint8(images), seconds


def pixel_diff(a, b):
    """(max uint8 difference, fraction of uint8 values that differ, fraction that differ by more than 2)."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(diff.max()), float((diff > 0).mean()), float((diff > 2).mean())


def sample_in_parts(sampler, net, seeds, device, split):
    """uint8 images of `seeds` sampled in `split` consecutive batches."""
    size = max(1, -(-len(seeds) // split))
    return np.concatenate([sample(sampler, net, chunk, device)[0] for chunk in generate.split_batches(seeds, size)])


def measure(net, options, chosen, seeds, device, repeat, split, split_compiled):
    """{path: images, first-call seconds, median seconds, images sampled in `split` batches or None}.

    Every path is built and called once first (compiling where asked); then the timed calls go
    round the paths `repeat` times, so that a change of machine load hits all paths alike.
    """
    torch._dynamo.reset()
    samplers, results = {}, {}
    for label, fast in chosen:
        samplers[label] = Sampler(net, options, device=device, fast=fast)
        images, first = sample(samplers[label], net, seeds, device)
        results[label] = dict(images=images, first=first, times=[], parts=None)
        click.echo(f'first call of {label}: {first:.2f} s', err=True)
    for _ in range(repeat):
        for label, _fast in chosen:
            results[label]['times'].append(sample(samplers[label], net, seeds, device)[1])
    for label, fast in chosen:
        results[label]['seconds'] = statistics.median(results[label]['times'])
        if split > 1 and (split_compiled or fast.compile is None):
            results[label]['parts'] = sample_in_parts(samplers[label], net, seeds, device, split)
    return results


@click.command()
@click.option('--device', 'device_name', type=click.Choice(['cpu', 'cuda']), default=None, help='Device  [default: cuda if available]')
@click.option('--net', 'net_name', type=click.Choice(['tiny', 'cifar10', 'bundled']), default='cifar10', show_default=True, help='Network')
@click.option('--batch', type=click.IntRange(min=1), default=None, help='Batch size  [default: cuda 256, cpu 2 (cifar10) or 16]')
@click.option('--steps', type=click.IntRange(min=2), default=None, help='Heun steps  [default: cuda 18, cpu 4 (cifar10) or 18]')
@click.option('--paths', 'path_names', default=None, help='Comma-separated paths  [default: all; autocast_fp16 on cuda only]')
@click.option('--repeat', type=click.IntRange(min=1), default=3, show_default=True, help='Timed calls per path (median kept)')
@click.option('--split', type=click.IntRange(min=0), default=2, show_default=True, help='Also sample in this many batches (0/1: skip)')
@click.option('--split-compiled', is_flag=True, help='Split compiled paths too (each recompiles: ~1 min on an H100)')
@click.option('--compile-backend', default='inductor', show_default=True, help='torch.compile backend of compile and all')
@click.option('--all-autocast', type=click.Choice(['bf16', 'fp16']), default=None, help='Autocast dtype of all  [default: cuda fp16, cpu bf16]')
@click.option('--warm-cache', is_flag=True, help='Use inductor\'s usual on-disk cache  [default: a fresh, empty one]')
@click.option('--threads', type=click.IntRange(min=1), default=None, help='torch intra-op threads  [default: torch\'s]')
def main(device_name, net_name, batch, steps, path_names, repeat, split, split_compiled, compile_backend, all_autocast,
         warm_cache, threads):
    """Print images/s, speed-up and pixel differences of each inference fast path."""
    if warm_cache:
        return run(device_name, net_name, batch, steps, path_names, repeat, split, split_compiled, compile_backend,
                   all_autocast, threads)
    before = os.environ.get('TORCHINDUCTOR_CACHE_DIR')
    with tempfile.TemporaryDirectory(prefix='inductor-cache-') as cache:
        os.environ['TORCHINDUCTOR_CACHE_DIR'] = cache  # compile times as on a fresh machine
        try:
            return run(device_name, net_name, batch, steps, path_names, repeat, split, split_compiled, compile_backend,
                       all_autocast, threads)
        finally:
            if before is None:
                del os.environ['TORCHINDUCTOR_CACHE_DIR']
            else:
                os.environ['TORCHINDUCTOR_CACHE_DIR'] = before


def run(device_name, net_name, batch, steps, path_names, repeat, split, split_compiled, compile_backend, all_autocast,
        threads):
    device = bench_device(device_name, threads)
    all_autocast = all_autocast or ('fp16' if device.type == 'cuda' else 'bf16')
    if all_autocast == 'fp16' and device.type != 'cuda':
        raise click.ClickException('--all-autocast=fp16 needs --device=cuda')
    available = paths(compile_backend, all_autocast)
    if path_names is None:
        chosen = [p for p in available if device.type == 'cuda' or p[1].autocast != 'fp16']
    else:
        names = path_names.split(',')
        chosen = [p for p in available if p[0] in names]
        unknown = sorted(set(names) - {name for name, _ in available})
        if unknown or not chosen:
            raise click.ClickException(f'--paths: "{(unknown or [path_names])[0]}" is not one of '
                                       f'{", ".join(name for name, _ in available)}')
    if chosen[0][0] != 'baseline':
        chosen.insert(0, available[0])  # speed-up and differences are measured against it
    for _, fast in chosen:
        try:
            fast.check(device)
        except FastPathError as err:
            raise click.ClickException(str(err)) from None

    cpu_large = device.type == 'cpu' and net_name == 'cifar10'
    batch = batch or (256 if device.type == 'cuda' else 2 if cpu_large else 16)
    steps = steps or (4 if cpu_large else 18)
    net = load_net(net_name, device)
    options = SamplerOptions(num_steps=steps)
    seeds = list(range(batch))
    params = sum(p.numel() for p in net.parameters())
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    print(f'torch {torch.__version__}, {name}, {torch.get_num_threads()} threads; {net_name}: {params / 1e6:.2f}M '
          f'parameters; batch {batch}, Heun {steps} steps ({options.nfe} NFE), median of {repeat}; split into {split}'
          f'{"" if split_compiled else " (not compiled paths)"}')
    print(f'{"path":15s} {"img/s":>9s} {"speed-up":>9s} {"first s":>8s} {"max":>4s} {"frac":>8s} {"frac>2":>8s} '
          f'{"split max":>9s} {"split frac":>10s}')
    results = measure(net, options, chosen, seeds, device, repeat, split, split_compiled)
    base = results['baseline']
    for label, _fast in chosen:
        m = results[label]
        levels, fraction, visible = pixel_diff(m['images'], base['images'])
        split_cols = f'{"-":>9s} {"-":>10s}'
        if m['parts'] is not None:
            split_levels, split_fraction, _ = pixel_diff(m['images'], m['parts'])
            split_cols = f'{split_levels:9d} {split_fraction:10.2e}'
        print(f'{label:15s} {batch / m["seconds"]:9.2f} {base["seconds"] / m["seconds"]:9.3f} {m["first"]:8.2f} '
              f'{levels:4d} {fraction:8.2e} {visible:8.2e} {split_cols}', flush=True)

if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
