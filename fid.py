"""Frechet Inception Distance (and KID, Inception Score, precision/recall) of generated images."""

import json
import os

import click

import dnnlib
from metrics.detector import INCEPTION_URL, VGG16_URL, MetricError
from metrics.evaluate import METRICS, calc_metrics, calc_reference
from metrics.reference import STATS_SOURCES
from torch_utils import cli
from torch_utils import distributed as dist
from torch_utils import threads

#----------------------------------------------------------------------------


def format_table(results, skipped):
    """Return the metrics as an aligned two-column text table."""
    rows = [(name, f'{value:.6g}') for name, value in results.items()]
    rows += [(name, f'skipped: {reason}') for name, reason in skipped.items()]
    width = max([len('metric')] + [len(name) for name, _ in rows])
    lines = [f'{"metric":<{width}}  value', f'{"-" * width}  {"-" * 10}']
    return '\n'.join(lines + [f'{name:<{width}}  {text}' for name, text in rows])


def append_json_line(path, record):
    """Append one JSON line to `path` without ever leaving a half-written file."""
    old = b''
    if os.path.isfile(path):
        with open(path, 'rb') as f:
            old = f.read()
        if old and not old.endswith(b'\n'):
            old += b'\n'
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with dnnlib.util.atomic_write(path) as f:
        f.write(old + (json.dumps(record) + '\n').encode('utf-8'))


def parse_metrics(_ctx, _param, value):
    names = [name.strip().lower() for name in value.split(',') if name.strip()]
    bad = [name for name in names if name not in METRICS]
    if bad or not names:
        raise click.BadParameter(f'{bad[0] if bad else value!r} is not one of {", ".join(METRICS)}')
    return list(dict.fromkeys(names))


def _workers(num_workers):
    return threads.default_workers() if num_workers is None else num_workers


def run_cli(fn):
    """Run fn() inside the torchrun process group; MetricError becomes one error line (rank 0)."""
    dist.init()
    threads.set_cpu_threads(dist.device(), int(os.environ.get('LOCAL_WORLD_SIZE', '1')))
    try:
        return fn()
    except (MetricError, OSError) as err:
        if dist.get_rank() != 0:
            raise SystemExit(1)
        raise click.ClickException(cli.os_error_message(err, action=None) if isinstance(err, OSError) else str(err)) from None
    finally:
        dist.shutdown()

#----------------------------------------------------------------------------


@click.group()
def main():
    """Calculate Frechet Inception Distance (FID) and related metrics.

    Examples:

    \b
    # Generate 50000 images and save them as fid-tmp/*/*.png
    torchrun --standalone --nproc_per_node=1 generate.py --outdir=fid-tmp --seeds=0-49999 --subdirs \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl

    \b
    # Calculate FID
    torchrun --standalone --nproc_per_node=1 fid.py calc --images=fid-tmp \\
        --ref=https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz

    \b
    # FID, KID, Inception Score and precision/recall, appended to a JSON-lines log
    torchrun --standalone --nproc_per_node=2 fid.py calc --images=fid-tmp \\
        --ref=fid-refs/my-dataset.npz --metrics=fid,kid,is,pr --json=metrics.jsonl

    \b
    # guided-diffusion's formats: samples .npz against a reference batch, as its evaluator
    python fid.py calc --images=samples_50000x64x64x3.npz --metrics=fid,is,pr \\
        --ref=https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/64/VIRTUAL_imagenet64_labeled.npz

    \b
    # Compute dataset reference statistics (add --features=50000 for KID and precision/recall)
    python fid.py ref --data=datasets/my-dataset.zip --dest=fid-refs/my-dataset.npz

    Recent torchrun versions mistake --num for their own --numa-binding option:
    write 'torchrun ... fid.py -- calc --num=10000 ...' (with '--') to pass it.
    """

#----------------------------------------------------------------------------

CALC_HELP = f"""Calculate FID (and other metrics) for a given set of images.

\b
Metrics (docs/fid.md):
  fid        Frechet distance of Gaussian fits to the detector features
  kid        KID as StyleGAN3's kid50k: unbiased MMD^2, cubic kernel, 100 subsets
             of <= 1000 features; kid_std is its standard deviation over the subsets
  is         Inception Score as StyleGAN3's is50k (no output bias, 10 splits)
  pr         precision and recall (Kynkaanniemi et al. 2019), k = 3 nearest
             neighbours, all features of both sets, as guided-diffusion's evaluator:
             on --detector features (Inception pool features by default, the
             evaluator's choice), or on --pr-detector features (NVIDIA's VGG16 gives
             StyleGAN3/EDM's pr50k3)

\b
NVIDIA's VGG16 detector for --pr-detector:
{VGG16_URL}

--ref-stats=auto uses the stored mu/sigma if the file has them and no images; the
images' statistics if it has images only; if it has both (OpenAI's reference batches:
mu/sigma of the whole dataset, 10000 images), the stored ones with the default
Inception detector, as guided-diffusion's evaluator does, and the images' otherwise.
KID and precision/recall use a reference batch's images. Statistics of reference images
are cached (dnnlib cache, fid-refs/) by file and detector content.
"""


_allow_code = click.option('--allow-pickle-code', help='Unpickle detectors that are not TorchScript archives, running their code (trusted files only)', is_flag=True, default=None)
_pr_detector = click.option('--pr-detector', 'pr_detector_url', help='Feature detector for precision/recall (VGG16: see below)', metavar='PKL|URL', type=str, default=None, show_default='--detector')


@main.command(help=CALC_HELP)
@click.option('--images', 'image_path', help='Images: folder, ZIP, or .npz with uint8 arr_0 [N,H,W,C]', metavar='PATH|ZIP|NPZ', type=str, required=True)
@click.option('--ref', 'ref_path', help='Reference: statistics (mu, sigma) or a batch of images (arr_0)', metavar='NPZ|URL', type=str, required=True)
@click.option('--ref-stats', help='Reference mu/sigma: auto, stored, or of its images', metavar='WHERE', type=click.Choice(STATS_SOURCES), default='auto', show_default=True)
@click.option('--num', 'num_expected', help='Number of images to use', metavar='INT', type=click.IntRange(min=2), default=50000, show_default=True)
@click.option('--seed', help='Random seed for selecting the images', metavar='INT', type=click.IntRange(min=0, max=2**32 - 1), default=0, show_default=True)
@click.option('--batch', help='Maximum batch size', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--metrics', 'metric_names', help=f'Comma-separated metrics: {", ".join(METRICS)}', metavar='LIST', type=str, default='fid', show_default=True, callback=parse_metrics)
@click.option('--detector', 'detector_url', help='Pickled feature detector', metavar='PKL|URL', type=str, default=INCEPTION_URL, show_default='NVIDIA Inception-v3')
@_pr_detector
@click.option('--json', 'json_path', help='Append the results as one JSON line to this file', metavar='PATH', type=str, default=None)
@click.option('--workers', 'num_workers', help='Image-loading processes per rank', metavar='INT', type=click.IntRange(min=0), default=None, show_default='3, at most the cores - 1')
@_allow_code
def calc(image_path, ref_path, ref_stats, num_expected, seed, batch, metric_names, detector_url, pr_detector_url, json_path,
         num_workers, allow_pickle_code):
    def work():
        out = calc_metrics(image_path, ref_path, metrics=metric_names, num_expected=num_expected, seed=seed,
                           max_batch_size=batch, detector_url=detector_url, num_workers=_workers(num_workers),
                           pr_detector_url=pr_detector_url, ref_stats=ref_stats, allow_pickle_code=allow_pickle_code)
        if out is None:
            return
        print(f'{out.num_images} images, {out.num_images / max(out.seconds, 1e-9):.1f} images/s')
        print(format_table(out.results, out.skipped))
        if json_path is not None:
            options = dict(num=num_expected, seed=seed, batch=batch, metrics=metric_names, detector=detector_url,
                           pr_detector=pr_detector_url, ref_stats=ref_stats, world_size=dist.get_world_size())
            append_json_line(json_path, dict(metrics=out.results, skipped=out.skipped, num_images=out.num_images,
                                             images=image_path, ref=ref_path, detectors=out.detectors,
                                             reference=out.reference, options=options))
    run_cli(work)

#----------------------------------------------------------------------------


@main.command()
@click.option('--data', 'dataset_path', help='Images: folder, ZIP, or .npz with uint8 arr_0 [N,H,W,C]', metavar='PATH|ZIP|NPZ', type=str, required=True)
@click.option('--dest', 'dest_path', help='Destination .npz file', metavar='NPZ', type=str, required=True)
@click.option('--batch', help='Maximum batch size', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--features', 'keep_features', help='Also store this many per-image features (for KID, PR)', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--detector', 'detector_url', help='Pickled feature detector', metavar='PKL|URL', type=str, default=INCEPTION_URL, show_default='NVIDIA Inception-v3')
@_pr_detector
@click.option('--workers', 'num_workers', help='Image-loading processes per rank', metavar='INT', type=click.IntRange(min=0), default=None, show_default='3, at most the cores - 1')
@_allow_code
def ref(dataset_path, dest_path, batch, keep_features, detector_url, pr_detector_url, num_workers, allow_pickle_code):
    """Calculate dataset reference statistics needed by 'calc'.

    Writes mu and sigma (EDM's format); with --features=N also N per-image features, and
    with --pr-detector those images' features from that detector as pr_features.
    """
    def work():
        path = calc_reference(dataset_path, dest_path, max_batch_size=batch, detector_url=detector_url,
                              keep_features=keep_features, num_workers=_workers(num_workers), pr_detector_url=pr_detector_url,
                              allow_pickle_code=allow_pickle_code)
        dist.print0(f'Saved reference statistics to "{path}".')
    run_cli(work)

#----------------------------------------------------------------------------

cli.bound_int_options(main)  # 2^70 and the like: one line (issue 26)

if __name__ == '__main__':
    main()
