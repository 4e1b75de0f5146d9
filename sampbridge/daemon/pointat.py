"""The click pipeline: a sky position becomes the CSC cone table, images and an overlay.

``coord.pointAt.sky`` (and a row highlighted in a known table) is a click.  Clicks are
coalesced (the latest wins); the cone runs at once on the coalescer's thread and its table is
delivered first.  Beside it, on the workers: the image query (to the viewers that did not
click) and the overlay of the sources on the clicking viewer's own image.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path

from ..csc.errors import CSCError
from ..engine import ImageResult
from ..flow import Coalescer, separation_deg
from ..model import ConeRequest, RequestError, SiapRequest, parse_position
from ..samp import Message
from .calls import CallRunner
from .delivery import Deliverer
from .desk import AnsweringRoom, Desk
from .overlays import OVERLAY_VERB, Overlays, OverlayTarget
from .params import describe, error_text, ms

__all__ = ["SAME_CLICK_SECONDS", "SAME_POSITION_ARCSEC", "Click", "PointAt"]

log = logging.getLogger("sampbridge")

#: Arcsec within which a position repeated soon after is the same click.
SAME_POSITION_ARCSEC = 0.1
#: Seconds (at least; ``pointat.quiet`` if longer) within which a repeated position is the same
#: click.  TOPCAT's highlight of a row can trail its pointAt by more than the 0.3 s quiet spell
#: when sampbridge reads the table's positions for the first time on a loaded machine (seen in
#: CI, on the pyvo hub); the first message already answers both.
SAME_CLICK_SECONDS = 2.0


@dataclass(frozen=True)
class Click:
    """A sky position to answer: where, who sent it (name and client id), and when.

    ``received`` is ``time.perf_counter()`` (for the latency), ``at`` the wall-clock time
    (for the activity record), ``mtype`` the message that carried it.
    """

    ra: float
    dec: float
    sender: str
    sender_id: str
    received: float
    mtype: str = "coord.pointAt.sky"
    at: float = 0.0


@dataclass(frozen=True)
class _Offered:
    """The position last offered to the coalescer, and when (``time.monotonic()``)."""

    ra: float
    dec: float
    when: float


class PointAt(AnsweringRoom):
    """Answers clicks: coalesces them, runs the cone, sends the table, images and overlay.

    Parameters
    ----------
    desk, calls, deliver, overlays
        As for :class:`.desk.AnsweringRoom`.
    """

    def __init__(self, desk: Desk, calls: CallRunner, deliver: Deliverer,
                 overlays: Overlays) -> None:
        super().__init__(desk, calls, deliver, overlays)
        self.coalescer: Coalescer[Click] = Coalescer(
            self._run, self.cfg["pointat.quiet"], self.cfg["pointat.max_wait"], name="pointat")
        #: seconds from the last click received to its table delivered
        self.last_latency = 0.0
        #: clicks answered
        self.done = 0
        self.work: list[Future] = []     # image and overlay work of the latest click
        self._click_lock = threading.Lock()
        self._last_click: _Offered | None = None
        self._last_images: set[str] = set()    # image URLs sent by the last sky click

    def on_point_at(self, msg: Message) -> None:
        """Handle ``coord.pointAt.sky``: refuse a bad position, ignore an echo, else a click."""
        stats = self.desk.stats
        stats["received"] += 1
        try:
            ra, dec = parse_position(msg.params)
        except RequestError as exc:
            self.calls.refuse(msg, exc)
            return
        if self.desk.echo.is_echo(ra, dec):
            stats["echoes"] += 1
            log.info("%s from %s: %.5f %+.5f ignored (echo of a delivered result)",
                     msg.mtype, msg.sender_name, ra, dec)
            self.echoed(msg, ra, dec)
            msg.reply_ok({"ignored": "echo"})
            return
        log.info("%s from %s: %.5f %+.5f", msg.mtype, msg.sender_name, ra, dec)
        self.click(msg, ra, dec)
        msg.reply_ok({"accepted": "1"})

    def echoed(self, msg: Message, ra: float, dec: float) -> None:
        """Keep in the activity record a position ignored as the echo of a delivered result."""
        self.desk.activity.record(msg.sender_name, msg.mtype,
                                  f"{ra:.5f} {dec:+.5f} ignored: the echo of a result just sent")

    def click(self, msg: Message, ra: float, dec: float) -> None:
        """Offer a position to the coalescer, unless it repeats the one just offered.

        One click often comes twice: TOPCAT sends coord.pointAt.sky and table.highlight.row
        for a row, and a viewer may pass on another's position.  A repeat within
        :data:`SAME_CLICK_SECONDS` (or ``pointat.quiet`` if longer) would supersede the first,
        which already runs at once (the leading edge), and hold the answer back by the quiet
        spell: it is answered by the first instead.
        """
        now = time.monotonic()
        with self._click_lock:
            last, self._last_click = self._last_click, _Offered(ra, dec, now)
        window = max(self.cfg["pointat.quiet"], SAME_CLICK_SECONDS)
        if last is not None and now - last.when <= window and \
                separation_deg(ra, dec, last.ra, last.dec) * 3600.0 <= SAME_POSITION_ARCSEC:
            log.info("%s from %s: the position just received; answered once", msg.mtype,
                     msg.sender_name)
            return
        self.coalescer.submit(Click(ra, dec, msg.sender_name, msg.sender_id,
                                    time.perf_counter(), msg.mtype, time.time()))

    def _stale(self, seq: int) -> bool:
        return self.coalescer.superseded(seq)

    def _run(self, click: Click, seq: int) -> None:
        """Answer one (coalesced) click: the table first, then the overlay and the images.

        The cone runs here, on the coalescer's thread, and its table is delivered as soon as it
        is done.  Everything else (who takes an overlay or an image, the image query, the
        overlay's cone) runs on workers at the same time and is sent when it is ready, unless
        a newer click came meanwhile.
        """
        self._drop_stale_work()
        ra, dec = click.ra, click.dec
        verb = self.cfg["cone.verb"]
        extras = self.calls.submit(self._extras, click, seq)
        if extras is not None:
            self.work.append(extras)
        req = ConeRequest(ra, dec, self.cfg["cone.radius"], verb)
        activity = self.desk.activity
        entry = activity.begin(click.sender, click.mtype, describe(req), received=click.at)
        activity.count("clicks")
        activity.count("cones")
        try:
            table = self.desk.engine.run_cone(req)
            entry.rows = table.rows
        except CSCError as exc:
            self.desk.stats["errors"] += 1
            entry.error = error_text(exc)
            log.error("pointAt from %s: %s", click.sender, entry.error)
            table = None
        self.desk.stats["queries"] += 1
        try:
            if self.coalescer.superseded(seq):
                entry.what += " (superseded by a newer position: not sent)"
                log.info("result for %.5f %+.5f superseded by a newer position; not sent", ra,
                         dec)
                return
            self.desk.echo.remember((ra, dec))
            if table is not None:
                self.deliver.table(table, click.sender)
                if verb == OVERLAY_VERB:        # the table has the ellipses: draw from it
                    self.calls.submit(self._overlay_from_table, table.path, click, seq)
            self.last_latency = time.perf_counter() - click.received
            self.done += 1
            log.debug("pointAt %.5f %+.5f: message to table delivered %s", ra, dec,
                      ms(self.last_latency))
        finally:
            activity.end(entry)

    def _extras(self, click: Click, seq: int) -> None:
        """On a worker, beside the click's cone: its images, and its overlay's own cone."""
        if self._image_viewers(click):
            images = self.calls.submit(self._images, click, seq)
            if images is not None:
                self.work.append(images)
        if self.cfg["cone.verb"] == OVERLAY_VERB or self.coalescer.superseded(seq):
            return
        overlay = self._overlay_target(click)
        if overlay is not None:
            self.overlays.from_cone(ConeRequest(click.ra, click.dec, self.cfg["cone.radius"],
                                                OVERLAY_VERB), [overlay], click.sender,
                                    lambda: self._stale(seq))

    def _overlay_from_table(self, path: Path, click: Click, seq: int) -> None:
        overlay = self._overlay_target(click)
        if overlay is not None:
            self.overlays.send(path, [overlay], click.sender, lambda: self._stale(seq))

    def _overlay_target(self, click: Click) -> OverlayTarget | None:
        """Return the clicking viewer, when it is an image viewer that takes overlays.

        With ``images.to_sender`` it gets the image instead (the behaviour before overlays).
        """
        if self.cfg["images.to_sender"] or not click.sender_id:
            return None
        return self.overlays.target(click.sender_id, click.sender)

    def _drop_stale_work(self) -> None:
        """Cancel the previous click's image and overlay work that has not started yet."""
        for f in self.work:
            f.cancel()
        self.work = []

    def _image_viewers(self, click: Click) -> bool:
        """Tell whether a click's images have somewhere to go (not the clicking viewer)."""
        if not self.cfg["images.enabled"] or self.cfg["images.max_count"] <= 0:
            return False
        conn = self.desk.conn
        exclude = () if self.cfg["images.to_sender"] else (click.sender_id,)
        viewers = [t for t in conn.targets("image.load.fits", self.cfg["send_images_to"])
                   if t[0] not in exclude]
        if not viewers and conn.connected:
            log.debug("no image viewer but the one that clicked: no image query")
        return bool(viewers) or not conn.connected

    def _images(self, click: Click, seq: int) -> None:
        """Find and download a click's image, and send it to the viewers that did not click."""
        if self.coalescer.superseded(seq):
            return
        self.desk.activity.count("images")
        try:
            img = self.desk.engine.run_siap(SiapRequest(click.ra, click.dec,
                                                        self.cfg["images.size"]))
        except CSCError as exc:
            self.desk.failed()
            log.error("pointAt from %s: %s", click.sender, error_text(exc))
            return
        if self.coalescer.superseded(seq):
            log.info("%s superseded by a newer position; not sent", img.what)
            return
        self.desk.echo.remember(*[i.centre for i in img.images])
        fresh = self._drop_repeated_images(img)
        exclude = () if self.cfg["images.to_sender"] else (click.sender_id,)
        if (fresh.images or fresh.skipped) and self.deliver.images(fresh, click.sender,
                                                                   exclude=exclude):
            self._last_images = {i.url for i in img.images}

    def _drop_repeated_images(self, img: ImageResult) -> ImageResult:
        """Leave out the images the last delivered sky click sent (``images.skip_repeat``)."""
        if not self.cfg["images.skip_repeat"]:
            return img
        last = self._last_images
        repeated = [i for i in img.images if i.url in last]
        for i in repeated:
            log.info("image %s was sent with the previous click; not sent again",
                     i.title or i.url)
        return replace(img, images=[i for i in img.images if i.url not in last])
