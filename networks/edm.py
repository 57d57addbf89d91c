"""Denoiser networks of EDM: Karras et al., "Elucidating the Design Space of Diffusion-Based
Generative Models" (NeurIPS 2022), called "the EDM paper" below.

Two U-Nets (SongUNet: DDPM++ / NCSN++; DhariwalUNet: ADM) and the four preconditioners of
the paper's Table 1 (VP, VE, iDDPM, EDM). Class names, constructor arguments, parameter and
buffer names, initialisation and forward arithmetic agree with NVIDIA's EDM release, so an
EDM state_dict loads here with strict key matching and gives the same outputs, and the same
torch seed gives the same initial weights.

A fifth preconditioner, ADMPrecond, makes the discrete-time models of OpenAI's
guided-diffusion (ADM) and its forks EDM denoisers (networks/adm.py converts their checkpoints).

Pickles of these classes store this file's source, and EDM's own code base must be able to
run it: import nothing here but the standard library's math, torch, numpy and
torch_utils.persistence.
"""

import math

import numpy as np
import torch
from torch.nn.functional import silu
from torch_utils import persistence

#----------------------------------------------------------------------------
# Initialisation.


def weight_init(shape, mode, fan_in, fan_out):
    """Return a float32 tensor of `shape` drawn from the scheme `mode`.

    `mode` is '<xavier|kaiming>_<uniform|normal>'. Xavier targets variance 2/(fan_in+fan_out),
    Kaiming (gain 1) variance 1/fan_in; a uniform U(-a, a) has variance a^2/3.
    """
    family, _, law = mode.partition('_')
    if family not in ('xavier', 'kaiming') or law not in ('uniform', 'normal'):
        raise ValueError(f'Invalid init mode "{mode}"')
    fan = fan_in + fan_out if family == 'xavier' else fan_in
    numerator = (2 if family == 'xavier' else 1) * (3 if law == 'uniform' else 1)
    unit = torch.rand(*shape) * 2 - 1 if law == 'uniform' else torch.randn(*shape)
    return unit * np.sqrt(numerator / fan)


def _new_param(shape, gain, mode, fan_in, fan_out):
    # Drawn even when gain == 0: the random stream then stays aligned with EDM's.
    return torch.nn.Parameter(weight_init(shape, mode, fan_in, fan_out) * gain)


def _as_dtype(tensor, dtype):
    return None if tensor is None else tensor.to(dtype)

#----------------------------------------------------------------------------
# Layers. Parameters stay float32; they are cast to the activations' dtype when used,
# which is float16 when a preconditioner runs its model in half precision.


@persistence.persistent_class
class Linear(torch.nn.Module):
    """y = x W^T + b."""

    def __init__(self, in_features, out_features, bias=True, init_mode='kaiming_normal', init_weight=1, init_bias=0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = _new_param([out_features, in_features], init_weight, **fans)
        self.bias = _new_param([out_features], init_bias, **fans) if bias else None

    def forward(self, x):
        y = x @ self.weight.to(x.dtype).t()
        return y if self.bias is None else y.add_(self.bias.to(x.dtype))


def _fir_upsample(x, fir, channels, padding):
    # Depthwise transposed convolution with stride 2. Zero insertion leaves a quarter of
    # the samples non-zero, hence the gain of 4 on a filter that sums to one.
    kernel = fir.mul(4).tile([channels, 1, 1, 1])
    return torch.nn.functional.conv_transpose2d(x, kernel, groups=channels, stride=2, padding=padding)


def _fir_downsample(x, fir, channels, padding):
    kernel = fir.tile([channels, 1, 1, 1])
    return torch.nn.functional.conv2d(x, kernel, groups=channels, stride=2, padding=padding)


@persistence.persistent_class
class Conv2d(torch.nn.Module):
    """Square 'same' convolution, optionally preceded by 2x FIR up- or downsampling.

    kernel=0 gives a weightless resampling layer. resample_filter holds the 1-D taps of a
    separable filter, normalised to unit DC gain. With fused_resample the resampling is
    merged with the convolution's padding (upsample first, or convolve at full resolution
    and then decimate), as NCSN++ does. stride=2 gives a strided convolution instead of
    FIR decimation (ADM's Downsample).
    """

    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False,
                 resample_filter=[1, 1], fused_resample=False, init_mode='kaiming_normal', init_weight=1, init_bias=0,
                 stride=1):
        assert not (up and down)
        assert stride == 1 or (kernel and not (up or down))
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        self.stride = stride
        taps = kernel * kernel
        fans = dict(mode=init_mode, fan_in=in_channels * taps, fan_out=out_channels * taps)
        self.weight = _new_param([out_channels, in_channels, kernel, kernel], init_weight, **fans) if kernel else None
        self.bias = _new_param([out_channels], init_bias, **fans) if (kernel and bias) else None
        fir_1d = torch.as_tensor(resample_filter, dtype=torch.float32)
        fir_2d = torch.outer(fir_1d, fir_1d) / fir_1d.sum().square()
        self.register_buffer('resample_filter', fir_2d[None, None] if (up or down) else None)

    def forward(self, x):
        w = _as_dtype(self.weight, x.dtype)
        b = _as_dtype(self.bias, x.dtype)
        fir = _as_dtype(self.resample_filter, x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if fir is None else (fir.shape[-1] - 1) // 2
        conv = torch.nn.functional.conv2d

        if w is not None and self.fused_resample and self.up:
            x = _fir_upsample(x, fir, self.in_channels, padding=max(f_pad - w_pad, 0))
            x = conv(x, w, padding=max(w_pad - f_pad, 0))
        elif w is not None and self.fused_resample and self.down:
            x = conv(x, w, padding=w_pad + f_pad)
            x = _fir_downsample(x, fir, self.out_channels, padding=0)
        else:
            if self.up:
                x = _fir_upsample(x, fir, self.in_channels, padding=f_pad)
            elif self.down:
                x = _fir_downsample(x, fir, self.in_channels, padding=f_pad)
            if w is not None:
                x = conv(x, w, padding=w_pad) if self.stride == 1 else conv(x, w, padding=w_pad, stride=self.stride)
        return x if b is None else x.add_(b.reshape(1, -1, 1, 1))


@persistence.persistent_class
class GroupNorm(torch.nn.Module):
    """Group normalisation that never puts fewer than `min_channels_per_group` channels in a group."""

    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        gamma, beta = self.weight.to(x.dtype), self.bias.to(x.dtype)
        return torch.nn.functional.group_norm(x, num_groups=self.num_groups, weight=gamma, bias=beta, eps=self.eps)


def _attention_logits(q, k):
    """float32 logits [N, Q, K] = q^T k / sqrt(C) for q [N, C, Q], k [N, C, K]."""
    k = k / np.sqrt(k.shape[1])
    return torch.einsum('ncq,nck->nqk', q.to(torch.float32), k.to(torch.float32))


class AttentionOp(torch.autograd.Function):
    """Attention weights softmax(q^T k / sqrt(C)) over keys, for q [N, C, Q] and k [N, C, K].

    Computed in float32 whatever the input dtype, but only the inputs and the result (in the
    inputs' dtype) are kept for the backward pass, which keeps fp16 training memory low.
    """

    @staticmethod
    def forward(ctx, q, k):
        w = _attention_logits(q, k).softmax(dim=2).to(q.dtype)
        ctx.save_for_backward(q, k, w)
        return w

    @staticmethod
    def backward(ctx, dw):
        q, k, w = ctx.saved_tensors
        w32, dw32 = w.to(torch.float32), dw.to(torch.float32)
        # Softmax Jacobian applied to dw: d(logits) = w * (dw - sum_k w dw).
        dlogits = w32 * (dw32 - (w32 * dw32).sum(dim=2, keepdim=True))
        root_c = np.sqrt(k.shape[1])
        dq = torch.einsum('nck,nqk->ncq', k.to(torch.float32), dlogits).to(q.dtype) / root_c
        dk = torch.einsum('ncq,nqk->nck', q.to(torch.float32), dlogits).to(k.dtype) / root_c
        return dq, dk

#----------------------------------------------------------------------------
# The residual block of both U-Nets.


@persistence.persistent_class
class UNetBlock(torch.nn.Module):
    """Pre-activation residual block, conditioned on an embedding, with optional 2x
    resampling and multi-head self-attention after the residual sum.

    adaptive_scale=True (ADM) maps the embedding to a per-channel scale and shift of the
    second normalisation; False (DDPM++/NCSN++) adds it as a bias before that normalisation.
    """

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 num_heads=None, channels_per_head=64, dropout=0, skip_scale=1, eps=1e-5,
                 resample_filter=[1, 1], resample_proj=False, adaptive_scale=True,
                 init=dict(), init_zero=dict(init_weight=0), init_attn=None, min_channels_per_group=4):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if attention:
            self.num_heads = out_channels // channels_per_head if num_heads is None else num_heads
        else:
            self.num_heads = 0
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        # Creation order fixes the order of random draws; keep it.
        resampling = dict(up=up, down=down, resample_filter=resample_filter)
        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps, min_channels_per_group=min_channels_per_group)
        self.conv0 = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=3, **resampling, **init)
        affine_out = out_channels * 2 if adaptive_scale else out_channels
        self.affine = Linear(in_features=emb_channels, out_features=affine_out, **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps, min_channels_per_group=min_channels_per_group)
        self.conv1 = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=3, **init_zero)

        # Shortcut: identity when shapes agree; otherwise resampling, with a 1x1 projection
        # when the channel count changes or resample_proj asks for one.
        self.skip = None
        if in_channels != out_channels or up or down:
            proj = resample_proj or in_channels != out_channels
            self.skip = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=1 if proj else 0,
                               **resampling, **init)

        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps, min_channels_per_group=min_channels_per_group)
            qkv_init = init if init_attn is None else init_attn
            self.qkv = Conv2d(in_channels=out_channels, out_channels=out_channels * 3, kernel=1, **qkv_init)
            self.proj = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=1, **init_zero)

    def _condition(self, h, emb):
        params = self.affine(emb)[:, :, None, None].to(h.dtype)
        if not self.adaptive_scale:
            return silu(self.norm1(h.add_(params)))
        scale, shift = params.chunk(chunks=2, dim=1)
        return silu(torch.addcmul(shift, self.norm1(h), scale + 1))

    def _attend(self, x):
        n, c, height, width = x.shape
        heads = self.num_heads
        # qkv channels are laid out as [head, channel, (q, k, v)].
        qkv = self.qkv(self.norm2(x)).reshape(n * heads, c // heads, 3, height * width)
        q, k, v = qkv.unbind(2)
        weights = AttentionOp.apply(q, k)  # [N*heads, query position, key position]
        mixed = torch.einsum('nqk,nck->ncq', weights, v).reshape(n, c, height, width)
        return self.proj(mixed).add_(x) * self.skip_scale

    def forward(self, x, emb):
        h = self.conv0(silu(self.norm0(x)))
        h = self._condition(h, emb)
        h = self.conv1(torch.nn.functional.dropout(h, p=self.dropout, training=self.training))
        h = h.add_(x if self.skip is None else self.skip(x)) * self.skip_scale
        return self._attend(h) if self.num_heads else h

#----------------------------------------------------------------------------
# Noise-level embeddings.


@persistence.persistent_class
class PositionalEmbedding(torch.nn.Module):
    """Sinusoidal embedding [cos(x f_i), sin(x f_i)] with f_i = max_positions^(-i/D), i < num_channels/2.

    D is num_channels/2, or num_channels/2 - 1 with endpoint=True (the last frequency is then
    exactly 1/max_positions). exp_form=True computes f_i as exp(-ln(max_positions) i/D), the
    same number rounded as ADM (guided-diffusion's `timestep_embedding`) rounds it.
    """

    def __init__(self, num_channels, max_positions=10000, endpoint=False, exp_form=False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint
        self.exp_form = exp_form

    def forward(self, x):
        half = self.num_channels // 2
        exponent = torch.arange(start=0, end=half, dtype=torch.float32, device=x.device)
        if self.exp_form:
            freqs = torch.exp(-float(np.log(self.max_positions)) * exponent / half)
        else:
            exponent = exponent / (half - 1 if self.endpoint else half)
            freqs = (1 / self.max_positions) ** exponent
        phase = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([phase.cos(), phase.sin()], dim=1)


@persistence.persistent_class
class FourierEmbedding(torch.nn.Module):
    """Random Fourier features [cos(2 pi x f_i), sin(2 pi x f_i)], f_i ~ N(0, scale^2), fixed."""

    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer('freqs', torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        phase = torch.outer(x, (2 * np.pi * self.freqs).to(x.dtype))
        return torch.cat([phase.cos(), phase.sin()], dim=1)

#----------------------------------------------------------------------------
# U-Nets. Encoder and decoder are ModuleDicts keyed '<res>x<res>_<role>'; the role tells
# the forward pass what each entry does, and the keys are the state_dict names of EDM.


def _role(key):
    return key.split('_', 1)[1]


def _dropped_labels(net, labels, batch):
    """Labels with whole rows zeroed at rate net.label_dropout while training (for guidance)."""
    if not (net.training and net.label_dropout):
        return labels
    keep = torch.rand([batch, 1], device=labels.device) >= net.label_dropout
    return labels * keep.to(labels.dtype)


def _song_mapping_order(emb):
    # DDPM++ orders its positional features [sin, cos]: swap the two halves.
    return emb.roll(shifts=emb.shape[1] // 2, dims=1)


@persistence.persistent_class
class SongUNet(torch.nn.Module):
    """DDPM++ and NCSN++ of Song et al., "Score-Based Generative Modeling through SDEs" (ICLR 2021).

    DDPM++: embedding_type='positional', channel_mult_noise=1, encoder_type='standard',
    resample_filter=[1,1]. NCSN++: 'fourier', 2, 'residual', [1,3,3,1]. Both use
    decoder_type='standard' in the EDM paper.
    """

    def __init__(self,
                 img_resolution,                 # Resolution of input and output images.
                 in_channels,                    # Image channels in.
                 out_channels,                   # Image channels out.
                 label_dim=0,                    # Class label size; 0 = unconditional.
                 augment_dim=0,                  # Augmentation label size; 0 = none.
                 model_channels=128,             # Channels at the first resolution, before channel_mult.
                 channel_mult=[1, 2, 2, 2],      # Channel multiplier of each resolution.
                 channel_mult_emb=4,             # Embedding width in units of model_channels.
                 num_blocks=4,                   # Residual blocks per resolution in the encoder.
                 attn_resolutions=[16],          # Resolutions with self-attention.
                 dropout=0.10,                   # Dropout rate inside the residual blocks.
                 label_dropout=0,                # Rate of dropped class labels while training.
                 embedding_type='positional',    # Noise embedding: 'positional' or 'fourier'.
                 channel_mult_noise=1,           # Noise embedding width in units of model_channels.
                 encoder_type='standard',        # 'standard', 'skip' or 'residual' (extra image path).
                 decoder_type='standard',        # 'standard' or 'skip' (outputs summed over resolutions).
                 resample_filter=[1, 1],         # 1-D taps of the resampling filter.
                 ):
        assert embedding_type in ('fourier', 'positional')
        assert encoder_type in ('standard', 'skip', 'residual')
        assert decoder_type in ('standard', 'skip')
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode='xavier_uniform')
        init_zero = dict(init_mode='xavier_uniform', init_weight=1e-5)
        init_attn = dict(init_mode='xavier_uniform', init_weight=np.sqrt(0.2))
        block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=np.sqrt(0.5),
                            eps=1e-6, resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                            init=init, init_zero=init_zero, init_attn=init_attn)
        block = lambda cin, cout, **kw: UNetBlock(in_channels=cin, out_channels=cout, **kw, **block_kwargs)

        # Mapping: noise level, class label and augmentation label -> embedding.
        if embedding_type == 'positional':
            self.map_noise = PositionalEmbedding(num_channels=noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(num_channels=noise_channels)
        self.map_label = Linear(in_features=label_dim, out_features=noise_channels, **init) if label_dim else None
        self.map_augment = None
        if augment_dim:
            self.map_augment = Linear(in_features=augment_dim, out_features=noise_channels, bias=False, **init)
        self.map_layer0 = Linear(in_features=noise_channels, out_features=emb_channels, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)

        # Encoder. `width` follows the main path, `aux_width` the extra image path.
        self.enc = torch.nn.ModuleDict()
        width = aux_width = in_channels
        for level, mult in enumerate(channel_mult):
            tag = f'{img_resolution >> level}x{img_resolution >> level}'
            if level == 0:
                self.enc[f'{tag}_conv'] = Conv2d(in_channels=width, out_channels=model_channels, kernel=3, **init)
                width = model_channels
            else:
                self.enc[f'{tag}_down'] = block(width, width, down=True)
                if encoder_type == 'skip':
                    self.enc[f'{tag}_aux_down'] = Conv2d(in_channels=aux_width, out_channels=aux_width, kernel=0,
                                                         down=True, resample_filter=resample_filter)
                    self.enc[f'{tag}_aux_skip'] = Conv2d(in_channels=aux_width, out_channels=width, kernel=1, **init)
                elif encoder_type == 'residual':
                    self.enc[f'{tag}_aux_residual'] = Conv2d(in_channels=aux_width, out_channels=width, kernel=3,
                                                             down=True, resample_filter=resample_filter,
                                                             fused_resample=True, **init)
                    aux_width = width
            for idx in range(num_blocks):
                attention = (img_resolution >> level) in attn_resolutions
                self.enc[f'{tag}_block{idx}'] = block(width, model_channels * mult, attention=attention)
                width = model_channels * mult
        skip_widths = [m.out_channels for key, m in self.enc.items() if not _role(key).startswith('aux')]

        # Decoder; attention only in the last block of a resolution. Output heads ('aux_norm',
        # 'aux_conv') at the top resolution, or at every resolution for decoder_type='skip'.
        self.dec = torch.nn.ModuleDict()
        for level in reversed(range(len(channel_mult))):
            res = img_resolution >> level
            tag = f'{res}x{res}'
            if level == len(channel_mult) - 1:
                self.dec[f'{tag}_in0'] = block(width, width, attention=True)
                self.dec[f'{tag}_in1'] = block(width, width)
            else:
                self.dec[f'{tag}_up'] = block(width, width, up=True)
            for idx in range(num_blocks + 1):
                attention = idx == num_blocks and res in attn_resolutions
                self.dec[f'{tag}_block{idx}'] = block(width + skip_widths.pop(), model_channels * channel_mult[level],
                                                      attention=attention)
                width = model_channels * channel_mult[level]
            if decoder_type == 'skip' or level == 0:
                if decoder_type == 'skip' and level < len(channel_mult) - 1:
                    self.dec[f'{tag}_aux_up'] = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=0,
                                                       up=True, resample_filter=resample_filter)
                self.dec[f'{tag}_aux_norm'] = GroupNorm(num_channels=width, eps=1e-6)
                self.dec[f'{tag}_aux_conv'] = Conv2d(in_channels=width, out_channels=out_channels, kernel=3, **init_zero)

    def _embed(self, noise_labels, class_labels, augment_labels, batch):
        emb = _song_mapping_order(self.map_noise(noise_labels))
        if self.map_label is not None:
            labels = _dropped_labels(self, class_labels, batch)
            emb = emb + self.map_label(labels * np.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        return silu(self.map_layer1(silu(self.map_layer0(emb))))

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self._embed(noise_labels, class_labels, augment_labels, x.shape[0])

        skips = []
        image = x  # the extra input path of the 'skip' and 'residual' encoders
        for key, layer in self.enc.items():
            role = _role(key)
            if role == 'aux_down':
                image = layer(image)
            elif role == 'aux_skip':
                x = skips[-1] = x + layer(image)
            elif role == 'aux_residual':
                x = skips[-1] = image = (x + layer(image)) / np.sqrt(2)
            else:
                x = layer(x) if role == 'conv' else layer(x, emb)
                skips.append(x)

        out = None
        head = None
        for key, layer in self.dec.items():
            role = _role(key)
            if role == 'aux_up':
                out = layer(out)
            elif role == 'aux_norm':
                head = layer(x)
            elif role == 'aux_conv':
                head = layer(silu(head))
                out = head if out is None else head + out
            else:
                if role.startswith('block'):
                    x = torch.cat([x, skips.pop()], dim=1)
                x = layer(x, emb)
        return out


@persistence.persistent_class
class DhariwalUNet(torch.nn.Module):
    """ADM of Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis" (NeurIPS 2021).

    The defaults are EDM's variant: attention blocks get out_channels // 64 heads (a
    resolution with fewer than 64 channels gets no attention) and GroupNorm uses
    min(32, C // 4) groups. The keyword arguments after `label_dropout` hold every
    architecture of guided-diffusion's `UNetModel` (networks/adm.py maps its flags): a fixed
    number of heads, other channels per head, always 32 groups, the embedding as a bias,
    strided-convolution resampling, and the timestep embedding rounded as ADM rounds it.
    """

    def __init__(self,
                 img_resolution,                 # Resolution of input and output images.
                 in_channels,                    # Image channels in.
                 out_channels,                   # Image channels out.
                 label_dim=0,                    # Class label size; 0 = unconditional.
                 augment_dim=0,                  # Augmentation label size; 0 = none.
                 model_channels=192,             # Base channel count, before channel_mult.
                 channel_mult=[1, 2, 3, 4],      # Channel multiplier of each resolution.
                 channel_mult_emb=4,             # Embedding width in units of model_channels.
                 num_blocks=3,                   # Residual blocks per resolution in the encoder.
                 attn_resolutions=[32, 16, 8],   # Resolutions with self-attention.
                 dropout=0.10,                   # Dropout rate inside the residual blocks.
                 label_dropout=0,                # Rate of dropped class labels while training.
                 channels_per_head=64,           # Attention channels per head (ADM --num_head_channels).
                 num_heads=None,                 # Fixed head count in encoder and middle instead (ADM --num_heads).
                 num_heads_up=None,              # Fixed head count in the decoder (ADM --num_heads_upsample); None = num_heads.
                 min_channels_per_group=4,       # GroupNorm groups: min(32, C // this); 1 = always 32 (ADM).
                 adaptive_scale=True,            # Embedding as scale and shift (ADM --use_scale_shift_norm) or as a bias.
                 resample_blocks=True,           # Resample in residual blocks (ADM --resblock_updown), else by convolutions.
                 exp_embedding=False,            # Timestep embedding frequencies rounded as in ADM.
                 ):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode='kaiming_uniform', init_weight=np.sqrt(1 / 3), init_bias=np.sqrt(1 / 3))
        init_zero = dict(init_mode='kaiming_uniform', init_weight=0, init_bias=0)
        block_kwargs = dict(emb_channels=emb_channels, channels_per_head=channels_per_head, dropout=dropout,
                            adaptive_scale=adaptive_scale, min_channels_per_group=min_channels_per_group,
                            init=init, init_zero=init_zero)
        block = lambda cin, cout, **kw: UNetBlock(in_channels=cin, out_channels=cout, **kw, **block_kwargs)
        heads_down = dict(num_heads=num_heads)
        heads_up = dict(num_heads=num_heads if num_heads_up is None else num_heads_up)
        widths = [int(model_channels * mult) for mult in channel_mult]  # ADM allows fractional multipliers

        # Mapping (creation order matters for the random draws).
        self.map_noise = PositionalEmbedding(num_channels=model_channels, **(dict(exp_form=True) if exp_embedding else {}))
        self.map_augment = None
        if augment_dim:
            self.map_augment = Linear(in_features=augment_dim, out_features=model_channels, bias=False, **init_zero)
        self.map_layer0 = Linear(in_features=model_channels, out_features=emb_channels, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)
        self.map_label = None
        if label_dim:
            # Unit-variance output for one-hot labels.
            self.map_label = Linear(in_features=label_dim, out_features=emb_channels, bias=False,
                                    init_mode='kaiming_normal', init_weight=np.sqrt(label_dim))

        self.enc = torch.nn.ModuleDict()
        width = in_channels
        for level, level_width in enumerate(widths):
            res = img_resolution >> level
            tag = f'{res}x{res}'
            if level == 0:
                self.enc[f'{tag}_conv'] = Conv2d(in_channels=width, out_channels=level_width, kernel=3, **init)
                width = level_width
            elif resample_blocks:
                self.enc[f'{tag}_down'] = block(width, width, down=True)
            else:
                self.enc[f'{tag}_down'] = Conv2d(in_channels=width, out_channels=width, kernel=3, stride=2, **init)
            for idx in range(num_blocks):
                self.enc[f'{tag}_block{idx}'] = block(width, level_width, attention=res in attn_resolutions, **heads_down)
                width = level_width
        skip_widths = [m.out_channels for m in self.enc.values()]

        self.dec = torch.nn.ModuleDict()
        for level in reversed(range(len(widths))):
            res = img_resolution >> level
            tag = f'{res}x{res}'
            if level == len(widths) - 1:
                self.dec[f'{tag}_in0'] = block(width, width, attention=True, **heads_down)
                self.dec[f'{tag}_in1'] = block(width, width)
            elif resample_blocks:
                self.dec[f'{tag}_up'] = block(width, width, up=True)
            else:
                self.dec[f'{tag}_up'] = Conv2d(in_channels=width, out_channels=width, kernel=3, up=True, **init)
            for idx in range(num_blocks + 1):
                self.dec[f'{tag}_block{idx}'] = block(width + skip_widths.pop(), widths[level],
                                                      attention=res in attn_resolutions, **heads_up)
                width = widths[level]
        self.out_norm = GroupNorm(num_channels=width, min_channels_per_group=min_channels_per_group)
        self.out_conv = Conv2d(in_channels=width, out_channels=out_channels, kernel=3, **init_zero)

    def _embed(self, noise_labels, class_labels, augment_labels, batch):
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(_dropped_labels(self, class_labels, batch))
        return silu(emb)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self._embed(noise_labels, class_labels, augment_labels, x.shape[0])
        skips = []
        for layer in self.enc.values():
            x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
            skips.append(x)
        for key, layer in self.dec.items():
            if _role(key).startswith('block'):
                x = torch.cat([x, skips.pop()], dim=1)
            x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
        return self.out_conv(silu(self.out_norm(x)))

#----------------------------------------------------------------------------
# Preconditioners. EDM paper, Eq. 7:
#     D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)),
# with the coefficients of Table 1 given by each class's `coefficients(sigma)`.


def _build_model(model_type, img_resolution, img_channels, out_channels, label_dim, model_kwargs):
    unets = dict(SongUNet=SongUNet, DhariwalUNet=DhariwalUNet)
    if model_type not in unets:
        raise ValueError(f'Unknown model_type "{model_type}"; expected one of {sorted(unets)}')
    return unets[model_type](img_resolution=img_resolution, in_channels=img_channels, out_channels=out_channels,
                             label_dim=label_dim, **model_kwargs)


def _common_attributes(net, img_resolution, img_channels, label_dim, use_fp16):
    net.img_resolution = img_resolution
    net.img_channels = img_channels
    net.label_dim = label_dim
    net.use_fp16 = use_fp16


def _precondition(net, x, sigma, class_labels, force_fp32, model_kwargs, extra_channels=False):
    """Eq. 7 for preconditioner `net`; x is [N, C, H, W], sigma a scalar or [N]. With
    extra_channels, (D, the model's output channels after the first img_channels, float32)."""
    x = x.to(torch.float32)
    sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
    if not net.label_dim:
        class_labels = None
    elif class_labels is None:
        class_labels = torch.zeros([1, net.label_dim], device=x.device)
    else:
        class_labels = class_labels.to(torch.float32).reshape(-1, net.label_dim)
    half = net.use_fp16 and not force_fp32 and x.device.type == 'cuda'
    dtype = torch.float16 if half else torch.float32

    c_skip, c_out, c_in, c_noise = net.coefficients(sigma)
    F_x = net.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
    assert F_x.dtype == dtype
    # iDDPM's model also predicts variances in its second half of channels; D uses the first.
    denoised = c_skip * x + c_out * F_x[:, :net.img_channels].to(torch.float32)
    return (denoised, F_x[:, net.img_channels:].to(torch.float32)) if extra_channels else denoised


@persistence.persistent_class
class VPPrecond(torch.nn.Module):
    """Variance preserving formulation (Song et al. 2021); EDM paper Table 1, column VP."""

    def __init__(self,
                 img_resolution,                 # Image resolution.
                 img_channels,                   # Image channels.
                 label_dim=0,                    # Class label size; 0 = unconditional.
                 use_fp16=False,                 # Run the model in float16 (on CUDA only)?
                 beta_d=19.9,                    # beta_d of the noise schedule.
                 beta_min=0.1,                   # beta_min of the noise schedule.
                 M=1000,                         # Number of DDPM timesteps the model is conditioned on.
                 epsilon_t=1e-5,                 # Smallest t used in training.
                 model_type='SongUNet',          # Inner model class.
                 **model_kwargs,                 # Arguments of the inner model.
                 ):
        super().__init__()
        _common_attributes(self, img_resolution, img_channels, label_dim, use_fp16)
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))
        self.model = _build_model(model_type, img_resolution, img_channels, img_channels, label_dim, model_kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        return _precondition(self, x, sigma, class_labels, force_fp32, model_kwargs)

    def coefficients(self, sigma):
        """(c_skip, c_out, c_in, c_noise) = (1, -sigma, 1/sqrt(sigma^2+1), (M-1) t(sigma))."""
        return 1, -sigma, 1 / (sigma ** 2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)

    def sigma(self, t):
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        """t(sigma), the inverse of sigma(t): the positive root of a quadratic in t."""
        sigma = torch.as_tensor(sigma)
        root = (self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt()
        return (root - self.beta_min) / self.beta_d

    def round_sigma(self, sigma):
        """Continuous-time model: any sigma is supported, returned as a tensor."""
        return torch.as_tensor(sigma)


@persistence.persistent_class
class VEPrecond(torch.nn.Module):
    """Variance exploding formulation (Song et al. 2021); EDM paper Table 1, column VE."""

    def __init__(self,
                 img_resolution,                 # Image resolution.
                 img_channels,                   # Image channels.
                 label_dim=0,                    # Class label size; 0 = unconditional.
                 use_fp16=False,                 # Run the model in float16 (on CUDA only)?
                 sigma_min=0.02,                 # Smallest noise level of the schedule.
                 sigma_max=100,                  # Largest noise level of the schedule.
                 model_type='SongUNet',          # Inner model class.
                 **model_kwargs,                 # Arguments of the inner model.
                 ):
        super().__init__()
        _common_attributes(self, img_resolution, img_channels, label_dim, use_fp16)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.model = _build_model(model_type, img_resolution, img_channels, img_channels, label_dim, model_kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        return _precondition(self, x, sigma, class_labels, force_fp32, model_kwargs)

    def coefficients(self, sigma):
        """(c_skip, c_out, c_in, c_noise) = (1, sigma, 1, log(sigma / 2))."""
        return 1, sigma, 1, (0.5 * sigma).log()

    def round_sigma(self, sigma):
        """Continuous-time model: any sigma is supported, returned as a tensor."""
        return torch.as_tensor(sigma)


@persistence.persistent_class
class iDDPMPrecond(torch.nn.Module):
    """Improved DDPM (Nichol & Dhariwal 2021); EDM paper Table 1, column iDDPM.

    The model knows only the M noise levels u_0 > ... > u_{M-1} (buffer `u`, with u_M = 0).
    """

    def __init__(self,
                 img_resolution,                 # Image resolution.
                 img_channels,                   # Image channels.
                 label_dim=0,                    # Class label size; 0 = unconditional.
                 use_fp16=False,                 # Run the model in float16 (on CUDA only)?
                 C_1=0.001,                      # Lower clip of alpha_bar(j-1)/alpha_bar(j) (low noise).
                 C_2=0.008,                      # Offset of the cosine schedule (high noise).
                 M=1000,                         # Number of discrete noise levels.
                 model_type='DhariwalUNet',      # Inner model class.
                 **model_kwargs,                 # Arguments of the inner model.
                 ):
        super().__init__()
        _common_attributes(self, img_resolution, img_channels, label_dim, use_fp16)
        self.C_1 = C_1
        self.C_2 = C_2
        self.M = M
        self.model = _build_model(model_type, img_resolution, img_channels, img_channels * 2, label_dim, model_kwargs)
        # u_{j-1} = sqrt((u_j^2 + 1) / max(alpha_bar(j-1) / alpha_bar(j), C_1) - 1), from u_M = 0 down.
        u = torch.zeros(M + 1)
        for j in reversed(range(1, M + 1)):
            ratio = (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=C_1)
            u[j - 1] = ((u[j] ** 2 + 1) / ratio - 1).sqrt()
        self.register_buffer('u', u)
        self.sigma_min = float(u[M - 1])
        self.sigma_max = float(u[0])

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        return _precondition(self, x, sigma, class_labels, force_fp32, model_kwargs)

    def coefficients(self, sigma):
        """(c_skip, c_out, c_in, c_noise) = (1, -sigma, 1/sqrt(sigma^2+1), M - 1 - argmin_j |u_j - sigma|)."""
        j = self.round_sigma(sigma, return_index=True).to(torch.float32)
        return 1, -sigma, 1 / (sigma ** 2 + 1).sqrt(), self.M - 1 - j

    def alpha_bar(self, j):
        """Cosine schedule alpha_bar(j) = sin^2(pi/2 * j / (M (C_2 + 1)))."""
        j = torch.as_tensor(j)
        return (0.5 * np.pi * j / self.M / (self.C_2 + 1)).sin() ** 2

    def round_sigma(self, sigma, return_index=False):
        """The nearest level u_j to each element of sigma (or its index j), in sigma's shape.

        Distances come from torch.cdist, as in EDM, so ties near midpoints resolve the same way.
        """
        sigma = torch.as_tensor(sigma)
        queries = sigma.to(self.u.device).to(torch.float32).reshape(1, -1, 1)
        index = torch.cdist(queries, self.u.reshape(1, -1, 1)).argmin(2)
        result = index if return_index else self.u[index.flatten()].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)


@persistence.persistent_class
class EDMPrecond(torch.nn.Module):
    """The EDM paper's preconditioning; Table 1, column "ours", and Section 5."""

    def __init__(self,
                 img_resolution,                 # Image resolution.
                 img_channels,                   # Image channels.
                 label_dim=0,                    # Class label size; 0 = unconditional.
                 use_fp16=False,                 # Run the model in float16 (on CUDA only)?
                 sigma_min=0,                    # Smallest supported noise level.
                 sigma_max=float('inf'),         # Largest supported noise level.
                 sigma_data=0.5,                 # Standard deviation of the data.
                 model_type='DhariwalUNet',      # Inner model class.
                 **model_kwargs,                 # Arguments of the inner model.
                 ):
        super().__init__()
        _common_attributes(self, img_resolution, img_channels, label_dim, use_fp16)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.model = _build_model(model_type, img_resolution, img_channels, img_channels, label_dim, model_kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        return _precondition(self, x, sigma, class_labels, force_fp32, model_kwargs)

    def coefficients(self, sigma):
        """c_skip = s_d^2/(sigma^2+s_d^2), c_out = sigma s_d/sqrt(sigma^2+s_d^2),
        c_in = 1/sqrt(sigma^2+s_d^2), c_noise = ln(sigma)/4, with s_d = sigma_data."""
        var_data = self.sigma_data ** 2
        c_skip = var_data / (sigma ** 2 + var_data)
        c_out = sigma * self.sigma_data / (sigma ** 2 + var_data).sqrt()
        c_in = 1 / (var_data + sigma ** 2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4

    def round_sigma(self, sigma):
        """Continuous-time model: any sigma is supported, returned as a tensor."""
        return torch.as_tensor(sigma)


#----------------------------------------------------------------------------
# Discrete-time VP models of guided-diffusion (ADM): Ho et al. 2020, Nichol & Dhariwal 2021.

ADM_NOISE_SCHEDULES = ('linear', 'cosine')
ADM_MAX_STEPS = 100000          # Largest T accepted (tables are built in Python; published models use 1000 or 4000).


def adm_betas(noise_schedule, diffusion_steps):
    """float64 numpy betas [T] of guided-diffusion's named schedules, computed as it computes them."""
    steps = int(diffusion_steps)
    if not 1 <= steps <= ADM_MAX_STEPS:
        raise ValueError(f'diffusion_steps must be in 1..{ADM_MAX_STEPS}, got {steps}')
    if noise_schedule == 'linear':
        # Ho et al.'s 1e-4 .. 0.02 over 1000 steps, stretched to T steps.
        scale = 1000 / steps
        return np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)
    if noise_schedule == 'cosine':
        # beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999), abar(t) = cos^2((t + s)/(1 + s) pi/2), s = 0.008
        # (iDDPM Eq. 17), in Python floats as guided-diffusion evaluates it.
        abar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - abar((i + 1) / steps) / abar(i / steps), 0.999) for i in range(steps)])
    raise ValueError(f'unknown noise schedule "{noise_schedule}"; expected one of {", ".join(ADM_NOISE_SCHEDULES)}')


def adm_alpha_bar(noise_schedule, diffusion_steps):
    """float64 numpy alpha_bar_t = prod_{s <= t} (1 - beta_s), t = 0..T-1."""
    return np.cumprod(1.0 - adm_betas(noise_schedule, diffusion_steps), axis=0)


def nearest_grid_sigma(sigmas, sigma, return_index=False):
    """The nearest of the grid `sigmas` (by |sigma - sigma_t|, float64) to each element of sigma,
    or its index t, in sigma's shape: how a discrete-time network reads a continuous sigma."""
    sigma = torch.as_tensor(sigma)
    grid = sigmas.to(sigma.device)
    index = (sigma.to(torch.float64).reshape(-1, 1) - grid.reshape(1, -1)).abs().argmin(dim=1)
    result = index if return_index else grid[index].to(sigma.dtype)
    return result.reshape(sigma.shape)


@persistence.persistent_class
class ADMPrecond(torch.nn.Module):
    """A guided-diffusion (ADM) model as an EDM denoiser D(x; sigma).

    The model was trained on x_t = sqrt(abar_t) y + sqrt(1 - abar_t) n at the integer
    timesteps t = 0..T-1 and predicts n (eps), plus with learn_sigma a variance output v
    (iDDPM Eq. 15). In EDM's terms x = x_t / sqrt(abar_t) = y + sigma_t n with
    sigma_t = sqrt(1 / abar_t - 1): D rounds sigma to the nearest sigma_t for the timestep,
    feeds x_t = x / sqrt(1 + sigma^2), and returns x - sigma eps, which for sigma = sigma_t
    is guided-diffusion's pred_xstart (before clipping).
    """

    def __init__(self,
                 img_resolution,                 # Image resolution.
                 img_channels,                   # Image channels.
                 label_dim=0,                    # Class label size; 0 = unconditional.
                 use_fp16=False,                 # Run the model in float16 (on CUDA only)?
                 diffusion_steps=1000,           # Timesteps T the model was trained with.
                 noise_schedule='linear',        # Betas: 'linear' or 'cosine'.
                 learn_sigma=False,              # Does the model also output v (2 * img_channels outputs)?
                 rescale_timesteps=False,        # Feed t * 1000 / T instead of t (guided-diffusion's flag).
                 model_type='DhariwalUNet',      # Inner model class.
                 **model_kwargs,                 # Arguments of the inner model.
                 ):
        super().__init__()
        _common_attributes(self, img_resolution, img_channels, label_dim, use_fp16)
        self.diffusion_steps = int(diffusion_steps)
        self.noise_schedule = noise_schedule
        self.learn_sigma = bool(learn_sigma)
        self.rescale_timesteps = bool(rescale_timesteps)
        alpha_bar = adm_alpha_bar(noise_schedule, diffusion_steps)
        sigmas = np.sqrt(1 / alpha_bar - 1)  # guided-diffusion's sqrt_recipm1_alphas_cumprod
        self.register_buffer('alpha_bar', torch.as_tensor(alpha_bar, dtype=torch.float64), persistent=False)
        self.register_buffer('sigmas', torch.as_tensor(sigmas, dtype=torch.float64), persistent=False)
        self.sigma_min = float(sigmas[0])
        self.sigma_max = float(sigmas[-1])
        out_channels = img_channels * 2 if learn_sigma else img_channels
        self.model = _build_model(model_type, img_resolution, img_channels, out_channels, label_dim, model_kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, return_var_values=False, **model_kwargs):
        """D(x; sigma) [N, C, H, W] float32; with return_var_values, (D, v) where v is the
        model's variance output in [-1, 1] (None without learn_sigma)."""
        denoised, extra = _precondition(self, x, sigma, class_labels, force_fp32, model_kwargs, extra_channels=True)
        if not return_var_values:
            return denoised
        return denoised, (extra if self.learn_sigma else None)

    def coefficients(self, sigma):
        """(c_skip, c_out, c_in, c_noise) = (1, -sigma, 1/sqrt(sigma^2+1), t) with t the
        timestep of the nearest sigma_t."""
        t = self.round_sigma(sigma, return_index=True).to(torch.float32)
        if self.rescale_timesteps:
            t = t * (1000.0 / self.diffusion_steps)
        return 1, -sigma, 1 / (sigma ** 2 + 1).sqrt(), t

    def round_sigma(self, sigma, return_index=False):
        """The nearest sigma_t (by |sigma - sigma_t|, float64) to each element of sigma, or its
        timestep t, in sigma's shape."""
        return nearest_grid_sigma(self.sigmas, sigma, return_index)
