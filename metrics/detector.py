"""Loading the feature detector: a pickled module called as net(images, return_features=True).

NVIDIA's detectors (Inception-v3 for FID, VGG16 for StyleGAN3's precision/recall) and those
this toolkit writes are TorchScript archives inside a pickle: the pickle is one call of
`torch.jit.load` on an `io.BytesIO` holding the archive. By default that structure is read
with a restricted unpickler that resolves nothing else and runs nothing; the archive is then
checked and loaded with `torch.jit.load` from bytes. Any other pickle is refused unless pickle
code execution is allowed (--allow-pickle-code or EDMKIT_ALLOW_PICKLE_CODE=1).
"""

import hashlib
import io
import pickle
import re
import sys
import zipfile

import torch

import dnnlib
from safeload.networks import ALLOW_CODE_ENV, pickle_code_allowed
from safeload.npz import NpzError
from safeload.unpickle import BadPickleError, UnsafePickleError, _Unpickler, scan

# NVIDIA's TorchScript translation of the TensorFlow Inception-v3 used for FID (as in EDM).
INCEPTION_URL = 'https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pkl'
# NVIDIA's VGG16 used by StyleGAN3's precision/recall (pr50k3).
VGG16_URL = 'https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/vgg16.pkl'

# The digit classifier bundled for the bundled MNIST model (exposure.py classifier writes such files).
BUNDLED_CLASSIFIER = 'models/mnist-classifier.pkl'

MAX_CODE_BYTES = 32 << 20   # TorchScript source in one archive (NVIDIA's Inception has well under 1 MiB).


class MetricError(Exception):
    """Bad input to a metric computation; the message is one line saying what and why."""


def as_metric_error(fn, *args, **kwargs):
    """fn(*args, **kwargs), with a damaged .npz file (safeload.npz.NpzError) raised as MetricError."""
    try:
        return fn(*args, **kwargs)
    except NpzError as err:
        raise MetricError(str(err)) from None


def one_line(err):
    """Return 'Type: first line of the message' for an exception."""
    text = str(err).strip()
    return f'{type(err).__name__}: {text.splitlines()[0].rstrip(",;:")}' if text else type(err).__name__

#----------------------------------------------------------------------------
# The TorchScript-in-a-pickle structure, read without running anything.


class _ArchiveBuffer:
    """Stands in for io.BytesIO while unpickling: keeps the bytes, does nothing else."""

    def __init__(self, initial_bytes=b''):
        self.__setstate__((initial_bytes, 0, None))

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 3 and isinstance(state[0], (bytes, bytearray))
                and isinstance(state[1], int) and 0 <= state[1] <= len(state[0]) and state[2] in (None, {})):
            raise UnsafePickleError('malformed BytesIO record')
        self.data = memoryview(state[0])[state[1]:]  # torch.jit.load reads from the current position


class _NoArchive(Exception):
    """The pickle unpickled safely but holds something else than a TorchScript archive."""


class _TorchScriptRecord:
    """What the pickle's torch.jit.load call would load: the archive bytes."""

    def __init__(self, archive):
        self.archive = archive


def _record_jit_load(f, map_location=None, _extra_files=None, *_args):
    """Stands in for torch.jit.load: records the archive instead of loading it."""
    if not isinstance(f, _ArchiveBuffer):
        raise UnsafePickleError(f'torch.jit.load of a {type(f).__name__}, not of the bytes of an archive')
    return _TorchScriptRecord(f.data)


def _latin1_bytes(text, encoding='latin1'):
    """Stands in for _codecs.encode, which protocol-2 pickles use to store bytes."""
    if not isinstance(text, str) or encoding != 'latin1':
        raise UnsafePickleError('_codecs.encode is allowed for latin1 byte strings only')
    return text.encode('latin1')


_DETECTOR_GLOBALS = {
    ('torch.jit._serialization', 'load'): _record_jit_load,
    ('torch.jit', 'load'): _record_jit_load,  # pickles written with torch < 1.7
    ('_io', 'BytesIO'): _ArchiveBuffer,
    ('_codecs', 'encode'): _latin1_bytes,
}


class _DetectorUnpickler(_Unpickler):
    """The network loader's restricted unpickler with the detector allow-list (nothing else resolves)."""

    def __init__(self, data):
        super().__init__(data, _DETECTOR_GLOBALS)

    def find_class(self, module, name):
        value = _DETECTOR_GLOBALS.get((module, name))
        if value is None:
            raise UnsafePickleError(f'refused global "{module}.{name}" (a detector pickle calls torch.jit.load on archive bytes only)')
        return value


def _check_archive(archive):
    """Refuse TorchScript archives whose size claims exceed what the file can hold or whose code can touch files.

    TorchScript code cannot import Python modules or call Python functions; the only operators of
    stock PyTorch that reach the file system are torch.save and torch.from_file, refused here.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(archive))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise UnsafePickleError(f'the archive inside is not a TorchScript archive ({one_line(err)})') from None
    stored = sum(i.file_size for i in infos if i.compress_type == zipfile.ZIP_STORED)
    declared = sum(i.file_size for i in infos)
    if stored > len(archive) or declared > 4 * len(archive) + MAX_CODE_BYTES:
        raise UnsafePickleError(f'the archive declares more data than it holds ({declared} bytes in {len(archive)})')
    code = [i for i in infos if '/code/' in i.filename and i.filename.endswith('.py')]
    if not code or not any(i.filename.endswith('/data.pkl') for i in infos):
        raise UnsafePickleError('the archive inside is not a TorchScript archive (no code/ or data.pkl)')
    if sum(i.file_size for i in code) > MAX_CODE_BYTES:
        raise UnsafePickleError(f'the archive holds more than {MAX_CODE_BYTES >> 20} MiB of TorchScript code')
    for info in code:
        with zf.open(info) as f:
            text = f.read(MAX_CODE_BYTES + 1)
        found = re.search(rb'\b(save|from_file)\b', text)
        if found:
            raise UnsafePickleError(f'its TorchScript code ({info.filename}) calls {found.group(1).decode()}, which reaches the file system')


def _load_torchscript_pickle(data):
    """Return the module of a TorchScript-in-pickle detector file, running no code from the pickle."""
    end = scan(data)  # the opcode scan of the network loader: bounded work, nesting and size
    record = _DetectorUnpickler(data[:end]).load()
    if not isinstance(record, _TorchScriptRecord):
        raise _NoArchive(f'it holds a {type(record).__name__}, not a module (detectors are TorchScript archives inside a pickle)')
    _check_archive(record.archive)
    try:
        return torch.jit.load(io.BytesIO(record.archive), map_location='cpu')
    except Exception as err:  # whatever the TorchScript reader raises
        raise _NoArchive(f'the TorchScript archive inside does not load ({one_line(err)})') from None

#----------------------------------------------------------------------------


def load_detector_and_digest(url=INCEPTION_URL, device=None, verbose=False, allow_pickle_code=None):
    """Return (detector module in eval mode on `device`, SHA-256 hex digest of the file).

    The file is a path or URL (downloads are cached). By default only TorchScript-in-pickle
    files load (see the module docstring); allow_pickle_code=True (or EDMKIT_ALLOW_PICKLE_CODE=1
    when None) unpickles any file with plain pickle, running the code it names.
    """
    try:
        with dnnlib.util.open_url(url, verbose=verbose) as f:
            data = f.read()
    except OSError as err:  # OpenURLError included
        hint = ''
        if dnnlib.util.is_url(url):  # a failed download: the ways to work offline
            hint = (f'; or pass a local file with --detector=PKL (for the bundled MNIST model: '
                    f'--detector={BUNDLED_CLASSIFIER}, see docs/fid.md)')
        raise MetricError(f'cannot load detector: {err}{hint}') from None
    digest = hashlib.sha256(data).hexdigest()
    allowed = pickle_code_allowed(allow_pickle_code)
    try:
        if allowed:
            print(f'warning: running the code stored in {url} (pickle code execution is allowed)', file=sys.stderr)
            net = pickle.load(io.BytesIO(data))
        else:
            net = _load_torchscript_pickle(data)
    except UnsafePickleError as err:
        raise MetricError(f'refusing to load detector {url}: {err}; if you trust this file, '
                          f'pass --allow-pickle-code or set {ALLOW_CODE_ENV}=1') from None
    except _NoArchive as err:
        raise MetricError(f'cannot load detector {url}: {err}') from None
    except BadPickleError as err:  # the opcode scan: the text says why, worded for networks
        reason = re.sub(r'^not a network pickle \((.*)\)$', r'\1', str(err))
        raise MetricError(f'cannot load detector {url}: not a pickled module ({reason})') from None
    except Exception as err:  # unpickling and torch.jit.load fail in many ways; all mean "not a detector"
        reason = 'file is truncated' if isinstance(err, EOFError) else one_line(err)
        raise MetricError(f'cannot load detector {url}: not a pickled module ({reason})') from None
    if not callable(net) or not hasattr(net, 'to'):
        raise MetricError(f'cannot load detector {url}: it holds a {type(net).__name__}, not a module')
    net = net.to(torch.device('cpu') if device is None else device)
    return (net.eval() if hasattr(net, 'eval') else net), digest


def load_detector(url=INCEPTION_URL, device=None, verbose=False, allow_pickle_code=None):
    """Return the detector module of a path or URL, in eval mode on `device` (see load_detector_and_digest)."""
    return load_detector_and_digest(url, device=device, verbose=verbose, allow_pickle_code=allow_pickle_code)[0]


def pickle_torchscript(module):
    """Return bytes of a plain pickle of a TorchScript module, loadable with pickle.load like EDM's detector.

    TorchScript modules cannot be pickled directly, so the pickle calls torch.jit.load on the
    serialized archive; it needs nothing but torch to load, and load_detector reads it without
    running pickle code.
    """
    buf = io.BytesIO()
    torch.jit.save(module, buf)

    class _Reducer(pickle.Pickler):
        def reducer_override(self, obj):
            if obj is module:
                return torch.jit.load, (io.BytesIO(buf.getvalue()),)
            return NotImplemented

    out = io.BytesIO()
    _Reducer(out).dump(module)
    return out.getvalue()
