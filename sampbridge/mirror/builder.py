"""Build a mirror of ``master_source``: RA slices through TAP, a journal, one atomic install.

The slices run ``parallel`` at a time (:mod:`.slices`); each finished slice is a part file in
``<release>.building/`` and a line in its journal, so a build that was interrupted (Ctrl-C,
kill -9, a lost network) resumes from the slices already saved.  When every slice is in, the
total is counted again, the rows are sorted by declination and written as one FITS table, the
manifest is written beside it, and the folder is renamed into place: there is never a half
mirror that looks whole.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from ..csc.adql import identifier
from ..csc.cone import VERB_COLUMNS, ConeService
from ..csc.errors import CSCError, ServiceTimeout, ServiceUnreachable
from ..csc.tap import TapClient
from .errors import MirrorError
from .fields import parse_fields
from .slices import Slice, SliceSource, _Split
from .store import (
    COMPUTED,
    FITS_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    fail_disk,
    install,
    private_dir,
    release_dir,
    sha256_of,
    write_fits,
)

__all__ = ["build", "ELLIPSE", "JOURNAL"]

log = logging.getLogger(__name__)

#: the error-ellipse columns, always mirrored
ELLIPSE = ("err_ellipse_r0", "err_ellipse_r1", "err_ellipse_ang")
JOURNAL = "journal.json"
Progress = Callable[[int, int], None]


def _say(exc: CSCError, url: str, done: int) -> MirrorError:
    """One sentence for a service failure during a build."""
    resume = (f"; run `sampbridge mirror build` again: it resumes from the {done} slices saved"
              if done else "; run `sampbridge mirror build` again")
    if isinstance(exc, ServiceUnreachable):
        return MirrorError(f"cannot reach the CSC service at {url} (no network?){resume}")
    if isinstance(exc, ServiceTimeout):
        return MirrorError(f"the CSC service at {url} did not answer in time{resume}")
    return MirrorError(f"the CSC service at {url} failed ({exc}){resume}")


def _fields(cone: ConeService) -> dict[str, list[dict]]:
    """Return the cone service's FIELDs at VERB 1, 2 and 3, from one live answer each."""
    out = {}
    for verb in (1, 2, 3):
        body, _url = cone.fetch_body(0.0, 0.0, 0.001, verb)
        try:
            out[str(verb)] = parse_fields(body)
        except ValueError:
            raise MirrorError(f"the cone service {cone.url} did not answer a VOTable at "
                              f"VERB={verb}; check services.cone") from None
    return out


def _tap_columns(src: SliceSource) -> list[str]:
    body = src.tap.sync_body(f"SELECT TOP 1 * FROM {identifier(src.table)}", 1,
                             what="mirror build TAP query")
    return [f["attrs"].get("name", "") for f in parse_fields(body)]     # no row is parsed


def _guess(wanted: Sequence[str] | str | None, verb: int) -> list[str] | None:
    """Return the columns a default build will most likely mirror, before the cone says so.

    The CXC documents its cone's VERB=1 and VERB=2 columns (:data:`.csc.cone.VERB_COLUMNS`);
    when the whole table fits one slice, it is asked for with those columns while the cone's
    FIELDs are read, and kept only when they turn out to be exactly the columns chosen.
    """
    if wanted is not None or verb not in VERB_COLUMNS:
        return None
    return list(dict.fromkeys([*VERB_COLUMNS[verb], *ELLIPSE]))


def _early(spec: SliceSource, total: int) -> tuple[int, str | None] | None:
    """Fetch the whole sky (``total`` rows counted) with the guessed columns; None on failure."""
    try:
        return spec.fetch(Slice(0.0, 360.0), counted=total)
    except (_Split, CSCError, MirrorError):
        return None


def _choose(wanted: Sequence[str] | str | None, verbs: dict[str, list[dict]], verb: int,
            tap_cols: list[str]) -> list[str]:
    """Return the columns to mirror, in the TAP table's order (ra, dec and name always)."""
    if wanted == "all":
        return list(tap_cols)
    if wanted is None:
        want = {f["attrs"].get("name") for f in verbs.get(str(verb), [])} | set(ELLIPSE)
    else:
        want = set(wanted) | set(ELLIPSE)
    want = (want | {"name", "ra", "dec"}) - set(COMPUTED)
    missing = sorted(want - set(tap_cols))
    if missing:
        log.warning("mirror: the TAP table has no column %s (the cone service names it); it is "
                    "not mirrored", ", ".join(missing))
    return [c for c in tap_cols if c in want]


class _Journal:
    """The slices done so far, saved atomically after each one."""

    def __init__(self, work: Path, head: dict) -> None:
        self.path = work / JOURNAL
        self.head = head
        self.done: dict[str, dict] = {}
        try:
            old = json.loads(self.path.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("head") == head:
            self.done = dict(old.get("done", {}))
        elif old:               # another release, service or columns: start afresh
            for part in work.glob("part-*"):
                part.unlink(missing_ok=True)

    def add(self, s: Slice, rows: int, part: str | None) -> None:
        self.done[s.key] = {"a": s.a, "b": s.b, "rows": rows, "part": part}
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"head": self.head, "done": self.done}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def inside(self, s: Slice) -> bool:
        return any(s.holds(Slice(d["a"], d["b"])) for d in self.done.values())


def _run(src: SliceSource, journal: _Journal, first: list[Slice], total: int, parallel: int,
         progress: Progress | None, cancel: threading.Event) -> None:
    """Fetch every slice not in the journal, splitting where needed."""
    rows = sum(d["rows"] for d in journal.done.values())
    if progress:
        progress(rows, total)
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="mirror") as pool:
        running: dict[Future, Slice] = {}

        def submit(s: Slice) -> None:
            if s.key in journal.done:
                return
            if journal.inside(s):
                for h in s.halves():
                    submit(h)
                return
            running[pool.submit(src.fetch, s)] = s

        for s in first:
            submit(s)
        try:
            while running:
                if cancel.is_set():
                    raise MirrorError("the mirror build was stopped; run `sampbridge mirror "
                                      "build` again to resume")
                finished, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    s = running.pop(fut)
                    try:
                        n, part = fut.result()
                    except _Split:
                        for h in s.halves():
                            submit(h)
                        continue
                    journal.add(s, n, part)
                    rows += n
                    if progress:
                        progress(rows, total)
        except BaseException:
            for fut in running:
                fut.cancel()
            raise


def _assemble(work: Path, journal: _Journal, columns: list[str]) -> dict:
    """Sort the part files' rows by declination and write the FITS table, a column at a time.

    Only the positions are loaded whole first (for the order); every other column is read from
    the parts, sorted and converted to its FITS form before the next one is read, so the peak
    memory is about the finished table plus one column, not several copies of the whole.
    """
    parts = [work / d["part"] for d in sorted(journal.done.values(), key=lambda d: d["a"])
             if d["part"]]

    def load(c: str) -> tuple[np.ndarray, np.ndarray]:
        values, masks = [], []
        for p in parts:
            with np.load(p) as z:
                v = z["v_" + c]
                values.append(v)
                masks.append(z["m_" + c] if "m_" + c in z else np.zeros(len(v), bool))
        return np.concatenate(values), np.concatenate(masks)

    order = np.lexsort((load("ra")[0], load("dec")[0]))
    raw = [0]

    def sorted_columns() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for c in columns:
            v, m = load(c)
            v, m = v[order], m[order]
            raw[0] += (int(np.char.str_len(v).sum()) if v.dtype.kind == "U"
                       else int(v.dtype.itemsize) * len(v))
            yield c, v, m

    new = private_dir(work / "new")
    how = write_fits(new / FITS_NAME, sorted_columns())
    return {"columns": how, "raw_bytes": raw[0], "rows": len(order)}


def build(tap: TapClient, cone: ConeService, *, table: str, release: str, root: Path,
          columns: Sequence[str] | str | None = None, verb: int = 2, parallel: int = 3,
          slice_rows: int = 50_000, retries: int = 3, retry_wait: float = 1.0,
          progress: Progress | None = None, cancel: threading.Event | None = None) -> dict:
    """Build (or resume building) the mirror of ``table`` and install it; return its manifest.

    Parameters
    ----------
    tap, cone : TapClient, ConeService
        The services the rows and the FIELDs come from (the mirror is pinned to their URLs).
    table : str
        ``master_source`` as the TAP service names it, e.g. ``csc21.master_source``.
    release : str
        The release label (the folder name and a pin).
    root : Path
        The folder of mirrors (see :func:`.store.default_root`).
    columns : sequence of str, ``"all"`` or None
        Columns to mirror; None: those of the cone at ``verb``.  The three error-ellipse
        columns, ``name``, ``ra`` and ``dec`` are always added.
    verb : int
        The configured VERB (for the default columns).
    parallel : int
        TAP requests in flight at once.
    slice_rows : int
        Most rows one slice request may bring (larger slices are split).
    retries, retry_wait : int, float
        Retries of a failed request (unreachable, timeout, 5xx), waiting ``retry_wait``
        seconds, doubled each time.
    progress : callable, optional
        Called with (rows saved, rows in all) as slices finish.
    cancel : threading.Event, optional
        Set to stop (the slices saved so far stay for the next build).

    Raises
    ------
    MirrorError
        One sentence: no network, a full disk, a row count that changed, a stop.
    """
    t0 = time.monotonic()
    root = Path(root)
    final = release_dir(root, release)
    work = final.with_name(final.name + ".building")
    journal: _Journal | None = None
    src: SliceSource | None = None
    try:
        private_dir(root)
        private_dir(work)
        src = SliceSource(tap, table, [], work, slice_rows, retries, retry_wait)
        guess = None if (work / JOURNAL).exists() else _guess(columns, verb)
        spec = SliceSource(tap, table, guess or [], work, slice_rows, retries, retry_wait)
        with ThreadPoolExecutor(3, thread_name_prefix="mirror-start") as start:
            f_total = start.submit(src.count, Slice(0.0, 360.0))
            f_verbs, f_cols = start.submit(_fields, cone), start.submit(_tap_columns, src)
            total = f_total.result()
            fits_one = total <= 0.8 * slice_rows
            f_spec = start.submit(_early, spec, total) if guess and fits_one else None
            verbs, tap_cols = f_verbs.result(), f_cols.result()
            early = f_spec.result() if f_spec else None
        spec.pool.shutdown(wait=False)
        src.columns = _choose(columns, verbs, verb, tap_cols)
        head = {"release": release, "tap": tap.url, "cone": cone.url, "table": table,
                "columns": src.columns, "format": FORMAT_VERSION}
        journal = _Journal(work, head)
        # as few slices as fit (a TAP request costs 0.1-0.2 s however small it is), split
        # further where one overflows
        n0 = max(1, math.ceil(total / (0.8 * slice_rows)))
        if (early and n0 == 1 and early[0] == total and not journal.done
                and set(spec.columns) == set(src.columns)):
            journal.add(Slice(0.0, 360.0), *early)      # the guess was right: one request less
        first = [Slice(360.0 * i / n0, 360.0 * (i + 1) / n0) for i in range(n0)]
        _run(src, journal, first, total, parallel, progress, cancel or threading.Event())
        got = sum(d["rows"] for d in journal.done.values())
        with ThreadPoolExecutor(1, thread_name_prefix="mirror-recount") as one:
            recount = one.submit(src.count, Slice(0.0, 360.0))     # while the table is written
            info = _assemble(work, journal, src.columns)
            again = recount.result()
        if got != total or again != total:
            raise MirrorError(f"the TAP service {tap.url} changed its row count during the "
                              f"build ({total} rows at the start, {again} at the end, {got} "
                              "fetched); run `sampbridge mirror build` again once the "
                              "service is stable")
        fits_path = work / "new" / FITS_NAME
        manifest = {"format": FORMAT_VERSION, "release": release, "table": table,
                    "services": {"tap": tap.url, "cone": cone.url},
                    "columns": info["columns"], "rows": info["rows"],
                    "bytes": fits_path.stat().st_size, "raw_bytes": info["raw_bytes"],
                    "sha256": sha256_of(fits_path), "verbs": verbs,
                    "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "build_seconds": round(time.monotonic() - t0, 3),
                    "slices": len(journal.done)}
        mpath = work / "new" / MANIFEST_NAME
        fd = os.open(mpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(manifest, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        install(work / "new", final)
        shutil.rmtree(work, ignore_errors=True)
        log.info("mirror of CSC %s built: %d rows, %d columns, %.1f MB in %.1f s at %s",
                 release, manifest["rows"], len(src.columns), manifest["bytes"] / 1e6,
                 manifest["build_seconds"], final)
        return manifest
    except CSCError as exc:
        raise _say(exc, exc.url or tap.url, len(journal.done) if journal else 0) from None
    except OSError as exc:
        raise fail_disk(exc, work) from None
    finally:
        if src is not None:
            src.pool.shutdown(wait=False, cancel_futures=True)
