"""A real GCS-protocol server for the tests, and the settings that point each library at it.

`Emulator(folder)` launches `python tests/gcs_emulator.py PORT PROXY_PORT CERT KEY` in a child
process, which serves on 127.0.0.1:

- PORT: gcp-storage-emulator (in memory, bucket `BUCKET`), the GCS JSON / upload / download API,
  with what real GCS does and the emulator lacks added (`_main`): object generations in
  download headers and the ifGenerationMatch precondition (tensorstore's OCDBT manifest
  updates fail without them: "Malformed StorageGeneration"), empty uploads, chunked bodies;
- PROXY_PORT: an HTTPS CONNECT proxy for TensorFlow's GCS file system, whose endpoints are fixed
  (https://www.googleapis.com/storage/v1/, https://storage.googleapis.com/<bucket>/<object>;
  no endpoint variable in TF 2.21): it answers CONNECT, ends TLS with CERT (a self-signed
  certificate for those two hosts, trusted through CURL_CA_BUNDLE) and relays the plain HTTP to
  the emulator.

The setting of each library (`environment()`):

- etils.epath (orbax's metadata files, token_learner.paths): EPATH_USE_TF=false picks its
  fsspec backend (gcsfs) instead of tf.io.gfile; gcsfs talks to STORAGE_EMULATOR_HOST without
  credentials; GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false skips its bucket-type probe (a call to
  the real storage-control API); FSSPEC_GCS turns off its per-process listing cache.
- tensorstore (orbax's array data): TENSORSTORE_GCS_HTTP_URL, and GOOGLE_AUTH_TOKEN_FOR_TESTING
  as the bearer token (no metadata server or credentials file).
- TensorFlow (tf.summary event files of clu's writer, tf.io.gfile): https_proxy and
  CURL_CA_BUNDLE (read by its libcurl), GOOGLE_AUTH_TOKEN_FOR_TESTING and NO_GCE_CHECK=true.
"""
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest

from processes import free_port  # pylint: disable=g-bad-import-order

BUCKET = 'tl-test'
_TF_HOSTS = ('www.googleapis.com', 'storage.googleapis.com')


def _certificate(folder: str):
  """A self-signed certificate (its own CA) for TensorFlow's two GCS hosts."""
  cert, key = os.path.join(folder, 'cert.pem'), os.path.join(folder, 'key.pem')
  subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
                  '-keyout', key, '-out', cert, '-subj', f'/CN={_TF_HOSTS[0]}',
                  '-addext', 'subjectAltName=' + ','.join(f'DNS:{h}' for h in _TF_HOSTS)],
                 check=True, capture_output=True)
  return cert, key


class Emulator:
  """The child process; `url`, `env` (the settings above), `stop()`."""

  def __init__(self, folder: str):
    self.port, self.proxy_port = free_port(), free_port()
    self.cert, key = _certificate(folder)
    self.url = f'http://127.0.0.1:{self.port}'
    self._log = open(os.path.join(folder, 'emulator.log'), 'w')
    self._process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), str(self.port), str(self.proxy_port),
         self.cert, key], stdout=self._log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while True:
      try:
        urllib.request.urlopen(self.url, timeout=1).read()
        break
      except OSError:
        if self._process.poll() is not None or time.time() > deadline:
          raise RuntimeError('the GCS emulator did not start: ' +
                             open(self._log.name).read()[-2000:])
        time.sleep(0.1)
    self.env = environment(self.url, self.proxy_port, self.cert)

  def objects(self, prefix: str):
    """Names of the bucket's objects under `prefix`, asked of the server itself (no client
    library, no cache)."""
    names, token = [], ''
    while True:
      query = urllib.parse.urlencode({'prefix': prefix, 'pageToken': token})
      with urllib.request.urlopen(f'{self.url}/storage/v1/b/{BUCKET}/o?{query}') as response:
        page = json.load(response)
      names += [item['name'] for item in page.get('items', [])]
      token = page.get('nextPageToken')
      if not token:
        return names

  def stop(self):
    self._process.kill()
    self._process.wait()
    self._log.close()


def environment(url: str, proxy_port: int, cert: str):
  return {
      'EPATH_USE_TF': 'false', 'STORAGE_EMULATOR_HOST': url,
      'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
      'TENSORSTORE_GCS_HTTP_URL': url, 'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',
      'https_proxy': f'http://127.0.0.1:{proxy_port}', 'CURL_CA_BUNDLE': cert,
      'NO_GCE_CHECK': 'true', 'no_proxy': '127.0.0.1,localhost',
      # gcsfs keeps folder listings for the life of a process; files another process writes
      # (a peer, a killed run, a lock holder) must be seen at once.
      'FSSPEC_GCS': json.dumps({'use_listings_cache': False}),
  }


@pytest.fixture(scope='session')
def gcs_server(tmp_path_factory):
  """The emulator, one per test session."""
  emulator = Emulator(str(tmp_path_factory.mktemp('gcs')))
  yield emulator
  emulator.stop()


@pytest.fixture(scope='module')
def gcs(gcs_server):
  """The emulator with its settings in os.environ for the tests of one module (their
  subprocesses get `gcs.env`); the rest of the session never sees them."""
  with pytest.MonkeyPatch.context() as patch:
    for key, value in gcs_server.env.items():
      patch.setenv(key, value)
    import fsspec.config  # pylint: disable=g-import-not-at-top
    from etils.epath import gpath  # pylint: disable=g-import-not-at-top
    patch.setitem(fsspec.config.conf, 'gcs', {'use_listings_cache': False})
    # epath decides once per process whether TensorFlow backs gs://; decide again now.
    gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
    try:
      yield gcs_server
    finally:
      gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access


def _relay(a, b):
  """Copies bytes both ways between sockets `a` and `b` until one side closes."""
  sockets = [a, b]
  try:
    while True:
      ready, _, _ = select.select(sockets, [], [], 60)
      if not ready:
        return
      for s in ready:
        data = s.recv(65536)
        if not data:
          return
        while getattr(s, 'pending', lambda: 0)():  # TLS bytes decrypted but not yet read.
          data += s.recv(65536)
        (b if s is a else a).sendall(data)
  except OSError:
    return
  finally:
    a.close()
    b.close()


def _serve_proxy(proxy_port: int, emulator_port: int, cert: str, key: str):
  import ssl  # pylint: disable=g-import-not-at-top
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  context.load_cert_chain(cert, key)
  listener = socket.create_server(('127.0.0.1', proxy_port))

  def handle(client):
    try:
      request = b''
      while b'\r\n\r\n' not in request:
        chunk = client.recv(4096)
        if not chunk:
          client.close()
          return
        request += chunk
      target = request.split(b' ', 2)[1].decode()
      if not request.startswith(b'CONNECT ') or target.split(':')[0] not in _TF_HOSTS:
        client.sendall(b'HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n')
        client.close()
        return
      client.sendall(b'HTTP/1.1 200 Connection established\r\n\r\n')
      tls = context.wrap_socket(client, server_side=True)
      _relay(tls, socket.create_connection(('127.0.0.1', emulator_port)))
    except OSError:
      client.close()

  while True:
    client, _ = listener.accept()
    threading.Thread(target=handle, args=(client,), daemon=True).start()


def _with_generations(handler):
  """`handler` with the object generations real GCS has and the emulator lacks: the
  x-goog-generation headers of a download, and the ifGenerationMatch precondition of a write or
  delete (412 when it fails; 0 means "does not exist"), on which tensorstore's OCDBT relies."""
  from http import HTTPStatus  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=g-import-not-at-top

  def wrapped(request, response, storage, *args, **kwargs):
    params = request.params or {}
    bucket = params.get('bucket_name')
    name = params.get('object_id') or (request.query.get('name') or [None])[0]
    current = None
    if bucket and name:
      try:
        current = storage.get_file_obj(bucket, name)
      except NotFound:
        pass
    expected = request.query.get('ifGenerationMatch')
    if expected and request.method != 'GET' and bucket and name:
      if expected[0] != (current['generation'] if current else '0'):
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({'error': {'code': 412, 'message': 'Precondition Failed'}})
        return None
    if current and request.method == 'GET':
      response['x-goog-generation'] = current['generation']
      response['x-goog-metageneration'] = current['metageneration']
    return handler(request, response, storage, *args, **kwargs)

  return wrapped


def _main(port, proxy_port, cert, key):
  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  read_data = server._read_data  # pylint: disable=protected-access

  def read_empty_upload(handler, query):
    # The emulator reads an empty body as None and fails on it; GCS stores an empty object
    # (TensorFlow writes one as each folder's marker).
    data = read_data(handler, query)
    return b'' if data is None and query.get('uploadType') == ['media'] else data

  server._read_data = read_empty_upload  # pylint: disable=protected-access
  read_raw_data = server._read_raw_data  # pylint: disable=protected-access

  def read_chunked_first(handler):
    # TensorFlow's uploads carry Content-Length and a chunked body; HTTP says the chunked
    # encoding wins (the emulator would store the chunk framing as data).
    if handler.headers.get('Transfer-Encoding', '').lower() == 'chunked':
      del handler.headers['Content-Length']
    return read_raw_data(handler)

  server._read_raw_data = read_chunked_first  # pylint: disable=protected-access
  request_init = server.Request.__init__

  def https_behind_proxy(self, handler, method):
    # Behind the TLS proxy the client spoke https: the resumable-upload Location it is given
    # must say so (the emulator builds it as http://<Host>).
    request_init(self, handler, method)
    # pylint: disable=protected-access
    if handler.headers.get('Host', '').split(':')[0] in _TF_HOSTS:
      self._base_url = self._base_url.replace('http://', 'https://', 1)
      self._full_url = self._full_url.replace('http://', 'https://', 1)

  server.Request.__init__ = https_behind_proxy
  server.HANDLERS = tuple((regex, {method: _with_generations(handler)
                                   for method, handler in handlers.items()})
                          for regex, handlers in server.HANDLERS)
  threading.Thread(target=_serve_proxy, args=(int(proxy_port), int(port), cert, key),
                   daemon=True).start()
  server.create_server('127.0.0.1', int(port), in_memory=True, default_bucket=BUCKET).run()


if __name__ == '__main__':
  _main(*sys.argv[1:])
