"""samp.msg.progress: a custom call that runs over a second tells its caller, a fast one does not.

The slow service is a loopback proxy this module owns in front of the shared mimic, which adds
a delay to every request; the mimic itself is never slowed or stopped.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sampbridge.daemon.ticker import CallProgress, Ticker

from conftest import wait_for
from faulty_server import ServiceProxy, _ProxyHandler

PROGRESS = "samp.msg.progress"
ADQL = "SELECT TOP 5 name, ra, dec FROM csc21.master_source"


# -- the ticker alone -------------------------------------------------------------------
class FakeCall:
    """Stands in for a Message: records the progress it is asked to send."""

    is_call = True
    mtype = "x-sampbridge.query.tap"

    def __init__(self) -> None:
        self.sent: list[tuple[str, float | None, float | None]] = []
        self.lock = threading.Lock()

    def progress(self, txt: str, percent: float | None = None,
                 time_left: float | None = None) -> bool:
        with self.lock:
            self.sent.append((txt, percent, time_left))
        return True


def test_the_ticker_waits_then_sends_about_every_interval_until_done() -> None:
    ticker = Ticker(after=0.2, every=0.1)
    call = FakeCall()
    try:
        t0 = time.monotonic()
        progress = ticker.track(call, "TAP 'SELECT ...'")     # type: ignore[arg-type]
        wait_for(lambda: call.sent, 5, what="the first progress")
        assert time.monotonic() - t0 >= 0.2
        progress.update("TAP job executing", 40.0, 3.0)
        wait_for(lambda: any(s[0].startswith("TAP job executing") for s in call.sent), 5,
                 what="the updated text")
        txt, percent, left = call.sent[-1]
        assert "s so far" in txt and percent == 40.0 and left == 3.0
        ticker.done(progress)
        assert len(ticker) == 0
        n = len(call.sent)
        other = FakeCall()
        ticker.track(other, "another job")                           # type: ignore[arg-type]
        wait_for(lambda: len(other.sent) >= 3, 5, what="three rounds of the ticker")
        assert len(call.sent) <= n + 1        # at most one that was due as it was done
    finally:
        ticker.stop()


def test_the_ticker_sends_nothing_for_a_call_that_is_not_tracked_or_ends_early() -> None:
    ticker = Ticker(after=0.3, every=0.1)
    quiet, fast = FakeCall(), FakeCall()
    try:
        ticker.track(quiet, "a notification's work", send=False)   # type: ignore[arg-type]
        ticker.done(ticker.track(fast, "a fast cone"))              # type: ignore[arg-type]
        slow = FakeCall()
        ticker.track(slow, "a slow job")                             # type: ignore[arg-type]
        wait_for(lambda: slow.sent, 5, what="the slow job's progress")
        assert quiet.sent == [] and fast.sent == []
    finally:
        ticker.stop()


def test_the_engine_hooks_say_what_runs() -> None:
    progress = CallProgress(FakeCall(), "x")                        # type: ignore[arg-type]
    progress.on_phase("EXECUTING", 2.0)
    assert progress.now()[0].startswith("TAP job executing")
    progress.on_phase("DOWNLOADING", 3.0)
    assert progress.now()[0].startswith("downloading the TAP result")
    progress.on_rows(25, 100)
    txt, percent, _ = progress.now()
    assert txt.startswith("matching: 25 of 100 positions") and percent == 25.0


# -- through the daemon -----------------------------------------------------------------
class _SlowHandler(_ProxyHandler):
    def _forward(self) -> None:
        time.sleep(self.server.delay)            # type: ignore[attr-defined]
        super()._forward()

    do_GET = do_POST = do_DELETE = _forward


class SlowProxy(ServiceProxy):
    """The test's own proxy in front of the mimic that answers every request ``delay`` late."""

    def __init__(self, upstream: str, delay: float) -> None:
        self.delay = delay
        super().__init__(upstream)

    def start(self) -> None:
        super().start()
        assert self._server is not None
        self._server.RequestHandlerClass = _SlowHandler
        self._server.delay = self.delay          # type: ignore[attr-defined]


class Caller:
    """A peer's call with a tag of its own, so the test knows the msg-id the daemon receives."""

    def __init__(self, peer: Any, recipient: str) -> None:
        self.peer, self.recipient = peer, recipient
        self.responses: dict[str, dict] = {}

    def call(self, tag: str, mtype: str, params: dict[str, str]) -> str:
        self.peer.client.bind_receive_response(tag, self._on_response)
        return str(self.peer.client.call(self.recipient, tag, {"samp.mtype": mtype,
                                                               "samp.params": params}))

    def _on_response(self, private_key: str, responder_id: str, msg_tag: str,
                     response: dict) -> None:
        self.responses[msg_tag] = response

    def reply(self, tag: str, timeout: float = 60.0) -> dict:
        return wait_for(lambda: self.responses.get(tag), timeout, what=f"the reply to {tag}")


@pytest.fixture
def slow_tap(vo_server: str) -> Any:
    with SlowProxy(vo_server, delay=0.4) as proxy:
        yield proxy


def _daemon(cfg: Any, make_daemon: Any, tap: str) -> Any:
    return make_daemon(cfg.replace(**{"images.enabled": False, "cache.enabled": False,
                                      "services.tap": tap, "tap.mode": "async"}))


def test_a_long_tap_call_sends_progress_with_its_msgid(cfg, make_daemon, make_peer,
                                                       slow_tap) -> None:
    d = _daemon(cfg, make_daemon, f"{slow_tap.base}/csc21tap")
    topcat = make_peer("topcat", ["table.load.votable", PROGRESS])
    caller = Caller(topcat, topcat.find("sampbridge"))
    msg_id = caller.call("tap-1", "x-sampbridge.query.tap", {"adql": ADQL})
    reply = caller.reply("tap-1")
    assert reply["samp.status"] == "samp.ok", reply
    assert reply["samp.result"]["status"] == "done"
    got = topcat.of(PROGRESS)
    assert got, "a TAP call of over a second sent no samp.msg.progress"
    assert {p["msgid"] for p in got} == {msg_id}
    assert all("s so far" in p["txt"] for p in got)
    assert any("x-sampbridge.query.tap" in p["txt"] or "TAP" in p["txt"] for p in got)
    assert d.calls.ticker.sent == len(got)


def test_a_fast_call_sends_no_progress(cfg, make_daemon, make_peer) -> None:
    d = _daemon(cfg, make_daemon, cfg["services.tap"])
    topcat = make_peer("topcat", ["table.load.votable", PROGRESS])
    caller = Caller(topcat, topcat.find("sampbridge"))
    caller.call("cone-1", "x-sampbridge.query.cone",
                {"ra": "246.7925", "dec": "-24.32027", "radius": "0.005"})
    assert caller.reply("cone-1")["samp.status"] == "samp.ok"
    assert d.calls.ticker.sent == 0 and topcat.of(PROGRESS) == []


def test_a_caller_that_does_not_subscribe_gets_no_progress(cfg, make_daemon, make_peer,
                                                           slow_tap) -> None:
    d = _daemon(cfg, make_daemon, f"{slow_tap.base}/csc21tap")
    script = make_peer("script", ["table.load.votable"])
    caller = Caller(script, script.find("sampbridge"))
    caller.call("tap-2", "x-sampbridge.query.tap", {"adql": ADQL})
    assert caller.reply("tap-2")["samp.status"] == "samp.ok"
    assert d.calls.ticker.sent == 0


def test_a_long_match_sends_progress(cfg, make_daemon, make_peer, vo_server,
                                     tmp_path: Path) -> None:
    table = tmp_path / "mine.csv"
    table.write_text("name,ra,dec\na,246.7925,-24.32027\nb,246.80,-24.33\nc,246.81,-24.31\n")
    with SlowProxy(vo_server, delay=1.5) as slow:     # one batch of cones: one slow request
        d = make_daemon(cfg.replace(**{
            "images.enabled": False, "cache.enabled": False, "match.strategy": "cone",
            "match.parallelism": 1, "services.cone": f"{slow.base}/csc21scs/coneSearch",
            "services.tap": f"{slow.base}/csc21tap"}))
        topcat = make_peer("topcat", ["table.load.votable", PROGRESS])
        caller = Caller(topcat, topcat.find("sampbridge"))
        msg_id = caller.call("match-1", "x-sampbridge.match.table",
                             {"url": table.as_uri(), "name": "mine"})
        reply = caller.reply("match-1")
    assert reply["samp.status"] == "samp.ok", reply
    got = topcat.of(PROGRESS)
    assert got and {p["msgid"] for p in got} == {msg_id}
    assert any("match" in p["txt"] for p in got)
    assert d.calls.ticker.sent == len(got)
