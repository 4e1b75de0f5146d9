"""Tables sent to sampbridge: ``table.load.*`` and the match MType, highlight and select.

A table that comes in is fetched and matched against the CSC; a row highlighted in a known
table is a click (:mod:`.pointat`); a row selection of a known table is matched alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from ..engine import MatchResult
from ..model import MatchRequest, RequestError
from ..safefile import ensure_private_dir
from ..samp import Message
from ..tables import KnownTable, TableError, fetch_table
from .calls import CallRunner
from .desk import Desk
from .params import clip, row_number, text_param
from .pointat import PointAt
from .ticker import CallProgress

__all__ = ["MTYPE_MATCH", "MatchJob", "TableCalls"]

log = logging.getLogger("sampbridge")

MTYPE_MATCH = "x-sampbridge.match.table"


@dataclass(frozen=True)
class MatchJob:
    """A table to match: the request (URL, rows, radius, mode) and, once fetched, the table."""

    request: MatchRequest
    entry: KnownTable | None = None

    def __str__(self) -> str:
        req = self.request
        sel = f", {len(req.rows)} selected rows" if req.rows is not None else ""
        return f"match '{req.name}' ({req.table}{sel})"


class TableCalls:
    """Handlers for tables: load and match, highlight a row, select rows.

    Parameters
    ----------
    desk : Desk
        The daemon's shared state (the known tables among it).
    calls : CallRunner
        Runs the fetch and the match on the long pool and replies.
    pointat : PointAt
        Takes a highlighted row's position as a click.
    """

    def __init__(self, desk: Desk, calls: CallRunner, pointat: PointAt) -> None:
        self.desk = desk
        self.cfg = desk.cfg
        self.calls = calls
        self.pointat = pointat
        self.incoming = desk.engine.results_dir / "incoming"

    # -- load and match -----------------------------------------------------------------
    def on_table_load(self, msg: Message) -> None:
        """Handle ``table.load.votable`` / ``table.load.fits`` (not sampbridge's own)."""
        if msg.sender_id == self.desk.conn.self_id:
            return
        self.on_match(msg)

    def on_match(self, msg: Message) -> None:
        """Handle the match MType: fetch the table, match it, send and reply the result."""
        self.calls.query(msg, lambda: self._job(msg), self.match, prepare=self.fetch,
                         long=True, counter="matches")

    def _job(self, msg: Message, rows: tuple[int, ...] | None = None) -> MatchJob:
        p = msg.params
        url = text_param(p, "url")
        if url is None or not url.strip():
            raise TableError("the message has no table 'url'")
        table_id = text_param(p, "table-id") or url
        name = text_param(p, "name") or Path(url.rstrip("/")).name or "table"
        # the same model and the same check of radius and mode as a query file's match
        return MatchJob(MatchRequest.from_params(url.strip(), name, p, rows=rows,
                                                 table_id=table_id))

    def fetch(self, job: MatchJob) -> MatchJob:
        """Fetch and read a table (on a worker, before any reply); remember it."""
        req = job.request
        ensure_private_dir(self.incoming)
        path = fetch_table(str(req.table), self.incoming, self.desk.engine.session,
                           max_bytes=self.cfg["tables.max_bytes"],
                           allow_remote=self.cfg["tables.allow_remote"],
                           deadline=self.cfg["tables.fetch_timeout"], cancel=self.desk.cancel)
        entry = KnownTable(req.table_id or str(req.table), str(req.table), path, req.name)
        entry.table(self.cfg["tables.max_rows"])
        self.desk.known.put(entry)
        return replace(job, entry=entry)

    def match(self, job: MatchJob, progress: CallProgress | None = None) -> MatchResult:
        """Match a fetched table (or its selected rows) against the CSC.

        ``progress`` hears of the positions matched so far, where the engine tells.
        """
        assert job.entry is not None
        req = job.request
        table = job.entry.table(self.cfg["tables.max_rows"])
        rows = None
        if req.rows is not None:
            bad = [r for r in req.rows if not 0 <= r < len(table)]
            if bad:
                raise TableError(f"row {bad[0]} is outside the table, which has {len(table)} "
                                 "rows")
            import numpy as np

            rows = np.asarray(req.rows, dtype=int)
        name = req.name if rows is None else f"{req.name} [{len(rows)} selected]"
        return self.desk.engine.run_match(
            table, name, rows=rows, radius_arcsec=req.radius, mode=req.mode,
            progress=None if progress is None else progress.on_rows)

    # -- rows of a known table ----------------------------------------------------------
    def _known(self, msg: Message) -> KnownTable | None:
        try:
            table_id, url = text_param(msg.params, "table-id"), text_param(msg.params, "url")
        except RequestError as exc:
            self.calls.refuse_or_log(msg, exc)
            return None
        entry = self.desk.known.get(table_id, url)
        if entry is None:
            self.calls.refuse_or_log(msg, TableError(
                f"sampbridge does not know table {clip(table_id or '?')} "
                f"({clip(url or 'no url')}): send the table to sampbridge first"))
        return entry

    def on_highlight(self, msg: Message) -> None:
        """Handle ``table.highlight.row``: the row's position is a click."""
        self.desk.stats["received"] += 1
        entry = self._known(msg)
        if entry is None:
            return
        try:
            row = row_number(msg.params.get("row", ""))
            pos = entry.positions(self.cfg["tables.max_rows"])
            if not 0 <= row < len(pos.ra):
                raise TableError(f"row {row} is outside table '{entry.name}' "
                                 f"({len(pos.ra)} rows)")
            if not pos.valid[row]:
                raise TableError(f"row {row} of '{entry.name}' has no usable position")
        except (TableError, RequestError) as exc:
            self.calls.refuse(msg, exc)
            return
        ra, dec = float(pos.ra[row]), float(pos.dec[row])
        log.info("%s from %s: row %d of '%s' at %.5f %+.5f", msg.mtype, msg.sender_name, row,
                 entry.name, ra, dec)
        if self.desk.echo.is_echo(ra, dec):
            self.pointat.echoed(msg, ra, dec)
            msg.reply_ok({"ignored": "echo"})
            return
        self.pointat.click(msg, ra, dec)
        msg.reply_ok({"accepted": "1"})

    def on_select(self, msg: Message) -> None:
        """Handle ``table.select.rowList``: match the selected rows of a known table."""
        entry = self._known(msg)
        if entry is None:
            self.desk.stats["received"] += 1
            return

        def build() -> MatchJob:
            raw = msg.params.get("row-list")
            if not isinstance(raw, list) or not raw:
                raise RequestError("'row-list' must be a non-empty list of row numbers")
            try:
                rows = tuple(row_number(r, "row-list") for r in raw)
            except RequestError:
                raise RequestError("'row-list' must hold row numbers only") from None
            return MatchJob(MatchRequest(entry.url, entry.name, rows=rows,
                                         table_id=entry.table_id), entry=entry)

        self.calls.query(msg, build, self.match, long=True, counter="matches")
