"""A threaded HTTP server on a free loopback port, for the fake peers the tests need."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackHTTPServer:
    """Serves ``handler`` on 127.0.0.1 from a daemon thread until :meth:`close`.

    Example: ``server = LoopbackHTTPServer(Handler); httpx.get(server.url); server.close()``.
    """

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "LoopbackHTTPServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
