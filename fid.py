"""Frechet Inception Distance (and KID, Inception Score, precision/recall) of generated images."""

import json
import os

import click

import dnnlib
from metrics.detector import INCEPTION_URL, MetricError
from metrics.evaluate import METRICS, calc_metrics, calc_reference
from torch_utils import cli
from torch_utils import distributed as dist

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


def run_cli(fn):
    """Run fn() inside the torchrun process group; MetricError becomes one error line (rank 0)."""
    dist.init()
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
    # Compute dataset reference statistics (add --features=50000 for KID and precision/recall)
    python fid.py ref --data=datasets/my-dataset.zip --dest=fid-refs/my-dataset.npz

    Recent torchrun versions mistake --num for their own --numa-binding option:
    write 'torchrun ... fid.py -- calc --num=10000 ...' (with '--') to pass it.
    """

#----------------------------------------------------------------------------


@main.command()
@click.option('--images', 'image_path', help='Path to the images', metavar='PATH|ZIP', type=str, required=True)
@click.option('--ref', 'ref_path', help='Dataset reference statistics', metavar='NPZ|URL', type=str, required=True)
@click.option('--num', 'num_expected', help='Number of images to use', metavar='INT', type=click.IntRange(min=2), default=50000, show_default=True)
@click.option('--seed', help='Random seed for selecting the images', metavar='INT', type=click.IntRange(min=0, max=2**32 - 1), default=0, show_default=True)
@click.option('--batch', help='Maximum batch size', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--metrics', 'metric_names', help=f'Comma-separated metrics: {", ".join(METRICS)}', metavar='LIST', type=str, default='fid', show_default=True, callback=parse_metrics)
@click.option('--detector', 'detector_url', help='Pickled feature detector', metavar='PKL|URL', type=str, default=INCEPTION_URL, show_default='NVIDIA Inception-v3')
@click.option('--json', 'json_path', help='Append the results as one JSON line to this file', metavar='PATH', type=str, default=None)
@click.option('--workers', 'num_workers', help='Image-loading processes per rank', metavar='INT', type=click.IntRange(min=0), default=3, show_default=True)
def calc(image_path, ref_path, num_expected, seed, batch, metric_names, detector_url, json_path, num_workers):
    """Calculate FID (and other metrics) for a given set of images."""
    def work():
        out = calc_metrics(image_path, ref_path, metrics=metric_names, num_expected=num_expected, seed=seed,
                           max_batch_size=batch, detector_url=detector_url, num_workers=num_workers)
        if out is None:
            return
        print(f'{out.num_images} images, {out.num_images / max(out.seconds, 1e-9):.1f} images/s')
        print(format_table(out.results, out.skipped))
        if json_path is not None:
            options = dict(num=num_expected, seed=seed, batch=batch, metrics=metric_names, detector=detector_url,
                           world_size=dist.get_world_size())
            append_json_line(json_path, dict(metrics=out.results, skipped=out.skipped, num_images=out.num_images,
                                             images=image_path, ref=ref_path, options=options))
    run_cli(work)

#----------------------------------------------------------------------------


@main.command()
@click.option('--data', 'dataset_path', help='Path to the dataset', metavar='PATH|ZIP', type=str, required=True)
@click.option('--dest', 'dest_path', help='Destination .npz file', metavar='NPZ', type=str, required=True)
@click.option('--batch', help='Maximum batch size', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--features', 'keep_features', help='Also store this many per-image features (for KID, PR)', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--detector', 'detector_url', help='Pickled feature detector', metavar='PKL|URL', type=str, default=INCEPTION_URL, show_default='NVIDIA Inception-v3')
@click.option('--workers', 'num_workers', help='Image-loading processes per rank', metavar='INT', type=click.IntRange(min=0), default=3, show_default=True)
def ref(dataset_path, dest_path, batch, keep_features, detector_url, num_workers):
    """Calculate dataset reference statistics needed by 'calc'."""
    def work():
        path = calc_reference(dataset_path, dest_path, max_batch_size=batch, detector_url=detector_url,
                              keep_features=keep_features, num_workers=num_workers)
        dist.print0(f'Saved reference statistics to "{path}".')
    run_cli(work)

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()
