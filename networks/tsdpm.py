"""TS-DPM's DDPM backbones (Mingxiao-Li/TS-DPM) built from its config files, and as toolkit denoisers.

TS-DPM's config/*.yml (parsed into a nested dict) has these sections; the keys read here are
the ones its code reads, with the same names:

- Schedule: `type` ('linear', 'quad' or 'cosine'), `beta_start`, `beta_end` (linear and quad
  only), `diffusion_step` (T, 1000 in every published config).
- Dataset: `image_size`, `channels` (the sampled image's shape; must agree with the Model's).
- Model: `struc` picks the backbone, the other keys are its constructor's:
  - `DDIM` (ermongroup/ddim's Model, networks/ddim.py): type ('simple' or 'bayesian'),
    image_size, in_channels, out_ch, ch, ch_mult, num_res_blocks, attn_resolutions (pixels),
    dropout, resamp_with_conv.
  - `iDDPM` (improved-diffusion's UNetModel, networks/iddpm.py): in_channels, model_channels,
    out_channels (C or 2C; only the first C are eps), num_res_blocks, attention_resolutions
    (downsampling factors), dropout, channel_mult, dims (2), conv_resample, use_checkpoint
    (ignored: inference only), num_heads, num_heads_upsample (-1 = num_heads, improved-
    diffusion's meaning; TS-DPM's copy would crash on -1), use_scale_shift_norm.
  - `PF` (score-SDE's DDPM, networks/score_sde.py): image_size, num_channels, nf, ch_mult,
    num_res_blocks, attn_resolutions, dropout, nonlinearity, resamp_with_conv, conditional
    (must be true: TS-DPM's copy fails without it), centered.
  - `PF_deep` (score-SDE's NCSN++): the PF keys plus skip_rescale, resblock_type, progressive,
    progressive_input, embedding_type, init_scale, combine_method, fir, fir_kernel (and
    fourier_scale with embedding_type 'fourier'); progressive/progressive_input 'none' and fir
    false are supported (the published pf_deep_cifar10).
Keys the backbones do not use (Train, Optim, Sample, Model.var_type, ...) are ignored.

Every backbone is called as TS-DPM calls it, `eps = net(x_t, t)` with t the raw timestep
(float, possibly fractional), never rescaled. `TSDPMPrecond` wraps one as a discrete-time
denoiser D(x; sigma) for every sampler of the toolkit, as ADMPrecond does for guided-diffusion.
"""

import dataclasses
import math
import os
import re
from typing import Callable

import numpy as np
import torch
from torch_utils import persistence
from safeload import state

from networks import ddim, edm, iddpm, score_sde

SCHEDULES = ('linear', 'quad', 'cosine')
MAX_STEPS = 100000              # Largest Schedule.diffusion_step accepted.
MAX_CONFIG_BYTES = 1 << 20      # A config file larger than this is refused.


class TSDPMConfigError(ValueError):
    """A TS-DPM config that cannot give a backbone; the message is one line naming the key."""


class TSDPMCheckpointError(ValueError):
    """A checkpoint that does not fit its config; the message is one line naming the tensor."""

#----------------------------------------------------------------------------
# Reading config values (each check names Section.key).


def _section(config, name):
    if not isinstance(config, dict):
        raise TSDPMConfigError(f'the config is not a mapping of sections (found {type(config).__name__})')
    value = config.get(name)
    if value is None:
        raise TSDPMConfigError(f'config section "{name}" is missing')
    if not isinstance(value, dict):
        raise TSDPMConfigError(f'config section "{name}" is not a mapping')
    return value


class _Reader:
    """Typed, bounded values of one config section."""

    def __init__(self, config, section):
        self.name = section
        self.values = _section(config, section)

    def raw(self, key):
        if key not in self.values:
            raise TSDPMConfigError(f'config key {self.name}.{key} is missing')
        return self.values[key]

    def fail(self, key, what):
        raise TSDPMConfigError(f'config key {self.name}.{key} must be {what}, got {self.values.get(key)!r}')

    def int(self, key, lo=1, hi=4096):
        value = self.raw(key)
        if type(value) is not int or not lo <= value <= hi:
            self.fail(key, f'an integer in {lo}..{hi}')
        return value

    def ints(self, key, lo=1, hi=4096, max_len=16, min_len=0):
        value = self.raw(key)
        if not isinstance(value, (list, tuple)) or not min_len <= len(value) <= max_len \
                or not all(type(v) is int and lo <= v <= hi for v in value):
            self.fail(key, f'a list of {min_len}..{max_len} integers in {lo}..{hi}')
        return [int(v) for v in value]

    def float(self, key, lo, hi):
        value = self.raw(key)
        if type(value) not in (int, float) or not lo <= value <= hi:
            self.fail(key, f'a number in [{lo:g}, {hi:g}]')
        return float(value)

    def bool(self, key):
        value = self.raw(key)
        if type(value) is not bool:
            self.fail(key, 'true or false')
        return value

    def choice(self, key, choices):
        value = self.raw(key)
        if not isinstance(value, str) or value not in choices:
            self.fail(key, 'one of ' + ', '.join(repr(c) for c in choices))
        return value


def _image_shape(config):
    data = _Reader(config, 'Dataset')
    return data.int('image_size', 1, 4096), data.int('channels', 1, 64)


def _agree(model_key, model_value, dataset_key, dataset_value):
    if model_value != dataset_value:
        raise TSDPMConfigError(f'config key Model.{model_key} ({model_value}) differs from Dataset.{dataset_key} '
                               f'({dataset_value})')

#----------------------------------------------------------------------------
# The four backbones: config -> constructor arguments.


def _ddim_arch(config):
    m = _Reader(config, 'Model')
    size, channels = _image_shape(config)
    arch = dict(model_type=m.choice('type', ('simple', 'bayesian')), resolution=m.int('image_size'),
                in_channels=m.int('in_channels', 1, 64), out_ch=m.int('out_ch', 1, 64), ch=m.int('ch'),
                ch_mult=m.ints('ch_mult', 1, 64, min_len=1), num_res_blocks=m.int('num_res_blocks', 1, 64),
                attn_resolutions=m.ints('attn_resolutions'), dropout=m.float('dropout', 0, 1),
                resamp_with_conv=m.bool('resamp_with_conv'))
    _agree('in_channels', arch['in_channels'], 'channels', channels)
    _agree('out_ch', arch['out_ch'], 'channels', channels)
    _agree('image_size', arch['resolution'], 'image_size', size)
    return arch


def _iddpm_arch(config):
    m = _Reader(config, 'Model')
    _, channels = _image_shape(config)
    if m.int('dims', 1, 3) != 2:
        m.fail('dims', '2 (images)')
    m.bool('use_checkpoint')  # read as the original does; gradient checkpointing has no effect on sampling
    arch = dict(in_channels=m.int('in_channels', 1, 64), model_channels=m.int('model_channels'),
                out_channels=m.int('out_channels', 1, 128), num_res_blocks=m.int('num_res_blocks', 1, 64),
                attention_resolutions=m.ints('attention_resolutions'), dropout=m.float('dropout', 0, 1),
                channel_mult=m.ints('channel_mult', 1, 64, min_len=1), conv_resample=m.bool('conv_resample'),
                num_heads=m.int('num_heads', 1, 1024), num_heads_upsample=m.int('num_heads_upsample', -1, 1024),
                use_scale_shift_norm=m.bool('use_scale_shift_norm'))
    if arch['num_heads_upsample'] == 0:
        m.fail('num_heads_upsample', '-1 or a positive integer')
    _agree('in_channels', arch['in_channels'], 'channels', channels)
    if arch['out_channels'] not in (channels, 2 * channels):
        m.fail('out_channels', f'{channels} or {2 * channels} (eps, or eps and the variance output)')
    if arch['channel_mult'][0] != 1:
        m.fail('channel_mult', 'a list starting with 1 (the output convolution takes model_channels inputs)')
    return arch


def _pf_common(m, config):
    size, channels = _image_shape(config)
    arch = dict(image_size=m.int('image_size'), num_channels=m.int('num_channels', 1, 64), nf=m.int('nf'),
                ch_mult=m.ints('ch_mult', 1, 64, min_len=1), num_res_blocks=m.int('num_res_blocks', 1, 64),
                attn_resolutions=m.ints('attn_resolutions'), dropout=m.float('dropout', 0, 1),
                resamp_with_conv=m.bool('resamp_with_conv'),
                nonlinearity=m.choice('nonlinearity', score_sde.ACTIVATIONS + ('ELU', 'ReLU', 'LReLU', 'Swish')).lower(),
                centered=m.bool('centered'))
    _agree('num_channels', arch['num_channels'], 'channels', channels)
    _agree('image_size', arch['image_size'], 'image_size', size)
    return arch


def _pf_arch(config):
    m = _Reader(config, 'Model')
    arch = _pf_common(m, config)
    if not m.bool('conditional'):
        m.fail('conditional', 'true (TS-DPM\'s PF model has no unconditional form)')
    return arch


def _pf_deep_arch(config):
    m = _Reader(config, 'Model')
    arch = _pf_common(m, config)
    arch.update(conditional=m.bool('conditional'), skip_rescale=m.bool('skip_rescale'),
                resblock_type=m.choice('resblock_type', ('biggan', 'ddpm')),
                embedding_type=m.choice('embedding_type', ('positional', 'fourier')),
                progressive=m.choice('progressive', ('none',)), progressive_input=m.choice('progressive_input', ('none',)))
    m.float('init_scale', 0, 1e6)           # initialisation only
    m.choice('combine_method', ('sum', 'cat'))  # used by progressive_input only
    if m.bool('fir'):
        m.fail('fir', 'false (FIR resampling is not supported)')
    m.ints('fir_kernel', 0, 1000, max_len=16)
    if arch['embedding_type'] == 'fourier':
        arch['fourier_scale'] = m.float('fourier_scale', 0, 1e6)
    return arch


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One TS-DPM `Model.struc`: its class and the reading of its constructor arguments from a config."""
    cls: type
    arch: Callable              # config -> constructor kwargs (TSDPMConfigError for a bad config)
    channel_keys: tuple         # (input-channel key, output-channel key, width keys) for error messages

    def __call__(self, config):
        """The backbone of `config`, built on the current default device."""
        return _construct(self.cls, self.arch(config))


BACKBONES = dict(
    DDIM=Backbone(ddim.DDIMModel, _ddim_arch, ('Model.in_channels', 'Model.out_ch', 'Model.ch or Model.ch_mult')),
    iDDPM=Backbone(iddpm.IDDPMUNet, _iddpm_arch,
                   ('Model.in_channels', 'Model.out_channels', 'Model.model_channels or Model.channel_mult')),
    PF=Backbone(score_sde.ScoreSDEDDPM, _pf_arch,
                ('Model.num_channels', 'Model.num_channels', 'Model.nf, Model.ch_mult, Model.num_res_blocks or '
                 'Model.attn_resolutions')),
    PF_deep=Backbone(score_sde.NCSNpp, _pf_deep_arch,
                     ('Model.num_channels', 'Model.num_channels', 'Model.nf, Model.ch_mult, Model.num_res_blocks or '
                      'Model.attn_resolutions')),
)


def struc_of(config):
    """The config's Model.struc; TSDPMConfigError unless it is one of BACKBONES."""
    struc = _Reader(config, 'Model').raw('struc')
    if struc not in BACKBONES:
        raise TSDPMConfigError(f'config key Model.struc is {struc!r}; expected one of {", ".join(BACKBONES)}')
    return struc


def backbone_arch(config):
    """(struc, constructor kwargs) of the config's backbone; TSDPMConfigError naming a bad key."""
    struc = struc_of(config)
    return struc, BACKBONES[struc].arch(config)


def _construct(cls, arch):
    try:
        return cls(**arch)
    except Exception as err:  # e.g. widths that GroupNorm(32) cannot divide
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TSDPMConfigError(f'the Model section does not give a valid {cls.__name__}: {text[:200]}') from None


def build_backbone(config):
    """The backbone of a parsed TS-DPM config (random weights, train mode, CPU or the default device)."""
    struc, arch = backbone_arch(config)
    return _construct(BACKBONES[struc].cls, arch)

#----------------------------------------------------------------------------
# Schedules.


def beta_schedule(kind, num_steps, beta_start=None, beta_end=None):
    """float64 numpy betas [T] as TS-DPM's get_schedule builds them (before its float32 cast)."""
    if type(num_steps) is not int or not 1 <= num_steps <= MAX_STEPS:
        raise TSDPMConfigError(f'config key Schedule.diffusion_step must be an integer in 1..{MAX_STEPS}, got {num_steps!r}')
    if kind == 'cosine':
        # iDDPM Eq. 17: beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999), abar(t) = cos^2((t + 0.008)/1.008 pi/2).
        abar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), 0.999) for i in range(num_steps)])
    if kind not in ('linear', 'quad'):
        raise TSDPMConfigError(f'config key Schedule.type is {kind!r}; expected one of {", ".join(SCHEDULES)}')
    for key, value in (('beta_start', beta_start), ('beta_end', beta_end)):
        if type(value) not in (int, float) or not 0 < value < 1:
            raise TSDPMConfigError(f'config key Schedule.{key} must be a number in (0, 1) for a {kind} schedule, got {value!r}')
    if kind == 'linear':
        return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    return np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_steps, dtype=np.float64) ** 2


def schedule_of(config):
    """dict(schedule, beta_start, beta_end, diffusion_steps) of the config's Schedule section."""
    s = _Reader(config, 'Schedule')
    kind = s.choice('type', SCHEDULES)
    steps = s.int('diffusion_step', 1, MAX_STEPS)
    start = end = None
    if kind != 'cosine':
        start, end = s.float('beta_start', 0, 1), s.float('beta_end', 0, 1)
    beta_schedule(kind, steps, start, end)  # range checks
    return dict(schedule=kind, beta_start=start, beta_end=end, diffusion_steps=steps)

#----------------------------------------------------------------------------
# The denoiser.


@persistence.persistent_class
class TSDPMPrecond(torch.nn.Module):
    """A TS-DPM backbone as a discrete-time VP denoiser D(x; sigma), like networks.edm.ADMPrecond.

    The backbone predicts eps of x_t = sqrt(abar_t) y + sqrt(1 - abar_t) n at the timesteps
    t = 0..T-1, abar_t = prod_{s <= t} (1 - beta_s) (float64 here). In EDM's terms x = x_t /
    sqrt(abar_t) = y + sigma_t n, sigma_t = sqrt(1 / abar_t - 1): D rounds sigma to the nearest
    sigma_t, feeds x_t = x / sqrt(1 + sigma^2) and the timestep t (as a float, TS-DPM's time
    input), and returns x - sigma eps. `eps(x_t, t)` calls the backbone directly, for samplers
    that work in TS-DPM's own terms (fractional t included).
    """

    def __init__(self,
                 img_resolution,                 # Image resolution (Dataset.image_size).
                 img_channels,                   # Image channels (Dataset.channels).
                 struc,                          # Model.struc: 'DDIM', 'iDDPM', 'PF' or 'PF_deep'.
                 arch,                           # The backbone's constructor arguments (backbone_arch()).
                 schedule='linear',              # Schedule.type: 'linear', 'quad' or 'cosine'.
                 beta_start=0.0001,              # Schedule.beta_start (linear, quad).
                 beta_end=0.02,                  # Schedule.beta_end (linear, quad).
                 diffusion_steps=1000,           # Schedule.diffusion_step: T.
                 label_dim=0,                    # Always 0: the backbones are unconditional.
                 ):
        super().__init__()
        if struc not in BACKBONES:
            raise ValueError(f'unknown struc {struc!r}; expected one of {", ".join(BACKBONES)}')
        if label_dim:
            raise ValueError('TS-DPM backbones are unconditional (label_dim must be 0)')
        self.img_resolution, self.img_channels = int(img_resolution), int(img_channels)
        self.label_dim, self.use_fp16, self.learn_sigma = 0, False, False
        self.struc, self.noise_schedule, self.diffusion_steps = struc, schedule, int(diffusion_steps)
        betas = beta_schedule(schedule, self.diffusion_steps, beta_start, beta_end)
        alpha_bar = np.cumprod(1.0 - betas)
        sigmas = np.sqrt(1 / alpha_bar - 1)
        self.register_buffer('betas', torch.as_tensor(betas, dtype=torch.float64), persistent=False)
        self.register_buffer('alpha_bar', torch.as_tensor(alpha_bar, dtype=torch.float64), persistent=False)
        self.register_buffer('sigmas', torch.as_tensor(sigmas, dtype=torch.float64), persistent=False)
        self.sigma_min, self.sigma_max = float(sigmas[0]), float(sigmas[-1])
        self.model = BACKBONES[struc].cls(**arch)

    def eps(self, x_t, t):
        """The backbone's eps [N, C, H, W] float32 for VP states x_t at raw timesteps t ([N] or scalar)."""
        x_t = x_t.to(torch.float32)
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        return self.model(x_t, t).to(torch.float32)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, return_var_values=False):
        """D(x; sigma) [N, C, H, W] float32; with return_var_values, (D, None) (no learned variance)."""
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        t = self.round_sigma(sigma, return_index=True).reshape(-1)
        eps = self.eps(x / (sigma ** 2 + 1).sqrt(), t)
        denoised = x - sigma * eps
        return (denoised, None) if return_var_values else denoised

    def round_sigma(self, sigma, return_index=False):
        """The nearest sigma_t (by |sigma - sigma_t|, float64) to each element of sigma, or its
        timestep t, in sigma's shape."""
        return edm.nearest_grid_sigma(self.sigmas, sigma, return_index)


def precond_kwargs(config):
    """TSDPMPrecond's constructor arguments for a parsed TS-DPM config."""
    size, channels = _image_shape(config)
    struc, arch = backbone_arch(config)
    return dict(img_resolution=size, img_channels=channels, struc=struc, arch=arch, **schedule_of(config))


def _checked_precond_kwargs(config):
    """precond_kwargs(config), after building the backbone on the meta device (so that a bad
    Model section is named as such)."""
    kwargs = precond_kwargs(config)
    with torch.device('meta'):
        _construct(BACKBONES[kwargs['struc']].cls, kwargs['arch'])
    return kwargs


def build_precond(config):
    """A TSDPMPrecond with random weights for a parsed TS-DPM config."""
    return _construct(TSDPMPrecond, _checked_precond_kwargs(config))

#----------------------------------------------------------------------------
# Configs and checkpoints.


def read_config(path):
    """The parsed TS-DPM config yml at `path` (yaml.safe_load, at most MAX_CONFIG_BYTES)."""
    import yaml  # pylint: disable=import-outside-toplevel
    try:
        data = state.read_bounded(path, MAX_CONFIG_BYTES, f'config {path}', what='a TS-DPM config')
    except (state.StateFileError, FileNotFoundError) as err:
        raise TSDPMConfigError(str(err) if isinstance(err, state.StateFileError) else
                               f'cannot read config {path}: {err.strerror or err}') from None
    try:
        config = yaml.safe_load(data)
    except yaml.YAMLError as err:
        text = str(err).replace('\n', ' ')
        raise TSDPMConfigError(f'config {path} is not valid YAML ({text[:160]})') from None
    if not isinstance(config, dict):
        raise TSDPMConfigError(f'config {path} is not a mapping of sections')
    return config


# Per struc: (tensor-name pattern, config key, applies to missing/unexpected names only?).
_HINTS = dict(
    DDIM=[(r'^logvar$', 'Model.type', False), (r'^temb\.', 'Model.ch', False),
          (r'(^|\.)attn(_1)?\.', 'Model.attn_resolutions', True), (r'\.(down|up)sample\.', 'Model.resamp_with_conv', True),
          (r'^(down|up)\.\d+\.block\.\d+\.', 'Model.ch_mult or Model.num_res_blocks', True)],
    iDDPM=[(r'^time_embed\.', 'Model.model_channels', False),
           (r'\.(qkv|proj_out|norm)\.', 'Model.attention_resolutions', True), (r'\.(op|conv)\.', 'Model.conv_resample', True),
           (r'\.emb_layers\.', 'Model.use_scale_shift_norm or Model.model_channels', False)],
    PF=[(r'^all_modules\.[01]\.', 'Model.nf', False)],
    PF_deep=[(r'^all_modules\.[012]\.', 'Model.nf, Model.embedding_type or Model.conditional', False)],
)


def _hint(struc, name, expected, shapes=None):
    """The config key(s) that most likely determine tensor `name` of a `struc` backbone whose
    state dict is `expected`; `shapes` = (expected shape, found shape) for a shape mismatch."""
    in_key, out_key, width_keys = BACKBONES[struc].channel_keys
    convs = [k for k, t in expected.items() if t.ndim == 4]
    if shapes is not None and convs:
        want, found = shapes
        if name == convs[0] and len(want) == len(found) == 4 and want[1] != found[1]:
            return in_key
        if name in (convs[-1], convs[-1][:-len('weight')] + 'bias') and want[:1] != found[:1]:
            return out_key
    for pattern, key, names_only in _HINTS[struc]:
        if re.search(pattern, name) and not (names_only and shapes is not None):
            return key
    return width_keys


def check_state_dict(struc, expected, state, source='checkpoint'):
    """Raise TSDPMCheckpointError (one line naming a tensor and its config key) unless `state`
    has exactly the names and shapes of `expected` (a state dict, on any device, meta included)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if unexpected and all(k.startswith('module.') for k in state):
        raise TSDPMCheckpointError(f'{source}: tensor "{unexpected[0]}" has a "module." prefix (saved from a '
                                   f'DataParallel wrapper); TS-DPM loads {struc} state dicts without it')
    if missing:
        more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
        raise TSDPMCheckpointError(f'{source}: tensor "{missing[0]}"{more} of the {struc} backbone is missing; check '
                                   f'{_hint(struc, missing[0], expected)}')
    if unexpected:
        more = f' (and {len(unexpected) - 1} more)' if len(unexpected) > 1 else ''
        raise TSDPMCheckpointError(f'{source}: tensor "{unexpected[0]}"{more} is not in the {struc} backbone the '
                                   f'config describes; check {_hint(struc, unexpected[0], expected)}')
    for name, tensor in expected.items():
        value = state[name]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise TSDPMCheckpointError(f'{source}: tensor "{name}" is not a floating-point tensor')
        if tuple(value.shape) != tuple(tensor.shape):
            raise TSDPMCheckpointError(f'{source}: tensor "{name}" has shape {list(value.shape)}, the config gives '
                                       f'{list(tensor.shape)}; check {_hint(struc, name, expected, (tuple(tensor.shape), tuple(value.shape)))}')


def _checked_state(struc, arch, path):
    """The state dict of checkpoint `path` (tensors still mapped from the file), after checking it
    against the backbone of `arch` built on the meta device."""
    from safeload import checkpoints  # pylint: disable=import-outside-toplevel
    source = os.path.basename(str(path)) or str(path)
    with torch.device('meta'):
        expected = _construct(BACKBONES[struc].cls, arch).state_dict()
    try:
        state = checkpoints.read_listed_state_dict(path)
    except checkpoints.CheckpointError as err:
        raise TSDPMCheckpointError(str(err)) from None
    check_state_dict(struc, expected, state, source)
    return state


def load_backbone(path, config):
    """The backbone of `config` holding the weights of TS-DPM checkpoint `path` (eval mode, CPU).

    The file is read with weights_only=True as a dict, or a list whose first element is the
    dict (as TS-DPM loads it). Nothing is allocated before its tensor names and shapes match
    the config's backbone, built on the meta device first."""
    struc, arch = backbone_arch(config)
    state = _checked_state(struc, arch, path)
    net = _construct(BACKBONES[struc].cls, arch)
    with torch.no_grad():
        net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False)


def load_precond(path, config):
    """A TSDPMPrecond (eval mode, CPU) for `config` holding the weights of checkpoint `path`."""
    kwargs = _checked_precond_kwargs(config)  # a bad config fails before the file is read
    state = _checked_state(kwargs['struc'], kwargs['arch'], path)
    net = _construct(TSDPMPrecond, kwargs)
    with torch.no_grad():
        net.model.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False)
