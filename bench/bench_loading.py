"""The cost of the safe network loader beside EDM's plain pickle.load, side by side.

    python bench/bench_loading.py                                  # the bundled MNIST network
    python bench/bench_loading.py --net=network-snapshot.pkl --repeat=9
    python bench/bench_loading.py --generate --steps=18 --images=64  # generate.py end to end as well

Each loader runs in a fresh Python process, timed after its imports (torch, the toolkit's
network classes): the first load of the process, then the median of `--repeat` further loads.
"safe" is `safeload.networks.load_network_pickle` (opcode scan, restricted unpickling, graph
check, bounded dry run on 'meta', rebuild from this toolkit's classes); "plain" is EDM's way,
`pickle.load` with `torch_utils.persistence`, which executes the source stored in the pickle.
Later loads of the same network in one process reuse the dry run (safeload/unpickle.py
`DRY_RUN_CACHE`), so the first load is the figure for a command that loads one network.

With --generate, generate.py is also run end to end (process start to exit) on the same
network, once as is and once with --allow-pickle-code (pickle.load after the opcode scan),
and the ratio of their wall times is printed.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import click

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _child(loader, net, repeat):
    """Runs in the child process: the load times of one loader, as JSON on stdout."""
    import pickle

    import torch  # noqa: F401  imported before timing, as both loaders need it
    import networks.edm  # noqa: F401
    import training.augment  # noqa: F401
    import training.loss  # noqa: F401
    from safeload import networks as safe_networks

    def plain():
        with open(net, 'rb') as f:
            return pickle.load(f)

    def safe():
        return safe_networks.load_network_pickle(net)

    load = dict(plain=plain, safe=safe)[loader]
    times = []
    for _ in range(1 + repeat):
        start = time.perf_counter()
        data = load()
        times.append(time.perf_counter() - start)
        assert isinstance(data, dict) and 'ema' in data
    print(json.dumps(times))


def _load_times(loader, net, repeat):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), f'--child={loader}', f'--net={net}',
                          f'--repeat={repeat}'], check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _generate_time(net, images, steps, extra):
    with tempfile.TemporaryDirectory() as outdir:
        cmd = [sys.executable, os.path.join(ROOT, 'generate.py'), f'--network={net}', f'--outdir={outdir}',
               f'--seeds=0-{images - 1}', f'--steps={steps}', f'--batch={images}', *extra]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        return time.perf_counter() - start


@click.command()
@click.option('--net', default=os.path.join('models', 'mnist-cond-32x32.pkl'), show_default=True, help='Network pickle')
@click.option('--repeat', type=click.IntRange(min=1), default=7, show_default=True, help='Loads after the first, per process')
@click.option('--generate', 'run_generate', is_flag=True, help='Also time generate.py end to end')
@click.option('--images', type=click.IntRange(min=1), default=64, show_default=True, help='Images for --generate')
@click.option('--steps', type=click.IntRange(min=2), default=18, show_default=True, help='Sampler steps for --generate')
@click.option('--runs', type=click.IntRange(min=1), default=3, show_default=True, help='generate.py runs per variant (median)')
@click.option('--child', type=click.Choice(['safe', 'plain']), default=None, hidden=True)
def main(net, repeat, run_generate, images, steps, runs, child):
    """Time the safe loader against plain pickle.load on one network pickle."""
    if child is not None:
        _child(child, net, repeat)
        return
    results = {loader: _load_times(loader, net, repeat) for loader in ('plain', 'safe')}
    print(f'{net} ({os.path.getsize(net)} bytes), {repeat} loads after the first, median')
    print(f'{"loader":8s} {"first s":>9s} {"median s":>9s}')
    for loader, times in results.items():
        print(f'{loader:8s} {times[0]:9.4f} {statistics.median(times[1:]):9.4f}')
    first = results['safe'][0] / results['plain'][0]
    median = statistics.median(results['safe'][1:]) / statistics.median(results['plain'][1:])
    print(f'safe / plain: first {first:.2f}x, median {median:.2f}x')
    if run_generate:
        safe = statistics.median(_generate_time(net, images, steps, []) for _ in range(runs))
        plain = statistics.median(_generate_time(net, images, steps, ['--allow-pickle-code']) for _ in range(runs))
        print(f'generate.py {images} images, --steps={steps}: safe {safe:.2f} s, --allow-pickle-code {plain:.2f} s, '
              f'speed ratio (plain time / safe time) {plain / safe:.3f}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
