"""SHA-256 of what the main commands write for fixed inputs, to compare two versions of the code.

Run it before and after a change that must not alter any output (a refactor, a move of
modules) and compare the two listings line by line:

    python bench/output_digests.py > before.txt
    ...change...
    python bench/output_digests.py > after.txt && diff before.txt after.txt

It runs the command lines themselves (generate.py, image_sample.py, dataset_tool.py and
fid.py) as subprocesses on the bundled MNIST model, a small guided-diffusion checkpoint with
seeded random weights written here, and the bundled classifier as FID detector, so it
depends on no internal name. Nothing is downloaded.
"""

import hashlib
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'tests')]
from adm_helpers import adm_state_shapes  # noqa: E402  (independent description of guided-diffusion's state dict)

ADM_FLAGS = ['--image_size', '16', '--num_channels', '32', '--channel_mult', '1,2', '--num_res_blocks', '1',
             '--attention_resolutions', '8', '--num_head_channels', '32', '--resblock_updown', 'True',
             '--use_new_attention_order', 'True', '--learn_sigma', 'True', '--noise_schedule', 'cosine']


def adm_checkpoint(path):
    shapes, _ = adm_state_shapes(image_size=16, num_channels=32, num_res_blocks=1, channel_mult=(1, 2),
                                 attention_resolutions='8', num_head_channels=32, resblock_updown=True, learn_sigma=True)
    g = torch.Generator().manual_seed(1)
    state = {}
    for name, shape in shapes.items():
        scale = 1 / math.sqrt(int(np.prod(shape[1:]))) if len(shape) > 1 else 0.1
        state[name] = torch.randn(shape, generator=g) * scale + (1.0 if len(shape) == 1 and name.endswith('0.weight') else 0.0)
    torch.save(state, path)


def run(*args):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0')
    res = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f'{" ".join(args)} failed:\n{res.stdout}\n{res.stderr}')
    return res.stdout


def digest_tree(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if name.endswith('.json') or name.endswith('.jsonl'):
                continue  # run records hold timings and paths
            with open(path, 'rb') as f:
                print(f'{hashlib.sha256(f.read()).hexdigest()}  {os.path.relpath(path, root)}')


def main():
    with tempfile.TemporaryDirectory() as tmp:
        out = lambda *p: os.path.join(tmp, *p)  # noqa: E731
        run('generate.py', f'--outdir={out("gen", "heun")}', '--seeds=0-7', '--batch=3', f'--grid={out("gen", "grid.png")}')
        run('generate.py', f'--outdir={out("gen", "euler_es_ts")}', '--seeds=0-5', '--solver=euler', '--steps=8',
            '--eps_scaler=1.01', '--ts_window=2')
        run('generate.py', f'--outdir={out("gen", "churn")}', '--seeds=3-6', '--steps=6', '--S_churn=10', '--class=7')
        run('generate.py', f'--outdir={out("gen", "deis")}', '--seeds=0-5', '--solver=deis', '--order=3', '--steps=6')
        run('generate.py', f'--outdir={out("gen", "dpmsolver")}', '--seeds=0-5', '--solver=dpmsolver', '--steps=6')

        adm_checkpoint(out('adm.pt'))
        run('image_sample.py', *ADM_FLAGS, '--model_path', out('adm.pt'), '--timestep_respacing', 'ddim5',
            '--use_ddim', 'True', '--do_time_shift', 'True', '--window', '80', '--cutoff', '300',
            '--num_samples', '6', '--batch_size', '4', '--out_dir', out('adm', 'ddim_ts'))
        run('image_sample.py', *ADM_FLAGS, '--model_path', out('adm.pt'), '--timestep_respacing', '10',
            '--eps_scaler', '1.017', '--num_samples', '5', '--batch_size', '2', '--out_dir', out('adm', 'ddpm_es'))

        run('dataset_tool.py', f'--source={out("gen", "heun")}', f'--dest={out("data", "gen.zip")}')
        run('dataset_tool.py', f'--source={out("adm", "ddim_ts", "samples_6x16x16x3.npz")}', f'--dest={out("data", "adm.zip")}',
            '--resolution=32x32')

        detector = os.path.join(ROOT, 'models', 'mnist-classifier.pkl')
        run('fid.py', 'ref', f'--data={out("data", "gen.zip")}', f'--dest={out("fid", "ref.npz")}', f'--detector={detector}', '--features=8')
        fid = run('fid.py', 'calc', f'--images={out("gen", "euler_es_ts")}', f'--ref={out("fid", "ref.npz")}',
                  f'--detector={detector}', '--metrics=fid,kid', '--num=6')
        with open(out('fid', 'calc.txt'), 'w') as f:
            f.write(fid[fid.index('metric'):])  # the table; the lines before it hold timings
        digest_tree(tmp)


if __name__ == '__main__':
    main()
