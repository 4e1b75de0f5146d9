"""Who else is on the hub: client names, subscriptions, and the targets of a send.

Answers are cached: names until the client unregisters or changes its metadata, subscriber
lists until any hub event about clients (or :attr:`ClientDirectory.SUBS_TTL` seconds).  Every
question to the hub goes through the connection's client, whose calls have socket timeouts.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["ClientDirectory", "ClientInfo", "Link"]

log = logging.getLogger(__name__)


class Link(Protocol):
    """What the directory needs of the connection: the live pyvo client and its state."""

    @property
    def client(self) -> Any:
        """The registered ``pyvo.samp.SAMPIntegratedClient``, or None."""

    @property
    def connected(self) -> bool:
        """True while registered with a hub."""

    @property
    def self_id(self) -> str | None:
        """Return the own public id, when registered."""


@dataclass(frozen=True)
class ClientInfo:
    """Another client registered with the hub."""

    #: the hub's public id of the client
    id: str
    #: its ``samp.name`` (its id when it declared none)
    name: str
    #: the MTypes it subscribes to, sorted
    subscriptions: list[str]


class ClientDirectory:
    """Names and subscriptions of the other clients, cached and dropped on hub events.

    Parameters
    ----------
    link : Link
        The connection whose pyvo client asks the hub.
    """

    #: seconds a cached list of an MType's subscribers is trusted without a hub event
    SUBS_TTL = 30.0

    def __init__(self, link: Link) -> None:
        self._link = link
        self._names: dict[str, str] = {}
        # subscribers per MType, dropped on every hub event about clients (and after SUBS_TTL)
        self._subs: dict[str, tuple[float, list[str]]] = {}
        self._subs_gen = 0          # bumped by every invalidation (see forget_subscribers)
        self._subs_lock = threading.Lock()

    # -- cache upkeep -------------------------------------------------------------------
    def clear(self) -> None:
        """Forget everything (after a (re)registration: the ids are the new hub's)."""
        self._names.clear()
        self.forget_subscribers()

    def forget_subscribers(self) -> None:
        """Drop the cached subscriber lists.

        A lookup already under way will then not store its (possibly older) answer.
        """
        with self._subs_lock:
            self._subs_gen += 1
            self._subs.clear()

    def forget_client(self, client_id: str) -> None:
        """Forget a client that left or changed its metadata (and all subscriber lists)."""
        self._names.pop(client_id, None)
        self.forget_subscribers()

    # -- questions ----------------------------------------------------------------------
    def client_name(self, client_id: str) -> str:
        """Return a client's ``samp.name`` (cached), or its id."""
        name = self._names.get(client_id)
        if name is None:
            c = self._link.client
            if c is None:
                return client_id
            try:
                md = c.get_metadata(client_id)
                name = str(md.get("samp.name") or client_id)
            except Exception:
                return client_id
            self._names[client_id] = name
        return name

    def subscribers(self, mtype: str) -> list[str] | None:
        """Return the ids of the clients subscribed to ``mtype``; None if the hub cannot say."""
        c = self._link.client
        if c is None or not self._link.connected:
            return None
        cached = self._subs.get(mtype)
        if cached is not None and time.monotonic() - cached[0] < self.SUBS_TTL:
            return cached[1]
        gen = self._subs_gen
        try:
            subscribed = list(c.get_subscribed_clients(mtype))
        except Exception as exc:
            log.warning("cannot list subscribers of %s: %s", mtype, exc)
            return None
        with self._subs_lock:
            # a hub event that came in meanwhile may make this answer stale: then the next
            # lookup asks again
            if gen == self._subs_gen:
                self._subs[mtype] = (time.monotonic(), subscribed)
        return subscribed

    def targets(self, mtype: str, patterns: Iterable[str]) -> list[tuple[str, str]]:
        """Return (id, name) of the other clients subscribed to ``mtype`` whose name matches.

        Parameters
        ----------
        mtype : str
            The MType to send.
        patterns : iterable of str
            Shell patterns (``fnmatch``, case-insensitive) of ``samp.name``.
        """
        subscribed = self.subscribers(mtype)
        if not subscribed:
            return []
        me = self._link.self_id
        pats = [p.lower() for p in patterns]
        out = []
        for cid in subscribed:
            if cid == me:
                continue
            name = self.client_name(cid)
            if any(fnmatch.fnmatchcase(name.lower(), p) for p in pats):
                out.append((cid, name))
        return out

    def subscribes(self, client_id: str, mtype: str) -> bool:
        """Tell whether client ``client_id`` is subscribed to ``mtype`` (False when unknown)."""
        return any(cid == client_id for cid, _ in self.targets(mtype, ["*"]))

    def clients(self) -> list[ClientInfo]:
        """Return the other registered clients with their subscriptions (empty when offline).

        Each call asks the hub afresh (one call for the list, and for each client one for its
        subscriptions and, the first time, one for its name).  A client that leaves meanwhile
        is left out.
        """
        c = self._link.client
        if c is None or not self._link.connected:
            return []
        try:
            ids = [str(i) for i in c.get_registered_clients()]
        except Exception as exc:
            log.warning("cannot list the SAMP clients: %s", exc)
            return []
        me = self._link.self_id
        out = []
        for cid in ids:
            if cid == me:
                continue
            try:
                subs = c.get_subscriptions(cid)
            except Exception as exc:   # it left between the two questions
                log.debug("subscriptions of %s: %s", cid, exc)
                continue
            mtypes = sorted(str(m) for m in subs) if isinstance(subs, dict) else []
            out.append(ClientInfo(cid, self.client_name(cid), mtypes))
        return out
