"""Noticing files: watchdog's events, and a rescan of the folder as a safety net under them."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import FileClosedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from .text import show_name

__all__ = ["Watcher"]

log = logging.getLogger(__name__)


class _Handler(FileSystemEventHandler):
    def __init__(self, notice: Callable[[Path, bool], None]) -> None:
        self.notice = notice

    def on_any_event(self, event: FileSystemEvent) -> None:
        # an exception here would kill watchdog's observer thread: never let one out
        try:
            if event.is_directory:
                return
            closed = isinstance(event, FileClosedEvent)
            dest = getattr(event, "dest_path", "") or ""
            if dest:
                self.notice(Path(os.fsdecode(dest)), True)
            elif event.event_type in ("created", "modified", "closed"):
                self.notice(Path(os.fsdecode(event.src_path)), closed)
        except Exception:
            log.exception("watcher event %s failed; going on", show_name(repr(event)))


class Watcher:
    """Tell ``notice`` of every file of ``folder``, and call ``tick`` every 50 ms.

    Parameters
    ----------
    folder : Path
        The watched folder (not its subfolders).
    notice : callable
        ``notice(path, closed)``: a file appeared, changed or was closed by its writer.
    tick : callable
        ``tick(now)`` with ``time.monotonic()``: time to take the files that settled.
    scan_interval : float
        Seconds between rescans of the folder.
    """

    def __init__(self, folder: Path, notice: Callable[[Path, bool], None],
                 tick: Callable[[float], None], scan_interval: float) -> None:
        self.folder = folder
        self.notice = notice
        self.tick = tick
        self.scan_interval = scan_interval
        self.scans = 0
        self.observer: Any = None
        self._checker: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Start watchdog's observer, scan once, and start the checker thread."""
        self.observer = Observer()
        self.observer.schedule(_Handler(self.notice), str(self.folder), recursive=False)
        self.observer.daemon = True
        self.observer.start()
        self.scan()
        self._checker = threading.Thread(target=self._loop, name="folder-check", daemon=True)
        self._checker.start()

    def stop(self, deadline: float) -> None:
        """Stop both threads, waiting for them until ``deadline`` (``time.monotonic()``)."""
        self._stop.set()
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(max(0.0, min(5.0, deadline - time.monotonic())))
        if self._checker is not None:
            self._checker.join(max(0.0, deadline - time.monotonic()))

    def scan(self) -> None:
        """Notice every entry of the folder but its subfolders."""
        try:
            names = os.listdir(self.folder)
        except OSError as exc:
            log.warning("cannot list %s: %s", show_name(str(self.folder)), exc.strerror)
            return
        for name in names:
            p = self.folder / name
            # every entry but a folder: a FIFO, a device link or a dangling link is refused
            # (set aside in failed/) at once, not left to wait for a close that never comes
            if not p.is_dir() or p.is_symlink():
                self.notice(p, True)
        self.scans += 1

    def _loop(self) -> None:
        last_scan = time.monotonic()
        while not self._stop.wait(0.05):
            try:
                now = time.monotonic()
                if now - last_scan >= self.scan_interval:
                    self.scan()
                    last_scan = now
                self.tick(now)
            except Exception:  # the checker must outlive any one problem
                log.exception("folder check failed; going on")
