"""Match a table's positions against the CSC: TAP upload, or batched parallel cone searches.

Both strategies return the same pairs (input row, CSC source) with separations computed here by
one formula, so their outputs agree row for row.  No SAMP here.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from astropy.io.votable import parse_single_table
from astropy.table import Table, vstack

from ._astropy import quiet_astropy
from .csc import http
from .csc.adql import identifier, number
from .csc.cone import ConeService
from .csc.pyvo_errors import translated
from .csc.tap import TapClient
from .csc.votable import check_body

__all__ = ["Matches", "match_by_cones", "match_by_upload", "best_only", "join", "plan_cones",
           "sep_arcsec"]

log = logging.getLogger(__name__)


def sep_arcsec(ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray, dec2: np.ndarray
               ) -> np.ndarray:
    """Angular separation in arcsec (haversine), vectorised."""
    r1, d1, r2, d2 = (np.radians(np.asarray(x, dtype=float)) for x in (ra1, dec1, ra2, dec2))
    h = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.minimum(1.0, np.sqrt(h)))) * 3600.0


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


def _fetch_cone(svc: ConeService, ra: float, dec: float, sr: float, verb: int
                ) -> tuple[bytes, str]:
    """Download one cone's VOTable (on a worker thread: network only)."""
    params = svc.params(ra, dec, sr, verb)
    resp = http.request(svc.session, "GET", svc.url, "cone search", retries=svc.retries,
                        params=params)
    with resp:
        http.raise_for_http(resp, "cone search")
        return resp.content, resp.url


def _cone_table(body: bytes, url: str) -> Table:
    """Parse one cone's VOTable (on the calling thread only).

    Parsing in the worker threads crashed the process with SIGSEGV (inside expat, and in a
    garbage collection during astropy's VOTable parser), so the workers only download.
    """
    check_body(body, url, "cone search")
    with quiet_astropy():
        return parse_single_table(io.BytesIO(body)).to_table(use_names_over_ids=True)


def _keep(t: Table, columns: Sequence[str]) -> Table:
    wanted = [c for c in columns if c in t.colnames]
    return t[wanted]


def match_by_cones(svc: ConeService, ra: np.ndarray, dec: np.ndarray, valid: np.ndarray,
                   radius: float, columns: Sequence[str], *, verb: int = 2,
                   parallelism: int = 4, cell: float = 0.1) -> Matches:
    """Match by cone searches, ``parallelism`` at a time, positions batched into cells."""
    rows = np.flatnonzero(valid)
    plan = plan_cones(ra, dec, rows, radius, cell)
    if not plan:
        return _empty(columns, "cone")
    t0 = time.monotonic()
    last_log = [t0]
    done = [0]
    parts_idx: list[np.ndarray] = []
    parts_tab: list[Table] = []
    parts_sep: list[np.ndarray] = []

    def fetch(item: tuple[float, float, float, np.ndarray]) -> tuple[bytes, str]:
        rc, dc, sr, _ = item
        return _fetch_cone(svc, rc, dc, sr, verb)

    def one(item: tuple[float, float, float, np.ndarray], body: bytes, url: str
            ) -> tuple[np.ndarray, Table, np.ndarray]:
        members = item[3]
        t = _cone_table(body, url)
        done[0] += 1
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


def match_by_upload(tap: TapClient, ra: np.ndarray, dec: np.ndarray, valid: np.ndarray,
                    radius: float, columns: Sequence[str], table: str) -> Matches:
    """Match with one TAP upload join (ADQL geometry on the service)."""
    from pyvo.dal import TAPService

    rows = np.flatnonzero(valid)
    if not len(rows):
        return _empty(columns, "upload")
    cols = list(dict.fromkeys([*columns, "ra", "dec"]))
    upload = Table([rows.astype(np.int64), ra[rows], dec[rows]],
                   names=["sb_idx", "sb_ra", "sb_dec"])
    select = ", ".join(f"m.{identifier(c)}" for c in cols)
    adql = (f"SELECT u.sb_idx, {select} FROM TAP_UPLOAD.sb_pos AS u "
            f"JOIN {identifier(table)} AS m ON 1=CONTAINS(POINT('ICRS', m.ra, m.dec), "
            f"CIRCLE('ICRS', u.sb_ra, u.sb_dec, {number(radius)}))")
    t0 = time.monotonic()
    with translated("TAP upload match", tap.url), quiet_astropy():
        svc = TAPService(tap.url, session=tap.session)
        run = svc.run_sync if len(rows) <= 5000 else svc.run_async
        result = run(adql, uploads={"sb_pos": upload}, maxrec=max(10 * len(rows), 100000))
        t = result.to_table()
    log.info("matching: %d positions by one TAP upload in %.0f ms", len(rows),
             (time.monotonic() - t0) * 1000)
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
