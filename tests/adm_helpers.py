"""Test helpers: guided-diffusion checkpoints built from the architecture's rules.

`adm_state_shapes` describes guided-diffusion's UNetModel state dict from its construction
rules, written from the architecture (not from networks/adm.py), so the tests that use it
check the mapping independently.
"""

import math

import numpy as np
import torch

from networks import adm

def adm_state_shapes(image_size, num_channels, num_res_blocks, channel_mult, attention_resolutions,
                     num_heads=4, num_head_channels=-1, num_heads_upsample=-1, learn_sigma=False, class_cond=False,
                     num_classes=1000, use_scale_shift_norm=True, resblock_updown=False, **_):
    """{name: shape} of UNetModel's state dict, and {attention prefix: heads}."""
    shapes, heads = {}, {}
    emb = 4 * num_channels
    rates = {image_size // int(r) for r in attention_resolutions.split(',')}

    def affine(name, cin, cout, kernel=None):
        shapes[f'{name}.weight'] = (cout, cin) if kernel is None else (cout, cin, *kernel)
        shapes[f'{name}.bias'] = (cout,)

    def res(name, cin, cout):
        affine(f'{name}.in_layers.0', None, cin)
        shapes[f'{name}.in_layers.0.weight'] = (cin,)
        affine(f'{name}.in_layers.2', cin, cout, (3, 3))
        affine(f'{name}.emb_layers.1', emb, 2 * cout if use_scale_shift_norm else cout)
        shapes[f'{name}.out_layers.0.weight'], shapes[f'{name}.out_layers.0.bias'] = (cout,), (cout,)
        affine(f'{name}.out_layers.3', cout, cout, (3, 3))
        if cin != cout:
            affine(f'{name}.skip_connection', cin, cout, (1, 1))

    def attn(name, c, n):
        shapes[f'{name}.norm.weight'], shapes[f'{name}.norm.bias'] = (c,), (c,)
        affine(f'{name}.qkv', c, 3 * c, (1,))
        affine(f'{name}.proj_out', c, c, (1,))
        heads[name] = c // num_head_channels if num_head_channels != -1 else n

    heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample
    affine('time_embed.0', num_channels, emb)
    affine('time_embed.2', emb, emb)
    if class_cond:
        shapes['label_emb.weight'] = (num_classes, emb)
    ch = int(channel_mult[0] * num_channels)
    affine('input_blocks.0.0', 3, ch, (3, 3))
    chans, k, ds = [ch], 1, 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            res(f'input_blocks.{k}.0', ch, int(mult * num_channels))
            ch = int(mult * num_channels)
            if ds in rates:
                attn(f'input_blocks.{k}.1', ch, num_heads)
            chans.append(ch)
            k += 1
        if level != len(channel_mult) - 1:
            if resblock_updown:
                res(f'input_blocks.{k}.0', ch, ch)
            else:
                affine(f'input_blocks.{k}.0.op', ch, ch, (3, 3))
            chans.append(ch)
            k += 1
            ds *= 2
    res('middle_block.0', ch, ch)
    attn('middle_block.1', ch, num_heads)
    res('middle_block.2', ch, ch)
    j = 0
    for level, mult in reversed(list(enumerate(channel_mult))):
        for i in range(num_res_blocks + 1):
            res(f'output_blocks.{j}.0', ch + chans.pop(), int(num_channels * mult))
            ch = int(num_channels * mult)
            layer = 1
            if ds in rates:
                attn(f'output_blocks.{j}.1', ch, heads_up)
                layer = 2
            if level and i == num_res_blocks:
                if resblock_updown:
                    res(f'output_blocks.{j}.{layer}', ch, ch)
                else:
                    affine(f'output_blocks.{j}.{layer}.conv', ch, ch, (3, 3))
                ds //= 2
            j += 1
    affine('out.0', None, ch)
    shapes['out.0.weight'] = (ch,)
    affine('out.2', ch, 6 if learn_sigma else 3, (3, 3))
    return shapes, heads


def shapes_of(flags, **overrides):
    kw = dict(flags)
    kw['channel_mult'] = adm.channel_mult(flags)
    kw['num_classes'] = kw['num_classes'] or 1000
    kw.update(overrides)
    return adm_state_shapes(**kw)


def random_state(flags, seed=0, **overrides):
    """A guided-diffusion state dict for `flags` with random weights (zero-initialised layers included)."""
    g = torch.Generator().manual_seed(seed)
    shapes, _ = shapes_of(flags, **overrides)
    state = {}
    for name, shape in shapes.items():
        fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        scale = 1 / math.sqrt(fan) if len(shape) > 1 else 0.1
        state[name] = torch.randn(shape, generator=g) * scale + (1.0 if len(shape) == 1 and name.endswith('0.weight') else 0.0)
    return state


TINY = ('--image_size 16 --num_channels 32 --channel_mult 1,2 --num_res_blocks 1 --attention_resolutions 8 '
        '--num_head_channels 32 --resblock_updown True --use_new_attention_order True --learn_sigma True '
        '--noise_schedule cosine')


def tiny_adm(flags_text=TINY, seed=0, num_classes=None):
    """(ADMPrecond with random weights, its flags, its guided-diffusion state dict)."""
    flags = adm.parse_adm_flags(flags_text)
    overrides = dict(num_classes=num_classes) if num_classes else {}
    state = random_state(flags, seed=seed, **overrides)
    net = adm.load_state_dict(adm.build_network(flags, num_classes), state, flags)
    return net.eval().requires_grad_(False), flags, state
