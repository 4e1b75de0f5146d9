"""Overlays: a cone's CSC sources drawn as error ellipses on the viewers' own images.

DS9 takes them by ``ds9.set`` calls (a region file), Aladin by ``script.aladin.send``.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..csc.errors import CSCError
from ..model import ConeRequest
from ..overlay import (
    SourceEllipse,
    aladin_script,
    ds9_file_url,
    ds9_overlay_params,
    source_ellipses,
    write_ds9_regions,
)
from ..safefile import ensure_private_dir
from .desk import Desk
from .params import error_text

__all__ = ["OVERLAY_VERB", "OverlayTarget", "Overlays", "read_ellipses"]

log = logging.getLogger("sampbridge")

#: The VERB level whose cone has the error ellipses (``err_ellipse_r1``, ``err_ellipse_ang``).
OVERLAY_VERB = 3
_ELLIPSE_COLUMNS = ["name", "ra", "dec", "err_ellipse_r0", "err_ellipse_r1", "err_ellipse_ang"]

#: Tells whether the work has been overtaken by a newer click (then it sends nothing).
Stale = Callable[[], bool]


@dataclass(frozen=True)
class OverlayTarget:
    """A viewer that takes an overlay: ``kind`` is 'ds9' (ds9.set) or 'aladin' (script)."""

    kind: str
    client_id: str
    name: str


def read_ellipses(path: Path) -> list[SourceEllipse]:
    """Read a cone table on disk as error ellipses (see :mod:`sampbridge.overlay`).

    Only the name, position and ellipse columns are read; a table without some of them (VERB=2
    has ``err_ellipse_r0`` only) gives circles or points.
    """
    from astropy.io.votable import parse_single_table

    from .._astropy import quiet_astropy

    with quiet_astropy(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            vot = parse_single_table(str(path), columns=_ELLIPSE_COLUMNS)
        except ValueError:              # some columns missing: read them all
            vot = parse_single_table(str(path))
        return source_ellipses(vot.to_table())


class Overlays:
    """Finds the viewers that take overlays and draws a cone's sources on them.

    Parameters
    ----------
    desk : Desk
        The daemon's shared state.
    """

    def __init__(self, desk: Desk) -> None:
        self.desk = desk
        self.cfg = desk.cfg
        # one overlay at a time, so that an older click's regions never land after a newer's
        self._lock = threading.Lock()

    # -- who takes one ------------------------------------------------------------------
    def target(self, client_id: str, name: str) -> OverlayTarget | None:
        """How an image viewer takes an overlay: DS9 by ds9.set, Aladin by its script."""
        pats = [p.lower() for p in self.cfg["send_images_to"]]
        if not any(fnmatch.fnmatchcase(name.lower(), p) for p in pats):
            return None
        if self.desk.conn.subscribes(client_id, "ds9.set"):
            return OverlayTarget("ds9", client_id, name)
        if self.desk.conn.subscribes(client_id, "script.aladin.send"):
            return OverlayTarget("aladin", client_id, name)
        return None

    def viewers(self) -> list[OverlayTarget]:
        """Every image viewer (``send_images_to``) that takes overlays."""
        out: list[OverlayTarget] = []
        for mtype in ("ds9.set", "script.aladin.send"):
            for cid, name in self.desk.conn.targets(mtype, self.cfg["send_images_to"]):
                target = self.target(cid, name)
                if target is not None and all(t.client_id != cid for t in out):
                    out.append(target)
        return out

    # -- drawing ------------------------------------------------------------------------
    def from_cone(self, req: ConeRequest, targets: list[OverlayTarget], origin: str,
                  stale: Stale | None = None) -> None:
        """Run the cone that has the error ellipses, then send them as an overlay."""
        engine = self.desk.engine
        folder = ensure_private_dir(engine.results_dir / "overlays")
        dest = folder / f"cone-{uuid.uuid4().hex[:12]}.vot"
        try:
            try:
                self.desk.activity.count("cones")
                res = engine.run_cone(req, dest=dest)
            except CSCError as exc:
                self.desk.failed()
                log.error("overlay for %s: %s", origin, error_text(exc))
                return
            self.send(res.path, targets, origin, stale)
        finally:
            dest.unlink(missing_ok=True)

    def send(self, path: Path, targets: list[OverlayTarget], origin: str,
             stale: Stale | None = None) -> None:
        """Draw a cone table's sources on the viewers' own images, unless ``stale()``."""
        try:
            ellipses = read_ellipses(path)
        except Exception as exc:  # a table that cannot be read draws nothing
            self.desk.failed()
            log.error("overlay for %s: cannot read the cone table %s (%s)", origin, path.name,
                      exc.__class__.__name__)
            return
        with self._lock:
            if stale is not None and stale():
                log.info("overlay for %s superseded by a newer position; not sent", origin)
                return
            for target in targets:
                sent = (self._ds9(target, ellipses) if target.kind == "ds9"
                        else self._aladin(target, ellipses))
                if sent:
                    self.desk.stats["overlays"] += 1
                    log.info("overlay of %d CSC sources for %s -> %s", len(ellipses), origin,
                             target.name)

    def _ds9(self, target: OverlayTarget, ellipses: list[SourceEllipse]) -> bool:
        """Replace DS9's region group with the ellipses, by ds9.set calls, in order.

        Many regions go through a private region file that DS9 reads during its call (the file
        is removed once DS9 has answered); a path DS9 could not read from a URL goes inline.
        """
        folder = ensure_private_dir(self.desk.engine.results_dir / "overlays")
        path = write_ds9_regions(ellipses, folder) if ellipses else None
        try:
            url = ds9_file_url(path) if path is not None else None
            for params in ds9_overlay_params(ellipses, url):
                d = self.desk.conn.call(target.client_id, "ds9.set", params)
                if not d.ok:
                    log.warning("ds9.set to %s failed: %s", target.name, d.error)
                    return False
            return True
        finally:
            if path is not None:
                path.unlink(missing_ok=True)

    def _aladin(self, target: OverlayTarget, ellipses: list[SourceEllipse]) -> bool:
        """Replace Aladin's drawing plane with the ellipses.

        A notification: Aladin 12 never answers a script call.
        """
        d = self.desk.conn.notify(target.client_id, "script.aladin.send",
                                  {"script": aladin_script(ellipses)})
        if not d.ok:
            log.warning("script.aladin.send to %s failed: %s", target.name, d.error)
        return d.ok
