"""Per-seed random numbers: an image depends on its own seed only, never on its batch.

Draws happen in EDM's order and with EDM's calls (one torch.Generator per seed, seeded with
seed mod 2^32, drawing one sample's slice at a time), so the same seed gives EDM's numbers:
the latents, then the class label, then one noise tensor per solver step.
"""

import torch


class SeedNoise:
    """One generator per seed; draws have the batch dimension first, one row per seed."""

    def __init__(self, seeds, device='cpu'):
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(int(seed) % (1 << 32)) for seed in seeds]

    def __len__(self):
        return len(self.generators)

    def randn(self, size, dtype=None, device=None):
        """Standard normal [len(seeds), *size[1:]]."""
        self._check(size)
        device = self.device if device is None else device
        # Each row filled in place by its own generator: the numbers torch.randn(size[1:],
        # generator=g) gives (randn is empty + normal_), without a tensor per row and a stack.
        out = torch.empty(size, dtype=dtype, device=device)
        for row, generator in zip(out.unbind(0), self.generators):
            row.normal_(generator=generator)
        return out

    def randn_like(self, x):
        return self.randn(x.shape, dtype=x.dtype, device=x.device)

    def randint(self, high, size, device=None):
        """Uniform integers in [0, high), one draw per seed for size [len(seeds)]."""
        self._check(size)
        device = self.device if device is None else device
        return torch.stack([torch.randint(high, size=size[1:], generator=g, device=device) for g in self.generators])

    def _check(self, size):
        if size[0] != len(self.generators):
            raise ValueError(f'asked for {size[0]} rows from {len(self.generators)} seeds')


def latents_and_labels(noise, net_shape, label_dim, class_idx=None, device='cpu'):
    """(latents [N, C, H, W] float32, one-hot labels [N, label_dim] or None), drawn as EDM does.

    Labels are drawn for conditional nets even when `class_idx` overrides them, which keeps
    the later noise draws of each seed where EDM has them.
    """
    latents = noise.randn([len(noise), *net_shape], device=device)
    if not label_dim:
        return latents, None
    labels = torch.eye(label_dim, device=device)[noise.randint(label_dim, size=[len(noise)], device=device)]
    if class_idx is not None:
        labels[:, :] = 0
        labels[:, class_idx] = 1
    return latents, labels
