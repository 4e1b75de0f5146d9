"""One RA slice of ``master_source`` through TAP in plain ADQL, counted, fetched and saved.

The ADQL is ``SELECT cols FROM table WHERE ra >= a AND ra < b`` and ``SELECT COUNT(*)`` over
the same range: no geometry, so it runs on the CXC's TAP as on a standard one.  The first slice
has no lower bound and the last no upper one, so together they hold every row.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..csc.adql import identifier, number
from ..csc.errors import CSCError, ServiceError, ServiceTimeout, ServiceUnreachable
from ..csc.tap import TapClient
from ..csc.votable import overflowed, read_table
from .errors import MirrorError
from .tabledata import fast_columns

__all__ = ["Slice", "SliceSource", "where"]


#: parsing a slice takes about twice its body in memory; downloads stay parallel
_PARSING = threading.Lock()


class _Split(Exception):
    """The slice holds more rows than one request may bring: split it in two."""


@dataclass(frozen=True)
class Slice:
    """RA range [a, b) in degrees; ``key`` names it in the journal."""

    a: float
    b: float

    @property
    def key(self) -> str:
        """The journal's name of the slice."""
        return f"{self.a!r}:{self.b!r}"

    def halves(self) -> tuple[Slice, Slice]:
        """Return the two halves (split at the middle RA)."""
        mid = (self.a + self.b) / 2.0
        return Slice(self.a, mid), Slice(mid, self.b)

    def holds(self, other: Slice) -> bool:
        """Return True when ``other`` is a strict part of this slice."""
        return self.a <= other.a and other.b <= self.b and other != self


def where(s: Slice) -> str:
    """Return the WHERE clause of a slice (empty for the whole sky)."""
    parts = []
    if s.a > 0.0:
        parts.append(f"ra >= {number(s.a)}")
    if s.b < 360.0:
        parts.append(f"ra < {number(s.b)}")
    return (" WHERE " + " AND ".join(parts)) if parts else ""


def _astropy_columns(body: bytes, columns: Sequence[str]
                     ) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Read the slice with astropy (any VOTable serialization), nulls as masks."""
    t = read_table(body)
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for c in columns:
        col = t[c]
        mask = np.ma.getmaskarray(col)
        kind = col.dtype.kind
        fill = False if kind == "b" else "" if kind in "OUS" else 0
        vals = np.asarray(col.filled(fill) if hasattr(col, "filled") else col)
        if kind in "OS":        # variable-length char (arraysize="*") comes as objects
            vals = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in vals],
                            dtype=str)
        out[c] = (vals, mask)
    return out


def _transient(exc: CSCError) -> bool:
    if isinstance(exc, ServiceUnreachable | ServiceTimeout):
        return True
    return isinstance(exc, ServiceError) and (exc.status or 0) >= 500


@dataclass
class SliceSource:
    """Fetches slices of ``table`` from ``tap`` and saves them as part files in ``work``."""

    tap: TapClient
    table: str
    columns: Sequence[str]
    work: Path
    slice_rows: int
    retries: int = 3
    retry_wait: float = 1.0
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(
        4, thread_name_prefix="mirror-count"))

    def _ask(self, adql: str, maxrec: int | None) -> bytes:
        wait = self.retry_wait
        for attempt in range(self.retries + 1):
            try:
                return self.tap.sync_body(adql, maxrec, what="mirror build TAP query")
            except CSCError as exc:
                if attempt == self.retries or not _transient(exc):
                    raise
            time.sleep(wait)
            wait *= 2
        raise AssertionError("unreachable")         # pragma: no cover

    def count(self, s: Slice) -> int:
        """Return ``COUNT(*)`` over the slice."""
        body = self._ask(f"SELECT COUNT(*) AS n FROM {identifier(self.table)}{where(s)}", None)
        t = read_table(body)
        return int(np.asarray(t[t.colnames[0]])[0])

    def fetch(self, s: Slice, counted: int | None = None) -> tuple[int, str | None]:
        """Fetch the slice, check it against its count, save it; return (rows, part file).

        Raises
        ------
        _Split
            When the slice is larger than ``slice_rows`` or the service cut it at MAXREC (the
            rows and their count are asked at once: one round trip, not two).
        MirrorError
            When the service's row count changed between the count and the rows.
        """
        select = ", ".join(identifier(c) for c in self.columns)
        # the count is asked at the same time as the rows (unless the caller counted already)
        counting = self.pool.submit(self.count, s) if counted is None else None
        try:
            body = self._ask(f"SELECT {select} FROM {identifier(self.table)}{where(s)}",
                             self.slice_rows)
        finally:
            n = counting.result() if counting is not None else int(counted or 0)
        if overflowed(body) or n > self.slice_rows:
            if s.b - s.a > 1e-6:
                raise _Split
            raise MirrorError(f"more than {self.slice_rows} rows at RA {s.a:g} deg: raise "
                              "mirror.slice_rows")
        try:
            with _PARSING:     # one slice parsed at a time: ~100 MB each at 50,000 rows
                cols = fast_columns(body, list(self.columns)) or _astropy_columns(
                    body, self.columns)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise MirrorError(f"the TAP service {self.tap.url} sent a slice (RA {s.a:g}-{s.b:g} "
                              f"deg) that cannot be read ({str(exc)[:100]}); run `sampbridge "
                              "mirror build` again later") from None
        del body
        got = len(next(iter(cols.values()))[0])
        if got != n:
            again = self.count(s)
            raise MirrorError(f"the TAP service {self.tap.url} changed its row count during the "
                              f"build (RA {s.a:g}-{s.b:g} deg: {n} rows counted, {got} "
                              f"sent{'' if again == n else f', then {again} counted'}); run "
                              "`sampbridge mirror build` again once the service is stable")
        if n == 0:
            return 0, None
        name = f"part-{s.a!r}-{s.b!r}.npz"
        arrays: dict[str, Any] = {}
        for c, (values, mask) in cols.items():
            arrays["v_" + c] = values
            if mask is not None and mask.any():
                arrays["m_" + c] = mask
        tmp = self.work / (name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.work / name)
        return n, name
