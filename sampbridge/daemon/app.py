"""The daemon: wires the rooms together and registers their handlers with the hub.

This package is the only place that knows both the SAMP layer (:mod:`sampbridge.samp`) and the
query side (:mod:`sampbridge.engine`).  Each room does one job:

- :mod:`.pointat`: clicks (``coord.pointAt.sky``, a highlighted row) to cone, images, overlay;
- :mod:`.queries`: the cone, SIAP and TAP MTypes; :mod:`.tablecalls`: tables in and matches;
- :mod:`.imageload`: an image in, the sources of its footprint out;
- :mod:`.overlays`: error ellipses on DS9 and Aladin; :mod:`.delivery`: results out, backlog;
- :mod:`.calls`: worker pools, the reply each call is owed, the early 'pending' reply;
- :mod:`.status`: ``x-sampbridge.status``; :mod:`.ticker`: ``samp.msg.progress`` of long calls;
- :mod:`.params`: reading params and the sentences that go back; :mod:`.desk`: shared state.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from .. import __version__
from ..config import Config
from ..folder import QueryFolder
from ..samp import HubConnection, Message
from .calls import CallRunner
from .delivery import Deliverer
from .desk import Desk
from .imageload import ImageLoad
from .overlays import Overlays
from .pointat import PointAt
from .queries import MTYPE_CONE, MTYPE_SIAP, MTYPE_TAP, Queries
from .status import MTYPE_STATUS, Status
from .tablecalls import MTYPE_MATCH, TableCalls

__all__ = ["DESCRIPTION", "Daemon"]

log = logging.getLogger("sampbridge")

DESCRIPTION = ("Chandra Source Catalog bridge: click a position in DS9, Aladin or TOPCAT and "
               "get the CSC sources (and images) around it; runs CSC TAP queries on request.")


class Daemon:
    """sampbridge's long-running part.

    Parameters
    ----------
    cfg : Config
        Validated configuration.
    """

    #: seconds a result kept during a hub outage waits for a recipient after the reconnect
    BACKLOG_WAIT = Deliverer.BACKLOG_WAIT

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.desk = desk = Desk(cfg)
        self.engine = desk.engine
        self.cancel = desk.cancel
        self.stats = desk.stats
        self.echo = desk.echo
        self.known = desk.known
        self.delivery = Deliverer(desk)
        self.calls = CallRunner(desk, self.delivery)
        self.overlays = Overlays(desk)
        self.pointat = PointAt(desk, self.calls, self.delivery, self.overlays)
        self.coalescer = self.pointat.coalescer
        self.queries = Queries(desk, self.calls)
        self.tables = TableCalls(desk, self.calls, self.pointat)
        self.images_in = ImageLoad(desk, self.calls, self.delivery, self.overlays)
        folder_dir = Path(os.path.expandvars(cfg["folder.dir"])).expanduser()
        self.status = Status(desk, self.calls, folder_dir if cfg["folder.enabled"] else None)
        self.conn = desk.conn = HubConnection(
            "sampbridge", DESCRIPTION, __version__, self._handlers(), mode=cfg["hub.mode"],
            ping_interval=cfg["hub.ping_interval"], call_timeout=cfg["hub.call_timeout"],
            send_wait=cfg["hub.send_wait"], on_connect=self.delivery.flush,
            on_subscriptions=self.delivery.flush)
        self.folder: QueryFolder | None = None
        if cfg["folder.enabled"]:
            self.folder = QueryFolder(
                folder_dir, self.engine,
                self.delivery.file, settle=cfg["folder.settle"],
                settle_max=cfg["folder.settle_max"], workers=cfg["folder.workers"],
                scan_interval=cfg["folder.scan_interval"], cancel=self.cancel)

    def _handlers(self) -> dict[str, Callable[[Message], None]]:
        """MType -> handler: every room's, as the configuration enables them, each counted."""
        cfg = self.cfg
        # image.load.fits is always subscribed, at registration with the rest: DS9 broadcasts
        # a pan's coord.pointAt.sky only while some other client subscribes to it (and DS9
        # reads a client's subscriptions once, about 1 s after it registers)
        handlers: dict[str, Callable[[Message], None]] = {
            MTYPE_CONE: self.queries.on_cone,
            MTYPE_SIAP: self.queries.on_siap,
            MTYPE_TAP: self.queries.on_tap,
            MTYPE_MATCH: self.tables.on_match,
            "table.highlight.row": self.tables.on_highlight,
            "table.select.rowList": self.tables.on_select,
            "image.load.fits": self.images_in.on_image_load,
            MTYPE_STATUS: self.status.on_status,
        }
        if cfg["tables.subscribe"]:
            handlers["table.load.votable"] = self.tables.on_table_load
            handlers["table.load.fits"] = self.tables.on_table_load
        if cfg["pointat.enabled"]:
            handlers["coord.pointAt.sky"] = self.pointat.on_point_at
        return {mtype: self._counted(handler) for mtype, handler in handlers.items()}

    def _counted(self, handler: Callable[[Message], None]) -> Callable[[Message], None]:
        """Wrap a handler so that every message (and call) it gets is counted."""
        activity = self.desk.activity

        def counted(msg: Message) -> None:
            activity.count("messages")
            if msg.is_call:
                activity.count("calls")
            handler(msg)

        return counted

    # -- what the tests and the benchmarks read ----------------------------------------
    @property
    def points_done(self) -> int:
        """Clicks answered (their table delivered or superseded)."""
        return self.pointat.done

    @property
    def last_latency(self) -> float:
        """Seconds from the last click received to its table delivered."""
        return self.pointat.last_latency

    @property
    def _point_work(self) -> list[Future]:
        return self.pointat.work

    @property
    def _active(self) -> int:
        return self.calls.active

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, wait: float = 0.0) -> None:
        """Connect to (or start) the hub and begin serving."""
        log.info("sampbridge %s: cone %s, SIAP %s, TAP %s; results in %s", __version__,
                 self.cfg["services.cone"], self.cfg["services.siap"], self.cfg["services.tap"],
                 self.engine.results_dir)
        self.conn.start(wait=wait)
        if self.folder is not None:
            self.folder.start()
        if not self.conn.connected:
            log.info("no SAMP hub yet (hub.mode=%s); waiting for one", self.cfg["hub.mode"])

    def stop(self, grace: float = 5.0) -> None:
        """Stop cleanly within about ``grace`` seconds.

        Running async TAP jobs are cancelled (and deleted on the server), the folder's unfinished
        files stay journaled for the next start, every pending call gets a reply, partial
        result files are removed, and the client unregisters from the hub.
        """
        log.info("stopping")
        self.cancel.set()
        if self.folder is not None:
            self.folder.stop(grace)
        self.coalescer.stop(grace)
        self.calls.stop(grace)
        self.conn.stop()
        self.engine.close()
        for part in self.engine.results_dir.glob("**/*.part"):
            part.unlink(missing_ok=True)
        counts = {**self.stats, "coalesced_runs": self.coalescer.ran,
                  "leading": self.coalescer.leading}
        log.info("stopped (%s)", ", ".join(f"{k} {v}" for k, v in counts.items()))
