"""Progress of a long job on the terminal: a tqdm bar on a terminal, a log line now and then else.

The ``query`` and ``mirror`` commands use it; the daemon may listen to the same object (a
``listener``) to send ``samp.msg.progress`` to a SAMP caller::

    with progress.bar(total=100_000, desc="match", unit="rows") as p:
        for chunk in chunks:
            p.update(len(chunk))

    with progress.phases("TAP job") as p:      # no total: a phase text and the time so far
        p.phase("QUEUED")
        p.phase("EXECUTING")

On a terminal (``stream.isatty()``, standard error by default) tqdm draws the bar. Anywhere
else nothing is drawn: one line goes to the ``sampbridge.progress`` logger at most every
``interval`` seconds, and one when the job ends, so a log file shows that a long job is alive
without a line per row, and ``--quiet`` silences it like any other INFO line.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

__all__ = ["INTERVAL", "Listener", "Progress", "State", "bar", "phases"]

log = logging.getLogger("sampbridge.progress")

#: Seconds between two log lines when the output is not a terminal.
INTERVAL = 10.0


@dataclass(frozen=True)
class State:
    """A snapshot of one job's progress, as a listener gets it.

    Attributes
    ----------
    desc : str
        What runs (``"match"``, ``"TAP job"``).
    done : float
        Units done so far.
    total : float or None
        Units in all, ``None`` when unknown (a TAP job's phases).
    unit : str
        What is counted (``"rows"``).
    phase : str or None
        The last phase text (``"EXECUTING"``), if any.
    elapsed : float
        Seconds since the job began.
    finished : bool
        True in the last state, sent by :meth:`Progress.close`.
    """

    desc: str
    done: float
    total: float | None
    unit: str
    phase: str | None
    elapsed: float
    finished: bool = False

    @property
    def percent(self) -> float | None:
        """Per cent done (0-100), ``None`` without a total."""
        if not self.total or self.total <= 0:
            return None
        return max(0.0, min(100.0, 100.0 * self.done / self.total))

    @property
    def time_left(self) -> float | None:
        """Seconds left at the rate so far, ``None`` when it cannot be told."""
        if not self.total or self.done <= 0 or self.elapsed <= 0 or self.finished:
            return None
        return max(0.0, (self.total - self.done) * self.elapsed / self.done)

    def text(self) -> str:
        """Return one line, e.g. ``match: 12,000 of 100,000 rows (12%), 3.2 s``."""
        parts = []
        if self.total is not None:
            parts.append(f"{_count(self.done)} of {_count(self.total)} {self.unit}")
            pct = self.percent
            if pct is not None:
                parts[-1] += f" ({pct:.0f}%)"
        elif self.done:
            parts.append(f"{_count(self.done)} {self.unit}")
        if self.phase:
            parts.append(self.phase)
        head = "done" if self.finished else ", ".join(parts) or "running"
        if self.finished and parts:
            head += ": " + ", ".join(parts)
        return f"{self.desc}: {head}, {_seconds(self.elapsed)}"


#: Called with every new :class:`State` (on the thread that made it); it must not block.
Listener = Callable[[State], None]


def _count(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):     # a closed or odd stream: not a terminal
        return False


class Progress:
    """One job's progress; made by :func:`bar` or :func:`phases`, used as a context manager.

    Thread-safe: a worker may call :meth:`update` while another calls :meth:`phase`.
    """

    def __init__(self, desc: str, total: float | None, unit: str, stream: IO[str],
                 interval: float, listener: Listener | None,
                 clock: Callable[[], float], tty: bool | None) -> None:
        self.desc = desc
        self.total = total
        self.unit = unit
        self.interval = interval
        self._listener = listener
        self._clock = clock
        self._start = clock()
        self._last_line = self._start
        self._done: float = 0      # an int while the counts are ints (1/3, not 1.0/3)
        self._phase: str | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._tqdm: Any = None
        if _is_tty(stream) if tty is None else tty:
            # imported here: only a terminal needs it (and through importlib: tqdm has no types)
            tqdm = importlib.import_module("tqdm").tqdm
            fmt = None if total is not None else "{desc} [{elapsed}]"
            self._tqdm = tqdm(total=total, desc=desc, unit=f" {unit}" if unit else "it",
                              file=stream, leave=False, dynamic_ncols=True,
                              unit_scale=total is not None and total >= 10_000,
                              bar_format=fmt)

    # -- what the job reports --------------------------------------------------------------
    def update(self, n: float = 1) -> None:
        """Count ``n`` more units done."""
        with self._lock:
            if self._closed:
                return
            self._done += n
            if self._tqdm is not None:
                self._tqdm.update(n)
        self._tell()

    def set_total(self, total: float | None) -> None:
        """Set or change the total, once it is known (a TAP result's row count)."""
        with self._lock:
            self.total = total
            if self._tqdm is not None:
                self._tqdm.total = total
                if total is not None:       # a count that now has a total: show the bar
                    self._tqdm.bar_format = None
                    self._tqdm.unit_scale = total >= 10_000
                self._tqdm.refresh()
        self._tell()

    def phase(self, text: str) -> None:
        """Set the phase text (``"QUEUED"``, ``"EXECUTING"``, ``"downloading"``)."""
        with self._lock:
            if self._closed:
                return
            self._phase = text
            if self._tqdm is not None:
                if self.total is None:
                    self._tqdm.set_description_str(f"{self.desc}: {text}", refresh=True)
                else:
                    self._tqdm.set_postfix_str(text, refresh=True)
        self._tell()

    # -- hooks in the shapes the lower layers call ----------------------------------------
    def on_phase(self, phase: str, elapsed: float | None = None) -> None:
        """Take a TAP job's ``on_phase(phase, elapsed)`` (:mod:`sampbridge.csc.tapjobs`).

        ``elapsed`` is ignored: the time shown is this progress's own.
        """
        self.phase(phase)

    def on_count(self, done: float, total: float | None = None) -> None:
        """Take a running count, ``progress(done, total)`` (:mod:`sampbridge.match`)."""
        if total is not None and total != self.total:
            self.set_total(total)
        step = done - self._done
        if step > 0:
            self.update(step)

    def state(self, finished: bool = False) -> State:
        """Return the progress so far."""
        return State(self.desc, self._done, self.total, self.unit, self._phase,
                     self._clock() - self._start, finished)

    def close(self) -> None:
        """End the job: remove the bar, or log the last line. Calling it again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._tqdm is not None:
                self._tqdm.close()
        final = self.state(finished=True)
        if self._tqdm is None and final.elapsed >= self.interval:
            log.info("%s", final.text())       # a short job says nothing
        self._notify(final)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- where it goes ---------------------------------------------------------------------
    def _tell(self) -> None:
        st = self.state()
        if self._tqdm is None and st.elapsed >= self.interval:
            now = self._clock()
            with self._lock:
                due = now - self._last_line >= self.interval
                if due:
                    self._last_line = now
            if due:
                log.info("%s", st.text())
        self._notify(st)

    def _notify(self, st: State) -> None:
        if self._listener is None:
            return
        try:
            self._listener(st)
        except Exception:  # a listener's failure never stops the job it watches
            log.debug("progress listener failed", exc_info=True)


def bar(total: float | None, desc: str, *, unit: str = "rows", stream: IO[str] | None = None,
        interval: float = INTERVAL, listener: Listener | None = None,
        clock: Callable[[], float] = time.monotonic, tty: bool | None = None) -> Progress:
    """Return a progress bar for ``total`` units (a bar on a terminal, log lines otherwise).

    Parameters
    ----------
    total : float or None
        Units in all; ``None`` when not known yet (see :meth:`Progress.set_total`).
    desc : str
        What runs, the bar's label and the start of each log line.
    unit : str
        What is counted.
    stream : file, optional
        Where the bar goes, default ``sys.stderr``; a bar is drawn only when it is a terminal.
    interval : float
        Seconds between log lines when ``stream`` is not a terminal.
    listener : callable, optional
        Called with a :class:`State` at every change (to send ``samp.msg.progress``, say).
    clock : callable
        Seconds, monotonic; for tests.
    tty : bool, optional
        Force the terminal decision (default: ``stream.isatty()``).

    Returns
    -------
    Progress
        Use it in a ``with`` block, or call :meth:`Progress.close` at the end.
    """
    return Progress(desc, total, unit, stream if stream is not None else sys.stderr,
                    interval, listener, clock, tty)


def phases(desc: str, *, stream: IO[str] | None = None, interval: float = INTERVAL,
           listener: Listener | None = None, clock: Callable[[], float] = time.monotonic,
           tty: bool | None = None) -> Progress:
    """Return a progress without a total: a phase text and the time so far (a TAP job).

    Parameters are those of :func:`bar`; report with :meth:`Progress.phase`.
    """
    return Progress(desc, None, "", stream if stream is not None else sys.stderr,
                    interval, listener, clock, tty)
