"""Inception Score (Salimans et al., "Improved techniques for training GANs", 2016)."""

import numpy as np


def inception_score(probs, num_splits=10):
    """Return (mean, std) over splits of exp(E_x KL(p(y|x) || p(y))) for class probabilities [N, C]."""
    probs = np.asarray(probs, dtype=np.float64)
    n = probs.shape[0]
    if n < num_splits:
        raise ValueError(f'Inception Score needs at least {num_splits} images, got {n}')
    scores = []
    for i in range(num_splits):
        part = probs[i * n // num_splits : (i + 1) * n // num_splits]
        marginal = part.mean(axis=0, keepdims=True)
        with np.errstate(divide='ignore', invalid='ignore'):
            kl = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))
