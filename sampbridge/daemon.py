"""The daemon: SAMP messages become requests, requests become CSC results, results are sent.

This is the only module that knows both the SAMP layer (:mod:`sampbridge.samp`) and the query
side (:mod:`sampbridge.engine`).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config
from .csc.errors import CSCError
from .engine import (
    Engine,
    ImageResult,
    MatchResult,
    TableResult,
    ensure_private_dir,
    tabledata_copy,
)
from .errors import Cancelled, SampBridgeError
from .flow import Coalescer, EchoGuard, separation_deg
from .folder import FileOutcome, QueryFolder
from .imagein import ImageError, footprint_cone, read_fits_header
from .model import (
    ConeRequest,
    RequestError,
    SiapRequest,
    TapRequest,
    _show,
    match_options,
    parse_position,
)
from .overlay import (
    SourceEllipse,
    aladin_script,
    ds9_file_url,
    ds9_overlay_params,
    source_ellipses,
    write_ds9_regions,
)
from .samp.connection import Delivery, HubConnection, Message
from .tables import KnownTable, KnownTables, TableError, fetch_table

__all__ = ["Daemon", "MTYPE_CONE", "MTYPE_SIAP", "MTYPE_TAP", "MTYPE_MATCH"]

log = logging.getLogger("sampbridge")

MTYPE_CONE = "x-sampbridge.query.cone"
MTYPE_SIAP = "x-sampbridge.query.siap"
MTYPE_TAP = "x-sampbridge.query.tap"
MTYPE_MATCH = "x-sampbridge.match.table"
#: The VERB level whose cone has the error ellipses (``err_ellipse_r1``, ``err_ellipse_ang``).
OVERLAY_VERB = 3
#: Arcsec within which a position repeated soon after is the same click.
SAME_POSITION_ARCSEC = 0.1
#: Seconds (at least; ``pointat.quiet`` if longer) within which a repeated position is the same
#: click.  TOPCAT's highlight of a row can trail its pointAt by more than the 0.3 s quiet spell
#: when sampbridge reads the table's positions for the first time on a loaded machine (seen in
#: CI, on the pyvo hub); the first message already answers both.
SAME_CLICK_SECONDS = 2.0
_ELLIPSE_COLUMNS = ["name", "ra", "dec", "err_ellipse_r0", "err_ellipse_r1", "err_ellipse_ang"]


@dataclass(frozen=True)
class Click:
    """A sky position to answer: where, who sent it (name and client id), and when."""

    ra: float
    dec: float
    sender: str
    sender_id: str
    received: float


@dataclass(frozen=True)
class OverlayTarget:
    """A viewer that takes an overlay: ``kind`` is 'ds9' (ds9.set) or 'aladin' (script)."""

    kind: str
    client_id: str
    name: str


@dataclass(frozen=True)
class MatchJob:
    """A table to match: where it came from, and (once fetched) where it is."""

    url: str
    table_id: str
    name: str
    rows: tuple[int, ...] | None = None
    radius: float | None = None
    mode: str | None = None
    entry: KnownTable | None = None

    def __str__(self) -> str:
        sel = f", {len(self.rows)} selected rows" if self.rows is not None else ""
        return f"match '{self.name}' ({self.url}{sel})"

DESCRIPTION = ("Chandra Source Catalog bridge: click a position in DS9, Aladin or TOPCAT and "
               "get the CSC sources (and images) around it; runs CSC TAP queries on request.")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _recipients(outcomes: list[Delivery]) -> str:
    """Who took a result, for the log: replied ones, then those with no reply yet."""
    names = [d.client_name for d in outcomes if d.ok]
    names += [f"{d.client_name} (no reply yet)" for d in outcomes if d.pending]
    return ", ".join(names)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, SampBridgeError):
        return str(exc)
    return f"internal error ({exc.__class__.__name__}: {exc})"


def _kind(value: Any) -> str:
    """Name a SAMP value's type for a message: 'a list', 'a map', ..."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a map"
    if isinstance(value, (int, float)):
        return "a number"
    return f"a {type(value).__name__}"


def _text_param(params: dict[str, Any], key: str) -> str | None:
    """Return ``params[key]`` if it is text (or absent); refuse a list, a map or the like."""
    value = params.get(key)
    if value is None or isinstance(value, str):
        return value
    raise RequestError(f"'{key}' must be text, not {_kind(value)}")


def _row_number(value: Any, key: str = "row") -> int:
    """Read a row number given as text (or a number); refuse anything else in one sentence."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        try:
            return int(str(value).strip())
        except ValueError:
            pass
        raise RequestError(f"'{key}' must be a row number, not {_show(value)}")
    raise RequestError(f"'{key}' must be a row number, not {_kind(value)}")


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_ellipses(path: Path) -> list[SourceEllipse]:
    """Read a cone table on disk as error ellipses (see :mod:`sampbridge.overlay`).

    Only the name, position and ellipse columns are read; a table without some of them (VERB=2
    has ``err_ellipse_r0`` only) gives circles or points.
    """
    from astropy.io.votable import parse_single_table

    from ._astropy import quiet_astropy

    with quiet_astropy(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            vot = parse_single_table(str(path), columns=_ELLIPSE_COLUMNS)
        except ValueError:              # some columns missing: read them all
            vot = parse_single_table(str(path))
        return source_ellipses(vot.to_table())


def _debug_text(exc: BaseException) -> str | None:
    if isinstance(exc, (CSCError, Cancelled)):
        parts = [f"url={exc.url}" if exc.url else "", f"http={exc.status}" if exc.status else ""]
        return " ".join(p for p in parts if p) or None
    return None


class Daemon:
    """sampbridge's long-running part.

    Parameters
    ----------
    cfg : Config
        Validated configuration.
    """

    #: seconds a result kept during a hub outage waits for a recipient after the reconnect
    BACKLOG_WAIT = 600.0

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.engine = Engine(cfg)
        self.cancel = threading.Event()
        self.executor = ThreadPoolExecutor(max_workers=cfg["workers"],
                                           thread_name_prefix="query")
        # long work (TAP jobs, table matches) has its own, smaller pool, so that it can never
        # hold up the short queries (cones, SIAP, sky clicks) of the main one
        self.long_pool = ThreadPoolExecutor(max_workers=max(1, cfg["workers"] // 2),
                                            thread_name_prefix="long")
        self.echo = EchoGuard(cfg["echo.window"], cfg["echo.radius"])
        self.coalescer: Coalescer[Click] = Coalescer(
            self._run_point, cfg["pointat.quiet"], cfg["pointat.max_wait"], name="pointat")
        self.known = KnownTables(cfg["tables.cache_size"])
        self.incoming = self.engine.results_dir / "incoming"
        self._pending: set[Message] = set()
        self.last_latency = 0.0  # seconds from the last pointAt received to its delivery
        self.points_done = 0
        self._active = 0
        self._pending_lock = threading.Lock()
        self.stats = {"received": 0, "queries": 0, "delivered": 0, "errors": 0, "echoes": 0,
                      "overlays": 0}
        # one overlay at a time, so that an older click's regions never land after a newer's
        self._overlay_lock = threading.Lock()
        self._point_work: list[Future] = []     # image and overlay work of the latest click
        self._click_lock = threading.Lock()
        self._last_click: tuple[float, float, float] | None = None    # ra, dec, when
        # image.load.fits is always subscribed, at registration with the rest: DS9 broadcasts
        # a pan's coord.pointAt.sky only while some other client subscribes to it (and DS9
        # reads a client's subscriptions once, about 1 s after it registers)
        handlers: dict[str, Callable[[Message], None]] = {
            MTYPE_CONE: self._on_cone,
            MTYPE_SIAP: self._on_siap,
            MTYPE_TAP: self._on_tap,
            MTYPE_MATCH: self._on_match,
            "table.highlight.row": self._on_highlight,
            "table.select.rowList": self._on_select,
            "image.load.fits": self._on_image_load,
        }
        if cfg["tables.subscribe"]:
            handlers["table.load.votable"] = self._on_table_load
            handlers["table.load.fits"] = self._on_table_load
        if cfg["pointat.enabled"]:
            handlers["coord.pointAt.sky"] = self._on_point_at
        self.conn = HubConnection("sampbridge", DESCRIPTION, __version__, handlers,
                                  mode=cfg["hub.mode"], ping_interval=cfg["hub.ping_interval"],
                                  call_timeout=cfg["hub.call_timeout"],
                                  send_wait=cfg["hub.send_wait"],
                                  on_connect=self._flush_backlog,
                                  on_subscriptions=self._flush_backlog)
        self._backlog: deque[tuple[TableResult | ImageResult, list[str] | None, str, float]] \
            = deque(maxlen=cfg["hub.backlog"] or None)
        self._backlog_lock = threading.Lock()
        self.folder: QueryFolder | None = None
        self._last_images: set[str] = set()    # image URLs sent by the last sky click
        if cfg["folder.enabled"]:
            self.folder = QueryFolder(
                Path(os.path.expandvars(cfg["folder.dir"])).expanduser(), self.engine,
                self._deliver_file, settle=cfg["folder.settle"],
                settle_max=cfg["folder.settle_max"], workers=cfg["folder.workers"],
                scan_interval=cfg["folder.scan_interval"], cancel=self.cancel)

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
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.long_pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace
        while self._active and time.monotonic() < deadline:
            time.sleep(0.02)
        if self._active:
            log.warning("stopping with %d queries still running", self._active)
        with self._pending_lock:
            pending = list(self._pending)
        for msg in pending:
            msg.reply_error("sampbridge stopped before this request finished; send it again "
                            "once sampbridge runs")
        self.conn.stop()
        self.engine.close()
        for part in self.engine.results_dir.glob("**/*.part"):
            part.unlink(missing_ok=True)
        counts = {**self.stats, "coalesced_runs": self.coalescer.ran,
                  "leading": self.coalescer.leading}
        log.info("stopped (%s)", ", ".join(f"{k} {v}" for k, v in counts.items()))

    # -- pointAt ------------------------------------------------------------------------
    def _on_point_at(self, msg: Message) -> None:
        self.stats["received"] += 1
        try:
            ra, dec = parse_position(msg.params)
        except RequestError as exc:
            self._refuse(msg, exc)
            return
        if self.echo.is_echo(ra, dec):
            self.stats["echoes"] += 1
            log.info("%s from %s: %.5f %+.5f ignored (echo of a delivered result)",
                     msg.mtype, msg.sender_name, ra, dec)
            msg.reply_ok({"ignored": "echo"})
            return
        log.info("%s from %s: %.5f %+.5f", msg.mtype, msg.sender_name, ra, dec)
        self._click(msg, ra, dec)
        msg.reply_ok({"accepted": "1"})

    def _click(self, msg: Message, ra: float, dec: float) -> None:
        """Offer a position to the coalescer, unless it repeats the one just offered.

        One click often comes twice: TOPCAT sends coord.pointAt.sky and table.highlight.row
        for a row, and a viewer may pass on another's position.  A repeat within
        :data:`SAME_CLICK_SECONDS` (or ``pointat.quiet`` if longer) would supersede the first,
        which already runs at once (the leading edge), and hold the answer back by the quiet
        spell: it is answered by the first instead.
        """
        now = time.monotonic()
        with self._click_lock:
            last, self._last_click = self._last_click, (ra, dec, now)
        window = max(self.cfg["pointat.quiet"], SAME_CLICK_SECONDS)
        if last is not None and now - last[2] <= window and \
                separation_deg(ra, dec, last[0], last[1]) * 3600.0 <= SAME_POSITION_ARCSEC:
            log.info("%s from %s: the position just received; answered once", msg.mtype,
                     msg.sender_name)
            return
        self.coalescer.submit(Click(ra, dec, msg.sender_name, msg.sender_id,
                                    time.perf_counter()))

    def _run_point(self, click: Click, seq: int) -> None:
        """Answer one (coalesced) click: the table first, then the overlay and the images.

        The cone runs here, on the coalescer's thread, and its table is delivered as soon as it
        is done.  Everything else (who takes an overlay or an image, the image query, the
        overlay's cone) runs on workers at the same time and is sent when it is ready, unless
        a newer click came meanwhile.
        """
        self._drop_stale_work()
        ra, dec = click.ra, click.dec
        verb = self.cfg["cone.verb"]
        extras = self._submit(self._click_extras, click, seq)
        if extras is not None:
            self._point_work.append(extras)
        try:
            table = self.engine.run_cone(ConeRequest(ra, dec, self.cfg["cone.radius"], verb))
        except CSCError as exc:
            self.stats["errors"] += 1
            log.error("pointAt from %s: %s", click.sender, _error_text(exc))
            table = None
        self.stats["queries"] += 1
        if self.coalescer.superseded(seq):
            log.info("result for %.5f %+.5f superseded by a newer position; not sent", ra, dec)
            return
        self.echo.remember((ra, dec))
        if table is not None:
            self._deliver_table(table, click.sender)
            if verb == OVERLAY_VERB:        # the table has the ellipses: draw from it
                self._submit(self._click_overlay_from_table, table.path, click, seq)
        self.last_latency = time.perf_counter() - click.received
        self.points_done += 1
        log.debug("pointAt %.5f %+.5f: message to table delivered %s", ra, dec,
                  _ms(self.last_latency))

    def _click_extras(self, click: Click, seq: int) -> None:
        """On a worker, beside the click's cone: its images, and its overlay's own cone."""
        if self._image_viewers(click):
            images = self._submit(self._point_images, click, seq)
            if images is not None:
                self._point_work.append(images)
        if self.cfg["cone.verb"] == OVERLAY_VERB or self.coalescer.superseded(seq):
            return
        overlay = self._click_overlay_target(click)
        if overlay is not None:
            self._overlay_from_cone(ConeRequest(click.ra, click.dec, self.cfg["cone.radius"],
                                                OVERLAY_VERB), [overlay], click.sender, seq)

    def _click_overlay_from_table(self, path: Path, click: Click, seq: int) -> None:
        overlay = self._click_overlay_target(click)
        if overlay is not None:
            self._send_overlay(path, [overlay], click.sender, seq)

    def _drop_stale_work(self) -> None:
        """Cancel the previous click's image and overlay work that has not started yet."""
        for f in self._point_work:
            f.cancel()
        self._point_work = []

    def _image_viewers(self, click: Click) -> bool:
        """Tell whether a click's images have somewhere to go (not the clicking viewer)."""
        if not self.cfg["images.enabled"] or self.cfg["images.max_count"] <= 0:
            return False
        exclude = () if self.cfg["images.to_sender"] else (click.sender_id,)
        viewers = [t for t in self.conn.targets("image.load.fits", self.cfg["send_images_to"])
                   if t[0] not in exclude]
        if not viewers and self.conn.connected:
            log.debug("no image viewer but the one that clicked: no image query")
        return bool(viewers) or not self.conn.connected

    def _point_images(self, click: Click, seq: int) -> None:
        """Find and download a click's image, and send it to the viewers that did not click."""
        if self.coalescer.superseded(seq):
            return
        try:
            img = self.engine.run_siap(SiapRequest(click.ra, click.dec,
                                                   self.cfg["images.size"]))
        except CSCError as exc:
            self.stats["errors"] += 1
            log.error("pointAt from %s: %s", click.sender, _error_text(exc))
            return
        if self.coalescer.superseded(seq):
            log.info("%s superseded by a newer position; not sent", img.what)
            return
        self.echo.remember(*[i.centre for i in img.images])
        fresh = self._drop_repeated_images(img)
        exclude = () if self.cfg["images.to_sender"] else (click.sender_id,)
        if (fresh.images or fresh.skipped) and self._deliver_images(fresh, click.sender,
                                                                    exclude=exclude):
            self._last_images = {i.url for i in img.images}

    # -- overlays -----------------------------------------------------------------------
    def _overlay_kind(self, client_id: str, name: str) -> OverlayTarget | None:
        """How an image viewer takes an overlay: DS9 by ds9.set, Aladin by its script."""
        pats = [p.lower() for p in self.cfg["send_images_to"]]
        if not any(fnmatch.fnmatchcase(name.lower(), p) for p in pats):
            return None
        if self.conn.subscribes(client_id, "ds9.set"):
            return OverlayTarget("ds9", client_id, name)
        if self.conn.subscribes(client_id, "script.aladin.send"):
            return OverlayTarget("aladin", client_id, name)
        return None

    def _click_overlay_target(self, click: Click) -> OverlayTarget | None:
        """Return the clicking viewer, when it is an image viewer that takes overlays.

        With ``images.to_sender`` it gets the image instead (the behaviour before overlays).
        """
        if self.cfg["images.to_sender"] or not click.sender_id:
            return None
        return self._overlay_kind(click.sender_id, click.sender)

    def _overlay_viewers(self) -> list[OverlayTarget]:
        """Every image viewer (``send_images_to``) that takes overlays."""
        out: list[OverlayTarget] = []
        for mtype in ("ds9.set", "script.aladin.send"):
            for cid, name in self.conn.targets(mtype, self.cfg["send_images_to"]):
                target = self._overlay_kind(cid, name)
                if target is not None and all(t.client_id != cid for t in out):
                    out.append(target)
        return out

    def _overlay_from_cone(self, req: ConeRequest, targets: list[OverlayTarget], origin: str,
                           seq: int | None) -> None:
        """Run the cone that has the error ellipses, then send them as an overlay."""
        folder = ensure_private_dir(self.engine.results_dir / "overlays")
        dest = folder / f"cone-{uuid.uuid4().hex[:12]}.vot"
        try:
            try:
                res = self.engine.run_cone(req, dest=dest)
            except CSCError as exc:
                self.stats["errors"] += 1
                log.error("overlay for %s: %s", origin, _error_text(exc))
                return
            self._send_overlay(res.path, targets, origin, seq)
        finally:
            dest.unlink(missing_ok=True)

    def _send_overlay(self, path: Path, targets: list[OverlayTarget], origin: str,
                      seq: int | None) -> None:
        """Draw a cone's sources on the viewers' own images (``seq``: of a click, or None)."""
        try:
            ellipses = read_ellipses(path)
        except Exception as exc:  # a table that cannot be read draws nothing
            self.stats["errors"] += 1
            log.error("overlay for %s: cannot read the cone table %s (%s)", origin, path.name,
                      exc.__class__.__name__)
            return
        with self._overlay_lock:
            if seq is not None and self.coalescer.superseded(seq):
                log.info("overlay for %s superseded by a newer position; not sent", origin)
                return
            for target in targets:
                sent = (self._ds9_overlay(target, ellipses) if target.kind == "ds9"
                        else self._aladin_overlay(target, ellipses))
                if sent:
                    self.stats["overlays"] += 1
                    log.info("overlay of %d CSC sources for %s -> %s", len(ellipses), origin,
                             target.name)

    def _ds9_overlay(self, target: OverlayTarget, ellipses: list[SourceEllipse]) -> bool:
        """Replace DS9's region group with the ellipses, by ds9.set calls, in order.

        Many regions go through a private region file that DS9 reads during its call (the file
        is removed once DS9 has answered); a path DS9 could not read from a URL goes inline.
        """
        folder = ensure_private_dir(self.engine.results_dir / "overlays")
        path = write_ds9_regions(ellipses, folder) if ellipses else None
        try:
            url = ds9_file_url(path) if path is not None else None
            for params in ds9_overlay_params(ellipses, url):
                d = self.conn.call(target.client_id, "ds9.set", params)
                if not d.ok:
                    log.warning("ds9.set to %s failed: %s", target.name, d.error)
                    return False
            return True
        finally:
            if path is not None:
                path.unlink(missing_ok=True)

    def _aladin_overlay(self, target: OverlayTarget, ellipses: list[SourceEllipse]) -> bool:
        """Replace Aladin's drawing plane with the ellipses.

        A notification: Aladin 12 never answers a script call.
        """
        d = self.conn.notify(target.client_id, "script.aladin.send",
                             {"script": aladin_script(ellipses)})
        if not d.ok:
            log.warning("script.aladin.send to %s failed: %s", target.name, d.error)
        return d.ok

    # -- images in ----------------------------------------------------------------------
    def _on_image_load(self, msg: Message) -> None:
        """Take an image in, send the CSC sources of its footprint out (table and overlays).

        The reply comes once the header is read: ``accepted`` with the cone, or ``samp.error``
        with the sentence that says what is wrong with the image.  The cone runs after it.
        """
        if msg.sender_id == self.conn.self_id:
            return
        self.stats["received"] += 1
        try:
            url = _text_param(msg.params, "url")
            name = _text_param(msg.params, "name")
            if url is None or not url.strip():
                raise ImageError("the message has no image 'url'")
        except RequestError as exc:
            self._refuse(msg, exc)
            return
        label = (name or "").strip() or Path(url.rstrip("/")).name or "image"
        log.info("%s from %s: %s", msg.mtype, msg.sender_name, _clip(url, 200))
        if msg.is_call:
            msg.defer()
            with self._pending_lock:
                self._pending.add(msg)
        timer = self._arm_pending_timer(msg)
        if self._submit(self._image_in, msg, url.strip(), label, timer) is None:
            if timer is not None:
                timer.cancel()
            with self._pending_lock:
                self._pending.discard(msg)

    def _footprint(self, url: str) -> tuple[float, float, float, str]:
        """Return the cone that covers an image (radius clamped to ``cone.max_radius``), a note."""
        header = read_fits_header(url, self.engine.session,
                                  max_bytes=self.cfg["images.header_max_bytes"],
                                  allow_remote=self.cfg["tables.allow_remote"],
                                  deadline=min(self.cfg["tables.fetch_timeout"],
                                               self.cfg["reply_within"]))
        ra, dec, radius = footprint_cone(header)
        most = self.cfg["cone.max_radius"]
        if radius <= most:
            return ra, dec, max(radius, 1e-5), ""
        return ra, dec, most, (f"the image spans {radius:.3g} deg from its centre; only the "
                               f"central {most:g} deg (cone.max_radius) is searched")

    def _image_in(self, msg: Message, url: str, label: str,
                  timer: threading.Timer | None) -> None:
        accepted = False
        try:
            ra, dec, radius, note = self._footprint(url)
            verb = self.cfg["cone.verb"]
            req = ConeRequest(ra, dec, radius, verb)
            self.echo.remember((ra, dec))     # DS9 pans to an image it loads, and says so
            if note:
                log.warning("%s from %s: %s", msg.mtype, msg.sender_name, note)
            log.info("%s from %s: the footprint of %s is the cone %.5f %+.5f r=%.4g", msg.mtype,
                     msg.sender_name, label, ra, dec, radius)
            msg.reply_ok({"status": "accepted", "ra": f"{ra:.6f}", "dec": f"{dec:.6f}",
                          "radius": f"{radius:.6g}", "note": note or None})
            accepted = True
            with self._pending_lock:
                self._pending.discard(msg)
            overlays = self._overlay_viewers()
            if overlays and verb != OVERLAY_VERB:
                self._submit(self._overlay_from_cone, replace(req, verb=OVERLAY_VERB), overlays,
                             f"image {label}", None)
            table = self.engine.run_cone(req)
            self.stats["queries"] += 1
            table = replace(table, name=f"CSC {self.cfg['release']} sources of {label}")
            self._deliver_table(table, f"image {label}")
            if overlays and verb == OVERLAY_VERB:
                self._send_overlay(table.path, overlays, f"image {label}", None)
        except SampBridgeError as exc:
            self._refuse_or_fail(msg, exc, accepted)
        except OSError as exc:
            self._refuse_or_fail(msg, RequestError(f"file error: {exc}"), accepted)
        except Exception as exc:  # the worker must always reply
            log.exception("%s from %s failed", msg.mtype, msg.sender_name)
            self._refuse_or_fail(msg, exc, accepted)
        finally:
            if timer is not None:
                timer.cancel()
            with self._pending_lock:
                self._pending.discard(msg)

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

    # -- delivery -----------------------------------------------------------------------
    def _keep_for_later(self, res: TableResult | ImageResult, patterns: list[str] | None,
                        origin: str) -> bool:
        """Queue a result while no hub is up; True if it was queued."""
        if self.conn.connected or not self.cfg["hub.backlog"]:
            return False
        with self._backlog_lock:
            if len(self._backlog) == self._backlog.maxlen:
                log.warning("delivery backlog full: dropping the oldest result (its file stays)")
            self._backlog.append((res, patterns, origin, time.monotonic()))
        log.info("no SAMP hub: %s kept for delivery after the reconnect (%d waiting)",
                 res.what, len(self._backlog))
        return True

    def _flush_backlog(self) -> None:
        """Deliver results kept while no hub was up, once someone can take them.

        Called on every (re)registration and whenever a client declares subscriptions (TOPCAT
        may join the new hub after sampbridge). A result with no recipient yet stays queued
        for up to ``BACKLOG_WAIT`` seconds after the reconnect.
        """
        if not self.conn.connected:
            return
        with self._backlog_lock:
            items = list(self._backlog)
            self._backlog.clear()
        if items:
            log.info("hub is up: delivering %d results kept meanwhile", len(items))
        keep = []
        for item in items:
            res, patterns, origin, since = item
            is_table = isinstance(res, TableResult)
            mtype = "table.load.votable" if is_table else "image.load.fits"
            default = self.cfg["send_tables_to"] if is_table else self.cfg["send_images_to"]
            if not self.conn.targets(mtype, patterns or default):
                if time.monotonic() - since < self.BACKLOG_WAIT:
                    keep.append(item)
                continue
            try:
                if isinstance(res, TableResult):
                    self._deliver_table(res, origin, patterns)
                else:
                    self._deliver_images(res, origin, patterns)
            except Exception:
                log.exception("delivering a kept result failed")
        if keep:
            with self._backlog_lock:
                self._backlog.extendleft(reversed(keep))

    def _deliver_file(self, outcome: FileOutcome) -> None:
        origin = f"file {outcome.query.name}"
        for res, patterns in zip(outcome.results, outcome.send_to, strict=True):
            if isinstance(res, TableResult):
                self._deliver_table(res, origin, patterns)
            else:
                self._deliver_images(res, origin, patterns)

    def _deliver_table(self, res: TableResult, origin: str,
                       patterns: list[str] | None = None) -> list[str]:
        params = {"url": res.url, "table-id": res.table_id, "name": res.name}
        self.known.put(KnownTable(res.table_id, res.url, res.path, res.name))
        if self._keep_for_later(res, patterns, origin):
            return []
        outcomes = self.conn.send("table.load.votable", params,
                                  patterns or self.cfg["send_tables_to"],
                                  self._table_params_for(res, params))
        if not outcomes and not self.conn.check_alive():
            self._keep_for_later(res, patterns, origin)
            return []
        sent = [d.client_name for d in outcomes if d.ok]
        for d in outcomes:
            if not d.ok and not d.pending:
                log.warning("table.load.votable to %s failed: %s", d.client_name, d.error)
        self.stats["delivered"] += bool(sent)
        log.info("%s for %s: %d rows%s in %s -> %s", res.what, origin, res.rows,
                 " (truncated at MAXREC)" if res.overflow else "", _ms(res.seconds),
                 _recipients(outcomes) or f"nobody (kept at {res.path})")
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

    def _deliver_images(self, res: ImageResult, origin: str,
                        patterns: list[str] | None = None,
                        exclude: tuple[str, ...] = ()) -> list[str]:
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
            outcomes = self.conn.send("image.load.fits", params,
                                      patterns or self.cfg["send_images_to"], exclude=exclude)
            if not outcomes and not self.conn.check_alive():
                self._keep_for_later(res, patterns, origin)
                return sent
            for d in outcomes:
                if not d.ok and not d.pending:
                    log.warning("image.load.fits to %s failed: %s", d.client_name, d.error)
            sent += [d.client_name for d in outcomes if d.ok]
            waiting += [d.client_name for d in outcomes if d.pending]
        log.info("%s for %s: %d found, %d downloaded in %s -> %s", res.what, origin, res.found,
                 len(res.images), _ms(res.seconds),
                 ", ".join(sorted(set(sent)) + [f"{n} (no reply yet)"
                                                for n in sorted(set(waiting) - set(sent))])
                 or "nobody")
        return sent

    # -- custom MTypes ------------------------------------------------------------------
    def _refuse(self, msg: Message, exc: Exception) -> None:
        self.stats["errors"] += 1
        text = _error_text(exc)
        log.warning("%s from %s refused: %s", msg.mtype, msg.sender_name, text)
        if msg.is_call:
            msg.reply_error(text, debug=_debug_text(exc))

    def _refuse_or_fail(self, msg: Message, exc: Exception, accepted: bool) -> None:
        """Refuse a message not accepted yet; once accepted, log why its work failed."""
        if not accepted:
            self._refuse(msg, exc)
            return
        self.stats["errors"] += 1
        log.error("%s from %s: %s", msg.mtype, msg.sender_name, _error_text(exc))

    def _on_cone(self, msg: Message) -> None:
        self._query(msg, lambda: ConeRequest.from_params(msg.params, self.cfg),
                    self.engine.run_cone)

    def _on_siap(self, msg: Message) -> None:
        self._query(msg, lambda: SiapRequest.from_params(msg.params, self.cfg),
                    self.engine.run_siap)

    def _on_tap(self, msg: Message) -> None:
        self._query(msg, lambda: TapRequest.from_params(msg.params, self.cfg),
                    lambda req: self.engine.run_tap(req, cancel=self.cancel), long=True)

    def _query(self, msg: Message, build: Callable[[], Any], run: Callable[[Any], Any],
               prepare: Callable[[Any], Any] | None = None, *, long: bool = False) -> None:
        """Validate now, run on a worker, reply when done or early with 'pending'.

        The early-reply timer starts now, when the call is accepted, so the caller hears back
        within ``reply_within`` however busy the workers are.  ``long`` work (TAP jobs, table
        matches) runs on its own bounded pool, so it cannot hold up short queries.
        ``prepare`` runs on the worker first: a table is fetched there, because some senders
        (STILTS) withdraw its URL once they get a reply; a fetch still running at
        ``reply_within`` gets the 'pending' reply all the same.
        """
        self.stats["received"] += 1
        try:
            req = build()
        except RequestError as exc:
            self._refuse(msg, exc)
            return
        log.info("%s from %s: %s", msg.mtype, msg.sender_name, req)
        if msg.is_call:
            msg.defer()
            with self._pending_lock:
                self._pending.add(msg)
        timer = self._arm_pending_timer(msg)
        if self._submit(self._run_and_deliver, msg, run, req, prepare, timer,
                        pool=self.long_pool if long else self.executor) is None:
            if timer is not None:
                timer.cancel()
            with self._pending_lock:
                self._pending.discard(msg)

    def _submit(self, fn: Callable[..., Any], *args: Any,
                pool: ThreadPoolExecutor | None = None) -> Future | None:
        """Run ``fn`` on ``pool`` (the main worker pool by default), counting it while it runs."""
        def counted() -> Any:
            with self._pending_lock:
                self._active += 1
            try:
                return fn(*args)
            finally:
                with self._pending_lock:
                    self._active -= 1
        try:
            return (pool or self.executor).submit(counted)
        except RuntimeError:            # shutting down
            msg = next((a for a in args if isinstance(a, Message)), None)
            if msg is not None:
                msg.reply_error("sampbridge is stopping; send the request again once it runs")
            return None

    def _arm_pending_timer(self, msg: Message) -> threading.Timer | None:
        if not msg.is_call:
            return None
        timer = threading.Timer(self.cfg["reply_within"], self._reply_pending, (msg,))
        timer.daemon = True
        timer.start()
        return timer

    # -- tables -------------------------------------------------------------------------
    def _fetch(self, job: MatchJob) -> MatchJob:
        """Fetch and read a table (on a worker, before any reply); remember it."""
        from .engine import ensure_private_dir

        ensure_private_dir(self.incoming)
        path = fetch_table(job.url, self.incoming, self.engine.session,
                           max_bytes=self.cfg["tables.max_bytes"],
                           allow_remote=self.cfg["tables.allow_remote"],
                           deadline=self.cfg["tables.fetch_timeout"], cancel=self.cancel)
        entry = KnownTable(job.table_id, job.url, path, job.name)
        entry.table(self.cfg["tables.max_rows"])
        self.known.put(entry)
        return replace(job, entry=entry)

    def _match(self, job: MatchJob) -> MatchResult:
        assert job.entry is not None
        table = job.entry.table(self.cfg["tables.max_rows"])
        rows = None
        if job.rows is not None:
            bad = [r for r in job.rows if not 0 <= r < len(table)]
            if bad:
                raise TableError(f"row {bad[0]} is outside the table, which has {len(table)} "
                                 "rows")
            import numpy as np

            rows = np.asarray(job.rows, dtype=int)
        name = job.name if rows is None else f"{job.name} [{len(rows)} selected]"
        return self.engine.run_match(table, name, rows=rows, radius_arcsec=job.radius,
                                     mode=job.mode)

    def _table_job(self, msg: Message, rows: tuple[int, ...] | None = None) -> MatchJob:
        p = msg.params
        url = _text_param(p, "url")
        if url is None or not url.strip():
            raise TableError("the message has no table 'url'")
        table_id = _text_param(p, "table-id") or url
        name = _text_param(p, "name") or Path(url.rstrip("/")).name or "table"
        radius, mode = match_options(p)       # the same check as a query file's match
        return MatchJob(url.strip(), table_id, name, rows, radius, mode)

    def _on_table_load(self, msg: Message) -> None:
        if msg.sender_id == self.conn.self_id:
            return
        self._query(msg, lambda: self._table_job(msg), self._match, prepare=self._fetch,
                    long=True)

    def _on_match(self, msg: Message) -> None:
        self._query(msg, lambda: self._table_job(msg), self._match, prepare=self._fetch,
                    long=True)

    def _known(self, msg: Message) -> KnownTable | None:
        try:
            table_id, url = _text_param(msg.params, "table-id"), _text_param(msg.params, "url")
        except RequestError as exc:
            self._refuse_or_log(msg, exc)
            return None
        entry = self.known.get(table_id, url)
        if entry is None:
            self._refuse_or_log(msg, TableError(
                f"sampbridge does not know table {_clip(table_id or '?')} "
                f"({_clip(url or 'no url')}): send the table to sampbridge first"))
        return entry

    def _refuse_or_log(self, msg: Message, exc: RequestError) -> None:
        """Refuse a call; for a notification, which nobody hears back from, only log."""
        if msg.is_call:
            self._refuse(msg, exc)
        else:
            log.debug("%s from %s: %s", msg.mtype, msg.sender_name, exc)

    def _on_highlight(self, msg: Message) -> None:
        self.stats["received"] += 1
        entry = self._known(msg)
        if entry is None:
            return
        try:
            row = _row_number(msg.params.get("row", ""))
            pos = entry.positions(self.cfg["tables.max_rows"])
            if not 0 <= row < len(pos.ra):
                raise TableError(f"row {row} is outside table '{entry.name}' "
                                 f"({len(pos.ra)} rows)")
            if not pos.valid[row]:
                raise TableError(f"row {row} of '{entry.name}' has no usable position")
        except (TableError, RequestError) as exc:
            self._refuse(msg, exc)
            return
        ra, dec = float(pos.ra[row]), float(pos.dec[row])
        log.info("%s from %s: row %d of '%s' at %.5f %+.5f", msg.mtype, msg.sender_name, row,
                 entry.name, ra, dec)
        if self.echo.is_echo(ra, dec):
            msg.reply_ok({"ignored": "echo"})
            return
        self._click(msg, ra, dec)
        msg.reply_ok({"accepted": "1"})

    def _on_select(self, msg: Message) -> None:
        entry = self._known(msg)
        if entry is None:
            self.stats["received"] += 1
            return

        def build() -> MatchJob:
            raw = msg.params.get("row-list")
            if not isinstance(raw, list) or not raw:
                raise RequestError("'row-list' must be a non-empty list of row numbers")
            try:
                rows = tuple(_row_number(r, "row-list") for r in raw)
            except RequestError:
                raise RequestError("'row-list' must hold row numbers only") from None
            return MatchJob(entry.url, entry.table_id, entry.name, rows, entry=entry)

        self._query(msg, build, self._match, long=True)

    def _reply_pending(self, msg: Message) -> None:
        if msg.reply_ok({"status": "pending", "message": "The query is still running; its "
                         "result will be sent with table.load.votable when it is ready."}):
            log.info("%s from %s: replied 'pending' after %.0f s", msg.mtype, msg.sender_name,
                     self.cfg["reply_within"])

    def _run_and_deliver(self, msg: Message, run: Callable[[Any], Any], req: Any,
                         prepare: Callable[[Any], Any] | None = None,
                         timer: threading.Timer | None = None) -> None:
        try:
            if prepare is not None:
                req = prepare(req)
            res = run(req)
            self.stats["queries"] += 1
            if isinstance(res, MatchResult):
                sent = self._deliver_table(res, msg.sender_name)
                log.info("%s: %d input rows, %d without a position, %d without a match "
                         "(%s strategy)", res.name, res.input_rows, res.no_position,
                         res.unmatched, res.strategy)
                msg.reply_ok({"status": "done", "url": res.url, "table-id": res.table_id,
                              "name": res.name, "rows": res.rows, "input-rows": res.input_rows,
                              "no-position": res.no_position, "unmatched": res.unmatched,
                              "strategy": res.strategy, "sent-to": sent})
            elif isinstance(res, TableResult):
                sent = self._deliver_table(res, msg.sender_name)
                msg.reply_ok({"status": "done", "url": res.url, "table-id": res.table_id,
                              "name": res.name, "rows": res.rows, "overflow": res.overflow,
                              "sent-to": sent})
            else:
                sent = self._deliver_images(res, msg.sender_name)
                urls = [i.path.resolve().as_uri() for i in res.images]
                if not urls and msg.is_call:
                    msg.reply_error(f"no image found at that position ({res.found} found, "
                                    f"{len(res.skipped)} over the size cap)")
                else:
                    msg.reply_ok({"status": "done", "url": urls[0] if urls else "",
                                  "urls": urls, "rows": len(urls), "sent-to": sent})
        except SampBridgeError as exc:
            self._refuse(msg, exc)
        except OSError as exc:
            self._refuse(msg, RequestError(f"file error: {exc}"))
        except Exception as exc:  # the worker must always reply
            log.exception("%s from %s failed", msg.mtype, msg.sender_name)
            self._refuse(msg, exc)
        finally:
            if timer is not None:
                timer.cancel()
            with self._pending_lock:
                self._pending.discard(msg)
