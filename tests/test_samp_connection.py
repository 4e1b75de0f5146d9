"""sampbridge.samp.connection: start, register, receive, notice a lost hub, reconnect, stop."""

from __future__ import annotations

import threading

import pytest

from sampbridge.samp import HubConnection, Message
from sampbridge.samp.discovery import find_running_hub, hub_url
from sampbridge.samp.hub import Hub

from conftest import wait_for


def test_the_status_accessors(make_conn, samp_home):
    conn = make_conn()
    assert conn.connected and not conn.own_hub and conn.self_id
    assert conn.lockfile == samp_home / ".samp"
    assert conn.hub_url == hub_url(find_running_hub() or {})
    assert conn.hub_url and conn.hub_url.startswith("http://127.0.0.1:")


def test_handlers_get_calls_and_notifications_and_errors_become_replies(make_conn, make_peer):
    got: list[tuple[str, bool, dict]] = []

    def echo(msg: Message) -> None:
        got.append((msg.sender_name, msg.is_call, msg.params))
        if msg.params.get("bad"):
            raise ValueError("bad is bad")

    make_conn({"x-test.echo": echo})
    peer = make_peer("topcat", ["table.load.votable"])
    sid = peer.find("sampbridge", mtype="x-test.echo")
    assert peer.call(sid, "x-test.echo", {"a": "1"})["samp.status"] == "samp.ok"
    resp = peer.call(sid, "x-test.echo", {"bad": "1"})
    assert resp["samp.status"] == "samp.error"
    assert resp["samp.error"]["samp.errortxt"] == \
        "sampbridge could not handle x-test.echo: bad is bad"
    peer.notify(sid, "x-test.echo", {"n": "1"})
    wait_for(lambda: len(got) == 3, what="the notification")
    assert got == [("topcat", True, {"a": "1"}), ("topcat", True, {"bad": "1"}),
                   ("topcat", False, {"n": "1"})]


def test_on_subscriptions_is_called_when_another_client_subscribes(make_conn, make_peer):
    seen = threading.Event()
    make_conn(on_subscriptions=seen.set)
    make_peer("topcat", ["table.load.votable"])
    assert seen.wait(10)


# the old registration is left to the hub (a lost hub is not told goodbye), which then warns
# that it cannot reach it
@pytest.mark.filterwarnings("ignore::pyvo.samp.errors.SAMPWarning")
def test_a_hub_event_never_disconnects_on_the_handlers_thread(make_conn, make_peer):
    """samp.hub.disconnect marks the link lost; the monitor thread drops and re-registers."""
    conn = make_conn()
    before = conn.client
    conn._on_hub_gone(Message("hub", "hub", "samp.hub.disconnect", {}, None, conn))
    assert conn.client is before         # not dropped here
    wait_for(lambda: conn.connected and conn.connect_count == 2, 10,
             what="the monitor to re-register")
    assert conn.client is not before


def test_a_lost_hub_is_noticed_and_a_new_one_joined(samp_home):
    lock = str(samp_home / ".samp")
    hub = Hub(addr="127.0.0.1", web_profile=False, lockfile=lock)
    hub.start(wait=False)
    conn = HubConnection("sampbridge", "test", "0", {}, mode="connect", ping_interval=0.2,
                         call_timeout=5.0)
    try:
        conn.start(wait=10)
        first_url = conn.hub_url
        assert conn.connected and first_url
        hub.stop()
        wait_for(lambda: not conn.connected, 10, what="the loss to be noticed")
        assert conn.hub_url is None and conn.check_alive() is False
        hub = Hub(addr="127.0.0.1", web_profile=False, lockfile=lock)
        hub.start(wait=False)
        wait_for(lambda: conn.connected and conn.connect_count == 2, 10,
                 what="registration with the new hub")
        assert conn.hub_url and conn.hub_url != first_url
        assert conn.check_alive()
    finally:
        conn.stop()
        hub.stop()


def test_auto_mode_starts_and_stops_its_own_hub(samp_home):
    connected = threading.Event()
    conn = HubConnection("sampbridge", "test", "0", {}, mode="auto", ping_interval=0.2,
                         on_connect=connected.set)
    try:
        conn.start(wait=10)
        assert conn.own_hub and conn.connected and connected.is_set()
        assert find_running_hub() is not None
    finally:
        conn.stop()
    assert not conn.connected and not conn.own_hub
    assert find_running_hub() is None


def test_connect_mode_waits_without_a_hub(samp_home):
    conn = HubConnection("sampbridge", "test", "0", {}, mode="connect", ping_interval=0.2)
    try:
        conn.start(wait=0.5)
        assert not conn.connected and not conn.own_hub
        assert conn.hub_url is None and conn.clients() == []
        assert conn.lockfile == samp_home / ".samp"
    finally:
        conn.stop()
