"""TAP async jobs (UWS): create, run, poll, fetch the result, and always delete the job.

:class:`AsyncJobs` runs one query as a job and streams its result to a file; the job is
deleted on the server whatever happens (done, failed, timed out or cancelled).  Its progress
can be followed with ``on_phase(phase, elapsed)``: see :meth:`AsyncJobs.run`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import requests
from pyvo.dal.tap import AsyncTAPJob

from ..errors import Cancelled
from . import http
from .errors import QueryError, ServiceTimeout
from .pyvo_errors import translated
from .tapresult import TapResult
from .votable import StreamScan, check_result

__all__ = ["DOWNLOADING", "FINAL_PHASES", "AsyncJobs", "PhaseHook"]

log = logging.getLogger("sampbridge.csc.tap")

#: a progress hook: called with the phase (a UWS phase, or :data:`DOWNLOADING`) and the
#: seconds since the job was asked for
PhaseHook = Callable[[str, float], None]
#: the phase reported once the result download starts (sampbridge's own, not UWS's)
DOWNLOADING = "DOWNLOADING"
#: UWS phases after which a job runs no more
FINAL_PHASES = ("COMPLETED", "ERROR", "ABORTED")
#: seconds between two reports of an unchanged phase while a job runs
REPORT_EVERY = 1.0


class _Progress:
    """Calls a phase hook, never letting it break the query (a failing hook is logged once)."""

    def __init__(self, hook: PhaseHook | None) -> None:
        self.hook = hook
        self.t0 = time.monotonic()
        self.last: str | None = None
        self.next_report = self.t0 + REPORT_EVERY
        self._failed = False

    def __call__(self, phase: str, *, changed_only: bool = False) -> None:
        if self.hook is None or (changed_only and phase == self.last):
            return
        now = time.monotonic()
        self.last, self.next_report = phase, now + REPORT_EVERY
        try:
            self.hook(phase, now - self.t0)
        except Exception:  # a progress display must not stop the query
            if not self._failed:
                log.warning("a TAP progress hook failed; the query goes on", exc_info=True)
            self._failed = True

    def due(self, now: float) -> bool:
        """Tell whether the unchanged phase is to be reported again."""
        return self.hook is not None and now >= self.next_report


class AsyncJobs:
    """The async side of a TAP service at ``url`` (the base URL, without ``/async``).

    Parameters
    ----------
    url : str
        TAP base URL.
    session : requests.Session
        A session with timeouts.
    max_bytes : int
        Size cap of one result.
    job_timeout : float
        Seconds a job may take before it is aborted and deleted.
    delete_timeout : float
        Seconds a job deletion may take: short, so that a stopping caller leaves promptly.
    """

    def __init__(self, url: str, session: requests.Session, max_bytes: int,
                 job_timeout: float, delete_timeout: float) -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.max_bytes = max_bytes
        self.job_timeout = job_timeout
        self.delete_timeout = delete_timeout
        self._deleting: dict[str, tuple[threading.Event, list[bool]]] = {}
        self._delete_lock = threading.Lock()

    def run(self, adql: str, dest: Path, maxrec: int | None = None, *,
            cancel: threading.Event | None = None,
            on_job: Callable[[str], None] | None = None,
            uploads: Mapping[str, object] | None = None,
            on_phase: PhaseHook | None = None) -> TapResult:
        """Run ``adql`` as a job, poll it, stream its result to ``dest``, delete the job.

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
        on_phase : callable, optional
            ``on_phase(phase, elapsed)``: called with the job's UWS phase (``PENDING``,
            ``QUEUED``, ``EXECUTING``, ``COMPLETED``, ``ERROR``, ``ABORTED``) each time it
            changes, again about once a second while it stays the same, and with
            :data:`DOWNLOADING` when the result download starts; ``elapsed`` is seconds since
            the job was asked for.  Called on the caller's thread; an exception it raises is
            logged and ignored.  ``None`` (the default) reports nothing.
        """
        t0 = time.perf_counter()
        cancel = cancel or threading.Event()
        progress = _Progress(on_phase)
        with translated("TAP query", self.url + "/async"):
            job = AsyncTAPJob.create(self.url, adql, maxrec=maxrec or None, session=self.session,
                                     uploads=dict(uploads) if uploads else None,
                                     FORMAT="votable")
        job_url = job.url
        deleted: bool | None = None
        try:
            progress("PENDING")
            if on_job:
                on_job(job_url)
            with translated("TAP query", job_url):
                job.run()
            phase = self._wait(job, cancel, progress)
            if phase != "COMPLETED":
                with translated("TAP query", job_url):
                    job.raise_if_error()
                raise QueryError(f"TAP query ended in phase {phase}", url=job_url)
            with translated("TAP query", job_url):
                result_url = job.result_uri
            progress(DOWNLOADING)
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
            deleted = exc.job_deleted = self.delete(job_url)
            raise
        finally:
            if deleted is None:
                self.delete(job_url)

    def _wait(self, job: AsyncTAPJob, cancel: threading.Event, progress: _Progress) -> str:
        """Poll the job until a final phase (or the deadline, or ``cancel``); return the phase.

        Polls come 0.05 s apart at first, then 1.5 times further apart, at most 2 s; an
        unchanged phase is reported again about once a second in between.
        """
        deadline = time.monotonic() + self.job_timeout
        interval = 0.05
        next_poll = time.monotonic()
        phase = ""
        while True:
            now = time.monotonic()
            if now >= next_poll:
                with translated("TAP query", job.url):
                    phase = job.phase
                progress(phase, changed_only=True)
                if phase in FINAL_PHASES:
                    return phase
                next_poll, interval = now + interval, min(interval * 1.5, 2.0)
            if progress.due(now):
                progress(phase)
            now = time.monotonic()
            if now >= deadline:
                raise ServiceTimeout(f"TAP query: the job did not finish within "
                                     f"{self.job_timeout:g} s and was deleted", url=job.url)
            wake = min(next_poll, deadline,
                       progress.next_report if progress.hook is not None else next_poll)
            if cancel.wait(max(0.0, wake - now)):
                raise Cancelled("the TAP query was stopped before it finished (sampbridge is "
                                "stopping) and its job was deleted on the server; send it "
                                "again once sampbridge runs", url=job.url)

    def delete(self, job_url: str) -> bool:
        """Delete the job at ``job_url``, within ``delete_timeout`` seconds.

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
