"""Checks of a FITS image as it downloads (its first header) and once it is on disk.

:class:`FitsHead` refuses a body that is not FITS, or whose header declares more bytes than
the cap, after one network read; :func:`check_fits` checks the file and finds the sky
position of its central pixel.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from .._astropy import quiet_astropy
from .errors import ResultTooLarge, ServiceError

__all__ = ["FitsHead", "TooLarge", "check_fits"]

log = logging.getLogger("sampbridge.csc.siap")

#: the header of the first HDU is looked for in this many bytes at most
_HEADER_SCAN = 2880 * 36


class TooLarge(ResultTooLarge):
    """An image refused for its size before or while it downloads; ``why`` says how large."""

    def __init__(self, why: str, needed: int | None = None, url: str | None = None) -> None:
        super().__init__(f"image download: {why}", url=url)
        self.why = why
        self.needed = needed


class FitsHead:
    """Reads the first HDU's header as the decompressed bytes stream to disk.

    Refuses at once a body that is not FITS, and an image whose header declares more bytes
    than the cap, so that a refused image costs one network read (:data:`IMAGE_CHUNK`), not
    its whole size.
    """

    def __init__(self, max_bytes: int, url: str) -> None:
        self.max_bytes = max_bytes
        self.url = url
        self.buf = b""
        self.done = False

    def __call__(self, chunk: bytes) -> None:
        """Look at the next decompressed chunk; raise to abandon the download."""
        if self.done:
            return
        self.buf += chunk[:_HEADER_SCAN - len(self.buf)]
        if len(self.buf) >= 9 and not self.buf.startswith(b"SIMPLE  ="):
            raise ServiceError("image download: the service sent something that is not FITS",
                               url=self.url)
        cards = [self.buf[i:i + 80].decode("ascii", "replace")
                 for i in range(0, len(self.buf) - 79, 80)]
        end = next((k for k, c in enumerate(cards) if c.rstrip() == "END"), None)
        if end is None:
            self.done = len(self.buf) >= _HEADER_SCAN
            return
        self.done = True
        self._check(cards[:end], 2880 * math.ceil((end + 1) * 80 / 2880))

    def _check(self, cards: list[str], header_bytes: int) -> None:
        values = {}
        for card in cards:
            if card[8:10] == "= ":
                values[card[:8].strip()] = card[10:].split("/", 1)[0].strip()
        try:
            bitpix = abs(int(values["BITPIX"]))
            axes = [int(values[f"NAXIS{k}"]) for k in range(1, int(values["NAXIS"]) + 1)]
        except (KeyError, ValueError):
            return
        data = bitpix // 8 * math.prod(axes) if axes else 0
        total = header_bytes + 2880 * math.ceil(data / 2880)
        if total > self.max_bytes:
            shape = " x ".join(str(a) for a in axes)
            raise TooLarge(f"{total:,} bytes decompressed (its FITS header: {shape} pixels, "
                            f"BITPIX {values['BITPIX']})", total, self.url)


def check_fits(path: Path, url: str) -> tuple[float, float] | None:
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
    except Exception as exc:  # a FITS file without a usable WCS still loads
        log.debug("no WCS centre for %s: %s", path, exc)
        return None
