"""``x-sampbridge.status``: what the running daemon is doing, as JSON, for ``sampbridge status``.

A call with no params; the reply is ``samp.ok`` with ``samp.result = {"json": "<text>"}``, the
object described in docs/user-guide.md ("Asking the daemon"): the hub, the peers and their
subscriptions, the last requests, counters since start, the cache, the mirror and the folders.
It is answered on a worker: asking the hub for its clients, or reading the cache folder, must
not hold up pyvo's server thread.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .. import __version__
from ..samp import Message
from .calls import CallRunner
from .desk import Desk
from .params import error_text

__all__ = ["MTYPE_STATUS", "Status"]

log = logging.getLogger("sampbridge")

MTYPE_STATUS = "x-sampbridge.status"


class Status:
    """Answers :data:`MTYPE_STATUS`.

    Parameters
    ----------
    desk : Desk
        The daemon's shared state.
    calls : CallRunner
        The worker pools, the reply owed and refusals.
    query_folder : Path, optional
        The query folder, when it is enabled.
    """

    def __init__(self, desk: Desk, calls: CallRunner, query_folder: Path | None) -> None:
        self.desk = desk
        self.calls = calls
        self.query_folder = query_folder

    def on_status(self, msg: Message) -> None:
        """Handle :data:`MTYPE_STATUS`: reply the :meth:`snapshot` as JSON text."""
        timer = self.calls.accept(msg, early=False)
        if self.calls.submit(self._reply, msg, timer) is None:
            self.calls.release(msg, timer)

    def _reply(self, msg: Message, timer: Any) -> None:
        try:
            msg.reply_ok({"json": json.dumps(self.snapshot(), ensure_ascii=True)})
        except Exception as exc:  # the worker must always reply
            log.exception("%s from %s failed", msg.mtype, msg.sender_name)
            msg.reply_error(error_text(exc))
        finally:
            self.calls.release(msg, timer)

    def snapshot(self) -> dict[str, Any]:
        """Return the status object (plain JSON types), in the order the schema gives."""
        act = self.desk.activity.snapshot()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started": act["started"],
            "uptime_s": act["uptime_s"],
            "hub": self.hub(),
            "peers": self.peers(),
            "recent": act["recent"],
            "counters": act["counters"],
            "cache": self.cache(),
            "mirror": self.mirror(),
            "results_dir": str(self.desk.engine.results_dir),
            "query_folder": None if self.query_folder is None else str(self.query_folder),
        }

    def hub(self) -> dict[str, Any]:
        """Return the hub's URL and lockfile, whether it is this process's own, and connected."""
        conn = self.desk.conn
        lockfile = getattr(conn, "lockfile", None)
        return {"url": getattr(conn, "hub_url", None),
                "lockfile": None if lockfile is None else str(lockfile),
                "own_hub": conn.own_hub, "connected": conn.connected}

    def peers(self) -> list[dict[str, Any]]:
        """Return the other clients of the hub (id, name, subscriptions), asked afresh."""
        clients = getattr(self.desk.conn, "clients", None)
        if clients is None:
            return []
        try:
            return [{"id": c.id, "name": c.name, "subscriptions": list(c.subscriptions)}
                    for c in clients()]
        except Exception as exc:  # the status must come even when the hub does not answer
            log.warning("status: cannot list the hub's clients: %s", exc)
            return []

    def cache(self) -> dict[str, Any] | None:
        """Return the result cache's folder, entries and bytes, or None when it is off."""
        cache = self.desk.engine.cache
        if cache is None:
            return None
        entries = size = 0
        try:
            with os.scandir(cache.folder) as it:
                for e in it:
                    if e.name.endswith(".part") or not e.is_file(follow_symlinks=False):
                        continue
                    size += e.stat(follow_symlinks=False).st_size
                    entries += e.name.endswith(".json")
        except OSError as exc:
            log.warning("status: cannot read the cache folder: %s", exc)
        return {"dir": str(cache.folder), "entries": entries, "bytes": size}

    def mirror(self) -> dict[str, Any] | None:
        """Return the mirror's state as ``mirror status --json`` gives it, or None."""
        status = getattr(self.desk.engine, "mirror_status", None)
        if status is None:
            return None
        try:
            state = status()
        except Exception as exc:  # a damaged mirror is for `mirror status` to explain
            log.warning("status: cannot read the mirror's state: %s", exc)
            return None
        return json.loads(json.dumps(state, default=str))
