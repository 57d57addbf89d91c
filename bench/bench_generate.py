"""generate.py end to end versus the sampler alone: do PNG encoding and file writes stall the network?

    python bench/bench_generate.py                               # batches 1, 4, 16, 64
    python bench/bench_generate.py --batches=8,32 --images=128 --steps=18
    python bench/bench_generate.py --device=cuda --net=cifar10 --batches=64,512 --images=1024 --steps=18

For each batch size the same seeds are sampled twice on a random network (by default a tiny
32x32 RGB one, `--net=cifar10` for EDM's CIFAR-10 DDPM++ configuration):
once by `generate.generate_images()` (what generate.py runs: sampling, uint8 conversion, PNG
files written by its background thread) and once by the sampler alone (same Sampler,
SeedNoise and latents, uint8 conversion, nothing written). `end-to-end / alone` near 1 means
the writes do not hold the network up. PNG encoding alone is timed as well, for scale.
Few solver steps make the network cheap, which is the hardest case for the writer. On CUDA
both timings include copying the pixels to the host (`.cpu()`), which waits for the GPU.
"""

import os
import shutil
import sys
import tempfile
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import generate  # noqa: E402
from bench.bench_sampler import build_net  # noqa: E402
from bench.options import bench_device, positive_int_list  # noqa: E402
from samplers import Sampler, SamplerOptions, SeedNoise, latents_and_labels  # noqa: E402
from torch_utils import images as image_io  # noqa: E402
from networks import edm as networks  # noqa: E402


def tiny_net(resolution, seed=0):
    """A small random class-conditional EDMPrecond network (RGB)."""
    torch.manual_seed(seed)
    return networks.EDMPrecond(img_resolution=resolution, img_channels=3, label_dim=10, model_type='SongUNet',
                               model_channels=8, channel_mult=[1, 2], num_blocks=1,
                               attn_resolutions=[]).eval().requires_grad_(False)


def sampler_alone(net, seeds, options, batch, device):
    """Seconds to sample every seed in batches (uint8 images kept in memory, nothing written)."""
    sampler = Sampler(net, options, device=device)
    shape = [net.img_channels, net.img_resolution, net.img_resolution]
    start = time.perf_counter()
    for chunk in generate.split_batches(seeds, batch):
        noise = SeedNoise(chunk, device=device)
        latents, labels = latents_and_labels(noise, shape, net.label_dim, device=device)
        image_io.to_uint8(sampler(latents, labels, noise.randn_like))  # .cpu() waits for the GPU
    return time.perf_counter() - start


def end_to_end(net, seeds, options, batch, outdir, device):
    """Seconds for generate_images() to write every seed's PNG into a fresh `outdir`."""
    shutil.rmtree(outdir, ignore_errors=True)
    os.makedirs(outdir)
    start = time.perf_counter()
    stats = generate.generate_images(net, seeds, outdir, options, max_batch_size=batch, resume=False, progress=False,
                                     device=device)
    elapsed = time.perf_counter() - start
    assert stats.num_written == len(seeds)
    return elapsed


def png_only(net, seeds, outdir):
    """Seconds to encode and write len(seeds) PNGs of the network's size (random pixels)."""
    images = torch.randint(0, 256, [len(seeds), net.img_resolution, net.img_resolution, net.img_channels],
                           dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).numpy()
    shutil.rmtree(outdir, ignore_errors=True)
    os.makedirs(outdir)
    start = time.perf_counter()
    for seed, image in zip(seeds, images):
        image_io.save_png(generate.image_path(outdir, seed), image)
    return time.perf_counter() - start


@click.command()
@click.option('--device', 'device_name', type=click.Choice(['cpu', 'cuda']), default='cpu', show_default=True, help='Device')
@click.option('--net', 'net_name', type=click.Choice(['tiny', 'cifar10']), default='tiny', show_default=True, help='Network (cifar10: 32x32 only)')
@click.option('--batches', 'batch_sizes', default='1,4,16,64', show_default=True, callback=positive_int_list, help='Batch sizes, e.g. 1,4,16')
@click.option('--images', type=click.IntRange(min=1), default=64, show_default=True, help='Images per measurement')
@click.option('--steps', type=click.IntRange(min=2), default=4, show_default=True, help='Heun steps')
@click.option('--resolution', type=click.IntRange(min=8), default=32, show_default=True, help='Image size (power of two)')
@click.option('--repeat', type=click.IntRange(min=1), default=2, show_default=True, help='Runs per figure (fastest kept)')
@click.option('--threads', type=click.IntRange(min=1), default=None, help='torch intra-op threads  [default: torch\'s]')
def main(device_name, net_name, batch_sizes, images, steps, resolution, repeat, threads):
    """Print images/s of generate_images() and of the sampler alone at several batch sizes."""
    device = bench_device(device_name, threads)
    net = (tiny_net(resolution) if net_name == 'tiny' else build_net('cifar10')).to(device)
    resolution = net.img_resolution
    options = SamplerOptions(num_steps=steps)
    seeds = list(range(images))
    with tempfile.TemporaryDirectory() as tmp:
        outdir = os.path.join(tmp, 'out')
        t_png = min(png_only(net, seeds, outdir) for _ in range(repeat))
        where = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'
        print(f'torch {torch.__version__}, {where}; {net_name} {resolution}x{resolution} RGB net, '
              f'Heun {steps} steps ({options.nfe} NFE), {images} images, best of {repeat}')
        print(f'PNG encode + write alone: {images / t_png:.1f} images/s')
        print(f'{"batch":>6s} {"alone img/s":>12s} {"generate img/s":>15s} {"end-to-end / alone":>19s}')
        for batch in batch_sizes:
            sampler_alone(net, seeds[:batch], options, batch, device)  # warm-up
            t_alone = min(sampler_alone(net, seeds, options, batch, device) for _ in range(repeat))
            t_e2e = min(end_to_end(net, seeds, options, batch, outdir, device) for _ in range(repeat))
            print(f'{batch:6d} {images / t_alone:12.1f} {images / t_e2e:15.1f} {t_e2e / t_alone:19.3f}', flush=True)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
