"""UniPC on the bundled model: the toolkit's solver against diffusers' UniPCMultistepScheduler.

    python bench/bench_unipc_diffusers.py --seeds=0-7 --steps=5-10

For every step count N and UniPC variant and order, both run on the same Karras levels
(sigma_max 80 down to --sigma-min, rho 7, then 0), the same latents and class labels (drawn per
seed as generate.py draws them) and the same network denoiser; diffusers is driven by
bench.peers.run_diffusers_scheduler (its VP state, the model returning D). Printed per row: the
largest pixel magnitude of each side's images, the largest difference between them, and how many
uint8 pixels (the PNGs generate.py would write) differ. With bh1, diffusers' step into sigma = 0
is NaN (docs/solvers.md), so its images are taken as its last model evaluation, which is what
that step returns with bh2. `--context` adds, on the same levels, diffusers' UniPC-3 (bh2) with
its corrector disabled at every step (UniP-3 alone), and our DPM-Solver++(2M), DPM-Solver++(3M)
(`dpmpp3m-ref`, the form of k-diffusion and diffusers), DPM-Solver-3 (`dpmsolver`, noise
prediction) and DEIS tAB2 (`deis`, order 3). `--trace` prints the largest |x| of the state at
each evaluation of our runs.
"""

import os
import sys
import warnings

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.options import int_list, positive_int_list  # noqa: E402
from bench.peers import run_diffusers_scheduler  # noqa: E402
from safeload.networks import load_network  # noqa: E402
from samplers import Sampler, SamplerOptions, SeedNoise, latents_and_labels  # noqa: E402
from torch_utils.images import to_uint8  # noqa: E402


class _Trace:
    """A denoiser that records (sigma, largest |x| of its input) of every evaluation."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, []

    def __call__(self, x, sigma, class_labels=None):
        self.calls.append((float(sigma), x.abs().max().item()))
        return self.denoiser(x, sigma, class_labels)


@click.command()
@click.option('--network', default='models/mnist-cond-32x32.pkl', show_default=True)
@click.option('--seeds', default='0-7', callback=int_list(0), show_default=True)
@click.option('--steps', 'steps', default='5-10', callback=positive_int_list, show_default=True)
@click.option('--variants', default='bh2,bh1', show_default=True)
@click.option('--orders', default='3,2', show_default=True)
@click.option('--sigma-min', default=0.002, show_default=True)
@click.option('--context', is_flag=True, help='Also print diffusers\' UniPC-3 bh2 without its corrector, DPM-Solver++(2M), '
              'DPM-Solver++(3M), DPM-Solver-3 and DEIS tAB2 on the same levels')
@click.option('--trace', is_flag=True, help='Print max |x| of the state at every evaluation of each of our runs')
@click.option('--threads', default=2, show_default=True)
def main(network, seeds, steps, variants, orders, sigma_min, context, trace, threads):
    import diffusers
    torch.set_num_threads(threads)
    warnings.simplefilter('ignore', DeprecationWarning)  # diffusers 0.42.1 with numpy 2
    net = load_network(network)
    latents, labels = latents_and_labels(SeedNoise(seeds), [net.img_channels, net.img_resolution, net.img_resolution],
                                         net.label_dim)

    def ours(solver, order, num_steps):
        sampler = Sampler(net, SamplerOptions(solver=solver, order=order, num_steps=num_steps, sigma_min=sigma_min))
        denoiser = sampler.denoiser
        sampler.denoiser = _Trace(denoiser)
        with torch.inference_mode():
            images = sampler(latents, labels)
        if trace:
            print('       state max|x| at sigma: ' + ', '.join(f'{s:.3g}: {m:.2f}' for s, m in sampler.denoiser.calls))
        return images, denoiser, sampler.sigmas

    print(f'{len(seeds)} seeds, Karras levels 80 .. {sigma_min:g} (rho 7) and 0')
    print('steps  solver           max|x| ours  max|x| diffusers  max|ours - diffusers|  uint8 pixels differing')
    for num_steps in steps:
        for variant in variants.split(','):
            for order in [int(k) for k in orders.split(',')]:
                images, denoiser, sigmas = ours(f'unipc-{variant}', order, num_steps)
                scheduler = diffusers.UniPCMultistepScheduler(solver_order=order, solver_type=variant,
                                                              prediction_type='sample')
                with torch.inference_mode():
                    theirs, last = run_diffusers_scheduler(scheduler, denoiser, latents, sigmas, labels)
                if not bool(torch.isfinite(theirs).all()):
                    theirs = last
                differing = int((to_uint8(images) != to_uint8(theirs)).sum())
                print(f'{num_steps:5d}  unipc-{variant} p={order}  {images.abs().max():11.3f}  {theirs.abs().max():16.3f}  '
                      f'{(images - theirs).abs().max():21.2e}  {differing:6d} of {images.numel()}', flush=True)
        if context:
            scheduler = diffusers.UniPCMultistepScheduler(solver_order=3, prediction_type='sample',
                                                          disable_corrector=list(range(num_steps)))
            with torch.inference_mode():
                theirs, _ = run_diffusers_scheduler(scheduler, denoiser, latents, sigmas, labels)
            print(f'{num_steps:5d}  {"UniP-3 only":15s}  {"":11s}  {theirs.abs().max():16.3f}', flush=True)
            for solver, order in (('dpmpp2m', None), ('dpmpp3m-ref', None), ('dpmsolver', 3), ('deis', 3)):
                images, _, _ = ours(solver, order, num_steps)
                print(f'{num_steps:5d}  {solver + (f" p={order}" if order else ""):15s}  {images.abs().max():11.3f}', flush=True)


if __name__ == '__main__':
    main()
