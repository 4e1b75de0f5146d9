"""A watched folder of query files: each complete file runs once; nothing is ever lost.

Layout of the folder::

    queries/            drop *.adql *.sql *.yaml *.yml *.vot *.xml *.fits *.csv here
    queries/done/       answered queries, each beside its result (<name>.vot, images)
    queries/failed/     queries that cannot run, each with <name>.error.txt
    queries/status.log  one line per file: what ran, rows, time, output (or the error)
    queries/.sampbridge/journal.jsonl   private (0700): what is in progress

No SAMP here: results are handed to a ``deliver`` callback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdog.events import (
    FileClosedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from .csc.errors import CSCError
from .csc.siap import safe_name
from .csc.tap import Cancelled
from .engine import Engine, ImageResult, TableResult, ensure_private_dir
from .model import ConeRequest, RequestError, SiapRequest, TapRequest
from .queryfiles import MatchFileRequest, QueryFileError, is_candidate, parse_query_file
from .tables import read_table

__all__ = ["QueryFolder", "FileOutcome"]

log = logging.getLogger(__name__)


@dataclass
class FileOutcome:
    """What one query file produced: results to deliver, with its ``send_to`` override."""

    query: Path
    results: list[TableResult | ImageResult] = field(default_factory=list)
    send_to: list[str | None] = field(default_factory=list)


class _Handler(FileSystemEventHandler):
    def __init__(self, folder: QueryFolder) -> None:
        self.folder = folder

    def on_any_event(self, event: FileSystemEvent) -> None:
        # an exception here would kill watchdog's observer thread: never let one out
        try:
            if event.is_directory:
                return
            closed = isinstance(event, FileClosedEvent)
            dest = getattr(event, "dest_path", "") or ""
            if dest:
                self.folder.notice(Path(os.fsdecode(dest)), closed=True)
            elif event.event_type in ("created", "modified", "closed"):
                self.folder.notice(Path(os.fsdecode(event.src_path)), closed=closed)
        except Exception:  # noqa: BLE001
            log.exception("watcher event %r failed; going on", event)


class _Journal:
    """Append-only record of files in progress, so a crash loses nothing and repeats nothing."""

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

    def _rewrite(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
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
        rec = {"key": key, "event": event, "t": time.time(), **data}
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            if event == "done":
                self.state.pop(key, None)
            else:
                self.state[key] = rec

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self.state.get(key)


class QueryFolder:
    """Watch ``folder`` and run each complete query file once.

    Parameters
    ----------
    folder : Path
        The watched folder (created if needed).
    engine : Engine
        Runs the requests.
    deliver : callable
        Called with a :class:`FileOutcome` after a file was answered.
    settle : float
        Seconds a file's size and time must stay unchanged before it is taken.
    workers : int
        Files processed at once.
    scan_interval : float
        Seconds between rescans of the folder (a safety net under the watcher).
    """

    def __init__(self, folder: Path, engine: Engine,
                 deliver: Callable[[FileOutcome], None] | None = None, *,
                 settle: float = 0.5, settle_max: float = 60.0, workers: int = 2,
                 scan_interval: float = 2.0, cancel: threading.Event | None = None) -> None:
        self.folder = folder.expanduser().resolve()
        self.engine = engine
        self.cfg = engine.cfg
        self.deliver = deliver
        self.settle = settle
        self.settle_max = settle_max
        self.scan_interval = scan_interval
        self.cancel = cancel or threading.Event()
        self.done_dir = self.folder / "done"
        self.failed_dir = self.folder / "failed"
        self.state_dir = self.folder / ".sampbridge"
        self.status_log = self.folder / "status.log"
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="folder")
        self._lock = threading.Lock()
        self._candidates: dict[Path, list[Any]] = {}   # path -> [size, mtime_ns, since, writing]
        self._inflight: set[Path] = set()
        self._names_lock = threading.Lock()
        self._stop = threading.Event()
        self._observer: Any = None
        self._checker: threading.Thread | None = None
        self.processed = 0
        self.failed = 0
        self.scans = 0

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Create the folders, pick up the backlog and start watching."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for d in (self.done_dir, self.failed_dir):
            d.mkdir(exist_ok=True)
        ensure_private_dir(self.state_dir)
        for stale in [*self.done_dir.glob("*.reserved"), *self.done_dir.glob("*.part"),
                      *self.failed_dir.glob("*.part")]:
            stale.unlink(missing_ok=True)      # left by a process that was killed
        self.journal = _Journal(self.state_dir / "journal.jsonl")
        self._observer = Observer()
        self._observer.schedule(_Handler(self), str(self.folder), recursive=False)
        self._observer.daemon = True
        self._observer.start()
        self._scan()
        self._checker = threading.Thread(target=self._check_loop, name="folder-check",
                                         daemon=True)
        self._checker.start()
        log.info("watching %s for query files (done/, failed/, status.log)", self.folder)

    def stop(self, grace: float = 10.0) -> None:
        """Stop watching; wait up to ``grace`` s for running files.

        Files not finished by then stay in the folder with their journal entry and run again
        at the next start; queued files simply stay.
        """
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
        if self._checker is not None:
            self._checker.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._lock:
                if not self._inflight:
                    break
            time.sleep(0.02)
        with self._lock:
            left = sorted(p.name for p in self._inflight)
        if left:
            log.warning("stopping with %d query files unfinished (%s); they run again at the "
                        "next start", len(left), ", ".join(left[:5]))
        if getattr(self, "journal", None) is not None:
            self.journal.compact()

    def idle(self) -> bool:
        """Tell whether no file is waiting or running."""
        with self._lock:
            return not self._candidates and not self._inflight

    # -- noticing -----------------------------------------------------------------------
    def notice(self, path: Path, closed: bool = False) -> None:
        """Note a file that may be (or become) a query."""
        if path.parent != self.folder or not is_candidate(path):
            return
        with self._lock:
            if path in self._inflight:
                return
            entry = self._candidates.get(path)
            if entry is None:
                self._candidates[path] = [-1, -1, time.monotonic(), not closed]
            else:
                entry[3] = not closed

    def _scan(self) -> None:
        try:
            names = os.listdir(self.folder)
        except OSError as exc:
            log.warning("cannot list %s: %s", self.folder, exc)
            return
        for name in names:
            p = self.folder / name
            if p.is_file():
                self.notice(p, closed=True)
        self.scans += 1

    def _check_loop(self) -> None:
        last_scan = time.monotonic()
        while not self._stop.wait(0.05):
            try:
                now = time.monotonic()
                if now - last_scan >= self.scan_interval:
                    self._scan()
                    last_scan = now
                self._check(now)
            except Exception:  # noqa: BLE001 - the checker must outlive any one problem
                log.exception("folder check failed; going on")

    def _check(self, now: float) -> None:
        ready = []
        with self._lock:
            for path, entry in list(self._candidates.items()):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    del self._candidates[path]
                    continue
                sig = [st.st_size, st.st_mtime_ns]
                if sig != entry[:2]:
                    entry[0], entry[1], entry[2] = sig[0], sig[1], now
                    continue
                quiet = now - entry[2]
                if quiet >= self.settle and (not entry[3] or quiet >= self.settle_max):
                    del self._candidates[path]
                    self._inflight.add(path)
                    ready.append(path)
        for path in ready:
            try:
                self._pool.submit(self._process_safely, path)
            except RuntimeError:        # pool shut down: the file stays for the next start
                with self._lock:
                    self._inflight.discard(path)

    # -- processing ---------------------------------------------------------------------
    def _process_safely(self, path: Path) -> None:
        try:
            self._process(path)
        except Exception:  # noqa: BLE001 - a file's failure never stops the folder
            log.exception("processing %s failed unexpectedly", path.name)
            try:
                if path.exists():
                    self._fail(path, "sampbridge failed unexpectedly on this file; see its log")
            except Exception:  # noqa: BLE001
                log.exception("could not set %s aside", path.name)
        finally:
            with self._lock:
                self._inflight.discard(path)

    def _process(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        sha = hashlib.sha256(data).hexdigest()[:20]
        key = f"{path.name}:{sha}"
        prior = self.journal.get(key)
        if prior and prior.get("event") == "landed" and all(
                Path(p).exists() for p in prior.get("outputs", [])):
            log.info("%s: its result landed before a restart; finishing without re-running",
                     path.name)
            self._finish(path, key, prior["base"], prior.get("summary", "(recovered)"),
                         [Path(p) for p in prior.get("outputs", [])], None)
            return
        t0 = time.perf_counter()
        self.journal.write(key, "start", file=path.name)
        with self._names_lock:
            base = self._unique_base(path)
            reserve = self.done_dir / (base + ".reserved")
            reserve.touch()
        try:
            outcome, outputs, summary = self._run(path, base)
        except Cancelled:
            log.info("%s: interrupted by shutdown; it stays and runs at the next start",
                     path.name)
            reserve.unlink(missing_ok=True)
            return
        except (QueryFileError, RequestError, CSCError, OSError) as exc:
            reserve.unlink(missing_ok=True)
            self._fail(path, str(exc), key)
            return
        reserve.unlink(missing_ok=True)
        try:
            now_sha = hashlib.sha256(path.read_bytes()).hexdigest()[:20]
        except FileNotFoundError:
            now_sha = sha
        if now_sha != sha:
            log.warning("%s changed while it ran; its new content will run again", path.name)
            self.journal.write(key, "done")
            return
        self.journal.write(key, "landed", base=base, outputs=[str(p) for p in outputs],
                           summary=summary)
        secs = time.perf_counter() - t0
        self._finish(path, key, base, f"{summary} in {secs:.2f} s", outputs, outcome)

    def _unique_base(self, path: Path) -> str:
        stem = safe_name(path.stem)
        base, n = stem, 1
        while any(self.done_dir.glob(f"{glob_escape(base)}.*")) or \
                any(self.done_dir.glob(f"{glob_escape(base)}-*.fits")):
            n += 1
            base = f"{stem}-{n}"
        return base

    def _run(self, path: Path, base: str) -> tuple[FileOutcome, list[Path], str]:
        requests = parse_query_file(path, self.cfg)
        outcome = FileOutcome(path)
        outputs: list[Path] = []
        parts: list[str] = []
        for i, fr in enumerate(requests, 1):
            suffix = "" if len(requests) == 1 else f"-{i}"
            dest = self.done_dir / f"{base}{suffix}.vot"
            req = fr.request
            try:
                if isinstance(req, ConeRequest):
                    res: TableResult | ImageResult = self.engine.run_cone(req, dest=dest)
                elif isinstance(req, SiapRequest):
                    res = self.engine.run_siap(req, dest_dir=self.done_dir,
                                               prefix=f"{base}{suffix}-")
                    if not res.images:
                        raise RequestError(f"no image found at that position ({res.found} "
                                           "found)")
                elif isinstance(req, TapRequest):
                    res = self.engine.run_tap(req, dest=dest, cancel=self.cancel)
                else:
                    assert isinstance(req, MatchFileRequest)
                    table = read_table(req.table, self.cfg["tables.max_rows"])
                    res = self.engine.run_match(table, fr.name or req.name, dest=dest,
                                                radius_arcsec=req.radius, mode=req.mode)
            except Cancelled:
                raise
            except (RequestError, CSCError) as exc:
                where = f"request {i} ({fr.kind})" if len(requests) > 1 else fr.kind
                kept = f"; results of requests 1-{i - 1} are in done/" if i > 1 else ""
                raise QueryFileError(f"{path.name}: {where}: {exc}{kept}") from None
            if isinstance(res, TableResult):
                if fr.name and not isinstance(req, MatchFileRequest):
                    res.name = fr.name
                outputs.append(res.path)
                parts.append(f"{fr.kind} {res.rows} rows -> done/{res.path.name}"
                             + (" (truncated at MAXREC)" if res.overflow else ""))
            else:
                outputs += [img.path for img in res.images if img.path]
                parts.append(f"{fr.kind} {len(res.images)} images -> done/"
                             + ", done/".join(img.path.name for img in res.images if img.path))
            outcome.results.append(res)
            outcome.send_to.append(fr.send_to)
        return outcome, outputs, "; ".join(parts)

    def _finish(self, path: Path, key: str, base: str, summary: str, outputs: list[Path],
                outcome: FileOutcome | None) -> None:
        target = self.done_dir / f"{base}{path.suffix}"
        if path.exists():
            os.replace(path, target)
        self.journal.write(key, "done")
        self._status("OK", path.name, f"{summary}; query -> done/{target.name}")
        self.processed += 1
        if outcome is not None and self.deliver is not None:
            outcome.query = target
            try:
                self.deliver(outcome)
            except Exception:  # noqa: BLE001
                log.exception("delivering the results of %s failed", path.name)

    def _fail(self, path: Path, text: str, key: str | None = None) -> None:
        with self._names_lock:
            stem = safe_name(path.stem)
            name, n = f"{stem}{path.suffix}", 1
            while (self.failed_dir / name).exists():
                n += 1
                name = f"{stem}-{n}{path.suffix}"
            err = self.failed_dir / f"{name}.error.txt"
            tmp = err.with_name(err.name + ".part")
            tmp.write_text(text.rstrip() + "\n", encoding="utf-8")
            os.replace(tmp, err)
            if path.exists():
                os.replace(path, self.failed_dir / name)
        if key:
            self.journal.write(key, "done")
        self.failed += 1
        self._status("FAILED", path.name, f"{text} -> failed/{name}")
        log.warning("%s failed: %s (set aside in failed/)", path.name, text)

    def _status(self, what: str, name: str, text: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {what} {name}: {text}\n"
        with self._names_lock, open(self.status_log, "a", encoding="utf-8") as fh:
            fh.write(line)
        if what == "OK":
            log.info("%s: %s", name, text)


def glob_escape(text: str) -> str:
    """Escape glob metacharacters."""
    import glob

    return glob.escape(text)
