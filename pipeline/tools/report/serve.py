"""`tsd report --serve`: the written site over HTTP on loopback only, until interrupted."""
from __future__ import annotations

import functools
import http.server
import signal
from pathlib import Path


class _Server(http.server.ThreadingHTTPServer):
    # Closing joins no handler thread: Python 3.11's ThreadingMixIn keeps every thread to join at
    # server_close when block_on_close is set, so one client holding a connection open would keep a
    # stopped server (the suite saw `--serve` outlive SIGINT by 30 s twice, under load). The threads are
    # daemons: they end with the process.
    daemon_threads = True
    block_on_close = False


def _stop(signum, frame):
    raise KeyboardInterrupt


def serve(folder: Path, port: int = 0) -> None:
    # Ctrl-C and SIGTERM both stop it, even when started with SIGINT ignored (a background job of a
    # non-interactive shell inherits that, and Python then installs no KeyboardInterrupt of its own)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    with _Server(("127.0.0.1", port), handler) as httpd:
        print(f"report: serving {folder} at http://127.0.0.1:{httpd.server_address[1]}/ (Ctrl-C stops)", flush=True)
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
