"""SIAP v1 image queries, with the chosen FITS images downloaded by streaming under a size cap.

What the CXC service does differently from a standard one, and how it is met here:

- its rows are FITS **and JPEG** images: only FITS rows are ever chosen (:func:`is_fits`);
- its FITS files are gzipped (``.fits.gz`` bodies, no Content-Encoding): they are decompressed
  while they stream, and the size cap holds for the decompressed bytes too;
- its ``band`` reads ``CXO_b``, ``CXO_h``, ...: bands are compared without the ``CXO_``
  prefix (:func:`normal_band`);
- a small SIZE often finds nothing: a query that finds no FITS image is asked once more with
  :func:`retry_size` (``min(max(4 x SIZE, 0.1), 1)`` degrees).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests
from pyvo.dal import SIAService

from .._astropy import quiet_astropy
from . import http
from .errors import CSCError, ResultTooLarge
from .fitshead import FitsHead, TooLarge, check_fits
from .names import safe_name  # re-exported: the name of an image file
from .pyvo_errors import translated
from .sky import separation_deg

__all__ = ["ImageInfo", "SiapResult", "SiapService", "is_fits", "normal_band", "retry_size",
           "safe_name"]

log = logging.getLogger(__name__)

#: the retry after an empty answer asks at least this SIZE (deg) ...
RETRY_MIN_SIZE = 0.1
#: ... 4 times the first SIZE, and at most this much
RETRY_MAX_SIZE = 1.0
#: downloads a query may start beyond ``count``, to replace images refused for their size
SPARE_TRIES = 2
#: bytes read from the network at a time: an image refused by its FITS header costs this much
IMAGE_CHUNK = 1 << 16
#: how many image URLs refused for their size are remembered
_REFUSED_KEPT = 256


def normal_band(text: object) -> str:
    """Return a band name without CXC's ``CXO_`` prefix, in lower case (``CXO_b`` -> ``b``)."""
    band = str(text or "").strip()
    if band[:4].lower() == "cxo_":
        band = band[4:]
    return band.strip().lower()


def retry_size(size: float) -> float:
    """Return the SIZE of the one retry after an empty answer: ``min(max(4 size, 0.1), 1)``.

    CXC's service is reported to find nothing at a small SIZE; 0.1 degree is about the half
    width of an ACIS field, and 1 degree the largest retry, so it stays one cheap query.
    """
    return min(max(4.0 * size, RETRY_MIN_SIZE), RETRY_MAX_SIZE)


@dataclass
class ImageInfo:
    """One image found by a SIAP query (and, once downloaded, its file)."""

    url: str
    title: str
    format: str
    ra: float | None
    dec: float | None
    #: the band, without CXC's ``CXO_`` prefix (see :func:`normal_band`)
    band: str
    #: the size the service gives (CXC: of the gzipped file)
    size: int | None
    path: Path | None = None
    centre: tuple[float, float] | None = None
    #: True when the file came from a cache, not a download
    reused: bool = False
    #: pixels along each axis, as the service gives them (VOX:Image_Naxis), or ()
    naxis: tuple[int, ...] = ()
    #: bytes received from the network, and bytes written (decompressed), by the download
    received: int = 0
    nbytes: int = 0


def is_fits(img: ImageInfo) -> bool:
    """Return True if a row is a FITS image (never a JPEG or other graphic: DS9 wants FITS).

    The row's format decides; a row without one is FITS unless its URL or title names a
    graphic format.
    """
    fmt = img.format.lower()
    if fmt:
        return "fits" in fmt
    return not re.search(r"jpe?g|png|gif|graphic", f"{img.url} {img.title}", re.IGNORECASE)


@dataclass
class SiapResult:
    """The images a SIAP query found, and those that were downloaded."""

    url: str
    found: list[ImageInfo]
    downloaded: list[ImageInfo] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: the SIZE of the query that found ``found``
    size: float = 0.0
    #: the SIZE first asked, when that query found no FITS image and was retried
    retried_from: float | None = None


def _band(rec: Any, title: str) -> str:        # rec: a pyvo SIAP record (untyped)
    for key in ("band", "cscband"):
        try:
            value = rec[key]
        except (KeyError, IndexError, TypeError):
            continue
        if value is not None and str(value).strip():
            return normal_band(value)
    m = re.search(r"\b([bhmsuw])[ _-]band\b", title) or re.search(r"_([bhmsuw])\.fits", title)
    return m.group(1) if m else ""


def _naxis(rec: Any) -> tuple[int, ...]:      # rec: a pyvo SIAP record (untyped)
    try:
        values = [int(v) for v in rec.naxis.value]
    except Exception:  # a row without usable axis lengths is still an image
        return ()
    return tuple(values) if values and all(v > 0 for v in values) else ()


def _file_name(img: ImageInfo) -> str:
    """Return a file name for an image: its title, else its URL's ``filename``, else the URL."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(img.url)
    given = (parse_qs(parts.query).get("filename") or [""])[0]
    base = img.title or given.removesuffix(".gz") or parts.path.rsplit("/", 1)[-1]
    base = safe_name(base)
    return base if base.endswith(".fits") else base + ".fits"


class SiapService:
    """A SIAP v1 service (``POS``, ``SIZE``, ``FORMAT``) built on :class:`pyvo.dal.SIAService`.

    Parameters
    ----------
    url : str
        The service's query URL.
    session : requests.Session
        The session every request goes through.
    max_bytes : int
        The most bytes one image may take, decompressed (and over the network).
    retries : int, optional
        Retries of a failed download; by default the session's (``http.retries``).
    cap_name : str
        The setting that holds ``max_bytes``, named in the sentence of a skipped image.
    """

    def __init__(self, url: str, session: requests.Session, max_bytes: int = 10_000_000,
                 retries: int | None = None, cap_name: str = "images.max_bytes") -> None:
        self.url = url
        self.session = session
        self.max_bytes = max_bytes
        self.retries = retries
        self.cap_name = cap_name
        #: images refused for their size while downloading: URL -> (why, bytes needed), so
        #: that the next click in the same field skips them without a second probe
        self._refused: dict[str, tuple[str, int | None]] = {}
        self._lock = threading.Lock()

    def search(self, ra: float, dec: float, size: float,
               fmt: str = "image/fits") -> list[ImageInfo]:
        """Return the images that cover a position (every row: FITS, JPEG or other)."""
        with translated("image query (SIAP)", self.url), quiet_astropy():
            service = SIAService(self.url, session=self.session)
            results = service.search(pos=(ra, dec), size=size, format=fmt or "ALL")
            images = []
            for rec in results:
                url = rec.getdataurl()
                if not url:
                    continue
                title = str(rec.title or "")
                ra_i: float | None
                dec_i: float | None
                try:
                    pos = rec.pos
                    ra_i, dec_i = float(pos.ra.deg), float(pos.dec.deg)
                except Exception:  # a record without a position is still usable
                    ra_i = dec_i = None
                fsize = getattr(rec, "filesize", None)
                images.append(ImageInfo(url=str(url), title=title, format=str(rec.format or ""),
                                        ra=ra_i, dec=dec_i, band=_band(rec, title),
                                        size=int(fsize) if fsize and fsize > 0 else None,
                                        naxis=_naxis(rec)))
        return images

    def rank(self, images: list[ImageInfo], ra: float, dec: float,
             prefer_band: str = "b") -> list[ImageInfo]:
        """Return the FITS images, the preferred band first, then the nearest centre first.

        ``prefer_band`` may be spelled ``b`` or ``CXO_b``; JPEG rows are never returned.
        """
        band = normal_band(prefer_band)
        fits = [i for i in images if is_fits(i)]
        placed = [k for k, i in enumerate(fits) if i.ra is not None and i.dec is not None]
        dist = np.full(len(fits), 999.0)     # a row without a position comes last
        if placed:
            dist[placed] = separation_deg(ra, dec, np.array([fits[k].ra for k in placed]),
                                          np.array([fits[k].dec for k in placed]))
        order = sorted(range(len(fits)),
                       key=lambda k: (0 if band and fits[k].band == band else 1, dist[k]))
        return [fits[k] for k in order]

    def choose(self, images: list[ImageInfo], ra: float, dec: float, count: int,
               prefer_band: str = "b") -> list[ImageInfo]:
        """Pick up to ``count`` FITS images: the preferred band first, then the nearest centre."""
        return self.rank(images, ra, dec, prefer_band)[:count]

    def find(self, ra: float, dec: float, size: float,
             fmt: str = "image/fits") -> tuple[list[ImageInfo], float, float | None]:
        """Query, and query once more with :func:`retry_size` if no FITS image was found.

        Returns the rows, the SIZE that found them, and the SIZE first asked if it was retried
        (else None).
        """
        found = self.search(ra, dec, size, fmt)
        bigger = retry_size(size)
        if any(is_fits(i) for i in found) or bigger <= size:
            return found, size, None
        log.info("image query at %.5f %+.5f with SIZE=%g found no FITS image; asking once "
                 "more with SIZE=%g", ra, dec, size, bigger)
        return self.search(ra, dec, bigger, fmt), bigger, size

    def query_to_dir(self, ra: float, dec: float, size: float, dest_dir: Path, *,
                     fmt: str = "image/fits", count: int = 1, prefer_band: str = "b",
                     prefix: str = "",
                     reuse: Callable[[ImageInfo, Path], bool] | None = None,
                     keep: Callable[[ImageInfo, Path], None] | None = None) -> SiapResult:
        """Find images at a position and download up to ``count`` FITS images into ``dest_dir``.

        Only FITS rows are downloaded (:meth:`rank`); a query that finds none is retried once
        with a larger SIZE (:meth:`find`).  Gzipped files are decompressed as they stream.
        An image over the cap ``max_bytes`` (by the row's size or axis lengths, by its FITS
        header, or by the bytes received or decompressed) is skipped with a sentence in
        ``skipped`` that names the setting lifting the cap, and the next candidate is tried:
        at most ``count`` + :data:`SPARE_TRIES` downloads start per query.
        ``reuse(image, dest)``, if given, may put a copy of the image at ``dest`` from
        elsewhere (a cache) and return True, instead of a download; ``keep(image, path)`` is
        called after each download.

        Raises
        ------
        sampbridge.csc.CSCError
            If the SIAP query itself fails, or if every chosen image failed to download.
        """
        t0 = time.perf_counter()
        found, used, first = self.find(ra, dec, size, fmt)
        result = SiapResult(self.url, found, size=used, retried_from=first)
        errors: list[CSCError] = []
        tries = 0
        for img in self.rank(found, ra, dec, prefer_band):
            if len(result.downloaded) >= count or tries >= count + SPARE_TRIES:
                break
            by_row = self._too_large_by_row(img)
            if by_row is not None:
                result.skipped.append(self._over_cap(img, *by_row))
                continue
            tries += 1
            dest = dest_dir / (prefix + _file_name(img))
            try:
                self._fetch(img, dest, reuse)
                img.centre = check_fits(dest, img.url)
                if keep is not None and not img.reused:
                    keep(img, dest)
            except ResultTooLarge as exc:
                why, needed = (exc.why, exc.needed) if isinstance(exc, TooLarge) \
                    else (_cap_words(exc), None)
                self._remember_refused(img.url, why, needed)
                result.skipped.append(self._over_cap(img, why, needed))
                continue
            except CSCError as exc:
                dest.unlink(missing_ok=True)
                errors.append(exc)
                continue
            img.path = dest
            result.downloaded.append(img)
        if errors and not result.downloaded:
            raise errors[0]
        result.seconds = time.perf_counter() - t0
        return result

    def _fetch(self, img: ImageInfo, dest: Path,
               reuse: Callable[[ImageInfo, Path], bool] | None) -> None:
        """Put the image at ``dest``: from ``reuse``, else by a streamed, gunzipped download."""
        if reuse is not None and reuse(img, dest):
            img.reused = True
            img.nbytes = dest.stat().st_size
            return
        counts: dict[str, int] = {}
        try:
            img.nbytes = http.download(self.session, img.url, dest, what="image download",
                                       max_bytes=self.max_bytes, retries=self.retries,
                                       gunzip=True, chunk_size=IMAGE_CHUNK, counts=counts,
                                       on_chunk=FitsHead(self.max_bytes, img.url))
        finally:
            img.received = counts.get("received", 0)

    def _remember_refused(self, url: str, why: str, needed: int | None) -> None:
        with self._lock:
            if len(self._refused) >= _REFUSED_KEPT:
                self._refused.pop(next(iter(self._refused)), None)
            self._refused[url] = (why, needed)

    def _too_large_by_row(self, img: ImageInfo) -> tuple[str, int | None] | None:
        """Why the row (or an earlier download of it) shows it is over the cap, or None."""
        with self._lock:
            known = self._refused.get(img.url)
        if known is not None:
            return known
        if img.size and img.size > self.max_bytes:
            return f"{img.size:,} bytes to download", img.size
        pixels = math.prod(img.naxis) if img.naxis else 0
        if pixels > self.max_bytes:
            shape = " x ".join(str(n) for n in img.naxis)
            return f"at least {pixels:,} bytes decompressed ({shape} pixels)", None
        return None

    def _over_cap(self, img: ImageInfo, why: str, needed: int | None) -> str:
        """Return the sentence of an image skipped for its size: how large, the cap, the lift."""
        lift = (f"set {self.cap_name} to {needed} or more to load it" if needed
                else f"raise {self.cap_name} to load it")
        return (f"{img.title or img.url}: {why} is over the cap of {self.max_bytes:,} bytes "
                f"({self.cap_name}); {lift}")


def _cap_words(exc: ResultTooLarge) -> str:
    """How large, in the words of a download abandoned at the cap."""
    text = exc.message
    if "once decompressed" in text:
        return "the decompressed image"
    m = re.search(r"the result is (\S+) bytes", text)
    return f"{m.group(1)} bytes to download" if m else "the download"
