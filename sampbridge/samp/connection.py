"""A long-running SAMP connection on ``pyvo.samp``: register, reply, send, reconnect.

This module knows nothing of the CSC.  It takes a map of MType -> handler; each handler gets a
:class:`Message` and replies through it (or leaves it to the wrapper, which replies ``samp.ok``
when a handler returns without replying, and ``samp.error`` when it raises).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
import xmlrpc.client as xmlrpc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pyvo.samp as psamp
from pyvo.samp.hub_proxy import SAMPHubProxy
from pyvo.samp.lockfile_helpers import read_lockfile
from pyvo.samp.utils import SAMPXXEServerProxy, ServerProxyPool

from ..errors import SampBridgeError
from .hub import Hub

__all__ = ["Message", "Delivery", "HubConnection", "HubUnavailable", "lockfile_path",
           "find_running_hub", "samp_string"]

log = logging.getLogger(__name__)
psamp.conf.use_internet = False  # never probe an internet host to pick a callback address

Handler = Callable[["Message"], None]


class HubUnavailable(SampBridgeError, RuntimeError):
    """No usable SAMP hub."""


def lockfile_path() -> Path:
    """Return the standard-profile lockfile: ``$SAMP_HUB`` (std-lockurl:) or ``~/.samp``."""
    env = os.environ.get("SAMP_HUB", "")
    if env.startswith("std-lockurl:"):
        url = urlsplit(env[len("std-lockurl:"):])
        if url.scheme in ("file", ""):
            return Path(unquote(url.path))
    return Path.home() / ".samp"


def _timeout_proxy_class(timeout: float) -> type:
    class _Transport(xmlrpc.Transport):
        def make_connection(self, host: Any) -> Any:
            conn = super().make_connection(host)
            conn.timeout = timeout
            return conn

    class _Proxy(SAMPXXEServerProxy):
        def __init__(self, uri: str, **kwargs: Any) -> None:
            kwargs.setdefault("transport", _Transport())
            super().__init__(uri, **kwargs)

    return _Proxy


def find_running_hub(timeout: float = 3.0) -> dict[str, str] | None:
    """Return the lockfile contents of a live hub, or ``None`` (a ping with a timeout decides)."""
    path = lockfile_path()
    try:
        params = read_lockfile(str(path))
    except OSError:
        return None
    url = params.get("samp.hub.xmlrpc.url", "").replace("\\", "")
    if not url:
        return None
    try:
        _timeout_proxy_class(timeout)(url, allow_none=1).samp.hub.ping()
    except Exception:  # any failure means: no live hub there
        return None
    return params


class _TimeoutHubProxy(SAMPHubProxy):
    """pyvo's hub proxy, but every XML-RPC call to the hub has a socket timeout."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def connect(self, hub: Any = None, hub_params: dict | None = None,
                pool_size: int = 20) -> None:
        self._connected = False
        self.lockfile = {}
        if hub_params is None:
            hub_params = find_running_hub(self._timeout)
            if hub_params is None:
                raise HubUnavailable(f"no running SAMP hub (lockfile {lockfile_path()})")
        url = hub_params["samp.hub.xmlrpc.url"].replace("\\", "")
        self.proxy = ServerProxyPool(pool_size, _timeout_proxy_class(self._timeout), url,
                                     allow_none=1)
        self.ping()
        self.lockfile = dict(hub_params)
        self._connected = True


@dataclass(eq=False)
class Message:
    """One received SAMP message; a call (``msg_id`` set) must be replied to exactly once."""

    sender_id: str
    sender_name: str
    mtype: str
    params: dict[str, Any]
    msg_id: str | None
    _conn: HubConnection = field(repr=False)
    _replied: bool = field(default=False, repr=False)
    _deferred: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def is_call(self) -> bool:
        """True for a call (which expects a reply), False for a notification."""
        return self.msg_id is not None

    @property
    def replied(self) -> bool:
        """True once a reply was sent (or for notifications, never needed)."""
        return self._replied

    def defer(self) -> None:
        """Promise to reply later (from a worker); the wrapper then does not reply."""
        self._deferred = True

    def reply(self, response: dict[str, Any]) -> bool:
        """Send a raw response map once; return False if already replied or not a call."""
        with self._lock:
            if self.msg_id is None or self._replied:     # not a call, or replied
                return False
            self._replied = True
        return self._conn.reply(self.msg_id, response)

    def reply_ok(self, result: dict[str, Any] | None = None) -> bool:
        """Reply ``samp.ok`` with ``result`` (values are made SAMP strings)."""
        return self.reply({"samp.status": "samp.ok", "samp.result": _sampify(result or {})})

    def reply_error(self, text: str, *, debug: str | None = None,
                    code: str | None = None, result: dict | None = None) -> bool:
        """Reply ``samp.error`` with a sentence a person can read."""
        err: dict[str, str] = {"samp.errortxt": samp_string(text)}
        if debug:
            err["samp.debugtxt"] = samp_string(debug)
        if code:
            err["samp.code"] = code
        resp: dict[str, Any] = {"samp.status": "samp.error", "samp.error": err}
        if result:
            resp["samp.result"] = _sampify(result)
        return self.reply(resp)


_ASCII_FOR = {"\u00d7": "x", "\u2212": "-", "\u2032": "'", "\u2033": '"', "\u00b0": "deg",
              "\u2013": "-", "\u2014": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"',
              "\u201d": '"'}


def samp_string(text: str) -> str:
    """Return ``text`` as a legal SAMP string (0x09, 0x0a, 0x0d and 0x20-0x7f only).

    The JSAMP hub refuses a message with any other character ("Bad SAMP string"), so a name
    such as ``list \u00d7 CSC 2.1`` is sent as ``list x CSC 2.1``; accents lose their marks and
    anything else becomes ``?``.
    """
    if all(c in "\t\n\r" or " " <= c <= "\x7f" for c in text):
        return text
    import unicodedata

    out = []
    for c in text:
        if c in "\t\n\r" or " " <= c <= "\x7f":
            out.append(c)
        elif c in _ASCII_FOR:
            out.append(_ASCII_FOR[c])
        else:
            plain = unicodedata.normalize("NFKD", c).encode("ascii", "ignore").decode()
            out.append(plain if plain.strip() else "?")
    return "".join(out)


def _sampify(value: Any) -> Any:
    """Turn a Python value into SAMP's strings, lists and maps (ASCII only)."""
    if isinstance(value, dict):
        return {samp_string(str(k)): _sampify(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_sampify(v) for v in value]
    if isinstance(value, bool):
        return "1" if value else "0"
    return samp_string(str(value))


@dataclass
class Delivery:
    """The outcome of one call to one client."""

    client_id: str
    client_name: str
    ok: bool
    error: str = ""
    #: no reply yet when :meth:`HubConnection.send` stopped waiting (logged when it comes)
    pending: bool = False


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

    #: seconds a cached list of an MType's subscribers is trusted without a hub event
    SUBS_TTL = 30.0

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
        self.call_timeout = call_timeout
        self.send_wait = min(send_wait, call_timeout)
        self.on_connect = on_connect
        self.on_subscriptions = on_subscriptions
        self._client: psamp.SAMPIntegratedClient | None = None
        self._hub: psamp.SAMPHubServer | None = None
        self._lock = threading.RLock()
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._names: dict[str, str] = {}
        # subscribers per MType, dropped on every hub event about clients (and after SUBS_TTL)
        self._subs: dict[str, tuple[float, list[str]]] = {}
        self._subs_gen = 0          # bumped by every invalidation (see _forget_subscribers)
        self._subs_lock = threading.Lock()
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
            self._start_hub()
        self._try_connect()
        self._monitor = threading.Thread(target=self._monitor_loop, name="samp-monitor",
                                         daemon=True)
        self._monitor.start()
        if wait:
            self.connected_event.wait(wait)

    def _start_hub(self) -> None:
        lock = lockfile_path()
        hub = Hub(addr="127.0.0.1", web_profile=False, label="sampbridge",
                                  lockfile=str(lock))
        hub.start(wait=False)
        self._hub = hub
        log.info("started a SAMP hub at %s (lockfile %s)", hub._url, lock)

    @property
    def own_hub(self) -> bool:
        """True when this process runs the hub."""
        return self._hub is not None

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

    @property
    def connected(self) -> bool:
        """True while registered with a hub."""
        return self.connected_event.is_set()

    @property
    def self_id(self) -> str | None:
        """Return this client's public id, when registered."""
        c = self._client
        try:
            return c.get_public_id() if c is not None and self.connected else None
        except Exception:
            return None

    # -- connection ---------------------------------------------------------------------
    def _try_connect(self) -> bool:
        with self._lock:
            if self.connected:
                return True
            client = psamp.SAMPIntegratedClient(name=self.metadata["samp.name"],
                                                metadata=dict(self.metadata), addr="127.0.0.1")
            client.hub = _TimeoutHubProxy(timeout=self.call_timeout + 10.0)
            try:
                # each blocked call_and_wait holds one hub connection: keep enough for replies
                client.connect(pool_size=64)
            except Exception as exc:  # no hub yet is normal; try again later
                log.debug("SAMP connect failed: %s", exc)
                try:
                    if client.client is not None and client.client.is_running:
                        client.client.stop()
                except Exception:
                    pass
                return False
            try:
                for mtype, handler in self._all_handlers().items():
                    md = {"x-samp.mostly-harmless": "1"}
                    client.bind_receive_notification(mtype, self._wrap(handler, False),
                                                     declare=False, metadata=md)
                    client.bind_receive_call(mtype, self._wrap(handler, True), declare=False,
                                             metadata=md)
                client.declare_subscriptions()
            except Exception as exc:
                log.warning("SAMP subscription failed: %s", exc)
                self._client = client
                self._drop(unregister=True)
                return False
            self._client = client
            self._names.clear()
            self._forget_subscribers()
            self._lost.clear()
            self.connect_count += 1
            self.connected_event.set()
        log.info("registered with the SAMP hub as %s (%s)", client.get_public_id(),
                 client.hub.lockfile.get("samp.hub.xmlrpc.url", "?"))
        log.debug("hub lockfile %s: %s", lockfile_path(), {
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

    def _forget_subscribers(self) -> None:
        """Drop the cached subscriber lists.

        A lookup already under way will then not store its (possibly older) answer.
        """
        with self._subs_lock:
            self._subs_gen += 1
            self._subs.clear()

    def _on_register(self, msg: Message) -> None:
        self._forget_subscribers()

    def _on_subscriptions(self, msg: Message) -> None:
        self._forget_subscribers()
        if self.on_subscriptions is not None and msg.params.get("id") != self.self_id:
            threading.Thread(target=self.on_subscriptions, name="samp-subs",
                             daemon=True).start()

    def _on_hub_gone(self, msg: Message) -> None:
        log.warning("the SAMP hub said %s; will reconnect", msg.mtype)
        self._lost.set()  # never disconnect inside a handler: the monitor thread does it

    def _on_unregister(self, msg: Message) -> None:
        self._names.pop(str(msg.params.get("id", "")), None)
        self._forget_subscribers()

    def _drop(self, unregister: bool) -> None:
        client, self._client = self._client, None
        self.connected_event.clear()
        if client is None:
            return
        try:
            if unregister and client.client is not None:
                client.client.unregister()
        except Exception as exc:  # a dead hub cannot be told goodbye
            log.debug("unregister: %s", exc)
        try:
            if client.client is not None and client.client.is_running:
                client.client.stop()
        except Exception:
            pass
        try:
            client.hub.disconnect()
        except Exception:
            pass

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
        c = self._client
        if c is None:
            return False
        try:
            c.ping()
            return True
        except Exception as exc:
            log.debug("hub ping failed: %s", exc)
            return False

    # -- receiving ----------------------------------------------------------------------
    def _wrap(self, handler: Handler, is_call: bool) -> Callable[..., None]:
        # pyvo.samp dispatches by argument count: 5 for notifications, 6 for calls
        if is_call:
            def on_call(private_key, sender_id, msg_id, mtype, params, extra):
                self._dispatch(handler, sender_id, msg_id, mtype, params)
            return on_call

        def on_notify(private_key, sender_id, mtype, params, extra):
            self._dispatch(handler, sender_id, None, mtype, params)
        return on_notify

    def _dispatch(self, handler: Handler, sender_id: str, msg_id: str | None, mtype: str,
                  params: Any) -> None:
        msg = Message(sender_id, self.client_name(sender_id) if not mtype.startswith(
            "samp.hub.") else "hub", mtype, params if isinstance(params, dict) else {},
            msg_id, self)
        if not isinstance(params, dict):
            msg.params = {"_raw": params}
        try:
            handler(msg)
        except Exception as exc:  # a handler error becomes a reply, not a crash
            log.exception("handler for %s from %s failed", mtype, msg.sender_name)
            if msg.is_call:
                msg.reply_error(f"sampbridge could not handle {mtype}: {exc}")
            return
        if msg.is_call and not msg._deferred and not msg.replied:
            msg.reply_ok({})

    def reply(self, msg_id: str, response: dict[str, Any]) -> bool:
        """Send a reply; False (logged) when the hub is gone."""
        c = self._client
        if c is None:
            log.warning("cannot reply to %s: not connected", msg_id)
            return False
        try:
            c.reply(msg_id, response)
            return True
        except Exception as exc:
            log.warning("reply to %s failed: %s", msg_id, exc)
            return False

    def client_name(self, client_id: str) -> str:
        """Return a client's ``samp.name`` (cached), or its id."""
        name = self._names.get(client_id)
        if name is None:
            if self._client is None:
                return client_id
            try:
                md = self._client.get_metadata(client_id)
                name = str(md.get("samp.name") or client_id)
            except Exception:
                return client_id
            self._names[client_id] = name
        return name

    # -- sending ------------------------------------------------------------------------
    def targets(self, mtype: str, patterns: Iterable[str]) -> list[tuple[str, str]]:
        """Return (id, name) of the clients subscribed to ``mtype`` whose name matches."""
        c = self._client
        if c is None or not self.connected:
            return []
        cached = self._subs.get(mtype)
        if cached is not None and time.monotonic() - cached[0] < self.SUBS_TTL:
            subscribed = cached[1]
        else:
            gen = self._subs_gen
            try:
                subscribed = list(c.get_subscribed_clients(mtype))
            except Exception as exc:
                log.warning("cannot list subscribers of %s: %s", mtype, exc)
                return []
            with self._subs_lock:
                # a hub event that came in meanwhile may make this answer stale: then the
                # next lookup asks again
                if gen == self._subs_gen:
                    self._subs[mtype] = (time.monotonic(), subscribed)
        me = self.self_id
        pats = [p.lower() for p in patterns]
        out = []
        for cid in subscribed:
            if cid == me:
                continue
            name = self.client_name(cid)
            if any(fnmatch.fnmatchcase(name.lower(), p) for p in pats):
                out.append((cid, name))
        return out

    def call(self, client_id: str, mtype: str, params: dict[str, Any]) -> Delivery:
        """Call one client and wait (at most ``call_timeout``) for its reply."""
        name = self.client_name(client_id)
        c = self._client
        if c is None:
            return Delivery(client_id, name, False, "not connected to a hub")
        try:
            resp = c.call_and_wait(client_id, {"samp.mtype": mtype,
                                               "samp.params": _sampify(params)},
                                   str(int(max(1, self.call_timeout))))
        except Exception as exc:
            self._forget_subscribers()   # the client may be gone: ask the hub again next time
            return Delivery(client_id, name, False, str(exc))
        status = resp.get("samp.status") if isinstance(resp, dict) else None
        if status == "samp.error":
            err = resp.get("samp.error", {}).get("samp.errortxt", "error")
            return Delivery(client_id, name, False, str(err))
        return Delivery(client_id, name, True)

    def subscribes(self, client_id: str, mtype: str) -> bool:
        """Tell whether client ``client_id`` is subscribed to ``mtype`` (False when unknown)."""
        return any(cid == client_id for cid, _ in self.targets(mtype, ["*"]))

    def notify(self, client_id: str, mtype: str, params: dict[str, Any]) -> Delivery:
        """Send a notification to one client (for peers that never answer a call)."""
        name = self.client_name(client_id)
        c = self._client
        if c is None:
            return Delivery(client_id, name, False, "not connected to a hub")
        try:
            c.notify(client_id, {"samp.mtype": mtype, "samp.params": _sampify(params)})
        except Exception as exc:
            self._forget_subscribers()
            return Delivery(client_id, name, False, str(exc))
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
        targets = [t for t in self.targets(mtype, patterns) if t[0] not in skip]
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
