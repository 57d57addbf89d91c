"""Loading the feature detector: a pickled module called as net(images, return_features=True)."""

import io
import pickle

import torch

import dnnlib

# NVIDIA's TorchScript translation of the TensorFlow Inception-v3 used for FID (as in EDM).
INCEPTION_URL = 'https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pkl'


class MetricError(Exception):
    """Bad input to a metric computation; the message is one line saying what and why."""


def one_line(err):
    """Return 'Type: first line of the message' for an exception."""
    text = str(err).strip()
    return f'{type(err).__name__}: {text.splitlines()[0].rstrip(",;:")}' if text else type(err).__name__


def load_detector(url=INCEPTION_URL, device=None, verbose=False):
    """Return the detector module unpickled from a path or URL (cached download), in eval mode on `device`."""
    try:
        with dnnlib.util.open_url(url, verbose=verbose) as f:
            data = f.read()
    except OSError as err:  # OpenURLError included
        raise MetricError(f'cannot load detector: {err}') from None
    try:
        net = pickle.load(io.BytesIO(data))
    except Exception as err:  # unpickling can fail in many ways; all mean "not a detector pickle"
        reason = 'file is truncated' if isinstance(err, EOFError) else one_line(err)
        raise MetricError(f'cannot load detector {url}: not a pickled module ({reason})') from None
    if not callable(net) or not hasattr(net, 'to'):
        raise MetricError(f'cannot load detector {url}: it holds a {type(net).__name__}, not a module')
    net = net.to(torch.device('cpu') if device is None else device)
    return net.eval() if hasattr(net, 'eval') else net


def pickle_torchscript(module):
    """Return bytes of a plain pickle of a TorchScript module, loadable with pickle.load like EDM's detector.

    TorchScript modules cannot be pickled directly, so the pickle calls torch.jit.load on the
    serialized archive; it needs nothing but torch to load.
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

