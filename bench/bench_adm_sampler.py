"""Sampler overhead of DDPM and DDIM on ADM networks: sampling time over (NFE x one forward).

    python bench/bench_adm_sampler.py                          # tiny ADM and the CIFAR-10 ADM (57M)
    python bench/bench_adm_sampler.py --net=cifar10 --batch=2 --steps=4 --repeat=5
    python bench/bench_adm_sampler.py --device=cuda --net=cifar10 --batch=256 --steps=50

As bench/bench_sampler.py does for the EDM solvers: per repeat, the network forward is timed
NFE times as the discrete sampler calls it (x_t / sqrt(abar), per-sample sigma, the variance
output), then the sampler runs once; `ratio` is the median of sampling / (NFE x forward),
`1+solver/net` the load-robust estimate from a sampler run with a network that does nothing.
Weights are random (the CIFAR-10 net has guided-diffusion's published shapes).
"""

import os
import statistics
import sys

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.bench_sampler import time_calls, time_sampler  # noqa: E402
from bench.options import bench_device  # noqa: E402
from samplers import Sampler, SamplerOptions  # noqa: E402
from samplers.discrete import grid_levels  # noqa: E402
from networks import adm  # noqa: E402

NETS = dict(
    tiny=('--image_size 16 --num_channels 32 --channel_mult 1,2 --num_res_blocks 1 --attention_resolutions 8 '
          '--num_head_channels 32 --resblock_updown True --use_new_attention_order True --learn_sigma True '
          '--noise_schedule cosine'),
    cifar10=adm.PRESETS['cifar10-32'],
)
VARIANTS = [
    ('ddpm', dict(solver='ddpm')),
    ('ddim', dict(solver='ddim')),
    ('ddpm ES', dict(solver='ddpm', eps_scaler=1.017)),
    ('ddim ES', dict(solver='ddim', eps_scaler=1.017)),
    ('ddpm TS', dict(solver='ddpm', ts_window=20, ts_cutoff=0.1)),
    ('ddim TS', dict(solver='ddim', ts_window=20, ts_cutoff=0.1)),
    ('ddim tsdpm', dict(solver='ddim', ts_mode='tsdpm', ts_window=80, ts_cutoff=300)),
]


class NullADM(torch.nn.Module):
    """Answers like an ADM network at almost no cost: D = x, v = 0."""

    def __init__(self, net):
        super().__init__()
        for name in ('img_resolution', 'img_channels', 'label_dim', 'sigma_min', 'sigma_max', 'learn_sigma'):
            setattr(self, name, getattr(net, name))
        self.register_buffer('alpha_bar', net.alpha_bar)
        self.round_sigma = net.round_sigma

    def forward(self, x, sigma, class_labels=None, return_var_values=False):
        out = x.to(torch.float32)
        return (out, torch.zeros_like(out) if self.learn_sigma else None) if return_var_values else out


def build_net(name, device):
    """An ADMPrecond with random weights everywhere (zero-initialised layers redrawn)."""
    torch.manual_seed(0)
    net = adm.build_network(adm.parse_adm_flags(NETS[name]))
    with torch.no_grad():
        for param in net.parameters():
            if param.ndim >= 2 and param.abs().max() == 0:
                param.copy_(torch.randn(param.shape) / param[0].numel() ** 0.5)
    return net.requires_grad_(False).to(device)


def measure(net, options, batch, repeat, device):
    sampler = Sampler(net, options, device=device)
    process = sampler.process
    x = torch.randn([batch, net.img_channels, net.img_resolution, net.img_resolution], dtype=torch.float64, device=device)
    calls = []
    for j in reversed(range(process.num_steps)):
        levels = grid_levels(process, j, x)
        calls.append((x / levels.abar.sqrt().reshape(-1, 1, 1, 1), levels.sigma))
    ratios, sample_times, forward_times = [], [], []
    seeds = list(range(batch))
    for r in range(repeat + 1):
        t_fwd = time_calls(net, [((xs, sigma, None), dict(return_var_values=True)) for xs, sigma in calls], device)
        t_sample = time_sampler(sampler, net, seeds, device)
        if r > 0:
            ratios.append(t_sample / t_fwd)
            sample_times.append(t_sample)
            forward_times.append(t_fwd / len(calls))
    t_null = min(time_sampler(Sampler(NullADM(net), options, device=device), net, seeds, device) for _ in range(repeat + 1))
    return dict(ratio=statistics.median(ratios), estimate=1 + t_null / (min(forward_times) * len(calls)), t_null=t_null,
                t_sample=statistics.median(sample_times), t_fwd=statistics.median(forward_times), nfe=len(calls))


@click.command()
@click.option('--device', 'device_name', type=click.Choice(['cpu', 'cuda']), default='cpu', show_default=True, help='Device')
@click.option('--net', 'net_names', type=click.Choice(['tiny', 'cifar10', 'all']), default='all', show_default=True, help='Network')
@click.option('--batch', type=click.IntRange(min=1), default=None, help='Batch size  [default: tiny 16, cifar10 2]')
@click.option('--steps', type=click.IntRange(min=2), default=None, help='Respaced steps  [default: tiny 25, cifar10 4]')
@click.option('--repeat', type=click.IntRange(min=1), default=3, show_default=True, help='Timed runs per variant (median kept)')
@click.option('--threads', type=click.IntRange(min=1), default=None, help='torch intra-op threads  [default: torch\'s]')
def main(device_name, net_names, batch, steps, repeat, threads):
    """Print the overhead ratio of DDPM/DDIM with and without ES and TS on ADM networks."""
    device = bench_device(device_name, threads)
    where = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'
    print(f'torch {torch.__version__}, {where}, target ratio <= 1.02')
    for name in (['tiny', 'cifar10'] if net_names == 'all' else [net_names]):
        net = build_net(name, device)
        n_batch = batch or (16 if name == 'tiny' else 2)
        n_steps = steps or (25 if name == 'tiny' else 4)
        print(f'\n{name}: {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters, batch {n_batch}, '
              f'respacing "{n_steps}", median of {repeat}')
        print(f'{"variant":11s} {"NFE":>4s} {"forward ms":>11s} {"sampling s":>11s} {"ratio":>7s} {"solver ms":>10s} '
              f'{"1+solver/net":>13s}')
        for label, kwargs in VARIANTS:
            m = measure(net, SamplerOptions(num_steps=n_steps, **kwargs), n_batch, repeat, device)
            print(f'{label:11s} {m["nfe"]:4d} {m["t_fwd"] * 1e3:11.3f} {m["t_sample"]:11.3f} {m["ratio"]:7.3f} '
                  f'{m["t_null"] * 1e3:10.3f} {m["estimate"]:13.4f}', flush=True)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
