"""Retries by urllib3 on the session's adapter, counted on a loopback server this module owns.

What is retried (:mod:`sampbridge.csc.retry`): a connection that never opened, whatever the
method; 429/502/503/504 and read failures for GET and for an idempotent POST (a TAP /sync
query), never for the POST that creates an async job; waits follow Retry-After (cut to 30 s),
and stop at the caller's deadline.  Every failure is still one sentence.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import urllib3.util.connection

from sampbridge.csc import http, retry
from sampbridge.csc.errors import ServiceError, ServiceTimeout, ServiceUnreachable
from sampbridge.csc.tap import TapClient

OK = (Path(__file__).parent / "data" / "recorded" / "cxc" / "scs_v2.xml").read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        path = self.path.split("?")[0]
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with self.server.lock:
            self.server.hits[path] = n = self.server.hits.get(path, 0) + 1
        if path == "/busy":                           # always 503, come back in 1 s
            self._send(503, b"busy", {"Retry-After": "1"})
        elif path == "/busy-for-an-hour":
            self._send(503, b"busy", {"Retry-After": "3600"})
        elif path in ("/busy-once", "/tap/sync"):
            self._send(*((503, b"busy", {"Retry-After": "1"}) if n == 1 else (200, OK, {})))
        elif path == "/tap/async":                    # a job may have been created: no retry
            self._send(503, b"busy", {})
        elif path == "/slow-once":
            if n <= 1:                                # slow once (or as a test sets)
                self.server.release.wait(3)
            self._send(200, OK, {})
        else:
            self._send(404, b"no such thing", {})

    def _send(self, code: int, body: bytes, headers: dict[str, str]) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", "text/xml" if code == 200 else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except OSError:          # the client gave up (read timeout)
            pass

    do_GET = do_POST = do_DELETE = _answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        self.release = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    t = threading.Thread(target=s.serve_forever, daemon=True)
    t.start()
    yield s
    s.release.set()
    s.shutdown()
    s.server_close()


def closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing"


def test_503_with_retry_after_is_tried_retries_plus_one_times(server):
    t0 = time.monotonic()
    resp = http.request(http.make_session(2, 5, retries=2), "GET", server.url("/busy"), "cone")
    took = time.monotonic() - t0
    assert resp.status_code == 503 and server.hits["/busy"] == 3
    assert took >= 2.0, f"Retry-After: 1 was not waited for twice ({took:.2f} s)"
    with pytest.raises(ServiceError) as ei:
        http.raise_for_http(resp, "cone search")
    assert str(ei.value).startswith("cone search failed with HTTP 503"), str(ei.value)


def test_the_session_count_is_the_default_and_a_call_may_set_its_own(server):
    session = http.make_session(2, 5, retries=1)
    http.request(session, "GET", server.url("/busy"), "cone")
    assert server.hits["/busy"] == 2
    http.request(session, "GET", server.url("/busy"), "cone", retries=0)
    assert server.hits["/busy"] == 3


def test_a_long_retry_after_is_not_waited_past_the_deadline(server):
    t0 = time.monotonic()
    resp = http.request(http.make_session(2, 5), "GET", server.url("/busy-for-an-hour"),
                        "cone", give_up_at=time.monotonic() + 3)
    assert resp.status_code == 503 and server.hits["/busy-for-an-hour"] == 1
    assert time.monotonic() - t0 < 2


def test_retry_after_is_cut_to_thirty_seconds():
    r = retry.policy(2)
    resp = urllib3.response.HTTPResponse(status=503, headers={"Retry-After": "3600"})
    assert r.get_retry_after(resp) == retry.RETRY_AFTER_MAX == 30.0


def test_a_refused_connection_is_tried_again_then_is_one_sentence(monkeypatch):
    url = closed_port_url()
    port = int(url.split(":")[2].split("/")[0])
    tries: list[int] = []
    real = urllib3.util.connection.create_connection

    def counting(address, *args, **kwargs):
        if address[1] == port:
            tries.append(port)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", counting)
    with pytest.raises(ServiceUnreachable) as ei:
        http.request(http.make_session(2, 5, retries=2), "GET", url, "cone search")
    assert len(tries) == 3
    assert str(ei.value) == (f"cone search: cannot reach the service at 127.0.0.1:{port}: "
                             "the connection was refused (is the service running?)")


def test_a_refused_post_is_tried_again_too(monkeypatch):
    """Nothing reached the service, so even a job creation may be sent again."""
    url = closed_port_url()
    tries: list[object] = []
    real = urllib3.util.connection.create_connection
    monkeypatch.setattr(urllib3.util.connection, "create_connection",
                        lambda *a, **k: tries.append(a) or real(*a, **k))
    with pytest.raises(ServiceUnreachable, match="refused"):
        http.request(http.make_session(2, 5, retries=1), "POST", url, "TAP query")
    assert len(tries) == 2


def test_a_read_timeout_of_a_get_is_retried(server):
    resp = http.request(http.make_session(2, 0.5, retries=1), "GET", server.url("/slow-once"),
                        "cone search")
    assert resp.status_code == 200 and server.hits["/slow-once"] == 2


def test_read_timeouts_through_every_retry_are_one_sentence(server):
    server.hits["/slow-once"] = -5          # slow five times more than there are tries
    with pytest.raises(ServiceTimeout) as ei:
        http.request(http.make_session(2, 0.3, retries=1), "GET", server.url("/slow-once"),
                     "cone search")
    assert str(ei.value) == "cone search: the service did not answer within the read timeout"


def test_a_sync_query_is_retried_but_an_async_job_creation_is_not(server, tmp_path):
    tap = TapClient(server.url("/tap"), http.make_session(2, 5, retries=2))
    body = tap.sync_body("SELECT 1")
    assert body == OK and server.hits["/tap/sync"] == 2
    with pytest.raises(ServiceError):
        tap.async_to_file("SELECT 1", tmp_path / "r.vot")
    assert server.hits["/tap/async"] == 1
    assert not list(tmp_path.iterdir())


def test_a_plain_session_tries_once(server):
    import requests

    resp = http.request(requests.Session(), "GET", server.url("/busy-once"), "cone",
                        timeout=5)
    assert resp.status_code == 503 and server.hits["/busy-once"] == 1


def test_pyvos_own_requests_retry_busy_answers_but_not_read_timeouts(server):
    """Requests sent on the session directly (as pyvo does) get the adapter's default."""
    import requests

    session = http.make_session(2, 0.5, retries=2)
    assert session.get(server.url("/busy-once")).status_code == 200
    assert server.hits["/busy-once"] == 2
    with pytest.raises(requests.exceptions.ReadTimeout):
        session.get(server.url("/slow-once"))
    assert server.hits["/slow-once"] == 1
