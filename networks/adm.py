"""guided-diffusion (ADM) checkpoints as this toolkit's networks.

OpenAI's guided-diffusion and its forks (ADM-IP, ADM-ES, TS-DPM-ADM) save a checkpoint as a
plain state dict of their `UNetModel` and give the architecture as command-line flags. This
module reads those flags with guided-diffusion's names, defaults and value syntax
(`parse_adm_flags`), builds the equivalent `ADMPrecond` around a `DhariwalUNet`
(`build_network`), and moves every tensor of a checkpoint into it (`load_adm_checkpoint`),
refusing with one line whatever does not fit. Checkpoints are read with torch's
weights_only=True: no code from the file runs.
"""

import argparse
import dataclasses
import os
import shlex

import torch

import dnnlib
from networks import edm as networks
from torch_utils.cli import str2bool  # noqa: F401  (guided-diffusion's booleans; networks.adm.str2bool kept)
from safeload.checkpoints import CheckpointError, read_state_dict

#----------------------------------------------------------------------------
# Flags.

# guided-diffusion's `model_and_diffusion_defaults()` (ADM-IP/ES/TS add image size 32).
MODEL_FLAGS = dict(
    image_size=64,
    num_channels=128,
    num_res_blocks=2,
    num_heads=4,
    num_heads_upsample=-1,
    num_head_channels=-1,
    attention_resolutions='16,8',
    channel_mult='',
    dropout=0.0,
    class_cond=False,
    use_checkpoint=False,
    use_scale_shift_norm=True,
    resblock_updown=False,
    use_fp16=False,
    use_new_attention_order=False,
)
DIFFUSION_FLAGS = dict(
    learn_sigma=False,
    diffusion_steps=1000,
    noise_schedule='linear',
    timestep_respacing='',
    use_kl=False,
    predict_xstart=False,
    rescale_timesteps=False,
    rescale_learned_sigmas=False,
)
# Flags of guided-diffusion's other scripts and of the forks that do not change the network:
# accepted (with any value) and ignored.
IGNORED_FLAGS = (
    'data_dir', 'schedule_sampler', 'lr', 'weight_decay', 'lr_anneal_steps', 'batch_size', 'microbatch',
    'ema_rate', 'log_interval', 'save_interval', 'resume_checkpoint', 'fp16_scale_growth',
    'clip_denoised', 'num_samples', 'use_ddim', 'model_path', 'out_dir', 'seed', 'eta',
    'classifier_path', 'classifier_scale', 'classifier_use_fp16', 'classifier_width', 'classifier_depth',
    'classifier_attention_resolutions', 'classifier_use_scale_shift_norm', 'classifier_resblock_updown',
    'classifier_pool', 'input_pertub', 'perturb_schedule_type', 'perturb_cutoff', 'eps_scaler', 'eps_scaler_k',
    'window', 'cutoff', 'do_time_shift', 'data_type', 'model_type',
)
# Default channel multipliers by image size (guided-diffusion; 32 from the IP/ES/TS forks).
DEFAULT_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                        64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}
NUM_CLASSES = 1000          # guided-diffusion's class count (ADM-IP's CIFAR-10 code uses 10).
IMG_CHANNELS = 3            # guided-diffusion's UNetModel is built for RGB.

_COMMON = ('--num_res_blocks 3 --resblock_updown True --use_new_attention_order True --learn_sigma True '
           '--diffusion_steps 1000 --noise_schedule cosine --use_scale_shift_norm True')
_CIFAR = f'--image_size 32 --num_channels 128 --num_head_channels 32 --attention_resolutions 16,8 --dropout 0.3 {_COMMON}'
_LSUN = f'--image_size 64 --num_channels 192 --num_head_channels 64 --attention_resolutions 32,16,8 --dropout 0.1 --use_fp16 True {_COMMON}'
# The flags of every published checkpoint (docs/adm.md says where each is published).
PRESETS = {
    'cifar10-32': _CIFAR,                    # ADM-IP / ADM-ES / TS-DPM CIFAR-10, and the ADM baseline
    'imagenet-32': _CIFAR,                   # ADM-IP ImageNet 32x32 (unconditional)
    'lsun-tower-64': _LSUN,                  # ADM-IP / ADM-ES LSUN tower, and the ADM baseline
    'celeba-64': _LSUN,                      # ADM-IP CelebA 64x64
    'ffhq-128': _LSUN.replace('--image_size 64 --num_channels 192', '--image_size 128 --num_channels 256'),
    'imagenet-64': f'{_LSUN} --class_cond True',            # OpenAI 64x64_diffusion.pt
    'imagenet-128': ('--image_size 128 --num_channels 256 --num_heads 4 --num_res_blocks 2 --attention_resolutions 32,16,8 '
                     '--resblock_updown True --learn_sigma True --class_cond True --diffusion_steps 1000 '
                     '--noise_schedule linear --use_scale_shift_norm True --use_fp16 True'),  # OpenAI 128x128_diffusion.pt
}


class ADMError(ValueError):
    """Bad ADM flags or a checkpoint that does not fit them; the message is one line."""


def flag_type(default):
    """The argument type guided-diffusion derives from a default value."""
    return str2bool if isinstance(default, bool) else str if default is None else type(default)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ADMError(message)


def _flag_parser():
    parser = _Parser(add_help=False, allow_abbrev=False, prog='ADM flags')
    for name, default in {**MODEL_FLAGS, **DIFFUSION_FLAGS}.items():
        parser.add_argument(f'--{name}', default=default, type=flag_type(default))
    parser.add_argument('--num_classes', default=None, type=int)  # not a guided-diffusion flag: the class count
    for name in IGNORED_FLAGS:
        parser.add_argument(f'--{name}', default=None, type=str)
    return parser


def parse_adm_flags(args=(), preset=None):
    """guided-diffusion flags (a string or a list of tokens, e.g. "--image_size 32 --learn_sigma True")
    as a dict of every model and diffusion flag, defaults filled in; `preset` (a PRESETS name)
    supplies flags that `args` may override. Raises ADMError for unknown flags and bad values."""
    tokens = []
    if preset is not None:
        if preset not in PRESETS:
            raise ADMError(f'unknown ADM preset "{preset}"; expected one of {", ".join(PRESETS)}')
        tokens += shlex.split(PRESETS[preset])
    try:
        tokens += shlex.split(args) if isinstance(args, str) else list(args)
    except ValueError as err:
        raise ADMError(f'cannot split the ADM flags: {err}') from None
    parsed = vars(_flag_parser().parse_args(tokens))
    return make_flags(**{name: parsed[name] for name in [*MODEL_FLAGS, *DIFFUSION_FLAGS, 'num_classes']})


def make_flags(**values):
    """The flags dict from keyword values (already typed), defaults filled in and checked."""
    unknown = sorted(set(values) - {*MODEL_FLAGS, *DIFFUSION_FLAGS, 'num_classes'})
    if unknown:
        raise ADMError(f'unknown ADM flag --{unknown[0]}')
    flags = dnnlib.EasyDict({**MODEL_FLAGS, **DIFFUSION_FLAGS, 'num_classes': None, **values})
    check_flags(flags)
    return flags


def _int_list(text, name):
    try:
        values = [int(part) for part in str(text).split(',')]
    except ValueError:
        raise ADMError(f'--{name} must be comma-separated integers, got "{text}"') from None
    return values


def channel_mult(flags):
    """The channel multipliers: --channel_mult, or guided-diffusion's default for the image size."""
    if flags.channel_mult == '':
        if flags.image_size not in DEFAULT_CHANNEL_MULT:
            raise ADMError(f'no default --channel_mult for --image_size {flags.image_size} '
                           f'(guided-diffusion has one for {", ".join(map(str, sorted(DEFAULT_CHANNEL_MULT)))}); give --channel_mult')
        return DEFAULT_CHANNEL_MULT[flags.image_size]
    return tuple(_int_list(flags.channel_mult, 'channel_mult'))


def attention_resolutions(flags):
    """The resolutions with attention, as guided-diffusion finds them: a level of downsampling
    rate ds has attention when ds equals image_size // r for some listed r."""
    rates = {flags.image_size // r for r in _int_list(flags.attention_resolutions, 'attention_resolutions') if r > 0}
    return [flags.image_size >> level for level in range(len(channel_mult(flags))) if (1 << level) in rates]


def _heads(width, flags, up=False):
    if flags.num_head_channels != -1:
        return width // flags.num_head_channels
    return flags.num_heads_upsample if (up and flags.num_heads_upsample != -1) else flags.num_heads


# Bounds on a network built from flags, checked before anything is built (docs/safe-loading.md).
# The published ADM networks are far inside them: ImageNet 512x512 has 7 levels, 2 blocks, width 1024 at most, 559M parameters.
MAX_IMAGE_SIZE = 4096
MAX_LEVELS = 12               # --channel_mult entries
MAX_RES_BLOCKS = 64           # --num_res_blocks
MAX_WIDTH = 16384             # --num_channels times the largest multiplier
MAX_CLASSES = 1 << 20         # --num_classes
MAX_PARAMS = 4_000_000_000    # estimated parameters (16 GB in float32)


def estimate_parameters(flags):
    """An upper estimate of the parameter count of the flags' network, from the flags alone (no
    module is built): 3x3 convolutions and embedding projections of every residual block,
    attention projections, the time and class embeddings. Exact to within a few percent."""
    mult = channel_mult(flags)
    base = flags.num_channels
    emb = 4 * base
    widths = [int(m * base) for m in mult]
    attention = set(attention_resolutions(flags))
    emb_out = 2 if flags.use_scale_shift_norm else 1

    def resblock(cin, cout):
        return 9 * cin * cout + 9 * cout * cout + emb * cout * emb_out + (cin * cout if cin != cout else 0) + 6 * cout

    def attn(width):
        return 4 * width * width + 6 * width

    total = emb * base + emb * emb + 9 * IMG_CHANNELS * base + 9 * base * IMG_CHANNELS * (2 if flags.learn_sigma else 1)
    if flags.class_cond:
        total += (flags.num_classes or NUM_CLASSES) * emb
    skips, cin = [base], base
    for level, width in enumerate(widths):
        for _ in range(flags.num_res_blocks):
            total += resblock(cin, width) + (attn(width) if (flags.image_size >> level) in attention else 0)
            cin = width
            skips.append(cin)
        if level < len(widths) - 1:
            total += resblock(cin, cin) if flags.resblock_updown else 9 * cin * cin
            skips.append(cin)
    total += 2 * resblock(cin, cin) + attn(cin)
    for level, width in reversed(list(enumerate(widths))):
        for _ in range(flags.num_res_blocks + 1):
            total += resblock(cin + skips.pop(), width) + (attn(width) if (flags.image_size >> level) in attention else 0)
            cin = width
        if level > 0:
            total += resblock(cin, cin) if flags.resblock_updown else 9 * cin * cin
    return total


def _check_bounds(flags):
    """Refuse flags whose network would be absurdly large before any of it is built."""
    mult = channel_mult(flags)
    limits = [('image_size', flags.image_size, MAX_IMAGE_SIZE), ('channel_mult entries', len(mult), MAX_LEVELS),
              ('num_res_blocks', flags.num_res_blocks, MAX_RES_BLOCKS),
              ('num_channels x channel_mult', max(int(m * flags.num_channels) for m in mult) if mult else 0, MAX_WIDTH),
              ('num_classes', flags.num_classes or 0, MAX_CLASSES)]
    for name, value, limit in limits:
        if value > limit:
            raise ADMError(f'--{name} {value} is above the limit of {limit} (networks/adm.py; docs/safe-loading.md)')
    params = estimate_parameters(flags)
    if params > MAX_PARAMS:
        raise ADMError(f'the flags describe a network of about {params:,} parameters, above the limit of {MAX_PARAMS:,} '
                       '(networks/adm.py MAX_PARAMS; docs/safe-loading.md)')


def check_flags(flags):
    """Raise ADMError (one line) for values guided-diffusion would refuse or could not run, or
    that describe a network above the documented bounds."""
    if flags.noise_schedule not in networks.ADM_NOISE_SCHEDULES:
        raise ADMError(f'--noise_schedule must be linear or cosine, got "{flags.noise_schedule}"')
    if flags.predict_xstart:
        raise ADMError('--predict_xstart True is not supported (no published checkpoint predicts x_0)')
    for name in ('image_size', 'num_channels', 'diffusion_steps'):
        if flags[name] < 1:
            raise ADMError(f'--{name} must be positive, got {flags[name]}')
    if flags.diffusion_steps > networks.ADM_MAX_STEPS:
        raise ADMError(f'--diffusion_steps {flags.diffusion_steps} is above the supported {networks.ADM_MAX_STEPS}')
    if flags.num_res_blocks < 0:
        raise ADMError(f'--num_res_blocks must not be negative, got {flags.num_res_blocks}')
    if not 0 <= flags.dropout < 1:
        raise ADMError(f'--dropout must be in [0, 1), got {flags.dropout}')
    if flags.num_classes is not None and flags.num_classes < 1:
        raise ADMError(f'--num_classes must be positive, got {flags.num_classes}')
    mult = channel_mult(flags)
    if not mult or min(mult) <= 0:
        raise ADMError(f'--channel_mult must be positive integers, got "{flags.channel_mult}"')
    if flags.image_size % (1 << (len(mult) - 1)):
        raise ADMError(f'--image_size {flags.image_size} cannot be halved {len(mult) - 1} times '
                       f'(one level per --channel_mult entry)')
    widths = [int(m * flags.num_channels) for m in mult]
    for width in widths:
        if width < 32 or width % 32:
            raise ADMError(f'a level would have {width} channels (--num_channels {flags.num_channels} times '
                           f'--channel_mult); ADM\'s GroupNorm needs a multiple of 32')
    if flags.num_head_channels == -1:
        for name in ('num_heads', 'num_heads_upsample'):
            if flags[name] < 1 and not (name == 'num_heads_upsample' and flags[name] == -1):
                raise ADMError(f'--{name} must be positive{" or -1" if name != "num_heads" else ""}, got {flags[name]}')
    elif flags.num_head_channels < 1:
        raise ADMError(f'--num_head_channels must be positive or -1, got {flags.num_head_channels}')
    # (channels, decoder?) of every attention block: encoder and decoder levels, and the middle.
    attention = attention_resolutions(flags)
    blocks = {(widths[-1], False)} | {(widths[level], up) for level in range(len(mult)) for up in (False, True)
                                      if (flags.image_size >> level) in attention}
    for width, up in sorted(blocks):
        heads = _heads(width, flags, up)
        if flags.num_head_channels != -1 and width % flags.num_head_channels:
            raise ADMError(f'attention over {width} channels cannot have --num_head_channels {flags.num_head_channels}')
        if width % heads:
            name = '--num_heads_upsample' if up and flags.num_heads_upsample != -1 else '--num_heads'
            raise ADMError(f'attention over {width} channels cannot be split into {heads} heads ({name})')
    _check_bounds(flags)


def network_kwargs(flags, num_classes=None):
    """ADMPrecond constructor arguments for the flags; `num_classes` overrides the class count."""
    check_flags(flags)
    if num_classes is None:
        num_classes = flags.num_classes if flags.num_classes is not None else NUM_CLASSES
    heads = (dict(channels_per_head=flags.num_head_channels) if flags.num_head_channels != -1 else
             dict(num_heads=flags.num_heads,
                  num_heads_up=flags.num_heads_upsample if flags.num_heads_upsample != -1 else flags.num_heads))
    return dict(img_resolution=flags.image_size, img_channels=IMG_CHANNELS,
                label_dim=num_classes if flags.class_cond else 0,
                use_fp16=False,  # sampling runs in float32 (the fp16 casts are guided-diffusion's speed-up)
                diffusion_steps=flags.diffusion_steps, noise_schedule=flags.noise_schedule,
                learn_sigma=flags.learn_sigma, rescale_timesteps=flags.rescale_timesteps,
                model_type='DhariwalUNet', model_channels=flags.num_channels, channel_mult=list(channel_mult(flags)),
                channel_mult_emb=4, num_blocks=flags.num_res_blocks, attn_resolutions=attention_resolutions(flags),
                dropout=flags.dropout, **heads, min_channels_per_group=1,
                adaptive_scale=flags.use_scale_shift_norm, resample_blocks=flags.resblock_updown, exp_embedding=True)


def build_network(flags, num_classes=None):
    """A new ADMPrecond (random weights, eval mode) with the architecture of the flags."""
    return networks.ADMPrecond(**network_kwargs(flags, num_classes)).eval()

#----------------------------------------------------------------------------
# State dict mapping: which tensor of guided-diffusion's UNetModel goes where.


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One tensor of the checkpoint: its ADM name, our name, and how it is laid out."""
    adm: str                # Name in guided-diffusion's state dict.
    ours: str               # Name in ADMPrecond's state dict.
    kind: str = 'same'      # 'same', 'conv1d' (trailing 1 added), 'transpose', 'qkv' (rows reordered too).
    heads: int = 0          # Attention heads (kind 'qkv').


_RESBLOCK = (('norm0', 'in_layers.0'), ('conv0', 'in_layers.2'), ('affine', 'emb_layers.1'),
             ('norm1', 'out_layers.0'), ('conv1', 'out_layers.3'), ('skip', 'skip_connection'))


def _block_tensors(block, ours, adm, attention_adm):
    """The tensors of one UNetBlock: ADM's ResBlock at `adm`, its AttentionBlock at `attention_adm`."""
    names = set(dict(block.named_parameters()))
    for mine, theirs in _RESBLOCK:
        for p in ('weight', 'bias'):
            if f'{mine}.{p}' in names:
                yield Tensor(f'{adm}.{theirs}.{p}', f'{ours}.{mine}.{p}')
    if block.num_heads:
        for p in ('weight', 'bias'):
            yield Tensor(f'{attention_adm}.norm.{p}', f'{ours}.norm2.{p}')
            yield Tensor(f'{attention_adm}.qkv.{p}', f'{ours}.qkv.{p}', 'qkv', block.num_heads)
            yield Tensor(f'{attention_adm}.proj_out.{p}', f'{ours}.proj.{p}', 'conv1d')


def _conv_tensors(ours, adm):
    for p in ('weight', 'bias'):
        yield Tensor(f'{adm}.{p}', f'{ours}.{p}')


def tensor_map(net):
    """Every tensor of an ADMPrecond as [Tensor], in guided-diffusion's UNetModel layout.

    Encoder entries are input_blocks[k] in order; the middle block is the decoder's in0 (a
    ResBlock and an AttentionBlock) and in1; each decoder block is output_blocks[j], and an
    upsampling entry is the last layer of the previous output block.
    """
    unet = net.model
    out = [*_conv_tensors('model.map_layer0', 'time_embed.0'), *_conv_tensors('model.map_layer1', 'time_embed.2')]
    if unet.map_label is not None:
        out.append(Tensor('label_emb.weight', 'model.map_label.weight', 'transpose'))
    for k, (key, layer) in enumerate(unet.enc.items()):
        ours = f'model.enc.{key}'
        if isinstance(layer, networks.UNetBlock):
            out += _block_tensors(layer, ours, f'input_blocks.{k}.0', f'input_blocks.{k}.1')
        else:
            out += _conv_tensors(ours, f'input_blocks.{k}.0' + ('.op' if key.endswith('_down') else ''))
    j = -1
    last_layers = 0
    for key, layer in unet.dec.items():
        ours = f'model.dec.{key}'
        if key.endswith('_in0'):
            out += _block_tensors(layer, ours, 'middle_block.0', 'middle_block.1')
        elif key.endswith('_in1'):
            out += _block_tensors(layer, ours, 'middle_block.2', None)
        elif key.endswith('_up'):
            adm = f'output_blocks.{j}.{last_layers}'
            if isinstance(layer, networks.UNetBlock):
                out += _block_tensors(layer, ours, adm, None)
            else:
                out += _conv_tensors(ours, f'{adm}.conv')
        else:
            j += 1
            last_layers = 2 if layer.num_heads else 1
            out += _block_tensors(layer, ours, f'output_blocks.{j}.0', f'output_blocks.{j}.1')
    out += [*_conv_tensors('model.out_norm', 'out.0'), *_conv_tensors('model.out_conv', 'out.2')]
    return out


def _qkv_rows(width, heads, new_order):
    """For each row of our qkv layout [head, channel, (q, k, v)], the row of ADM's: legacy
    [head, (q, k, v), channel] or new [(q, k, v), head, channel]."""
    ch = width // heads
    h, c, s = torch.meshgrid(torch.arange(heads), torch.arange(ch), torch.arange(3), indexing='ij')
    rows = s * width + h * ch + c if new_order else h * 3 * ch + s * ch + c
    return rows.flatten()


def adm_shape(spec, shape):
    """The shape guided-diffusion stores for our tensor of `shape`."""
    if spec.kind == 'transpose':
        return torch.Size([shape[1], shape[0]])
    if spec.kind in ('conv1d', 'qkv') and len(shape) == 4:
        return torch.Size(shape[:3])
    return torch.Size(shape)


def to_ours(spec, tensor, new_order):
    """An ADM tensor in our layout."""
    if spec.kind == 'transpose':
        return tensor.t().contiguous()
    if spec.kind in ('conv1d', 'qkv') and tensor.ndim == 3:
        tensor = tensor[..., None]
    if spec.kind == 'qkv':
        tensor = tensor[_qkv_rows(tensor.shape[0] // 3, spec.heads, new_order)]
    return tensor.contiguous()


def to_adm(spec, tensor, new_order):
    """Our tensor in guided-diffusion's layout (the inverse of to_ours)."""
    if spec.kind == 'transpose':
        return tensor.t().contiguous()
    if spec.kind == 'qkv':
        rows = _qkv_rows(tensor.shape[0] // 3, spec.heads, new_order)
        inverse = torch.empty_like(rows)
        inverse[rows] = torch.arange(len(rows))
        tensor = tensor[inverse]
    if spec.kind in ('conv1d', 'qkv') and tensor.ndim == 4:
        tensor = tensor[..., 0]
    return tensor.contiguous()


def _examples(names, limit=3):
    names = sorted(names)
    more = f' and {len(names) - limit} more' if len(names) > limit else ''
    return ', '.join(names[:limit]) + more


def check_state_dict(net, state, source='checkpoint', specs=None):
    """{ADM name: Tensor spec} after checking that `state` holds exactly the tensors `net`
    (built from the flags, on any device, 'meta' included) needs, in the right shapes;
    ADMError naming what is missing, left over or of the wrong shape otherwise. `specs`
    (default: tensor_map(net)) says where each tensor goes, for networks other than ADMPrecond."""
    ours = net.state_dict()
    wanted = {spec.adm: spec for spec in (tensor_map(net) if specs is None else specs)}
    missing = [name for name in wanted if name not in state]
    extra = [name for name in state if name not in wanted]
    hint = ' (do the flags match the checkpoint?)'
    if missing:
        raise ADMError(f'{source} lacks {len(missing)} tensor(s) the flags need: {_examples(missing)}{hint}')
    if extra:
        raise ADMError(f'{source} has {len(extra)} tensor(s) the flags do not use: {_examples(extra)}{hint}')
    for name, spec in wanted.items():
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise ADMError(f'{source}: {name} is not a floating-point tensor')
        expected = adm_shape(spec, ours[spec.ours].shape)
        if tensor.shape != expected:
            raise ADMError(f'{source}: {name} has shape {list(tensor.shape)}, the flags give {list(expected)}{hint}')
    return wanted


def load_state_dict(net, state, flags, source='checkpoint'):
    """Move every tensor of a guided-diffusion state dict into `net` (built from the same flags);
    ADMError as check_state_dict() for a state dict that does not fit."""
    wanted = check_state_dict(net, state, source)
    converted = {spec.ours: to_ours(spec, state[name].detach().to(torch.float32), flags.use_new_attention_order)
                 for name, spec in wanted.items()}
    net.load_state_dict({**net.state_dict(), **converted}, strict=True)  # the resampling filters are not in the checkpoint
    return net


def adm_state_dict(net, flags):
    """guided-diffusion's state dict of `net` (float32): the inverse of load_state_dict()."""
    ours = net.state_dict()
    return {spec.adm: to_adm(spec, ours[spec.ours], flags.use_new_attention_order) for spec in tensor_map(net)}

#----------------------------------------------------------------------------
# Checkpoints.


ESTIMATE_REFUSAL_PARAMS = 20_000_000  # below this, a mismatch is named tensor by tensor (meta device)


def num_classes_of(state, flags):
    """The class count of a class-conditional checkpoint (rows of label_emb.weight), else None."""
    weight = state.get('label_emb.weight')
    if flags.class_cond and isinstance(weight, torch.Tensor) and weight.ndim == 2:
        if flags.num_classes is not None and flags.num_classes != weight.shape[0]:
            raise ADMError(f'--num_classes {flags.num_classes} given, but the checkpoint has {weight.shape[0]} classes')
        return int(weight.shape[0])
    return None


def load_adm_checkpoint(path_or_url, flags):
    """An ADMPrecond (eval mode, CPU) holding the weights of a guided-diffusion checkpoint.

    The flags' network is first built on the meta device and checked against the file, so
    flags asking for more weights than the file holds cost no memory and fail at once."""
    try:
        state = read_state_dict(path_or_url)
    except CheckpointError as err:
        raise ADMError(str(err)) from None
    if all(name.startswith('module.') for name in state):  # saved from a DDP wrapper
        state = {name[len('module.'):] if name.startswith('module.') else name: t for name, t in state.items()}
    source = os.path.basename(str(path_or_url)) or str(path_or_url)
    num_classes = num_classes_of(state, flags)
    check_flags(flags)
    stored = sum(t.numel() for t in state.values())
    estimate = estimate_parameters(flags if num_classes is None else dnnlib.EasyDict(flags, num_classes=num_classes))
    # A network far larger than the file is refused from the estimate, without building its modules;
    # a smaller one goes to the meta-device check, which names the first tensor that does not fit.
    if estimate > 2 * stored + 1_000_000 and estimate > ESTIMATE_REFUSAL_PARAMS:
        raise ADMError(f'{source}: the flags describe about {estimate:,} parameters, the checkpoint holds {stored:,} '
                       '(do the flags match the checkpoint?)')
    with torch.device('meta'):
        check_state_dict(build_network(flags, num_classes), state, source)
    return load_state_dict(build_network(flags, num_classes), state, flags, source=source)
