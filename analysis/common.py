"""What the analysis modules share: the error type, the CSV writer, the sampler's description,
and opening the network and dataset a command names."""

import csv
import dataclasses
import io

import os

import dnnlib
from safeload import networks as loader
from samplers import SamplerOptions, jobs
from samplers.discrete import DISCRETE_SOLVERS
from torch_utils import distributed as dist
from training.dataset import ImageFolderDataset


class ExposureError(Exception):
    """Bad input to the exposure tools; the message is one line."""


def write_csv(path, columns, rows):
    """`rows` (dicts) as a CSV with `columns`, written atomically; None becomes an empty cell."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction='ignore', lineterminator='\n')
    writer.writeheader()
    writer.writerows([{key: ('' if row.get(key) is None else row.get(key)) for key in columns} for row in rows])
    with dnnlib.util.atomic_write(path, 'w') as f:
        f.write(buf.getvalue())


def describe_sampler(options):
    """'heun with 5 steps (9 evaluations)', or for a discrete solver 'ddim with respacing
    "ddim10" (10 evaluations)'; `options` is SamplerOptions or its dict (as in norms.json)."""
    opts = options if isinstance(options, dict) else dataclasses.asdict(options)
    fields = {f.name for f in dataclasses.fields(SamplerOptions)}
    nfe = SamplerOptions(**{key: value for key, value in opts.items() if key in fields}).nfe
    evaluations = f' ({nfe} evaluations)' if nfe is not None else ''
    if opts['solver'] in DISCRETE_SOLVERS:
        respacing = str(opts['num_steps']) if opts.get('respacing') is None else opts['respacing']
        return f'{opts["solver"]} with respacing "{respacing}"{evaluations}'
    return f'{opts["solver"]} with {opts["num_steps"]} steps{evaluations}'


def load_network(network, device, allow_pickle_code):
    """(name, network): `network` or the bundled model, loaded (rank 0 first); ExposureError if it cannot be."""
    if network is None:
        network = jobs.DEFAULT_NETWORK
    try:
        net = dist.leader_first(lambda: loader.load_network(network, device=device, allow_pickle_code=allow_pickle_code),
                                loader.NetworkLoadError)
    except loader.NetworkLoadError as err:
        raise ExposureError(str(err)) from None
    return network, net


def open_dataset(path):
    """The labelled ImageFolderDataset at `path`; ExposureError if it cannot be opened."""
    if not os.path.exists(path):
        raise ExposureError(f'--data {path}: no such file or folder')
    try:
        return ImageFolderDataset(path, use_labels=True)
    except (IOError, ValueError) as err:
        raise ExposureError(f'--data {path}: {str(err).splitlines()[0]}') from None
