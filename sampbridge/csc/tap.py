"""TAP queries, sync or async (UWS with polling), streamed to a file, with MAXREC and overflow.

Cones in ADQL come in three dialects (see :mod:`.adql`): ``geometry`` (CONTAINS), ``csc``
(``dbo.cone_distance``, what the CXC documents) and ``box`` (a plain ra/dec box, the distance
cut done here).  With ``tap.dialect: auto`` a client starts with what ``/capabilities``
promise and, when the service says it does not know a dialect's functions, falls back to the
next one, and remembers per service URL, for the life of the process, what works.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import requests
from pyvo.dal import TAPService
from pyvo.dal.tap import AsyncTAPJob

from .._astropy import quiet_astropy
from ..errors import Cancelled
from . import http
from .adql import DIALECTS, cone_query
from .errors import CSCError, QueryError, ServiceError, ServiceTimeout
from .pyvo_errors import translated
from .votable import StreamScan, VOTableSummary, check_body, check_result, nulls_kept

__all__ = ["TapResult", "TapCapabilities", "TapClient", "Cancelled", "refuses_dialect",
           "refuses_upload", "learnt", "no_upload", "forget"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_GEO = "ivo://ivoa.net/std/TAPRegExt#features-adqlgeo"

#: words that name each dialect's functions in a service's refusal
_DIALECT_WORDS = {
    "geometry": re.compile(r"\b(contains|circle|point|geometr\w*|adqlgeo)\b", re.I),
    "csc": re.compile(r"cone_distance|\bdbo\b", re.I),
}
#: how services say that they cannot read a query (a form they do not know)
_UNREADABLE = re.compile(r"pars(e|ing)|syntax|not found|unknown|not (be )?supported|unsupported|"
                         r"not recogni[sz]ed|undefined|no such function|not implemented", re.I)


def _refusal_text(exc: BaseException) -> str | None:
    """Return the service's words refusing a query (QUERY_STATUS=ERROR, HTTP 400), else None."""
    if isinstance(exc, QueryError) or (isinstance(exc, ServiceError) and exc.status == 400):
        return exc.service_message or ""
    return None


def refuses_dialect(exc: BaseException, dialect: str) -> bool:
    """Return True when ``exc`` is a service saying it cannot run ``dialect``'s cone.

    That is a refused query (``QUERY_STATUS=ERROR``, or HTTP 400) whose text names one of the
    dialect's functions or says the query could not be parsed.  A timeout, an unreachable
    service or a server failure (5xx) is not: those say nothing about the dialect; nor is a
    refused upload (see :func:`refuses_upload`).  Nothing comes after ``box``, so it is never
    refused in this sense.
    """
    text = _refusal_text(exc)
    if text is None or dialect not in _DIALECT_WORDS or refuses_upload(exc):
        return False
    return bool(_DIALECT_WORDS[dialect].search(text) or _UNREADABLE.search(text))


_NO = (r"(not (be )?supported|unsupported|not available|unavailable|not allowed|not permitted|"
       r"disabled|not enabled|unknown|not recogni[sz]ed|not implemented)")
_NO_UPLOAD = re.compile(rf"upload[^.;]*{_NO}|{_NO}[^.;]*upload", re.I)


def refuses_upload(exc: BaseException) -> bool:
    """Return True when ``exc`` is a service saying that it takes no table upload.

    That is a refused query (``QUERY_STATUS=ERROR``, or HTTP 400) whose words say, in one
    sentence, that UPLOAD is not supported (or not available, unknown, disabled...); an upload
    the service could not read is an error of its own, not this.
    """
    text = _refusal_text(exc)
    return text is not None and _NO_UPLOAD.search(text) is not None


class _Learnt:
    """What services turned out to accept, per service URL, for the life of the process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.dialect: dict[str, str] = {}
        self.no_upload: set[str] = set()

    def set_dialect(self, url: str, dialect: str, refused: dict[str, str]) -> None:
        with self.lock:
            if self.dialect.get(url) == dialect:
                return
            self.dialect[url] = dialect
        if refused:
            why = "; ".join(f"'{d}' refused ({text})" for d, text in refused.items())
            log.warning("TAP %s: %s; ADQL cones use the '%s' dialect from now on%s", url, why,
                        dialect, " (an ra/dec box, the distance cut done here)"
                        if dialect == "box" else "")
        else:
            log.info("TAP %s: ADQL cones use the '%s' dialect", url, dialect)

    def set_no_upload(self, url: str, text: str) -> bool:
        with self.lock:
            if url in self.no_upload:
                return False
            self.no_upload.add(url)
        log.warning("TAP %s refused a table upload (%s); matches use cone searches from now "
                    "on", url, text)
        return True


_LEARNT = _Learnt()


def learnt(url: str) -> dict[str, object]:
    """Return what this process learnt about the TAP service at ``url``.

    Returns
    -------
    dict
        ``dialect`` (the cone dialect that works, or ``None`` before a cone ran) and
        ``upload`` (False once the service refused an upload).
    """
    url = url.rstrip("/")
    with _LEARNT.lock:
        return {"dialect": _LEARNT.dialect.get(url), "upload": url not in _LEARNT.no_upload}


def no_upload(url: str, why: str) -> bool:
    """Remember that the service at ``url`` refused an upload (logged once); True if new."""
    return _LEARNT.set_no_upload(url.rstrip("/"), why)


def forget(url: str) -> None:
    """Forget what was learnt about the service at ``url`` (after the service changed)."""
    url = url.rstrip("/")
    with _LEARNT.lock:
        _LEARNT.dialect.pop(url, None)
        _LEARNT.no_upload.discard(url)


@dataclass
class TapResult:
    """A TAP result written to ``path``."""

    path: Path
    summary: VOTableSummary
    url: str
    seconds: float
    job_url: str | None = None
    dialect: str | None = None

    @property
    def rows(self) -> int:
        """Number of rows in the result."""
        return self.summary.rows

    @property
    def overflow(self) -> bool:
        """True when MAXREC cut the result short (``QUERY_STATUS=OVERFLOW``)."""
        return self.summary.overflow


@dataclass(frozen=True)
class TapCapabilities:
    """What a TAP service's ``/capabilities`` say that matters here."""

    geometry: bool
    upload: bool

    @property
    def dialect(self) -> str:
        """``geometry`` where CONTAINS, POINT and CIRCLE are listed, else ``csc``."""
        return "geometry" if self.geometry else "csc"


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
        self.job_timeout = job_timeout
        self.delete_timeout = delete_timeout
        self._caps: TapCapabilities | None = None
        self._lock = threading.Lock()
        self._deleting: dict[str, tuple[threading.Event, list[bool]]] = {}
        self._delete_lock = threading.Lock()  # not _lock: that one is held over a network read

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
                _LEARNT.set_dialect(self.url, dialect, refused)
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
            return _cut_to_cone(res, ra, dec, radius) if d == "box" else res

        res, used = self.with_dialect(run, dialect)
        res.dialect = used
        return res

    # -- sync ---------------------------------------------------------------------------
    def _params(self, adql: str, maxrec: int | None) -> dict[str, str]:
        p = {"REQUEST": "doQuery", "LANG": "ADQL", "FORMAT": "votable", "QUERY": adql}
        if maxrec:
            p["MAXREC"] = str(int(maxrec))
        return p

    def sync_body(self, adql: str, maxrec: int | None = None,
                  uploads: Mapping[str, bytes] | None = None, what: str = "TAP query") -> bytes:
        """Run ``adql`` on ``/sync`` and return the result body, held in memory (within the cap).

        For small results that are parsed next (cones of a match, an upload match).  A 303
        answer is followed with a GET, as TAP wants.

        Parameters
        ----------
        adql : str
            The query.
        maxrec : int, optional
            MAXREC.
        uploads : mapping of str to bytes, optional
            Tables to upload: name (``TAP_UPLOAD.<name>``) to VOTable document.
        what : str
            What the query is, for messages.

        Raises
        ------
        QueryError
            When the service refuses the query or the upload (in its own words).
        ResultTooLarge
            When the answer is over the size cap.
        """
        data = self._params(adql, maxrec)
        files = None
        if uploads:
            data["UPLOAD"] = ";".join(f"{name},param:{name}" for name in uploads)
            files = {name: (f"{name}.vot", body, "application/x-votable+xml")
                     for name, body in uploads.items()}
        resp = http.request(self.session, "POST", self.url + "/sync", what, stream=True,
                            idempotent=True, data=data, files=files)
        with resp:
            http.raise_for_http(resp, what)
            body = http.read_capped(resp, what, self.max_bytes)
            url = resp.url
        check_body(body, url, what)
        return body

    def sync_to_file(self, adql: str, dest: Path, maxrec: int | None = None) -> TapResult:
        """Run ``adql`` on ``/sync`` and stream the VOTable to ``dest``."""
        t0 = time.perf_counter()
        url = self.url + "/sync"
        scan = StreamScan()
        http.download(self.session, url, dest, what="TAP query", method="POST",
                      idempotent=True, data=self._params(adql, maxrec),
                      max_bytes=self.max_bytes, on_chunk=scan.feed)
        try:
            summary = check_result(dest, url, "TAP query", scan)
        except Exception:
            dest.unlink(missing_ok=True)
            raise
        return TapResult(dest, summary, url, time.perf_counter() - t0)

    # -- async --------------------------------------------------------------------------
    def async_to_file(self, adql: str, dest: Path, maxrec: int | None = None, *,
                      cancel: threading.Event | None = None,
                      on_job: Callable[[str], None] | None = None,
                      uploads: Mapping[str, object] | None = None) -> TapResult:
        """Run ``adql`` as an async job, poll it, stream its result to ``dest``, delete the job.

        Parameters
        ----------
        adql : str
            The query, passed as it is.
        dest : Path
            Where the VOTable goes (written atomically).
        maxrec : int, optional
            MAXREC; ``None`` leaves the service default.
        cancel : threading.Event, optional
            When set, the job is aborted and deleted and :class:`Cancelled` is raised.
        on_job : callable, optional
            Called with the job URL once the job exists.
        uploads : mapping, optional
            Tables to upload (name to an astropy Table), as pyvo takes them.
        """
        t0 = time.perf_counter()
        cancel = cancel or threading.Event()
        with translated("TAP query", self.url + "/async"):
            job = AsyncTAPJob.create(self.url, adql, maxrec=maxrec or None, session=self.session,
                                     uploads=dict(uploads) if uploads else None,
                                     FORMAT="votable")
        job_url = job.url
        deleted: bool | None = None
        try:
            if on_job:
                on_job(job_url)
            with translated("TAP query", job_url):
                job.run()
            phase = self._wait(job, cancel)
            if phase != "COMPLETED":
                with translated("TAP query", job_url):
                    job.raise_if_error()
                raise QueryError(f"TAP query ended in phase {phase}", url=job_url)
            with translated("TAP query", job_url):
                result_url = job.result_uri
            scan = StreamScan()
            http.download(self.session, result_url, dest, what="TAP result download",
                          max_bytes=self.max_bytes, on_chunk=scan.feed)
            try:
                summary = check_result(dest, result_url, "TAP query", scan)
            except Exception:
                dest.unlink(missing_ok=True)
                raise
            return TapResult(dest, summary, result_url, time.perf_counter() - t0, job_url)
        except Cancelled as exc:
            deleted = exc.job_deleted = self.delete_job(job_url)
            raise
        finally:
            if deleted is None:
                self.delete_job(job_url)

    def _wait(self, job: AsyncTAPJob, cancel: threading.Event) -> str:
        deadline = time.monotonic() + self.job_timeout
        interval = 0.05
        while True:
            with translated("TAP query", job.url):
                phase = job.phase
            if phase in ("COMPLETED", "ERROR", "ABORTED"):
                return phase
            now = time.monotonic()
            if now >= deadline:
                raise ServiceTimeout(f"TAP query: the job did not finish within "
                                     f"{self.job_timeout:g} s and was deleted", url=job.url)
            if cancel.wait(min(interval, deadline - now)):
                raise Cancelled("the TAP query was stopped before it finished (sampbridge is "
                                "stopping) and its job was deleted on the server; send it "
                                "again once sampbridge runs", url=job.url)
            interval = min(interval * 1.5, 2.0)

    def delete_job(self, job_url: str) -> bool:
        """Delete the async job at ``job_url``, within ``delete_timeout`` seconds.

        Parameters
        ----------
        job_url : str
            The job's URL.

        Returns
        -------
        bool
            True when the job is gone (deleted now, or already unknown to the service);
            False when the service could not be reached or refused (a warning is logged).
            A second caller while a deletion is under way waits for its outcome.
        """
        with self._delete_lock:
            running = self._deleting.get(job_url)
            if running is None:
                running = self._deleting[job_url] = (threading.Event(), [])
                mine = True
            else:
                mine = False
        done, outcome = running
        if not mine:
            done.wait(self.delete_timeout + 1.0)
            return bool(outcome and outcome[0])
        try:
            outcome.append(self._send_delete(job_url))
        finally:
            done.set()
            with self._delete_lock:
                self._deleting.pop(job_url, None)
        return outcome[0]

    def _send_delete(self, job_url: str) -> bool:
        connect = getattr(self.session, "timeout", (self.delete_timeout,))[0]
        timeout = (min(connect, self.delete_timeout), self.delete_timeout)
        try:   # tried once: a stopping caller must leave promptly
            with http.request(self.session, "DELETE", job_url, "TAP job deletion", retries=0,
                              allow_redirects=False, timeout=timeout) as resp:
                status = resp.status_code
        except Exception as exc:  # a failed cleanup must not hide the result
            why = (f"no answer within {self.delete_timeout:g} s"
                   if isinstance(exc, ServiceTimeout) else "the service is unreachable")
            log.warning("could not delete TAP job %s: %s", job_url, why)
            return False
        if status < 400 or status in (404, 410):
            return True
        log.warning("could not delete TAP job %s: HTTP %d", job_url, status)
        return False

    def query_to_file(self, adql: str, dest: Path, maxrec: int | None = None, *,
                      mode: str = "async", cancel: threading.Event | None = None,
                      on_job: Callable[[str], None] | None = None) -> TapResult:
        """Run ``adql`` in ``mode`` (``sync`` or ``async``) and stream the result to ``dest``."""
        if mode == "sync":
            return self.sync_to_file(adql, dest, maxrec)
        return self.async_to_file(adql, dest, maxrec, cancel=cancel, on_job=on_job)


def _cut_to_cone(res: TapResult, ra: float, dec: float, radius: float) -> TapResult:
    """Keep the rows of a box result that lie within ``radius`` degrees of (ra, dec).

    The distance is astropy's (:meth:`~astropy.coordinates.SkyCoord.separation`).  The
    document is read with its nulls kept (see :func:`.votable.nulls_kept`) and written again
    as TABLEDATA with astropy's Python writer (its C writer corrupted memory, see
    ``engine._write_votable``); an overflow of the box stays an overflow of the cone.
    """
    if res.rows == 0:
        return res
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.io.votable import parse

    with quiet_astropy():
        vot = parse(io.BytesIO(nulls_kept(res.path.read_bytes())), verify="ignore")
        table = vot.get_first_table()
        names = [f.name for f in table.fields]
        if "ra" not in names or "dec" not in names:
            raise ServiceError("TAP cone: the box result has no ra/dec columns to cut it by",
                               url=res.url)
        arr = table.array
        sep = SkyCoord(np.asarray(arr["ra"], float) * u.deg,
                       np.asarray(arr["dec"], float) * u.deg).separation(
            SkyCoord(ra * u.deg, dec * u.deg))
        table.array = arr[np.asarray(sep.deg <= radius)]
        table.format = "tabledata"
        part = res.path.with_name(res.path.name + ".part")
        try:
            with open(part, "wb") as fh:
                vot.to_xml(fh, tabledata_format="tabledata", _debug_python_based_parser=True)
            part.replace(res.path)
        finally:
            part.unlink(missing_ok=True)
    summary = check_result(res.path, res.url, "TAP cone")
    if res.overflow:
        summary.status = "OVERFLOW"
    return TapResult(res.path, summary, res.url, res.seconds, res.job_url, res.dialect)
