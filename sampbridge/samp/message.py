"""One received SAMP message (:class:`Message`) and SAMP's value rules (:func:`samp_string`).

A handler gets a :class:`Message` and replies through it.  The message knows its connection
only as a :class:`Replier`: something that sends a reply, tells subscriptions and notifies.
"""

from __future__ import annotations

import logging
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .sender import Delivery

__all__ = ["PROGRESS", "Handler", "Message", "Replier", "dispatch", "receiver", "samp_string",
           "sampify"]

log = logging.getLogger(__name__)

#: the SAMP 1.3 MType by which a recipient tells a caller how far a call has got
PROGRESS = "samp.msg.progress"


class Replier(Protocol):
    """What a :class:`Message` needs of its connection."""

    def reply(self, msg_id: str, response: dict[str, Any]) -> bool:
        """Send a reply to call ``msg_id``; False when it could not be sent."""

    def subscribes(self, client_id: str, mtype: str) -> bool:
        """Tell whether client ``client_id`` is subscribed to ``mtype``."""

    def notify(self, client_id: str, mtype: str, params: dict[str, Any]) -> Delivery:
        """Send a notification to one client."""


@dataclass(eq=False)
class Message:
    """One received SAMP message; a call (``msg_id`` set) must be replied to exactly once."""

    sender_id: str
    sender_name: str
    mtype: str
    params: dict[str, Any]
    msg_id: str | None
    _conn: Replier = field(repr=False)
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

    @property
    def deferred(self) -> bool:
        """True when a handler promised (:meth:`defer`) to reply later."""
        return self._deferred

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
        return self.reply({"samp.status": "samp.ok", "samp.result": sampify(result or {})})

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
            resp["samp.result"] = sampify(result)
        return self.reply(resp)

    def progress(self, txt: str, percent: float | None = None,
                 time_left: float | None = None) -> bool:
        """Tell the caller how far this call has got (``samp.msg.progress``, SAMP 1.3).

        The notification goes to the sender only while the call is unanswered, and only if
        the sender subscribes to ``samp.msg.progress``.  Trouble with the hub is logged (at
        debug level), never raised: progress is a courtesy.

        Parameters
        ----------
        txt : str
            What is happening, for a person (made a SAMP string).
        percent : float, optional
            How much of the work is done, 0 to 100.
        time_left : float, optional
            Estimated seconds until the reply.

        Returns
        -------
        bool
            True when the notification was sent.
        """
        if self.msg_id is None or self._replied:
            return False
        params: dict[str, Any] = {"msgid": self.msg_id, "txt": txt}
        if percent is not None:
            params["percent"] = repr(float(percent))
        if time_left is not None:
            params["timeLeft"] = repr(float(time_left))
        try:
            if not self._conn.subscribes(self.sender_id, PROGRESS):
                return False
            sent = self._conn.notify(self.sender_id, PROGRESS, params)
        except Exception as exc:  # a courtesy never breaks the call it reports on
            log.debug("progress of %s to %s: %s", self.msg_id, self.sender_name, exc)
            return False
        if not sent.ok:
            log.debug("progress of %s to %s: %s", self.msg_id, self.sender_name, sent.error)
        return sent.ok


#: a handler of one MType: it gets the message and replies through it
Handler = Callable[[Message], None]


def receiver(handler: Handler, is_call: bool, conn: Replier,
             name_of: Callable[[str], str]) -> Callable[..., None]:
    """Return the pyvo.samp callback that hands a received message to ``handler``.

    pyvo.samp dispatches by argument count, so a notification's callback takes exactly five
    parameters and a call's six.  ``name_of`` turns a sender's id into its ``samp.name``.
    """
    if is_call:
        def on_call(private_key, sender_id, msg_id, mtype, params, extra):
            dispatch(handler, conn, name_of, sender_id, msg_id, mtype, params)
        return on_call

    def on_notify(private_key, sender_id, mtype, params, extra):
        dispatch(handler, conn, name_of, sender_id, None, mtype, params)
    return on_notify


def dispatch(handler: Handler, conn: Replier, name_of: Callable[[str], str], sender_id: str,
             msg_id: str | None, mtype: str, params: Any) -> None:
    """Run ``handler`` on one received message, and reply for it unless it did or deferred.

    A handler that raises makes a ``samp.error`` reply (a call) or a log line, never a crash
    of pyvo's server thread; one that returns without replying or deferring makes ``samp.ok``.
    """
    sender_name = "hub" if mtype.startswith("samp.hub.") else name_of(sender_id)
    msg = Message(sender_id, sender_name, mtype,
                  params if isinstance(params, dict) else {"_raw": params}, msg_id, conn)
    try:
        handler(msg)
    except Exception as exc:  # a handler error becomes a reply, not a crash
        log.exception("handler for %s from %s failed", mtype, msg.sender_name)
        if msg.is_call:
            msg.reply_error(f"sampbridge could not handle {mtype}: {exc}")
        return
    if msg.is_call and not msg.deferred and not msg.replied:
        msg.reply_ok({})

_ASCII_FOR = {"\u00d7": "x", "\u2212": "-", "\u2032": "'", "\u2033": '"', "\u00b0": "deg",
              "\u2013": "-", "\u2014": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"',
              "\u201d": '"'}


def _legal(c: str) -> bool:
    return c in "\t\n\r" or " " <= c <= "\x7f"


def samp_string(text: str) -> str:
    """Return ``text`` as a legal SAMP string (0x09, 0x0a, 0x0d and 0x20-0x7f only).

    The JSAMP hub refuses a message with any other character ("Bad SAMP string"), so a name
    such as ``list \u00d7 CSC 2.1`` is sent as ``list x CSC 2.1``; accents lose their marks and
    anything else becomes ``?``.
    """
    if all(_legal(c) for c in text):
        return text
    out = []
    for c in text:
        if _legal(c):
            out.append(c)
        elif c in _ASCII_FOR:
            out.append(_ASCII_FOR[c])
        else:
            plain = unicodedata.normalize("NFKD", c).encode("ascii", "ignore").decode()
            out.append(plain if plain.strip() else "?")
    return "".join(out)


def sampify(value: Any) -> Any:
    """Turn a Python value into SAMP's strings, lists and maps (ASCII only).

    Map entries whose value is ``None`` are left out; booleans become ``"1"`` and ``"0"``.
    """
    if isinstance(value, dict):
        return {samp_string(str(k)): sampify(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [sampify(v) for v in value]
    if isinstance(value, bool):
        return "1" if value else "0"
    return samp_string(str(value))


_sampify = sampify      # the name other modules and tests import
