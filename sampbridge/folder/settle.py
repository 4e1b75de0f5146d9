"""Which files are ready: a file is taken once its size and time stay unchanged a while.

A file still open for writing waits until it is closed (up to ``settle_max``); one that failed
and could not be set aside is not taken again until it changes.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Candidate", "Signature", "Settle"]


@dataclass
class Candidate:
    """A file that may become a query: its last size and time, and since when they hold."""

    since: float
    writing: bool
    size: int = -1
    mtime_ns: int = -1


@dataclass(frozen=True)
class Signature:
    """What identifies one version of a file on disk."""

    size: int
    mtime_ns: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> Signature:
        """Return the signature of a ``stat`` result."""
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


class Settle:
    """Files waiting to settle, files running, and files stuck, under one lock.

    Parameters
    ----------
    settle : float
        Seconds a file's size and time must stay unchanged before it is taken.
    settle_max : float
        Seconds a file still open for writing may stay unchanged before it is taken anyway.
    """

    def __init__(self, settle: float, settle_max: float) -> None:
        self.settle = settle
        self.settle_max = settle_max
        self._lock = threading.Lock()
        self._candidates: dict[Path, Candidate] = {}
        self._inflight: dict[Path, Future[None] | None] = {}
        self._stuck: dict[Path, Signature] = {}    # failed, could not be set aside
        self._stuck_keys: set[str] = set()

    def notice(self, path: Path, now: float, closed: bool = False) -> None:
        """Note a file that may be (or become) a query; ``closed``: its writer closed it."""
        with self._lock:
            if path in self._inflight:
                return
            entry = self._candidates.get(path)
            if entry is None:
                self._candidates[path] = Candidate(since=now, writing=not closed)
            else:
                entry.writing = not closed

    def ready(self, now: float) -> list[Path]:
        """Return the files that settled; each is running from now on (see :meth:`started`)."""
        out = []
        with self._lock:
            for path, entry in list(self._candidates.items()):
                try:
                    st = path.lstat()       # never follow a link: a dangling one is refused
                except FileNotFoundError:
                    del self._candidates[path]
                    self._stuck.pop(path, None)
                    continue
                if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
                    entry.size, entry.mtime_ns, entry.since = st.st_size, st.st_mtime_ns, now
                    continue
                quiet = now - entry.since
                if quiet >= self.settle and (not entry.writing or quiet >= self.settle_max):
                    del self._candidates[path]
                    if self._stuck.get(path) == Signature.of(st):
                        continue            # it failed and could not be set aside: not again
                    self._inflight[path] = None
                    out.append(path)
        return out

    def started(self, path: Path, fut: Future[None]) -> None:
        """Record the worker's future of a ready file."""
        with self._lock:
            if path in self._inflight:
                self._inflight[path] = fut

    def finished(self, path: Path) -> None:
        """Forget a running file (answered, set aside, left for the next start)."""
        with self._lock:
            self._inflight.pop(path, None)

    def drop_unstarted(self) -> None:
        """Forget the files whose worker never started (the pool was shut down)."""
        with self._lock:
            for path, fut in list(self._inflight.items()):
                if fut is not None and fut.cancelled():
                    del self._inflight[path]

    def running(self) -> list[Path]:
        """Return the files running now."""
        with self._lock:
            return list(self._inflight)

    def idle(self) -> bool:
        """Tell whether no file is waiting or running."""
        with self._lock:
            return not self._candidates and not self._inflight

    def remember_stuck(self, path: Path, key: str | None) -> None:
        """Remember a file that failed and stays: it is not taken again until it changes."""
        try:
            st = path.lstat()
        except OSError:
            return
        with self._lock:
            self._stuck[path] = Signature.of(st)
            if key:
                self._stuck_keys.add(key)

    def is_stuck(self, key: str) -> bool:
        """Tell whether the content ``key`` failed before and could not be set aside."""
        with self._lock:
            return key in self._stuck_keys
