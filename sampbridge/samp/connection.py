"""A long-running SAMP connection on ``pyvo.samp``: register, receive, reconnect.

This module knows nothing of the CSC.  It takes a map of MType -> handler; each handler gets a
:class:`Message` and replies through it (or leaves it to the wrapper, which replies ``samp.ok``
when a handler returns without replying, and ``samp.error`` when it raises).

:class:`HubConnection` wires the rooms of the SAMP layer together:

- :mod:`.discovery`: the lockfile, a live-hub check, the hub proxy with socket timeouts;
- :mod:`.message`: the received :class:`Message` and SAMP's string rules;
- :mod:`.directory`: the other clients' names and subscriptions, and the targets of a send;
- :mod:`.sender`: calls, notifications, replies and sends to many (:class:`Delivery`).

The names other modules import from here (``Message``, ``Delivery``, ``HubUnavailable``,
``find_running_hub``, ``lockfile_path``, ``samp_string``, ``_sampify``) are re-exported.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyvo.samp as psamp

from . import registration
from .directory import ClientDirectory, ClientInfo
from .discovery import HubUnavailable, find_running_hub, hub_url, lockfile_path
from .message import Handler, Message, receiver, samp_string, sampify
from .message import _sampify as _sampify  # re-exported: tests/test_model.py imports it
from .sender import Delivery, Sender

__all__ = ["ClientInfo", "Delivery", "HubConnection", "HubUnavailable", "Message",
           "find_running_hub", "lockfile_path", "samp_string", "sampify"]

log = logging.getLogger(__name__)
psamp.conf.use_internet = False  # never probe an internet host to pick a callback address


class HubConnection:
    """A SAMP client that stays registered: it starts a hub when asked, pings, reconnects.

    Parameters
    ----------
    name, description, version : str
        Metadata declared to the hub.
    handlers : dict
        MType -> handler; every MType is subscribed (with ``x-samp.mostly-harmless``).
    mode : {'auto', 'connect', 'start'}
        ``auto`` uses a running hub, else starts one in this process; ``connect`` waits for a
        hub; ``start`` always starts its own.
    ping_interval : float
        Seconds between liveness pings and reconnect attempts.
    call_timeout : float
        Seconds a call waits for a peer's reply.
    send_wait : float
        Seconds :meth:`send` waits for replies before it returns; later replies are logged.
    on_connect : callable, optional
        Called (on the monitor thread) after every (re)registration.
    on_subscriptions : callable, optional
        Called (on a thread of its own) when another client declares its subscriptions.
    """

    def __init__(self, name: str, description: str, version: str,
                 handlers: dict[str, Handler], mode: str = "auto",
                 ping_interval: float = 2.0, call_timeout: float = 20.0,
                 send_wait: float = 5.0,
                 on_connect: Callable[[], None] | None = None,
                 on_subscriptions: Callable[[], None] | None = None) -> None:
        self.metadata = {"samp.name": name, "samp.description.text": description,
                         "sampbridge.version": version, "author.name": "sampbridge"}
        self.handlers = dict(handlers)
        self.mode = mode
        self.ping_interval = ping_interval
        self.on_connect = on_connect
        self.on_subscriptions = on_subscriptions
        self._client: psamp.SAMPIntegratedClient | None = None
        self._hub: psamp.SAMPHubServer | None = None
        self._lockfile: Path | None = None       # the one of the hub registered with
        self._lock = threading.RLock()
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self.directory = ClientDirectory(self)
        self.sender = Sender(self, self.directory, call_timeout, min(send_wait, call_timeout))
        self._subs = self.directory._subs   # the same dict (tests/test_daemon_e2e.py looks)
        self.connected_event = threading.Event()
        self.connect_count = 0

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, wait: float = 0.0) -> None:
        """Start: maybe start a hub, try to register now, and keep the connection alive.

        Parameters
        ----------
        wait : float
            Seconds to wait for a first registration (``connect`` mode may wait for a hub).
        """
        if self.mode == "start" or (self.mode == "auto" and find_running_hub() is None):
            self._hub = registration.start_hub(lockfile_path())
        self._try_connect()
        self._monitor = threading.Thread(target=self._monitor_loop, name="samp-monitor",
                                         daemon=True)
        self._monitor.start()
        if wait:
            self.connected_event.wait(wait)

    def stop(self) -> None:
        """Unregister and stop (and stop the own hub, if any)."""
        self._stop.set()
        if self._monitor:
            self._monitor.join(self.ping_interval + 5)
        with self._lock:
            self._drop(unregister=True)
        if self._hub is not None:
            try:
                self._hub.stop()
            except Exception as exc:
                log.warning("hub stop: %s", exc)
            self._hub = None

    # -- state --------------------------------------------------------------------------
    @property
    def own_hub(self) -> bool:
        """True when this process runs the hub."""
        return self._hub is not None

    @property
    def connected(self) -> bool:
        """True while registered with a hub."""
        return self.connected_event.is_set()

    @property
    def client(self) -> psamp.SAMPIntegratedClient | None:
        """The pyvo client registered with the hub (None before the first registration)."""
        return self._client

    @property
    def self_id(self) -> str | None:
        """Return this client's public id, when registered."""
        c = self._client
        try:
            return c.get_public_id() if c is not None and self.connected else None
        except Exception:
            return None

    @property
    def hub_url(self) -> str | None:
        """The XML-RPC address of the hub registered with (None when not registered)."""
        c = self._client
        if c is None or not self.connected:
            return None
        return hub_url(c.hub.lockfile) or None

    @property
    def lockfile(self) -> Path:
        """The lockfile of the hub registered with, else the one the next attempt reads."""
        return self._lockfile if self._lockfile is not None and self.connected else \
            lockfile_path()

    # -- connection ---------------------------------------------------------------------
    def _try_connect(self) -> bool:
        with self._lock:
            if self.connected:
                return True
            lock = lockfile_path()
            callbacks = {mtype: (receiver(h, False, self, self.client_name),
                                 receiver(h, True, self, self.client_name))
                         for mtype, h in self._all_handlers().items()}
            client = registration.open_client(self.metadata, callbacks,
                                              timeout=self.sender.call_timeout + 10.0)
            if client is None:
                return False
            self._client = client
            self._lockfile = lock
            self.directory.clear()
            self._lost.clear()
            self.connect_count += 1
            self.connected_event.set()
        log.info("registered with the SAMP hub as %s (%s)", client.get_public_id(),
                 client.hub.lockfile.get("samp.hub.xmlrpc.url", "?"))
        log.debug("hub lockfile %s: %s", lock, {
            k: ("***" if "secret" in k else v) for k, v in client.hub.lockfile.items()})
        if self.on_connect:
            try:
                self.on_connect()
            except Exception:
                log.exception("on_connect failed")
        return True

    def _all_handlers(self) -> dict[str, Handler]:
        hs = dict(self.handlers)
        hs["samp.hub.event.shutdown"] = self._on_hub_gone
        hs["samp.hub.disconnect"] = self._on_hub_gone
        hs["samp.hub.event.register"] = self._on_register
        hs["samp.hub.event.unregister"] = self._on_unregister
        hs["samp.hub.event.metadata"] = self._on_unregister
        hs["samp.hub.event.subscriptions"] = self._on_subscriptions
        return hs

    def _on_register(self, msg: Message) -> None:
        self.directory.forget_subscribers()

    def _on_subscriptions(self, msg: Message) -> None:
        self.directory.forget_subscribers()
        if self.on_subscriptions is not None and msg.params.get("id") != self.self_id:
            threading.Thread(target=self.on_subscriptions, name="samp-subs",
                             daemon=True).start()

    def _on_hub_gone(self, msg: Message) -> None:
        log.warning("the SAMP hub said %s; will reconnect", msg.mtype)
        self._lost.set()  # never disconnect inside a handler: the monitor thread does it

    def _on_unregister(self, msg: Message) -> None:
        self.directory.forget_client(str(msg.params.get("id", "")))

    def _drop(self, unregister: bool) -> None:
        client, self._client = self._client, None
        self.connected_event.clear()
        if client is not None:
            registration.close(client, unregister)

    def _monitor_loop(self) -> None:
        while not self._stop.is_set():
            if self._lost.is_set() or (self.connected and not self._ping()):
                log.warning("lost the SAMP hub; reconnecting")
                with self._lock:
                    self._drop(unregister=not self._lost.is_set())
                self._lost.clear()
            if not self.connected:
                self._try_connect()
            self._stop.wait(self.ping_interval if self.connected else
                            min(self.ping_interval, 0.5))

    def check_alive(self) -> bool:
        """Ping the hub now; on failure, mark the connection lost (the monitor reconnects)."""
        if self.connected and self._ping():
            return True
        if self.connected:
            self._lost.set()
        self.connected_event.clear()
        return False

    def _ping(self) -> bool:
        return registration.ping(self._client)

    # -- the directory and the sender, as the daemon asks for them -----------------------
    def reply(self, msg_id: str, response: dict[str, Any]) -> bool:
        """Send a reply; False (logged) when the hub is gone."""
        return self.sender.reply(msg_id, response)

    def client_name(self, client_id: str) -> str:
        """Return a client's ``samp.name`` (cached), or its id."""
        return self.directory.client_name(client_id)

    def clients(self) -> list[ClientInfo]:
        """Return the other registered clients: id, name and sorted subscriptions."""
        return self.directory.clients()

    def targets(self, mtype: str, patterns: Iterable[str]) -> list[tuple[str, str]]:
        """Return (id, name) of the clients subscribed to ``mtype`` whose name matches."""
        return self.directory.targets(mtype, patterns)

    def subscribes(self, client_id: str, mtype: str) -> bool:
        """Tell whether client ``client_id`` is subscribed to ``mtype`` (False when unknown)."""
        return self.directory.subscribes(client_id, mtype)

    def call(self, client_id: str, mtype: str, params: dict[str, Any]) -> Delivery:
        """Call one client and wait (at most ``call_timeout``) for its reply."""
        return self.sender.call(client_id, mtype, params)

    def notify(self, client_id: str, mtype: str, params: dict[str, Any]) -> Delivery:
        """Send a notification to one client (for peers that never answer a call)."""
        return self.sender.notify(client_id, mtype, params)

    def send(self, mtype: str, params: dict[str, Any], patterns: Iterable[str],
             params_for: Callable[[str], dict[str, Any]] | None = None,
             exclude: Iterable[str] = ()) -> list[Delivery]:
        """Call every matching subscribed client in parallel; see :meth:`Sender.send`."""
        return self.sender.send(mtype, params, patterns, params_for, exclude)
