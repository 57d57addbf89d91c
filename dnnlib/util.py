"""EasyDict, lookup of objects by dotted name, a caching URL opener and atomic writes.

EDM pickles refer to `dnnlib.util.EasyDict` by that path, so it must stay here.
"""

import bisect
import contextlib
import hashlib
import importlib
import io
import itertools
import math
import os
import re
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any, Iterator, List, Optional

#----------------------------------------------------------------------------


class EasyDict(dict):
    """A dict whose keys can also be read and written as attributes."""

    def __getattr__(self, name: str) -> Any:
        # Dunder names are never keys: pickle and copy look up __setstate__, __reduce_ex__, ...
        # on instances, and a key of that name must not answer for them.
        if name.startswith('__') and name.endswith('__'):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

#----------------------------------------------------------------------------
# Objects by dotted name, e.g. 'training.networks.EDMPrecond'.


def get_obj_by_name(name: str) -> Any:
    """Return the object named by a dotted path, importing the longest importable prefix."""
    parts = name.split('.')
    for split in range(len(parts), 0, -1):
        module_name = '.'.join(parts[:split])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            # Only swallow the error if it is this very module that is missing.
            if err.name is not None and not module_name.startswith(err.name):
                raise
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f'cannot resolve "{name}"')


def call_func_by_name(*args, func_name: Optional[str] = None, **kwargs) -> Any:
    """Call the function named by `func_name` with the remaining arguments."""
    assert func_name is not None
    func = get_obj_by_name(func_name)
    if not callable(func):
        raise TypeError(f'"{func_name}" is not callable')
    return func(*args, **kwargs)


def construct_class_by_name(*args, class_name: Optional[str] = None, **kwargs) -> Any:
    """Instantiate the class named by `class_name` with the remaining arguments."""
    return call_func_by_name(*args, func_name=class_name, **kwargs)

#----------------------------------------------------------------------------
# Seed lists and similar small parsers used by the command-line tools.


class IntRanges(Sequence):
    """A list of distinct integers kept as ranges: '0-999999999' takes a few bytes, not 8 GB.

    Supports len(), indexing, slicing (to a list), iteration and `in`; equal to the list it
    stands for."""

    def __init__(self, ranges):
        self.ranges = [(int(lo), int(hi)) for lo, hi in ranges if hi > lo]   # [lo, hi), in order
        self._offsets = list(itertools.accumulate((hi - lo for lo, hi in self.ranges), initial=0))
        self._sorted = sorted(self.ranges)

    def __len__(self) -> int:
        return self._offsets[-1]

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return list(itertools.islice(self._iter_from(start), max(0, stop - start)))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError('IntRanges index out of range')
        k = bisect.bisect_right(self._offsets, index) - 1
        return self.ranges[k][0] + index - self._offsets[k]

    def _iter_from(self, start):
        k = max(0, bisect.bisect_right(self._offsets, start) - 1)
        for i in range(k, len(self.ranges)):
            lo, hi = self.ranges[i]
            yield from range(lo + max(0, start - self._offsets[i]), hi)

    def __iter__(self):
        return self._iter_from(0)

    def __contains__(self, value) -> bool:
        if not isinstance(value, int):
            return False
        k = bisect.bisect_right(self._sorted, (value, math.inf)) - 1
        return k >= 0 and self._sorted[k][0] <= value < self._sorted[k][1]

    def __eq__(self, other) -> bool:
        if isinstance(other, IntRanges):
            return self.ranges == other.ranges
        if isinstance(other, (list, tuple, range)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return 'IntRanges(' + ','.join(f'{lo}' if hi == lo + 1 else f'{lo}-{hi - 1}' for lo, hi in self.ranges) + ')'

    def min(self) -> int:
        return self._sorted[0][0]

    def max(self) -> int:
        return max(hi for _, hi in self.ranges) - 1


def parse_int_ranges(s: Any) -> IntRanges:
    """Parse '1,5,9', '0-9' or '0-9,100-109' into IntRanges, in order, without repeats (the first
    occurrence of a number counts). Ranges stay ranges, so '0-999999999' is parsed at once."""
    if isinstance(s, IntRanges):
        return s
    if isinstance(s, (list, tuple, range)):
        pieces = []                 # runs of consecutive numbers, repeats dropped: O(len(s))
        for v in dict.fromkeys(int(v) for v in s):
            if pieces and pieces[-1][1] == v:
                pieces[-1][1] = v + 1
            else:
                pieces.append([v, v + 1])
        return IntRanges(pieces)
    else:
        items = [(lo, hi + 1) for _, lo, hi in _int_list_items(s)]
    pieces, covered = [], []        # covered: sorted disjoint [lo, hi) of the numbers seen so far
    for lo, hi in items:
        i = bisect.bisect_left(covered, (lo,))
        if i > 0 and covered[i - 1][1] > lo:
            i -= 1
        j, cur = i, lo
        while j < len(covered) and covered[j][0] < hi:
            if covered[j][0] > cur:
                pieces.append((cur, covered[j][0]))
            cur = max(cur, covered[j][1])
            j += 1
        if cur < hi:
            pieces.append((cur, hi))
        merged = (min(lo, covered[i][0]), max(hi, covered[j - 1][1])) if j > i else (lo, hi)
        covered[i:j] = [merged]
    return IntRanges(pieces)


def parse_int_list(s: Any) -> List[int]:
    """Parse '1,5,9', '0-9' or '0-9,100-109' (or pass a list through) into a list of ints."""
    if isinstance(s, (list, tuple)):
        return [int(v) for v in s]
    values = []
    for item, lo, hi in _int_list_items(s):
        if hi - lo >= 1 << 24:
            raise ValueError(f'range "{item}" is too long for a list (at most {1 << 24} numbers)')
        values.extend(range(lo, hi + 1))
    return values


def _int_list_items(s: Any) -> List[tuple]:
    """[(text, lo, hi)] of the items of '1,5,9', '0-9' or '0-9,100-109' (hi inclusive)."""
    text = str(s).strip()
    if not text:
        raise ValueError('empty list')
    items = []
    for item in text.split(','):
        item = item.strip()
        m = re.fullmatch(r'(-?\d+)(?:\s*-\s*(-?\d+))?', item)
        if m is None:
            raise ValueError(f'"{item}" is not an integer or a range like 0-9')
        lo = int(m.group(1))
        hi = lo if m.group(2) is None else int(m.group(2))
        if hi < lo:
            raise ValueError(f'range "{item}" is empty (end before start)')
        items.append((item, lo, hi))
    return items

#----------------------------------------------------------------------------
# Atomic file writes: readers never see a half-written file.


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to `path`; rename it onto `path` only on success."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str, mode: str = 'wb') -> Iterator[Any]:
    """Yield an open temporary file next to `path`; rename it onto `path` only on success."""
    assert mode in ('w', 'wb')
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())

#----------------------------------------------------------------------------
# Cache directory.

_cache_dir: Optional[str] = None


def set_cache_dir(path: Optional[str]) -> None:
    global _cache_dir
    _cache_dir = path


def make_cache_dir_path(*paths: str) -> str:
    """Return a path under the cache root: set_cache_dir(), $DNNLIB_CACHE_DIR, $HOME/.cache/dnnlib."""
    if _cache_dir is not None:
        root = _cache_dir
    elif 'DNNLIB_CACHE_DIR' in os.environ:
        root = os.environ['DNNLIB_CACHE_DIR']
    elif 'HOME' in os.environ:
        root = os.path.join(os.environ['HOME'], '.cache', 'dnnlib')
    elif 'USERPROFILE' in os.environ:
        root = os.path.join(os.environ['USERPROFILE'], '.cache', 'dnnlib')
    else:
        root = os.path.join(tempfile.gettempdir(), '.cache', 'dnnlib')
    return os.path.join(root, *paths)

#----------------------------------------------------------------------------
# URL opener.


class OpenURLError(OSError):
    """Raised by open_url with a one-line message saying what could not be opened and why."""


def is_url(obj: Any, allow_file_urls: bool = False) -> bool:
    """True if `obj` is a string holding an http(s) URL (or file:// if allowed)."""
    if not isinstance(obj, str) or '://' not in obj:
        return False
    scheme = urllib.parse.urlparse(obj).scheme
    return scheme in ('http', 'https') or (allow_file_urls and scheme == 'file')


def _file_url_to_path(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    path = urllib.request.url2pathname(parsed.path)
    if parsed.netloc and parsed.netloc != 'localhost':
        path = '//' + parsed.netloc + path
    return path


def _download(url: str, dest, verbose: bool) -> None:
    """Stream `url` into the open binary file `dest`, with an optional progress bar."""
    import requests
    with requests.get(url, stream=True, timeout=(10, 60)) as res:
        res.raise_for_status()
        total = int(res.headers.get('content-length', 0)) or None
        bar = None
        if verbose:
            from tqdm import tqdm
            bar = tqdm(total=total, unit='B', unit_scale=True, desc=os.path.basename(urllib.parse.urlparse(url).path) or url, file=sys.stderr, leave=False)
        received = 0
        try:
            for chunk in res.iter_content(chunk_size=1 << 20):
                dest.write(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        if total is not None and received != total:
            raise IOError(f'connection closed after {received} of {total} bytes')


def _describe_error(err: Exception) -> str:
    import requests
    if isinstance(err, requests.exceptions.ConnectionError):
        return 'cannot connect (offline or host unreachable)'
    if isinstance(err, requests.exceptions.Timeout):
        return 'timed out'
    if isinstance(err, requests.exceptions.HTTPError) and err.response is not None:
        return f'HTTP {err.response.status_code}'
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def url_cache_file(url: str, cache_dir: Optional[str] = None) -> str:
    """The file that open_url() reads for `url` once downloaded: a copy placed there serves offline."""
    if cache_dir is None:
        cache_dir = make_cache_dir_path('downloads')
    digest = hashlib.md5(url.encode('utf-8')).hexdigest()
    name = re.sub(r'[^0-9A-Za-z._-]', '_', os.path.basename(urllib.parse.urlparse(url).path)) or 'download'
    return os.path.join(cache_dir, f'{digest}_{name}')


def open_url(url: str, cache_dir: Optional[str] = None, num_attempts: int = 3, verbose: bool = True,
             return_filename: bool = False, cache: bool = True) -> Any:
    """Open a local path, file:// URL or http(s) URL for binary reading (or return its filename).

    Downloads are cached under `cache_dir` (default make_cache_dir_path('downloads')) keyed by
    the URL's hash, and land in the cache only once complete.
    """
    assert num_attempts >= 1
    assert not (return_filename and not cache), 'return_filename needs cache=True for URLs'
    url = os.fspath(url)

    # Local files.
    if not is_url(url):
        path = _file_url_to_path(url) if url.startswith('file://') else url
        if not os.path.isfile(path):
            raise OpenURLError(f'{url}: no such file')
        return path if return_filename else open(path, 'rb')

    # Cache hit.
    cache_file = url_cache_file(url, cache_dir)
    cache_dir = os.path.dirname(cache_file)
    if cache and os.path.isfile(cache_file):
        return cache_file if return_filename else open(cache_file, 'rb')

    # Download, retrying on failure; the cache file appears only when complete.
    last_err = None
    for attempt in range(num_attempts):
        try:
            if not cache:
                buf = io.BytesIO()
                _download(url, buf, verbose)
                buf.seek(0)
                return buf
            os.makedirs(cache_dir, exist_ok=True)
            with atomic_write(cache_file) as f:
                _download(url, f, verbose)
            return cache_file if return_filename else open(cache_file, 'rb')
        except KeyboardInterrupt:
            raise
        except Exception as err:  # network errors of any kind: retry, then one clear message
            last_err = err
            import requests
            if isinstance(err, requests.exceptions.HTTPError) and err.response is not None and err.response.status_code < 500:
                break
            if attempt + 1 < num_attempts:
                time.sleep(min(2 ** attempt, 5) * 0.1)
    hint = f'; offline, put a copy of the file at {cache_file}' if cache else ''
    raise OpenURLError(f'{url}: download failed: {_describe_error(last_err)}{hint}')

#----------------------------------------------------------------------------
# Formatting helpers used by progress output.


def format_time(seconds: float) -> str:
    """Format a duration like '1h 02m 03s'."""
    s = int(round(seconds))
    if s < 60:
        return f'{s}s'
    if s < 3600:
        return f'{s // 60}m {s % 60:02d}s'
    if s < 86400:
        return f'{s // 3600}h {(s // 60) % 60:02d}m {s % 60:02d}s'
    return f'{s // 86400}d {(s // 3600) % 24:02d}h {(s // 60) % 60:02d}m'
