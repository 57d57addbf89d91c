import http.server
import os
import threading

import pytest

import dnnlib
from dnnlib import util


def test_easydict_attributes():
    d = dnnlib.EasyDict(a=1)
    d.b = 2
    assert d == {'a': 1, 'b': 2} and d.a == 1
    del d.a
    with pytest.raises(AttributeError):
        _ = d.a


def test_construct_and_call_by_name():
    d = util.construct_class_by_name(class_name='dnnlib.util.EasyDict', x=3)
    assert isinstance(d, util.EasyDict) and d.x == 3
    assert util.call_func_by_name('3', func_name='builtins.int') == 3
    assert util.get_obj_by_name('os.path.join') is os.path.join
    with pytest.raises(ImportError):
        util.get_obj_by_name('no_such_module_xyz.thing')


@pytest.mark.parametrize('text, expected', [
    ('0-3', [0, 1, 2, 3]), ('1,5,9', [1, 5, 9]), ('0-2,100-101', [0, 1, 2, 100, 101]), ('7', [7]),
])
def test_parse_int_list(text, expected):
    assert util.parse_int_list(text) == expected


@pytest.mark.parametrize('text', ['', 'a', '1-', '5-2', '1,,2', '1.5'])
def test_parse_int_list_rejects(text):
    with pytest.raises(ValueError):
        util.parse_int_list(text)


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    path = tmp_path / 'f.bin'
    with util.atomic_write(path) as f:
        f.write(b'good')
    with pytest.raises(RuntimeError):
        with util.atomic_write(path) as f:
            f.write(b'half')
            raise RuntimeError('killed')
    assert path.read_bytes() == b'good'
    assert os.listdir(tmp_path) == ['f.bin']
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_open_url_local_path_and_file_url(tmp_path):
    path = tmp_path / 'data.bin'
    path.write_bytes(b'abc')
    with util.open_url(str(path)) as f:
        assert f.read() == b'abc'
    with util.open_url(path.as_uri()) as f:
        assert f.read() == b'abc'
    assert util.open_url(path.as_uri(), return_filename=True) == str(path)
    with pytest.raises(util.OpenURLError, match='no such file'):
        util.open_url(str(tmp_path / 'missing.pkl'))


class _Server:
    """A local HTTP server: /ok.bin serves the payload, /cut.bin stops halfway."""

    payload = bytes(range(256)) * 64

    def __init__(self):
        outer = self
        self.hits = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                if self.path == '/missing.bin':
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header('Content-Length', str(len(outer.payload)))
                self.end_headers()
                if self.path == '/cut.bin':
                    self.wfile.write(outer.payload[:1000])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(outer.payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def test_open_url_http_caches(server, tmp_path):
    cache = tmp_path / 'cache'
    with util.open_url(server.url + '/ok.bin', cache_dir=str(cache), verbose=False) as f:
        assert f.read() == server.payload
    assert server.hits == 1
    with util.open_url(server.url + '/ok.bin', cache_dir=str(cache), verbose=False) as f:
        assert f.read() == server.payload
    assert server.hits == 1, 'second open must be a cache hit'
    assert len(os.listdir(cache)) == 1


def test_open_url_default_cache_dir_from_env(server, tmp_path):
    path = util.open_url(server.url + '/ok.bin', return_filename=True, verbose=False)
    assert path.startswith(os.environ['DNNLIB_CACHE_DIR'])


def test_interrupted_download_leaves_no_cache_entry(server, tmp_path):
    cache = tmp_path / 'cache'
    with pytest.raises(util.OpenURLError, match='download failed'):
        util.open_url(server.url + '/cut.bin', cache_dir=str(cache), num_attempts=2, verbose=False)
    assert server.hits == 2
    assert not cache.exists() or os.listdir(cache) == []


def test_http_error_and_offline_are_one_line(server, tmp_path):
    with pytest.raises(util.OpenURLError, match='HTTP 404') as info:
        util.open_url(server.url + '/missing.bin', cache_dir=str(tmp_path), verbose=False)
    assert '\n' not in str(info.value)
    server.close()
    with pytest.raises(util.OpenURLError, match='cannot connect') as info:
        util.open_url(server.url + '/ok.bin', cache_dir=str(tmp_path), num_attempts=1, verbose=False)
    assert '\n' not in str(info.value)
    server.close = lambda: None
