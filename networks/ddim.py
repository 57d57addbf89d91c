"""ermongroup/ddim's U-Net (`Model`, TS-DPM's `Model.struc: DDIM`), with its state-dict layout.

Ho et al. 2020's architecture as DDIM (Song et al. 2021) and PNDM ship it: GroupNorm(32,
eps 1e-6), swish, a timestep embedding [sin, cos] with frequencies 10000^(-i/(half-1)),
residual blocks with a 1x1 `nin_shortcut` where the width changes, single-head attention
at the resolutions listed in `attn_resolutions`, and resampling by a (0,1,0,1)-padded stride
2 convolution and nearest upsampling + convolution. The network takes the raw timestep t
(float, possibly fractional) and returns eps. Tensor names equal the original's:
temb.dense.{0,1}, conv_in, down.{i}.block.{j}, down.{i}.attn.{j}, down.{i}.downsample.conv,
mid.{block_1,attn_1,block_2}, up.{i}.block.{j}, up.{i}.attn.{j}, up.{i}.upsample.conv,
norm_out, conv_out, and `logvar` [1000] for model type 'bayesian'.

Pickles store this module's source: it imports only math, torch and torch_utils.persistence.
Containers are torch.nn.ModuleDict/ModuleList, so that the restricted unpickler accepts them.
"""

import math

import torch
from torch_utils import persistence


def timestep_embedding(t, dim):
    """[N, dim] float32: [sin(t f_i), cos(t f_i)], f_i = 10000^(-i / (dim/2 - 1)), zero-padded to dim."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(10000) / (half - 1)))
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


def swish(x):
    return x * torch.sigmoid(x)


def group_norm(channels):
    return torch.nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6)


@persistence.persistent_class
class DDIMResnetBlock(torch.nn.Module):
    """Two 3x3 convolutions with the projected embedding added between them."""

    def __init__(self, in_channels, out_channels, temb_channels, dropout):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb_proj = torch.nn.Linear(temb_channels, out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = torch.nn.Dropout(dropout)
        self.conv2 = torch.nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = torch.nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x, temb):
        h = self.conv1(swish(self.norm1(x)))
        h = h + self.temb_proj(swish(temb))[:, :, None, None]
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, 'nin_shortcut') else x
        return skip + h


@persistence.persistent_class
class DDIMAttnBlock(torch.nn.Module):
    """Single-head self-attention over all positions, 1x1 q, k, v and output projections."""

    def __init__(self, channels):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = torch.nn.Conv2d(channels, channels, 1)
        self.k = torch.nn.Conv2d(channels, channels, 1)
        self.v = torch.nn.Conv2d(channels, channels, 1)
        self.proj_out = torch.nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, height, width = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).reshape(b, c, height * width) for conv in (self.q, self.k, self.v))
        weights = torch.softmax(torch.einsum('bci,bcj->bij', q, k) * (int(c) ** -0.5), dim=2)
        out = torch.einsum('bcj,bij->bci', v, weights).reshape(b, c, height, width)
        return x + self.proj_out(out)


@persistence.persistent_class
class DDIMDownsample(torch.nn.Module):
    def __init__(self, channels, with_conv):
        super().__init__()
        if with_conv:
            self.conv = torch.nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        if hasattr(self, 'conv'):
            return self.conv(torch.nn.functional.pad(x, (0, 1, 0, 1)))  # TF's 'SAME' for stride 2
        return torch.nn.functional.avg_pool2d(x, kernel_size=2, stride=2)


@persistence.persistent_class
class DDIMUpsample(torch.nn.Module):
    def __init__(self, channels, with_conv):
        super().__init__()
        if with_conv:
            self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        x = torch.nn.functional.interpolate(x, scale_factor=2.0, mode='nearest')
        return self.conv(x) if hasattr(self, 'conv') else x


@persistence.persistent_class
class DDIMModel(torch.nn.Module):
    """eps(x_t, t) of ermongroup/ddim's `Model`; the arguments are its config's Model keys."""

    def __init__(self,
                 in_channels,                    # Model.in_channels
                 out_ch,                         # Model.out_ch
                 ch,                             # Model.ch: base width.
                 ch_mult,                        # Model.ch_mult: width multiplier per resolution.
                 num_res_blocks,                 # Model.num_res_blocks
                 attn_resolutions,               # Model.attn_resolutions: pixel resolutions with attention.
                 dropout,                        # Model.dropout
                 resolution,                     # Model.image_size
                 resamp_with_conv=True,          # Model.resamp_with_conv
                 model_type='simple',            # Model.type: 'bayesian' adds the logvar parameter.
                 num_timesteps=1000,             # Length of logvar (fixed to 1000 in the original).
                 ):
        super().__init__()
        self.ch = ch
        self.temb_ch = 4 * ch
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        if model_type == 'bayesian':
            self.logvar = torch.nn.Parameter(torch.zeros(num_timesteps))
        self.temb = torch.nn.ModuleDict(dict(dense=torch.nn.ModuleList([
            torch.nn.Linear(ch, self.temb_ch), torch.nn.Linear(self.temb_ch, self.temb_ch)])))
        self.conv_in = torch.nn.Conv2d(in_channels, ch, 3, padding=1)
        attn_resolutions = [int(r) for r in attn_resolutions]
        block = lambda cin, cout: DDIMResnetBlock(cin, cout, self.temb_ch, dropout)

        in_mult = (1,) + tuple(ch_mult)
        res = resolution
        self.down = torch.nn.ModuleList()
        for level in range(self.num_resolutions):
            blocks, attns = torch.nn.ModuleList(), torch.nn.ModuleList()
            width = ch * in_mult[level]
            for _ in range(num_res_blocks):
                blocks.append(block(width, ch * ch_mult[level]))
                width = ch * ch_mult[level]
                if res in attn_resolutions:
                    attns.append(DDIMAttnBlock(width))
            stage = torch.nn.ModuleDict(dict(block=blocks, attn=attns))
            if level != self.num_resolutions - 1:
                stage['downsample'] = DDIMDownsample(width, resamp_with_conv)
                res //= 2
            self.down.append(stage)

        self.mid = torch.nn.ModuleDict(dict(block_1=block(width, width), attn_1=DDIMAttnBlock(width),
                                            block_2=block(width, width)))

        ups = []
        for level in reversed(range(self.num_resolutions)):
            blocks, attns = torch.nn.ModuleList(), torch.nn.ModuleList()
            for index in range(num_res_blocks + 1):
                skip = ch * (in_mult[level] if index == num_res_blocks else ch_mult[level])
                blocks.append(block(width + skip, ch * ch_mult[level]))
                width = ch * ch_mult[level]
                if res in attn_resolutions:
                    attns.append(DDIMAttnBlock(width))
            stage = torch.nn.ModuleDict(dict(block=blocks, attn=attns))
            if level != 0:
                stage['upsample'] = DDIMUpsample(width, resamp_with_conv)
                res *= 2
            ups.insert(0, stage)  # indexed by level, as the original
        self.up = torch.nn.ModuleList(ups)
        self.norm_out = group_norm(width)
        self.conv_out = torch.nn.Conv2d(width, out_ch, 3, padding=1)

    def forward(self, x, t):
        temb = self.temb['dense'][1](swish(self.temb['dense'][0](timestep_embedding(t, self.ch))))
        hs = [self.conv_in(x)]
        for level, stage in enumerate(self.down):
            for index in range(self.num_res_blocks):
                h = stage['block'][index](hs[-1], temb)
                if len(stage['attn']) > 0:
                    h = stage['attn'][index](h)
                hs.append(h)
            if level != self.num_resolutions - 1:
                hs.append(stage['downsample'](hs[-1]))
        h = self.mid['block_2'](self.mid['attn_1'](self.mid['block_1'](hs[-1], temb)), temb)
        for level in reversed(range(self.num_resolutions)):
            stage = self.up[level]
            for index in range(self.num_res_blocks + 1):
                h = stage['block'][index](torch.cat([h, hs.pop()], dim=1), temb)
                if len(stage['attn']) > 0:
                    h = stage['attn'][index](h)
            if level != 0:
                h = stage['upsample'](h)
        return self.conv_out(swish(self.norm_out(h)))
