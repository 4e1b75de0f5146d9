"""A watched folder of query files: each complete file runs once; nothing is ever lost.

Layout of the folder::

    queries/            drop *.adql *.sql *.yaml *.yml *.vot *.xml *.fits *.csv here
    queries/done/       answered queries, each beside its results
    queries/failed/     queries that cannot run, each with <name>.error.txt
    queries/status.log  one line per file: what ran, rows, time, output (or the error)
    queries/.sampbridge/journal.jsonl   private (0700): what is in progress

Names in ``done/``: a query keeps its own name, ``<base><suffix>`` (``q.adql``,
``pos100.vot``). Its results are ``<base>.vot``, or ``<base>.match.vot`` when the query file is
itself a table (so a ``.vot`` query never meets its result); a list adds ``-N``
(``<base>-2.vot``); images are ``<base>[-N]-<title>.fits``. ``<base>`` is the file's safe stem,
with ``-2``, ``-3``... added until *every* name the file can produce is free: none exists in
``done/`` and none is claimed by a file still running.

Results are written to a private staging folder (outside the watched folder) and moved into
``done/`` at the end; after :meth:`QueryFolder.stop` no worker writes to the folder again.

No SAMP here: results are handed to a ``deliver`` callback.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from watchdog.events import (
    FileClosedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from .csc.names import safe_name
from .engine import Engine, ImageResult, TableResult, ensure_private_dir
from .errors import Cancelled, SampBridgeError
from .model import ConeRequest, RequestError, SiapRequest, TapRequest
from .queryfiles import (
    TABLE_SUFFIXES,
    FileRequest,
    MatchFileRequest,
    QueryFileError,
    is_candidate,
    parse_query_file,
    query_bytes,
)
from .tables import read_table

__all__ = ["QueryFolder", "FileOutcome", "show_name"]

log = logging.getLogger(__name__)

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_HIDDEN = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
_OPEN_LOG = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC


def show_name(text: str) -> str:
    r"""Return ``text`` fit for one line of a log: control characters escaped.

    A newline, a carriage return, a terminal escape, a Unicode line separator or a lone
    surrogate (an undecodable byte of a file name) becomes ``\n``, ``\x1b``, ``\u2028``...;
    a backslash is doubled, so an escaped name never reads as another one.
    """
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif unicodedata.category(ch) in _HIDDEN:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def _make_dir(path: Path) -> bool:
    """Create ``path`` (0700) unless it is a folder already; tell whether it was made here.

    A folder that exists keeps its mode: it may be the user's.
    """
    if path.is_dir():
        return False
    path.mkdir(mode=0o700)              # FileExistsError when a file holds the name
    os.chmod(path, 0o700)               # exactly 0700 whatever the umask: it is ours
    return True


@dataclass
class FileOutcome:
    """What one query file produced: results to deliver, with its ``send_to`` override."""

    query: Path
    results: list[TableResult | ImageResult] = field(default_factory=list)
    send_to: list[list[str] | None] = field(default_factory=list)


class _Stopped(Exception):
    """The folder was stopped: a worker leaves its file as it is (it runs at the next start)."""


@dataclass(eq=False)
class _Plan:
    """Every name one query file may produce in ``done/``, and where its results are staged.

    ``names`` are exact names; each of ``prefixes`` stands for every ``<prefix>*.fits`` (the
    images of a SIAP request, whose titles are known only once the service answered).
    """

    base: str
    query_name: str
    requests: list[FileRequest]
    table_file: bool
    work: Path | None = None
    staged: list[Path] = field(default_factory=list)

    @property
    def many(self) -> bool:
        return len(self.requests) > 1

    def tag(self, i: int) -> str:
        return f"-{i}" if self.many else ""

    def table_name(self, i: int) -> str:
        """Return the name of request ``i``'s result (1-based) when it is a table."""
        return f"{self.base}{self.tag(i)}{'.match' if self.table_file else ''}.vot"

    def image_prefix(self, i: int) -> str:
        """Return the start of the names of request ``i``'s images."""
        return f"{self.base}{self.tag(i)}-"

    @cached_property
    def names(self) -> frozenset[str]:
        out = {self.query_name}
        for i, fr in enumerate(self.requests, 1):
            if not isinstance(fr.request, SiapRequest):
                table = self.table_name(i)
                # the TABLEDATA copy a delivery may write beside a BINARY result
                out |= {table, table[:-len(".vot")] + ".tabledata.vot"}
        return frozenset(out)

    @cached_property
    def prefixes(self) -> tuple[str, ...]:
        return tuple(self.image_prefix(i) for i, fr in enumerate(self.requests, 1)
                if isinstance(fr.request, SiapRequest))

    def takes(self, name: str) -> bool:
        """Tell whether ``name`` is one this file may produce."""
        return name in self.names or (name.endswith(".fits") and
                                      any(name.startswith(p) for p in self.prefixes))

    def meets(self, other: _Plan) -> bool:
        """Tell whether this file and ``other`` could produce the same name."""
        if any(other.takes(n) for n in self.names) or any(self.takes(n) for n in other.names):
            return True
        return any(a.startswith(b) or b.startswith(a)
                   for a in self.prefixes for b in other.prefixes)

    def free_in(self, existing: Iterable[str]) -> bool:
        """Tell whether none of the names is among ``existing`` (a set of names)."""
        if not self.names.isdisjoint(existing):
            return False
        return not any(name.endswith(".fits") and name.startswith(p)
                       for name in existing for p in self.prefixes)


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
        except Exception:
            log.exception("watcher event %s failed; going on", show_name(repr(event)))


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

    def _private_folder(self) -> None:
        ensure_private_dir(self.path.parent)     # made again if someone removed it

    def _rewrite(self) -> None:
        self._private_folder()
        tmp = self.path.with_name(self.path.name + ".tmp")
        with os.fdopen(os.open(tmp, _OPEN_NEW, 0o600), "w", encoding="utf-8") as fh:
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
            try:
                fd = os.open(self.path, _OPEN_LOG, 0o600)
            except FileNotFoundError:
                self._private_folder()
                fd = os.open(self.path, _OPEN_LOG, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
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
        The watched folder (created, private, if needed).
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
        # results are staged outside the watched folder, one subfolder per watched folder
        self.work_root = engine.results_dir / "folder-work" / \
            hashlib.sha256(str(self.folder).encode()).hexdigest()[:12]
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="folder")
        self._lock = threading.Lock()
        self._candidates: dict[Path, list[Any]] = {}   # path -> [size, mtime_ns, since, writing]
        self._inflight: dict[Path, Future | None] = {}
        self._stuck: dict[Path, tuple[int, int, int]] = {}  # failed, could not be set aside
        self._stuck_keys: set[str] = set()
        self._names_lock = threading.Lock()     # guards names in done/ and failed/, and writes
        self._plans: list[_Plan] = []           # files running, with the names they claim
        self._closed = False                    # set by stop(): no write to the folder after
        self._stop = threading.Event()
        self._observer: Any = None
        self._checker: threading.Thread | None = None
        self.processed = 0
        self.failed = 0
        self.scans = 0

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Create the folders, pick up the backlog and start watching."""
        if not self.folder.is_dir():
            ensure_private_dir(self.folder)
        for d in (self.done_dir, self.failed_dir):
            try:
                _make_dir(d)
            except OSError as exc:          # tried again, and reported, at each file
                log.warning("cannot make %s: %s", show_name(str(d)), exc.strerror)
        ensure_private_dir(self.state_dir)
        for stale in [*self.done_dir.glob("*.reserved"), *self.done_dir.glob("*.part"),
                      *self.failed_dir.glob("*.part")]:
            stale.unlink(missing_ok=True)      # left by a process that was killed
        shutil.rmtree(self.work_root, ignore_errors=True)   # staged results of a killed run
        self.journal = _Journal(self.state_dir / "journal.jsonl")
        self._observer = Observer()
        self._observer.schedule(_Handler(self), str(self.folder), recursive=False)
        self._observer.daemon = True
        self._observer.start()
        self._scan()
        self._checker = threading.Thread(target=self._check_loop, name="folder-check",
                                         daemon=True)
        self._checker.start()
        log.info("watching %s for query files (done/, failed/, status.log)",
                 show_name(str(self.folder)))

    def stop(self, grace: float = 10.0) -> None:
        """Stop watching; wait up to ``grace`` s in all for running files.

        Files not finished by then stay in the folder with their journal entry and run again
        at the next start; queued files simply stay. Once this returns, no worker writes to
        the folder again: one still blocked in the network leaves its file as it is.
        """
        deadline = time.monotonic() + grace
        self._stop.set()
        self.cancel.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(max(0.0, min(5.0, deadline - time.monotonic())))
        if self._checker is not None:
            self._checker.join(max(0.0, deadline - time.monotonic()))
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for path, fut in list(self._inflight.items()):
                if fut is not None and fut.cancelled():
                    del self._inflight[path]        # never started: it simply stays
        while time.monotonic() < deadline:
            with self._lock:
                if not self._inflight:
                    break
            time.sleep(0.02)
        with self._names_lock:
            self._closed = True
            if getattr(self, "journal", None) is not None:
                try:
                    self.journal.compact()
                except OSError as exc:
                    log.warning("cannot compact the folder's journal: %s", exc.strerror)
        with self._lock:
            left = sorted(show_name(p.name) for p in self._inflight)
        if left:
            log.warning("stopping with %d query files unfinished (%s); they run again at the "
                        "next start", len(left), ", ".join(left[:5]))

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
            log.warning("cannot list %s: %s", show_name(str(self.folder)), exc.strerror)
            return
        for name in names:
            p = self.folder / name
            # every entry but a folder: a FIFO, a device link or a dangling link is refused
            # (set aside in failed/) at once, not left to wait for a close that never comes
            if not p.is_dir() or p.is_symlink():
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
            except Exception:  # the checker must outlive any one problem
                log.exception("folder check failed; going on")

    def _check(self, now: float) -> None:
        ready = []
        with self._lock:
            for path, entry in list(self._candidates.items()):
                try:
                    st = path.lstat()       # never follow a link: a dangling one is refused
                except FileNotFoundError:
                    del self._candidates[path]
                    self._stuck.pop(path, None)
                    continue
                sig = [st.st_size, st.st_mtime_ns]
                if sig != entry[:2]:
                    entry[0], entry[1], entry[2] = sig[0], sig[1], now
                    continue
                quiet = now - entry[2]
                if quiet >= self.settle and (not entry[3] or quiet >= self.settle_max):
                    del self._candidates[path]
                    if self._stuck.get(path) == (st.st_size, st.st_mtime_ns, st.st_ino):
                        continue            # it failed and could not be set aside: not again
                    self._inflight[path] = None
                    ready.append(path)
        for path in ready:
            try:
                fut = self._pool.submit(self._process_safely, path)
            except RuntimeError:        # pool shut down: the file stays for the next start
                with self._lock:
                    self._inflight.pop(path, None)
                continue
            with self._lock:
                if path in self._inflight:
                    self._inflight[path] = fut

    # -- processing ---------------------------------------------------------------------
    def _read(self, path: Path) -> bytes:
        """Return the bytes of a query file: the one place the folder reads one for its hash."""
        return query_bytes(path, self.cfg, self.folder)

    def _process_safely(self, path: Path) -> None:
        try:
            self._process(path)
        except _Stopped:
            log.debug("%s: left as it is (the folder is stopped)", show_name(path.name))
        except Cancelled:
            log.info("%s: interrupted by shutdown; it stays and runs at the next start",
                     show_name(path.name))
        except Exception:  # a file's failure never stops the folder
            log.exception("processing %s failed unexpectedly", show_name(path.name))
            self._fail_quietly(path, "sampbridge failed unexpectedly on this file; see its log")
        finally:
            with self._lock:
                self._inflight.pop(path, None)

    def _fail_quietly(self, path: Path, text: str, key: str | None = None) -> None:
        try:
            if os.path.lexists(path):
                self._fail(path, text, key)
        except _Stopped:
            pass
        except Exception:
            log.exception("could not set %s aside", show_name(path.name))

    def _process(self, path: Path) -> None:
        try:
            data = self._read(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._fail(path, f"{path.name}: cannot read the file: "
                       f"{exc.strerror or 'input/output error'}")
            return
        sha = hashlib.sha256(data).hexdigest()[:20]
        key = f"{path.name}:{sha}"
        if key in self._stuck_keys:
            self._remember_stuck(path, key)
            return
        prior = self.journal.get(key)
        if prior and prior.get("event") == "landed" and all(
                Path(p).exists() for p in prior.get("outputs", [])):
            log.info("%s: its result landed before a restart; finishing without re-running",
                     show_name(path.name))
            self._finish(path, key, f"{prior['base']}{path.suffix}",
                         prior.get("summary", "(recovered)"), None)
            return
        try:
            self._attempt(path, key, sha)
        except (_Stopped, Cancelled):
            raise
        except Exception:  # set the file aside, with its journal entry closed
            log.exception("processing %s failed unexpectedly", show_name(path.name))
            self._fail_quietly(path, "sampbridge failed unexpectedly on this file; see its log",
                               key)

    def _attempt(self, path: Path, key: str, sha: str) -> None:
        t0 = time.perf_counter()
        self._journal(key, "start", file=path.name)
        try:
            requests = parse_query_file(path, self.cfg)
        except RequestError as exc:         # QueryFileError among them
            self._fail(path, str(exc), key)
            return
        plan = self._claim(path, requests)
        try:
            try:
                outcome, _, summary = self._run(path, plan)
            except Cancelled:
                log.info("%s: interrupted by shutdown; it stays and runs at the next start",
                         show_name(path.name))
                return
            except (SampBridgeError, OSError) as exc:
                if plan.staged:             # a list's first results are kept
                    try:
                        self._finish(path, key, None, "", None, plan.staged)
                    except OSError as oserr:
                        log.warning("%s: its first results cannot be moved to done/: %s",
                                    show_name(path.name), oserr.strerror)
                self._fail(path, _error_text(exc), key)
                return
            if self._changed(path, sha):
                log.warning("%s changed while it ran; its new content will run again",
                            show_name(path.name))
                self._journal(key, "done")
                return
            secs = time.perf_counter() - t0
            try:
                self._finish(path, key, plan.query_name, f"{summary} in {secs:.2f} s", outcome,
                             plan.staged, plan.base)
            except OSError as exc:
                self._fail(path, f"its results cannot be moved to done/: "
                           f"{exc.strerror or 'input/output error'}", key)
        finally:
            self._release(plan)

    def _changed(self, path: Path, sha: str) -> bool:
        try:
            return hashlib.sha256(self._read(path)).hexdigest()[:20] != sha
        except FileNotFoundError:
            return False

    # -- names --------------------------------------------------------------------------
    def _claim(self, path: Path, requests: list[FileRequest]) -> _Plan:
        """Choose the file's base so that every name it may produce is free, and claim them."""
        stem = safe_name(path.stem)
        table_file = path.suffix.lower() in TABLE_SUFFIXES
        with self._names_lock:
            self._guard()
            try:
                existing = set(os.listdir(self.done_dir))
            except OSError:
                existing = set()            # made again when the results land
            n = 1
            while True:
                base = stem if n == 1 else f"{stem}-{n}"
                plan = _Plan(base, f"{base}{path.suffix}", requests, table_file)
                if plan.free_in(existing) and not any(plan.meets(p) for p in self._plans):
                    break
                n += 1
            plan.work = self.work_root / uuid.uuid4().hex
            self._plans.append(plan)
        try:
            ensure_private_dir(plan.work)
        except OSError:
            self._release(plan)
            raise
        return plan

    def _release(self, plan: _Plan) -> None:
        with self._names_lock:
            if plan in self._plans:
                self._plans.remove(plan)
        if plan.work is not None:
            shutil.rmtree(plan.work, ignore_errors=True)

    def _guard(self) -> None:
        """Raise :class:`_Stopped` once the folder is stopped; call with the names lock held."""
        if self._closed:
            raise _Stopped

    def _ensure(self, folder: Path) -> None:
        """Make ``done/`` or ``failed/`` again (private) if it was removed."""
        if _make_dir(folder):
            log.warning("%s/ was missing; made it again", folder.name)

    def _journal(self, key: str, event: str, **data: Any) -> None:
        with self._names_lock:
            self._guard()
            self.journal.write(key, event, **data)

    # -- run ----------------------------------------------------------------------------
    def _run(self, path: Path, plan: _Plan) -> tuple[FileOutcome, list[Path], str]:
        """Run the file's requests; results are staged in ``plan.work`` under their names."""
        requests = plan.requests
        assert plan.work is not None
        outcome = FileOutcome(path)
        outputs: list[Path] = []
        parts: list[str] = []
        for i, fr in enumerate(requests, 1):
            dest = plan.work / plan.table_name(i)
            req = fr.request
            try:
                if isinstance(req, ConeRequest):
                    res: TableResult | ImageResult = self.engine.run_cone(req, dest=dest)
                elif isinstance(req, SiapRequest):
                    res = self.engine.run_siap(req, dest_dir=plan.work,
                                               prefix=plan.image_prefix(i))
                    if not res.images:
                        raise RequestError(f"no image found at that position ({res.found} "
                                           "found)")
                elif isinstance(req, TapRequest):
                    res = self.engine.run_tap(req, dest=dest, cancel=self.cancel)
                else:
                    assert isinstance(req, MatchFileRequest)
                    table = read_table(req.table, self.cfg["tables.max_rows"],
                                       max_bytes=self.cfg["tables.max_bytes"], root=req.root)
                    res = self.engine.run_match(table, fr.name or req.name, dest=dest,
                                                radius_arcsec=req.radius, mode=req.mode)
            except Cancelled:
                raise
            except SampBridgeError as exc:
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
            plan.staged[:] = outputs
            outcome.results.append(res)
            outcome.send_to.append(fr.send_to)
        return outcome, outputs, "; ".join(parts)

    # -- landing ------------------------------------------------------------------------
    def _land(self, staged: list[Path]) -> dict[Path, Path]:
        """Move staged results into ``done/``; call with the names lock held."""
        self._ensure(self.done_dir)
        moved: dict[Path, Path] = {}
        for src in staged:
            dest = self.done_dir / src.name
            os.chmod(src, 0o600)
            try:
                os.replace(src, dest)
            except OSError as exc:
                if exc.errno != errno.EXDEV:    # staging is on another file system
                    raise
                part = self.done_dir / f".{src.name}.part"
                shutil.copyfile(src, part)
                os.chmod(part, 0o600)
                os.replace(part, dest)
            moved[src] = dest
        return moved

    def _finish(self, path: Path, key: str, query_name: str | None, summary: str,
                outcome: FileOutcome | None, staged: list[Path] | None = None,
                base: str | None = None) -> None:
        """Land the results, move the query to ``done/query_name``, log it, deliver.

        With ``query_name`` None only the (partial) results land: the query fails next.
        """
        with self._names_lock:
            self._guard()
            moved = self._land(staged or [])
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
        if outcome is None or self.deliver is None or self._closed:
            return
        _retarget(outcome, moved)
        outcome.query = target
        try:
            self.deliver(outcome)
        except Exception:
            log.exception("delivering the results of %s failed", show_name(path.name))

    def _free(self, folder: Path, stem: str, suffix: str, also: str = "") -> Path:
        """Return ``folder/<stem>[-N]<suffix>``, a name not in use (nor its ``also`` twin)."""
        name, n = f"{stem}{suffix}", 1
        while os.path.lexists(folder / name) or (also and os.path.lexists(folder / (name + also))) \
                or any(p.takes(name) for p in self._plans if folder == self.done_dir):
            n += 1
            name = f"{stem}-{n}{suffix}"
        return folder / name

    def _fail(self, path: Path, text: str, key: str | None = None) -> None:
        """Set ``path`` aside in ``failed/`` with its error; never run it again as it is."""
        text = text.rstrip() or "failed"
        problem = ""
        with self._names_lock:
            self._guard()
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
            if key:
                self.journal.write(key, "done")
            self.failed += 1
            where = f"failed/{name}" if not problem else \
                f"it stays in the folder and does not run again until it changes ({problem})"
            self._status("FAILED", path.name, f"{text} -> {where}")
        if problem and os.path.lexists(path):
            self._remember_stuck(path, key)
        log.warning("%s failed: %s (%s)", show_name(path.name), show_name(text),
                    "set aside in failed/" if not problem else show_name(where))

    def _remember_stuck(self, path: Path, key: str | None) -> None:
        try:
            st = path.lstat()
        except OSError:
            return
        with self._lock:
            self._stuck[path] = (st.st_size, st.st_mtime_ns, st.st_ino)
            if key:
                self._stuck_keys.add(key)

    def _status(self, what: str, name: str, text: str) -> None:
        """Append one line to ``status.log``; call with the names lock held."""
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {what} {show_name(name)}: " \
               f"{show_name(text)}\n"
        try:
            fd = os.open(self.status_log, _OPEN_LOG, 0o600)
            try:
                os.write(fd, line.encode("utf-8", "backslashreplace"))
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("cannot write status.log: %s", exc.strerror)


def _write_private(dest: Path, text: str) -> None:
    """Write ``text`` to ``dest`` (0600) atomically, never through a symbolic link."""
    part = dest.with_name(dest.name + ".part")
    fd = os.open(part, _OPEN_NEW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
        fh.write(text)
    os.replace(part, dest)


def _retarget(outcome: FileOutcome, moved: dict[Path, Path]) -> None:
    """Point the results at their places in ``done/``."""
    for res in outcome.results:
        if isinstance(res, TableResult):
            res.path = moved.get(res.path, res.path)
        else:
            for img in res.images:
                if img.path is not None:
                    img.path = moved.get(img.path, img.path)


def _error_text(exc: BaseException) -> str:
    """One sentence for a failed file (an OSError without its errno or full path)."""
    if isinstance(exc, OSError):
        what = f" ({Path(exc.filename).name})" if exc.filename else ""
        return f"cannot write its result{what}: {exc.strerror or 'input/output error'}"
    return str(exc)


def glob_escape(text: str) -> str:
    """Escape glob metacharacters."""
    import glob

    return glob.escape(text)
