"""``sampbridge status``: the human table (a pure function), and the question to the daemon
through the hub: no hub, no daemon, a daemon that cannot answer, refuses, stays silent, or
answers (a stand-in, then the real Daemon)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pyvo import samp as psamp

from sampbridge.cli import status as st

from conftest import wait_for

SAMPLE: dict[str, Any] = {
    "version": "0.9", "pid": 4242, "started": "2026-12-02T11:00:00Z", "uptime_s": 3725.2,
    "hub": {"url": "http://127.0.0.1:4567/xmlrpc", "lockfile": "/home/ann/.samp",
            "own_hub": False, "connected": True},
    "peers": [
        {"id": "c1", "name": "topcat",
         "subscriptions": sorted(["table.load.votable", "table.load.fits", "coord.pointAt.sky",
                                  "samp.app.ping", "table.get.stil", "voresource.loadlist"])},
        {"id": "c2", "name": "SAOImageDS9", "subscriptions": ["image.load.fits"]},
    ],
    "recent": [
        {"time": "2026-12-02T12:01:02Z", "sender": "SAOImageDS9", "mtype": "coord.pointAt.sky",
         "what": 'cone 83.6 +22.0 r=30"', "rows": 1234, "ms": 45.2, "error": None},
        {"time": "2026-12-02T12:01:09Z", "sender": "topcat", "mtype": "x-sampbridge.query.tap",
         "what": "tap SELECT TOP 5 ...", "rows": None, "ms": 3012.0,
         "error": "TAP query: cannot reach the service at cda.cfa.harvard.edu: the name does "
                  "not resolve (offline?)"},
    ],
    "counters": {"messages": 12, "calls": 2, "clicks": 1, "cones": 1, "images": 0, "tap": 1,
                 "matches": 0, "tables_sent": 1, "errors": 1},
    "cache": {"dir": "/home/ann/.local/share/sampbridge/results/cache", "entries": 3,
              "bytes": 1_534_000},
    "mirror": {"state": "ready", "usable": True, "release": "2.1", "rows": 407806,
               "built_at": "2026-12-01T09:00:00Z"},
    "results_dir": "/home/ann/.local/share/sampbridge/results", "query_folder": None,
}


def test_the_table_says_everything_in_the_object() -> None:
    lines = st.format_status(SAMPLE)
    assert lines[0] == "sampbridge 0.9, pid 4242, up 1 h 02 min (since 2026-12-02T11:00:00Z)"
    assert lines[1] == ("hub: http://127.0.0.1:4567/xmlrpc (another program's, lockfile "
                        "/home/ann/.samp)")
    assert lines[2] == ("results: /home/ann/.local/share/sampbridge/results; query folder: "
                        "off")
    assert lines[3] == "peers (2):"
    assert lines[4].split() == ["CLIENT", "SUBSCRIBES", "TO"]
    assert lines[5].strip().startswith("topcat (c1)  ")
    assert lines[5].endswith("coord.pointAt.sky, table.load.votable, table.load.fits "
                             "(+3 more)")
    assert lines[6].endswith("image.load.fits")
    assert lines[7] == "last requests (2, newest last):"
    assert lines[8].split() == ["TIME", "SENDER", "MTYPE", "WHAT", "ROWS", "MS", "OUTCOME"]
    assert lines[9].split()[:3] == ["12:01:02", "SAOImageDS9", "coord.pointAt.sky"]
    assert "1,234" in lines[9] and lines[9].endswith("1,234     45  ok")
    assert lines[10].endswith("3,012  error: TAP query: cannot reach the service at "
                              "cda.cfa.harvard.edu: the name does not resolve (offline?)")
    # the columns line up
    assert lines[9].index("coord.pointAt.sky") == lines[10].index("x-sampbridge.query.tap")
    assert lines[11] == ("counters: messages 12, calls 2, clicks 1, cones 1, images 0, tap 1, "
                         "matches 0, tables_sent 1, errors 1")
    assert lines[12] == "cache: /home/ann/.local/share/sampbridge/results/cache, 3 entries, " \
                        "1.5 MB"
    assert lines[13] == "mirror: release 2.1, ready, 407,806 rows, built 2026-12-01T09:00:00Z"
    assert len(lines) == 14


def test_an_empty_or_odd_object_still_makes_a_table() -> None:
    lines = st.format_status({})
    assert lines[0] == "sampbridge ?, pid ?"
    assert "  none" in lines and "  none yet" in lines
    assert lines[-3:] == ["counters: none", "cache: off", "mirror: none"]
    own = st.format_status({"hub": {"url": "u", "lockfile": "l", "own_hub": True,
                                    "connected": False},
                            "mirror": {"state": "other", "reason": "it holds release 2.0"}})
    assert own[1] == "hub: u (its own, lockfile l), NOT connected"
    assert own[-1] == "mirror: other, it holds release 2.0"


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sampbridge", "status", *args],
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def test_no_hub_is_one_sentence_and_exit_1(samp_home: Path) -> None:
    r = _cli()
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == (f"sampbridge: error: no SAMP hub runs (none answers at "
                        f"{samp_home / '.samp'}), so no sampbridge daemon does either; start "
                        "it with: sampbridge run\n")


def test_a_hub_without_the_daemon(hub, make_peer) -> None:
    make_peer("topcat")
    with pytest.raises(st.DaemonUnavailable, match=r"^no sampbridge daemon is registered with "
                                                   r"the hub \(http://127\.0\.0\.1:\d+"):
        st.ask_daemon(5)
    r = _cli("--timeout", "5")
    assert r.returncode == 1 and r.stderr.startswith("sampbridge: error: no sampbridge daemon")
    assert len(r.stderr.splitlines()) == 1


def _refusal(timeout: float) -> str:
    try:
        st.ask_daemon(timeout)
    except st.DaemonUnavailable as exc:
        return str(exc)
    return "it answered"


def _settles_on(words: str, timeout: float = 5) -> str:
    """Ask until the refusal has ``words`` (a peer declares its subscriptions a moment after
    its name): return the sentence."""
    got = [""]

    def ask() -> bool:
        got[0] = _refusal(timeout)
        return words in got[0]

    wait_for(ask, 20, what=f"a refusal saying {words!r} (last: {got[0]!r})")
    return got[0]


def test_a_daemon_that_cannot_refuses_or_stays_silent(hub, make_peer) -> None:
    old = make_peer("sampbridge", ["coord.pointAt.sky"])
    assert _settles_on("does not answer").endswith(
        "does not answer x-sampbridge.status: it is older than this command; restart it")
    old.close()
    refuses = make_peer("sampbridge", [st.MTYPE], fail=True)
    assert _settles_on("answered").endswith("answered x-sampbridge.status with: peer refuses")
    refuses.close()
    empty = make_peer("sampbridge", [st.MTYPE])          # samp.ok without the json
    assert "holds no JSON object" in _settles_on("JSON")
    empty.close()
    make_peer("sampbridge", [st.MTYPE], silent=True)
    assert "did not answer within 1 s; is it stuck?" in _settles_on("stuck", timeout=1)


class StandIn:
    """A client called sampbridge that answers x-sampbridge.status with SAMPLE."""

    def __init__(self) -> None:
        self.client = psamp.SAMPIntegratedClient(name="sampbridge", addr="127.0.0.1")
        self.client.connect()
        self.client.bind_receive_call(st.MTYPE, self._on_call)

    def _on_call(self, private_key, sender_id, msg_id, mtype, params, extra):
        self.client.ereply(msg_id, "samp.ok", result={"json": json.dumps(SAMPLE)})

    def close(self) -> None:
        self.client.disconnect()


def test_the_answer_as_a_table_and_as_json(hub) -> None:
    stand_in = StandIn()
    try:
        assert st.ask_daemon(5) == SAMPLE
        table = _cli()
        assert table.returncode == 0, table.stderr
        assert table.stdout.splitlines() == st.format_status(SAMPLE)
        assert table.stderr == ""                       # no log lines in the report
        as_json = _cli("--json")
        assert as_json.returncode == 0
        assert json.loads(as_json.stdout) == SAMPLE
    finally:
        stand_in.close()


def test_the_real_daemon_answers(make_daemon, cfg, make_peer) -> None:
    d = make_daemon(cfg)
    if st.MTYPE not in d.conn.handlers:
        pytest.xfail("the daemon has no x-sampbridge.status handler yet (H1)")
    viewer = make_peer("topcat", ["table.load.votable"])
    me = viewer.find("sampbridge", mtype="x-sampbridge.query.cone")
    viewer.call(me, "x-sampbridge.query.cone", {"ra": "83.633", "dec": "22.0145",
                                                "radius": "0.01"})
    data: dict[str, Any] = {}

    def asked() -> bool:
        data.update(st.ask_daemon(10))
        return bool(data.get("recent"))

    wait_for(asked, 20, what="the cone in the daemon's recent requests")
    assert data["pid"] == os.getpid()
    assert data["hub"]["connected"] is True
    assert {"topcat"} <= {p["name"] for p in data["peers"]}
    last = data["recent"][-1]
    assert (last["sender"], last["mtype"], last["error"]) == ("topcat",
                                                              "x-sampbridge.query.cone", None)
    assert isinstance(last["rows"], int) and last["ms"] > 0
    assert data["counters"]["calls"] >= 1 and data["counters"]["cones"] >= 1
    lines = st.format_status(data)
    assert any("x-sampbridge.query.cone" in line and line.endswith("ok") for line in lines)
