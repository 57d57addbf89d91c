"""train.py speed: seconds per kimg (1000 training images) on a tiny configuration.

    python bench/bench_train.py                                 # 32x32 grey, 1 kimg, batch 32
    python bench/bench_train.py --kimg=2 --batch=64 --fp16=1    # --fp16 needs a GPU to help

Writes a synthetic labelled 32x32 dataset to a temporary folder, runs train.py on it as a
subprocess (the exact command is printed) with a tiny network (--cbase=8 --cres=1,2
--blocks=1 --attn=none) and reads sec/kimg of each progress tick from stats.jsonl. The first
tick holds the start-up (network construction, first snapshot), so the figure reported is
the median of the later ticks.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import click
import numpy as np
import PIL.Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_NET = ['--cbase=8', '--cres=1,2', '--blocks=1', '--attn=none']


def make_dataset(folder, count=256, resolution=32, seed=0):
    """A folder of `count` grey PNGs with class labels in dataset.json (class c brightens a band)."""
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    labels = []
    for i in range(count):
        c = i % 10
        image = rng.integers(0, 60, [resolution, resolution]).astype(np.uint8)
        band = resolution // 10
        image[c * band:(c + 1) * band, :] += 180
        name = f'{i:05d}.png'
        PIL.Image.fromarray(image).save(os.path.join(folder, name))
        labels.append([name, c])
    with open(os.path.join(folder, 'dataset.json'), 'w') as f:
        json.dump(dict(labels=labels), f)
    return folder


def tick_seconds_per_kimg(run_dir):
    """sec/kimg of every progress tick, in order."""
    with open(os.path.join(run_dir, 'stats.jsonl')) as f:
        return [json.loads(line)['Timing/sec_per_kimg']['mean'] for line in f if line.strip()]


@click.command()
@click.option('--kimg', type=click.FloatRange(min=0, min_open=True), default=1, show_default=True, help='Training length')
@click.option('--ticks', type=click.IntRange(min=2), default=4, show_default=True, help='Progress ticks over that length')
@click.option('--batch', type=click.IntRange(min=1), default=32, show_default=True, help='Total batch size')
@click.option('--fp16', type=bool, default=False, show_default=True, help='Pass --fp16=1 to train.py')
@click.option('--workers', type=click.IntRange(min=0), default=0, show_default=True, help='train.py --workers')
def main(kimg, ticks, batch, fp16, workers):
    """Print train.py's seconds per kimg on a tiny configuration."""
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(os.path.join(tmp, 'data'))
        run_dir = os.path.join(tmp, 'run')
        cmd = [sys.executable, 'train.py', f'--outdir={run_dir}', f'--data={data}', '--cond=1', *TINY_NET,
               f'--batch={batch}', f'--duration={kimg / 1000:g}', f'--tick={kimg / ticks:g}', '--snap=1000',
               '--dump=1000', '--lr-rampup=1', '--augment=0', f'--fp16={int(fp16)}', f'--workers={workers}',
               '--seed=0', '--nosubdir']
        print('command: ' + ' '.join(['python'] + cmd[1:]).replace(tmp, '$TMP'))
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise click.ClickException('train.py failed: ' + (proc.stderr.strip().splitlines() or ['?'])[-1])
        per_tick = tick_seconds_per_kimg(run_dir)
    later = per_tick[1:] if len(per_tick) > 1 else per_tick
    print(f'sec/kimg per tick: {", ".join(f"{s:.2f}" for s in per_tick)}')
    print(f'tiny net, batch {batch}, fp16={int(fp16)}: {statistics.median(later):.2f} sec/kimg '
          f'(median after the first tick); train.py wall time {wall:.1f} s for {kimg:g} kimg')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
