"""TAP queries, sync or async (UWS with polling), streamed to a file, with MAXREC and overflow."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
from pyvo.dal import TAPService
from pyvo.dal.tap import AsyncTAPJob

from .._astropy import quiet_astropy
from . import http
from .errors import CSCError, QueryError, ServiceTimeout
from .pyvo_errors import translated
from .votable import StreamScan, VOTableSummary, check_result

__all__ = ["TapResult", "TapCapabilities", "TapClient", "Cancelled"]

log = logging.getLogger(__name__)

_GEO = "ivo://ivoa.net/std/TAPRegExt#features-adqlgeo"


class Cancelled(CSCError):
    """The query was cancelled by its caller (e.g. at shutdown); its job was deleted.

    ``job_deleted`` says whether the service confirmed the deletion (``None`` when no job
    was made).
    """

    job_deleted: bool | None = None


@dataclass
class TapResult:
    """A TAP result written to ``path``."""

    path: Path
    summary: VOTableSummary
    url: str
    seconds: float
    job_url: str | None = None

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
        """Return the ADQL cone dialect: the configured one, or the one the service supports."""
        if configured != "auto":
            return configured
        return self.capabilities().dialect

    # -- sync ---------------------------------------------------------------------------
    def _params(self, adql: str, maxrec: int | None) -> dict[str, str]:
        p = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": adql}
        if maxrec:
            p["MAXREC"] = str(int(maxrec))
        return p

    def sync_to_file(self, adql: str, dest: Path, maxrec: int | None = None) -> TapResult:
        """Run ``adql`` on ``/sync`` and stream the VOTable to ``dest``."""
        t0 = time.perf_counter()
        url = self.url + "/sync"
        scan = StreamScan()
        http.download(self.session, url, dest, what="TAP query", method="POST",
                      data=self._params(adql, maxrec), max_bytes=self.max_bytes,
                      on_chunk=scan.feed)
        try:
            summary = check_result(dest, url, "TAP query", scan)
        except Exception:
            dest.unlink(missing_ok=True)
            raise
        return TapResult(dest, summary, url, time.perf_counter() - t0)

    # -- async --------------------------------------------------------------------------
    def async_to_file(self, adql: str, dest: Path, maxrec: int | None = None, *,
                      cancel: threading.Event | None = None,
                      on_job: Callable[[str], None] | None = None) -> TapResult:
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
        """
        t0 = time.perf_counter()
        cancel = cancel or threading.Event()
        with translated("TAP query", self.url + "/async"):
            job = AsyncTAPJob.create(self.url, adql, maxrec=maxrec or None, session=self.session)
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
                          max_bytes=self.max_bytes, retries=2, on_chunk=scan.feed)
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
        try:
            with self.session.delete(job_url, allow_redirects=False, timeout=timeout) as resp:
                status = resp.status_code
        except Exception as exc:  # noqa: BLE001 - a failed cleanup must not hide the result
            why = (f"no answer within {self.delete_timeout:g} s"
                   if isinstance(exc, requests.Timeout) else "the service is unreachable")
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
