"""`tsd report --serve`: the written site over HTTP on loopback only, until interrupted."""
from __future__ import annotations

import functools
import http.server
from pathlib import Path


def serve(folder: Path, port: int = 0) -> None:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as httpd:
        print(f"report: serving {folder} at http://127.0.0.1:{httpd.server_address[1]}/ (Ctrl-C stops)", flush=True)
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
