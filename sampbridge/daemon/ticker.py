"""Progress of long calls: ``samp.msg.progress`` to the caller about once a second.

A call that runs longer than :data:`AFTER` seconds tells its caller what it is doing
(SAMP 1.3 section 5.4: ``msgid``, ``txt``, ``percent``, ``timeLeft``) every :data:`EVERY`
seconds until it is replied to; :meth:`.Message.progress` sends it only to a caller that
subscribes to ``samp.msg.progress``.  The run updates the text through its
:class:`CallProgress` (the engine's hooks: a TAP job's phase, a match's rows done).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..samp import Message

__all__ = ["AFTER", "EVERY", "CallProgress", "Ticker"]

log = logging.getLogger("sampbridge")

#: seconds a call runs before its first progress message
AFTER = 1.0
#: seconds between two progress messages of one call
EVERY = 1.0


class CallProgress:
    """What one call is doing now; the run updates it, the :class:`Ticker` sends it.

    Parameters
    ----------
    msg : Message
        The call (its ``msg_id`` goes in every progress message as ``msgid``).
    txt : str
        What runs, until the run says more.
    clock : callable
        Seconds, monotonic.
    """

    def __init__(self, msg: Message, txt: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.msg = msg
        self._clock = clock
        self.started = clock()
        self._lock = threading.Lock()
        self._txt = txt
        self._percent: float | None = None
        self._time_left: float | None = None
        #: when the last progress message went (``clock()``), or None
        self.last_sent: float | None = None
        #: progress messages sent
        self.sent = 0

    def update(self, txt: str | None = None, percent: float | None = None,
               time_left: float | None = None) -> None:
        """Say what runs now (``txt``; None keeps the last) and how far it has got."""
        with self._lock:
            if txt is not None:
                self._txt = txt
            self._percent = None if percent is None else max(0.0, min(100.0, float(percent)))
            self._time_left = time_left

    def now(self) -> tuple[str, float | None, float | None]:
        """Return the text to send (with the seconds so far), the percent and the time left."""
        with self._lock:
            txt, percent, left = self._txt, self._percent, self._time_left
        return f"{txt} ({self._clock() - self.started:.0f} s so far)", percent, left

    # -- the engine's hooks -------------------------------------------------------------
    def on_job(self, url: str) -> None:
        """Say that a TAP job was created at ``url``."""
        self.update(f"TAP job running at {url}")

    def on_phase(self, phase: str, elapsed: float = 0.0) -> None:
        """Say that the TAP job is in ``phase`` (a UWS phase, or DOWNLOADING)."""
        self.update("downloading the TAP result" if phase == "DOWNLOADING"
                    else f"TAP job {phase.lower()}")

    def on_rows(self, done: int, total: int) -> None:
        """Say that a match has done ``done`` of ``total`` input positions."""
        elapsed = self._clock() - self.started
        left = elapsed * (total - done) / done if 0 < done <= total else None
        self.update(f"matching: {done} of {total} positions",
                    100.0 * done / total if total > 0 else None, left)

    def listener(self, state: Any) -> None:
        """Take a :class:`sampbridge.progress.State` (its text, percent and time left)."""
        self.update(state.text(), state.percent, state.time_left)


class Ticker:
    """One thread that sends the progress of every tracked call when it is due.

    Parameters
    ----------
    after, every : float
        Seconds before the first message of a call, and between two.
    clock : callable
        Seconds, monotonic.
    """

    def __init__(self, after: float = AFTER, every: float = EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.after = after
        self.every = every
        self._clock = clock
        self._calls: set[CallProgress] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        #: progress messages sent, all calls together
        self.sent = 0

    def __len__(self) -> int:
        """Count the calls whose progress is being sent."""
        with self._cond:
            return len(self._calls)

    def track(self, msg: Message, txt: str, *, send: bool = True) -> CallProgress:
        """Start a call's progress; it is sent only when ``send`` and ``msg`` is a call."""
        progress = CallProgress(msg, txt, self._clock)
        if not (send and msg.is_call):
            return progress
        with self._cond:
            if self._stopped:
                return progress
            self._calls.add(progress)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="samp-progress",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return progress

    def done(self, progress: CallProgress | None) -> None:
        """Stop sending a call's progress (it was replied to, or its work ended)."""
        if progress is None:
            return
        with self._cond:
            self._calls.discard(progress)

    def stop(self) -> None:
        """Stop the thread; no progress is sent after this."""
        with self._cond:
            self._stopped = True
            self._calls.clear()
            self._cond.notify_all()

    def _due(self, now: float) -> tuple[list[CallProgress], float]:
        """Return the calls whose progress is due now, and seconds until the next one is."""
        due, wait = [], self.every
        for p in self._calls:
            at = p.started + self.after if p.last_sent is None else p.last_sent + self.every
            if at <= now:
                due.append(p)
            else:
                wait = min(wait, at - now)
        return due, max(0.01, wait)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                due, wait = self._due(self._clock())
                if not due:
                    self._cond.wait(wait)
                    continue
                for p in due:
                    p.last_sent = self._clock()
            for p in due:
                txt, percent, left = p.now()
                try:
                    if p.msg.progress(txt, percent, left):
                        p.sent += 1
                        self.sent += 1
                except Exception:  # progress is a courtesy: never stop the thread
                    log.debug("progress of %s failed", p.msg.mtype, exc_info=True)
