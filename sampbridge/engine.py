"""Run requests against the CSC and keep their results as files.  No SAMP here.

Data flows one way: request model -> CSC query -> result file.  The daemon (SAMP) and the CLI
both call :class:`Engine`; whatever they send onwards comes from the results it returns.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, overload

import numpy as np
from astropy.table import Table

from .cache import ResultCache, cone_key, image_key, tap_key
from .config import Config
from .csc import http
from .csc.cone import ConeService, verb_for
from .csc.errors import CSCError
from .csc.names import safe_name
from .csc.siap import ImageInfo, SiapService
from .csc.tap import PhaseHook, TapClient, learnt, no_upload, refuses_upload
from .engine_mirror import MirrorSide
from .match import (
    Matches,
    Progress,
    TapCones,
    UploadIncomplete,
    best_only,
    join,
    match_by_cones,
    match_by_upload,
)
from .mirror import Mirror
from .model import ConeRequest, MatchRequest, SiapRequest, TapRequest
from .results import ImageResult, MatchResult, TableResult, tabledata_copy
from .safefile import ensure_private_dir
from .tables import TableError, positions, read_table
from .votwriter import write_votable as _write_votable

__all__ = ["TableResult", "MatchResult", "ImageResult", "Engine", "Request", "ensure_private_dir",
           "cone_title", "tabledata_copy"]

#: Every request :meth:`Engine.run` takes.
Request = ConeRequest | SiapRequest | TapRequest | MatchRequest

_counter = itertools.count(1)
log = logging.getLogger(__name__)


def _new_id(kind: str) -> str:
    return f"sampbridge-{kind}-{next(_counter)}-{uuid.uuid4().hex[:8]}"


def _radius_label(radius_deg: float) -> str:
    arcmin = radius_deg * 60.0
    if arcmin >= 1.0:
        return f"{arcmin:.4g}'"
    return f'{arcmin * 60.0:.4g}"'


def cone_title(release: str, ra: float, dec: float, radius: float) -> str:
    """Return the readable name of a cone table, e.g. ``CSC 2.1 cone 246.79250 -24.32027 r=3'``."""
    return f"CSC {release} cone {ra:.5f} {dec:.5f} r={_radius_label(radius)}"


class Engine:
    """Runs cone, image and TAP requests and writes their results into the results folder.

    Parameters
    ----------
    cfg : Config
        The validated configuration (service URLs, timeouts, caps, results folder).
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.session = http.make_session(cfg["http.connect_timeout"], cfg["http.read_timeout"],
                                         cfg["http.compress"], retries=cfg["http.retries"])
        retries = cfg["http.retries"]
        self.cone = ConeService(cfg["services.cone"], self.session, cfg["results.max_bytes"],
                                retries)
        self.siap = SiapService(cfg["services.siap"], self.session, cfg["images.max_bytes"],
                                retries)
        self.tap = TapClient(cfg["services.tap"], self.session, cfg["results.max_bytes"],
                             cfg["tap.job_timeout"])
        self.results_dir = ensure_private_dir(cfg.results_dir)
        self.cache = (ResultCache(self.results_dir / "cache", cfg["cache.ttl"])
                      if cfg["cache.enabled"] else None)
        if self.cache is not None:
            self.cache.prune()
        #: the local mirror of master_source (docs/mirror.md), used per ``cone.source``
        self.mirrors = MirrorSide(cfg, self.tap, self.cone)

    @property
    def mirror(self) -> Mirror | None:
        """The open mirror of the configured release, or None (none, other, damaged)."""
        return self.mirrors.mirror

    def mirror_status(self, verify: bool = False) -> dict[str, Any]:
        """Return the mirror's state as a dict (what ``mirror status`` and the daemon show)."""
        return self.mirrors.status(verify)

    #: The method that runs each kind of request: a new kind is one line here, plus its
    #: method, which takes ``(request, dest, **options)``.
    RUNNERS: ClassVar[dict[type, str]] = {
        ConeRequest: "run_cone",
        SiapRequest: "run_siap",
        TapRequest: "run_tap",
        MatchRequest: "run_match_request",
    }

    @overload
    def run(self, request: SiapRequest, *, dest: Path | None = None,
            **options: Any) -> ImageResult: ...

    @overload
    def run(self, request: ConeRequest | TapRequest | MatchRequest, *,
            dest: Path | None = None, **options: Any) -> TableResult: ...

    def run(self, request: Request, *, dest: Path | None = None,
            **options: Any) -> TableResult | ImageResult:
        """Run any request and return its result; the one entry of the CLI and the folder.

        Parameters
        ----------
        request : ConeRequest, SiapRequest, TapRequest or MatchRequest
            The validated request (see :data:`RUNNERS`).
        dest : Path, optional
            Where the result goes: the VOTable file, or the folder of a SIAP request's
            images; default a new name in the results folder.
        **options
            Passed to the request's method: ``count`` and ``prefix`` for SIAP, ``cancel`` and
            ``on_job`` for TAP, ``rows`` for a match.

        Raises
        ------
        TypeError
            For an object that is not a request of a kind in :data:`RUNNERS` (a bug of the
            caller, not a user's mistake).
        SampBridgeError
            When the request cannot run (the service fails, the table is unreadable...).
        """
        method = next((self.RUNNERS[t] for t in type(request).__mro__ if t in self.RUNNERS),
                      None)
        if method is None:
            kinds = ", ".join(t.__name__ for t in self.RUNNERS)
            raise TypeError(f"Engine.run takes a request ({kinds}), not a "
                            f"{type(request).__name__}")
        runner: Callable[..., TableResult | ImageResult] = getattr(self, method)
        return runner(request, dest, **options)

    def _dest(self, stem: str, suffix: str = ".vot") -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        return self.results_dir / f"{safe_name(stem)}_{stamp}_{uuid.uuid4().hex[:6]}{suffix}"

    def run_cone(self, req: ConeRequest, dest: Path | None = None) -> TableResult:
        """Run a cone search (SCS, or an ADQL cone when ``cone.service`` is ``tap``)."""
        name = cone_title(self.cfg["release"], req.ra, req.dec, req.radius)
        dest = dest or self._dest(f"cone_{req.ra:.5f}_{req.dec:+.5f}_r{req.radius * 3600:.0f}as")
        key = cone_key(self.cfg["services.tap"] if self.cfg["cone.service"] == "tap"
                       else self.cfg["services.cone"], req.ra, req.dec, req.radius, req.verb,
                       self.cfg["cache.precision"])
        answer = self.mirrors.cone(req, dest, name, _new_id("cone"))    # None: ask the service
        if answer is not None:
            return answer
        hit = self._from_cache(key, dest, _new_id("cone"), name)
        if hit is not None:
            return hit
        res = self._run_cone(req, dest, name)
        self._to_cache(key, res)
        return res

    def _from_cache(self, key: str, dest: Path, table_id: str, name: str
                    ) -> TableResult | None:
        if self.cache is None:
            return None
        t0 = time.perf_counter()
        hit = self.cache.get(key)
        if hit is None or not self.cache.materialize(hit, dest):
            return None
        m = hit.meta
        return TableResult(dest, table_id, name, int(m.get("rows", 0)),
                           time.perf_counter() - t0, f"{m.get('what', 'query')} (cached)",
                           bool(m.get("overflow")), str(m.get("service_url", "")))

    def _to_cache(self, key: str, res: TableResult) -> None:
        if self.cache is not None:
            self.cache.put(key, res.path, rows=res.rows, what=res.what, overflow=res.overflow,
                           service_url=res.service_url)

    def _run_cone(self, req: ConeRequest, dest: Path, name: str) -> TableResult:
        if self.cfg["cone.service"] == "tap":
            res = self.tap.cone_to_file(self.cfg["tap.table"], req.ra, req.dec, req.radius, dest,
                                        dialect=self.cfg["tap.dialect"],
                                        maxrec=self.cfg["tap.maxrec"] or None)
            what = f"TAP cone ({res.dialect}) {req.ra:.5f} {req.dec:+.5f} r={req.radius:g}"
            return TableResult(dest, _new_id("cone"), name, res.rows, res.seconds, what,
                               res.overflow, res.url)
        cres = self.cone.query_to_file(req.ra, req.dec, req.radius, dest, req.verb)
        what = f"cone {req.ra:.5f} {req.dec:+.5f} r={req.radius:g} VERB={req.verb}"
        return TableResult(dest, _new_id("cone"), name, cres.rows, cres.seconds, what,
                           cres.summary.overflow, cres.url)

    def run_siap(self, req: SiapRequest, dest_dir: Path | None = None,
                 count: int | None = None, prefix: str | None = None) -> ImageResult:
        """Find images at a position and download the chosen FITS ones (streamed, capped).

        A query that finds no FITS image is asked once more with a larger SIZE (see
        :func:`.csc.siap.retry_size`), and ``what`` says so; images over ``images.max_bytes``
        (decompressed) are skipped, each with a sentence in ``skipped``.
        """
        dest_dir = ensure_private_dir(dest_dir) if dest_dir else self.results_dir
        if prefix is None:
            prefix = "" if dest_dir != self.results_dir else f"img_{uuid.uuid4().hex[:6]}_"
        cache = self.cache

        def reuse(img: ImageInfo, dest: Path) -> bool:
            if cache is None:
                return False
            hit = cache.get(image_key(img.url))
            return hit is not None and cache.materialize(hit, dest)

        def keep(img: ImageInfo, path: Path) -> None:
            if cache is not None:
                cache.put(image_key(img.url), path, what=img.title)

        res = self.siap.query_to_dir(
            req.ra, req.dec, req.size, dest_dir, fmt=self.cfg["images.format"],
            count=self.cfg["images.max_count"] if count is None else count,
            prefer_band=self.cfg["images.prefer_band"], prefix=prefix, reuse=reuse, keep=keep)
        reused = sum(i.reused for i in res.downloaded)
        what = f"images {req.ra:.5f} {req.dec:+.5f} size={res.size:g}"
        if res.retried_from is not None:
            what += (f" (size={res.retried_from:g} found no FITS image: asked once more "
                     f"with size={res.size:g})")
        if reused:
            what += f" ({reused} from the cache)"
        return ImageResult(res.downloaded, len(res.found), res.seconds, what, res.skipped)

    def run_tap(self, req: TapRequest, dest: Path | None = None, *,
                cancel: threading.Event | None = None, on_job=None,
                on_phase: PhaseHook | None = None) -> TableResult:
        """Run a user's ADQL as given (sync or async per ``tap.mode``).

        ``on_phase(phase, elapsed)`` hears of an async job's phases (see
        :meth:`.TapClient.query_to_file`); a caller shows them as progress.
        """
        name = req.name or f"CSC {self.cfg['release']} TAP query"
        dest = dest or self._dest("tap_" + (req.name or "query"))
        key = tap_key(self.cfg["services.tap"], req.adql, req.maxrec, self.cfg["tap.mode"])
        hit = self._from_cache(key, dest, _new_id("tap"), name)
        if hit is not None:
            return hit
        res = self.tap.query_to_file(req.adql, dest, req.maxrec, mode=self.cfg["tap.mode"],
                                     cancel=cancel, on_job=on_job, on_phase=on_phase)
        short = " ".join(req.adql.split())
        what = f"TAP {self.cfg['tap.mode']} '{short[:60]}{'...' if len(short) > 60 else ''}'"
        out = TableResult(dest, _new_id("tap"), name, res.rows, res.seconds, what,
                          res.overflow, res.url)
        self._to_cache(key, out)
        return out

    def match_strategy(self) -> str:
        """Return ``mirror``, ``upload`` or ``cone``: configured, or chosen.

        ``auto`` chooses ``mirror`` when a usable mirror holds ``match.columns``, else
        ``upload`` only where ``/capabilities`` list both upload and ADQL geometry, and the
        service has not refused an upload in this process.
        """
        configured = self.mirrors.strategy(self.cfg["match.strategy"], self.cfg["match.columns"])
        if configured != "auto":
            return configured
        if not learnt(self.tap.url)["upload"]:
            return "cone"
        try:
            caps = self.tap.capabilities()
        except CSCError as exc:
            log.warning("cannot read TAP capabilities (%s); matching by cone searches", exc)
            return "cone"
        return "upload" if caps.upload and caps.geometry else "cone"

    def _match(self, strategy: str, ra: np.ndarray, dec: np.ndarray, valid: np.ndarray,
               radius: float, progress: Progress | None = None) -> Matches:
        """Match by ``strategy``; under ``auto``, an upload refused or cut short goes by cones.

        A refused upload (the service's words name UPLOAD) is remembered for the service URL:
        later matches go by cones at once.
        """
        cols = self.cfg["match.columns"]
        mirror = self.mirrors.for_match(cols) if strategy == "mirror" else None
        if mirror is not None:
            return self.mirrors.match(mirror, ra, dec, valid, radius, cols)
        if strategy == "upload":
            try:
                return match_by_upload(self.tap, ra, dec, valid, radius, cols,
                                       self.cfg["tap.table"], dialect=self.cfg["tap.dialect"],
                                       progress=progress)
            except CSCError as exc:
                if self.cfg["match.strategy"] != "auto":
                    raise
                if refuses_upload(exc):
                    no_upload(self.tap.url, exc.service_message or str(exc))
                elif isinstance(exc, UploadIncomplete):
                    log.warning("%s; matching by cones instead", exc)
                else:
                    raise
        if self.cfg["cone.service"] == "tap":
            src: ConeService | TapCones = TapCones(self.tap, self.cfg["tap.table"],
                                                   self.cfg["tap.dialect"],
                                                   self.cfg["tap.maxrec"] or None)
            verb = self.cfg["match.verb"]
        else:
            src = self.cone
            verb = verb_for(cols, self.cfg["match.verb"])
            if verb != self.cfg["match.verb"]:
                log.info("matching by cone searches at VERB=%d: match.columns names columns "
                         "that VERB=%d does not give", verb, self.cfg["match.verb"])
        return match_by_cones(src, ra, dec, valid, radius, cols, verb=verb,
                              parallelism=self.cfg["match.parallelism"],
                              cell=self.cfg["match.batch_cell"], progress=progress)

    def run_match(self, table: Table, name: str, *, rows: np.ndarray | None = None,
                  radius_arcsec: float | None = None, mode: str | None = None,
                  dest: Path | None = None, progress: Progress | None = None) -> MatchResult:
        """Match a table's rows (or the ``rows`` subset) against the CSC and write the result.

        ``progress(done, total)`` hears of the positions matched so far (see :mod:`.match`).

        Raises
        ------
        TableError
            When the table has no position columns or no usable position.
        CSCError
            When the service fails.
        """
        t0 = time.perf_counter()
        pos = positions(table)
        selected = np.zeros(len(table), dtype=bool)
        if rows is None:
            selected[:] = True
        else:
            selected[rows] = True
        valid = pos.valid & selected
        n_in = int(selected.sum())
        no_pos = int((selected & ~pos.valid).sum())
        if not valid.any():
            raise TableError(f"none of the {n_in} rows has a usable position in "
                             f"{pos.ra_col}/{pos.dec_col} (NaN, empty or out of range)")
        radius = (radius_arcsec or self.cfg["match.radius"]) / 3600.0
        m = self._match(self.match_strategy(), pos.ra, pos.dec, valid, radius, progress)
        strategy = m.strategy
        if (mode or self.cfg["match.mode"]) == "best":
            m = best_only(m)
        out = join(table, m)
        matched_rows = len(set(m.idx.tolist()))
        title = f"{name} \u00d7 CSC {self.cfg['release']}" + (
            " (mirror)" if strategy == "mirror" else "")         # where the rows came from
        dest = dest or self._dest("match_" + name)
        _write_votable(out, dest, title)
        what = (f"match of {n_in} rows ({strategy}, r={radius * 3600:g}\", "
                f"{mode or self.cfg['match.mode']})")
        return MatchResult(dest, _new_id("match"), title, len(out), time.perf_counter() - t0,
                           what, False, "", input_rows=n_in, no_position=no_pos,
                           unmatched=n_in - no_pos - matched_rows, strategy=strategy)

    def run_match_request(self, req: MatchRequest, dest: Path | None = None, *,
                          rows: np.ndarray | None = None,
                          progress: Progress | None = None) -> MatchResult:
        """Read a match request's table file (within ``tables.*`` caps) and match it.

        The file must lie in ``req.root`` when one is given (a query folder's table); a URL
        is the daemon's to fetch first (:func:`.tables.fetch_table`), then :meth:`run_match`.

        Raises
        ------
        TableError
            When the table cannot be read, or has no usable position.
        CSCError
            When the service fails.
        """
        table = read_table(Path(req.table), self.cfg["tables.max_rows"],
                           max_bytes=self.cfg["tables.max_bytes"], root=req.root)
        if rows is None and req.rows is not None:
            rows = np.asarray(req.rows, dtype=int)
        return self.run_match(table, req.name, rows=rows, radius_arcsec=req.radius,
                              mode=req.mode, dest=dest, progress=progress)

    def close(self) -> None:
        """Close HTTP connections and unmap the mirror."""
        self.mirrors.close()
        self.session.close()
