"""The engine's side of the local mirror: which one, whether it may answer, and answering.

:mod:`sampbridge.mirror` takes explicit parameters; this module reads them from the
configuration (``cone.source``, ``mirror.*``, the release and the service URLs) for the engine
and the command line.  A mirror that is absent, of another release or service, or damaged is
reported once in the log and in :meth:`MirrorSide.status`, and the service answers instead.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import mirror as mirror_pkg
from .config import Config
from .csc.cone import ConeService
from .csc.tap import TapClient
from .match import Matches
from .mirror import Mirror, MirrorError, MirrorUnusable
from .model import ConeRequest
from .results import TableResult

__all__ = ["MirrorSide", "mirror_root", "RECHECK"]

#: seconds between two looks at the mirror's manifest (has a build replaced it?)
RECHECK = 5.0

log = logging.getLogger(__name__)


def mirror_root(cfg: Config) -> Path:
    """Return the folder of mirrors: ``mirror.dir``, else ``$XDG_DATA_HOME/sampbridge/mirror``."""
    raw = cfg["mirror.dir"]
    if not raw:
        return mirror_pkg.default_root()
    return Path(os.path.expandvars(os.path.expanduser(raw)))


class MirrorSide:
    """The mirror an engine may answer from (opened once, at start), per ``cone.source``.

    Parameters
    ----------
    cfg : Config
        The configuration.
    tap, cone : TapClient, ConeService
        The engine's clients (a build uses them; the mirror is pinned to their URLs).
    open_now : bool
        Open the mirror now (an engine); the ``mirror`` commands open it only to check it.
    """

    def __init__(self, cfg: Config, tap: TapClient, cone: ConeService, *,
                 open_now: bool = True) -> None:
        self.cfg = cfg
        self.tap = tap
        self.cone_service = cone
        self.root = mirror_root(cfg)
        self.services = {"tap": cfg["services.tap"], "cone": cfg["services.cone"]}
        self.mirror: Mirror | None = None
        self.reason = ""
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        if open_now and cfg["cone.source"] != "service":
            self.reopen()

    def _manifest_stamp(self) -> tuple[int, int] | None:
        try:
            st = (mirror_pkg.release_dir(self.root, self.cfg["release"])
                  / "manifest.json").stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_ino

    def current(self) -> Mirror | None:
        """Return the mirror, reopened first when a build or a removal changed it.

        At most every :data:`RECHECK` seconds one ``stat`` of the manifest: a ``mirror build``
        or ``mirror remove`` while a daemon runs takes effect without a restart.
        """
        now = time.monotonic()
        if self.cfg["cone.source"] != "service" and now - self._checked >= RECHECK:
            self._checked = now
            if self._manifest_stamp() != self._stamp:
                self.reopen(close_old=False)     # a cone may still read the old one
        return self.mirror

    def reopen(self, close_old: bool = True) -> Mirror | None:
        """(Re)open the mirror of the configured release; None, and the reason kept, if none."""
        with self._lock:
            old, self.mirror = self.mirror, None
            if old is not None and close_old:
                old.close()
            self._stamp = self._manifest_stamp()
            self._checked = time.monotonic()
            try:
                t0 = time.perf_counter()
                self.mirror = mirror_pkg.open_mirror(self.root, self.cfg["release"],
                                                     self.services)
                self.reason = ""
                log.info("answering from the mirror of CSC %s (%d rows, opened in %.0f ms)",
                         self.cfg["release"], self.mirror.rows,
                         (time.perf_counter() - t0) * 1000)
            except MirrorUnusable as exc:
                self.reason = str(exc)
                # no mirror at all is the usual case: said only under -v (and in status)
                level = logging.DEBUG if exc.state == "absent" else logging.WARNING
                if self.cfg["cone.source"] == "mirror":
                    level = logging.WARNING
                log.log(level, "mirror not used, the service answers: %s", exc)
            return self.mirror

    def for_cone(self, verb: int) -> Mirror | None:
        """Return the mirror when it may answer a cone at ``verb``, else None."""
        m = self.current()
        if m is None or self.cfg["cone.source"] == "service" or self.cfg["cone.service"] == "tap":
            return None
        return m if m.fields(verb) is not None else None

    def for_match(self, columns: Sequence[str]) -> Mirror | None:
        """Return the mirror when it holds every one of ``columns``, else None."""
        m = self.current()
        if m is None or self.cfg["cone.source"] == "service":
            return None
        return m if all(c in m.stored for c in columns) else None

    def cone(self, req: ConeRequest, dest: Path, name: str, table_id: str) -> TableResult | None:
        """Answer a cone from the mirror into ``dest``; None when the service must answer."""
        m = self.for_cone(req.verb)
        if m is None:
            return None
        try:
            t0 = time.perf_counter()
            rows = mirror_pkg.write_cone(m, req.ra, req.dec, req.radius, req.verb,
                                         f"{name} (mirror {m.release})", dest)
        except (MirrorError, OSError, ValueError) as exc:
            log.warning("the mirror could not answer a cone (%s); asking the service", exc)
            return None
        return TableResult(dest, table_id, name, rows, time.perf_counter() - t0,
                           f"mirror cone {req.ra:.5f} {req.dec:+.5f} r={req.radius:g} "
                           f"VERB={req.verb} (CSC {m.release} mirror)", False, f"mirror:{m.path}")

    def strategy(self, configured: str, columns: Sequence[str]) -> str:
        """Return ``mirror`` when ``configured`` (auto or mirror) may use it, else ``configured``.

        A configured ``mirror`` without a usable one becomes ``auto`` (with a warning).
        """
        if configured in ("auto", "mirror") and self.for_match(columns) is not None:
            return "mirror"
        if configured == "mirror":
            log.warning("match.strategy is mirror but no usable mirror holds match.columns "
                        "(%s); matching through the service", self.reason or "columns")
            return "auto"
        return configured

    def match(self, m: Mirror, ra: np.ndarray, dec: np.ndarray, valid: np.ndarray,
              radius: float, columns: Sequence[str]) -> Matches:
        """Match in process against ``m``: the same pairs as the service strategies."""
        t0 = time.perf_counter()
        idx, rows, sep = mirror_pkg.match(m, ra, dec, valid, radius)
        log.info("matching: %d positions against the mirror in %.0f ms", int(valid.sum()),
                 (time.perf_counter() - t0) * 1000)
        return Matches(idx, mirror_pkg.table(m, rows, columns), sep, "mirror", 0)

    def build(self, *, columns: Sequence[str] | str | None = None,
              progress: Callable[[int, int], None] | None = None,
              cancel: threading.Event | None = None) -> dict:
        """Build the mirror of the configured release from the configured services.

        Raises
        ------
        MirrorError
            One sentence (no network, full disk, a row count that changed...).
        """
        manifest = mirror_pkg.build(
            self.tap, self.cone_service, table=self.cfg["tap.table"], release=self.cfg["release"],
            root=self.root, columns=columns, verb=self.cfg["cone.verb"],
            parallel=self.cfg["mirror.parallel"], slice_rows=self.cfg["mirror.slice_rows"],
            progress=progress, cancel=cancel)
        if self.mirror is not None:
            self.reopen()
        return manifest

    def status(self, verify: bool = False) -> dict[str, Any]:
        """Return the mirror's state (see :func:`sampbridge.mirror.status`), with ``source``."""
        out = mirror_pkg.status(self.root, self.cfg["release"], self.services, verify=verify,
                                mirror=self.mirror)
        out["source"] = self.cfg["cone.source"]
        out["answering"] = self.mirror is not None and self.cfg["cone.source"] != "service"
        return out

    def remove(self) -> bool:
        """Close and remove the mirror of the configured release; True when there was one."""
        with self._lock:
            if self.mirror is not None:
                self.mirror.close()
                self.mirror = None
            self.reason = "removed"
        try:
            return mirror_pkg.remove(mirror_pkg.release_dir(self.root, self.cfg["release"]))
        except OSError as exc:
            raise MirrorError(f"cannot remove the mirror under {self.root} "
                              f"({exc.strerror or exc})") from None

    def close(self) -> None:
        """Unmap the mirror."""
        with self._lock:
            if self.mirror is not None:
                self.mirror.close()
                self.mirror = None
