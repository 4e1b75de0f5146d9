"""Delivery: result tables and images to the viewers, and a backlog while no hub is up."""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..engine import ImageResult, TableResult, tabledata_copy
from ..folder import FileOutcome
from ..samp import Delivery
from ..tables import KnownTable
from .desk import Desk
from .params import ms

__all__ = ["Deliverer", "Kept"]

log = logging.getLogger("sampbridge")


@dataclass(frozen=True)
class Kept:
    """A result kept while no hub was up: what, to whom, for whom, and since when."""

    result: TableResult | ImageResult
    #: recipient name patterns (``send_to`` of a query file), or None for the configured ones
    patterns: list[str] | None
    #: who asked, for the log ("file q.yaml", "image m31.fits", a client's name)
    origin: str
    #: ``time.monotonic()`` when it was kept
    since: float


def recipients(outcomes: list[Delivery]) -> str:
    """Who took a result, for the log: replied ones, then those with no reply yet."""
    names = [d.client_name for d in outcomes if d.ok]
    names += [f"{d.client_name} (no reply yet)" for d in outcomes if d.pending]
    return ", ".join(names)


class Deliverer:
    """Sends results by ``table.load.votable`` and ``image.load.fits``; keeps them in a hub outage.

    Parameters
    ----------
    desk : Desk
        The daemon's shared state (the hub connection, the configuration, counters).
    """

    #: seconds a result kept during a hub outage waits for a recipient after the reconnect
    BACKLOG_WAIT = 600.0

    def __init__(self, desk: Desk) -> None:
        self.desk = desk
        self.cfg = desk.cfg
        self._backlog: deque[Kept] = deque(maxlen=self.cfg["hub.backlog"] or None)
        self._backlog_lock = threading.Lock()

    def __len__(self) -> int:
        """Count the results waiting for a hub."""
        return len(self._backlog)

    # -- tables -------------------------------------------------------------------------
    def table(self, res: TableResult, origin: str,
              patterns: list[str] | None = None) -> list[str]:
        """Send a table to ``patterns`` (else ``send_tables_to``); return who took it."""
        conn = self.desk.conn
        params = {"url": res.url, "table-id": res.table_id, "name": res.name}
        self.desk.known.put(KnownTable(res.table_id, res.url, res.path, res.name))
        if self._keep_for_later(res, patterns, origin):
            return []
        outcomes = conn.send("table.load.votable", params,
                             patterns or self.cfg["send_tables_to"],
                             self._table_params_for(res, params))
        if not outcomes and not conn.check_alive():
            self._keep_for_later(res, patterns, origin)
            return []
        sent = [d.client_name for d in outcomes if d.ok]
        for d in outcomes:
            if not d.ok and not d.pending:
                log.warning("table.load.votable to %s failed: %s", d.client_name, d.error)
        self.desk.stats["delivered"] += bool(sent)
        if sent:
            self.desk.activity.count("tables_sent")
        log.info("%s for %s: %d rows%s in %s -> %s", res.what, origin, res.rows,
                 " (truncated at MAXREC)" if res.overflow else "", ms(res.seconds),
                 recipients(outcomes) or f"nobody (kept at {res.path})")
        return sent

    def _table_params_for(self, res: TableResult, params: dict[str, str]
                          ) -> Callable[[str], dict[str, str]]:
        """Per recipient: the TABLEDATA copy for those in ``tables.tabledata_for``."""
        pats = [p.lower() for p in self.cfg["tables.tabledata_for"]]

        def params_for(name: str) -> dict[str, str]:
            if not any(fnmatch.fnmatchcase(name.lower(), p) for p in pats):
                return params
            copy = tabledata_copy(res.path)
            return {**params, "url": copy.resolve().as_uri()}

        return params_for

    # -- images -------------------------------------------------------------------------
    def images(self, res: ImageResult, origin: str, patterns: list[str] | None = None,
               exclude: tuple[str, ...] = ()) -> list[str]:
        """Send each downloaded image to ``patterns`` (else ``send_images_to``) but ``exclude``.

        Returns the names of the clients that took one.
        """
        conn = self.desk.conn
        sent: list[str] = []
        waiting: list[str] = []
        if self._keep_for_later(res, patterns, origin):
            return sent
        for skipped in res.skipped:
            log.warning("image skipped: %s", skipped)
        for img in res.images:
            if img.path is None:            # not downloaded (a SIAP result lists only those)
                continue
            params = {"url": img.path.resolve().as_uri(), "image-id": f"sampbridge-img-"
                      f"{img.path.stem}", "name": img.title or img.path.name}
            outcomes = conn.send("image.load.fits", params,
                                 patterns or self.cfg["send_images_to"], exclude=exclude)
            if not outcomes and not conn.check_alive():
                self._keep_for_later(res, patterns, origin)
                return sent
            for d in outcomes:
                if not d.ok and not d.pending:
                    log.warning("image.load.fits to %s failed: %s", d.client_name, d.error)
            sent += [d.client_name for d in outcomes if d.ok]
            waiting += [d.client_name for d in outcomes if d.pending]
        log.info("%s for %s: %d found, %d downloaded in %s -> %s", res.what, origin, res.found,
                 len(res.images), ms(res.seconds),
                 ", ".join(sorted(set(sent)) + [f"{n} (no reply yet)"
                                                for n in sorted(set(waiting) - set(sent))])
                 or "nobody")
        return sent

    def file(self, outcome: FileOutcome) -> None:
        """Deliver what one query file produced, each result to its ``send_to``."""
        origin = f"file {outcome.query.name}"
        for res, patterns in zip(outcome.results, outcome.send_to, strict=True):
            if isinstance(res, TableResult):
                self.table(res, origin, patterns)
            else:
                self.images(res, origin, patterns)

    # -- the backlog --------------------------------------------------------------------
    def _keep_for_later(self, res: TableResult | ImageResult, patterns: list[str] | None,
                        origin: str) -> bool:
        """Queue a result while no hub is up; True if it was queued."""
        if self.desk.conn.connected or not self.cfg["hub.backlog"]:
            return False
        with self._backlog_lock:
            if len(self._backlog) == self._backlog.maxlen:
                log.warning("delivery backlog full: dropping the oldest result (its file stays)")
            self._backlog.append(Kept(res, patterns, origin, time.monotonic()))
        log.info("no SAMP hub: %s kept for delivery after the reconnect (%d waiting)",
                 res.what, len(self._backlog))
        return True

    def flush(self) -> None:
        """Deliver results kept while no hub was up, once someone can take them.

        Called on every (re)registration and whenever a client declares subscriptions (TOPCAT
        may join the new hub after sampbridge). A result with no recipient yet stays queued
        for up to ``BACKLOG_WAIT`` seconds after the reconnect.
        """
        conn = self.desk.conn
        if not conn.connected:
            return
        with self._backlog_lock:
            items = list(self._backlog)
            self._backlog.clear()
        if items:
            log.info("hub is up: delivering %d results kept meanwhile", len(items))
        keep = []
        for item in items:
            res = item.result
            is_table = isinstance(res, TableResult)
            mtype = "table.load.votable" if is_table else "image.load.fits"
            default = self.cfg["send_tables_to"] if is_table else self.cfg["send_images_to"]
            if not conn.targets(mtype, item.patterns or default):
                if time.monotonic() - item.since < self.BACKLOG_WAIT:
                    keep.append(item)
                continue
            try:
                if isinstance(res, TableResult):
                    self.table(res, item.origin, item.patterns)
                else:
                    self.images(res, item.origin, item.patterns)
            except Exception:
                log.exception("delivering a kept result failed")
        if keep:
            with self._backlog_lock:
                self._backlog.extendleft(reversed(keep))
