"""x-sampbridge.status: a recording client asks the daemon, the JSON says what it did.

The object is the contract with ``sampbridge status`` (docs/user-guide.md, "Asking the
daemon"): its keys, and what a click, a custom call and a refused call leave in it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from conftest import wait_for

STATUS = "x-sampbridge.status"
RHO = {"ra": "246.7925", "dec": "-24.32027"}
KEYS = ["version", "pid", "started", "uptime_s", "hub", "peers", "recent", "counters", "cache",
        "mirror", "results_dir", "query_folder"]
COUNTERS = {"messages", "calls", "clicks", "cones", "images", "tap", "matches", "tables_sent",
            "errors"}


def _status(peer: Any, sid: str) -> dict[str, Any]:
    reply = peer.call(sid, STATUS, {})
    assert reply["samp.status"] == "samp.ok", reply
    text = reply["samp.result"]["json"]
    assert text.isascii()
    return json.loads(text)


def test_a_fresh_daemon_says_who_is_there_and_that_nothing_ran(cfg, make_daemon,
                                                               make_peer) -> None:
    d = make_daemon(cfg.replace(**{"images.enabled": False}))
    topcat = make_peer("topcat", ["table.load.votable"])
    sid = topcat.find("sampbridge")
    st = _status(topcat, sid)
    assert list(st) == KEYS
    assert st["pid"] == os.getpid() and st["started"].endswith("Z")
    from sampbridge import __version__
    assert st["version"] == __version__
    assert st["hub"]["connected"] is True and st["hub"]["own_hub"] is False
    assert st["hub"]["url"] and st["hub"]["lockfile"]
    peers = {p["name"]: p for p in st["peers"]}
    assert "table.load.votable" in peers["topcat"]["subscriptions"]
    assert "sampbridge" not in peers
    assert set(st["counters"]) >= COUNTERS
    assert st["counters"]["messages"] == st["counters"]["calls"] == 1   # this status call
    assert st["recent"] == []
    assert st["results_dir"] == str(d.engine.results_dir)
    assert st["query_folder"] is None
    cache = st["cache"]
    assert cache is None or (cache["dir"].startswith(st["results_dir"]) and
                             cache["entries"] >= 0 and cache["bytes"] >= 0)


def test_a_click_a_call_and_a_refusal_are_in_the_last_requests(cfg, make_daemon,
                                                               make_peer) -> None:
    d = make_daemon(cfg.replace(**{"images.enabled": False, "folder.enabled": True}))
    topcat = make_peer("topcat", ["table.load.votable"])
    sid = topcat.find("sampbridge")
    topcat.notify(sid, "coord.pointAt.sky", RHO)
    topcat.wait_for("table.load.votable")
    wait_for(lambda: d.desk.activity.recent(), 10, what="the click recorded")
    ok = topcat.call(sid, "x-sampbridge.query.cone", {**RHO, "radius": "0.01"})
    assert ok["samp.status"] == "samp.ok"
    bad = topcat.call(sid, "x-sampbridge.query.cone", {"ra": "400", "dec": "0"})
    assert bad["samp.status"] == "samp.error"
    topcat.notify(sid, "table.highlight.row", {"table-id": "never-sent", "row": "0"})
    wait_for(lambda: len(d.desk.activity.recent()) >= 4, 10, what="the highlight recorded")

    st = _status(topcat, sid)
    click, cone, refused, highlight = st["recent"][:4]
    assert click["sender"] == "topcat" and click["mtype"] == "coord.pointAt.sky"
    assert click["what"].startswith("cone 246.79250 -24.32027 r=")
    assert click["rows"] >= 1 and click["ms"] > 0 and click["error"] is None
    assert click["time"].endswith("Z")
    assert cone["mtype"] == "x-sampbridge.query.cone" and cone["error"] is None
    assert cone["rows"] >= 1 and cone["ms"] > 0
    assert refused["mtype"] == "x-sampbridge.query.cone" and refused["what"] == "refused"
    assert refused["error"] == bad["samp.error"]["samp.errortxt"]
    assert highlight["mtype"] == "table.highlight.row"
    assert "does not know table" in highlight["error"]
    counters = st["counters"]
    assert counters["clicks"] == 1 and counters["cones"] >= 2
    assert counters["tables_sent"] >= 2 and counters["errors"] == 2
    assert counters["messages"] == 5 and counters["calls"] == 3
    assert st["query_folder"] == cfg["folder.dir"]


def test_a_match_is_in_the_last_requests_with_its_rows(cfg, make_daemon, make_peer,
                                                       tmp_path) -> None:
    make_daemon(cfg.replace(**{"images.enabled": False}))
    table = tmp_path / "mine.csv"
    table.write_text("name,ra,dec\na,246.7925,-24.32027\n")
    topcat = make_peer("topcat", ["table.load.votable"])
    sid = topcat.find("sampbridge")
    done = topcat.call(sid, "x-sampbridge.match.table", {"url": table.as_uri(), "name": "mine"},
                       timeout=60)
    assert done["samp.status"] == "samp.ok", done
    st = _status(topcat, sid)
    [match] = [r for r in st["recent"] if r["mtype"] == "x-sampbridge.match.table"]
    assert match["what"].startswith("match 'mine'") and match["error"] is None
    assert match["rows"] == int(done["samp.result"]["rows"]) and match["ms"] > 0
    assert st["counters"]["matches"] == 1 and st["counters"]["tables_sent"] == 1
