"""A record of what the daemon did: the last requests, and counters since it started.

Thread-safe and protocol-free (no SAMP, no CSC): the daemon's rooms record into one
:class:`Activity`, and ``x-sampbridge.status`` (``sampbridge status``) reads its
:meth:`Activity.snapshot`, which is plain dicts, lists, strings and numbers, ready for JSON.

Examples
--------
>>> act = Activity(size=10)
>>> with act.request("topcat", "x-sampbridge.query.cone", "cone 83.6 +22.0") as req:
...     req.rows = 12
>>> act.snapshot()["recent"][0]["rows"]
12
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["COUNTERS", "Activity", "Entry", "Pending", "utc_text"]

#: The counters every :class:`Activity` starts with (at 0), in this order.
COUNTERS = ("messages", "calls", "clicks", "cones", "images", "tap", "matches", "tables_sent",
            "errors")


def utc_text(epoch: float) -> str:
    """Return a time as ISO 8601 UTC to the second, e.g. ``2026-12-02T11:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass(frozen=True)
class Entry:
    """One request done: when it came, from whom, what ran, and how it ended."""

    #: when it was received, ISO 8601 UTC (:func:`utc_text`)
    time: str
    #: the sender's name (a SAMP client's ``samp.name``, or e.g. ``file q.yaml``)
    sender: str
    mtype: str
    #: what ran, in a few words ("cone 83.6 +22.0 r=30\"")
    what: str
    #: rows of the result table, or None when there is none
    rows: int | None
    #: milliseconds from receipt to the end, or None when not measured
    ms: float | None
    #: the error's one sentence, or None when it went well
    error: str | None


@dataclass
class Pending:
    """A request under way (see :meth:`Activity.request`): set its outcome before it ends."""

    sender: str
    mtype: str
    what: str
    started: float
    rows: int | None = None
    error: str | None = None


class Activity:
    """The last ``size`` requests and counters since start, shared between threads.

    Parameters
    ----------
    size : int
        How many requests to keep (the oldest go first).
    counters : iterable of str
        The counters to start at 0 (others are created when first counted).
    clock : callable
        Seconds since the epoch (``time.time``); injectable for tests.
    """

    def __init__(self, size: int = 50, counters: Iterable[str] = COUNTERS,
                 clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._t0 = time.monotonic()
        self.started = clock()
        self._recent: deque[Entry] = deque(maxlen=max(1, size))
        self._counters = dict.fromkeys(counters, 0)
        self._lock = threading.Lock()

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name``."""
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n

    def record(self, sender: str, mtype: str, what: str, *, rows: int | None = None,
               ms: float | None = None, error: str | None = None,
               received: float | None = None) -> Entry:
        """Keep one finished request (an ``error`` also counts in ``errors``) and return it.

        ``received`` is its time of receipt (seconds since the epoch; now if not given).
        """
        entry = Entry(utc_text(self._clock() if received is None else received), sender, mtype,
                      what, rows, None if ms is None else round(ms, 1), error)
        with self._lock:
            self._recent.append(entry)
            if error is not None:
                self._counters["errors"] = self._counters.get("errors", 0) + 1
        return entry

    def begin(self, sender: str, mtype: str, what: str, *,
              received: float | None = None) -> Pending:
        """Start timing a request (received now, or at ``received``); :meth:`end` records it."""
        return Pending(sender, mtype, what, self._clock() if received is None else received)

    def end(self, pending: Pending) -> Entry:
        """Record a request begun with :meth:`begin`, its time taken measured from then."""
        ms = max(0.0, (self._clock() - pending.started) * 1000.0)
        return self.record(pending.sender, pending.mtype, pending.what, rows=pending.rows,
                           ms=ms, error=pending.error, received=pending.started)

    @contextmanager
    def request(self, sender: str, mtype: str, what: str) -> Iterator[Pending]:
        """Time a request and record it on the way out, an exception's text as its error."""
        pending = self.begin(sender, mtype, what)
        try:
            yield pending
        except BaseException as exc:
            if pending.error is None:
                pending.error = str(exc) or exc.__class__.__name__
            raise
        finally:
            self.end(pending)

    def recent(self) -> list[Entry]:
        """Return the requests kept, oldest first."""
        with self._lock:
            return list(self._recent)

    def counters(self) -> dict[str, int]:
        """Return a copy of the counters."""
        with self._lock:
            return dict(self._counters)

    def snapshot(self) -> dict[str, Any]:
        """Return ``started``, ``uptime_s``, ``recent`` (oldest first) and ``counters``."""
        with self._lock:
            recent = [asdict(e) for e in self._recent]
            counters = dict(self._counters)
        return {"started": utc_text(self.started),
                "uptime_s": round(time.monotonic() - self._t0, 1),
                "recent": recent, "counters": counters}
