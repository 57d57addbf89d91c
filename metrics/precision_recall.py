"""Improved precision and recall (Kynkaanniemi et al., 2019) on detector features."""

import torch


def _kth_radii(manifold, k, row_batch):
    """Distance from each manifold point to its k-th nearest neighbour (itself not counted)."""
    radii = [torch.cdist(rows, manifold).kthvalue(k + 1, dim=1).values for rows in manifold.split(row_batch)]
    return torch.cat(radii)


def _coverage(manifold, radii, probes, row_batch):
    """Fraction of probes that fall inside at least one manifold point's k-NN ball."""
    inside = [(torch.cdist(rows, manifold) <= radii).any(dim=1) for rows in probes.split(row_batch)]
    return torch.cat(inside).to(torch.float64).mean().item()


def precision_recall(real_feats, gen_feats, nhood_size=3, row_batch=1024, device=None):
    """Return (precision, recall): generated features inside the real manifold, and real inside generated."""
    device = torch.device('cpu') if device is None else device
    real = torch.as_tensor(real_feats, dtype=torch.float32, device=device)
    gen = torch.as_tensor(gen_feats, dtype=torch.float32, device=device)
    if min(real.shape[0], gen.shape[0]) <= nhood_size:
        raise ValueError(f'precision/recall needs more than {nhood_size} features in each set')
    precision = _coverage(real, _kth_radii(real, nhood_size, row_batch), gen, row_batch)
    recall = _coverage(gen, _kth_radii(gen, nhood_size, row_batch), real, row_batch)
    return precision, recall
