"""What the analysis modules share: the error type and the CSV writer."""

import csv
import io

import dnnlib


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
