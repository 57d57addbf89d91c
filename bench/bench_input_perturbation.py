"""Input perturbation (DDPM-IP) against none, at the same training budget: issue 24, item 4.

    python bench/bench_input_perturbation.py --data=datasets/mnist-32x32.zip --outdir=out/ip       # print the commands
    python bench/bench_input_perturbation.py --data=datasets/mnist-32x32.zip --outdir=out/ip --run # run them (GPU)

Trains the bundled MNIST setting (docs/bundled-model.md: EDM preconditioning, DDPM++ 16/32/64
channels, batch 128) twice with train.py, --input-pertub=0 and --input-pertub=GAMMA, same
seed and --duration; scores each final snapshot at 10 NFE (Euler, 10 steps) and 35 NFE (Heun,
18 steps) with exposure.py sweep (b = 1 only) by the Frechet distance on the MNIST
classifier's features (models/mnist-classifier.pkl) against the data's reference statistics,
over the same seeds; then prints FD per run and the difference IP - baseline with its
paired-bootstrap standard deviation (analysis.sweep.bootstrap over the shared seeds).
The bundled budget (--duration=4, 4 Mimg) took 7 minutes on one H100; on a CPU it is hours.
Every step resumes: a finished run or score is not redone.
"""

import glob
import os
import shlex
import subprocess
import sys

import click
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ('--cond=1 --arch=ddpmpp --precond=edm --cbase=16 --cres=1,2,4 --blocks=1 --attn=none --batch=128 --lr=2e-3 '
         '--lr-rampup=50 --ema=0.1 --dropout=0 --augment=0 --xflip=0 --tick=100 --snap=1 --dump=1000 --workers=2 --seed=0')
SAMPLERS = {'euler10': '--solver=euler --steps=10', 'heun18': '--solver=heun --steps=18'}  # 10 and 35 NFE
DETECTOR = 'models/mnist-classifier.pkl'


def commands(data, outdir, gamma, duration, seeds):
    """[(description, argv, done-marker path)] of the whole comparison."""
    py = sys.executable
    steps = [('reference statistics', [py, 'fid.py', 'ref', f'--data={data}', f'--dest={outdir}/ref.npz', f'--detector={DETECTOR}'],
              f'{outdir}/ref.npz')]
    for g in (0.0, gamma):
        run = f'{outdir}/train-ip{g:g}'
        steps.append((f'train gamma {g:g}', [py, 'train.py', f'--outdir={run}', '--nosubdir', f'--data={data}', *shlex.split(TRAIN),
                                             f'--duration={duration}', f'--input-pertub={g:g}'], f'{run}/training-done'))
        for name, options in SAMPLERS.items():
            steps.append((f'score gamma {g:g} {name}', [py, 'exposure.py', 'sweep', f'--network={run}/LAST', f'--outdir={run}-{name}',
                                                       *shlex.split(options), f'--seeds={seeds}', '--eps_scaler=1',
                                                       f'--ref={outdir}/ref.npz', f'--detector={DETECTOR}', '--score-name=FD_MNIST'],
                          f'{run}-{name}/points/b1.00000/result.json'))
    return steps


def last_snapshot(run):
    snaps = sorted(glob.glob(os.path.join(run, 'network-snapshot-*.pkl')))
    if not snaps:
        raise click.ClickException(f'{run}: no snapshot')
    return snaps[-1]


def compare(outdir, gamma, replicates):
    """FD of both runs per sampler, and IP - baseline with its paired-bootstrap std."""
    sys.path.insert(0, ROOT)
    from analysis.sweep import bootstrap
    from metrics.frechet import frechet_distance
    ref = dict(np.load(f'{outdir}/ref.npz'))
    for name in SAMPLERS:
        features = [np.load(f'{outdir}/train-ip{g:g}-{name}/points/b1.00000/features.npy') for g in (0.0, gamma)]
        scores = [frechet_distance(f.astype(np.float64).mean(0), np.cov(f.astype(np.float64), rowvar=False), ref['mu'], ref['sigma'])
                  for f in features]
        std, delta_std = bootstrap(features, ref, baseline=0, replicates=replicates)
        print(f'{name}: FD baseline {scores[0]:.3f} +- {std[0]:.3f}, IP (gamma {gamma:g}) {scores[1]:.3f} +- {std[1]:.3f}, '
              f'IP - baseline {scores[1] - scores[0]:+.3f} +- {delta_std[1]:.3f} (paired bootstrap, {replicates} replicates, '
              f'{features[0].shape[0]} images)')


@click.command()
@click.option('--data', help='MNIST dataset ZIP (dataset_tool.py)', metavar='ZIP', required=True)
@click.option('--outdir', help='Working folder', metavar='DIR', required=True)
@click.option('--gamma', help='Input perturbation of the IP run', type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True)
@click.option('--duration', help='Training budget of both runs (Mimg)', type=click.FloatRange(min=0, min_open=True), default=4, show_default=True)
@click.option('--seeds', help='Seeds scored', default='0-9999', show_default=True)
@click.option('--replicates', help='Bootstrap replicates', type=click.IntRange(min=2), default=200, show_default=True)
@click.option('--run', 'do_run', help='Run the commands (else print them)', is_flag=True)
def main(data, outdir, gamma, duration, seeds, replicates, do_run):
    """Print or run the IP comparison."""
    for what, argv, done in commands(data, outdir, gamma, duration, seeds):
        shown = ' '.join(shlex.quote(a) for a in argv).replace(sys.executable, 'python')
        print(f'# {what}\n{shown}')
        if not do_run or os.path.exists(done):
            continue
        argv = [a.replace('/LAST', '/' + os.path.basename(last_snapshot(a.split('=', 1)[1].rsplit('/', 1)[0])))
                if a.startswith('--network=') else a for a in argv]
        subprocess.run(argv, cwd=ROOT, check=True)
        if what.startswith('train'):
            open(done, 'w').close()
    if do_run:
        compare(outdir, gamma, replicates)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
