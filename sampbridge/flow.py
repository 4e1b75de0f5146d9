"""Flow control with no protocol in it: coalescing a flood of positions, and an echo guard."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar, cast

import numpy as np

from .csc.sky import separation_deg  # re-exported: the daemon compares clicks with it

__all__ = ["Coalescer", "EchoGuard", "separation_deg"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class Coalescer(Generic[T]):
    """Run only the latest of a flood of items, one at a time, on its own thread.

    Leading edge: the first item after a quiet spell (no item for ``quiet`` seconds, nothing
    running and no run started within the last ``quiet`` seconds) runs at once, so a single
    click is answered without waiting.  Items that come while one runs, or inside that window,
    are coalesced: the latest wins, and it runs once no newer item came for ``quiet`` seconds,
    or at the latest ``max_wait`` seconds after the first item of the burst, so a continuous
    flood is still answered and its final item always runs.  ``run`` is called on the worker
    thread.

    Counters (read them, never write them): ``submitted`` items offered, ``ran`` items run,
    ``leading`` items run at once, without waiting for the quiet spell.

    Parameters
    ----------
    run : callable
        Called with the latest item and its sequence number.
    quiet, max_wait : float
        Seconds (see above).
    name : str
        Name of the worker thread.
    """

    def __init__(self, run: Callable[[T, int], None], quiet: float = 0.3,
                 max_wait: float = 2.0, name: str = "coalescer") -> None:
        self._run = run
        self.quiet = quiet
        self.max_wait = max(max_wait, quiet)
        self._cond = threading.Condition()
        self._item: T | None = None
        self._has_item = False
        self._leading = False          # the pending item came after a quiet spell: run it now
        self._running = False
        self._first = 0.0
        self._last: float | None = None        # when the newest item came
        self._started: float | None = None     # when the newest run started
        self._seq = 0
        self._stopping = False
        self.submitted = 0
        self.ran = 0
        self.leading = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def latest_seq(self) -> int:
        """Sequence number of the newest item submitted."""
        return self._seq

    def superseded(self, seq: int) -> bool:
        """Tell whether an item newer than ``seq`` has been submitted."""
        return self._seq != seq

    def _quiet_spell(self, now: float) -> bool:
        """Tell whether an item coming ``now`` starts a new burst that runs at once."""
        if self._has_item or self._running:
            return False
        latest = max((t for t in (self._last, self._started) if t is not None), default=None)
        return latest is None or now - latest >= self.quiet

    def submit(self, item: T) -> int:
        """Offer an item; returns its sequence number.  Never blocks on the running item."""
        with self._cond:
            now = time.monotonic()
            if self._quiet_spell(now):
                self._leading = True
            if not self._has_item:
                self._first = now
            self._item, self._has_item, self._last = item, True, now
            self._seq += 1
            self.submitted += 1
            self._cond.notify()
            return self._seq

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._has_item and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                now = time.monotonic()
                if not self._leading:
                    assert self._last is not None      # submit() sets it with every item
                    due = min(self._last + self.quiet, self._first + self.max_wait)
                    if now < due:
                        self._cond.wait(due - now)
                        continue
                item, seq, leading = self._item, self._seq, self._leading
                self._item, self._has_item, self._leading = None, False, False
                self._running, self._started = True, now
                self.ran += 1
                self.leading += leading
            if leading:
                log.debug("item %d runs at once (leading edge)", seq)
            try:
                self._run(cast(T, item), seq)     # an item was set (_has_item)
            except Exception:  # the worker must outlive any one item
                log.exception("coalesced task failed")
            finally:
                with self._cond:
                    self._running = False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker (a running item finishes first, within ``timeout``)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)


class EchoGuard:
    """Remember just-delivered positions, so that a peer's echo of them starts no new query.

    After sampbridge loads an image into DS9, DS9 pans and broadcasts ``coord.pointAt.sky`` at
    the image centre (or at the clicked position); that message is an echo, not a click.

    Parameters
    ----------
    window : float
        Seconds a remembered position stays an echo candidate.
    radius_arcsec : float
        How close a position must be to a remembered one to count as its echo.
    """

    def __init__(self, window: float = 5.0, radius_arcsec: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.radius = radius_arcsec / 3600.0
        self._clock = clock
        self._lock = threading.Lock()
        self._marks: deque[tuple[float, float, float]] = deque(maxlen=256)

    def remember(self, *positions: tuple[float, float] | None) -> None:
        """Remember positions that peers may echo back (``None`` entries are ignored)."""
        now = self._clock()
        with self._lock:
            for p in positions:
                if p is not None:
                    self._marks.append((now, float(p[0]), float(p[1])))

    def is_echo(self, ra: float, dec: float) -> bool:
        """Tell whether ``(ra, dec)`` lies within the radius of a position remembered lately."""
        now = self._clock()
        with self._lock:
            while self._marks and now - self._marks[0][0] > self.window:
                self._marks.popleft()
            marks = [(r, d) for t, r, d in self._marks if now - t <= self.window]
        if not marks:
            return False
        ras, decs = np.array(marks, dtype=float).T
        return bool((separation_deg(ra, dec, ras, decs) <= self.radius).any())
