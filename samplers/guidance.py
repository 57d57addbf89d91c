"""Classifier guidance (Dhariwal & Nichol 2021, Algorithms 1 and 2), as guided-diffusion computes it.

`ClassifierGuidance` holds a noisy classifier and the scale s; `gradient` is guided-diffusion's
cond_fn: g = s * d/dx_t log softmax(classifier(x_t, t))[y], taken on the VP state x_t, with t
the timestep the model itself is given (the original timestep under respacing). The rules:

- DDPM (Algorithm 1, guided-diffusion's condition_mean): the posterior mean moves by Sigma g,
  Sigma the variance of the step; samplers/discrete.py applies it (`guidance=`).
- DDIM (Algorithm 2, condition_score): eps' = eps - sqrt(1 - abar) g on the eps re-derived from
  the clipped x0, and x0' from eps' (not clipped again); also in samplers/discrete.py.
- Every other solver: the same score rule as a denoiser wrapper (`guided`), D' = x - sigma eps',
  so DPM-Solver, DEIS, PNDM, Euler and Heun on an ADM network compose with it.

Mode 'adm-es' reproduces forever208/ADM-ES's classifier_sample.py, whose DDIM divides the guided
eps by the epsilon scaler a second time (its _predict_xstart_from_eps divides on every call): the
model's eps ends up divided by lambda^2 and the guidance term by lambda. 'clean' (the default)
divides the model's eps once, as the paper and the unguided sampler do. The modes agree for DDPM
and whenever lambda = 1.
"""

import dataclasses
import os
from typing import Optional

import click
import torch

from networks import adm
from networks import classifier as noisy_classifier
from torch_utils import cli
from torch_utils import distributed as dist

from .denoisers import StepDependent, at_step
from .fast import FastModule

GUIDANCE_MODES = ('clean', 'adm-es')


@dataclasses.dataclass(frozen=True)
class ClassifierGuidance:
    classifier: torch.nn.Module         # logits [N, K] of (x_t float32 [N, C, H, W], timesteps [N]).
    scale: float = 1.0                  # guided-diffusion's --classifier_scale.
    timestep: Optional[object] = None   # sigma [N] -> the classifier's timesteps [N]; set by bind().
    mode: str = 'clean'                 # 'clean' or 'adm-es' (see the module docstring).
    eps_scalers: tuple = ()             # The epsilon scaler of each solver step ('adm-es' needs them).
    record: Optional[dict] = None       # JSON description for options records (what decides the pixels).

    @property
    def num_classes(self):
        return int(self.classifier.num_classes)

    def bind(self, net, eps_scalers=()):
        """This guidance for network `net`: the classifier gets the timestep `net` is given
        (ADMPrecond's c_noise: the nearest original timestep, rescaled as the model's)."""
        return dataclasses.replace(self, timestep=lambda sigma: net.coefficients(sigma)[3],
                                   eps_scalers=tuple(float(s) for s in eps_scalers))

    def extra_scaler(self, i):
        """What the guided DDIM eps of step i is divided by once more (1 except in mode 'adm-es')."""
        return self.eps_scalers[i] if self.mode == 'adm-es' and self.eps_scalers else 1.0

    def gradient(self, x_t, sigma, class_labels):
        """s * grad_{x_t} log p(y | x_t) [N, C, H, W] float64 for one-hot labels y, each sample's own."""
        y = class_labels.argmax(dim=1)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x_t.device).expand(x_t.shape[0])
        with torch.enable_grad():
            x_in = x_t.detach().to(torch.float32).requires_grad_(True)
            logits = self.classifier(x_in, self.timestep(sigma))
            selected = logits.to(torch.float32).log_softmax(dim=-1)[torch.arange(len(y), device=y.device), y]
            grad, = torch.autograd.grad(selected.sum(), x_in)
        return grad.to(torch.float64) * self.scale


def condition_score(x_t, x0, abar, g, extra_scaler=1.0):
    """guided-diffusion's condition_score on the VP state: x0' from eps' = (eps - sqrt(1 - abar) g) / extra,
    eps = (x_t / sqrt(abar) - x0) / sqrt(1 / abar - 1); abar per sample, broadcastable to x_t."""
    inv_root = abar.rsqrt()
    root_m1 = (1 / abar - 1).sqrt()
    eps = (x_t * inv_root - x0) / root_m1
    eps = (eps - (1 - abar).sqrt() * g) / extra_scaler
    return x_t * inv_root - root_m1 * eps


class _GuidedSteps(StepDependent):
    def __init__(self, denoiser, guidance):
        self.denoiser = denoiser
        self.guidance = guidance

    def at_step(self, i):
        return guided(at_step(self.denoiser, i), self.guidance)

    def __call__(self, x, sigma, class_labels=None):
        raise TypeError('this guided denoiser depends on the solver step; call at_step(i) first')


def guided(denoiser, guidance):
    """`denoiser` with classifier guidance by the score rule: D' = D + sigma sqrt(1 - abar) g,
    abar = 1 / (1 + sigma^2) and g taken at x_t = x sqrt(abar) (the same shift of eps as DDIM's).
    The class labels reach the classifier always and the model as the model takes them."""
    if isinstance(denoiser, StepDependent):
        return _GuidedSteps(denoiser, guidance)

    def guided_denoiser(x, sigma, class_labels=None):
        denoised = denoiser(x, sigma, class_labels).to(torch.float64)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0]).reshape(-1, 1, 1, 1)
        abar = 1 / (1 + sigma ** 2)
        x_t = x.to(torch.float64) * abar.sqrt()
        g = guidance.gradient(x_t, sigma.flatten(), class_labels)
        return condition_score(x_t, denoised, abar, g)
    return guided_denoiser


def load_guidance(path_or_url, flags, scale=1.0, mode='clean', device='cpu'):
    """ClassifierGuidance (with its JSON `record`) for a guided-diffusion classifier checkpoint and
    its checked flags (networks.classifier.classifier_flags): read weights-only, on `device`, run
    under fp16 autocast on CUDA when --classifier_use_fp16 (guided-diffusion's convert_to_fp16).
    Raises networks.adm.ADMError (one line) for a file that does not fit the flags."""
    device = torch.device(device)
    net = noisy_classifier.load_classifier(path_or_url, flags).requires_grad_(False).to(device)
    if flags.classifier_use_fp16 and device.type == 'cuda':
        wrapped = FastModule(net, autocast_dtype=torch.float16, device_type='cuda')
        wrapped.num_classes, wrapped.img_resolution = net.num_classes, net.img_resolution
        net = wrapped
    if mode not in GUIDANCE_MODES:
        raise adm.ADMError(f'guidance mode must be one of {"|".join(GUIDANCE_MODES)}, not "{mode}"')
    source = os.path.abspath(path_or_url) if os.path.exists(path_or_url) else path_or_url
    record = dict(classifier_path=source, classifier_flags=dict(flags), classifier_scale=float(scale), guidance_mode=mode)
    return ClassifierGuidance(net, scale=float(scale), mode=mode, record=record)


def guidance_from_options(classifier, classifier_scale, classifier_flags, image_size, device='cpu'):
    """ClassifierGuidance of generate.py's and exposure.py's --classifier PATH, --classifier_scale
    S (None: 1) and --classifier-flags TEXT for a network of `image_size`, or None without
    --classifier; networks.adm.ADMError (one line) for what cannot be used. Rank 0 reads first."""
    if classifier is None:
        if classifier_scale is not None or classifier_flags is not None:
            raise adm.ADMError('--classifier_scale and --classifier-flags need --classifier PATH (a guided-diffusion classifier)')
        return None
    flags = noisy_classifier.parse_classifier_flags(classifier_flags, image_size)
    scale = 1.0 if classifier_scale is None else classifier_scale
    return dist.leader_first(lambda: load_guidance(classifier, flags, scale, device=device), adm.ADMError)


def guidance_click_options(fn):
    """generate.py's and exposure.py's classifier-guidance options (click)."""
    options = [
        click.option('--classifier', help='Classifier guidance: a guided-diffusion classifier .pt (ADM networks; docs/adm.md)', metavar='PATH|URL', type=str, default=None),
        click.option('--classifier_scale', help='Guidance scale  [default: 1]', metavar='FLOAT', type=cli.FLOAT, default=None),
        click.option('--classifier-flags', 'classifier_flags', help='The classifier\'s --classifier_* flags  [default: guided-diffusion\'s]', metavar='FLAGS', type=str, default=None),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn
