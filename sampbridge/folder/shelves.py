"""The folder's shelves: ``done/`` and ``failed/``, the journal and ``status.log``.

Every write to the watched folder happens here, under the names lock of :class:`~.plan.Claims`;
after the folder is stopped, none does (:meth:`~.plan.Claims.guard`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..csc.names import safe_name
from .journal import OPEN_LOG, OPEN_NEW, Journal
from .plan import Claims
from .runner import FileOutcome, land, retarget
from .settle import Settle
from .text import show_name

__all__ = ["Shelves", "make_dir"]

log = logging.getLogger(__name__)


def make_dir(path: Path) -> bool:
    """Create ``path`` (0700) unless it is a folder already; tell whether it was made here.

    A folder that exists keeps its mode: it may be the user's.
    """
    if path.is_dir():
        return False
    path.mkdir(mode=0o700)              # FileExistsError when a file holds the name
    os.chmod(path, 0o700)               # exactly 0700 whatever the umask: it is ours
    return True


def _write_private(dest: Path, text: str) -> None:
    """Write ``text`` to ``dest`` (0600) atomically, never through a symbolic link."""
    part = dest.with_name(dest.name + ".part")
    fd = os.open(part, OPEN_NEW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
        fh.write(text)
    os.replace(part, dest)


class Shelves:
    """Answered files to ``done/`` with their results, failed ones to ``failed/``, each logged.

    Parameters
    ----------
    folder : Path
        The watched folder (``done/``, ``failed/`` and ``status.log`` are in it).
    claims : Claims
        The names held by running files, and the lock over every name.
    settle : Settle
        Told of a file that failed and could not be set aside.
    deliver : callable, optional
        Called with a :class:`~.runner.FileOutcome` after a file was answered.
    """

    def __init__(self, folder: Path, claims: Claims, settle: Settle,
                 deliver: Callable[[FileOutcome], None] | None) -> None:
        self.done_dir = folder / "done"
        self.failed_dir = folder / "failed"
        self.status_log = folder / "status.log"
        self.claims = claims
        self.settle = settle
        self.deliver = deliver
        self.journal: Journal | None = None     # opened by QueryFolder.start
        self.processed = 0
        self.failed = 0

    def record(self, key: str, event: str, **data: Any) -> None:
        """Write one journal event, unless the folder is stopped."""
        with self.claims.lock:
            self.claims.guard()
            assert self.journal is not None
            self.journal.write(key, event, **data)

    def _ensure(self, folder: Path) -> None:
        """Make ``done/`` or ``failed/`` again (private) if it was removed."""
        if make_dir(folder):
            log.warning("%s/ was missing; made it again", folder.name)

    def finish(self, path: Path, key: str, query_name: str | None, summary: str,
               outcome: FileOutcome | None, staged: list[Path] | None = None,
               base: str | None = None) -> None:
        """Land the results, move the query to ``done/query_name``, log it, deliver.

        With ``query_name`` None only the (partial) results land: the query fails next.
        """
        assert self.journal is not None
        with self.claims.lock:
            self.claims.guard()
            self._ensure(self.done_dir)
            moved = land(staged or [], self.done_dir)
            if query_name is None:
                return
            if moved:
                self.journal.write(key, "landed", base=base,
                                   outputs=[str(p) for p in moved.values()], summary=summary)
            target = self.done_dir / query_name
            if os.path.lexists(target):      # only when recovering after a crash
                target = self._free(self.done_dir, Path(query_name).stem, path.suffix)
            self._ensure(self.done_dir)
            if os.path.lexists(path):
                os.replace(path, target)
            self.journal.write(key, "done")
            self._status("OK", path.name, f"{summary}; query -> done/{target.name}")
            self.processed += 1
        log.info("%s: %s", show_name(path.name), show_name(f"{summary}; query -> "
                                                          f"done/{target.name}"))
        if outcome is None or self.deliver is None or self.claims.closed:
            return
        retarget(outcome, moved)
        outcome.query = target
        try:
            self.deliver(outcome)
        except Exception:
            log.exception("delivering the results of %s failed", show_name(path.name))

    def _free(self, folder: Path, stem: str, suffix: str, also: str = "") -> Path:
        """Return ``folder/<stem>[-N]<suffix>``, a name not in use (nor its ``also`` twin)."""
        name, n = f"{stem}{suffix}", 1
        while os.path.lexists(folder / name) or (also and os.path.lexists(folder / (name + also))) \
                or (folder == self.done_dir and self.claims.taken(name)):
            n += 1
            name = f"{stem}-{n}{suffix}"
        return folder / name

    def fail(self, path: Path, text: str, key: str | None = None) -> None:
        """Set ``path`` aside in ``failed/`` with its error; never run it again as it is."""
        text = text.rstrip() or "failed"
        problem = ""
        with self.claims.lock:
            self.claims.guard()
            name = f"{safe_name(path.stem)}{path.suffix}"
            try:
                self._ensure(self.failed_dir)
                target = self._free(self.failed_dir, safe_name(path.stem), path.suffix,
                                    ".error.txt")
                name = target.name
                _write_private(self.failed_dir / f"{name}.error.txt", show_name(text) + "\n")
                if os.path.lexists(path):
                    os.replace(path, target)
            except FileExistsError:
                problem = "failed/ cannot be made: a file that is not a folder has its name"
            except OSError as exc:
                problem = f"failed/ cannot be written: {exc.strerror or 'input/output error'}"
            if key and self.journal is not None:
                self.journal.write(key, "done")
            self.failed += 1
            where = f"failed/{name}" if not problem else \
                f"it stays in the folder and does not run again until it changes ({problem})"
            self._status("FAILED", path.name, f"{text} -> {where}")
        if problem and os.path.lexists(path):
            self.settle.remember_stuck(path, key)
        log.warning("%s failed: %s (%s)", show_name(path.name), show_name(text),
                    "set aside in failed/" if not problem else show_name(where))

    def _status(self, what: str, name: str, text: str) -> None:
        """Append one line to ``status.log``; call with the names lock held."""
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {what} {show_name(name)}: " \
               f"{show_name(text)}\n"
        try:
            fd = os.open(self.status_log, OPEN_LOG, 0o600)
            try:
                os.write(fd, line.encode("utf-8", "backslashreplace"))
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("cannot write status.log: %s", exc.strerror)
