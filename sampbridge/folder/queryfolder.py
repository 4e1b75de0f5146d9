"""The watched folder that wires the rooms: settle, claims, runner, shelves and the journal."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..engine import Engine
from ..errors import Cancelled, SampBridgeError
from ..model import RequestError
from ..queryfiles import is_candidate, parse_query_file, query_bytes
from ..safefile import ensure_private_dir
from .journal import Journal
from .plan import Claims, FolderStopped
from .runner import FileOutcome, Runner
from .settle import Settle
from .shelves import Shelves, make_dir
from .text import error_text, show_name
from .watch import Watcher

__all__ = ["QueryFolder"]

log = logging.getLogger(__name__)


class QueryFolder:
    """Watch ``folder`` and run each complete query file once.

    Parameters
    ----------
    folder : Path
        The watched folder (created, private, if needed).
    engine : Engine
        Runs the requests.
    deliver : callable
        Called with a :class:`FileOutcome` after a file was answered.
    settle : float
        Seconds a file's size and time must stay unchanged before it is taken.
    settle_max : float
        Seconds a file still open for writing may stay unchanged before it is taken anyway.
    workers : int
        Files processed at once.
    scan_interval : float
        Seconds between rescans of the folder (a safety net under the watcher).
    cancel : threading.Event, optional
        Set at shutdown (by :meth:`stop`, or by the caller's own stop).
    """

    def __init__(self, folder: Path, engine: Engine,
                 deliver: Callable[[FileOutcome], None] | None = None, *,
                 settle: float = 0.5, settle_max: float = 60.0, workers: int = 2,
                 scan_interval: float = 2.0, cancel: threading.Event | None = None) -> None:
        self.folder = folder.expanduser().resolve()
        self.engine = engine
        self.cfg = engine.cfg
        self.cancel = cancel or threading.Event()
        self.state_dir = self.folder / ".sampbridge"
        # results are staged outside the watched folder, one subfolder per watched folder
        self.work_root = engine.results_dir / "folder-work" / \
            hashlib.sha256(str(self.folder).encode()).hexdigest()[:12]
        self.settling = Settle(settle, settle_max)
        self.claims = Claims(self.folder / "done", self.work_root)
        self.shelves = Shelves(self.folder, self.claims, self.settling, deliver)
        self.runner = Runner(engine, self.cancel)
        self.done_dir, self.failed_dir = self.shelves.done_dir, self.shelves.failed_dir
        self.status_log = self.shelves.status_log
        self.watcher = Watcher(self.folder, self.notice, self._take, scan_interval)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="folder")

    @property
    def scans(self) -> int:
        """Rescans of the folder since the start."""
        return self.watcher.scans

    @property
    def processed(self) -> int:
        """Files answered since the start."""
        return self.shelves.processed

    @property
    def failed(self) -> int:
        """Files set aside since the start."""
        return self.shelves.failed

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Create the folders, pick up the backlog and start watching."""
        if not self.folder.is_dir():
            ensure_private_dir(self.folder)
        for d in (self.done_dir, self.failed_dir):
            try:
                make_dir(d)
            except OSError as exc:          # tried again, and reported, at each file
                log.warning("cannot make %s: %s", show_name(str(d)), exc.strerror)
        ensure_private_dir(self.state_dir)
        for stale in [*self.done_dir.glob("*.reserved"), *self.done_dir.glob("*.part"),
                      *self.failed_dir.glob("*.part")]:
            stale.unlink(missing_ok=True)      # left by a process that was killed
        shutil.rmtree(self.work_root, ignore_errors=True)   # staged results of a killed run
        self.shelves.journal = Journal(self.state_dir / "journal.jsonl")
        self.watcher.start()
        log.info("watching %s for query files (done/, failed/, status.log)",
                 show_name(str(self.folder)))

    def stop(self, grace: float = 10.0) -> None:
        """Stop watching; wait up to ``grace`` s in all for running files.

        Files not finished by then stay in the folder with their journal entry and run again
        at the next start; queued files simply stay. Once this returns, no worker writes to
        the folder again: one still blocked in the network leaves its file as it is.
        """
        deadline = time.monotonic() + grace
        self.cancel.set()
        self.watcher.stop(deadline)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.settling.drop_unstarted()          # never started: they simply stay
        while time.monotonic() < deadline and self.settling.running():
            time.sleep(0.02)
        with self.claims.lock:
            self.claims.close()
            if self.shelves.journal is not None:
                try:
                    self.shelves.journal.compact()
                except OSError as exc:
                    log.warning("cannot compact the folder's journal: %s", exc.strerror)
        left = sorted(show_name(p.name) for p in self.settling.running())
        if left:
            log.warning("stopping with %d query files unfinished (%s); they run again at the "
                        "next start", len(left), ", ".join(left[:5]))

    def idle(self) -> bool:
        """Tell whether no file is waiting or running."""
        return self.settling.idle()

    # -- noticing -----------------------------------------------------------------------
    def notice(self, path: Path, closed: bool = False) -> None:
        """Note a file that may be (or become) a query."""
        if path.parent == self.folder and is_candidate(path):
            self.settling.notice(path, time.monotonic(), closed)

    def _take(self, now: float) -> None:
        """Hand each file that settled to a worker."""
        for path in self.settling.ready(now):
            try:
                fut = self._pool.submit(self._process_safely, path)
            except RuntimeError:        # pool shut down: the file stays for the next start
                self.settling.finished(path)
                continue
            self.settling.started(path, fut)

    # -- processing ---------------------------------------------------------------------
    def _read(self, path: Path) -> bytes:
        """Return the bytes of a query file: the one place the folder reads one for its hash."""
        return query_bytes(path, self.cfg, self.folder)

    def _process_safely(self, path: Path) -> None:
        try:
            self._process(path)
        except FolderStopped:
            log.debug("%s: left as it is (the folder is stopped)", show_name(path.name))
        except Cancelled:
            log.info("%s: interrupted by shutdown; it stays and runs at the next start",
                     show_name(path.name))
        except Exception:  # a file's failure never stops the folder
            log.exception("processing %s failed unexpectedly", show_name(path.name))
            self._fail_quietly(path, "sampbridge failed unexpectedly on this file; see its log")
        finally:
            self.settling.finished(path)

    def _fail_quietly(self, path: Path, text: str, key: str | None = None) -> None:
        try:
            if os.path.lexists(path):
                self.shelves.fail(path, text, key)
        except FolderStopped:
            pass
        except Exception:
            log.exception("could not set %s aside", show_name(path.name))

    def _process(self, path: Path) -> None:
        try:
            data = self._read(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            self.shelves.fail(path, f"{path.name}: cannot read the file: "
                              f"{exc.strerror or 'input/output error'}")
            return
        sha = hashlib.sha256(data).hexdigest()[:20]
        key = f"{path.name}:{sha}"
        if self.settling.is_stuck(key):
            self.settling.remember_stuck(path, key)
            return
        assert self.shelves.journal is not None
        prior = self.shelves.journal.get(key)
        if prior and prior.get("event") == "landed" and all(
                Path(p).exists() for p in prior.get("outputs", [])):
            log.info("%s: its result landed before a restart; finishing without re-running",
                     show_name(path.name))
            self.shelves.finish(path, key, f"{prior['base']}{path.suffix}",
                                prior.get("summary", "(recovered)"), None)
            return
        try:
            self._attempt(path, key, sha)
        except Cancelled:                   # FolderStopped among them
            raise
        except Exception:  # set the file aside, with its journal entry closed
            log.exception("processing %s failed unexpectedly", show_name(path.name))
            self._fail_quietly(path, "sampbridge failed unexpectedly on this file; see its log",
                               key)

    def _attempt(self, path: Path, key: str, sha: str) -> None:
        t0 = time.perf_counter()
        shelves = self.shelves
        shelves.record(key, "start", file=path.name)
        try:
            requests = parse_query_file(path, self.cfg)
        except RequestError as exc:         # QueryFileError among them
            shelves.fail(path, str(exc), key)
            return
        plan = self.claims.claim(path, requests)
        try:
            try:
                run = self.runner.run(path, plan)
            except Cancelled:
                log.info("%s: interrupted by shutdown; it stays and runs at the next start",
                         show_name(path.name))
                return
            except (SampBridgeError, OSError) as exc:
                if plan.staged:             # a list's first results are kept
                    try:
                        shelves.finish(path, key, None, "", None, plan.staged)
                    except OSError as oserr:
                        log.warning("%s: its first results cannot be moved to done/: %s",
                                    show_name(path.name), oserr.strerror)
                shelves.fail(path, error_text(exc), key)
                return
            if self._changed(path, sha):
                log.warning("%s changed while it ran; its new content will run again",
                            show_name(path.name))
                shelves.record(key, "done")
                return
            secs = time.perf_counter() - t0
            try:
                shelves.finish(path, key, plan.query_name, f"{run.summary} in {secs:.2f} s",
                               run.outcome, plan.staged, plan.base)
            except OSError as exc:
                shelves.fail(path, f"its results cannot be moved to done/: "
                             f"{exc.strerror or 'input/output error'}", key)
        finally:
            self.claims.release(plan)

    def _changed(self, path: Path, sha: str) -> bool:
        try:
            return hashlib.sha256(self._read(path)).hexdigest()[:20] != sha
        except FileNotFoundError:
            return False
