"""A real S3 API for the tests: moto's server on loopback, in this process, for the whole session.

Every client is configured through the environment only (AWS_ENDPOINT_URL plus dummy credentials),
so subprocesses and Ray workers started afterwards reach the same server. `SlowUploads`, a WSGI
layer in front of moto, can receive the body of a chosen PUT slowly: a test then kills the writer
mid-upload, the way a preempted node dies.
"""
from __future__ import annotations

import io
import logging
import os
import threading
import time
import uuid

import pytest

# what could send requests elsewhere (a developer's profile or real credentials)
_AWS_SCRUB = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN",
              "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
              "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_ENDPOINT_URL_S3", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
              "FSSPEC_S3", "FSSPEC_S3_ENDPOINT_URL")


def moto_env(endpoint: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


class SlowUploads:
    """WSGI middleware: while `armed` holds a key suffix, the next PUT of such a key has its body
    read in small pieces with pauses, as over a slow link. When its writer dies meanwhile (the test
    says so with `client_gone`, or the body ends short), the rest of the body is taken as never
    sent: the request is answered with an error and moto never sees it, as S3 stores nothing of an
    interrupted PUT. (On loopback a small body sits whole in the kernel's socket buffers before
    the writer can be killed; over a real link most of a shard is still in the writer's memory.)"""

    def __init__(self, app):
        self.app = app
        self.armed: str | None = None
        self.in_flight = threading.Event()
        self.client_gone = threading.Event()
        self.aborted = threading.Event()
        self.key: str | None = None

    def arm(self, suffix: str) -> None:
        for event in (self.in_flight, self.client_gone, self.aborted):
            event.clear()
        self.key = None
        self.armed = suffix

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if self.armed and environ.get("REQUEST_METHOD") == "PUT" and path.endswith(self.armed) \
                and "uploadId" not in environ.get("QUERY_STRING", ""):
            self.armed = None
            self.key = path
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = bytearray()
            self.in_flight.set()
            try:
                while len(body) < length and not self.client_gone.is_set():
                    chunk = environ["wsgi.input"].read(min(2048, length - len(body)))
                    if not chunk:
                        break
                    body += chunk
                    time.sleep(0.05)
            except Exception:  # noqa: BLE001 - werkzeug's ClientDisconnected and socket errors
                pass
            if len(body) < length or self.client_gone.is_set():
                self.aborted.set()
                start_response("400 Bad Request", [("Content-Type", "text/plain")])
                return [b"incomplete body"]
            environ["wsgi.input"] = io.BytesIO(bytes(body))
        return self.app(environ, start_response)


class MotoServer:
    """moto's ThreadedMotoServer, with `SlowUploads` in front."""

    def __init__(self):
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        self.uploads = SlowUploads(DomainDispatcherApplication(create_backend_app))
        self._server = make_server("127.0.0.1", 0, self.uploads, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.endpoint = "http://127.0.0.1:%d" % self._server.server_address[1]

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()


def _clear_s3fs() -> None:
    """s3fs caches instances per constructor arguments, not per environment, and their listings."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def moto_server():
    pytest.importorskip("moto.server", reason="needs moto[server] (the test extra)")
    pytest.importorskip("s3fs", reason="needs s3fs (pip install 'tsdistill[s3]')")
    server = MotoServer()
    saved = {k: os.environ.get(k) for k in (*_AWS_SCRUB, *moto_env(""))}
    for k in _AWS_SCRUB:
        os.environ.pop(k, None)
    os.environ.update(moto_env(server.endpoint))
    _clear_s3fs()
    try:
        yield server
    finally:
        _clear_s3fs()
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(moto_server):
    """A fresh, empty bucket: 's3://<name>'."""
    import fsspec

    _clear_s3fs()
    name = f"tsd-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3").mkdir(name)
    yield f"s3://{name}"
    moto_server.uploads.armed = None


def s3_objects(url: str) -> dict[str, int]:
    """{key relative to url: size} of every object under `url`, listed afresh."""
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    base = url[len("s3://"):].rstrip("/")
    try:
        found = fs.find(base, detail=True)
    except FileNotFoundError:
        return {}
    return {k[len(base) + 1:]: int(v["size"]) for k, v in found.items()}
