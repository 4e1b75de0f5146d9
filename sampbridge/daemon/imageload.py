"""``image.load.fits`` in: the CSC sources of the image's footprint out (table and overlays)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from ..activity import Pending
from ..errors import SampBridgeError
from ..imagein import ImageError, footprint_cone, read_fits_header
from ..model import ConeRequest, RequestError
from ..samp import Message
from .desk import AnsweringRoom
from .overlays import OVERLAY_VERB
from .params import clip, text_param

__all__ = ["Footprint", "ImageLoad"]

log = logging.getLogger("sampbridge")


@dataclass(frozen=True)
class Footprint:
    """The cone that covers an image (degrees), and a note when it was clamped."""

    ra: float
    dec: float
    radius: float
    note: str = ""


class ImageLoad(AnsweringRoom):
    """Takes an image in and sends the CSC sources of its footprint out (table and overlays)."""

    def on_image_load(self, msg: Message) -> None:
        """Handle ``image.load.fits``: accept it now, read its header on a worker.

        The reply comes once the header is read: ``accepted`` with the cone, or ``samp.error``
        with the sentence that says what is wrong with the image.  The cone runs after it.
        """
        if msg.sender_id == self.desk.conn.self_id:
            return
        self.desk.stats["received"] += 1
        try:
            url = text_param(msg.params, "url")
            name = text_param(msg.params, "name")
            if url is None or not url.strip():
                raise ImageError("the message has no image 'url'")
        except RequestError as exc:
            self.calls.refuse(msg, exc)
            return
        label = (name or "").strip() or Path(url.rstrip("/")).name or "image"
        log.info("%s from %s: %s", msg.mtype, msg.sender_name, clip(url, 200))
        pending = self.desk.activity.begin(msg.sender_name, msg.mtype,
                                           f"sources of image {clip(label, 60)}")
        timer = self.calls.accept(msg)
        if self.calls.submit(self._run, msg, url.strip(), label, timer, pending) is None:
            self.calls.release(msg, timer)
            pending.error = "sampbridge is stopping"
            self.desk.activity.end(pending)

    def footprint(self, url: str) -> Footprint:
        """Return the cone that covers an image (radius clamped to ``cone.max_radius``)."""
        header = read_fits_header(url, self.desk.engine.session,
                                  max_bytes=self.cfg["images.header_max_bytes"],
                                  allow_remote=self.cfg["tables.allow_remote"],
                                  deadline=min(self.cfg["tables.fetch_timeout"],
                                               self.cfg["reply_within"]))
        ra, dec, radius = footprint_cone(header)
        most = self.cfg["cone.max_radius"]
        if radius <= most:
            return Footprint(ra, dec, max(radius, 1e-5))
        return Footprint(ra, dec, most, f"the image spans {radius:.3g} deg from its centre; "
                         f"only the central {most:g} deg (cone.max_radius) is searched")

    def _run(self, msg: Message, url: str, label: str, timer: threading.Timer | None,
             pending: Pending) -> None:
        accepted = False
        try:
            fp = self.footprint(url)
            verb = self.cfg["cone.verb"]
            req = ConeRequest(fp.ra, fp.dec, fp.radius, verb)
            self.desk.echo.remember((fp.ra, fp.dec))  # DS9 pans to an image it loads, and says so
            if fp.note:
                log.warning("%s from %s: %s", msg.mtype, msg.sender_name, fp.note)
            log.info("%s from %s: the footprint of %s is the cone %.5f %+.5f r=%.4g", msg.mtype,
                     msg.sender_name, label, fp.ra, fp.dec, fp.radius)
            msg.reply_ok({"status": "accepted", "ra": f"{fp.ra:.6f}", "dec": f"{fp.dec:.6f}",
                          "radius": f"{fp.radius:.6g}", "note": fp.note or None})
            accepted = True
            self.calls.release(msg)
            pending.rows = self._sources(req, label)
        except SampBridgeError as exc:
            self.calls.refuse_or_fail(msg, exc, accepted, pending)
        except OSError as exc:
            self.calls.refuse_or_fail(msg, RequestError(f"file error: {exc}"), accepted, pending)
        except Exception as exc:  # the worker must always reply
            log.exception("%s from %s failed", msg.mtype, msg.sender_name)
            self.calls.refuse_or_fail(msg, exc, accepted, pending)
        finally:
            self.calls.release(msg, timer)
            self.desk.activity.end(pending)

    def _sources(self, req: ConeRequest, label: str) -> int:
        """Run the footprint's cone, send its table and the overlay; return the table's rows."""
        origin = f"image {label}"
        overlays = self.overlays.viewers()
        if overlays and req.verb != OVERLAY_VERB:
            self.calls.submit(self.overlays.from_cone, replace(req, verb=OVERLAY_VERB),
                              overlays, origin, None)
        self.desk.activity.count("cones")
        table = self.desk.engine.run_cone(req)
        self.desk.stats["queries"] += 1
        table = replace(table, name=f"CSC {self.cfg['release']} sources of {label}")
        self.deliver.table(table, origin)
        if overlays and req.verb == OVERLAY_VERB:
            self.overlays.send(table.path, overlays, origin)
        return table.rows
