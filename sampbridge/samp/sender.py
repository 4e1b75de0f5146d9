"""Sending to other clients: a call, a notification, a reply, and a send to many at once.

A call waits at most ``call_timeout`` for the peer's reply; :meth:`Sender.send` calls every
recipient on its own thread and returns after ``send_wait`` with the silent ones marked pending.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .directory import ClientDirectory, Link
from .message import sampify

__all__ = ["Delivery", "Sender"]

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    """The outcome of one call to one client."""

    client_id: str
    client_name: str
    ok: bool
    error: str = ""
    #: no reply yet when :meth:`Sender.send` stopped waiting (logged when it comes)
    pending: bool = False


class Sender:
    """Calls, notifications and replies through the connection's pyvo client.

    Parameters
    ----------
    link : Link
        The connection whose pyvo client talks to the hub.
    directory : ClientDirectory
        Names the recipients, finds the targets, and forgets subscribers after a failure.
    call_timeout : float
        Seconds a call waits for a peer's reply.
    send_wait : float
        Seconds :meth:`send` waits for replies before it returns.
    """

    def __init__(self, link: Link, directory: ClientDirectory, call_timeout: float,
                 send_wait: float) -> None:
        self._link = link
        self._directory = directory
        self.call_timeout = call_timeout
        self.send_wait = send_wait

    def reply(self, msg_id: str, response: dict[str, Any]) -> bool:
        """Send a reply; False (logged) when the hub is gone."""
        c = self._link.client
        if c is None:
            log.warning("cannot reply to %s: not connected", msg_id)
            return False
        try:
            c.reply(msg_id, response)
            return True
        except Exception as exc:
            log.warning("reply to %s failed: %s", msg_id, exc)
            return False

    def call(self, client_id: str, mtype: str, params: dict[str, Any]) -> Delivery:
        """Call one client and wait (at most ``call_timeout``) for its reply."""
        wait = str(int(max(1, self.call_timeout)))
        return self._one(client_id, mtype, params,
                         lambda c, message: c.call_and_wait(client_id, message, wait))

    def notify(self, client_id: str, mtype: str, params: dict[str, Any]) -> Delivery:
        """Send a notification to one client (for peers that never answer a call)."""
        return self._one(client_id, mtype, params,
                         lambda c, message: c.notify(client_id, message))

    def _one(self, client_id: str, mtype: str, params: dict[str, Any],
             send: Callable[[Any, dict[str, Any]], Any]) -> Delivery:
        name = self._directory.client_name(client_id)
        c = self._link.client
        if c is None:
            return Delivery(client_id, name, False, "not connected to a hub")
        try:
            resp = send(c, {"samp.mtype": mtype, "samp.params": sampify(params)})
        except Exception as exc:
            self._directory.forget_subscribers()  # the client may be gone: ask again next time
            return Delivery(client_id, name, False, str(exc))
        status = resp.get("samp.status") if isinstance(resp, dict) else None
        if status == "samp.error":       # a call's reply (a notification has none)
            err = resp.get("samp.error", {}).get("samp.errortxt", "error")
            return Delivery(client_id, name, False, str(err))
        return Delivery(client_id, name, True)

    def send(self, mtype: str, params: dict[str, Any], patterns: Iterable[str],
             params_for: Callable[[str], dict[str, Any]] | None = None,
             exclude: Iterable[str] = ()) -> list[Delivery]:
        """Call every matching subscribed client (in parallel) and return the outcomes.

        Waits at most ``send_wait`` seconds: a client that has not replied by then is
        returned as ``pending`` (a viewer busy loading a large file, or Aladin 12, which never
        answers its first ``table.load.votable``), and its reply, if any comes within
        ``call_timeout``, is logged.  ``params_for``, if given, is called with a recipient's
        name and returns the params for that recipient (to send one a different copy of a
        file, say).  Clients whose id is in ``exclude`` are left out.
        """
        skip = set(exclude)
        targets = [t for t in self._directory.targets(mtype, patterns) if t[0] not in skip]
        if not targets:
            return []

        def params_of(name: str) -> dict[str, Any]:
            if params_for is None:
                return params
            try:
                return params_for(name)
            except Exception as exc:  # fall back to the common params
                log.warning("cannot prepare %s for %s (%s); sending the common one", mtype,
                            name, exc)
                return params

        results: list[Delivery | None] = [None] * len(targets)
        cond = threading.Condition()
        returned = False

        def one(i: int, cid: str, name: str) -> None:
            d = self.call(cid, mtype, params_of(name))
            with cond:
                results[i] = d
                late = returned
                cond.notify_all()
            if late and d.ok:
                log.info("%s: %s replied samp.ok after all", mtype, name)
            elif late:
                log.warning("%s to %s failed: %s", mtype, name, d.error)

        for i, (cid, name) in enumerate(targets):
            threading.Thread(target=one, args=(i, cid, name), daemon=True,
                             name=f"samp-send-{name}").start()
        with cond:
            cond.wait_for(lambda: all(r is not None for r in results), self.send_wait)
            returned = True
            return [r or Delivery(cid, name, False, "no reply yet", pending=True)
                    for r, (cid, name) in zip(results, targets, strict=True)]
