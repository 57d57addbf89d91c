"""guided-diffusion's noisy-image classifier (its `EncoderUNetModel`), built from its flags.

OpenAI's classifier checkpoints (`{64,128,256,512}x{...}_classifier.pt`) are state dicts of the
`EncoderUNetModel` that guided-diffusion's `create_classifier` builds from the `--classifier_*`
flags: the encoder half of its U-Net (timestep embedding, input blocks, middle block) and a
pooling head (adaptive, attention, spatial, spatial_v2) giving 1000 logits. The torso here is
made of networks/edm.py's blocks, the same ones that hold guided-diffusion's UNetModel, and
networks/adm.py's tensor mapping moves a checkpoint into it; the heads are written with
guided-diffusion's parameter names, so their tensors need no mapping. Checkpoints are read with
weights_only=True, checked on the meta device before any memory is allocated, and every tensor
must fit (strict), or one line names what does not.
"""

import argparse
import os
import shlex

import numpy as np
import torch
from torch.nn.functional import silu

import dnnlib
from networks import adm
from networks import edm
from safeload.checkpoints import CheckpointError, read_state_dict

# guided-diffusion's `classifier_defaults()` (image_size is the model's flag, shared).
CLASSIFIER_FLAGS = dict(
    classifier_use_fp16=False,
    classifier_width=128,
    classifier_depth=2,
    classifier_attention_resolutions='32,16,8',
    classifier_use_scale_shift_norm=True,
    classifier_resblock_updown=True,
    classifier_pool='attention',
)
POOLS = ('adaptive', 'attention', 'spatial', 'spatial_v2')
NUM_CLASSES = 1000          # create_classifier's out_channels.
HEAD_CHANNELS = 64          # create_classifier's num_head_channels (legacy qkv order everywhere but the pool).
SPATIAL_WIDTH = 2048        # Hidden width of the spatial heads.
# create_classifier's channel multipliers by image size; 32 is ADM-ES's addition. They are the model's defaults.
CHANNEL_MULT = {size: adm.DEFAULT_CHANNEL_MULT[size] for size in (32, 64, 128, 256, 512)}

# The flags of OpenAI's published classifiers (guided-diffusion's README); the scale is the one its
# guided commands use with the conditional model (256x256: 10.0 with the unconditional one).
PRESETS = {
    'imagenet-64': dict(image_size=64, classifier_depth=4, scale=1.0),
    'imagenet-128': dict(image_size=128, scale=0.5),
    'imagenet-256': dict(image_size=256, scale=1.0),
    'imagenet-512': dict(image_size=512, scale=4.0),
}


def classifier_flags(image_size, **values):
    """The classifier flags (create_classifier's arguments) with defaults filled in and checked;
    ADMError (one line) for what guided-diffusion would refuse or could not build."""
    unknown = sorted(set(values) - set(CLASSIFIER_FLAGS))
    if unknown:
        raise adm.ADMError(f'unknown classifier flag --{unknown[0]}')
    flags = dnnlib.EasyDict(image_size=int(image_size), **{**CLASSIFIER_FLAGS, **values})
    if flags.image_size not in CHANNEL_MULT:
        raise adm.ADMError(f'the classifier supports --image_size {", ".join(map(str, CHANNEL_MULT))}, '
                           f'not {flags.image_size} (guided-diffusion: "unsupported image size")')
    if flags.classifier_pool not in POOLS:
        raise adm.ADMError(f'--classifier_pool must be one of {"|".join(POOLS)}, not "{flags.classifier_pool}"')
    if flags.classifier_width < 1 or flags.classifier_depth < 0:
        raise adm.ADMError('--classifier_width must be positive and --classifier_depth not negative')
    for rate in _attention_rates(flags):
        if rate < 1:
            raise adm.ADMError(f'--classifier_attention_resolutions "{flags.classifier_attention_resolutions}" '
                               f'names a resolution above --image_size {flags.image_size}')
    widths = _widths(flags)
    for width in widths:
        if width < 32 or width % 32:
            raise adm.ADMError(f'a classifier level would have {width} channels (--classifier_width '
                               f'{flags.classifier_width}); its GroupNorm needs a multiple of 32')
    attention = _attention_levels(flags) | {len(widths) - 1}  # the middle block (and the attention pool) attend
    for level in sorted(attention):
        if widths[level] % HEAD_CHANNELS:
            raise adm.ADMError(f'classifier attention over {widths[level]} channels cannot have {HEAD_CHANNELS} '
                               f'channels per head (create_classifier fixes them); raise --classifier_width')
    return flags


def _widths(flags):
    return [int(mult * flags.classifier_width) for mult in CHANNEL_MULT[flags.image_size]]


def _attention_rates(flags):
    try:
        return {flags.image_size // int(r) for r in str(flags.classifier_attention_resolutions).split(',')}
    except (ValueError, ZeroDivisionError):
        raise adm.ADMError('--classifier_attention_resolutions must be comma-separated positive integers, '
                           f'got "{flags.classifier_attention_resolutions}"') from None


def _attention_levels(flags):
    """Levels whose downsampling rate 2^level is image_size // r for a listed r (create_classifier's rule)."""
    rates = _attention_rates(flags)
    return {level for level in range(len(CHANNEL_MULT[flags.image_size])) if (1 << level) in rates}

#----------------------------------------------------------------------------
# The network.


class AttentionPool2d(torch.nn.Module):
    """CLIP-style attention pooling (guided-diffusion's AttentionPool2d): the spatial mean,
    prepended to the positions, attends over all of them; its output is the result."""

    def __init__(self, spatial, channels, num_classes, channels_per_head=HEAD_CHANNELS):
        super().__init__()
        self.positional_embedding = torch.nn.Parameter(torch.randn(channels, spatial ** 2 + 1) / channels ** 0.5)
        self.qkv_proj = torch.nn.Conv1d(channels, 3 * channels, 1)
        self.c_proj = torch.nn.Conv1d(channels, num_classes, 1)
        self.num_heads = channels // channels_per_head

    def forward(self, x):
        n, c = x.shape[:2]
        x = x.reshape(n, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1) + self.positional_embedding[None].to(x.dtype)
        # qkv rows are [(q, k, v), head, channel] (guided-diffusion's QKVAttention, the "new" order).
        q, k, v = self.qkv_proj(x).reshape(n, 3, self.num_heads, c // self.num_heads, -1).unbind(1)
        q, k, v = (t.reshape(n * self.num_heads, c // self.num_heads, -1) for t in (q, k, v))
        weights = edm.AttentionOp.apply(q, k)
        mixed = torch.einsum('nqk,nck->ncq', weights, v).reshape(n, c, -1)
        return self.c_proj(mixed)[:, :, 0]


def _head(pool, width, spatial, features, num_classes):
    """The pooling head, its parameters under guided-diffusion's `out.<index>` names."""
    norm = lambda channels: edm.GroupNorm(channels, min_channels_per_group=1)
    if pool == 'adaptive':
        conv = torch.nn.Conv2d(width, num_classes, 1)
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
        return torch.nn.Sequential(norm(width), torch.nn.SiLU(), torch.nn.AdaptiveAvgPool2d(1), conv, torch.nn.Flatten())
    if pool == 'attention':
        return torch.nn.Sequential(norm(width), torch.nn.SiLU(), AttentionPool2d(spatial, width, num_classes))
    if pool == 'spatial':
        return torch.nn.Sequential(torch.nn.Linear(features, SPATIAL_WIDTH), torch.nn.ReLU(),
                                   torch.nn.Linear(SPATIAL_WIDTH, num_classes))
    return torch.nn.Sequential(torch.nn.Linear(features, SPATIAL_WIDTH), norm(SPATIAL_WIDTH), torch.nn.SiLU(),
                               torch.nn.Linear(SPATIAL_WIDTH, num_classes))


class NoisyClassifier(torch.nn.Module):
    """log p(y | x_t) up to a constant: logits [N, num_classes] (float32) of the VP state x_t at
    the integer timesteps t, guided-diffusion's EncoderUNetModel. The torso is DhariwalUNet's
    encoder and middle with ADM's settings (32 GroupNorm groups, exp-form timestep embedding)."""

    def __init__(self, img_resolution, img_channels=3, num_classes=NUM_CLASSES, model_channels=128,
                 channel_mult=(1, 2, 3, 4), num_blocks=2, attn_resolutions=(32, 16, 8), adaptive_scale=True,
                 resample_blocks=True, pool='attention'):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.num_classes = num_classes
        self.pool = pool
        emb_channels = model_channels * 4
        block = lambda cin, cout, **kw: edm.UNetBlock(in_channels=cin, out_channels=cout, emb_channels=emb_channels,
                                                      channels_per_head=HEAD_CHANNELS, adaptive_scale=adaptive_scale,
                                                      min_channels_per_group=1, dropout=0, **kw)
        widths = [int(model_channels * mult) for mult in channel_mult]
        self.map_noise = edm.PositionalEmbedding(num_channels=model_channels, exp_form=True)
        self.map_layer0 = edm.Linear(model_channels, emb_channels)
        self.map_layer1 = edm.Linear(emb_channels, emb_channels)
        self.enc = torch.nn.ModuleDict()  # the keys and order of DhariwalUNet's encoder
        width = img_channels
        for level, level_width in enumerate(widths):
            res = img_resolution >> level
            tag = f'{res}x{res}'
            if level == 0:
                self.enc[f'{tag}_conv'] = edm.Conv2d(width, level_width, kernel=3)
                width = level_width
            elif resample_blocks:
                self.enc[f'{tag}_down'] = block(width, width, down=True)
            else:
                self.enc[f'{tag}_down'] = edm.Conv2d(width, width, kernel=3, stride=2)
            for idx in range(num_blocks):
                self.enc[f'{tag}_block{idx}'] = block(width, level_width, attention=res in attn_resolutions)
                width = level_width
        self.mid0 = block(width, width, attention=True)
        self.mid1 = block(width, width)
        features = sum(layer.out_channels for layer in self.enc.values()) + width
        self.out = _head(pool, width, img_resolution >> (len(widths) - 1), features, num_classes)

    def forward(self, x, timesteps):
        emb = silu(self.map_layer1(silu(self.map_layer0(self.map_noise(timesteps.to(torch.float32))))))
        x = x.to(torch.float32)
        means = []
        for layer in [*self.enc.values(), self.mid0, self.mid1]:
            x = layer(x, emb) if isinstance(layer, edm.UNetBlock) else layer(x)
            if self.pool.startswith('spatial') and layer is not self.mid0:
                means.append(x.mean(dim=(2, 3)))
        return self.out(torch.cat(means, dim=-1) if self.pool.startswith('spatial') else x)


def build_classifier(flags, num_classes=NUM_CLASSES):
    """A new NoisyClassifier (random weights, eval mode) for checked classifier flags."""
    mult = CHANNEL_MULT[flags.image_size]
    attention = [flags.image_size >> level for level in sorted(_attention_levels(flags))]
    return NoisyClassifier(img_resolution=flags.image_size, num_classes=num_classes,
                           model_channels=flags.classifier_width, channel_mult=list(mult),
                           num_blocks=flags.classifier_depth, attn_resolutions=attention,
                           adaptive_scale=flags.classifier_use_scale_shift_norm,
                           resample_blocks=flags.classifier_resblock_updown, pool=flags.classifier_pool).eval()

#----------------------------------------------------------------------------
# State dict mapping.


def tensor_map(net):
    """Every tensor of a NoisyClassifier as [adm.Tensor] in EncoderUNetModel's layout: the torso
    through networks/adm.py's block mapping (legacy qkv order), the head under its own names."""
    specs = [adm.Tensor(f'time_embed.{k}.{p}', f'{ours}.{p}') for k, ours in ((0, 'map_layer0'), (2, 'map_layer1'))
             for p in ('weight', 'bias')]
    for k, (key, layer) in enumerate(net.enc.items()):
        if isinstance(layer, edm.UNetBlock):
            specs += adm._block_tensors(layer, f'enc.{key}', f'input_blocks.{k}.0', f'input_blocks.{k}.1')  # pylint: disable=protected-access
        else:
            specs += adm._conv_tensors(f'enc.{key}', f'input_blocks.{k}.0' + ('.op' if key.endswith('_down') else ''))  # pylint: disable=protected-access
    specs += adm._block_tensors(net.mid0, 'mid0', 'middle_block.0', 'middle_block.1')  # pylint: disable=protected-access
    specs += adm._block_tensors(net.mid1, 'mid1', 'middle_block.2', None)  # pylint: disable=protected-access
    specs += [adm.Tensor(f'out.{name}', f'out.{name}') for name, _ in net.out.named_parameters()]
    return specs


def load_state_dict(net, state, source='checkpoint'):
    """Move every tensor of an EncoderUNetModel state dict into `net`; adm.ADMError naming what is
    missing, left over or mis-shaped."""
    wanted = adm.check_state_dict(net, state, source, specs=tensor_map(net))
    converted = {spec.ours: adm.to_ours(spec, state[name].detach().to(torch.float32), new_order=False)
                 for name, spec in wanted.items()}
    net.load_state_dict({**net.state_dict(), **converted}, strict=True)  # resampling filters are buffers
    return net


def classifier_state_dict(net):
    """guided-diffusion's state dict of `net` (the inverse of load_state_dict)."""
    ours = net.state_dict()
    return {spec.adm: adm.to_adm(spec, ours[spec.ours], new_order=False) for spec in tensor_map(net)}


def load_classifier(path_or_url, flags):
    """A NoisyClassifier (eval mode, CPU, float32) holding the weights of a guided-diffusion
    classifier checkpoint, read with weights_only=True and checked on the meta device first."""
    try:
        state = read_state_dict(path_or_url)
    except CheckpointError as err:
        raise adm.ADMError(str(err)) from None
    if all(name.startswith('module.') for name in state):
        state = {name[len('module.'):]: t for name, t in state.items()}
    source = os.path.basename(str(path_or_url)) or str(path_or_url)
    with torch.device('meta'):
        meta = build_classifier(flags)
        adm.check_state_dict(meta, state, source, specs=tensor_map(meta))
    return load_state_dict(build_classifier(flags), state, source)

#----------------------------------------------------------------------------
# Flags on a command line (generate.py's --classifier-flags).


def parse_classifier_flags(text, image_size):
    """classifier flags from a string like "--classifier_depth 4 --classifier_pool attention"."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for name, default in CLASSIFIER_FLAGS.items():
        parser.add_argument(f'--{name}', default=default, type=adm.flag_type(default))
    try:
        parsed, rest = parser.parse_known_args(shlex.split(text or ''))
    except (argparse.ArgumentError, argparse.ArgumentTypeError, ValueError) as err:
        raise adm.ADMError(f'bad classifier flags "{text}": {err}') from None
    if rest:
        raise adm.ADMError(f'unknown classifier flag {rest[0]}')
    return classifier_flags(image_size, **vars(parsed))


def num_parameters(net):
    return int(np.sum([p.numel() for p in net.parameters()]))
