"""score-SDE's `DDPM` (TS-DPM's `Model.struc: PF`) and `NCSNpp` (`PF_deep`), with their state-dict layouts.

Both keep every layer in one flat `all_modules` ModuleList, so tensor names are
`all_modules.{index}.{layer}` in construction order, as in score_sde_pytorch (TS-DPM's copy
has no `sigmas` buffer). Both take the raw timestep and return eps (no scaling by sigma).

- `ScoreSDEDDPM` (Ho et al. 2020's U-Net as score-SDE ports it): [Dense, Dense] embedding (only
  with `conditional`, which TS-DPM's copy requires), conv3x3, residual blocks (GroupNorm_0,
  Conv_0, Dense_0, GroupNorm_1, Conv_1, NIN_0 shortcut), channel attention (GroupNorm_0,
  NIN_0..3) after every block of an attention resolution on the way down but once per
  resolution on the way up, GroupNorm(32, eps 1e-6) everywhere.
- `NCSNpp` (Song et al. 2021, NCSN++ / DDPM++): GroupNorm(min(C/4, 32)), `biggan` blocks
  (resampling inside the block, 1x1 Conv_2 shortcut) or `ddpm` blocks, optional skip
  rescaling by 1/sqrt(2), positional or Gaussian-Fourier embedding. Supported: progressive
  and progressive_input 'none' and fir false (the published pf_deep_cifar10 configuration);
  other values are refused when the network is built. With resblock_type 'ddpm', score-SDE's
  Upsample passes 'nearest' where interpolate takes scale_factor and raises; here it upsamples
  by nearest neighbours as meant. The published configurations use neither quirk.
"""

import math

import torch
from torch_utils import persistence

from networks.ddim import timestep_embedding

ACTIVATIONS = ('elu', 'relu', 'lrelu', 'swish')


def activation(name, x):
    """score-SDE's get_act(config) applied to x."""
    name = name.lower()
    if name == 'elu':
        return torch.nn.functional.elu(x)
    if name == 'relu':
        return torch.relu(x)
    if name == 'lrelu':
        return torch.nn.functional.leaky_relu(x, negative_slope=0.2)
    if name == 'swish':
        return torch.nn.functional.silu(x)
    raise ValueError(f'unknown nonlinearity "{name}"; expected one of {", ".join(ACTIVATIONS)}')


def conv3x3(cin, cout, stride=1, padding=1):
    return torch.nn.Conv2d(cin, cout, 3, stride=stride, padding=padding)


def group_norm(channels, groups=32):
    return torch.nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6)


def pp_groups(channels):
    return min(channels // 4, 32)


@persistence.persistent_class
class NIN(torch.nn.Module):
    """A 1x1 "network in network" layer: y[b, u, h, w] = sum_c x[b, c, h, w] W[c, u] + b[u]."""

    def __init__(self, in_dim, num_units):
        super().__init__()
        bound = 1 / math.sqrt(in_dim)  # any initialisation: checkpoints replace it
        self.W = torch.nn.Parameter(torch.empty(in_dim, num_units).uniform_(-bound, bound))
        self.b = torch.nn.Parameter(torch.zeros(num_units))

    def forward(self, x):
        return torch.einsum('bchw,cu->buhw', x, self.W) + self.b[None, :, None, None]


@persistence.persistent_class
class SDEAttnBlock(torch.nn.Module):
    """Channel-wise self-attention; (x + h) / sqrt(2) with skip_rescale (NCSN++'s AttnBlockpp)."""

    def __init__(self, channels, groups=32, skip_rescale=False):
        super().__init__()
        self.skip_rescale = skip_rescale
        self.GroupNorm_0 = group_norm(channels, groups)
        for index in range(4):
            setattr(self, f'NIN_{index}', NIN(channels, channels))

    def forward(self, x):
        b, c, height, width = x.shape
        h = self.GroupNorm_0(x)
        q, k, v = self.NIN_0(h), self.NIN_1(h), self.NIN_2(h)
        w = torch.einsum('bchw,bcij->bhwij', q, k) * (int(c) ** -0.5)
        w = torch.softmax(w.reshape(b, height, width, height * width), dim=-1).reshape(b, height, width, height, width)
        h = self.NIN_3(torch.einsum('bhwij,bcij->bchw', w, v))
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


@persistence.persistent_class
class SDEResnetBlock(torch.nn.Module):
    """score-SDE's ResnetBlockDDPM (groups 32, no rescale) and NCSN++'s ResnetBlockDDPMpp."""

    def __init__(self, act, in_ch, out_ch, temb_dim, dropout, groups_pp=False, skip_rescale=False):
        super().__init__()
        out_ch = out_ch or in_ch
        groups = pp_groups if groups_pp else (lambda _: 32)
        self.act, self.skip_rescale, self.out_ch = act, skip_rescale, out_ch
        self.GroupNorm_0 = group_norm(in_ch, groups(in_ch))
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = torch.nn.Linear(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch, groups(out_ch))
        self.Dropout_0 = torch.nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch)
        if in_ch != out_ch:
            self.NIN_0 = NIN(in_ch, out_ch)

    def forward(self, x, temb=None):
        h = self.Conv_0(activation(self.act, self.GroupNorm_0(x)))
        if temb is not None:
            h = h + self.Dense_0(activation(self.act, temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(activation(self.act, self.GroupNorm_1(h))))
        if x.shape[1] != self.out_ch:
            x = self.NIN_0(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


@persistence.persistent_class
class SDEBigGANBlock(torch.nn.Module):
    """NCSN++'s ResnetBlockBigGANpp without FIR: naive resampling of both paths inside the block."""

    def __init__(self, act, in_ch, out_ch, temb_dim, dropout, up=False, down=False, skip_rescale=True):
        super().__init__()
        out_ch = out_ch or in_ch
        self.act, self.up, self.down, self.skip_rescale = act, up, down, skip_rescale
        self.GroupNorm_0 = group_norm(in_ch, pp_groups(in_ch))
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = torch.nn.Linear(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch, pp_groups(out_ch))
        self.Dropout_0 = torch.nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch)
        if in_ch != out_ch or up or down:
            self.Conv_2 = torch.nn.Conv2d(in_ch, out_ch, 1)

    def _resample(self, x):
        if self.up:
            return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        if self.down:
            n, c, height, width = x.shape
            return x.reshape(n, c, height // 2, 2, width // 2, 2).mean(dim=(3, 5))
        return x

    def forward(self, x, temb=None):
        h = self._resample(activation(self.act, self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(activation(self.act, temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(activation(self.act, self.GroupNorm_1(h))))
        if hasattr(self, 'Conv_2'):
            x = self.Conv_2(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


@persistence.persistent_class
class SDEDownsample(torch.nn.Module):
    def __init__(self, channels, with_conv):
        super().__init__()
        if with_conv:
            self.Conv_0 = conv3x3(channels, channels, stride=2, padding=0)

    def forward(self, x):
        if hasattr(self, 'Conv_0'):
            return self.Conv_0(torch.nn.functional.pad(x, (0, 1, 0, 1)))  # TF's 'SAME' for stride 2
        return torch.nn.functional.avg_pool2d(x, 2, stride=2)


@persistence.persistent_class
class SDEUpsample(torch.nn.Module):
    def __init__(self, channels, with_conv):
        super().__init__()
        if with_conv:
            self.Conv_0 = conv3x3(channels, channels)

    def forward(self, x):
        h = torch.nn.functional.interpolate(x, (x.shape[2] * 2, x.shape[3] * 2), mode='nearest')
        return self.Conv_0(h) if hasattr(self, 'Conv_0') else h


@persistence.persistent_class
class FourierProjection(torch.nn.Module):
    """Gaussian Fourier features [sin(2 pi x W), cos(2 pi x W)] (a fixed parameter W)."""

    def __init__(self, embedding_size, scale=1.0):
        super().__init__()
        # Uniform with the variance of score-SDE's N(0, scale^2) draw (random draws are slow on 'meta').
        bound = math.sqrt(3) * scale
        self.W = torch.nn.Parameter(torch.empty(embedding_size).uniform_(-bound, bound), requires_grad=False)

    def forward(self, x):
        proj = x[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


def _resolutions(image_size, levels):
    return [image_size // (2 ** i) for i in range(levels)]


@persistence.persistent_class
class ScoreSDEDDPM(torch.nn.Module):
    """eps(x_t, t) of score-SDE's DDPM model as TS-DPM's PF; the arguments are its Model keys."""

    def __init__(self,
                 num_channels,                   # Model.num_channels: image channels.
                 image_size,                     # Model.image_size
                 nf,                             # Model.nf: base width.
                 ch_mult,                        # Model.ch_mult
                 num_res_blocks,                 # Model.num_res_blocks
                 attn_resolutions,               # Model.attn_resolutions: pixel resolutions with attention.
                 dropout,                        # Model.dropout
                 resamp_with_conv=True,          # Model.resamp_with_conv
                 nonlinearity='swish',           # Model.nonlinearity
                 centered=True,                  # Model.centered: inputs in [-1, 1] (else [0, 1]).
                 ):
        super().__init__()
        activation(nonlinearity, torch.zeros([]))  # refuse an unknown name now
        self.act, self.nf, self.centered = nonlinearity, nf, bool(centered)
        self.num_res_blocks, self.num_resolutions = num_res_blocks, len(ch_mult)
        self.attn_levels = [res in [int(r) for r in attn_resolutions] for res in _resolutions(image_size, len(ch_mult))]
        block = lambda cin, cout=None: SDEResnetBlock(nonlinearity, cin, cout, 4 * nf, dropout)
        modules = [torch.nn.Linear(nf, 4 * nf), torch.nn.Linear(4 * nf, 4 * nf), conv3x3(num_channels, nf)]
        hs_c, in_ch = [nf], nf
        for level in range(self.num_resolutions):
            for _ in range(num_res_blocks):
                modules.append(block(in_ch, nf * ch_mult[level]))
                in_ch = nf * ch_mult[level]
                if self.attn_levels[level]:
                    modules.append(SDEAttnBlock(in_ch))
                hs_c.append(in_ch)
            if level != self.num_resolutions - 1:
                modules.append(SDEDownsample(in_ch, resamp_with_conv))
                hs_c.append(in_ch)
        modules += [block(in_ch), SDEAttnBlock(in_ch), block(in_ch)]
        for level in reversed(range(self.num_resolutions)):
            for _ in range(num_res_blocks + 1):
                modules.append(block(in_ch + hs_c.pop(), nf * ch_mult[level]))
                in_ch = nf * ch_mult[level]
            if self.attn_levels[level]:
                modules.append(SDEAttnBlock(in_ch))
            if level != 0:
                modules.append(SDEUpsample(in_ch, resamp_with_conv))
        modules += [group_norm(in_ch), conv3x3(in_ch, num_channels)]
        self.all_modules = torch.nn.ModuleList(modules)

    def forward(self, x, t):
        modules = iter(self.all_modules)
        temb = next(modules)(timestep_embedding(t, self.nf))
        temb = next(modules)(activation(self.act, temb))
        h = x if self.centered else 2 * x - 1.0
        hs = [next(modules)(h)]
        for level in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = next(modules)(hs[-1], temb)
                if self.attn_levels[level]:
                    h = next(modules)(h)
                hs.append(h)
            if level != self.num_resolutions - 1:
                hs.append(next(modules)(hs[-1]))
        h = next(modules)(hs[-1], temb)
        h = next(modules)(h)
        h = next(modules)(h, temb)
        for level in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = next(modules)(torch.cat([h, hs.pop()], dim=1), temb)
            if self.attn_levels[level]:
                h = next(modules)(h)
            if level != 0:
                h = next(modules)(h)
        h = activation(self.act, next(modules)(h))
        return next(modules)(h)


@persistence.persistent_class
class NCSNpp(torch.nn.Module):
    """eps(x_t, t) of score-SDE's NCSN++ as TS-DPM's PF_deep; the arguments are its Model keys."""

    def __init__(self,
                 num_channels,                   # Model.num_channels: image channels.
                 image_size,                     # Model.image_size
                 nf,                             # Model.nf
                 ch_mult,                        # Model.ch_mult
                 num_res_blocks,                 # Model.num_res_blocks
                 attn_resolutions,               # Model.attn_resolutions
                 dropout,                        # Model.dropout
                 resamp_with_conv=True,          # Model.resamp_with_conv (ddpm blocks only)
                 nonlinearity='swish',           # Model.nonlinearity
                 conditional=True,               # Model.conditional: use the time embedding.
                 centered=True,                  # Model.centered
                 skip_rescale=True,              # Model.skip_rescale
                 resblock_type='biggan',         # Model.resblock_type: 'biggan' or 'ddpm'.
                 embedding_type='positional',    # Model.embedding_type: 'positional' or 'fourier'.
                 fourier_scale=16.0,             # Model.fourier_scale
                 progressive='none',             # Model.progressive: only 'none'.
                 progressive_input='none',       # Model.progressive_input: only 'none'.
                 fir=False,                      # Model.fir: only false.
                 ):
        super().__init__()
        activation(nonlinearity, torch.zeros([]))
        for key, value, allowed in (('resblock_type', resblock_type, ('biggan', 'ddpm')),
                                    ('embedding_type', embedding_type, ('positional', 'fourier')),
                                    ('progressive', progressive, ('none',)),
                                    ('progressive_input', progressive_input, ('none',)),
                                    ('fir', bool(fir), (False,))):
            if value not in allowed:
                raise ValueError(f'{key} {value!r} is not supported; expected one of {", ".join(map(str, allowed))}')
        self.act, self.nf, self.centered, self.conditional = nonlinearity, nf, bool(centered), bool(conditional)
        self.resblock_type, self.embedding_type = resblock_type, embedding_type
        self.num_res_blocks, self.num_resolutions = num_res_blocks, len(ch_mult)
        self.attn_levels = [res in [int(r) for r in attn_resolutions] for res in _resolutions(image_size, len(ch_mult))]
        temb_dim = 4 * nf
        if resblock_type == 'ddpm':
            block = lambda cin, cout=None: SDEResnetBlock(nonlinearity, cin, cout, temb_dim, dropout, True, skip_rescale)
        else:
            block = lambda cin, cout=None, **kw: SDEBigGANBlock(nonlinearity, cin, cout, temb_dim, dropout,
                                                                skip_rescale=skip_rescale, **kw)
        attn = lambda c: SDEAttnBlock(c, pp_groups(c), skip_rescale)
        modules = []
        if embedding_type == 'fourier':
            modules.append(FourierProjection(nf, fourier_scale))
        if self.conditional:
            modules += [torch.nn.Linear(2 * nf if embedding_type == 'fourier' else nf, temb_dim),
                        torch.nn.Linear(temb_dim, temb_dim)]
        modules.append(conv3x3(num_channels, nf))
        hs_c, in_ch = [nf], nf
        for level in range(self.num_resolutions):
            for _ in range(num_res_blocks):
                modules.append(block(in_ch, nf * ch_mult[level]))
                in_ch = nf * ch_mult[level]
                if self.attn_levels[level]:
                    modules.append(attn(in_ch))
                hs_c.append(in_ch)
            if level != self.num_resolutions - 1:
                modules.append(SDEDownsample(in_ch, resamp_with_conv) if resblock_type == 'ddpm'
                               else block(in_ch, down=True))
                hs_c.append(in_ch)
        modules += [block(in_ch), attn(in_ch), block(in_ch)]
        for level in reversed(range(self.num_resolutions)):
            for _ in range(num_res_blocks + 1):
                modules.append(block(in_ch + hs_c.pop(), nf * ch_mult[level]))
                in_ch = nf * ch_mult[level]
            if self.attn_levels[level]:
                modules.append(attn(in_ch))
            if level != 0:
                modules.append(SDEUpsample(in_ch, resamp_with_conv) if resblock_type == 'ddpm'
                               else block(in_ch, up=True))
        modules += [group_norm(in_ch, pp_groups(in_ch)), conv3x3(in_ch, num_channels)]
        self.all_modules = torch.nn.ModuleList(modules)

    def forward(self, x, t):
        modules = iter(self.all_modules)
        if self.embedding_type == 'fourier':
            temb = next(modules)(torch.log(t))
        else:
            temb = timestep_embedding(t, self.nf)
        if self.conditional:
            temb = next(modules)(temb)
            temb = next(modules)(activation(self.act, temb))
        else:
            temb = None
        h = x if self.centered else 2 * x - 1.0
        hs = [next(modules)(h)]
        resample = (lambda m, h: m(h)) if self.resblock_type == 'ddpm' else (lambda m, h: m(h, temb))
        for level in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = next(modules)(hs[-1], temb)
                if self.attn_levels[level]:
                    h = next(modules)(h)
                hs.append(h)
            if level != self.num_resolutions - 1:
                hs.append(resample(next(modules), hs[-1]))
        h = next(modules)(hs[-1], temb)
        h = next(modules)(h)
        h = next(modules)(h, temb)
        for level in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = next(modules)(torch.cat([h, hs.pop()], dim=1), temb)
            if self.attn_levels[level]:
                h = next(modules)(h)
            if level != 0:
                h = resample(next(modules), h)
        h = activation(self.act, next(modules)(h))
        return next(modules)(h)
