"""Hostile network files, written opcode by opcode: each is refused with one line, quickly,
without running code and without memory or time growing past what the file holds."""

import io
import json
import pickle
import resource
import struct
import time

import pytest
import torch

import dnnlib
from networks import edm as networks
from safeload import networks as loader, unpickle as safe_unpickle, weights
from safeload.networks import NetworkLoadError

#----------------------------------------------------------------------------
# A tiny pickle assembler: enc() writes plain values, Raw() splices opcodes in.


class Raw:
    def __init__(self, data):
        self.data = data


def enc(x):
    if isinstance(x, Raw):
        return x.data
    if x is None:
        return pickle.NONE
    if x is True or x is False:
        return pickle.NEWTRUE if x else pickle.NEWFALSE
    if isinstance(x, int):
        n = (x.bit_length() + 8) // 8
        return pickle.LONG1 + bytes([n]) + x.to_bytes(n, 'little', signed=True)
    if isinstance(x, float):
        return pickle.BINFLOAT + struct.pack('>d', x)
    if isinstance(x, str):
        data = x.encode()
        return pickle.BINUNICODE + struct.pack('<I', len(data)) + data
    if isinstance(x, bytes):
        return pickle.BINBYTES + struct.pack('<I', len(x)) + x
    if isinstance(x, list):
        return pickle.EMPTY_LIST + (pickle.MARK + b''.join(map(enc, x)) + pickle.APPENDS if x else b'')
    if isinstance(x, tuple):
        return pickle.MARK + b''.join(map(enc, x)) + pickle.TUPLE
    if isinstance(x, dict):
        items = b''.join(enc(k) + enc(v) for k, v in x.items())
        return pickle.EMPTY_DICT + (pickle.MARK + items + pickle.SETITEMS if x else b'')
    raise TypeError(type(x))


def glob(module, name):
    return Raw(pickle.GLOBAL + f'{module}\n{name}\n'.encode())


def call(module, name, *args):
    return Raw(glob(module, name).data + enc(tuple(args)) + pickle.REDUCE)


def memo(x):
    """x, stored in the memo (MEMOIZE: the next free index)."""
    return Raw(enc(x) + pickle.MEMOIZE)


def get(index):
    return Raw(pickle.BINGET + bytes([index]) if index < 256 else pickle.LONG_BINGET + struct.pack('<I', index))


def nn_module(name, state):
    """A torch.nn module as pickle writes it: NEWOBJ of the class, then BUILD with its state."""
    return Raw(glob('torch.nn.modules.container', name).data + pickle.EMPTY_TUPLE + pickle.NEWOBJ + enc(state) + pickle.BUILD)


def module_state(modules=None, **extra):
    return dict(training=False, _parameters={}, _buffers={}, _non_persistent_buffers_set=Raw(pickle.EMPTY_SET),
                _modules=modules or {}, **extra)


def persistent(class_name, init_kwargs, **state):
    meta = dict(type='class', version=6, module_src='', class_name=class_name,
                state=dict(_init_args=(), _init_kwargs=init_kwargs, **state))
    return call('torch_utils.persistence', '_reconstruct_persistent_obj', meta)


def dumps(x):
    return pickle.PROTO + b'\x04' + enc(x) + pickle.STOP


TINY = dict(img_resolution=8, img_channels=1, label_dim=0, model_type='SongUNet', model_channels=8,
            channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])


def _refused(tmp_path, data, match, seconds=5):
    """Load `data` as a network: assert one-line NetworkLoadError matching `match`, in time."""
    path = tmp_path / 'hostile.pkl'
    path.write_bytes(data)
    start = time.monotonic()
    with pytest.raises(NetworkLoadError, match=match) as info:
        loader.load_network(str(path))
    assert time.monotonic() - start < seconds
    assert '\n' not in str(info.value)
    return str(info.value)

#----------------------------------------------------------------------------


def test_assembler_writes_what_pickle_reads():
    value = dict(a=[1, -2, 3.5, 'x', None, True], b=(b'yz', {}), c=[])
    assert pickle.loads(dumps(value)) == value
    shared = dumps([memo([1, 2]), get(0)])
    loaded = pickle.loads(shared)
    assert loaded == [[1, 2], [1, 2]] and loaded[0] is loaded[1]


def test_billion_laughs_of_lists(tmp_path):
    # Thirty lists, each holding the one before ten times: 10^30 strings as a tree.
    chain = memo(['lol'] * 10).data + b''.join(pickle.POP + memo([get(i)] * 10).data for i in range(29))
    data = dumps(dict(ema=Raw(chain)))
    assert len(data) < 1000
    _refused(tmp_path, data, 'expands to more than')


def test_billion_laughs_of_submodules(tmp_path):
    # Each ModuleDict holds the one below twice: 2^20 paths to the weights of one tiny network.
    chain = memo(nn_module('ModuleDict', module_state())).data + b''.join(
        pickle.POP + memo(nn_module('ModuleDict', module_state(dict(a=get(i), b=get(i))))).data for i in range(20))
    data = dumps(dict(ema=persistent('EDMPrecond', TINY, **module_state(dict(model=Raw(chain))))))
    assert len(data) < 10000
    _refused(tmp_path, data, 'expands to more than')


def test_self_reference_is_refused(tmp_path):
    # l = []; l.append(l)
    data = dumps(dict(ema=Raw(pickle.EMPTY_LIST + pickle.MEMOIZE + get(0).data + pickle.APPEND)))
    assert len(data) < 100
    _refused(tmp_path, data, 'contains itself')
    # A persistent object that is its own submodule: its state (memo 0) gets _modules = {model: itself (memo 1)}.
    state = memo(dict(_init_args=(), _init_kwargs=TINY))
    record = Raw(persistent('EDMPrecond', {}).data.replace(enc(dict(_init_args=(), _init_kwargs={})), state.data)
                 + pickle.MEMOIZE + get(0).data + enc('_modules') + pickle.EMPTY_DICT + enc('model') + get(1).data
                 + pickle.SETITEM + pickle.SETITEM + pickle.POP)
    data = dumps(dict(ema=record))
    assert len(data) < 1000
    _refused(tmp_path, data, 'contains itself')


@pytest.mark.parametrize('kind', ['list', 'dict'])
def test_deep_nesting_is_refused_without_recursion_error(tmp_path, kind):
    depth = 5000  # deeper than Python's recursion limit
    if kind == 'list':
        body = pickle.EMPTY_LIST * depth + pickle.APPEND * (depth - 1)
    else:
        body = (pickle.EMPTY_DICT + enc('k')) * (depth - 1) + pickle.EMPTY_DICT + pickle.SETITEM * (depth - 1)
    _refused(tmp_path, dumps(dict(ema=Raw(body))), 'nested deeper than')


def test_deep_tuple_key_is_refused_before_hashing(tmp_path):
    # Hashing a tuple nested a million deep overflows the C stack (a crash, not an exception);
    # the opcode scan refuses the nesting before anything is built.
    data = dumps(Raw(pickle.EMPTY_DICT + pickle.EMPTY_TUPLE + pickle.TUPLE1 * 150 + pickle.NONE + pickle.SETITEM))
    assert len(data) < 200
    _refused(tmp_path, data, 'tuples nested deeper than')
    frozen = call('builtins', 'frozenset', [Raw(pickle.EMPTY_TUPLE + pickle.TUPLE1 * 150)])
    _refused(tmp_path, dumps(dict(ema=frozen)), 'tuples nested deeper than')


@pytest.mark.parametrize('opcode', [pickle.BINBYTES8, pickle.BYTEARRAY8, pickle.BINUNICODE8])
def test_declared_lengths_past_the_end_are_truncation(tmp_path, opcode):
    data = pickle.PROTO + b'\x05' + opcode + struct.pack('<Q', 1 << 40) + b'abc' + pickle.STOP
    _refused(tmp_path, data, 'truncated')


def test_bytearray_of_a_huge_size_is_refused(tmp_path):
    _refused(tmp_path, dumps(dict(ema=call('builtins', 'bytearray', 1 << 40))), 'bytearray')


def _legacy_storage(numel, payload, type_name='FloatStorage'):
    """torch.save's legacy storage format, as in EDM pickles, with a declared element count."""
    head = b''.join(pickle.dumps(x, protocol=2) for x in (
        0x1950a86a20f9469cfc6c, 1001, dict(protocol_version=1001, little_endian=True, type_sizes=dict(short=2, int=4, long=4))))
    record = (pickle.PROTO + b'\x02' + pickle.MARK + enc('storage') + pickle.GLOBAL + f'torch\n{type_name}\n'.encode()
              + enc('0') + enc('cpu') + enc(numel) + pickle.NONE + pickle.TUPLE + pickle.BINPERSID + pickle.STOP)
    return head + record + pickle.dumps(['0'], protocol=2) + struct.pack('<q', numel) + payload


def _tensor(numel, payload, size, stride):
    storage = call('torch.storage', '_load_from_bytes', _legacy_storage(numel, payload))
    return call('torch._utils', '_rebuild_tensor_v2', storage, 0, tuple(size), tuple(stride), False,
                call('collections', 'OrderedDict'))


def test_legacy_storage_round_trip_reads_real_tensors(tmp_path):
    # The hand-written storage format is the one torch writes: a 2x2 tensor loads exactly.
    data = dumps(dict(t=_tensor(4, struct.pack('<4f', 1, 2, 3, 4), [2, 2], [2, 1])))
    assert torch.equal(safe_unpickle.safe_loads(data)['t'], torch.tensor([[1., 2.], [3., 4.]]))
    real = pickle.dumps(torch.arange(6.).reshape(2, 3))
    assert torch.equal(safe_unpickle.safe_loads(real), torch.arange(6.).reshape(2, 3))


def test_storage_declared_larger_than_its_bytes(tmp_path):
    data = dumps(dict(ema=_tensor(1 << 40, struct.pack('<f', 1), [1], [1])))
    _refused(tmp_path, data, 'storage declares')


def test_tensor_declared_larger_than_the_file(tmp_path):
    # Zero strides let a one-element storage hold a 10^12-element tensor.
    data = dumps(dict(ema=_tensor(1, struct.pack('<f', 1), [10 ** 6, 10 ** 6], [0, 0])))
    _refused(tmp_path, data, 'more than the .*-byte file holds')
    data = dumps(dict(ema=_tensor(2, struct.pack('<2f', 1, 2), [3], [1])))
    _refused(tmp_path, data, 'past the end of its storage')


@pytest.mark.parametrize('change, match', [
    (dict(model_channels=1 << 20), 'more than .* bytes|needs .* bytes of weights'),
    (dict(model_channels=-8), 'cannot build EDMPrecond'),
    (dict(model_channels=1, num_blocks=10 ** 9), 'torch operations|more than .* bytes'),
    (dict(channel_mult=[1] * 3000), 'torch operations|more than .* bytes'),
])
def test_networks_built_with_hostile_sizes(tmp_path, change, match):
    kwargs = dict(TINY, **change)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _refused(tmp_path, dumps(dict(ema=persistent('EDMPrecond', kwargs, **module_state()))), match, seconds=20)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 512 * 1024  # KiB: no big allocation


def test_weights_must_match_in_shape(tmp_path):
    net = networks.EDMPrecond(**TINY)
    assert loader.load_network_pickle(_write(tmp_path, pickle.dumps(dict(ema=net))))['ema'] is not None
    net._init_kwargs['model_channels'] = 4  # the stored arguments no longer match the stored weights
    _refused(tmp_path, pickle.dumps(dict(ema=net)), 'has shape')


def _write(tmp_path, data):
    path = tmp_path / 'net.pkl'
    path.write_bytes(data)
    return str(path)

#----------------------------------------------------------------------------
# Only this toolkit's networks.


def test_bare_torch_module_as_network_is_refused(tmp_path):
    identity = nn_module('Identity', module_state(img_resolution=8, img_channels=1, label_dim=0, sigma_min=0.002,
                                                  sigma_max=80.0))
    data = dumps(dict(ema=Raw(identity.data.replace(b'container', b'linear'))))
    message = _refused(tmp_path, data, r'refus.*torch\.nn\.Identity outside a network')
    assert '--allow-pickle-code' in message


def test_toolkit_class_that_is_not_a_network_is_refused(tmp_path):
    data = pickle.dumps(dict(ema=networks.SongUNet(img_resolution=8, in_channels=1, out_channels=1, model_channels=8,
                                                   channel_mult=[1], num_blocks=1, attn_resolutions=[])))
    _refused(tmp_path, data, 'its network is a SongUNet, not one of .*EDMPrecond')
    _refused(tmp_path, dumps(dict(ema='EDMPrecond')), '"ema" is a str, not a network')


def test_network_classes_are_every_precond():
    names = {cls.__name__ for cls in safe_unpickle.network_classes()}
    assert {'VPPrecond', 'VEPrecond', 'iDDPMPrecond', 'EDMPrecond'} <= names
    assert all(name.endswith('Precond') for name in names)


def test_easydict_state_cannot_reach_setstate(tmp_path):
    # An EasyDict whose key __setstate__ names a callable, followed by BUILD: plain pickle
    # with the old EasyDict would call it; here the record refuses the state.
    obj = Raw(glob('dnnlib.util', 'EasyDict').data + pickle.EMPTY_TUPLE + pickle.NEWOBJ
              + enc('__setstate__') + glob('builtins', 'set').data + pickle.SETITEM + enc(dict(x=1)) + pickle.BUILD)
    _refused(tmp_path, dumps(dict(ema=obj)), 'unexpected state for a stored EasyDict')
    # The EasyDict handed out never answers a dunder lookup with a key (copy and pickle look them up).
    d = dnnlib.EasyDict(__setstate__=print, __deepcopy__=print, a=1)
    assert d.a == 1 and not hasattr(d, '__setstate__')
    import copy
    assert copy.deepcopy(d) == d


def test_state_on_records_and_torch_globals_is_refused(tmp_path):
    # BUILD on a tensor would call Tensor.__setstate__ (set_ with any storage); tensors are records.
    tensor = _tensor(4, struct.pack('<4f', 1, 2, 3, 4), [4], [1])
    data = dumps(dict(ema=Raw(tensor.data + enc((1, 2, 3, 4)) + pickle.BUILD)))
    _refused(tmp_path, data, 'unexpected state for a stored tensor')
    _refused(tmp_path, dumps(dict(ema=call('torch', 'load', 'x'))), r'refus.*torch\.load')

#----------------------------------------------------------------------------
# Weights-only files.


def _weights_file(tmp_path, payload):
    path = tmp_path / 'net.pt'
    torch.save(payload, str(path))
    return str(path)


def _tiny_payload():
    net = networks.EDMPrecond(**TINY)
    buf = io.BytesIO()
    weights.save_weights(dict(ema=net, dataset_kwargs=dict(path='x')), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize('case, match', [
    ('config_not_json', 'not JSON'),
    ('config_not_str', '"config" is missing or not a string'),
    ('config_list', 'must map each key'),
    ('unknown_class', 'unknown class "Evil"'),
    ('bad_kwargs', 'cannot build EDMPrecond'),
    ('kwargs_not_dict', 'init_kwargs an object'),
    ('missing_tensor', 'do not match EDMPrecond: missing'),
    ('extra_tensor', 'unexpected'),
    ('wrong_shape', 'has shape'),
    ('not_a_tensor', 'is not a tensor'),
    ('tensors_for_data', 'no configured class takes'),
    ('no_format', 'not an edmkit-weights/1 file'),
    ('entry_without_either', 'neither'),
])
def test_malformed_weights_files(tmp_path, case, match):
    payload = _tiny_payload()
    config = json.loads(payload['config'])
    tensors = payload['tensors']['ema']
    first = next(iter(tensors))
    if case == 'config_not_json':
        payload['config'] = '{not json'
    elif case == 'config_not_str':
        payload['config'] = 5
    elif case == 'config_list':
        payload['config'] = json.dumps([1, 2])
    elif case == 'unknown_class':
        config['ema']['class_name'] = 'Evil'
    elif case == 'bad_kwargs':
        config['ema']['init_kwargs']['no_such_argument'] = 1
    elif case == 'kwargs_not_dict':
        config['ema']['init_kwargs'] = [1]
    elif case == 'missing_tensor':
        del tensors[first]
    elif case == 'extra_tensor':
        tensors['extra.weight'] = torch.zeros(1)
    elif case == 'wrong_shape':
        tensors[first] = torch.zeros(tensors[first].numel() + 1)
    elif case == 'not_a_tensor':
        tensors[first] = [1.0, 2.0]
    elif case == 'tensors_for_data':
        payload['tensors']['dataset_kwargs'] = dict(w=torch.zeros(1))
    elif case == 'no_format':
        del payload['format']
    elif case == 'entry_without_either':
        config['other'] = dict(foo=1)
    if case not in ('config_not_json', 'config_not_str', 'config_list'):
        payload['config'] = json.dumps(config)
    path = _weights_file(tmp_path, payload)
    with pytest.raises(NetworkLoadError, match=match) as info:
        loader.load_network(path)
    assert '\n' not in str(info.value)


def test_weights_file_with_hostile_sizes(tmp_path):
    payload = _tiny_payload()
    config = json.loads(payload['config'])
    config['ema']['init_kwargs']['model_channels'] = 1 << 20
    payload['config'] = json.dumps(config)
    with pytest.raises(NetworkLoadError, match='more than|needs'):
        loader.load_network(_weights_file(tmp_path, payload))
    # A zip entry shorter than its declared storage, and a compressed entry (a zip bomb).
    import zipfile
    path = _weights_file(tmp_path, _tiny_payload())
    with zipfile.ZipFile(path) as z:
        entries = [(info, z.read(info)) for info in z.infolist()]
    for case in ('short', 'deflated'):
        out = tmp_path / f'{case}.pt'
        with zipfile.ZipFile(out, 'w') as z:
            for info, data in entries:
                if case == 'short' and info.filename.endswith('/data/0'):
                    data = data[:4]
                z.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED if case == 'deflated' else zipfile.ZIP_STORED)
        with pytest.raises(NetworkLoadError, match='storage declares|compressed') as info:
            loader.load_network_pickle(str(out))
        assert '\n' not in str(info.value)
