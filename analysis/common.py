"""What the analysis modules share: the error type, the CSV writer and the sampler's description."""

import csv
import dataclasses
import io

import dnnlib
from samplers import SamplerOptions
from samplers.discrete import DISCRETE_SOLVERS


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
