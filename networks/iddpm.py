"""improved-diffusion's `UNetModel` as TS-DPM uses it (`Model.struc: iDDPM`), with its state-dict layout.

Nichol & Dhariwal 2021's U-Net, 2-D, unconditional: GroupNorm(32) computed in float32, SiLU,
timestep embedding [cos, sin] with frequencies 10000^(-i/half), residual blocks with
scale-shift norm when asked (iDDPM Sec. 4; `emb_layers` then give 2C), attention where the
downsampling factor is in `attention_resolutions` (legacy qkv order: per head q, k, v), stride-2
convolution / nearest-upsample + convolution resampling. TS-DPM feeds the raw timestep and keeps
only the first C of the 2C output channels (the variance half is dropped). Where TS-DPM's copy
fails, this module does what improved-diffusion means: out_channels = C returns the whole output
(TS-DPM's split into two halves raises), conv_resample false downsamples by 2x2 average pooling
(TS-DPM's copy cannot build it), num_heads_upsample -1 means num_heads (TS-DPM's copy keeps -1). Tensor names: time_embed.{0,2}, input_blocks.{k}.{0,1},
middle_block.{0,1,2}, output_blocks.{k}.{0,1,2}, out.{0,2}; in a ResBlock in_layers.{0,2},
emb_layers.1, out_layers.{0,3}, skip_connection; in an attention block norm, qkv (Conv1d),
proj_out (Conv1d).

Pickles store this module's source: it imports only math, torch and torch_utils.persistence.
"""

import math

import torch
from torch_utils import persistence


def timestep_embedding(t, dim, max_period=10000):
    """[N, dim] float32: [cos(t f_i), sin(t f_i)], f_i = max_period^(-i / (dim/2)), zero-padded to dim."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


def norm32(x, norm):
    """improved-diffusion's GroupNorm32: normalise in float32, return x's dtype."""
    return norm(x.float()).type(x.dtype)


@persistence.persistent_class
class IDDPMConv1d(torch.nn.Module):
    """A kernel-1 Conv1d in torch.nn.Conv1d's tensor layout (weight [out, in, 1], bias [out])."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        bound = 1 / math.sqrt(in_channels)  # torch.nn.Conv1d's default initialisation
        self.weight = torch.nn.Parameter(torch.empty(out_channels, in_channels, 1).uniform_(-bound, bound))
        self.bias = torch.nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))

    def forward(self, x):
        return torch.nn.functional.conv1d(x, self.weight, self.bias)


@persistence.persistent_class
class IDDPMResBlock(torch.nn.Module):
    def __init__(self, channels, emb_channels, dropout, out_channels=None, use_scale_shift_norm=False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = torch.nn.Sequential(torch.nn.GroupNorm(32, channels), torch.nn.SiLU(),
                                             torch.nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = torch.nn.Sequential(
            torch.nn.SiLU(), torch.nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = torch.nn.Sequential(torch.nn.GroupNorm(32, out_channels), torch.nn.SiLU(),
                                              torch.nn.Dropout(p=dropout),
                                              torch.nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (torch.nn.Identity() if out_channels == channels
                                else torch.nn.Conv2d(channels, out_channels, 1))

    def forward(self, x, emb):
        norm_in, act_in, conv_in = self.in_layers
        h = conv_in(act_in(norm32(x, norm_in)))
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        norm_out, act, dropout, conv = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = norm32(h, norm_out) * (1 + scale) + shift
        else:
            h = norm32(h + emb_out, norm_out)
        return self.skip_connection(x) + conv(dropout(act(h)))


@persistence.persistent_class
class IDDPMAttentionBlock(torch.nn.Module):
    def __init__(self, channels, num_heads=1):
        super().__init__()
        self.num_heads = num_heads
        self.norm = torch.nn.GroupNorm(32, channels)
        self.qkv = IDDPMConv1d(channels, 3 * channels)
        self.proj_out = IDDPMConv1d(channels, channels)

    def forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(norm32(x, self.norm))
        qkv = qkv.reshape(b * self.num_heads, -1, qkv.shape[2])  # legacy order: [head, (q, k, v), channel]
        q, k, v = torch.split(qkv, qkv.shape[1] // 3, dim=1)
        scale = 1 / math.sqrt(math.sqrt(q.shape[1]))
        weight = torch.einsum('bct,bcs->bts', q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        h = torch.einsum('bts,bcs->bct', weight, v).reshape(b, -1, qkv.shape[-1])
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


@persistence.persistent_class
class IDDPMDownsample(torch.nn.Module):
    def __init__(self, channels, use_conv):
        super().__init__()
        if use_conv:
            self.op = torch.nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x) if hasattr(self, 'op') else torch.nn.functional.avg_pool2d(x, kernel_size=2, stride=2)


@persistence.persistent_class
class IDDPMUpsample(torch.nn.Module):
    def __init__(self, channels, use_conv):
        super().__init__()
        if use_conv:
            self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        x = torch.nn.functional.interpolate(x, scale_factor=2, mode='nearest')
        return self.conv(x) if hasattr(self, 'conv') else x


@persistence.persistent_class
class IDDPMSequential(torch.nn.Sequential):
    """TimestepEmbedSequential: passes the embedding to the residual blocks."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, IDDPMResBlock) else layer(x)
        return x


@persistence.persistent_class
class IDDPMUNet(torch.nn.Module):
    """eps(x_t, t) of improved-diffusion's UNetModel; the arguments are TS-DPM's Model keys."""

    def __init__(self,
                 in_channels,                    # Model.in_channels
                 model_channels,                 # Model.model_channels
                 out_channels,                   # Model.out_channels: in_channels, or 2x with the variance half.
                 num_res_blocks,                 # Model.num_res_blocks
                 attention_resolutions,          # Model.attention_resolutions: downsampling factors with attention.
                 dropout=0,                      # Model.dropout
                 channel_mult=(1, 2, 4, 8),      # Model.channel_mult
                 conv_resample=True,             # Model.conv_resample
                 num_heads=1,                    # Model.num_heads
                 num_heads_upsample=-1,          # Model.num_heads_upsample (-1: num_heads)
                 use_scale_shift_norm=False,     # Model.use_scale_shift_norm
                 ):
        super().__init__()
        self.in_channels = in_channels
        self.model_channels = model_channels
        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample
        factors = [int(r) for r in attention_resolutions]
        emb_dim = 4 * model_channels
        self.time_embed = torch.nn.Sequential(torch.nn.Linear(model_channels, emb_dim), torch.nn.SiLU(),
                                              torch.nn.Linear(emb_dim, emb_dim))
        res = lambda cin, cout: IDDPMResBlock(cin, emb_dim, dropout, cout, use_scale_shift_norm)

        self.input_blocks = torch.nn.ModuleList([IDDPMSequential(torch.nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        chans, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in factors:
                    layers.append(IDDPMAttentionBlock(ch, num_heads))
                self.input_blocks.append(IDDPMSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(IDDPMSequential(IDDPMDownsample(ch, conv_resample)))
                chans.append(ch)
                ds *= 2
        self.middle_block = IDDPMSequential(res(ch, ch), IDDPMAttentionBlock(ch, num_heads), res(ch, ch))
        self.output_blocks = torch.nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for index in range(num_res_blocks + 1):
                layers = [res(ch + chans.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in factors:
                    layers.append(IDDPMAttentionBlock(ch, heads_up))
                if level and index == num_res_blocks:
                    layers.append(IDDPMUpsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(IDDPMSequential(*layers))
        # The original's output convolution takes model_channels inputs (equal to ch when channel_mult[0] == 1).
        self.out = torch.nn.Sequential(torch.nn.GroupNorm(32, ch), torch.nn.SiLU(),
                                       torch.nn.Conv2d(model_channels, out_channels, 3, padding=1))

    def forward(self, x, t):
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        hs, h = [], x.float()
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        norm, act, conv = self.out
        output = conv(act(norm32(h.type(x.dtype), norm)))
        return output[:, :self.in_channels]  # TS-DPM: eps, the first C channels
