"""Plots of norms and sweeps (matplotlib, optional: without it the functions return None and
the data files are still written). Figures are made without pyplot, so no global backend state."""

import os

import dnnlib
from samplers.recording import layout_note

from .common import ExposureError, describe_sampler


def _figure(**kwargs):
    """A matplotlib Figure (no pyplot, so no global backend state), or None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure(**kwargs)


def _save(fig, path):
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with dnnlib.util.atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=80)
    return path


def ts_text(window, cutoff, mode='clean'):
    """A time-shift setting in a few characters: 'off', 'TS w10 c1', 'TS-DPM w80 c300'."""
    if mode == 'tsdpm':
        return f'TS-DPM w{window} c{cutoff:g}'
    return f'TS w{window} c{cutoff:g}' if window else 'off'


def _record_label(record):
    opts = record['options']
    scaled = opts['eps_scaler'] != 1 or opts['eps_scaler_k'] != 0
    label = f'ES b={opts["eps_scaler"]:g}' + (f' k={opts["eps_scaler_k"]:g}' if opts['eps_scaler_k'] else '') if scaled else 'no ES'
    ts = ts_text(opts.get('ts_window', 0), opts.get('ts_cutoff', 1.0), opts.get('ts_mode', 'clean'))
    return label + (f', {ts}' if ts != 'off' else '')


def _focus_ratio_axis(ax, records, x, min_sigma=0.01):
    """Scale the ratio axis to the evaluations at sigma >= min_sigma (below it the ratio can be
    far larger and would flatten the rest); ratios off the axis are written at its edge."""
    keys = ('ratio', 'ratio_used')
    inside = [r[k] for rec in records for r in rec['evaluations'] if r['sigma'] >= min_sigma for k in keys]
    if not inside:
        return
    lo, hi = min(inside + [1.0]), max(inside + [1.0])
    pad = max(hi - lo, 0.01) * 0.15
    lo, hi = lo - pad, hi + pad
    ax.set_ylim(lo, hi)
    off = 0
    for n, row in enumerate(records[0]['evaluations']):
        outside = [rec['evaluations'][n]['ratio'] for rec in records if not lo <= rec['evaluations'][n]['ratio'] <= hi]
        if outside:
            off += 1
            y = hi if max(outside) > hi else lo
            ax.annotate(('\u2191' if y == hi else '\u2193') + '/'.join(f'{v:.2f}' for v in outside), (x[n], y),
                        textcoords='offset points', xytext=(0, -10 if y == hi else 4), ha='center', fontsize=7)
    if off:
        ax.text(0.01, 0.03, f'\u2191/\u2193 n.nn: ratio off this axis (the axis fits sigma >= {min_sigma:g})',
                transform=ax.transAxes, fontsize=7, color='dimgrey')
    return off


def kind_groups(rows):
    """[(kind, [indices of the evaluations of that kind])] in order of first appearance."""
    groups = {}
    for j, row in enumerate(rows):
        groups.setdefault(row['kind'], []).append(j)
    return list(groups.items())


def plot_norms(records, path, labels=None, title=None):
    """Fig. 6 of arXiv 2308.15321 for one or more norms records of the same sampler: mean ||eps||
    per evaluation (timestep 1 = the last), training vs sampling, and their ratio below.
    Returns the path, or None when matplotlib is not installed."""
    fig = _figure(figsize=(6.4, 5.6))
    if fig is None:
        return None
    layouts = {tuple((r['step'], r['kind']) for r in rec['evaluations']) for rec in records}
    if len(layouts) != 1:
        raise ExposureError('the norms files to plot together must come from the same solver and number of steps')
    labels = labels or [_record_label(rec) for rec in records]
    ax, axr = fig.subplots(2, 1, sharex=True, gridspec_kw=dict(height_ratios=[2, 1]))
    first = records[0]['evaluations']
    x = [r['timestep'] for r in first]
    groups = kind_groups(first)  # one curve per evaluation kind (Heun: its Euler and its correction)
    marks = ['o', 's', 'D', 'v']
    for g, (kind, idx) in enumerate(groups):
        suffix = f' ({kind})' if len(groups) > 1 else ''
        ax.plot([x[j] for j in idx], [first[j]['training'] for j in idx], '^' + '-:'[g % 2], color='#c0504d',
                label='training' + suffix, markerfacecolor='white')
    colors = ['#2e8b3a', '#1f5fbf', '#8a3fbf', '#bf7f1f', '#3fa7bf']
    for n, (rec, label) in enumerate(zip(records, labels)):
        rows, color = rec['evaluations'], colors[n % len(colors)]
        for g, (kind, idx) in enumerate(groups):
            tag, style = (f'{label}, {kind}' if len(groups) > 1 else label), marks[g % 4] + '-:'[g % 2]
            pick = lambda key: [rows[j][key] for j in idx]  # noqa: E731
            xs = [x[j] for j in idx]
            ax.plot(xs, pick('sampling'), style, color=color, label=f'sampling ({tag})', markerfacecolor='white')
            axr.plot(xs, pick('ratio'), style, color=color, markerfacecolor='white', label=tag)
            if any(r['eps_scaler'] != 1 for r in rows):
                ax.plot(xs, pick('sampling_used'), marks[g % 4] + '--', color=color, markersize=3, label=f'sampling eps/lambda ({tag})')
                axr.plot(xs, pick('ratio_used'), marks[g % 4] + '--', color=color, markersize=3, label=f'eps/lambda ({tag})')
    axr.axhline(1, color='grey', linewidth=0.8)
    _focus_ratio_axis(axr, records, x)
    note = layout_note([(r['step'], r['kind']) for r in first]) if len(groups) == 1 else ''
    ax.set_ylabel('mean $\\|\\epsilon_\\theta\\|_2$')
    axr.set_ylabel('sampling / training')
    axr.set_xlabel('timestep (1 = last evaluation)' + (f'; {note}' if note else ''))
    ax.set_title(title or f'{describe_sampler(records[0]["options"])}, {records[0]["num_images"]} images')
    ax.grid(True, linewidth=0.4)
    axr.grid(True, linewidth=0.4)
    ax.legend(fontsize=7)
    axr.set_xticks(x if len(x) <= 25 else x[::2])
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(rows, path, score_name='FD', title=None):
    """Score vs b (bootstrap error bars) and, below, the difference to b = 1 without time shift
    (paired-bootstrap error bars), one line per time-shift setting and k; None without matplotlib."""
    paired = any(r['delta'] is not None for r in rows)
    fig = _figure(figsize=(6, 6 if paired else 4))
    if fig is None:
        return None
    axes = fig.subplots(2 if paired else 1, 1, sharex=True, squeeze=False)
    line_of = lambda r: (r['ts_window'], r['ts_cutoff'], r.get('ts_mode'), r.get('eps_scaler_k') or 0.0)  # noqa: E731
    settings = list(dict.fromkeys(line_of(r) for r in rows))
    for n, (window, cutoff, mode, k) in enumerate(settings):
        sel = sorted((r for r in rows if line_of(r) == (window, cutoff, mode, k)), key=lambda r: r['eps_scaler'])
        label = 'no time shift' if cutoff is None else ts_text(window, cutoff, mode or 'clean')
        label += f', k={k:g}' if k else ''
        style = dict(marker='os^vD'[n % 5], capsize=3, label=label)
        b = [r['eps_scaler'] for r in sel]
        axes[0, 0].errorbar(b, [r['score'] for r in sel], yerr=[r['score_std'] or 0 for r in sel], **style)
        if paired:
            axes[1, 0].errorbar(b, [r['delta'] for r in sel], yerr=[r['delta_std'] or 0 for r in sel], **style)
    axes[0, 0].set_ylabel(f'{score_name} (bootstrap std)')
    if paired:
        axes[1, 0].axhline(0, color='grey', linewidth=0.8)
        axes[1, 0].set_ylabel('difference to b=1, no TS\n(paired bootstrap std)')
    axes[-1, 0].set_xlabel('epsilon scaler b')
    for ax in axes[:, 0]:
        ax.grid(True, linewidth=0.4)
    axes[0, 0].legend(fontsize=8)
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    return _save(fig, path)
