"""Calls: the worker pools, the calls still owed a reply, the early 'pending' reply, refusals.

A handler validates on pyvo's server thread and hands the work here; a worker runs it and
replies.  Every accepted call is replied to exactly once: with the result, with a sentence, early
with ``status: pending`` after ``reply_within``, or at shutdown.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..activity import Pending
from ..engine import ImageResult, MatchResult, TableResult
from ..errors import SampBridgeError
from ..model import RequestError
from ..samp import Message
from .delivery import Deliverer
from .desk import Desk
from .params import debug_text, describe, error_text
from .ticker import CallProgress, Ticker

__all__ = ["CUSTOM", "CallRunner", "Run", "result_reply"]

log = logging.getLogger("sampbridge")

Result = TableResult | ImageResult
#: runs a validated request on a worker; may say how far it got through the CallProgress
Run = Callable[[Any, CallProgress], Result]
#: the prefix of sampbridge's own MTypes, whose long calls send samp.msg.progress
CUSTOM = "x-sampbridge."


def result_reply(res: Result, sent: list[str]) -> dict[str, Any] | str:
    """Return the ``samp.result`` of a finished query, or the sentence of a ``samp.error``."""
    if isinstance(res, MatchResult):
        return {"status": "done", "url": res.url, "table-id": res.table_id, "name": res.name,
                "rows": res.rows, "input-rows": res.input_rows,
                "no-position": res.no_position, "unmatched": res.unmatched,
                "strategy": res.strategy, "sent-to": sent}
    if isinstance(res, TableResult):
        return {"status": "done", "url": res.url, "table-id": res.table_id, "name": res.name,
                "rows": res.rows, "overflow": res.overflow, "sent-to": sent}
    urls = [i.path.resolve().as_uri() for i in res.images if i.path is not None]
    if not urls:
        return (f"no image found at that position ({res.found} found, "
                f"{len(res.skipped)} over the size cap)")
    return {"status": "done", "url": urls[0], "urls": urls, "rows": len(urls), "sent-to": sent}


@dataclass(eq=False)
class _Job:
    """One accepted query on its way through a worker: what to run, and its records."""

    msg: Message
    run: Run
    req: Any
    prepare: Callable[[Any], Any] | None
    counter: str | None
    pending: Pending
    progress: CallProgress
    timer: threading.Timer | None = None


class CallRunner:
    """Runs accepted messages on the worker pools and owes each call one reply.

    Parameters
    ----------
    desk : Desk
        The daemon's shared state.
    deliver : Deliverer
        Sends a finished query's result.
    """

    def __init__(self, desk: Desk, deliver: Deliverer) -> None:
        self.desk = desk
        self.cfg = desk.cfg
        self.deliver = deliver
        workers = self.cfg["workers"]
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="query")
        # long work (TAP jobs, table matches) has its own, smaller pool, so that it can never
        # hold up the short queries (cones, SIAP, sky clicks) of the main one
        self.long_pool = ThreadPoolExecutor(max_workers=max(1, workers // 2),
                                            thread_name_prefix="long")
        self._pending: set[Message] = set()
        self._lock = threading.Lock()
        #: sends the progress of long custom calls
        self.ticker = Ticker()
        #: work running on the pools now
        self.active = 0

    # -- accepting and releasing --------------------------------------------------------
    def accept(self, msg: Message, *, early: bool = True) -> threading.Timer | None:
        """Take on a call (defer its reply, owe it one) and arm its early-reply timer.

        ``early=False`` arms none: for a call whose reply is never a result that follows.
        """
        if not msg.is_call:
            return None
        msg.defer()
        with self._lock:
            self._pending.add(msg)
        if not early:
            return None
        timer = threading.Timer(self.cfg["reply_within"], self._reply_pending, (msg,))
        timer.daemon = True
        timer.start()
        return timer

    def release(self, msg: Message, timer: threading.Timer | None = None) -> None:
        """Forget a call replied to (or whose worker is done), and stop its timer."""
        if timer is not None:
            timer.cancel()
        with self._lock:
            self._pending.discard(msg)

    def _reply_pending(self, msg: Message) -> None:
        if msg.reply_ok({"status": "pending", "message": "The query is still running; its "
                         "result will be sent with table.load.votable when it is ready."}):
            log.info("%s from %s: replied 'pending' after %.0f s", msg.mtype, msg.sender_name,
                     self.cfg["reply_within"])

    def submit(self, fn: Callable[..., Any], *args: Any, long: bool = False) -> Future | None:
        """Run ``fn`` on a pool (the long one for ``long``), counting it while it runs.

        Returns None when the pools are shut down; a :class:`Message` among ``args`` is then
        told so.
        """
        def counted() -> Any:
            with self._lock:
                self.active += 1
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self.active -= 1
        try:
            return (self.long_pool if long else self.executor).submit(counted)
        except RuntimeError:            # shutting down
            msg = next((a for a in args if isinstance(a, Message)), None)
            if msg is not None:
                msg.reply_error("sampbridge is stopping; send the request again once it runs")
            return None

    # -- refusing -----------------------------------------------------------------------
    def refuse(self, msg: Message, exc: Exception, pending: Pending | None = None) -> None:
        """Count and log an error; reply it to a call as ``samp.error`` with its sentence.

        The error goes into the activity record: into ``pending`` (which its runner records)
        or, for a message refused before it ran, as a request of its own.
        """
        self.desk.stats["errors"] += 1
        text = error_text(exc)
        log.warning("%s from %s refused: %s", msg.mtype, msg.sender_name, text)
        if msg.is_call:
            msg.reply_error(text, debug=debug_text(exc))
        self._note(msg, text, pending)

    def _note(self, msg: Message, text: str, pending: Pending | None) -> None:
        if pending is not None:
            pending.error = text
        else:
            self.desk.activity.record(msg.sender_name, msg.mtype, "refused", error=text)

    def refuse_or_fail(self, msg: Message, exc: Exception, accepted: bool,
                       pending: Pending | None = None) -> None:
        """Refuse a message not accepted yet; once accepted, log why its work failed."""
        if not accepted:
            self.refuse(msg, exc, pending)
            return
        self.desk.stats["errors"] += 1
        text = error_text(exc)
        log.error("%s from %s: %s", msg.mtype, msg.sender_name, text)
        self._note(msg, text, pending)

    def refuse_or_log(self, msg: Message, exc: RequestError) -> None:
        """Refuse a call; for a notification, which nobody hears back from, only log.

        Either way the activity record keeps it: a highlight of a table sampbridge does not
        know is a click that did nothing, and ``sampbridge status`` should say why.
        """
        if msg.is_call:
            self.refuse(msg, exc)
        else:
            log.debug("%s from %s: %s", msg.mtype, msg.sender_name, exc)
            self._note(msg, str(exc), None)

    # -- queries ------------------------------------------------------------------------
    def query(self, msg: Message, build: Callable[[], Any], run: Run,
              prepare: Callable[[Any], Any] | None = None, *, long: bool = False,
              counter: str | None = None) -> None:
        """Validate now, run on a worker, reply when done or early with 'pending'.

        The early-reply timer starts now, when the call is accepted, so the caller hears back
        within ``reply_within`` however busy the workers are.  ``long`` work (TAP jobs, table
        matches) runs on its own bounded pool, so it cannot hold up short queries.
        ``prepare`` runs on the worker first: a table is fetched there, because some senders
        (STILTS) withdraw its URL once they get a reply; a fetch still running at
        ``reply_within`` gets the 'pending' reply all the same.

        A call of sampbridge's own MTypes (:data:`CUSTOM`) that runs longer than a second
        sends ``samp.msg.progress`` (see :mod:`.ticker`); ``run`` gets the call's
        :class:`.CallProgress` to say more.  ``counter`` names the activity counter that the
        run adds to.
        """
        self.desk.stats["received"] += 1
        try:
            req = build()
        except RequestError as exc:
            self.refuse(msg, exc)
            return
        log.info("%s from %s: %s", msg.mtype, msg.sender_name, req)
        what = describe(req)
        job = _Job(msg, run, req, prepare, counter,
                   self.desk.activity.begin(msg.sender_name, msg.mtype, what),
                   self.ticker.track(msg, f"{msg.mtype}: {what}",
                                     send=msg.mtype.startswith(CUSTOM)))
        job.timer = self.accept(msg)
        if self.submit(self._run_and_reply, job, long=long) is None:
            self._end(job)

    def _end(self, job: _Job) -> None:
        self.ticker.done(job.progress)
        self.release(job.msg, job.timer)
        self.desk.activity.end(job.pending)

    def _run_and_reply(self, job: _Job) -> None:
        msg, req = job.msg, job.req
        try:
            if job.prepare is not None:
                job.progress.update(f"{msg.mtype}: fetching {describe(req)}")
                req = job.prepare(req)
                job.progress.update(f"{msg.mtype}: {describe(req)}")
            if job.counter:
                self.desk.activity.count(job.counter)
            res = job.run(req, job.progress)
            job.pending.rows = res.rows if isinstance(res, TableResult) else len(res.images)
            self.desk.stats["queries"] += 1
            if isinstance(res, TableResult):
                sent = self.deliver.table(res, msg.sender_name)
            else:
                sent = self.deliver.images(res, msg.sender_name)
            if isinstance(res, MatchResult):
                log.info("%s: %d input rows, %d without a position, %d without a match "
                         "(%s strategy)", res.name, res.input_rows, res.no_position,
                         res.unmatched, res.strategy)
            reply = result_reply(res, sent)
            job.progress.update(f"{msg.mtype}: done")
            self.ticker.done(job.progress)
            if isinstance(reply, str):
                job.pending.error = reply
                if msg.is_call:
                    msg.reply_error(reply)
            else:
                msg.reply_ok(reply)
        except SampBridgeError as exc:
            self.refuse(msg, exc, job.pending)
        except OSError as exc:
            self.refuse(msg, RequestError(f"file error: {exc}"), job.pending)
        except Exception as exc:  # the worker must always reply
            log.exception("%s from %s failed", msg.mtype, msg.sender_name)
            self.refuse(msg, exc, job.pending)
        finally:
            self._end(job)

    # -- stopping -----------------------------------------------------------------------
    def stop(self, grace: float) -> None:
        """Stop taking work, let running work finish for ``grace`` s, reply to every call owed."""
        self.ticker.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.long_pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace
        while self.active and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.active:
            log.warning("stopping with %d queries still running", self.active)
        with self._lock:
            pending = list(self._pending)
        for msg in pending:
            msg.reply_error("sampbridge stopped before this request finished; send it again "
                            "once sampbridge runs")
