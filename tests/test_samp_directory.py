"""sampbridge.samp.directory: names, subscriptions, targets and the list of clients."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sampbridge.samp.directory import ClientDirectory, ClientInfo
from sampbridge.samp.message import PROGRESS

from conftest import wait_for


class FakeClient:
    """The part of pyvo's SAMPIntegratedClient the directory uses, counting the questions."""

    def __init__(self) -> None:
        self.names = {"c1": "topcat", "c2": "SAOImageDS9", "c3": "", "me": "sampbridge"}
        self.subs = {"c1": {"table.load.votable": {}, PROGRESS: {}},
                     "c2": {"image.load.fits": {}, "table.load.votable": {}},
                     "c3": {}, "me": {"table.load.votable": {}}}
        self.asked: list[str] = []
        self.down = False
        self.during: Any = None          # called inside get_subscribed_clients

    def _ask(self, what: str) -> None:
        self.asked.append(what)
        if self.down:
            raise ConnectionRefusedError("hub gone")

    def get_metadata(self, cid: str) -> dict:
        self._ask(f"metadata {cid}")
        return {"samp.name": self.names[cid]}

    def get_subscribed_clients(self, mtype: str) -> dict:
        self._ask(f"subscribed {mtype}")
        answer = {cid: {} for cid, subs in self.subs.items() if mtype in subs}
        if self.during:
            self.during()
        return answer

    def get_registered_clients(self) -> list[str]:
        self._ask("registered")
        return [cid for cid in self.names if cid != "me"] + ["gone"]

    def get_subscriptions(self, cid: str) -> dict:
        self._ask(f"subscriptions {cid}")
        if cid == "gone":
            raise RuntimeError("Invalid client ID")
        return self.subs[cid]


class FakeLink:
    def __init__(self) -> None:
        self.client: FakeClient | None = FakeClient()
        self.connected = True
        self.self_id: str | None = "me"


def directory() -> tuple[ClientDirectory, FakeClient, FakeLink]:
    link = FakeLink()
    assert link.client is not None
    return ClientDirectory(link), link.client, link


def test_targets_match_names_case_insensitively_and_leave_out_itself():
    d, _, _ = directory()
    assert d.targets("table.load.votable", ["*"]) == [("c1", "topcat"), ("c2", "SAOImageDS9")]
    assert d.targets("table.load.votable", ["ds9", "saoimage*"]) == [("c2", "SAOImageDS9")]
    assert d.targets("image.load.fits", ["topcat"]) == []
    assert d.subscribes("c1", PROGRESS) and not d.subscribes("c2", PROGRESS)


def test_names_are_cached_until_the_client_changes_and_an_unnamed_client_is_its_id():
    d, c, _ = directory()
    assert d.client_name("c1") == "topcat"
    assert d.client_name("c1") == "topcat"
    assert c.asked.count("metadata c1") == 1
    assert d.client_name("c3") == "c3"
    c.names["c1"] = "TOPCAT 4.10"
    d.forget_client("c1")
    assert d.client_name("c1") == "TOPCAT 4.10"


def test_subscribers_are_cached_until_a_hub_event_or_the_ttl():
    d, c, _ = directory()
    d.targets("table.load.votable", ["*"])
    d.targets("table.load.votable", ["*"])
    assert c.asked.count("subscribed table.load.votable") == 1
    d.forget_subscribers()
    d.targets("table.load.votable", ["*"])
    assert c.asked.count("subscribed table.load.votable") == 2
    d.SUBS_TTL = 0.0
    d.targets("table.load.votable", ["*"])
    assert c.asked.count("subscribed table.load.votable") == 3


def test_an_answer_overtaken_by_a_hub_event_is_used_but_not_kept():
    d, c, _ = directory()
    c.during = d.forget_subscribers
    assert d.subscribers("table.load.votable") == ["c1", "c2", "me"]
    c.during = None
    d.subscribers("table.load.votable")
    d.subscribers("table.load.votable")
    assert c.asked.count("subscribed table.load.votable") == 2


def test_offline_or_failing_hub_gives_empty_answers():
    d, c, link = directory()
    c.down = True
    assert d.targets("table.load.votable", ["*"]) == []
    assert d.clients() == []
    assert d.client_name("c1") == "c1"
    c.down = False
    link.connected = False
    assert d.subscribers("table.load.votable") is None
    assert d.clients() == []
    link.client = None
    assert d.client_name("c2") == "c2"


def test_clients_lists_the_others_with_sorted_subscriptions_and_skips_the_departed():
    d, _, _ = directory()
    assert d.clients() == [
        ClientInfo("c1", "topcat", sorted(["table.load.votable", PROGRESS])),
        ClientInfo("c2", "SAOImageDS9", ["image.load.fits", "table.load.votable"]),
        ClientInfo("c3", "c3", [])]
    assert asdict(d.clients()[2]) == {"id": "c3", "name": "c3", "subscriptions": []}


# -- on a real hub ----------------------------------------------------------------------
def test_clients_on_a_real_hub(make_conn, make_peer):
    conn = make_conn()
    topcat = make_peer("topcat", ["table.load.votable", PROGRESS])
    ds9 = make_peer("SAOImageDS9", ["image.load.fits"])
    tid, did = topcat.client.get_public_id(), ds9.client.get_public_id()

    def peers() -> dict[str, ClientInfo]:
        return {c.id: c for c in conn.clients() if c.id in (tid, did)}

    found = wait_for(lambda: len(peers()) == 2 and peers(), what="both peers listed")
    assert isinstance(found, dict)
    assert found[tid].name == "topcat"
    # pyvo's clients also subscribe to samp.app.ping and client.env.get by themselves
    assert {"table.load.votable", PROGRESS} <= set(found[tid].subscriptions)
    assert found[tid].subscriptions == sorted(found[tid].subscriptions)
    assert found[did].name == "SAOImageDS9"
    assert "image.load.fits" in found[did].subscriptions
    assert "table.load.votable" not in found[did].subscriptions
    assert conn.self_id not in [c.id for c in conn.clients()]
    ds9.close()
    wait_for(lambda: did not in [c.id for c in conn.clients()], what="ds9 gone from the list")


def test_targets_follow_peers_coming_and_going(make_conn, make_peer):
    conn = make_conn()
    assert conn.targets("table.load.votable", ["*"]) == []
    topcat = make_peer("topcat", ["table.load.votable"])
    tid = topcat.client.get_public_id()
    wait_for(lambda: conn.targets("table.load.votable", ["*"]) == [(tid, "topcat")],
             what="the subscription event to drop the cached empty list")
    topcat.close()
    wait_for(lambda: conn.targets("table.load.votable", ["*"]) == [],
             what="the unregister event to drop topcat")
