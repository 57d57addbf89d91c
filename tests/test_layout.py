"""The package layout: layers, no library module importing a script, no import cycle, and the
module paths that EDM's pickles and users' scripts name still working."""

import ast
import os

import pytest

import dnnlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Low to high. A module may import its own layer and the ones below it, never one above.
LAYERS = ['dnnlib', 'torch_utils', 'safeload', 'networks', 'training', 'samplers', 'metrics', 'analysis']
SCRIPTS = sorted(name[:-3] for name in os.listdir(ROOT) if name.endswith('.py'))


def modules():
    """{dotted module name: path} of every library module."""
    found = {}
    for package in LAYERS:
        for dirpath, _, filenames in os.walk(os.path.join(ROOT, package)):
            for name in filenames:
                if name.endswith('.py'):
                    rel = os.path.relpath(os.path.join(dirpath, name), ROOT)[:-3].replace(os.sep, '.')
                    found[rel[:-len('.__init__')] if rel.endswith('.__init__') else rel] = os.path.join(dirpath, name)
    return found


def imports_of(name, path):
    """The toolkit modules (and scripts) that the module imports anywhere in its body."""
    package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')
                base = '.'.join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f'{base}.{alias.name}' for alias in node.names)
    top = set(LAYERS) | set(SCRIPTS)
    return {m for m in out if m.split('.')[0] in top}


def test_every_import_goes_down_the_layers_and_no_library_module_imports_a_script():
    wrong = []
    for name, path in modules().items():
        own = LAYERS.index(name.split('.')[0])
        for target in imports_of(name, path):
            head = target.split('.')[0]
            if head in SCRIPTS:
                wrong.append(f'{name} imports the script {head}.py')
            elif LAYERS.index(head) > own:
                wrong.append(f'{name} imports {target} from a higher layer')
    assert not wrong, wrong


def test_no_import_cycle_between_modules():
    mods = modules()
    graph = {name: {t for t in imports_of(name, path) if t in mods and t != name} for name, path in mods.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = 'open'
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 'open':
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 'done'

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # A package's __init__ importing its own submodules is not a cycle of logic.
    cycles = [c for c in cycles if not any(a.startswith(b + '.') or b.startswith(a + '.') for a, b in zip(c, c[1:]))]
    assert not cycles, cycles


def test_a_made_up_upward_import_is_caught(tmp_path, monkeypatch):
    path = tmp_path / 'x.py'
    path.write_text('from analysis import sweep\nimport generate\nfrom .npz import NpzError\n')
    assert imports_of('safeload.x', str(path)) >= {'analysis.sweep', 'generate', 'safeload.npz.NpzError'}


@pytest.mark.parametrize('name', ['EDMPrecond', 'VPPrecond', 'VEPrecond', 'iDDPMPrecond', 'ADMPrecond',
                                  'SongUNet', 'DhariwalUNet', 'UNetBlock', 'Linear', 'Conv2d'])
def test_training_networks_is_edm_module_path(name):
    """EDM's training options (and this toolkit's train.py) name 'training.networks.X'."""
    import training.networks
    import networks.edm
    assert getattr(training.networks, name) is getattr(networks.edm, name)
    assert dnnlib.util.get_obj_by_name(f'training.networks.{name}') is getattr(networks.edm, name)


def test_training_networks_builds_a_network_by_class_name():
    net = dnnlib.util.construct_class_by_name(class_name='training.networks.EDMPrecond', img_resolution=8,
                                              img_channels=1, model_type='SongUNet', model_channels=8,
                                              channel_mult=[1], num_blocks=1, attn_resolutions=[])
    assert type(net).__module__ == 'networks.edm' and type(net).__name__ == 'EDMPrecond'


def test_exposure_script_stays_short():
    with open(os.path.join(ROOT, 'exposure.py'), encoding='utf-8') as f:
        assert len(f.read().splitlines()) <= 300
