"""Denoiser wrappers: what changes the model's output, kept out of the solvers.

A denoiser is any callable D(x, sigma, class_labels) -> x0_hat where x is [N, C, H, W] and
sigma is [N] (one level per sample) or a 0-dim tensor shared by the batch, which is how EDM
calls its networks. All preconditioning lives inside D (EDM's `EDMPrecond.forward`).

A wrapper whose effect depends on the solver step subclasses `StepDependent`; solvers ask
it for the plain denoiser of step i with `at_step(denoiser, i)`.
"""

import torch


class StepDependent:
    """A denoiser wrapper that is specialised per solver step."""

    def at_step(self, i):
        raise NotImplementedError


def at_step(denoiser, i):
    """The denoiser to use for every evaluation of solver step i."""
    return denoiser.at_step(i) if isinstance(denoiser, StepDependent) else denoiser


def eps_scalers(num_steps, b=1.0, k=0.0):
    """lambda_i = b + k (N - 1 - i) for steps i = 0..N-1 (arXiv 2308.15321, Eq. 13 in sigma form)."""
    return [b + k * (num_steps - 1 - i) for i in range(num_steps)]


def eps_scaled(denoiser, scaler):
    """D'(x) = x - (x - D(x)) / scaler: the epsilon prediction divided by `scaler`."""
    if scaler == 1:
        return denoiser
    weight = 1 / scaler

    def scaled(x, sigma, class_labels=None):
        denoised = denoiser(x, sigma, class_labels)
        return x.lerp(denoised.to(x.dtype), weight)
    return scaled


class EpsilonScaling(StepDependent):
    """Epsilon scaling (arXiv 2308.15321): every evaluation of step i uses eps / lambda_i."""

    def __init__(self, denoiser, scalers):
        self.denoiser = denoiser
        self.scalers = [float(s) for s in scalers]

    def at_step(self, i):
        return eps_scaled(self.denoiser, self.scalers[i])

    def __call__(self, x, sigma, class_labels=None):
        raise TypeError('EpsilonScaling depends on the solver step; call at_step(i) first')


def with_epsilon_scaling(denoiser, num_steps, b=1.0, k=0.0):
    """`denoiser` wrapped with epsilon scaling, or unchanged when every lambda_i is 1."""
    scalers = eps_scalers(num_steps, b, k)
    if all(s == 1 for s in scalers):
        return denoiser
    return EpsilonScaling(denoiser, scalers)


def network_denoiser(net):
    """The denoiser of an EDM network: its forward, returning float64 (EDM casts at this point)."""
    def denoise(x, sigma, class_labels=None):
        return net(x, sigma, class_labels).to(torch.float64)
    return denoise


class VarianceTap:
    """The denoiser of an ADM network (network_denoiser plus what DDPM needs): returns D as
    float64 and keeps the model's variance output v of its latest call in `var_values`
    (None for models without learned sigma). Wrappers around it see a plain denoiser."""

    def __init__(self, net):
        self.net = net
        self.var_values = None

    def __call__(self, x, sigma, class_labels=None):
        denoised, self.var_values = self.net(x, sigma, class_labels, return_var_values=True)
        return denoised.to(torch.float64)
