"""generate.py's sampler options as click options, shared by every command that samples.

exposure.py (and any other command taking the toolkit's samplers) takes them from here, so
that all accept the same options with the same names, defaults and help.
"""

import click
from click.core import ParameterSource

from safeload.schedule import ScheduleError, read_schedule
from torch_utils import cli

from . import SOLVERS, SamplerOptions
from . import nfe as nfe_rule
from .discrete import DISCRETE_SOLVERS
from .sampler import TSDPM_DEFAULT_CUTOFF, SamplerOptionError
from .schedules import SCHEDULES


def options_from_cli(kwargs):
    """SamplerOptions from the values of the SAMPLER_OPTIONS given (None: not given).

    With `nfe` (--nfe) or a schedule file as `schedule` (--schedule=FILE), the configuration
    comes from samplers.nfe, and only the options given on the command line override it.
    """
    given = {key: value for key, value in kwargs.items() if value is not None}
    nfe = given.pop('nfe', None)
    path = given.pop('schedule') if given.get('schedule', 'linear') not in SCHEDULES else None
    ctx = click.get_current_context(silent=True)
    if (nfe is not None or path is not None) and ctx is not None:
        # On a command line only what the user typed overrides the recommended configuration.
        typed = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
        given = {key: value for key, value in given.items() if ctx.get_parameter_source(key) in typed}
    if 'ts_cutoff' not in given and given.get('ts_mode') == 'tsdpm':
        given['ts_cutoff'] = TSDPM_DEFAULT_CUTOFF
    if nfe is None and path is None:
        return SamplerOptions(**given)
    try:
        schedule = None if path is None else read_schedule(path)
    except ScheduleError as err:
        raise SamplerOptionError(str(err)) from None
    return nfe_rule.options_for(nfe, given, schedule)


def chosen_by(kwargs):
    """'--nfe=N', '--schedule=FILE', both, or None: what picked the sampler options."""
    parts = [f'--nfe={kwargs["nfe"]}'] if kwargs.get('nfe') is not None else []
    if kwargs.get('schedule', 'linear') not in SCHEDULES:
        parts.append(f'--schedule={kwargs["schedule"]}')
    return ' '.join(parts) or None


class _ScheduleOrFile(click.ParamType):
    """vp|ve|linear, or the path of a schedule file (exposure.py schedule --out)."""
    name = 'schedule'

    def convert(self, value, param, ctx):
        return value if value in SCHEDULES else click.Path(exists=True, dir_okay=False).convert(value, param, ctx)


# generate.py's sampler options, by name, in the order of its --help.
SAMPLER_OPTIONS = dict(
    nfe=click.option('--nfe', help='Recommended few-step configuration for exactly N evaluations (docs/solvers.md)', metavar='INT', type=click.IntRange(min=2)),
    steps=click.option('--steps', 'num_steps', help='Number of sampling steps', metavar='INT', type=click.IntRange(min=1), default=18, show_default=True),
    sigma_min=click.option('--sigma_min', help='Lowest noise level  [default: varies]', metavar='FLOAT', type=cli.FloatRange(min=0, min_open=True)),
    sigma_max=click.option('--sigma_max', help='Highest noise level  [default: varies]', metavar='FLOAT', type=cli.FloatRange(min=0, min_open=True)),
    rho=click.option('--rho', help='Time step exponent', metavar='FLOAT', type=cli.FloatRange(min=0, min_open=True), default=7, show_default=True),
    S_churn=click.option('--S_churn', 'S_churn', help='Stochasticity strength', metavar='FLOAT', type=cli.FloatRange(min=0), default=0, show_default=True),
    S_min=click.option('--S_min', 'S_min', help='Stoch. min noise level', metavar='FLOAT', type=cli.FloatRange(min=0), default=0, show_default=True),
    S_max=click.option('--S_max', 'S_max', help='Stoch. max noise level', metavar='FLOAT', type=cli.FloatRange(min=0, allow_inf=True), default='inf', show_default=True),
    S_noise=click.option('--S_noise', 'S_noise', help='Stoch. noise inflation', metavar='FLOAT', type=cli.FLOAT, default=1, show_default=True),
    solver=click.option('--solver', help=f'Solver: {", ".join([*SOLVERS, *DISCRETE_SOLVERS])} (docs/solvers.md; ddpm, ddim: ADM networks)', metavar='NAME', type=click.Choice([*SOLVERS, *DISCRETE_SOLVERS]), default='heun', show_default=True),
    order=click.option('--order', help='Order of --solver=dpmsolver|dpmsolver-ref|deis|unipc-bh1|unipc-bh2  [default: 3]', metavar='1|2|3', type=int),
    disc=click.option('--disc', help='Time step discretization {t_i}', metavar='vp|ve|iddpm|edm', type=click.Choice(['vp', 've', 'iddpm', 'edm']), default='edm', show_default=True),
    schedule=click.option('--schedule', help='Noise schedule sigma(t), or a levels FILE of exposure.py schedule', metavar='vp|ve|linear|FILE', type=_ScheduleOrFile(), default='linear', show_default=True),
    scaling=click.option('--scaling', help='Signal scaling s(t)', metavar='vp|none', type=click.Choice(['vp', 'none']), default='none', show_default=True),
    eps_scaler=click.option('--eps_scaler', help='Epsilon scaling b: eps / (b + k (N-1-i)) at step i', metavar='FLOAT', type=cli.FloatRange(min=0, min_open=True), default=1.0, show_default=True),
    eps_scaler_k=click.option('--eps_scaler_k', help='Epsilon scaling slope k (ADM-ES linear form)', metavar='FLOAT', type=cli.FLOAT, default=0.0, show_default=True),
    ts_window=click.option('--ts_window', help='Time shift window in grid positions each side (tsdpm: full width); 0 = off', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True),
    ts_cutoff=click.option('--ts_cutoff', help='Time shift only while the scheduled sigma exceeds this (tsdpm: timestep)  [default: 1; tsdpm: 300]', metavar='FLOAT', type=cli.FloatRange(min=0)),
    ts_signal_var=click.option('--ts_signal_var', help='Time shift signal variance  [default: sigma_data^2]', metavar='FLOAT', type=cli.FloatRange(min=0)),
    ts_mode=click.option('--ts_mode', help='Time shift: this toolkit\'s, or TS-DPM-ADM\'s (ddim only; on even with window 0)', metavar='clean|tsdpm', type=click.Choice(['clean', 'tsdpm']), default='clean', show_default=True),
    respacing=click.option('--timestep_respacing', 'respacing', help='ddpm/ddim: guided-diffusion\'s respacing (ddimN, N, N1,N2,...)  [default: --steps]', metavar='STR', type=str),
    eta=click.option('--eta', help='ddim: noise of each step (0 = deterministic)', metavar='FLOAT', type=cli.FloatRange(min=0), default=0.0, show_default=True),
    clip_denoised=click.option('--clip_denoised/--no-clip_denoised', 'clip_denoised', help='ddpm/ddim: clamp the predicted x0 to [-1, 1]', default=True, show_default=True),
    variance=click.option('--variance', help='ddpm: variance  [default: learned with learned sigma, else large]', metavar='learned|large|small', type=click.Choice(['learned', 'large', 'small'])),
)


def sampler_options(*names):
    """A decorator adding the SAMPLER_OPTIONS `names` (all of them by default), in that order."""
    def decorate(fn):
        for name in reversed(names or tuple(SAMPLER_OPTIONS)):
            fn = SAMPLER_OPTIONS[name](fn)
        return fn
    return decorate
