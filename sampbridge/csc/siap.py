"""SIAP v1 image queries, with the chosen FITS images downloaded by streaming under a size cap."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
from pyvo.dal import SIAService

from .._astropy import quiet_astropy
from . import http
from .errors import CSCError, ResultTooLarge, ServiceError
from .pyvo_errors import translated

__all__ = ["ImageInfo", "SiapResult", "SiapService", "safe_name"]

log = logging.getLogger(__name__)


def safe_name(text: str, limit: int = 80) -> str:
    """Return ``text`` as a file-name part that cannot leave its folder."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._")
    return (name or "result")[:limit]


@dataclass
class ImageInfo:
    """One image found by a SIAP query (and, once downloaded, its file)."""

    url: str
    title: str
    format: str
    ra: float | None
    dec: float | None
    band: str
    size: int | None
    path: Path | None = None
    centre: tuple[float, float] | None = None
    #: True when the file came from a cache, not a download
    reused: bool = False


@dataclass
class SiapResult:
    """The images a SIAP query found, and those that were downloaded."""

    url: str
    found: list[ImageInfo]
    downloaded: list[ImageInfo] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _sep(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    c = math.sin(d1) * math.sin(d2) + math.cos(d1) * math.cos(d2) * math.cos(r1 - r2)
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def _band(rec: object, title: str) -> str:
    for key in ("band", "cscband"):
        try:
            value = rec[key]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            continue
        if value is not None and str(value).strip():
            return str(value).strip()
    m = re.search(r"\b([bhmsuw])[ _-]band\b", title) or re.search(r"_([bhmsuw])\.fits", title)
    return m.group(1) if m else ""


class SiapService:
    """A SIAP v1 service (``POS``, ``SIZE``, ``FORMAT``) built on :class:`pyvo.dal.SIAService`."""

    def __init__(self, url: str, session: requests.Session, max_bytes: int = 100_000_000,
                 retries: int = 2) -> None:
        self.url = url
        self.session = session
        self.max_bytes = max_bytes
        self.retries = retries

    def search(self, ra: float, dec: float, size: float,
               fmt: str = "image/fits") -> list[ImageInfo]:
        """Return the images that cover a position."""
        with translated("image query (SIAP)", self.url), quiet_astropy():
            service = SIAService(self.url, session=self.session)
            results = service.search(pos=(ra, dec), size=size, format=fmt or "ALL")
            images = []
            for rec in results:
                url = rec.getdataurl()
                if not url:
                    continue
                title = str(rec.title or "")
                try:
                    pos = rec.pos
                    ra_i, dec_i = float(pos.ra.deg), float(pos.dec.deg)
                except Exception:  # noqa: BLE001 - a record without a position is still usable
                    ra_i = dec_i = None
                fsize = getattr(rec, "filesize", None)
                images.append(ImageInfo(url=str(url), title=title, format=str(rec.format or ""),
                                        ra=ra_i, dec=dec_i, band=_band(rec, title),
                                        size=int(fsize) if fsize and fsize > 0 else None))
        return images

    def choose(self, images: list[ImageInfo], ra: float, dec: float, count: int,
               prefer_band: str = "b") -> list[ImageInfo]:
        """Pick up to ``count`` FITS images: the preferred band first, then the nearest centre."""
        fits_like = [i for i in images if "fits" in i.format.lower() or not i.format]

        def key(i: ImageInfo) -> tuple[int, float]:
            dist = _sep(ra, dec, i.ra, i.dec) if i.ra is not None and i.dec is not None else 999
            return (0 if prefer_band and i.band == prefer_band else 1, dist)

        return sorted(fits_like, key=key)[:count]

    def query_to_dir(self, ra: float, dec: float, size: float, dest_dir: Path, *,
                     fmt: str = "image/fits", count: int = 1, prefer_band: str = "b",
                     prefix: str = "",
                     reuse: Callable[[ImageInfo, Path], bool] | None = None,
                     keep: Callable[[ImageInfo, Path], None] | None = None) -> SiapResult:
        """Find images at a position and download up to ``count`` of them into ``dest_dir``.

        Images over the size cap are skipped (and named in ``skipped``), not fatal.
        ``reuse(image, dest)``, if given, may put a copy of the image at ``dest`` from
        elsewhere (a cache) and return True, instead of a download; ``keep(image, path)`` is
        called after each download.

        Raises
        ------
        sampbridge.csc.CSCError
            If the SIAP query itself fails, or if every chosen image failed to download.
        """
        t0 = time.perf_counter()
        found = self.search(ra, dec, size, fmt)
        result = SiapResult(self.url, found)
        errors: list[CSCError] = []
        for img in self.choose(found, ra, dec, count, prefer_band):
            base = safe_name(img.title or img.url.rsplit("/", 1)[-1])
            if not base.endswith(".fits"):
                base += ".fits"
            dest = dest_dir / (prefix + base)
            if img.size and img.size > self.max_bytes:
                result.skipped.append(f"{img.title}: {img.size:,} bytes is over the cap")
                continue
            try:
                if reuse is not None and reuse(img, dest):
                    img.reused = True
                else:
                    http.download(self.session, img.url, dest, what="image download",
                                  max_bytes=self.max_bytes, retries=self.retries)
                img.centre = _check_fits(dest, img.url)
                if keep is not None and not img.reused:
                    keep(img, dest)
            except ResultTooLarge as exc:
                result.skipped.append(f"{img.title}: {exc}")
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


def _check_fits(path: Path, url: str) -> tuple[float, float] | None:
    """Check that ``path`` is FITS; return the world position of its central pixel."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head != b"SIMPLE  =":
        raise ServiceError("image download: the service sent something that is not FITS",
                           url=url)
    try:
        from astropy.io import fits
        from astropy.wcs import WCS

        with quiet_astropy():
            hdr = fits.getheader(path)
            w = WCS(hdr).celestial
            if not w.has_celestial:
                return None
            x = (hdr.get("NAXIS1", 1) - 1) / 2.0
            y = (hdr.get("NAXIS2", 1) - 1) / 2.0
            ra, dec = w.all_pix2world([[x, y]], 0)[0]
            return float(ra), float(dec)
    except Exception as exc:  # noqa: BLE001 - a FITS file without a usable WCS still loads
        log.debug("no WCS centre for %s: %s", path, exc)
        return None
