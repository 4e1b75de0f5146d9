"""An image in, CSC sources out: read a FITS image's header only, and the cone that covers it.

A viewer sends ``image.load.fits`` with the URL of an image that may be hundreds of megabytes;
sampbridge needs only the header to know which sky it shows.  :func:`read_fits_header` reads a
local ``file:`` URL (or path) or a loopback http(s) URL in 2880-byte FITS blocks until the END
card of the primary header (and of the first extension when the primary holds no image), within
a size cap, decompressing a gzip-compressed file as it goes.  It never reads the pixels.
:func:`footprint_cone` turns the celestial WCS of that header into a cone (centre and radius)
that covers the image.  No SAMP here.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
import zlib
from collections.abc import Generator, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
from astropy.io import fits

from ._astropy import quiet_astropy
from .csc import http
from .csc.errors import CSCError
from .model import RequestError
from .tables import TableError, is_loopback, url_to_path

__all__ = ["ImageError", "read_fits_header", "footprint_cone", "DEFAULT_HEADER_MAX_BYTES"]

#: Most (decompressed) bytes of FITS headers read from one image when the caller gives no cap.
DEFAULT_HEADER_MAX_BYTES = 1 << 20
#: Most seconds reading the header of an http(s) image may take, however slowly it comes.
DEFAULT_DEADLINE = 30.0
BLOCK = 2880
_CARD = 80
_GZIP_MAGIC = b"\x1f\x8b"
_NO_WCS = ("has no celestial WCS (CTYPE RA---/DEC--): cannot tell which sky it shows")


class ImageError(RequestError):
    """An image whose footprint cannot be found; the message says why and what to do."""


# ----------------------------------------------------------------------------- sources
def _label(url_or_path: str | os.PathLike) -> str:
    """How an image is named in errors: its file name, else its URL."""
    text = os.fspath(url_or_path)
    name = Path(unquote(urlsplit(text).path)).name if "://" in text or text.startswith(
        "file:") else Path(text).name
    return name or text


def _local_chunks(path: Path, label: str) -> Generator[bytes, None, None]:
    """Yield a local regular file's bytes in FITS blocks (a FIFO or a device is refused)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ImageError(f"the image file {path} does not exist") from None
    except OSError as exc:
        raise ImageError(f"cannot read the image file {path}: "
                         f"{exc.strerror or 'input/output error'}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageError(f"the image {label} is not a regular file; only regular files are "
                             "read")
        while True:
            try:
                chunk = os.read(fd, BLOCK)
            except OSError as exc:
                raise ImageError(f"cannot read the image file {path}: "
                                 f"{exc.strerror or 'input/output error'}") from None
            if not chunk:
                return
            yield chunk
    finally:
        os.close(fd)


def _http_chunks(url: str, session, deadline: float,
                 label: str) -> Generator[bytes, None, None]:
    """Yield an http(s) body as it arrives, in small reads, until ``deadline`` seconds pass."""
    what = "image header download"
    give_up_at = time.monotonic() + deadline
    connect, read = getattr(session, "timeout", None) or (10.0, 120.0)
    try:
        resp = http.request(session, "GET", url, what, stream=True, give_up_at=give_up_at,
                            timeout=(min(connect, deadline), min(read, deadline)))
    except CSCError as exc:
        raise ImageError(f"cannot fetch the image {label}: {exc}") from None
    with resp:
        if resp.status_code == 404:
            raise ImageError(f"the image URL {url} does not exist (HTTP 404)")
        if resp.status_code >= 400:
            raise ImageError(f"cannot fetch the image {label}: the server answered HTTP "
                             f"{resp.status_code} {resp.reason}")
        read1 = getattr(resp.raw, "read1", None)
        while True:
            if time.monotonic() >= give_up_at:
                raise ImageError(f"the header of the image {label} did not arrive within "
                                 f"{deadline:g} s")
            try:
                chunk = read1(BLOCK, decode_content=True) if read1 is not None \
                    else resp.raw.read(BLOCK, decode_content=True)
            except Exception as exc:  # urllib3/requests/socket errors alike
                if "timeout" in type(exc).__name__.lower():
                    raise ImageError(f"the header of the image {label} did not arrive: the "
                                     "server stopped sending it (read timeout)") from None
                raise ImageError(f"cannot fetch the image {label}: the download was cut off "
                                 f"({exc.__class__.__name__})") from None
            if not chunk:
                return
            yield chunk


def _open_source(url_or_path: str | os.PathLike, session, allow_remote: bool,
                 deadline: float, remote_key: str) -> tuple[Generator[bytes, None, None], str]:
    """Return an iterator of the raw bytes of the image, and its label for errors."""
    if not isinstance(url_or_path, (str, os.PathLike)) or not os.fspath(url_or_path).strip():
        raise ImageError("the message has no image 'url'")
    text = os.fspath(url_or_path).strip()
    label = _label(text)
    if isinstance(url_or_path, os.PathLike) or "://" not in text and not text.startswith(
            "file:"):
        return _local_chunks(Path(text), label), label
    try:
        local = url_to_path(text)
    except TableError as exc:
        raise ImageError(str(exc)) from None
    if local is not None:
        return _local_chunks(local, label), label
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        raise ImageError(f"cannot fetch an image by '{parts.scheme}': only file:, and http(s) "
                         "on this machine, are allowed")
    if not allow_remote and not is_loopback(parts.hostname or ""):
        raise ImageError(f"refusing to fetch an image from {parts.hostname}: only this machine "
                         f"(127.0.0.1, localhost) is allowed unless {remote_key} is true")
    if session is None:
        raise ImageError("no HTTP session to fetch the image with")  # a programming slip
    return _http_chunks(text, session, deadline, label), label


def _gunzip(chunks: Iterator[bytes], label: str) -> Iterator[bytes]:
    """Decompress a gzip stream lazily, in bounded pieces (a gzip bomb costs nothing)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    for chunk in chunks:
        data = chunk
        while data and not inflater.eof:
            try:
                out = inflater.decompress(data, 4 * BLOCK)
            except zlib.error:
                raise ImageError(f"the image {label} is gzip-compressed but its compressed data "
                                 "is corrupt") from None
            data = inflater.unconsumed_tail
            if out:
                yield out
        if inflater.eof:
            return


def _decoded(chunks: Iterator[bytes], label: str) -> Generator[bytes, None, None]:
    """Yield the FITS bytes: the raw stream, or its decompression when it is gzip."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= len(_GZIP_MAGIC):
            break
    rest = _chain(head, chunks)
    if head.startswith(_GZIP_MAGIC):
        yield from _gunzip(rest, label)
    else:
        yield from rest


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    """Yield ``first`` (when not empty), then every item of ``rest``."""
    if first:
        yield first
    yield from rest


# ----------------------------------------------------------------------------- FITS blocks
class _HeaderReader:
    """Cut a FITS byte stream into headers, counting the bytes against the cap."""

    def __init__(self, stream: Iterator[bytes], max_bytes: int, label: str) -> None:
        self._stream = stream
        self._buf = bytearray()
        self._max = max_bytes
        self._used = 0
        self._eof = False
        self.label = label

    def _block(self) -> bytes | None:
        """Return the next whole block, ``b""`` at a clean end, or ``None`` mid-block."""
        while len(self._buf) < BLOCK and not self._eof:
            chunk = next(self._stream, b"")
            if chunk:
                self._buf += chunk
            else:
                self._eof = True
        if len(self._buf) >= BLOCK:
            block = bytes(self._buf[:BLOCK])
            del self._buf[:BLOCK]
            return block
        return b"" if not self._buf else None

    def header(self, first_key: bytes, primary: bool) -> fits.Header | None:
        """Read the next header (it must start with ``first_key``); None at the end of file."""
        blocks: list[bytes] = []
        while True:
            if self._used + BLOCK > self._max:
                raise ImageError(f"the image {self.label} has an oversized header: no END card "
                                 f"within the first {self._max:,} bytes of FITS header")
            block = self._block()
            if not blocks:
                self._check_start(block, first_key, primary)
                if block == b"":
                    return None
            if not block:
                raise ImageError(f"the image {self.label} ends before its FITS header does (no "
                                 "END card): the file is truncated")
            self._used += BLOCK
            blocks.append(block)
            if any(block[i:i + 8] == b"END     " for i in range(0, BLOCK, _CARD)):
                return _parse("".join(b.decode("latin-1") for b in blocks), self.label)

    def _check_start(self, block: bytes | None, first_key: bytes, primary: bool) -> None:
        data = block if block else bytes(self._buf)
        if primary and not data:
            raise ImageError(f"the image {self.label} is empty: it holds no FITS header")
        if data and not data.startswith(first_key[:len(data)]):
            if primary:
                raise ImageError(f"the image {self.label} is not a FITS file (it does not begin "
                                 "with SIMPLE =)")
            raise ImageError(f"the image {self.label} has no valid FITS extension after its "
                             "empty primary header")


def _parse(text: str, label: str) -> fits.Header:
    if not text.isascii() or not text.isprintable():
        raise ImageError(f"the FITS header of the image {label} holds bytes that are not "
                         "printable ASCII: it is not a valid FITS file")
    try:
        with quiet_astropy():
            return fits.Header.fromstring(text)
    except Exception:  # any card astropy cannot read makes the header unusable
        raise ImageError(f"the FITS header of the image {label} cannot be read: its cards are "
                         "malformed") from None


def _naxis(header: fits.Header) -> int:
    try:
        return int(header.get("NAXIS", 0))
    except (TypeError, ValueError):
        return 0


def _image_header(ext: fits.Header, label: str) -> fits.Header:
    """Return an extension header describing its image (a tile-compressed one unpacked)."""
    kind = str(ext.get("XTENSION", "")).strip().upper()
    if kind == "IMAGE" and _naxis(ext) > 0:
        return ext
    if kind == "BINTABLE" and ext.get("ZIMAGE") is True:
        h = ext.copy()
        h["NAXIS"] = ext.get("ZNAXIS", 0)
        for i in range(1, _naxis(h) + 1):
            h[f"NAXIS{i}"] = ext.get(f"ZNAXIS{i}", 0)
        return h
    raise ImageError(f"the image {label} holds no image: its primary header has NAXIS = 0 and "
                     f"its first extension is {'a ' + kind if kind else 'not an image'}")


def read_fits_header(url_or_path: str | os.PathLike, session=None,
                     max_bytes: int = DEFAULT_HEADER_MAX_BYTES, allow_remote: bool = False, *,
                     deadline: float = DEFAULT_DEADLINE,
                     remote_key: str = "tables.allow_remote") -> fits.Header:
    """Read the header of a FITS image, never its data.

    The primary header is read up to its END card; when it holds no image (``NAXIS = 0``), the
    first extension's header is read too and returned (an ``IMAGE``, or a tile-compressed image
    whose ``NAXISn`` are then set to its ``ZNAXISn``).

    Parameters
    ----------
    url_or_path : str or os.PathLike
        A ``file:`` URL in any peer spelling, a local path, or an http(s) URL on this machine
        (anywhere with ``allow_remote``).  The file may be gzip-compressed.
    session : requests.Session, optional
        The session http(s) reads use (with its timeouts); needed for http(s) only.
    max_bytes : int
        Most bytes of FITS header read in all, counted after decompression.
    allow_remote : bool
        Allow http(s) hosts other than this machine.
    deadline : float
        Most seconds an http(s) read may take in all, however slowly the server sends.
    remote_key : str
        The setting named in the error that refuses a remote host.

    Returns
    -------
    astropy.io.fits.Header
        The header that describes the image.

    Raises
    ------
    ImageError
        One sentence: a missing or refused file or URL, an empty file, a file that is not FITS,
        a truncated one, a header with no END card within ``max_bytes``, or no image at all.
    """
    raw, label = _open_source(url_or_path, session, allow_remote, deadline, remote_key)
    stream = _decoded(raw, label)
    with contextlib.closing(stream), contextlib.closing(raw):
        reader = _HeaderReader(stream, max_bytes, label)
        primary = reader.header(b"SIMPLE  =", primary=True)
        assert primary is not None  # an empty file raised already
        if _naxis(primary) > 0:
            return primary
        ext = reader.header(b"XTENSION=", primary=False)
        if ext is None:
            raise ImageError(f"the image {label} holds no image: its primary header has "
                             "NAXIS = 0 and no extension follows")
        return _image_header(ext, label)


# ----------------------------------------------------------------------------- footprint
def _celestial(header: fits.Header):  # an astropy.wcs.WCS
    from astropy.wcs import WCS

    try:
        with quiet_astropy():
            wcs = WCS(header)
    except Exception:  # wcslib refuses many headers, each in its own words
        raise ImageError("the image's WCS keywords cannot be interpreted: cannot tell which "
                         "sky it shows") from None
    if not wcs.has_celestial:
        raise ImageError(f"the image {_NO_WCS}")
    return wcs.celestial


def footprint_cone(header: fits.Header) -> tuple[float, float, float]:
    """Return the ICRS cone ``(ra, dec, radius)`` in degrees that covers a FITS image.

    The centre is the world position of the image's central pixel; the radius is the largest
    separation from it to the image's four corners and the midpoints of its edges (pixel
    edges, not pixel centres), so the cone holds the whole image.

    Parameters
    ----------
    header : astropy.io.fits.Header
        An image header, e.g. from :func:`read_fits_header`.

    Raises
    ------
    ImageError
        When the header has no celestial WCS, no pixels, or corners that fall off the sky.
    """
    wcs = _celestial(header)
    shape = wcs.pixel_shape
    if not shape or len(shape) != 2 or min(int(n or 0) for n in shape) <= 0:
        raise ImageError("the image has no pixels on its celestial axes (NAXIS1 and NAXIS2 must "
                         "be above 0)")
    nx, ny = (int(n) for n in shape)
    xs = np.array([(nx - 1) / 2, -0.5, nx - 0.5, -0.5, nx - 0.5, (nx - 1) / 2, (nx - 1) / 2,
                   -0.5, nx - 0.5])
    ys = np.array([(ny - 1) / 2, -0.5, -0.5, ny - 0.5, ny - 0.5, -0.5, ny - 0.5,
                   (ny - 1) / 2, (ny - 1) / 2])
    try:
        with quiet_astropy():
            sky = wcs.pixel_to_world(xs, ys).icrs
    except Exception:  # a projection can fail for pixels off its sky
        raise ImageError("the image's WCS cannot place its corners on the sky") from None
    ok = np.isfinite(sky.ra.deg) & np.isfinite(sky.dec.deg)
    if not ok[0] or ok.sum() < 2:
        raise ImageError("the image's WCS cannot place its centre and corners on the sky")
    centre = sky[0]
    radius = float(np.max(centre.separation(sky[1:][ok[1:]]).deg))
    return float(centre.ra.deg) % 360.0, float(centre.dec.deg), radius
