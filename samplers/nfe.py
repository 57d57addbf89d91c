"""`--nfe=N`: the recommended few-step configuration for exactly N network evaluations.

The rule (`RULE`) was chosen by bench/bench_nfe.py on the bundled MNIST model (docs/solvers.md,
*What --nfe picks*): a solver of one evaluation per level, N levels of EDM's Karras schedule
(rho 7, sigma_max 80) ending at a later sigma_min than EDM's 0.002, and the last step to 0.
A schedule file (exposure.py schedule) replaces the levels, solver and order by the searched
ones. Options given explicitly on the command line override either.
"""

import dataclasses

from .sampler import SamplerOptionError, SamplerOptions
from .solvers import WITH_ORDER

# N -> (solver, order, sigma_min); an entry serves every N up to the next one. Measured at N = 4,
# 5, 6, 8, 10 (docs/solvers.md; 0.25 from the 1,000-image measurement): the best tuned point at each; N = 2, 3
# take the N = 4 entry unmeasured.
RULE = {
    2: ('dpmpp2m', None, 0.05),
    5: ('dpmpp2m', None, 0.25),
}
RULE_RHO = 7.0
LEVEL_OPTIONS = ('num_steps', 'sigma_min', 'sigma_max', 'rho', 'disc', 'respacing')


def recommend(nfe):
    """The SamplerOptions fields of the rule for `nfe` evaluations."""
    if nfe < 2:
        raise SamplerOptionError(f'--nfe must be at least 2, got {nfe}')
    solver, order, sigma_min = RULE[max(n for n in RULE if n <= nfe)]
    return dict(solver=solver, order=order, num_steps=nfe, sigma_min=sigma_min, rho=RULE_RHO)


def from_schedule(schedule):
    """The SamplerOptions fields of a schedule file's contents (safeload.schedule.read_schedule)."""
    return dict(solver=schedule['solver'], order=schedule['order'], num_steps=len(schedule['levels']),
                levels=tuple(schedule['levels']))


def options_for(nfe=None, given=None, schedule=None):
    """SamplerOptions for `nfe` evaluations (the rule, or `schedule`), with the options in `given`
    (explicitly chosen ones, by SamplerOptions field) taking precedence."""
    given = dict(given or {})
    if schedule is not None:
        if nfe is not None and schedule['nfe'] != nfe:
            raise SamplerOptionError(f'--nfe={nfe}, but the schedule file was searched for {schedule["nfe"]} evaluations')
        chosen = from_schedule(schedule)
    else:
        chosen = recommend(nfe)
    clash = [name for name in LEVEL_OPTIONS if name in given]
    if schedule is not None and clash:
        flag = dict(num_steps='steps', respacing='timestep_respacing').get(clash[0], clash[0])
        raise SamplerOptionError(f'--{flag} and the schedule file both choose the levels; give one')
    if given.get('solver', chosen['solver']) not in WITH_ORDER:
        chosen.pop('order', None)
    if schedule is None and 'solver' in given and given['solver'] != chosen['solver']:
        chosen.pop('order', None)
    options = SamplerOptions(**{**chosen, **given})
    options.check()
    return options


def describe(options):
    """One line naming the configuration: solver, order, levels."""
    order = f' order {options.solver_order}' if options.solver in WITH_ORDER else ''
    if options.levels is not None:
        levels = 'levels ' + ', '.join(f'{v:.4g}' for v in options.levels) + ', 0'
    else:
        sigma_min = 'default' if options.sigma_min is None else f'{options.sigma_min:g}'
        levels = f'{options.num_steps} Karras levels (rho {options.rho:g}, sigma_min {sigma_min}) and 0'
    return f'{options.solver}{order}, {levels}: {options.nfe} evaluations'


assert all(f in {f.name for f in dataclasses.fields(SamplerOptions)} for f in LEVEL_OPTIONS)
