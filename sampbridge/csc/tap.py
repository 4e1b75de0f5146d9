"""TAP queries, sync or async (UWS with polling), streamed to a file, with MAXREC and overflow.

Cones in ADQL come in three dialects (see :mod:`.adql`): ``geometry`` (CONTAINS), ``csc``
(``dbo.cone_distance``, what the CXC documents) and ``box`` (a plain ra/dec box, the distance
cut done here).  With ``tap.dialect: auto`` a client starts with what ``/capabilities``
promise and, when the service says it does not know a dialect's functions, falls back to the
next one, and remembers per service URL, for the life of the process, what works.

The rooms: this module is the client (capabilities, dialects, sync queries); async jobs are
:mod:`.tapjobs`, what services refuse and what was learnt :mod:`.refusals`, the box
dialect's distance cut :mod:`.conecut`, the result types :mod:`.tapresult`.  Every public
name of those is importable from here as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import requests
from pyvo.dal import TAPService

from .._astropy import quiet_astropy
from ..errors import Cancelled
from . import tapsync
from .adql import DIALECTS, cone_query
from .conecut import cut_to_cone
from .errors import CSCError, QueryError
from .pyvo_errors import translated
from .refusals import (
    forget,
    learnt,
    no_upload,
    refuses_dialect,
    refuses_upload,
    remember_dialect,
)
from .tapjobs import AsyncJobs, PhaseHook
from .tapresult import TapCapabilities, TapResult
from .votable import overflowed

__all__ = ["TapResult", "TapCapabilities", "TapClient", "Cancelled", "PhaseHook",
           "refuses_dialect", "refuses_upload", "learnt", "no_upload", "forget"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_GEO = "ivo://ivoa.net/std/TAPRegExt#features-adqlgeo"


class TapClient:
    """A TAP service at ``url`` (the base URL, without ``/sync``).

    Parameters
    ----------
    url : str
        TAP base URL.
    session : requests.Session
        A session with timeouts.
    max_bytes : int
        Size cap of one result.
    job_timeout : float
        Seconds an async job may take before it is aborted and deleted.
    delete_timeout : float
        Seconds a job deletion may take: short, so that a stopping caller leaves promptly.
    """

    def __init__(self, url: str, session: requests.Session, max_bytes: int = 500_000_000,
                 job_timeout: float = 600.0, delete_timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.max_bytes = max_bytes
        self._caps: TapCapabilities | None = None
        self._lock = threading.Lock()
        self.jobs = AsyncJobs(self.url, session, max_bytes, job_timeout, delete_timeout)

    def capabilities(self) -> TapCapabilities:
        """Read (once) and return the service's capabilities."""
        with self._lock:
            if self._caps is None:
                with translated("reading TAP capabilities", self.url + "/capabilities"), \
                        quiet_astropy():
                    svc = TAPService(self.url, session=self.session)
                    adql = svc.get_tap_capability().get_adql()
                    geo = bool(adql) and all(
                        adql.get_feature(_GEO, form) is not None
                        for form in ("CONTAINS", "POINT", "CIRCLE"))
                    upload = bool(svc.upload_methods)
                self._caps = TapCapabilities(geometry=geo, upload=upload)
                log.info("TAP %s: ADQL geometry %s, upload %s", self.url,
                         "yes" if geo else "no", "yes" if upload else "no")
            return self._caps

    def dialect(self, configured: str = "auto") -> str:
        """Return the ADQL cone dialect to try first.

        That is the configured one; under ``auto``, the one this process learnt works on this
        service, else the one its ``/capabilities`` promise.
        """
        if configured != "auto":
            return configured
        known = learnt(self.url)["dialect"]
        if isinstance(known, str):
            return known
        return self.capabilities().dialect

    def dialects(self, configured: str = "auto") -> list[str]:
        """Return the cone dialects to try, in order (one, unless ``configured`` is ``auto``)."""
        if configured != "auto":
            return [configured]
        try:
            first = self.dialect("auto")
        except CSCError as exc:
            log.warning("cannot read the capabilities of TAP %s (%s); trying each ADQL cone "
                        "dialect in turn", self.url, exc)
            first = DIALECTS[0]
        return list(DIALECTS[DIALECTS.index(first):])

    def with_dialect(self, run: Callable[[str], T], configured: str = "auto") -> tuple[T, str]:
        """Return ``run(dialect)`` for the first dialect the service accepts, and that dialect.

        Under ``auto``, a refusal that names the dialect's functions or says the query could
        not be parsed (see :func:`refuses_dialect`) moves on to the next dialect
        (``geometry``, then ``csc``, then ``box``); the one that works is remembered for this
        service URL, and logged once.

        Raises
        ------
        CSCError
            The error of the last dialect tried, or any error that is not such a refusal.
        """
        order = self.dialects(configured)
        refused: dict[str, str] = {}
        for i, dialect in enumerate(order):
            try:
                out = run(dialect)
            except CSCError as exc:
                if i + 1 == len(order) or not refuses_dialect(exc, dialect):
                    raise
                text = " ".join((exc.service_message or exc.message).split())
                refused[dialect] = text if len(text) <= 160 else text[:157] + "..."
                continue
            if configured == "auto":
                remember_dialect(self.url, dialect, refused)
            return out, dialect
        raise AssertionError("no dialect to try")       # pragma: no cover - order is never empty

    def cone_to_file(self, table: str, ra: float, dec: float, radius: float, dest: Path, *,
                     dialect: str = "auto", maxrec: int | None = None,
                     columns: Sequence[str] = ("*",)) -> TapResult:
        """Run an ADQL cone on ``table`` (sync) and write the rows inside it to ``dest``.

        Parameters
        ----------
        table : str
            The table, e.g. ``csc21.master_source`` (its ``ra`` and ``dec`` columns are used).
        ra, dec, radius : float
            The cone, degrees.
        dest : Path
            Where the VOTable goes.  It is the service's document unchanged, except under the
            ``box`` dialect: the box's rows outside the cone are then dropped here (by
            :meth:`astropy.coordinates.SkyCoord.separation`) and the table is rewritten.
        dialect : str
            ``auto`` (see :meth:`with_dialect`), ``geometry``, ``csc`` or ``box``.
        maxrec : int, optional
            MAXREC.
        columns : sequence of str
            Columns to select; ``ra`` and ``dec`` are added for a box when not selected.
        """
        def run(d: str) -> TapResult:
            cols = list(columns)
            if d == "box" and "*" not in cols:
                cols += [c for c in ("ra", "dec") if c not in cols]
            adql = cone_query(table, ra, dec, radius, d, columns=cols)
            res = self.sync_to_file(adql, dest, maxrec)
            return cut_to_cone(res, ra, dec, radius) if d == "box" else res

        res, used = self.with_dialect(run, dialect)
        res.dialect = used
        return res

    def cone_body(self, table: str, ra: float, dec: float, radius: float, *,
                  dialect: str = "auto", maxrec: int | None = None,
                  columns: Sequence[str] = ("*",)) -> tuple[bytes, str]:
        """Run an ADQL cone on ``table`` (sync) and return its VOTable body, held in memory.

        Network only, no parsing (a match runs many of these on worker threads).  ``ra`` and
        ``dec`` are always selected; under the ``box`` dialect the body holds the whole box,
        and the caller cuts it by distance.

        Returns
        -------
        tuple of (bytes, str)
            The body and the URL it came from.

        Raises
        ------
        QueryError
            When the answer was cut at MAXREC (a cone must be whole), or refused.
        """
        cols = list(dict.fromkeys([*columns, "ra", "dec"]))

        def run(d: str) -> bytes:
            body = self.sync_body(cone_query(table, ra, dec, radius, d, columns=cols), maxrec,
                                  what="TAP cone")
            if overflowed(body):
                raise QueryError(f"TAP cone: the service cut the answer at MAXREC "
                                 f"({maxrec or 'its default'} rows), so matches could be "
                                 "missing; raise tap.maxrec or lower match.batch_cell",
                                 url=self.url)
            return body

        body, _ = self.with_dialect(run, dialect)
        return body, self.url + "/sync"

    # -- sync (see .tapsync) ------------------------------------------------------------
    def sync_body(self, adql: str, maxrec: int | None = None,
                  uploads: Mapping[str, bytes] | None = None, what: str = "TAP query") -> bytes:
        """Run ``adql`` on ``/sync``; return the body in memory (:func:`.tapsync.sync_body`)."""
        return tapsync.sync_body(self.session, self.url, self.max_bytes, adql, maxrec,
                                 uploads, what)

    def sync_to_file(self, adql: str, dest: Path, maxrec: int | None = None) -> TapResult:
        """Run ``adql`` on ``/sync`` and stream the VOTable to ``dest``."""
        return tapsync.sync_to_file(self.session, self.url, self.max_bytes, adql, dest, maxrec)

    # -- async (see .tapjobs) -------------------------------------------------------------
    @property
    def job_timeout(self) -> float:
        """Seconds an async job may take before it is aborted and deleted."""
        return self.jobs.job_timeout

    @job_timeout.setter
    def job_timeout(self, value: float) -> None:
        self.jobs.job_timeout = value

    @property
    def delete_timeout(self) -> float:
        """Seconds a job deletion may take."""
        return self.jobs.delete_timeout

    @delete_timeout.setter
    def delete_timeout(self, value: float) -> None:
        self.jobs.delete_timeout = value

    def async_to_file(self, adql: str, dest: Path, maxrec: int | None = None, *,
                      cancel: threading.Event | None = None,
                      on_job: Callable[[str], None] | None = None,
                      uploads: Mapping[str, object] | None = None,
                      on_phase: PhaseHook | None = None) -> TapResult:
        """Run ``adql`` as an async job and stream its result to ``dest``.

        The parameters, ``on_phase`` included, are those of :meth:`.tapjobs.AsyncJobs.run`.
        """
        return self.jobs.run(adql, dest, maxrec, cancel=cancel, on_job=on_job,
                             uploads=uploads, on_phase=on_phase)

    def delete_job(self, job_url: str) -> bool:
        """Delete the async job at ``job_url`` (see :meth:`.tapjobs.AsyncJobs.delete`)."""
        return self.jobs.delete(job_url)

    def query_to_file(self, adql: str, dest: Path, maxrec: int | None = None, *,
                      mode: str = "async", cancel: threading.Event | None = None,
                      on_job: Callable[[str], None] | None = None,
                      on_phase: PhaseHook | None = None) -> TapResult:
        """Run ``adql`` in ``mode`` (``sync`` or ``async``) and stream the result to ``dest``.

        ``on_phase`` follows an async job (see :meth:`.tapjobs.AsyncJobs.run`); a sync query
        reports nothing.
        """
        if mode == "sync":
            return self.sync_to_file(adql, dest, maxrec)
        return self.async_to_file(adql, dest, maxrec, cancel=cancel, on_job=on_job,
                                  on_phase=on_phase)
