"""The HTTP layer against a loopback server that misbehaves on purpose."""

from __future__ import annotations

import time

import pytest

from sampbridge.csc.cone import ConeService
from sampbridge.csc.errors import ResultTooLarge, ServiceError, ServiceTimeout, ServiceUnreachable
from sampbridge.csc.http import USER_AGENT, make_session

from faulty_server import FaultyServer, wait_port_closed_url


@pytest.fixture
def server():
    with FaultyServer(slow_seconds=10) as s:
        yield s


def cone(url: str, **kw) -> ConeService:
    return ConeService(url, make_session(2.0, kw.pop("read", 1.0)), **kw)


def test_ok_and_user_agent(server, tmp_path):
    res = cone(server.url("/ok")).query_to_file(1, 2, 0.1, tmp_path / "r.vot")
    assert res.rows == 109
    assert "sampbridge/" in USER_AGENT


def test_unreachable_service(tmp_path):
    with pytest.raises(ServiceUnreachable, match="cannot reach the service at 127.0.0.1"):
        cone(wait_port_closed_url(), retries=0).query_to_file(1, 2, 0.1, tmp_path / "r.vot")
    assert not list(tmp_path.iterdir())


def test_a_refused_connection_is_one_sentence_without_a_library_repr(tmp_path):
    with pytest.raises(ServiceUnreachable) as ei:
        cone(wait_port_closed_url(), retries=0).query_to_file(1, 2, 0.1, tmp_path / "r.vot")
    text = str(ei.value)
    assert text.endswith(": the connection was refused (is the service running?)"), text
    assert "HTTPConnectionPool" not in text and "Max retries" not in text and "<" not in text


def test_a_name_that_does_not_resolve_says_so(tmp_path, monkeypatch):
    """Offline: the resolver fails (stood in for in this process, no DNS query leaves it)."""
    import socket

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(ServiceUnreachable) as ei:
        cone("https://cda.cfa.harvard.edu/csc21scs/coneSearch", retries=0).query_to_file(
            1, 2, 0.1, tmp_path / "r.vot")
    assert str(ei.value) == ("cone search: cannot reach the service at cda.cfa.harvard.edu: "
                             "the name does not resolve (offline?)"), str(ei.value)


def test_read_timeout(server, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(ServiceTimeout, match="did not answer within the read timeout"):
        cone(server.url("/slow"), retries=0, read=0.5).query_to_file(1, 2, 0.1, tmp_path / "r")
    assert time.monotonic() - t0 < 5
    assert not list(tmp_path.iterdir())


def test_http_500_carries_status_and_body(server, tmp_path):
    with pytest.raises(ServiceError) as ei:
        cone(server.url("/500"), retries=0).query_to_file(1, 2, 0.1, tmp_path / "r.vot")
    assert ei.value.status == 500
    assert "HTTP 500" in str(ei.value) and "database is down" in str(ei.value)


@pytest.mark.parametrize("path", ["/503-then-ok", "/429-then-ok"])
def test_transient_errors_are_retried_with_retry_after(server, tmp_path, path):
    res = cone(server.url(path), retries=2).query_to_file(1, 2, 0.1, tmp_path / "r.vot")
    assert res.rows == 109
    assert server.hits[path] == 2


@pytest.mark.parametrize("path, words", [("/html", "not a VOTable"),
                                         ("/truncated", "cut off|not a complete")])
def test_bad_bodies(server, tmp_path, path, words):
    with pytest.raises(ServiceError, match=words):
        cone(server.url(path), retries=0).query_to_file(1, 2, 0.1, tmp_path / "r.vot")
    assert not list(tmp_path.iterdir())


def test_size_cap_leaves_nothing(server, tmp_path):
    with pytest.raises(ResultTooLarge, match="over the cap of 1,000,000 bytes"):
        cone(server.url("/big"), max_bytes=1_000_000).query_to_file(1, 2, 0.1, tmp_path / "r")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("compress, url, gzip", [
    ("auto", "http://127.0.0.1:{port}/ok", False),
    ("auto", "http://localhost:{port}/ok", False),
    ("yes", "http://127.0.0.1:{port}/ok", True),
    ("no", "http://127.0.0.1:{port}/ok", False),
])
def test_compression_is_asked_for_remote_services_only(server, compress, url, gzip):
    """gzip pays over a network; on loopback it only costs CPU at both ends."""
    port = server.url("/").split(":")[2].split("/")[0]
    with make_session(2.0, 2.0, compress).get(url.format(port=port)) as r:
        sent = r.request.headers.get("Accept-Encoding", "")
    assert ("gzip" in sent) is gzip, sent
    # only parses the URL: no request leaves loopback
    assert make_session(1, 1, "auto")._wants_gzip("https://cda.cfa.harvard.edu/csc21tap/sync")


def test_the_mimic_answers_uncompressed_when_asked(vo_server, tmp_path):
    """The real DaCHS mimic (the standard shape, passed through the CXC-shaped front) honours
    Accept-Encoding: identity (what bench_tap measures)."""
    with make_session(2.0, 30.0).get(vo_server + "/tap/capabilities") as r:
        assert r.ok and "Content-Encoding" not in r.headers
    with make_session(2.0, 30.0, "yes").get(vo_server + "/tap/capabilities") as r:
        assert r.headers.get("Content-Encoding") == "gzip"
