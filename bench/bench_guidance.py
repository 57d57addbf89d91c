"""Cost of classifier guidance per sampling step, relative to the model.

    python bench/bench_guidance.py                                   # tiny model and classifier
    python bench/bench_guidance.py --pair=imagenet-64 --batch=1 --steps=2 --repeat=2
    python bench/bench_guidance.py --device=cuda --pair=imagenet-128 --batch=32 --steps=10

Per repeat: one model forward as the discrete sampler calls it, one classifier forward, one
guidance gradient (classifier forward + backward to x_t, guided-diffusion's cond_fn), then DDPM
over `--steps` respaced steps with and without guidance. Printed are the medians in ms and
`grad/model` (the gradient's cost in model forwards) and `step overhead` ((guided - unguided)
sampling time over the unguided, per step). On the CPU the times are CPU time of this process.
Weights are random in the published shapes
(OpenAI's 64x64 / 128x128 diffusion and classifier flags).
"""

import os
import statistics
import sys
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.options import bench_device  # noqa: E402
from networks import adm  # noqa: E402
from networks import classifier as noisy  # noqa: E402
from samplers import Sampler, SamplerOptions, SeedNoise, latents_and_labels  # noqa: E402
from samplers.guidance import ClassifierGuidance  # noqa: E402

PAIRS = {
    'tiny': (('--image_size 32 --num_channels 32 --channel_mult 1,2 --num_res_blocks 1 --attention_resolutions 8 '
              '--num_head_channels 32 --learn_sigma True --class_cond True'),
             dict(image_size=32, classifier_width=32, classifier_depth=1, classifier_attention_resolutions='8')),
    'imagenet-64': (adm.PRESETS['imagenet-64'], dict(image_size=64, classifier_depth=4)),
    'imagenet-128': (adm.PRESETS['imagenet-128'], dict(image_size=128)),
}


def timed(fn, device):
    """ms of fn(): wall time on a GPU; on the CPU this process's CPU time, which other load on a
    shared machine disturbs far less than wall time (with --threads 1 the two agree when idle)."""
    clock = time.perf_counter if device.type == 'cuda' else time.process_time
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = clock()
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return (clock() - start) * 1000


def build(pair, device):
    model_flags, classifier_kwargs = PAIRS[pair]
    net = adm.build_network(adm.parse_adm_flags(model_flags)).requires_grad_(False).to(device)
    size = classifier_kwargs.pop('image_size')
    classifier = noisy.build_classifier(noisy.classifier_flags(size, **classifier_kwargs)).requires_grad_(False).to(device)
    return net, classifier


@click.command()
@click.option('--pair', type=click.Choice(list(PAIRS)), default='tiny', show_default=True, help='Model and classifier shapes')
@click.option('--batch', type=click.IntRange(min=1), default=2, show_default=True)
@click.option('--steps', type=click.IntRange(min=2), default=3, show_default=True, help='Respaced DDPM steps')
@click.option('--repeat', type=click.IntRange(min=1), default=3, show_default=True)
@click.option('--device', type=str, default=None, help='cpu or cuda  [default: cuda if present]')
@click.option('--threads', type=click.IntRange(min=1), default=None, help='torch intra-op threads (CPU)')
def main(pair, batch, steps, repeat, device, threads):
    """Print the time of a model forward, a classifier forward and a guidance gradient, and the
    per-step overhead of guided DDPM sampling."""
    device = bench_device(device, threads)
    net, classifier = build(pair, device)
    guidance = ClassifierGuidance(classifier, scale=1.0)
    bound = guidance.bind(net)
    noise = SeedNoise(range(batch), device=device)
    shape = [net.img_channels, net.img_resolution, net.img_resolution]
    latents, labels = latents_and_labels(noise, shape, 1000, device=device)
    sigma = torch.full([batch], float(net.sigmas[500]), device=device)
    options = SamplerOptions(solver='ddpm', respacing=str(steps))
    plain, guided = Sampler(net, options, device=device), Sampler(net, options, device=device, guidance=guidance)
    rows = {name: [] for name in ('model', 'classifier', 'gradient', 'unguided', 'guided')}
    for _ in range(repeat):
        with torch.no_grad():
            rows['model'].append(timed(lambda: net(latents, sigma, labels, return_var_values=True), device))
            rows['classifier'].append(timed(lambda: classifier(latents, torch.full([batch], 500.0, device=device)), device))
            rows['gradient'].append(timed(lambda: bound.gradient(latents.double(), sigma, labels), device))
        rows['unguided'].append(timed(lambda: plain(latents, labels, SeedNoise(range(batch), device=device).randn_like), device))
        rows['guided'].append(timed(lambda: guided(latents, labels, SeedNoise(range(batch), device=device).randn_like), device))
    med = {name: statistics.median(values) for name, values in rows.items()}
    print(f'pair {pair}, batch {batch}, {steps} DDPM steps, {repeat} repeats, device {device}; model '
          f'{sum(p.numel() for p in net.parameters()) / 1e6:.1f}M, classifier {noisy.num_parameters(classifier) / 1e6:.1f}M parameters')
    print(f'{"model ms":>10} {"clf fwd ms":>11} {"grad ms":>9} {"grad/model":>11} {"step ms":>9} {"guided step ms":>15} {"step overhead":>14}')
    print(f'{med["model"]:10.1f} {med["classifier"]:11.1f} {med["gradient"]:9.1f} {med["gradient"] / med["model"]:11.3f} '
          f'{med["unguided"] / steps:9.1f} {med["guided"] / steps:15.1f} {med["guided"] / med["unguided"] - 1:14.3f}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
