"""Training losses of EDM (Karras et al. 2022) for VP, VE and EDM preconditioning.

Each loss draws a noise level per image, optionally augments the images, adds Gaussian
noise and returns the weighted per-pixel squared error of the denoiser. The classes keep
EDM's names and constructor arguments, so network pickles that reference them load here
and pickles written here load in EDM.

Randomness comes from `rng` when given (an object with `rand(size)` and `randn(size)`
whose first dimension is the batch, such as `SampleRNG`), else from torch's global
generator as in EDM.
"""

import torch
from torch_utils import persistence

#----------------------------------------------------------------------------


class SampleRNG:
    """Per-image random numbers: row i of every draw comes from the generator seeded with seeds[i].

    An image's noise then depends only on its seed, not on the batch it was drawn in nor on
    the number of processes (compare EDM's StackedRandomGenerator in generate.py).
    """

    def __init__(self, seeds, device=torch.device('cpu')):
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        self.device = torch.device(device)

    def _draw(self, func, size):
        size = list(size)
        assert size[0] == len(self.generators), 'first dimension must be the batch'
        rows = [func(size[1:], generator=gen) for gen in self.generators]
        return torch.stack(rows).to(self.device)

    def rand(self, size):
        return self._draw(torch.rand, size)

    def randn(self, size):
        return self._draw(torch.randn, size)


def _randn(rng, size, device):
    return torch.randn(size, device=device) if rng is None else rng.randn(size)


def _rand(rng, size, device):
    return torch.rand(size, device=device) if rng is None else rng.rand(size)

#----------------------------------------------------------------------------


class _DenoisingLoss:
    """weight(sigma) * |D(y + n; sigma) - y|^2 with n ~ N(0, sigma^2), per pixel (EDM eq. 2, 8).

    With input_pertub = gamma > 0 (DDPM-IP, Ning et al. 2023), the network sees
    y + sigma (n + gamma n') for a second draw n' ~ N(0, I) while the target stays y; gamma 0
    draws no n' and is EDM's loss exactly.
    """
    input_pertub = 0.0  # class default: losses pickled before this option existed load with gamma 0

    def sample_sigma(self, rng, n, device):
        raise NotImplementedError

    def weight(self, sigma):
        return 1 / sigma ** 2

    def __call__(self, net, images, labels=None, augment_pipe=None, rng=None):
        sigma = self.sample_sigma(rng, images.shape[0], images.device)
        if augment_pipe is None:
            y, augment_labels = images, None
        else:
            y, augment_labels = augment_pipe(images) if rng is None else augment_pipe(images, rng=rng)
        n = _randn(rng, y.shape, y.device)
        if self.input_pertub:
            n = n + self.input_pertub * _randn(rng, y.shape, y.device)
        noise = n * sigma
        D_yn = net(y + noise, sigma, labels, augment_labels=augment_labels)
        return self.weight(sigma) * ((D_yn - y) ** 2)


@persistence.persistent_class
class VPLoss(_DenoisingLoss):
    """Variance preserving (Song et al. 2021): t ~ U(epsilon_t, 1), sigma(t) of the linear beta schedule."""

    def __init__(self, beta_d=19.9, beta_min=0.1, epsilon_t=1e-5, input_pertub=0.0):
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.epsilon_t = epsilon_t
        self.input_pertub = float(input_pertub)

    def sigma(self, t):
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()

    def sample_sigma(self, rng, n, device):
        u = _rand(rng, [n, 1, 1, 1], device)
        return self.sigma(1 + u * (self.epsilon_t - 1))


@persistence.persistent_class
class VELoss(_DenoisingLoss):
    """Variance exploding (Song et al. 2021): sigma log-uniform in [sigma_min, sigma_max]."""

    def __init__(self, sigma_min=0.02, sigma_max=100, input_pertub=0.0):
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.input_pertub = float(input_pertub)

    def sample_sigma(self, rng, n, device):
        u = _rand(rng, [n, 1, 1, 1], device)
        return self.sigma_min * ((self.sigma_max / self.sigma_min) ** u)


@persistence.persistent_class
class EDMLoss(_DenoisingLoss):
    """EDM: ln(sigma) ~ N(P_mean, P_std^2), weight (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2."""

    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5, input_pertub=0.0):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data
        self.input_pertub = float(input_pertub)

    def sample_sigma(self, rng, n, device):
        return (_randn(rng, [n, 1, 1, 1], device) * self.P_std + self.P_mean).exp()

    def weight(self, sigma):
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2

#----------------------------------------------------------------------------
