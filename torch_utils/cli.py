"""Option types shared by every command-line tool, so that each kind of value is checked once.

Every float option of every CLI uses `FloatRange` (never click's `float` or `FloatRange`):
NaN is refused everywhere and infinities unless an option allows them, so no NaN or inf
reaches a sampler, a loss or a file. `--device` uses `DEVICE`, checked against this machine.
tests/test_bad_inputs.py walks every command and fails if an option escapes these types.
"""

import argparse
import math

import click

from . import distributed as dist


class FloatRange(click.FloatRange):
    """click.FloatRange that also refuses NaN, and +-inf unless `allow_inf`."""

    def __init__(self, min=None, max=None, min_open=False, max_open=False, allow_inf=False):  # pylint: disable=redefined-builtin
        super().__init__(min=min, max=max, min_open=min_open, max_open=max_open)
        self.allow_inf = allow_inf

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f'{value!r} is not a number', param, ctx)
        if math.isinf(number) and not self.allow_inf:
            self.fail(f'{value!r} is not a finite number', param, ctx)
        return super().convert(number, param, ctx)

    def _describe_range(self):
        return '' if self.min is None and self.max is None else super()._describe_range()


FLOAT = FloatRange()                    # any finite float
MAX_BATCH = 1 << 16                     # images per batch (one generator each); EDM-ES used 512


INT_LIMIT = (1 << 63) - 1              # integer options hold int64 values (torch, numpy, seeds)


class _BoundedIntRange(click.IntRange):
    """An integer option's range, narrowed to the int64 range; --help shows the original range."""

    def __init__(self, original):
        low, high = getattr(original, 'min', None), getattr(original, 'max', None)
        low = -INT_LIMIT if low is None else max(low, -INT_LIMIT)
        high = INT_LIMIT if high is None else min(high, INT_LIMIT)
        super().__init__(min=low, max=high, min_open=getattr(original, 'min_open', False),
                         max_open=getattr(original, 'max_open', False), clamp=getattr(original, 'clamp', False))
        self.original = original
        self.name = original.name  # --help names the original type ('integer', 'integer range')

    def convert(self, value, param, ctx):
        number = click.INT.convert(value, param, ctx)
        if not -INT_LIMIT <= number <= INT_LIMIT:
            self.fail(f'{value!r} is outside the range of a 64-bit integer', param, ctx)
        return self.original.convert(number, param, ctx)

    def _describe_range(self):
        if not isinstance(self.original, click.IntRange):
            return ''
        return self.original._describe_range()  # pylint: disable=protected-access

    def get_metavar(self, *args, **kwargs):
        return self.original.get_metavar(*args, **kwargs)

    def __repr__(self):
        return repr(self.original)


def bound_int_options(command):
    """Narrow every integer option of a click command (or group, recursively) to int64, so that
    a value such as 2^70 gets one line instead of an overflow deep in torch or numpy. --help is
    unchanged. Returns the command."""
    for sub in getattr(command, 'commands', dict()).values():
        bound_int_options(sub)
    for param in command.params:
        if isinstance(param.type, _BoundedIntRange):
            continue
        if isinstance(param.type, click.IntRange):
            param.type = _BoundedIntRange(param.type)
        elif param.type is click.INT:
            param.type = _BoundedIntRange(click.INT)
    return command


class DeviceType(click.ParamType):
    """A torch device name that exists on this machine (cpu, cuda, cuda:1, ...)."""
    name = 'device'

    def convert(self, value, param, ctx):
        if value is None:
            return None
        try:
            dist.parse_device(value)
        except dist.DeviceError as err:
            self.fail(str(err), param, ctx)
        return str(value).strip()


DEVICE = DeviceType()


def os_error_message(err: OSError, action='write') -> str:
    """One line for an OSError: 'cannot write PATH: No space left on device' (or 'PATH: ...'
    when `action` is None)."""
    where = str(err.filename) if getattr(err, 'filename', None) else ''
    reason = err.strerror or str(err) or type(err).__name__
    if action is None:
        return f'{where}: {reason}' if where else reason
    return f'cannot {action}{" " + where if where else ""}: {reason}'


def str2bool(text):
    """guided-diffusion's boolean syntax: yes/true/t/y/1 and no/false/f/n/0, any case."""
    if isinstance(text, bool):
        return text
    value = {'yes': True, 'true': True, 't': True, 'y': True, '1': True,
             'no': False, 'false': False, 'f': False, 'n': False, '0': False}.get(str(text).lower())
    if value is None:
        raise argparse.ArgumentTypeError(f'boolean value expected (True or False), got "{text}"')
    return value


class GuidedBool(click.ParamType):
    """guided-diffusion's booleans (str2bool) as a click type, for the commands with its flags."""
    name = 'bool'

    def convert(self, value, param, ctx):
        try:
            return str2bool(value)
        except argparse.ArgumentTypeError as err:
            self.fail(str(err), param, ctx)


GUIDED_BOOL = GuidedBool()


def guided_flag_type(name, default, types):
    """The click type of a guided-diffusion flag: types[name], else that of its default (booleans
    as guided-diffusion reads them, floats through FloatRange, None as str)."""
    return types.get(name) or (GUIDED_BOOL if isinstance(default, bool) else FLOAT if isinstance(default, float)
                               else str if default is None else type(default))
