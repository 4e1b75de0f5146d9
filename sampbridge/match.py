"""Match a table's positions against the CSC: TAP upload, or batched parallel cone searches.

Both strategies return the same pairs (input row, CSC source) with separations computed here by
one formula (astropy's), so their outputs agree row for row.  The cones are cone searches
(SCS) or ADQL cones on TAP (:class:`TapCones`); ADQL, for cones and for the upload join, is
written in the dialect the service accepts (see :meth:`.csc.tap.TapClient.with_dialect`).
Service answers are read with their nulls kept (:func:`.csc.votable.read_table`).  No SAMP
here.
"""

from __future__ import annotations

import io
import logging
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

from ._astropy import quiet_astropy
from .csc.adql import identifier, pair_condition
from .csc.cone import ConeService
from .csc.errors import QueryError
from .csc.sky import separation_deg
from .csc.tap import TapClient
from .csc.votable import check_body, overflowed, read_table

__all__ = ["Matches", "Progress", "TapCones", "UploadIncomplete", "match_by_cones",
           "match_by_upload", "best_only", "join", "plan_cones", "sep_arcsec"]

log = logging.getLogger(__name__)

#: most rows matched by one sync upload; more go as an async job
SYNC_UPLOAD_ROWS = 5000

#: a progress hook of a match: ``progress(done, total)``, both counted in input positions
#: (the rows being matched).  It is called on the matching thread and should be quick; an
#: exception it raises is logged and ignored.
Progress = Callable[[int, int], None]


class _Reporter:
    """Calls a :data:`Progress` hook (if any) with positions done, never failing the match."""

    def __init__(self, hook: Progress | None, total: int) -> None:
        self.hook, self.total, self.done = hook, total, 0
        self._failed = False

    def __call__(self, done: int) -> None:
        self.done = done
        if self.hook is None:
            return
        try:
            self.hook(done, self.total)
        except Exception:  # a progress display must not stop the match
            if not self._failed:
                log.warning("a match progress hook failed; the match goes on", exc_info=True)
            self._failed = True


class UploadIncomplete(QueryError):
    """The upload match hit the service's row limit (MAXREC): some pairs would be missing."""


def sep_arcsec(ra1: np.ndarray | float, dec1: np.ndarray | float, ra2: np.ndarray | float,
               dec2: np.ndarray | float) -> np.ndarray:
    """Angular separation in arcsec, vectorised (:func:`.csc.sky.separation_deg`, astropy's)."""
    return np.asarray(separation_deg(ra1, dec1, ra2, dec2), dtype=float) * 3600.0


@dataclass(frozen=True)
class TapCones:
    """Cones of a match run as ADQL on a TAP service (``cone.service: tap``).

    Attributes
    ----------
    tap : TapClient
        The service.
    table : str
        The catalogue table (``tap.table``).
    dialect : str
        ``tap.dialect``: ``auto`` falls back through the dialects the service refuses.
    maxrec : int or None
        MAXREC of each cone.
    """

    tap: TapClient
    table: str
    dialect: str = "auto"
    maxrec: int | None = None


@dataclass
class Matches:
    """Pairs of (input row index, CSC row), with their separation in arcsec."""

    idx: np.ndarray
    csc: Table
    sep: np.ndarray
    strategy: str
    requests: int = 0

    def __len__(self) -> int:
        return len(self.idx)


def _empty(columns: Sequence[str], strategy: str, requests: int = 0) -> Matches:
    return Matches(np.zeros(0, dtype=int), Table(names=list(columns)), np.zeros(0), strategy,
                   requests)


def plan_cones(ra: np.ndarray, dec: np.ndarray, rows: np.ndarray, radius: float,
               cell: float) -> list[tuple[float, float, float, np.ndarray]]:
    """Group positions into cones: (ra, dec, radius, member rows).

    Positions are binned into cells of about ``cell`` degrees; each cell becomes one cone that
    covers its members plus ``radius``.  ``cell`` = 0 gives one cone per position.
    """
    if cell <= 0:
        return [(float(ra[i]), float(dec[i]), radius, np.array([i])) for i in rows]
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i in rows:
        di = math.floor(dec[i] / cell)
        cosd = max(math.cos(math.radians((di + 0.5) * cell)), 1e-3)
        groups[(di, math.floor(ra[i] * cosd / cell))].append(int(i))
    plan = []
    for members in groups.values():
        m = np.array(members)
        if len(m) == 1:
            plan.append((float(ra[m[0]]), float(dec[m[0]]), radius, m))
            continue
        r, d = np.radians(ra[m]), np.radians(dec[m])
        v = np.array([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)]).sum(axis=1)
        v /= np.linalg.norm(v)
        rc = math.degrees(math.atan2(v[1], v[0])) % 360.0
        dc = math.degrees(math.asin(max(-1.0, min(1.0, v[2]))))
        spread = float(sep_arcsec(ra[m], dec[m], rc, dc).max()) / 3600.0
        plan.append((rc, dc, spread + radius * 1.0001, m))
    return plan


def _cone_table(body: bytes, url: str) -> Table:
    """Parse one cone's VOTable (on the calling thread only), its nulls kept as nulls.

    Parsing in the worker threads crashed the process with SIGSEGV (inside expat, and in a
    garbage collection during astropy's VOTable parser), so the workers only download.
    """
    check_body(body, url, "cone search")
    return read_table(body)


def _keep(t: Table, columns: Sequence[str]) -> Table:
    wanted = [c for c in columns if c in t.colnames]
    return t[wanted]


def match_by_cones(svc: ConeService | TapCones, ra: np.ndarray, dec: np.ndarray,
                   valid: np.ndarray, radius: float, columns: Sequence[str], *, verb: int = 2,
                   parallelism: int = 4, cell: float = 0.1,
                   progress: Progress | None = None) -> Matches:
    """Match by cones, ``parallelism`` at a time, positions batched into cells.

    Parameters
    ----------
    svc : ConeService or TapCones
        Cone searches (at ``verb``), or ADQL cones on TAP selecting ``columns``.
    ra, dec : numpy.ndarray
        Positions, degrees.
    valid : numpy.ndarray
        Which rows to match.
    radius : float
        Match radius, degrees.
    columns : sequence of str
        CSC columns kept in the result (those the answers have).
    verb : int
        VERB of the cone searches.
    parallelism : int
        Requests in flight at once.
    cell : float
        Cell size, degrees (see :func:`plan_cones`).
    progress : callable, optional
        ``progress(done, total)``, in positions (see :data:`Progress`): with 0 before the
        first cone, then after each cone, as its positions are matched.
    """
    rows = np.flatnonzero(valid)
    plan = plan_cones(ra, dec, rows, radius, cell)
    report = _Reporter(progress, len(rows))
    if not plan:
        return _empty(columns, "cone")
    report(0)
    t0 = time.monotonic()
    last_log = [t0]
    done = [0]
    parts_idx: list[np.ndarray] = []
    parts_tab: list[Table] = []
    parts_sep: list[np.ndarray] = []

    def fetch(item: tuple[float, float, float, np.ndarray]) -> tuple[bytes, str]:
        rc, dc, sr, _ = item                      # on a worker thread: network only
        if isinstance(svc, TapCones):
            return svc.tap.cone_body(svc.table, rc, dc, sr, dialect=svc.dialect,
                                     maxrec=svc.maxrec, columns=columns)
        return svc.fetch_body(rc, dc, sr, verb)

    def one(item: tuple[float, float, float, np.ndarray], body: bytes, url: str
            ) -> tuple[np.ndarray, Table, np.ndarray]:
        members = item[3]
        t = _cone_table(body, url)
        done[0] += 1
        report(report.done + len(members))
        now = time.monotonic()
        if now - last_log[0] > 5:
            last_log[0] = now
            log.info("matching: %d/%d cones done", done[0], len(plan))
        if len(t) == 0:
            return np.zeros(0, dtype=int), t, np.zeros(0)
        cra, cdec = np.asarray(t["ra"], float), np.asarray(t["dec"], float)
        idx_l, row_l, sep_l = [], [], []
        for i in members:
            s = sep_arcsec(ra[i], dec[i], cra, cdec)
            hit = np.flatnonzero(s <= radius * 3600.0)
            idx_l.append(np.full(len(hit), i))
            row_l.append(hit)
            sep_l.append(s[hit])
        hits = np.concatenate(row_l) if row_l else np.zeros(0, dtype=int)
        return (np.concatenate(idx_l).astype(int) if idx_l else np.zeros(0, dtype=int),
                _keep(t, columns)[hits], np.concatenate(sep_l) if sep_l else np.zeros(0))

    with ThreadPoolExecutor(max_workers=max(1, parallelism),
                            thread_name_prefix="cone") as pool:
        for item, (body, url) in zip(plan, pool.map(fetch, plan), strict=True):
            idx, tab, sep = one(item, body, url)
            if len(idx):
                parts_idx.append(idx)
                parts_tab.append(tab)
                parts_sep.append(sep)
    log.info("matching: %d positions in %d cones (parallelism %d) in %.0f ms", len(rows),
             len(plan), parallelism, (time.monotonic() - t0) * 1000)
    if not parts_idx:
        return _empty(columns, "cone", len(plan))
    with quiet_astropy():
        tab = vstack(parts_tab, metadata_conflicts="silent")
    return Matches(np.concatenate(parts_idx), tab, np.concatenate(parts_sep), "cone",
                   len(plan))


def _upload_body(rows: np.ndarray, ra: np.ndarray, dec: np.ndarray) -> Table:
    return Table([rows.astype(np.int64), ra[rows], dec[rows]], names=["sb_idx", "sb_ra", "sb_dec"])


def _votable_bytes(t: Table) -> bytes:
    """Return ``t`` as a TABLEDATA VOTable, written by astropy's Python writer.

    TABLEDATA is what every TAP service reads (DaCHS 2.7 cannot read astropy's BINARY); the
    Python writer, as in ``engine._write_votable``.
    """
    from astropy.io.votable import from_table

    buf = io.BytesIO()
    with quiet_astropy():
        from_table(t).to_xml(buf, tabledata_format="tabledata", _debug_python_based_parser=True)
    return buf.getvalue()


def _run_upload(tap: TapClient, adql: str, upload: Table, maxrec: int) -> bytes | None:
    """Run the upload join (sync for a few rows, async for many); ``None`` on an overflow."""
    if len(upload) <= SYNC_UPLOAD_ROWS:
        body = tap.sync_body(adql, maxrec, {"sb_pos": _votable_bytes(upload)},
                             what="TAP upload match")
        return None if overflowed(body) else body
    with tempfile.TemporaryDirectory(prefix="sampbridge-upload-") as tmp:
        dest = Path(tmp) / "match.vot"
        res = tap.async_to_file(adql, dest, maxrec, uploads={"sb_pos": upload})
        return None if res.overflow else dest.read_bytes()


def match_by_upload(tap: TapClient, ra: np.ndarray, dec: np.ndarray, valid: np.ndarray,
                    radius: float, columns: Sequence[str], table: str, *,
                    dialect: str = "auto", progress: Progress | None = None) -> Matches:
    """Match with one TAP upload join, in the ADQL dialect the service accepts.

    ``progress(done, total)``, in positions (see :data:`Progress`), is called with 0 before
    the upload and with the total once its answer is read.

    Raises
    ------
    UploadIncomplete
        When the service cut the answer at MAXREC (pairs would be missing).
    CSCError
        When the service refuses the upload or the query, or fails.
    """
    rows = np.flatnonzero(valid)
    if not len(rows):
        return _empty(columns, "upload")
    report = _Reporter(progress, len(rows))
    report(0)
    cols = list(dict.fromkeys([*columns, "ra", "dec"]))
    upload = _upload_body(rows, ra, dec)
    select = ", ".join(f"m.{identifier(c)}" for c in cols)
    maxrec = max(10 * len(rows), 100000)
    top = float(np.max(np.abs(dec[rows])))
    t0 = time.monotonic()

    def run(d: str) -> bytes:
        adql = (f"SELECT u.sb_idx, {select} FROM TAP_UPLOAD.sb_pos AS u "
                f"JOIN {identifier(table)} AS m ON "
                f"{pair_condition(d, radius, max_abs_dec=top)}")
        body = _run_upload(tap, adql, upload, maxrec)
        if body is None:
            raise UploadIncomplete(f"TAP upload match: the service cut the answer at MAXREC "
                                   f"({maxrec:,} rows), so pairs would be missing",
                                   url=tap.url)
        return body

    body, used = tap.with_dialect(run, dialect)
    t = read_table(body)
    report(len(rows))
    log.info("matching: %d positions by one TAP upload (%s dialect) in %.0f ms", len(rows),
             used, (time.monotonic() - t0) * 1000)
    if len(t) == 0:
        return _empty(columns, "upload", 1)
    idx = np.asarray(t["sb_idx"], dtype=int)
    sep = sep_arcsec(ra[idx], dec[idx], np.asarray(t["ra"], float), np.asarray(t["dec"], float))
    keep = sep <= radius * 3600.0
    return Matches(idx[keep], _keep(t, columns)[keep], sep[keep], "upload", 1)


def best_only(m: Matches) -> Matches:
    """Keep the nearest CSC source for each input row."""
    if not len(m):
        return m
    order = np.lexsort((m.sep, m.idx))
    idx = m.idx[order]
    first = np.ones(len(idx), dtype=bool)
    first[1:] = idx[1:] != idx[:-1]
    sel = order[first]
    return Matches(m.idx[sel], m.csc[sel], m.sep[sel], m.strategy, m.requests)


def join(input_table: Table, m: Matches, suffix: str = "_csc") -> Table:
    """Return the input rows joined to their matches (input columns first, units kept)."""
    order = np.lexsort((m.sep, m.idx))
    out = input_table[m.idx[order]]
    csc = m.csc[order]
    for name in csc.colnames:
        col = csc[name]
        new = name + suffix
        while new in out.colnames:
            new += "_"
        out[new] = col
        out[new].meta = dict(col.meta)
        out[new].unit = col.unit
        out[new].description = col.description
    out["sep_arcsec"] = m.sep[order]
    out["sep_arcsec"].unit = "arcsec"
    out["sep_arcsec"].meta["ucd"] = "pos.angDistance"
    out["sep_arcsec"].description = "Distance from the input position to the CSC source"
    out["input_row"] = m.idx[order]
    out["input_row"].description = "0-based row of the input table"
    out["input_row"].meta["ucd"] = "meta.id;meta.number"
    return out
