"""sampbridge.samp.discovery: the lockfile, the live-hub check, and timeouts on every hub call."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sampbridge.samp.discovery import (
    HubUnavailable,
    TimeoutHubProxy,
    find_running_hub,
    hub_url,
    lockfile_path,
)


@pytest.mark.parametrize("env, expected", [
    ("std-lockurl:file:///tmp/a%20b/.samp", "/tmp/a b/.samp"),
    ("std-lockurl:/srv/samp/lock", "/srv/samp/lock"),
    ("std-lockurl:http://example.invalid/lock", None),      # not a file: the default
    ("", None),
])
def test_lockfile_path_follows_samp_hub(env, expected, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    if env:
        monkeypatch.setenv("SAMP_HUB", env)
    else:
        monkeypatch.delenv("SAMP_HUB", raising=False)
    assert lockfile_path() == (Path(expected) if expected else tmp_path / ".samp")


def test_hub_url_drops_escapes():
    assert hub_url({"samp.hub.xmlrpc.url": "http\\://127.0.0.1\\:2525/"}) == \
        "http://127.0.0.1:2525/"
    assert hub_url({}) == ""


def write_lockfile(home: Path, url: str | None) -> None:
    lines = ["# a test lockfile", "samp.secret=0123", "samp.profile.version=1.3"]
    if url:
        lines.append(f"samp.hub.xmlrpc.url={url}")
    (home / ".samp").write_text("\n".join(lines) + "\n")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (a hung hub)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_lockfile_or_no_url_or_a_dead_hub_is_no_hub(samp_home):
    assert find_running_hub() is None
    write_lockfile(samp_home, None)
    assert find_running_hub() is None
    write_lockfile(samp_home, f"http://127.0.0.1:{closed_port()}/")
    assert find_running_hub() is None


def test_a_hung_hub_costs_the_timeout_not_forever(samp_home, silent_port):
    write_lockfile(samp_home, f"http://127.0.0.1:{silent_port}/")
    t0 = time.monotonic()
    assert find_running_hub(timeout=0.5) is None
    assert time.monotonic() - t0 < 5


def test_a_live_hub_is_found(hub, samp_home):
    params = find_running_hub()
    assert params is not None
    assert hub_url(params).startswith("http://127.0.0.1:")


def test_the_proxy_refuses_without_a_hub_in_one_sentence(samp_home):
    with pytest.raises(HubUnavailable, match=r"no running SAMP hub \(lockfile .*\.samp\)"):
        TimeoutHubProxy(timeout=1.0).connect()


def test_the_proxy_times_out_on_a_hung_hub(silent_port):
    proxy = TimeoutHubProxy(timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(OSError):       # socket.timeout is an OSError
        proxy.connect(hub_params={"samp.hub.xmlrpc.url": f"http://127.0.0.1:{silent_port}/"})
    assert time.monotonic() - t0 < 5
    assert not proxy.is_connected


def test_the_proxy_connects_to_a_live_hub(hub, samp_home):
    proxy = TimeoutHubProxy(timeout=2.0)
    proxy.connect()
    try:
        assert proxy.is_connected
        assert hub_url(proxy.lockfile) == hub_url(find_running_hub() or {})
    finally:
        proxy.disconnect()
