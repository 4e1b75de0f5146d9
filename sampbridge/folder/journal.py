"""The folder's journal: an append-only record of the files in progress.

One JSON object a line, ``{"key": "<name>:<sha>", "event": ..., "t": ...}``: ``start`` when a
file is taken, ``landed`` once its results are in ``done/`` (with ``base``, ``outputs`` and
``summary``, so a restart finishes the file without running it again) and ``done`` when the
file is answered or set aside.  A crash thus loses nothing and repeats nothing.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..safefile import ensure_private_dir

__all__ = ["Journal", "OPEN_NEW", "OPEN_LOG"]

#: Flags to write a new private file (never through a symbolic link).
OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
#: Flags to append to a private log (never through a symbolic link).
OPEN_LOG = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC


class Journal:
    """Append-only record of files in progress, kept in a private (0700) folder.

    Parameters
    ----------
    path : Path
        The journal file (0600); read, then compacted to what is unfinished.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.state: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                    key = rec["key"]
                except (ValueError, KeyError, TypeError):
                    continue
                if rec.get("event") == "done":
                    self.state.pop(key, None)
                else:
                    self.state[key] = rec
        # compact: keep only what is unfinished
        self._rewrite()

    def _private_folder(self) -> None:
        ensure_private_dir(self.path.parent)     # made again if someone removed it

    def _rewrite(self) -> None:
        self._private_folder()
        tmp = self.path.with_name(self.path.name + ".tmp")
        with os.fdopen(os.open(tmp, OPEN_NEW, 0o600), "w", encoding="utf-8") as fh:
            for rec in self.state.values():
                fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def compact(self) -> None:
        """Rewrite the journal with only the unfinished entries."""
        with self._lock:
            self._rewrite()

    def write(self, key: str, event: str, **data: Any) -> None:
        """Append one event for ``key`` (synced to disk); ``done`` forgets the key."""
        rec = {"key": key, "event": event, "t": time.time(), **data}
        with self._lock:
            try:
                fd = os.open(self.path, OPEN_LOG, 0o600)
            except FileNotFoundError:
                self._private_folder()
                fd = os.open(self.path, OPEN_LOG, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            if event == "done":
                self.state.pop(key, None)
            else:
                self.state[key] = rec

    def get(self, key: str) -> dict[str, Any] | None:
        """Return the last unfinished event of ``key``, if any."""
        with self._lock:
            return self.state.get(key)
