"""A small loopback HTTP server that misbehaves on purpose (for fault tests)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RECORDED = Path(__file__).parent / "data" / "recorded"


class _Handler(BaseHTTPRequestHandler):
    server: FaultyServer

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _send(self, code: int, body: bytes, ctype: str = "text/xml",
              headers: dict[str, str] | None = None, length: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        with self.server.lock:
            self.server.hits[path] = self.server.hits.get(path, 0) + 1
            n = self.server.hits[path]
        good = (RECORDED / "cxc" / "scs_v2.xml").read_bytes()
        if path == "/ok":
            self._send(200, good)
        elif path == "/slow":
            self.server.release.wait(self.server.slow_seconds)
            self._send(200, good)
        elif path == "/500":
            self._send(500, b"Internal Server Error: database is down", "text/plain")
        elif path == "/503-then-ok":
            if n == 1:
                self._send(503, b"busy", "text/plain", {"Retry-After": "1"})
            else:
                self._send(200, good)
        elif path == "/429-then-ok":
            if n == 1:
                self._send(429, b"slow down", "text/plain", {"Retry-After": "1"})
            else:
                self._send(200, good)
        elif path in ("/empty-then-ok.vot", "/empty.vot"):
            # a peer's built-in HTTP server that once sent 200 with no body, under load
            self._send(200, b"" if n == 1 or path == "/empty.vot" else good)
        elif path == "/html":
            self._send(200, b"<html><body><h1>Maintenance</h1></body></html>", "text/html")
        elif path == "/truncated":
            self._send(200, good[: len(good) // 2], length=len(good))
            self.close_connection = True
        elif path == "/big":
            self.send_response(200)
            self.send_header("Content-Type", "text/xml")
            self.end_headers()
            chunk = b"x" * 65536
            try:
                for _ in range(2000):
                    self.wfile.write(chunk)
            except OSError:
                pass
        else:
            self._send(404, b"no such thing", "text/plain")

    do_POST = do_GET


class FaultyServer(ThreadingHTTPServer):
    """Serves on 127.0.0.1 on a free port; ``url(path)`` gives a full URL."""

    daemon_threads = True

    def __init__(self, slow_seconds: float = 10.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.slow_seconds = slow_seconds
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> FaultyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


def wait_port_closed_url() -> str:
    """A loopback URL on which nothing listens."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/nothing"


class _ProxyHandler(BaseHTTPRequestHandler):
    server: _ProxyServer

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self) -> None:
        import requests

        up = self.server.upstream
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "connection", "accept-encoding",
                                        "content-length")}
        headers["Accept-Encoding"] = "identity"
        try:
            r = requests.request(self.command, up + self.path, data=body, headers=headers,
                                 allow_redirects=False, timeout=(5, 120))
        except requests.RequestException as exc:
            self.send_error(502, f"upstream failed: {exc.__class__.__name__}")
            return
        own = self.server.base.encode()
        content = r.content.replace(up.encode(), own)
        self.send_response(r.status_code)
        for k, v in r.headers.items():
            if k.lower() in ("content-length", "transfer-encoding", "connection",
                             "content-encoding"):
                continue
            self.send_header(k, v.replace(up, self.server.base))
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(content)
        self.close_connection = True

    do_GET = do_POST = do_DELETE = _forward


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, upstream: str) -> None:
        super().__init__(("127.0.0.1", port), _ProxyHandler)
        self.upstream = upstream.rstrip("/")
        self.base = f"http://127.0.0.1:{self.server_address[1]}"


class ServiceProxy:
    """A loopback HTTP proxy in front of a shared service, owned by one test.

    The test stops and starts *this* proxy (its port then refuses connections) instead of the
    shared service, which other runs on the machine may be using. Absolute URLs in the
    service's answers (UWS job URLs, redirects, access URLs) are rewritten to the proxy, so a
    client never bypasses it.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._server: _ProxyServer | None = None
        self.port = 0
        self.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen (again, on the same port once one was chosen)."""
        if self._server is not None:
            return
        self._server = _ProxyServer(self.port, self.upstream)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop listening: new connections to the port are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ServiceProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
