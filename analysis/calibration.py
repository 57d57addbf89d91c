"""Calibration: an epsilon scaler b (and a slope k) fitted to the ratio of sampling to
training norms, and the lines that explain the fit (docs/exposure.md, "How calibrate
derives a scaler")."""

import dataclasses
import json

import numpy as np

import dnnlib

from .common import ExposureError, describe_sampler

FITS = ('norm', 'ratio')


@dataclasses.dataclass
class Calibration:
    eps_scaler: float       # b
    eps_scaler_k: float     # k (0 unless linear)
    fit: str                # 'norm' or 'ratio'
    linear: bool
    ratios: list            # S_j / T_j per evaluation, as measured.
    scalers: list           # lambda_i(j) of the fit per evaluation.
    rows: list              # The evaluations fitted (norms.json rows).

    @property
    def residual(self):
        """S_j / (lambda_i(j) T_j): the ratio predicted after scaling (1 = gap closed)."""
        return [r / s for r, s in zip(self.ratios, self.scalers)]


def record_steps(record):
    """The number of solver steps N of a norms.json (for DDPM/DDIM the respaced steps, which
    --steps does not give when --timestep_respacing does)."""
    return 1 + max(r['step'] for r in record['evaluations'])


def calibrate(rows, num_steps, *, linear=False, fit='norm', min_sigma=0.0):
    """Fit lambda_i = b (+ k (N - 1 - i)) to the measured norms of `rows` (norms.json evaluations)
    at levels sigma >= min_sigma. Step i counts from the first step (N - 1 - i is the respaced
    index j of DDPM/DDIM: ADM-ES's lambda_j = b + k j).

    S_j and T_j are the mean sampling and training norms of evaluation j (of step i(j)).
    fit='norm' minimises sum_j (S_j - lambda_i(j) T_j)^2 (b = sum S T / sum T^2 for a constant):
    evaluations count by their size, so the high-noise ones dominate. fit='ratio' minimises
    sum_j (S_j / T_j - lambda_i(j))^2: each evaluation counts the same (b = mean ratio).
    """
    if fit not in FITS:
        raise ExposureError(f'--fit must be one of {"|".join(FITS)}, not "{fit}"')
    rows = [r for r in rows if r['sigma'] >= min_sigma]
    if not rows:
        raise ExposureError(f'no evaluation is at sigma >= {min_sigma:g} (--min-sigma)')
    S = np.array([r['sampling'] for r in rows], dtype=np.float64)
    T = np.array([r['training'] for r in rows], dtype=np.float64)
    m = np.array([num_steps - 1 - r['step'] for r in rows], dtype=np.float64)
    if linear and len(set(m.tolist())) < 2:
        raise ExposureError('a linear fit needs evaluations of at least two steps')
    columns = [np.ones_like(m), m] if linear else [np.ones_like(m)]
    if fit == 'norm':
        A, y = np.stack([c * T for c in columns], axis=1), S
    else:
        A, y = np.stack(columns, axis=1), S / T
    coef = np.linalg.lstsq(A, y, rcond=None)[0]
    b, k = float(coef[0]), float(coef[1]) if linear else 0.0
    return Calibration(eps_scaler=b, eps_scaler_k=k, fit=fit, linear=linear, ratios=(S / T).tolist(),
                       scalers=(b + k * m).tolist(), rows=rows)


def describe_calibration(record, cal, other):
    """Lines saying what was measured, how the scaler was fitted, and what it predicts."""
    opts, rows = record['options'], cal.rows
    lo, hi = min(range(len(rows)), key=lambda j: cal.ratios[j]), max(range(len(rows)), key=lambda j: cal.ratios[j])
    measured_with = ''
    if opts['eps_scaler'] != 1 or opts['eps_scaler_k'] != 0:
        measured_with = (f' The trajectories were sampled with --eps_scaler={opts["eps_scaler"]:g} --eps_scaler_k={opts["eps_scaler_k"]:g};'
                         ' S_j is the network\'s unscaled eps along those trajectories, so this is a new estimate made along them.')
    how = {'norm': 'least squares of sum_j (S_j - lambda_i T_j)^2 (each evaluation weighted by T_j^2: low-sigma ones, with smaller norms, count less)',
           'ratio': 'least squares of sum_j (S_j/T_j - lambda_i)^2 (every evaluation weighted equally)'}
    form = 'lambda_i = b + k (N-1-i)' if cal.linear else 'a constant lambda_i = b'
    suggestion = f'--eps_scaler={cal.eps_scaler:.4f}' + (f' --eps_scaler_k={cal.eps_scaler_k:.6f}' if cal.linear else '')
    resid = cal.residual
    skipped = len(record['evaluations']) - len(rows)
    used = f'{len(rows)} evaluations' + (f' at sigma >= {min(r["sigma"] for r in rows):.3g} ({skipped} below --min-sigma left out)' if skipped else '')
    return [
        f'Measured: mean ||eps||_2 of the network over {record["num_images"]} images at the {used} of '
        f'{describe_sampler(opts)}: S_j along sampling trajectories, T_j on training images '
        f'noised to the same sigma.{measured_with}',
        f'Ratios S_j/T_j: from {cal.ratios[lo]:.4f} (evaluation {rows[lo]["evaluation"]}, sigma {rows[lo]["sigma"]:.3g}) to '
        f'{cal.ratios[hi]:.4f} (evaluation {rows[hi]["evaluation"]}, sigma {rows[hi]["sigma"]:.3g}); mean {np.mean(cal.ratios):.4f}.',
        f'Fit "{cal.fit}": {form} by {how[cal.fit]}.',
        f'Suggested: {suggestion}',
        f'Predicted ratio after scaling, S_j/(lambda_i T_j): {min(resid):.4f} to {max(resid):.4f} (ignores that scaling '
        'moves the trajectory; measure again with the suggestion to check).',
        f'Fit "{other.fit}" would give --eps_scaler={other.eps_scaler:.4f}' + (f' --eps_scaler_k={other.eps_scaler_k:.6f}' if other.linear else '') + '.',
        which_to_use(cal, other),
    ]


def which_to_use(cal, other):
    """The line saying which of the two fits' scalers to use, and how far to trust it."""
    why = {'norm': 'it weights each evaluation by its training norm, so the low-sigma evaluations, whose large ratios '
                   'barely change the images, count least',
           'ratio': 'you chose it; the default --fit=norm counts the low-sigma evaluations, whose large ratios barely '
                    'change the images, least'}
    return (f'Use: --eps_scaler={cal.eps_scaler:.4f}' + (f' --eps_scaler_k={cal.eps_scaler_k:.6f}' if cal.linear else '')
            + f' (fit "{cal.fit}": {why[cal.fit]}; the "{other.fit}" value is for comparison only). It is a starting '
            'point, not the best scaler: sweep b around it with "exposure.py sweep" (docs/exposure.md).')


def write_calibration(path, norms_path, cal, other, min_sigma, lines):
    """The calibrate command's --json file: the suggestion, the alternative fit and the derivation."""
    doc = dict(kind='eps-scaler-calibration', norms=norms_path, eps_scaler=cal.eps_scaler, eps_scaler_k=cal.eps_scaler_k,
               fit=cal.fit, linear=cal.linear, min_sigma=min_sigma, evaluations=[r['evaluation'] for r in cal.rows],
               ratios=cal.ratios, residual=cal.residual,
               alternative=dict(fit=other.fit, eps_scaler=other.eps_scaler, eps_scaler_k=other.eps_scaler_k),
               derivation=lines)
    with dnnlib.util.atomic_write(path, 'w') as f:
        json.dump(doc, f, indent=2)
        f.write('\n')
