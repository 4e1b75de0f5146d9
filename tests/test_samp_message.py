"""sampbridge.samp.message: a received message, its replies, its progress, SAMP's strings."""

from __future__ import annotations

import inspect
import threading
from typing import Any

import pytest

from sampbridge.samp.message import (
    PROGRESS,
    Message,
    dispatch,
    receiver,
    samp_string,
    sampify,
)
from sampbridge.samp.sender import Delivery


class FakeConn:
    """A Replier that records what a message sends, and can be told to fail."""

    def __init__(self, subscribed: bool = True, broken: str = "") -> None:
        self.subscribed = subscribed
        self.broken = broken            # "subscribes", "notify" or "refused"
        self.replies: list[tuple[str, dict]] = []
        self.notes: list[tuple[str, str, dict]] = []

    def reply(self, msg_id: str, response: dict[str, Any]) -> bool:
        self.replies.append((msg_id, response))
        return True

    def subscribes(self, client_id: str, mtype: str) -> bool:
        if self.broken == "subscribes":
            raise OSError("hub gone")
        return self.subscribed and mtype == PROGRESS

    def notify(self, client_id: str, mtype: str, params: dict[str, Any]) -> Delivery:
        if self.broken == "notify":
            raise ConnectionRefusedError("hub gone")
        if self.broken == "refused":
            return Delivery(client_id, "peer", False, "hub said no")
        self.notes.append((client_id, mtype, sampify(params)))
        return Delivery(client_id, "peer", True)


def call(conn: FakeConn, msg_id: str | None = "m1") -> Message:
    return Message("c1", "topcat", "x-test.slow", {}, msg_id, conn)


# -- SAMP strings -----------------------------------------------------------------------
def test_samp_strings_keep_ascii_and_replace_the_rest():
    assert samp_string("plain\ttext\n") == "plain\ttext\n"
    assert samp_string("list \u00d7 CSC 2.1") == "list x CSC 2.1"
    assert samp_string("r=3\u2032 \u2212 5\u00b0") == "r=3' - 5deg"
    assert samp_string("Caf\u00e9 \u03b1") == "Cafe ?"


def test_sampify_makes_strings_lists_and_maps_and_drops_none():
    assert sampify({"n": 3, "ok": True, "no": False, "gone": None,
                    "list": (1.5, "a\u00d7b"), "map": {"x": [None, 2]}}) == {
        "n": "3", "ok": "1", "no": "0", "list": ["1.5", "axb"], "map": {"x": ["None", "2"]}}


# -- replies ----------------------------------------------------------------------------
def test_a_call_is_replied_once_and_a_notification_never():
    conn = FakeConn()
    msg = call(conn)
    assert msg.is_call and not msg.replied
    assert msg.reply_ok({"rows": 3})
    assert not msg.reply_error("too late")
    assert msg.replied
    assert conn.replies == [("m1", {"samp.status": "samp.ok", "samp.result": {"rows": "3"}})]
    note = call(conn, None)
    assert not note.is_call and not note.reply_ok()
    assert len(conn.replies) == 1


def test_concurrent_replies_send_one():
    conn = FakeConn()
    msg = call(conn)
    barrier = threading.Barrier(8)

    def go() -> None:
        barrier.wait()
        msg.reply_ok()

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(conn.replies) == 1


def test_reply_error_carries_text_debug_code_and_result():
    conn = FakeConn()
    call(conn).reply_error("RA 400 \u00d7 is out of range", debug="trace", code="E1",
                           result={"sent-to": ["topcat"]})
    assert conn.replies[0][1] == {
        "samp.status": "samp.error",
        "samp.error": {"samp.errortxt": "RA 400 x is out of range", "samp.debugtxt": "trace",
                       "samp.code": "E1"},
        "samp.result": {"sent-to": ["topcat"]}}


# -- progress ---------------------------------------------------------------------------
def test_progress_goes_to_a_subscribed_caller_with_the_spec_names():
    conn = FakeConn()
    msg = call(conn)
    msg.defer()
    assert msg.progress("querying CSC \u00d7 2", percent=40, time_left=12.5)
    assert msg.progress("still querying")
    assert conn.notes == [
        ("c1", PROGRESS, {"msgid": "m1", "txt": "querying CSC x 2", "percent": "40.0",
                          "timeLeft": "12.5"}),
        ("c1", PROGRESS, {"msgid": "m1", "txt": "still querying"})]


@pytest.mark.parametrize("why", ["not subscribed", "notification", "replied"])
def test_progress_is_not_sent(why):
    conn = FakeConn(subscribed=why != "not subscribed")
    msg = call(conn, None if why == "notification" else "m1")
    if why == "replied":
        msg.reply_ok()
    assert msg.progress("half way", 50) is False
    assert conn.notes == []


@pytest.mark.parametrize("broken", ["subscribes", "notify", "refused"])
def test_progress_never_raises_for_hub_trouble(broken, caplog):
    caplog.set_level("DEBUG", logger="sampbridge.samp.message")
    msg = call(FakeConn(broken=broken))
    assert msg.progress("half way", 50) is False
    assert any("progress of m1 to topcat" in r.getMessage() for r in caplog.records)


# -- dispatch ---------------------------------------------------------------------------
def test_receivers_have_the_argument_counts_pyvo_dispatches_by():
    def handler(msg: Message) -> None:
        pass

    def name(cid: str) -> str:
        return cid

    assert len(inspect.signature(receiver(handler, False, FakeConn(), name)).parameters) == 5
    assert len(inspect.signature(receiver(handler, True, FakeConn(), name)).parameters) == 6


def run(handler, msg_id: str | None = "m1", mtype: str = "x-test.a",
        params: Any = None) -> tuple[FakeConn, list[Message]]:
    conn = FakeConn()
    seen: list[Message] = []

    def wrapped(msg: Message) -> None:
        seen.append(msg)
        handler(msg)

    dispatch(wrapped, conn, lambda cid: f"name-of-{cid}", "c1", msg_id, mtype,
             {"a": "1"} if params is None else params)
    return conn, seen


def test_a_handler_that_returns_gets_samp_ok_one_that_raises_samp_error():
    conn, seen = run(lambda msg: None)
    assert conn.replies == [("m1", {"samp.status": "samp.ok", "samp.result": {}})]
    assert seen[0].sender_name == "name-of-c1" and seen[0].params == {"a": "1"}

    def bad(msg: Message) -> None:
        raise ValueError("no RA")

    conn, _ = run(bad)
    err = conn.replies[0][1]
    assert err["samp.status"] == "samp.error"
    assert err["samp.error"]["samp.errortxt"] == "sampbridge could not handle x-test.a: no RA"


def test_a_handler_that_replied_or_deferred_is_left_alone():
    conn, _ = run(lambda msg: msg.reply_error("refused"))
    assert [r[1]["samp.status"] for r in conn.replies] == ["samp.error"]
    conn, seen = run(lambda msg: msg.defer())
    assert conn.replies == [] and seen[0].deferred


def test_notifications_get_no_reply_even_when_the_handler_raises():
    def bad(msg: Message) -> None:
        raise ValueError("no RA")

    conn, _ = run(bad, msg_id=None)
    assert conn.replies == []


def test_hub_events_are_from_the_hub_and_odd_params_are_kept_raw():
    _, seen = run(lambda msg: None, mtype="samp.hub.event.register", params=["odd"])
    assert seen[0].sender_name == "hub"
    assert seen[0].params == {"_raw": ["odd"]}


# -- progress through a real hub --------------------------------------------------------
@pytest.mark.parametrize("subscribed", [True, False])
def test_progress_reaches_a_caller_through_the_hub_only_if_it_listens(make_conn, make_peer,
                                                                       subscribed):
    said: list[tuple[str | None, bool]] = []

    def slow(msg: Message) -> None:
        said.append((msg.msg_id, msg.progress("cone done, images next", 50, 3)))

    conn = make_conn({"x-test.slow": slow})
    peer = make_peer("topcat", [PROGRESS] if subscribed else ["table.load.votable"])
    resp = peer.call(peer.find("sampbridge", mtype="x-test.slow"), "x-test.slow", {})
    assert resp["samp.status"] == "samp.ok"
    assert conn.clients()    # the peer is known
    [(msg_id, sent)] = said
    assert sent is subscribed
    if subscribed:
        [note] = peer.wait_for(PROGRESS)
        assert note == {"msgid": msg_id, "txt": "cone done, images next", "percent": "50.0",
                        "timeLeft": "3.0"}
