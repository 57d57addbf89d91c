"""FD_MNIST of few-step samplers on the bundled model, every side tuned over the same schedules.

    python bench/bench_nfe.py --ref=out/ref.npz --out=out/nfe.json --seeds=0-499 --nfe=4,5,6,8,10
    python bench/bench_nfe.py --ref=out/ref.npz --out=out/nfe.json --table       # print the table of a finished run

For each NFE, each sampler and each schedule of the grid (EDM's Karras levels with rho and
sigma_min from --rhos and --sigma_mins, sigma_max 80, the last step into 0) this generates one
image per seed in memory, takes the 64 features of models/mnist-classifier.pkl (the PNG's
quantisation, as fid.py sees it) and scores the Frechet distance against --ref (fid.py ref of
datasets/mnist-32x32.zip). Samplers: the toolkit's solvers by name, and k-diffusion's
sample_dpmpp_2m, sample_dpmpp_3m_sde (eta 0), sample_lms, sample_heun, sample_euler on the same
denoiser, levels and latents (skipped when k-diffusion is not installed; pip install --no-deps
k-diffusion). `--nfe-rule` adds the configuration `generate.py --nfe=N` picks and
`--schedules` a JSON {N: levels} (exposure.py schedule). Results are written after every
point, so a stopped run resumes. The table gives each sampler's best schedule and the paired
bootstrap difference (same resampled seeds) of the best toolkit configuration to the best peer.
"""

import json
import os
import sys

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from analysis.sweep import _fd_of  # noqa: E402
from bench.options import positive_int_list  # noqa: E402
from bench.peers import kdiffusion_sampling  # noqa: E402
from metrics.detector import load_detector  # noqa: E402
from metrics.reference import load_reference  # noqa: E402
from safeload.networks import load_network  # noqa: E402
from samplers import Sampler, SamplerOptions, SeedNoise, latents_and_labels, noise_levels, with_zero  # noqa: E402
from samplers import nfe as nfe_module  # noqa: E402
from torch_utils.images import to_uint8  # noqa: E402

OURS = {'deis3': dict(solver='deis', order=3), 'unipc-bh1': dict(solver='unipc-bh1', order=3),
        'unipc-bh2': dict(solver='unipc-bh2', order=3), 'unipc-bh2-o2': dict(solver='unipc-bh2', order=2),
        'dpmpp3m': dict(solver='dpmpp3m'), 'ipndm': dict(solver='ipndm'), 'dpmpp2m': dict(solver='dpmpp2m'),
        'dpmsolver3': dict(solver='dpmsolver', order=3)}
PEERS = {'kd-dpmpp_2m': 'sample_dpmpp_2m', 'kd-dpmpp_3m': 'sample_dpmpp_3m_sde', 'kd-lms': 'sample_lms'}


def karras(net, nfe, sigma_min, rho):
    return with_zero(net.round_sigma(noise_levels('edm', nfe, sigma_min, 80.0, rho)).to(torch.float64))


def peer_steps(name, nfe):
    return nfe  # every peer here spends one evaluation per level


class Features:
    def __init__(self, net, detector, seeds, batch):
        self.net, self.detector, self.batch = net, detector, batch
        self.batches = [seeds[i:i + batch] for i in range(0, len(seeds), batch)]

    def _draw(self, seeds):
        noise = SeedNoise(seeds)
        shape = [self.net.img_channels, self.net.img_resolution, self.net.img_resolution]
        latents, labels = latents_and_labels(noise, shape, self.net.label_dim)
        return latents, labels, noise

    def _features(self, images):
        pixels = torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2).repeat(1, 3, 1, 1)
        return self.detector(pixels, return_features=True).to(torch.float64).numpy()

    def of(self, sample):
        """Features [N, 64] of sample(latents, labels, noise) over all batches."""
        out = []
        with torch.inference_mode():
            for seeds in self.batches:
                latents, labels, noise = self._draw(seeds)
                out.append(self._features(sample(latents, labels, noise)))
        return np.concatenate(out)


def ours_sampler(net, options):
    sampler = Sampler(net, options)
    return lambda latents, labels, noise: sampler(latents, labels, noise.randn_like)


def peer_sampler(net, kd, name, sigmas):
    fn = getattr(kd, PEERS[name])
    kwargs = dict(eta=0.0, noise_sampler=lambda s, t: None) if name == 'kd-dpmpp_3m' else {}

    def sample(latents, labels, noise):
        model = lambda x, sigma: net(x.to(torch.float32), sigma, labels).to(torch.float64)  # noqa: E731
        return fn(model, latents.to(torch.float64) * sigmas[0], sigmas, disable=True, **kwargs)
    return sample


@click.command()
@click.option('--network', default='models/mnist-cond-32x32.pkl', show_default=True)
@click.option('--detector', default='models/mnist-classifier.pkl', show_default=True)
@click.option('--ref', required=True, help='fid.py ref of datasets/mnist-32x32.zip with the detector')
@click.option('--out', required=True, help='JSON of the results (resumed)')
@click.option('--seeds', default='0-499', show_default=True)
@click.option('--nfe', 'nfes', default='4,5,6,8,10', callback=positive_int_list, show_default=True)
@click.option('--samplers', 'names', default=','.join([*OURS, *PEERS]), show_default=True)
@click.option('--sigma-mins', default='0.002,0.05,0.1,0.2', show_default=True)
@click.option('--rhos', default='7', show_default=True)
@click.option('--nfe-rule', is_flag=True, help='Also score what generate.py --nfe=N picks')
@click.option('--schedules', default=None, help='JSON {N: levels} from exposure.py schedule, scored with its solver')
@click.option('--batch', default=100, show_default=True)
@click.option('--table', is_flag=True, help='Only print the table of --out')
def main(network, detector, ref, out, seeds, nfes, names, sigma_mins, rhos, nfe_rule, schedules, batch, table):
    import dnnlib
    torch.set_num_threads(1)
    ref_stats = load_reference(ref)
    results = json.load(open(out)) if os.path.isfile(out) else {}
    feats_dir = out + '.features'
    os.makedirs(feats_dir, exist_ok=True)
    if not table:
        net = load_network(network)
        feats = Features(net, load_detector(detector), dnnlib.util.parse_int_list(seeds), batch)
        kd = kdiffusion_sampling()
        points = []
        for nfe in nfes:
            for name in [n for n in names.split(',') if n]:
                if name in PEERS and kd is None:
                    continue
                for rho in [float(r) for r in rhos.split(',')]:
                    for sigma_min in [float(s) for s in sigma_mins.split(',')]:
                        points.append((nfe, name, sigma_min, rho))
            if nfe_rule:
                points.append((nfe, 'nfe-rule', None, None))
            if schedules:
                points.append((nfe, 'searched', None, None))
        for nfe, name, sigma_min, rho in points:
            key = f'{nfe}|{name}|{sigma_min}|{rho}'
            if key in results:
                continue
            if name == 'nfe-rule':
                options = nfe_module.options_for(nfe)
                sample = ours_sampler(net, options)
            elif name == 'searched':
                found = json.load(open(schedules))
                options = nfe_module.options_for(nfe, schedule=found)
                sample = ours_sampler(net, options)
            elif name in PEERS:
                sample = peer_sampler(net, kd, name, karras(net, peer_steps(name, nfe), sigma_min, rho))
            else:
                options = SamplerOptions(**OURS[name], num_steps=nfe, sigma_min=sigma_min, rho=rho)
                assert options.nfe == nfe
                sample = ours_sampler(net, options)
            f = feats.of(sample)
            np.save(os.path.join(feats_dir, key.replace('|', '_') + '.npy'), f.astype(np.float32))
            results[key] = dict(nfe=nfe, sampler=name, sigma_min=sigma_min, rho=rho, fd=float(_fd_of(f, ref_stats)))
            print(key, f'{results[key]["fd"]:.3f}', flush=True)
            with dnnlib.util.atomic_write(out, 'w') as fh:
                json.dump(results, fh, indent=1)
    print_table(results, feats_dir, ref_stats)


def print_table(results, feats_dir, ref, replicates=200):
    def load(key):
        return np.load(os.path.join(feats_dir, key.replace('|', '_') + '.npy')).astype(np.float64)
    for nfe in sorted({r['nfe'] for r in results.values()}):
        rows = {k: r for k, r in results.items() if r['nfe'] == nfe}
        best = {}
        for key, r in rows.items():
            if r['sampler'] not in best or r['fd'] < rows[best[r['sampler']]]['fd']:
                best[r['sampler']] = key
        ours = [k for s, k in best.items() if s not in PEERS]
        peers = [k for s, k in best.items() if s in PEERS]
        if not ours:
            continue
        top = min(ours, key=lambda k: rows[k]['fd'])
        peer = min(peers, key=lambda k: rows[k]['fd']) if peers else None
        rng = np.random.RandomState(0)
        f_top = load(top)
        draws = [rng.randint(0, len(f_top), len(f_top)) for _ in range(replicates)]
        base = np.array([_fd_of(f_top[d], ref) for d in draws])
        print(f'\nNFE {nfe}: best toolkit {top}; best peer {peer}')
        for s, key in sorted(best.items(), key=lambda kv: rows[kv[1]]['fd']):
            f = load(key)
            scores = np.array([_fd_of(f[d], ref) for d in draws])
            r = rows[key]
            print(f'  {s:14s} sigma_min {r["sigma_min"]} rho {r["rho"]}: FD {r["fd"]:.2f} +- {scores.std(ddof=1):.2f}; '
                  f'minus best toolkit {r["fd"] - rows[top]["fd"]:+.2f} +- {(scores - base).std(ddof=1):.2f}')
        for key, r in sorted(rows.items(), key=lambda kv: (kv[1]['sampler'], str(kv[1]['sigma_min']))):
            print(f'    {r["sampler"]:14s} sigma_min {r["sigma_min"]} rho {r["rho"]}: {r["fd"]:.2f}')


if __name__ == '__main__':
    main()
