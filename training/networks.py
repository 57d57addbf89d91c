"""Network architectures and preconditioners of EDM (Karras et al., "Elucidating the Design
Space of Diffusion-Based Generative Models", NeurIPS 2022).

The class names, constructor arguments, parameter names and forward math follow NVIDIA's
EDM, so the weights of its public pickles load here with strict key matching. This module
is stored inside the pickles it writes and must also run inside EDM's own code base: it
imports nothing from this toolkit but torch_utils.persistence.
"""

import numpy as np
import torch
from torch.nn.functional import silu
from torch_utils import persistence

#----------------------------------------------------------------------------
# Initialisation.


def weight_init(shape, mode, fan_in, fan_out):
    """Random weights with the scale of the named scheme (EDM's four schemes)."""
    if mode == 'xavier_uniform':
        return np.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == 'xavier_normal':
        return np.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == 'kaiming_uniform':
        return np.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == 'kaiming_normal':
        return np.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f'Invalid init mode "{mode}"')


def _param(shape, init_mode, fan_in, fan_out, gain):
    return torch.nn.Parameter(weight_init(shape, mode=init_mode, fan_in=fan_in, fan_out=fan_out) * gain)

#----------------------------------------------------------------------------
# Layers. Weights stay float32 and are cast to the activation dtype at use (fp16 on CUDA).


@persistence.persistent_class
class Linear(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, init_mode='kaiming_normal', init_weight=1, init_bias=0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(fan_in=in_features, fan_out=out_features)
        self.weight = _param([out_features, in_features], init_mode, gain=init_weight, **fans)
        self.bias = _param([out_features], init_mode, gain=init_bias, **fans) if bias else None

    def forward(self, x):
        y = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            y = y.add_(self.bias.to(x.dtype))
        return y


@persistence.persistent_class
class Conv2d(torch.nn.Module):
    """Convolution with optional 2x up- or downsampling by a separable FIR filter.

    kernel=0 gives a pure resampling layer. With fused_resample, the resampling and the
    convolution are done in a single pass each way (EDM's NCSN++ residual encoder).
    """

    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False,
                 resample_filter=[1, 1], fused_resample=False, init_mode='kaiming_normal', init_weight=1, init_bias=0):
        assert not (up and down)
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = _param([out_channels, in_channels, kernel, kernel], init_mode, gain=init_weight, **fans) if kernel else None
        self.bias = _param([out_channels], init_mode, gain=init_bias, **fans) if kernel and bias else None
        taps = torch.as_tensor(resample_filter, dtype=torch.float32)
        fir = (taps.ger(taps) / taps.sum().square())[None, None]  # [1, 1, k, k], unit gain
        self.register_buffer('resample_filter', fir if (up or down) else None)

    def _upsample(self, x, fir, channels, padding):
        return torch.nn.functional.conv_transpose2d(x, fir.mul(4).tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=padding)

    def _downsample(self, x, fir, channels, padding):
        return torch.nn.functional.conv2d(x, fir.tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=padding)

    def forward(self, x):
        w = None if self.weight is None else self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        fir = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if fir is None else (fir.shape[-1] - 1) // 2
        conv = torch.nn.functional.conv2d
        if w is not None and self.fused_resample and self.up:
            x = self._upsample(x, fir, self.in_channels, max(f_pad - w_pad, 0))
            x = conv(x, w, padding=max(w_pad - f_pad, 0))
        elif w is not None and self.fused_resample and self.down:
            x = conv(x, w, padding=w_pad + f_pad)
            x = self._downsample(x, fir, self.out_channels, 0)
        else:
            if self.up:
                x = self._upsample(x, fir, self.in_channels, f_pad)
            if self.down:
                x = self._downsample(x, fir, self.in_channels, f_pad)
            if w is not None:
                x = conv(x, w, padding=w_pad)
        if b is not None:
            x = x.add_(b.reshape(1, -1, 1, 1))
        return x


@persistence.persistent_class
class GroupNorm(torch.nn.Module):
    """Group normalisation with at least `min_channels_per_group` channels per group."""

    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return torch.nn.functional.group_norm(x, num_groups=self.num_groups, weight=self.weight.to(x.dtype),
                                              bias=self.bias.to(x.dtype), eps=self.eps)


def attention_weights(q, k):
    """Softmax attention weights [N, Q, K] of queries q [N, C, Q] and keys k [N, C, K], in float32."""
    logits = torch.einsum('ncq,nck->nqk', q.to(torch.float32), (k / np.sqrt(k.shape[1])).to(torch.float32))
    return logits.softmax(dim=2).to(q.dtype)

#----------------------------------------------------------------------------
# The residual block shared by both U-Nets.


@persistence.persistent_class
class UNetBlock(torch.nn.Module):
    """Residual block with embedding injection, optional resampling and self-attention."""

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 num_heads=None, channels_per_head=64, dropout=0, skip_scale=1, eps=1e-5,
                 resample_filter=[1, 1], resample_proj=False, adaptive_scale=True,
                 init=dict(), init_zero=dict(init_weight=0), init_attn=None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        resample = dict(up=up, down=down, resample_filter=resample_filter)
        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=3, **resample, **init)
        self.affine = Linear(in_features=emb_channels, out_features=out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            # A 1x1 projection when channels change (or when asked), else resampling only.
            kernel = 1 if (resample_proj or out_channels != in_channels) else 0
            self.skip = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=kernel, **resample, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            self.qkv = Conv2d(in_channels=out_channels, out_channels=out_channels * 3, kernel=1,
                              **(init if init_attn is None else init_attn))
            self.proj = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=1, **init_zero)

    def forward(self, x, emb):
        residual = x
        x = self.conv0(silu(self.norm0(x)))
        emb_params = self.affine(emb).unsqueeze(2).unsqueeze(3).to(x.dtype)
        if self.adaptive_scale:
            scale, shift = emb_params.chunk(chunks=2, dim=1)
            x = silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = silu(self.norm1(x.add_(emb_params)))
        x = self.conv1(torch.nn.functional.dropout(x, p=self.dropout, training=self.training))
        x = x.add_(residual if self.skip is None else self.skip(residual))
        x = x * self.skip_scale
        if self.num_heads:
            n, c = x.shape[0], x.shape[1]
            q, k, v = self.qkv(self.norm2(x)).reshape(n * self.num_heads, c // self.num_heads, 3, -1).unbind(2)
            attended = torch.einsum('nqk,nck->ncq', attention_weights(q, k), v)
            x = self.proj(attended.reshape(*x.shape)).add_(x)
            x = x * self.skip_scale
        return x

#----------------------------------------------------------------------------
# Noise-level embeddings.


@persistence.persistent_class
class PositionalEmbedding(torch.nn.Module):
    """Transformer-style sinusoidal embedding: [cos(x f_i), sin(x f_i)], f_i geometric in i."""

    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x):
        half = self.num_channels // 2
        exponents = torch.arange(start=0, end=half, dtype=torch.float32, device=x.device)
        exponents = exponents / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** exponents
        angles = x.ger(freqs.to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


@persistence.persistent_class
class FourierEmbedding(torch.nn.Module):
    """Random Fourier features of NCSN++ (fixed Gaussian frequencies)."""

    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer('freqs', torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        angles = x.ger((2 * np.pi * self.freqs).to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)

#----------------------------------------------------------------------------
# U-Nets.


def _drop_labels(net, labels, batch, device):
    """Classifier-free guidance training: zero each label row with probability label_dropout."""
    if net.training and net.label_dropout:
        keep = torch.rand([batch, 1], device=device) >= net.label_dropout
        labels = labels * keep.to(labels.dtype)
    return labels


@persistence.persistent_class
class SongUNet(torch.nn.Module):
    """DDPM++ and NCSN++ U-Nets of Song et al. (2021), as configured by EDM."""

    def __init__(self,
                 img_resolution,                 # Resolution of input and output images.
                 in_channels,                    # Image channels at the input.
                 out_channels,                   # Image channels at the output.
                 label_dim=0,                    # Class label dimensionality; 0 = unconditional.
                 augment_dim=0,                  # Augmentation label dimensionality; 0 = none.
                 model_channels=128,             # Base channel count.
                 channel_mult=[1, 2, 2, 2],      # Channel multiplier per resolution.
                 channel_mult_emb=4,             # Embedding size, in multiples of model_channels.
                 num_blocks=4,                   # Residual blocks per resolution.
                 attn_resolutions=[16],          # Resolutions that get self-attention.
                 dropout=0.10,                   # Dropout inside residual blocks.
                 label_dropout=0,                # Class label dropout (classifier-free guidance).
                 embedding_type='positional',    # 'positional' (DDPM++) or 'fourier' (NCSN++).
                 channel_mult_noise=1,           # Noise embedding size: 1 (DDPM++) or 2 (NCSN++).
                 encoder_type='standard',        # 'standard' (DDPM++), 'skip' or 'residual' (NCSN++).
                 decoder_type='standard',        # 'standard' or 'skip'.
                 resample_filter=[1, 1],         # [1,1] (DDPM++) or [1,3,3,1] (NCSN++).
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
        block = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=np.sqrt(0.5), eps=1e-6,
                     resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                     init=init, init_zero=init_zero, init_attn=init_attn)

        # Mapping network: noise level (+ labels) -> embedding.
        if embedding_type == 'positional':
            self.map_noise = PositionalEmbedding(num_channels=noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(num_channels=noise_channels)
        self.map_label = Linear(in_features=label_dim, out_features=noise_channels, **init) if label_dim else None
        self.map_augment = Linear(in_features=augment_dim, out_features=noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(in_features=noise_channels, out_features=emb_channels, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f'{res}x{res}_conv'] = Conv2d(in_channels=cout, out_channels=model_channels, kernel=3, **init)
                cout = model_channels
            else:
                self.enc[f'{res}x{res}_down'] = UNetBlock(in_channels=cout, out_channels=cout, down=True, **block)
                if encoder_type == 'skip':
                    self.enc[f'{res}x{res}_aux_down'] = Conv2d(in_channels=caux, out_channels=caux, kernel=0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f'{res}x{res}_aux_skip'] = Conv2d(in_channels=caux, out_channels=cout, kernel=1, **init)
                if encoder_type == 'residual':
                    self.enc[f'{res}x{res}_aux_residual'] = Conv2d(in_channels=caux, out_channels=cout, kernel=3, down=True,
                                                                   resample_filter=resample_filter, fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f'{res}x{res}_block{idx}'] = UNetBlock(in_channels=cin, out_channels=cout,
                                                                attention=(res in attn_resolutions), **block)
        skip_channels = [b.out_channels for name, b in self.enc.items() if 'aux' not in name]

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f'{res}x{res}_in0'] = UNetBlock(in_channels=cout, out_channels=cout, attention=True, **block)
                self.dec[f'{res}x{res}_in1'] = UNetBlock(in_channels=cout, out_channels=cout, **block)
            else:
                self.dec[f'{res}x{res}_up'] = UNetBlock(in_channels=cout, out_channels=cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skip_channels.pop(), model_channels * mult
                self.dec[f'{res}x{res}_block{idx}'] = UNetBlock(
                    in_channels=cin, out_channels=cout, attention=(idx == num_blocks and res in attn_resolutions), **block)
            if decoder_type == 'skip' or level == 0:
                if decoder_type == 'skip' and level < len(channel_mult) - 1:
                    self.dec[f'{res}x{res}_aux_up'] = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f'{res}x{res}_aux_norm'] = GroupNorm(num_channels=cout, eps=1e-6)
                self.dec[f'{res}x{res}_aux_conv'] = Conv2d(in_channels=cout, out_channels=out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # [sin, cos] order, as DDPM++
        if self.map_label is not None:
            labels = _drop_labels(self, class_labels, x.shape[0], x.device)
            emb = emb + self.map_label(labels * np.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer1(silu(self.map_layer0(emb))))

        skips = []
        aux = x
        for name, layer in self.enc.items():
            if 'aux_down' in name:
                aux = layer(aux)
            elif 'aux_skip' in name:
                x = skips[-1] = x + layer(aux)
            elif 'aux_residual' in name:
                x = skips[-1] = aux = (x + layer(aux)) / np.sqrt(2)
            else:
                x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
                skips.append(x)

        aux = None
        head = None
        for name, layer in self.dec.items():
            if 'aux_up' in name:
                aux = layer(aux)
            elif 'aux_norm' in name:
                head = layer(x)
            elif 'aux_conv' in name:
                head = layer(silu(head))
                aux = head if aux is None else head + aux
            else:
                if x.shape[1] != layer.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = layer(x, emb)
        return aux


@persistence.persistent_class
class DhariwalUNet(torch.nn.Module):
    """ADM U-Net of Dhariwal & Nichol (2021), as configured by EDM."""

    def __init__(self,
                 img_resolution,                 # Resolution of input and output images.
                 in_channels,                    # Image channels at the input.
                 out_channels,                   # Image channels at the output.
                 label_dim=0,                    # Class label dimensionality; 0 = unconditional.
                 augment_dim=0,                  # Augmentation label dimensionality; 0 = none.
                 model_channels=192,             # Base channel count.
                 channel_mult=[1, 2, 3, 4],      # Channel multiplier per resolution.
                 channel_mult_emb=4,             # Embedding size, in multiples of model_channels.
                 num_blocks=3,                   # Residual blocks per resolution.
                 attn_resolutions=[32, 16, 8],   # Resolutions that get self-attention.
                 dropout=0.10,                   # Dropout inside residual blocks.
                 label_dropout=0,                # Class label dropout (classifier-free guidance).
                 ):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode='kaiming_uniform', init_weight=np.sqrt(1 / 3), init_bias=np.sqrt(1 / 3))
        init_zero = dict(init_mode='kaiming_uniform', init_weight=0, init_bias=0)
        block = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero)

        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        self.map_augment = Linear(in_features=augment_dim, out_features=model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(in_features=model_channels, out_features=emb_channels, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)
        self.map_label = None
        if label_dim:
            self.map_label = Linear(in_features=label_dim, out_features=emb_channels, bias=False,
                                    init_mode='kaiming_normal', init_weight=np.sqrt(label_dim))

        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f'{res}x{res}_conv'] = Conv2d(in_channels=cout, out_channels=model_channels * mult, kernel=3, **init)
                cout = model_channels * mult
            else:
                self.enc[f'{res}x{res}_down'] = UNetBlock(in_channels=cout, out_channels=cout, down=True, **block)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f'{res}x{res}_block{idx}'] = UNetBlock(in_channels=cin, out_channels=cout,
                                                                attention=(res in attn_resolutions), **block)
        skip_channels = [b.out_channels for b in self.enc.values()]

        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f'{res}x{res}_in0'] = UNetBlock(in_channels=cout, out_channels=cout, attention=True, **block)
                self.dec[f'{res}x{res}_in1'] = UNetBlock(in_channels=cout, out_channels=cout, **block)
            else:
                self.dec[f'{res}x{res}_up'] = UNetBlock(in_channels=cout, out_channels=cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skip_channels.pop(), model_channels * mult
                self.dec[f'{res}x{res}_block{idx}'] = UNetBlock(in_channels=cin, out_channels=cout,
                                                                attention=(res in attn_resolutions), **block)
        self.out_norm = GroupNorm(num_channels=cout)
        self.out_conv = Conv2d(in_channels=cout, out_channels=out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(_drop_labels(self, class_labels, x.shape[0], x.device))
        emb = silu(emb)

        skips = []
        for layer in self.enc.values():
            x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
            skips.append(x)
        for layer in self.dec.values():
            if x.shape[1] != layer.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = layer(x, emb)
        return self.out_conv(silu(self.out_norm(x)))

#----------------------------------------------------------------------------
# Preconditioners (EDM paper, Table 1): D(x; sigma) = c_skip x + c_out F(c_in x; c_noise).


class _Preconditioner(torch.nn.Module):
    """Shared plumbing: builds the inner model and evaluates D from the four coefficients."""

    def _setup(self, img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs, out_channels=None):
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.model = _MODEL_CLASSES[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                                out_channels=img_channels if out_channels is None else out_channels,
                                                label_dim=label_dim, **model_kwargs)

    def _inputs(self, x, sigma, class_labels, force_fp32):
        """float32 x, sigma as [N,1,1,1], labels as [N,label_dim] or None, and the model dtype."""
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        use_half = self.use_fp16 and not force_fp32 and x.device.type == 'cuda'
        return x, sigma, class_labels, (torch.float16 if use_half else torch.float32)

    def _denoise(self, x, c_skip, c_out, c_in, c_noise, class_labels, dtype, model_kwargs):
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        assert F_x.dtype == dtype
        return c_skip * x + c_out * F_x[:, :self.img_channels].to(torch.float32)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


@persistence.persistent_class
class VPPrecond(_Preconditioner):
    """Variance preserving formulation (Song et al. 2021)."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False,
                 beta_d=19.9,        # Extent of the noise level schedule.
                 beta_min=0.1,       # Initial slope of the noise level schedule.
                 M=1000,             # Number of timesteps of the DDPM formulation.
                 epsilon_t=1e-5,     # Smallest t used in training.
                 model_type='SongUNet', **model_kwargs):
        super().__init__()
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))
        self._setup(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = self._inputs(x, sigma, class_labels, force_fp32)
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        return self._denoise(x, 1, -sigma, c_in, c_noise, class_labels, dtype, model_kwargs)

    def sigma(self, t):
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        """The t with sigma(t) = sigma."""
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d


@persistence.persistent_class
class VEPrecond(_Preconditioner):
    """Variance exploding formulation (Song et al. 2021)."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False,
                 sigma_min=0.02, sigma_max=100, model_type='SongUNet', **model_kwargs):
        super().__init__()
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self._setup(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = self._inputs(x, sigma, class_labels, force_fp32)
        return self._denoise(x, 1, sigma, 1, (0.5 * sigma).log(), class_labels, dtype, model_kwargs)


@persistence.persistent_class
class iDDPMPrecond(_Preconditioner):
    """Improved DDPM (Nichol & Dhariwal 2021): a discrete set of M noise levels u_j."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False,
                 C_1=0.001,          # Timestep adjustment at low noise levels.
                 C_2=0.008,          # Timestep adjustment at high noise levels.
                 M=1000,             # Number of timesteps of the DDPM formulation.
                 model_type='DhariwalUNet', **model_kwargs):
        super().__init__()
        self.C_1 = C_1
        self.C_2 = C_2
        self.M = M
        # The model also predicts variances (2x channels); only the first half is used.
        self._setup(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs, out_channels=img_channels * 2)
        u = torch.zeros(M + 1)
        for j in range(M, 0, -1):  # u_{j-1} from u_j, EDM paper Appendix C.3.4
            ratio = (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=C_1)
            u[j - 1] = ((u[j] ** 2 + 1) / ratio - 1).sqrt()
        self.register_buffer('u', u)
        self.sigma_min = float(u[M - 1])
        self.sigma_max = float(u[0])

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = self._inputs(x, sigma, class_labels, force_fp32)
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = self.M - 1 - self.round_sigma(sigma, return_index=True).to(torch.float32)
        return self._denoise(x, 1, -sigma, c_in, c_noise, class_labels, dtype, model_kwargs)

    def alpha_bar(self, j):
        j = torch.as_tensor(j)
        return (0.5 * np.pi * j / self.M / (self.C_2 + 1)).sin() ** 2

    def round_sigma(self, sigma, return_index=False):
        """The nearest level u_j (or its index j) for every element of sigma."""
        sigma = torch.as_tensor(sigma)
        distance = torch.cdist(sigma.to(self.u.device).to(torch.float32).reshape(1, -1, 1), self.u.reshape(1, -1, 1))
        index = distance.argmin(2)
        result = index if return_index else self.u[index.flatten()].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)


@persistence.persistent_class
class EDMPrecond(_Preconditioner):
    """EDM's preconditioning (paper Section 5, Table 1)."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False,
                 sigma_min=0, sigma_max=float('inf'),
                 sigma_data=0.5,     # Expected standard deviation of the training data.
                 model_type='DhariwalUNet', **model_kwargs):
        super().__init__()
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self._setup(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = self._inputs(x, sigma, class_labels, force_fp32)
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (sigma ** 2 + sd2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + sd2).sqrt()
        c_in = 1 / (sd2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        return self._denoise(x, c_skip, c_out, c_in, c_noise, class_labels, dtype, model_kwargs)


_MODEL_CLASSES = dict(SongUNet=SongUNet, DhariwalUNet=DhariwalUNet)
