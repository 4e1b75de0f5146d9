"""sampbridge.samp.sender: calls, notifications, replies and sends to many, on a real hub."""

from __future__ import annotations

import logging
import time

from sampbridge.samp.directory import ClientDirectory
from sampbridge.samp.sender import Delivery, Sender

from conftest import wait_for


def test_a_call_returns_the_peers_verdict(make_conn, make_peer):
    conn = make_conn()
    ok = make_peer("topcat", ["table.load.votable"])
    bad = make_peer("refuser", ["table.load.votable"], fail=True)
    oid, bid = ok.client.get_public_id(), bad.client.get_public_id()
    assert conn.call(oid, "table.load.votable", {"url": "file:///t.vot", "rows": 3}) == \
        Delivery(oid, "topcat", True)
    [params] = ok.of("table.load.votable")
    assert params == {"url": "file:///t.vot", "rows": "3"}     # made SAMP strings
    assert conn.call(bid, "table.load.votable", {}) == \
        Delivery(bid, "refuser", False, "peer refuses")


def test_a_call_to_a_client_that_does_not_subscribe_fails_and_drops_the_cache(make_conn,
                                                                              make_peer):
    conn = make_conn()
    peer = make_peer("topcat", ["table.load.votable"])
    pid = peer.client.get_public_id()
    # hub events about topcat may still clear the cache: wait until a lookup was kept
    wait_for(lambda: conn.targets("table.load.votable", ["*"])
             and "table.load.votable" in conn.directory._subs, what="a cached subscriber list")
    d = conn.call(pid, "image.load.fits", {})
    assert not d.ok and "not subscribed" in d.error
    assert conn.directory._subs == {}


def test_a_notification_needs_no_reply(make_conn, make_peer):
    conn = make_conn()
    peer = make_peer("Aladin", ["script.aladin.send"], silent=True)
    pid = peer.client.get_public_id()
    assert conn.notify(pid, "script.aladin.send", {"script": "get hips"}).ok
    assert peer.wait_for("script.aladin.send") == [{"script": "get hips"}]


def test_send_reaches_the_matching_peers_with_their_own_params(make_conn, make_peer):
    conn = make_conn()
    topcat = make_peer("topcat", ["table.load.votable"])
    ds9 = make_peer("SAOImageDS9", ["table.load.votable"])
    make_peer("Aladin", ["table.load.votable"])
    wait_for(lambda: len(conn.targets("table.load.votable", ["*"])) == 3, what="3 subscribers")

    def per_recipient(name: str) -> dict:
        if name == "SAOImageDS9":
            return {"url": "file:///t.tabledata.vot"}
        raise OSError("no copy")          # the common params are sent instead

    out = conn.send("table.load.votable", {"url": "file:///t.vot"}, ["topcat", "saoimage*"],
                    params_for=per_recipient)
    assert sorted((d.client_name, d.ok) for d in out) == [("SAOImageDS9", True),
                                                          ("topcat", True)]
    assert topcat.of("table.load.votable") == [{"url": "file:///t.vot"}]
    assert ds9.of("table.load.votable") == [{"url": "file:///t.tabledata.vot"}]
    skipped = conn.send("table.load.votable", {"url": "u"}, ["topcat"],
                        exclude=[topcat.client.get_public_id()])
    assert skipped == []


def test_send_stops_waiting_for_a_silent_peer_and_logs_its_end(make_conn, make_peer, caplog):
    caplog.set_level(logging.INFO, logger="sampbridge.samp")
    conn = make_conn(call_timeout=2.0, send_wait=0.5)
    make_peer("topcat", ["table.load.votable"])
    make_peer("Aladin", ["table.load.votable"], silent=True)
    wait_for(lambda: len(conn.targets("table.load.votable", ["*"])) == 2, what="2 subscribers")
    t0 = time.monotonic()
    out = {d.client_name: d for d in conn.send("table.load.votable", {"url": "u"}, ["*"])}
    assert time.monotonic() - t0 < 2.0
    assert out["topcat"].ok and not out["topcat"].pending
    assert out["Aladin"].pending and not out["Aladin"].ok and out["Aladin"].error == \
        "no reply yet"
    wait_for(lambda: any("table.load.votable to Aladin failed" in r.getMessage()
                         for r in caplog.records), 15, what="the late timeout logged")


def test_send_wait_is_never_longer_than_call_timeout(make_conn):
    conn = make_conn(call_timeout=1.0, send_wait=5.0)
    assert conn.sender.send_wait == 1.0


class Offline:
    client = None
    connected = False
    self_id = None


def test_nothing_is_sent_without_a_hub(caplog):
    link = Offline()
    sender = Sender(link, ClientDirectory(link), call_timeout=1.0, send_wait=1.0)
    assert sender.call("c1", "table.load.votable", {}) == \
        Delivery("c1", "c1", False, "not connected to a hub")
    assert sender.notify("c1", "x", {}).error == "not connected to a hub"
    assert sender.send("table.load.votable", {}, ["*"]) == []
    with caplog.at_level(logging.WARNING, logger="sampbridge.samp"):
        assert sender.reply("m1", {"samp.status": "samp.ok"}) is False
    assert "cannot reply to m1: not connected" in caplog.text
