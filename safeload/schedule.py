"""Schedule files (exposure.py schedule --out): JSON with the levels a few-step run uses.

    {"format": "edm-schedule/1", "nfe": 5, "solver": "unipc-bh2", "order": 3,
     "levels": [80.0, 9.1, 1.6, 0.31, 0.09], ...}

`levels` are sigma_0 > ... > sigma_{N-1} > 0; the run appends sigma_N = 0. Other keys (how the
search ran) are kept but not read. The file is read with a size bound and checked field by
field; anything else is one ScheduleError line naming the file.
"""

import math
import os

from . import state

SCHEDULE_FORMAT = 'edm-schedule/1'
MAX_BYTES = 1 << 20
MAX_LEVELS = 10_000


class ScheduleError(ValueError):
    """A schedule file that cannot be used (one line, naming the file)."""


def read_schedule(path):
    """dict(nfe, solver, order, levels) of the schedule file at `path`."""
    try:
        doc = state.read_json(path, kind=object, max_bytes=MAX_BYTES, label=f'schedule {path}')
    except (state.StateFileError, FileNotFoundError) as err:
        raise ScheduleError(str(err) if isinstance(err, state.StateFileError) else
                            f'cannot read schedule {path}: {err.strerror or err}') from None
    return check_schedule(doc, path)


def check_schedule(doc, path='schedule'):
    """The used fields of a schedule document, checked."""
    if not isinstance(doc, dict) or doc.get('format') != SCHEDULE_FORMAT:
        raise ScheduleError(f'{os.fspath(path)} is not a schedule file (expected "format": "{SCHEDULE_FORMAT}")')
    levels, solver, order, nfe = doc.get('levels'), doc.get('solver'), doc.get('order'), doc.get('nfe')
    if not (isinstance(levels, list) and 1 <= len(levels) <= MAX_LEVELS
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in levels)
            and all(a > b for a, b in zip(levels, levels[1:]))):
        raise ScheduleError(f'{path}: "levels" must be a list of strictly decreasing positive numbers')
    if not isinstance(solver, str) or len(solver) > 64:
        raise ScheduleError(f'{path}: "solver" must be a solver name')
    if order is not None and (not isinstance(order, int) or isinstance(order, bool)):
        raise ScheduleError(f'{path}: "order" must be an integer or null')
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise ScheduleError(f'{path}: "nfe" must be a positive integer')
    return dict(nfe=nfe, solver=solver, order=order, levels=[float(v) for v in levels])
