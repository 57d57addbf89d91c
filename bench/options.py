"""Option parsing shared by the bench/ scripts."""

import click
import torch

import dnnlib


def int_list(minimum):
    """click callback: '1,2,8-10' -> [1, 2, 8, 9, 10], each at least `minimum`, or a one-line usage error."""
    def parse(ctx, param, value):
        try:
            values = dnnlib.util.parse_int_list(value)
        except ValueError as err:
            raise click.BadParameter(f'"{value}": {err}') from None
        if not values or min(values) < minimum:
            raise click.BadParameter(f'"{value}" must list integers >= {minimum}')
        return values
    return parse


positive_int_list = int_list(1)


def bench_device(name, threads=None):
    """The torch device a bench runs on ('cpu', 'cuda', or None for CUDA when there is one),
    after setting torch's intra-op threads if `threads` is given; a one-line error for a
    CUDA device that torch cannot see."""
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device(name or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise click.ClickException('--device=cuda, but torch sees no CUDA device')
    return device
