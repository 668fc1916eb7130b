"""Real ``crdistance serve`` processes on 127.0.0.1 for the server tests.

:func:`serve_process` starts ``python -m crdistance serve MODEL`` on a free
port, waits (bounded) until ``GET /v2/health/ready`` answers 200 and yields the
base URL and the process; on exit it sends SIGTERM and waits for a graceful
stop (bounded too), killing the process only if it overruns.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url, *, headers=None, timeout=10):
    """(status, headers, body bytes) of a GET, HTTP errors included."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def get_json(url, **kwargs):
    status, _, body = get(url, **kwargs)
    return status, json.loads(body)


@contextlib.contextmanager
def serve_process(model_path, *arguments, env=None, startup_timeout=120,
                  stop_timeout=30):
    """Run ``crdistance serve`` in a subprocess; yield (base_url, process).

    `arguments` are extra command-line options; ``--host``/``--port`` are set
    here. The process's stdout and stderr go to ``<model_path>.serve.log``.
    """
    port = free_port()
    command = [sys.executable, "-m", "crdistance", "serve", str(model_path),
               "--host", "127.0.0.1", "--port", str(port), *map(str, arguments)]
    log_path = Path(f"{model_path}.serve.log")
    environment = {**os.environ, **(env or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=ROOT, env=environment)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"crdistance serve exited with {process.returncode}:\n"
                    + log_path.read_text(errors="replace"))
            try:
                if get(f"{url}/v2/health/ready", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"crdistance serve not ready after {startup_timeout} s:\n"
                    + log_path.read_text(errors="replace"))
            time.sleep(0.2)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def multipart(files, fields=None):
    """(body, content type) of a multipart/form-data request: `files` is a list
    of (field name, file name, bytes), `fields` a dict of text fields."""
    boundary = "crdistance-test-boundary-7f3a"
    parts = []
    for key, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; '
                     f'name="{key}"\r\n\r\n{value}\r\n'.encode())
    for key, name, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; '
                     f'name="{key}"; filename="{name}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode()
                     + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post(url, body, content_type, *, headers=None, timeout=60):
    """(status, parsed JSON body) of a POST, HTTP errors included."""
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
