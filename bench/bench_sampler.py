"""Sampler overhead: wall time of sampling over (NFE x wall time of one network forward).

    python bench/bench_sampler.py                                  # tiny and CIFAR-10 DDPM++ nets
    python bench/bench_sampler.py --net=cifar10 --batch=4 --steps=4 --repeat=5
    python bench/bench_sampler.py --net=tiny --profile             # where the time goes
    python bench/bench_sampler.py --device=cuda --net=cifar10 --batch=256 --steps=18
    python bench/bench_sampler.py --net=tiny --variants='spndm,fpndm,dpmsolver,dpmpp2m,deis,deis ES,deis TS'

The sampler is called exactly as generate.py calls it (Sampler, SamplerOptions, SeedNoise,
latents_and_labels). In every repeat the network forward is timed NFE times on the same
inputs the solver gives it (float64 state, the levels the solver evaluates at, recorded in a
run with a network that does nothing, the same labels, under torch.inference_mode as the
sampler), then the sampler runs once; the ratio of the two sums is 1 when the solver, epsilon scaling
and time shift cost nothing next to the network. Weights are random: speed does not depend
on them.

Columns: `ratio` is the median over repeats of sampling / (NFE x forward); `best-of` is the
fastest sampling over NFE x the fastest forward. On a shared machine both move by a few
percent with the load of other processes, so `solver ms` times the sampler once more with a
network that does nothing (NullNet), and `1+solver/net` = 1 + that time / (NFE x forward)
is the overhead estimate that load hardly moves. On CUDA every timing ends with
torch.cuda.synchronize.
"""

import cProfile
import os
import pstats
import statistics
import sys
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.options import bench_device  # noqa: E402
from samplers import Sampler, SamplerOptions, SeedNoise, latents_and_labels  # noqa: E402
from networks import edm as networks  # noqa: E402

# EDM's CIFAR-10 DDPM++ network (train.py --arch=ddpmpp --cond=1), about 56M parameters.
CIFAR10_DDPMPP = dict(img_resolution=32, img_channels=3, label_dim=10, model_type='SongUNet',
                      embedding_type='positional', encoder_type='standard', decoder_type='standard',
                      channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2],
                      num_blocks=4, attn_resolutions=[16], dropout=0.13)
TINY = dict(img_resolution=8, img_channels=3, label_dim=10, model_type='SongUNet', model_channels=8,
            channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
NETS = dict(tiny=TINY, cifar10=CIFAR10_DDPMPP)

# (name, options) for each measured variant; ES and TS use the values of the EDM-ES/TS-DPM papers' scale.
VARIANTS = [
    ('euler', dict(solver='euler')),
    ('heun', dict(solver='heun')),
    ('euler ES', dict(solver='euler', eps_scaler=1.005)),
    ('heun ES', dict(solver='heun', eps_scaler=1.005)),
    ('euler TS', dict(solver='euler', ts_window=5)),
    ('heun TS', dict(solver='heun', ts_window=5)),
    ('spndm', dict(solver='spndm')),
    ('fpndm', dict(solver='fpndm')),
    ('dpmsolver', dict(solver='dpmsolver')),
    ('dpmpp2m', dict(solver='dpmpp2m')),
    ('deis', dict(solver='deis')),
    ('fpndm ES', dict(solver='fpndm', eps_scaler=1.005)),
    ('deis ES', dict(solver='deis', eps_scaler=1.005)),
    ('dpmpp2m TS', dict(solver='dpmpp2m', ts_window=5)),
    ('deis TS', dict(solver='deis', ts_window=5)),
    ('unipc-bh1', dict(solver='unipc-bh1')),
    ('unipc-bh2', dict(solver='unipc-bh2')),
    ('unipc-bh2 TS', dict(solver='unipc-bh2', ts_window=5)),
    ('dpmpp3m', dict(solver='dpmpp3m')),
    ('ipndm', dict(solver='ipndm')),
    ('euler_a', dict(solver='euler_a')),
    ('dpmpp-sde', dict(solver='dpmpp-sde')),
    ('dpmpp2m-sde', dict(solver='dpmpp2m-sde')),
]


def build_net(name, seed=0):
    """A random-weight EDMPrecond network of the named configuration, in eval mode.

    EDM initialises the last layer of every residual branch and of the U-Net to 1e-5 of the
    usual scale, which makes D(x) = c_skip x whatever the rest computes; those weights are
    drawn again here at std 1/sqrt(fan-in), so that the images depend on the network as a
    trained one's do and fast paths that round differently show it. Speed does not depend on
    the values.
    """
    torch.manual_seed(seed)
    net = networks.EDMPrecond(**NETS[name]).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed + 1)
    for param in net.parameters():
        fan_in = param[0].numel() if param.ndim >= 2 else 0
        if fan_in and param.std() < 1e-3 / fan_in ** 0.5:
            param.copy_(torch.randn(param.shape, generator=gen) / fan_in ** 0.5)
    return net


def draw(net, seeds, device=torch.device('cpu')):
    noise = SeedNoise(seeds, device=device)
    shape = [net.img_channels, net.img_resolution, net.img_resolution]
    latents, labels = latents_and_labels(noise, shape, net.label_dim, device=device)
    return latents, labels, noise


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class NullNet(torch.nn.Module):
    """Costs (almost) nothing but answers like `net`: same attributes, float32 output of the
    input's shape. Sampling with it times everything but the network."""

    def __init__(self, net):
        super().__init__()
        for name in ('img_resolution', 'img_channels', 'label_dim', 'sigma_min', 'sigma_max', 'sigma_data'):
            setattr(self, name, getattr(net, name))
        self.round_sigma = net.round_sigma

    def forward(self, x, sigma, class_labels=None):
        return x.to(torch.float32)


class LevelRecorder(NullNet):
    """A NullNet that keeps the sigma of every call."""

    def __init__(self, net):
        super().__init__(net)
        self.levels = []

    def forward(self, x, sigma, class_labels=None):
        self.levels.append(torch.as_tensor(sigma).clone())
        return super().forward(x, sigma, class_labels)


def evaluation_levels(net, options, seeds, device):
    """The sigma of every network evaluation of one sampler run (one per NFE)."""
    recorder = LevelRecorder(net)
    time_sampler(Sampler(recorder, options, device=device), net, seeds, device)
    return recorder.levels


def time_sampler(sampler, net, seeds, device):
    latents, labels, noise = draw(net, seeds, device)
    sync(device)
    start = time.perf_counter()
    sampler(latents, labels, noise.randn_like)
    sync(device)
    return time.perf_counter() - start


def time_calls(fn, calls, device):
    """Seconds for fn(*args, **kwargs) for each (args, kwargs) in `calls`, under inference_mode."""
    with torch.inference_mode():
        sync(device)
        start = time.perf_counter()
        for args, kwargs in calls:
            fn(*args, **kwargs)
        sync(device)
        return time.perf_counter() - start


def time_forwards(net, x, labels, sigmas, device):
    """Seconds for one forward per level in `sigmas`, called as the solver calls the network."""
    return time_calls(net, [((x, sigma, labels), {}) for sigma in sigmas], device)


def measure(net, options, batch, repeat, device):
    """(median ratio, best-of ratio, median sampling seconds, median forward seconds per call) over
    `repeat` runs after one warm-up. The best-of ratio (fastest sampling over fastest forwards)
    is the less load-sensitive figure on a shared machine."""
    sampler = Sampler(net, options, device=device)
    seeds = list(range(batch))
    latents, labels, _ = draw(net, seeds, device)
    x = latents.to(torch.float64) * float(sampler.sigmas[0])
    # The levels the network sees, one per evaluation.
    sigmas = evaluation_levels(net, options, seeds, device)
    assert len(sigmas) == options.nfe, (len(sigmas), options.nfe)
    ratios, sample_times, forward_times = [], [], []
    for r in range(repeat + 1):
        t_fwd = time_forwards(net, x, labels, sigmas, device)
        t_sample = time_sampler(sampler, net, seeds, device)
        if r > 0:  # the first round is the warm-up
            ratios.append(t_sample / t_fwd)
            sample_times.append(t_sample)
            forward_times.append(t_fwd / options.nfe)
    best = min(sample_times) / (min(forward_times) * options.nfe)
    # The solver's own cost, timed without the network: a load-robust estimate of the overhead.
    null_sampler = Sampler(NullNet(net), options, device=device)
    t_null = min(time_sampler(null_sampler, net, seeds, device) for _ in range(repeat + 1))
    estimate = 1 + t_null / (min(forward_times) * options.nfe)
    return dict(ratio=statistics.median(ratios), best=best, estimate=estimate, t_null=t_null,
                t_sample=statistics.median(sample_times), t_fwd=statistics.median(forward_times))


def profile(net, options, batch, top, device):
    """Print the `top` functions by own time for one sampler run."""
    sampler = Sampler(net, options, device=device)
    latents, labels, noise = draw(net, list(range(batch)), device)
    sampler(latents, labels, noise.randn_like)  # warm-up
    latents, labels, noise = draw(net, list(range(batch)), device)
    prof = cProfile.Profile()
    prof.enable()
    sampler(latents, labels, noise.randn_like)
    prof.disable()
    pstats.Stats(prof).sort_stats('tottime').print_stats(top)


@click.command()
@click.option('--device', 'device_name', type=click.Choice(['cpu', 'cuda']), default='cpu', show_default=True, help='Device')
@click.option('--net', 'net_names', type=click.Choice(['tiny', 'cifar10', 'all']), default='all', show_default=True, help='Network configuration')
@click.option('--batch', type=click.IntRange(min=1), default=None, help='Batch size  [default: tiny 16, cifar10 2]')
@click.option('--steps', type=click.IntRange(min=2), default=None, help='Solver steps  [default: tiny 18, cifar10 4]')
@click.option('--repeat', type=click.IntRange(min=1), default=3, show_default=True, help='Timed runs per variant (median kept)')
@click.option('--variants', default=','.join(name for name, _ in VARIANTS), show_default=True, help='Comma-separated variants to run')
@click.option('--threads', type=click.IntRange(min=1), default=None, help='torch intra-op threads  [default: torch\'s]')
@click.option('--profile', 'do_profile', is_flag=True, help='Also print a cProfile of one run per variant')
def main(device_name, net_names, batch, steps, repeat, variants, threads, do_profile):
    """Print the sampler overhead ratio for every solver, with and without ES and TS."""
    device = bench_device(device_name, threads)
    chosen = [v for v in VARIANTS if v[0] in variants.split(',')]
    if not chosen:
        raise click.ClickException(f'--variants selects none of {", ".join(name for name, _ in VARIANTS)}')
    where = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'
    print(f'torch {torch.__version__}, {where}, target ratio <= 1.02')
    for name in (['tiny', 'cifar10'] if net_names == 'all' else [net_names]):
        net = build_net(name).to(device)
        n_batch = batch or (16 if name == 'tiny' else 2)
        n_steps = steps or (18 if name == 'tiny' else 4)
        params = sum(p.numel() for p in net.parameters())
        print(f'\n{name}: {params / 1e6:.2f}M parameters, batch {n_batch}, {n_steps} steps, median of {repeat}')
        print(f'{"variant":10s} {"NFE":>4s} {"forward ms":>11s} {"sampling s":>11s} {"ratio":>7s} {"best-of":>8s} '
              f'{"solver ms":>10s} {"1+solver/net":>13s}')
        for label, kwargs in chosen:
            options = SamplerOptions(num_steps=n_steps, **kwargs)
            m = measure(net, options, n_batch, repeat, device)
            print(f'{label:10s} {options.nfe:4d} {m["t_fwd"] * 1e3:11.3f} {m["t_sample"]:11.3f} {m["ratio"]:7.3f} '
                  f'{m["best"]:8.3f} {m["t_null"] * 1e3:10.3f} {m["estimate"]:13.4f}', flush=True)
            if do_profile:
                profile(net, options, n_batch, top=15, device=device)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
