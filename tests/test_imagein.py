"""An image in, CSC sources out: header-only reads of real FITS files and their sky footprint."""

from __future__ import annotations

import gzip
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from sampbridge.csc.http import make_session
from sampbridge.imagein import BLOCK, ImageError, footprint_cone, read_fits_header

from conftest import wait_for

RA, DEC = 246.79, -24.32


def tan_wcs(nx: int = 100, ny: int = 80, ra: float = RA, dec: float = DEC,
            scale_arcsec: float = 1.0) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    w.wcs.cdelt = [-scale_arcsec / 3600, scale_arcsec / 3600]
    return w


def write_tan(path: Path, nx: int = 100, ny: int = 80, **kw: float) -> Path:
    fits.PrimaryHDU(np.zeros((ny, nx), np.float32),
                    header=tan_wcs(nx, ny, **kw).to_header()).writeto(path)
    return path


def corners(header_or_wcs, nx: int, ny: int) -> SkyCoord:
    w = header_or_wcs if isinstance(header_or_wcs, WCS) else WCS(header_or_wcs)
    return w.pixel_to_world([-0.5, nx - 0.5, -0.5, nx - 0.5], [-0.5, -0.5, ny - 0.5, ny - 0.5])


def assert_covers(cone: tuple[float, float, float], sky: SkyCoord) -> None:
    ra, dec, radius = cone
    sep = SkyCoord(ra * u.deg, dec * u.deg).separation(sky.icrs).deg
    assert np.all(sep <= radius + 1e-9), (sep, radius)


# ----------------------------------------------------------------------------- good images
def test_tan_image_gives_the_cone_that_covers_it(tmp_path: Path):
    path = write_tan(tmp_path / "user.fits", 100, 80)
    header = read_fits_header(path)
    assert header["NAXIS1"] == 100 and header["CTYPE1"] == "RA---TAN"
    ra, dec, radius = footprint_cone(header)
    assert SkyCoord(ra * u.deg, dec * u.deg).separation(
        SkyCoord(RA * u.deg, DEC * u.deg)).arcsec < 0.01
    assert radius == pytest.approx(np.hypot(50, 40) / 3600, rel=1e-4)   # half the diagonal
    assert_covers((ra, dec, radius), corners(header, 100, 80))


@pytest.mark.parametrize("spelling", ["file:{p}", "file://{p}", "file://localhost{p}",
                                      "file://localhost/{p}"])
def test_file_urls_in_every_peer_spelling(tmp_path: Path, spelling: str):
    path = write_tan(tmp_path / "user image.fits")
    url = spelling.format(p=str(path).replace(" ", "%20"))
    assert read_fits_header(url)["NAXIS2"] == 80


def test_gzip_image_is_decompressed_while_streaming(tmp_path: Path):
    plain = write_tan(tmp_path / "img.fits", 300, 200)
    gz = tmp_path / "img.fits.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    assert footprint_cone(read_fits_header(gz.as_uri())) == footprint_cone(
        read_fits_header(plain))


def test_empty_primary_then_image_extension(tmp_path: Path):
    path = tmp_path / "mef.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((80, 100), np.float32),
                                                   header=tan_wcs().to_header())]).writeto(path)
    header = read_fits_header(path)
    assert header["XTENSION"] == "IMAGE"
    assert footprint_cone(header)[2] == pytest.approx(np.hypot(50, 40) / 3600, rel=1e-4)


def test_tile_compressed_image_uses_the_image_size(tmp_path: Path):
    path = tmp_path / "img.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(
        np.zeros((80, 100), np.float32), header=tan_wcs().to_header())]).writeto(path)
    header = read_fits_header(path)
    assert (header["NAXIS1"], header["NAXIS2"]) == (100, 80)
    assert footprint_cone(header)[2] == pytest.approx(np.hypot(50, 40) / 3600, rel=1e-4)


def test_galactic_image_gives_an_icrs_cone(tmp_path: Path):
    w = WCS(naxis=2)
    w.wcs.ctype = ["GLON-TAN", "GLAT-TAN"]
    w.wcs.crval = [0.0, 0.0]
    w.wcs.crpix = [50.5, 40.5]
    w.wcs.cdelt = [-1 / 3600, 1 / 3600]
    path = tmp_path / "gal.fits"
    fits.PrimaryHDU(np.zeros((80, 100), np.float32), header=w.to_header()).writeto(path)
    ra, dec, radius = footprint_cone(read_fits_header(path))
    gc = SkyCoord(0 * u.deg, 0 * u.deg, frame="galactic").icrs
    assert SkyCoord(ra * u.deg, dec * u.deg).separation(gc).arcsec < 0.01
    assert_covers((ra, dec, radius), corners(w, 100, 80))


def test_a_cube_with_celestial_axes_not_first(tmp_path: Path):
    h = fits.Header()
    h["NAXIS"] = 3
    for i, (n, ctype, crval, cdelt) in enumerate([(7, "FREQ", 1e9, 1e6),
                                                 (100, "RA---TAN", RA, -1 / 3600),
                                                 (80, "DEC--TAN", DEC, 1 / 3600)], start=1):
        h[f"NAXIS{i}"], h[f"CTYPE{i}"], h[f"CRVAL{i}"], h[f"CDELT{i}"] = n, ctype, crval, cdelt
        h[f"CRPIX{i}"] = (n + 1) / 2
    ra, dec, radius = footprint_cone(h)
    assert radius == pytest.approx(np.hypot(50, 40) / 3600, rel=1e-4)
    assert (ra, dec) == pytest.approx((RA, DEC))


# ----------------------------------------------------------------------------- bad images
def _error(source, **kw) -> str:
    with pytest.raises(ImageError) as info:
        footprint_cone(read_fits_header(source, **kw))
    text = str(info.value)
    assert "\n" not in text and "Traceback" not in text and len(text) < 300
    return text


def test_not_fits(tmp_path: Path):
    path = tmp_path / "photo.fits"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(5000))
    assert "photo.fits is not a FITS file" in _error(path)


def test_empty_file(tmp_path: Path):
    (tmp_path / "empty.fits").write_bytes(b"")
    assert "empty.fits is empty" in _error(tmp_path / "empty.fits")


def test_headerless_data(tmp_path: Path):
    path = tmp_path / "raw.fits"
    path.write_bytes(np.arange(5000, dtype=">f4").tobytes())   # pixels with no header at all
    assert "not a FITS file" in _error(path)


def test_truncated_header_has_no_end(tmp_path: Path):
    good = write_tan(tmp_path / "good.fits").read_bytes()
    cut = tmp_path / "cut.fits"
    cut.write_bytes(good[:BLOCK // 2])                         # half a header block
    assert "cut.fits ends before its FITS header does" in _error(cut)
    gz = tmp_path / "cut.fits.gz"
    gz.write_bytes(gzip.compress(good)[:200])                  # gzip stream cut short
    assert "truncated" in _error(gz)


def test_corrupt_gzip(tmp_path: Path):
    data = bytearray(gzip.compress(write_tan(tmp_path / "g.fits").read_bytes()))
    data[20:60] = b"\xff" * 40
    path = tmp_path / "bad.fits.gz"
    path.write_bytes(bytes(data))
    assert "gzip-compressed but its compressed data is corrupt" in _error(path)


def test_linear_wcs_only_is_refused(tmp_path: Path):
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "LINEAR", "LINEAR"
    h["CRPIX1"], h["CRPIX2"], h["CDELT1"], h["CDELT2"] = 1.0, 1.0, 0.5, 0.5
    path = tmp_path / "lab.fits"
    fits.PrimaryHDU(np.zeros((20, 30), np.float32), header=h).writeto(path)
    assert _error(path) == ("the image has no celestial WCS (CTYPE RA---/DEC--): cannot tell "
                            "which sky it shows")
    plain = tmp_path / "nowcs.fits"
    fits.PrimaryHDU(np.zeros((20, 30), np.float32)).writeto(plain)
    assert "no celestial WCS" in _error(plain)


def _comment_header(n_bytes: int) -> fits.Header:
    h = tan_wcs().to_header()
    for i in range(n_bytes // 80):
        h.add_comment(f"padding card {i}")
    return h


def test_oversized_header_is_refused_without_reading_it_all(tmp_path: Path):
    path = tmp_path / "huge_header.fits"
    fits.PrimaryHDU(np.zeros((8, 10), np.float32), header=_comment_header(3_000_000)).writeto(
        path)
    assert path.stat().st_size > 3_000_000
    assert "huge_header.fits has an oversized header" in _error(path, max_bytes=1 << 20)
    # the cap counts decompressed bytes: 3 MB of cards compress to a few kB
    gz = tmp_path / "huge_header.fits.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert gz.stat().st_size < 1 << 20
    assert "oversized header" in _error(gz, max_bytes=1 << 20)
    # a larger cap reads it
    assert read_fits_header(path, max_bytes=4 << 20)["NAXIS1"] == 10


def test_primary_without_image_and_no_image_extension(tmp_path: Path):
    lone = tmp_path / "lone.fits"
    fits.PrimaryHDU().writeto(lone)
    assert "NAXIS = 0 and no extension follows" in _error(lone)
    table = tmp_path / "events.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column("x", "E", array=np.zeros(3))])]).writeto(table)
    assert "first extension is a BINTABLE" in _error(table)


def test_missing_file_fifo_and_folder(tmp_path: Path):
    assert "does not exist" in _error(tmp_path / "gone.fits")
    assert "does not exist" in _error((tmp_path / "gone.fits").as_uri())
    fifo = tmp_path / "pipe.fits"
    os.mkfifo(fifo)
    assert "not a regular file" in _error(fifo)                # refused, never blocks
    assert "not a regular file" in _error(tmp_path)


@pytest.mark.parametrize("url", ["http://example.org/img.fits", "https://10.1.2.3/img.fits",
                                 "file://otherhost/tmp/img.fits", "ftp://127.0.0.1/img.fits",
                                 "", "   "])
def test_refused_sources(url: str):
    text = _error(url, session=None)
    assert any(w in text for w in ("refusing", "another host", "only file:", "no image 'url'"))


# ----------------------------------------------------------------------------- loopback http
class _FitsHandler(BaseHTTPRequestHandler):
    server: FitsServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        if self.path not in srv.files:
            self.send_error(404)
            return
        header, data_len = srv.files[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "application/fits")
        self.send_header("Content-Length", str(len(header) + data_len))
        self.end_headers()
        sent = 0
        try:
            self.wfile.write(header)
            sent += len(header)
            if srv.stall:                       # header, then nothing until the test ends
                srv.release.wait(60)
            chunk = b"\0" * 65536
            while sent < len(header) + data_len and not srv.release.is_set():
                self.wfile.write(chunk)
                sent += len(chunk)
                srv.release.wait(0.002)         # a slow server: about 30 MB/s at most
        except OSError:
            pass                                # the reader hung up: what we want
        finally:
            with srv.lock:
                srv.sent.append(sent)


class FitsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, stall: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _FitsHandler)
        self.files: dict[str, tuple[bytes, int]] = {}
        self.sent: list[int] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.stall = stall
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def close(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


def _big_image_header(data_mb: int) -> tuple[bytes, int]:
    """The header bytes of a FITS image whose data is ``data_mb`` MB, and that size."""
    n = int(np.sqrt(data_mb * 1e6 / 4))
    h = fits.Header([("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 2), ("NAXIS1", n),
                     ("NAXIS2", n)])
    h.extend(tan_wcs(n, n).to_header())
    return h.tostring().encode("ascii"), n * n * 4


@pytest.fixture
def fits_server():
    servers: list[FitsServer] = []

    def make(stall: bool = False) -> FitsServer:
        servers.append(FitsServer(stall))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def test_slow_loopback_server_only_the_header_is_read(tmp_path: Path, fits_server):
    srv = fits_server()
    header, data_len = _big_image_header(50)
    srv.files["/big.fits"] = (header, data_len)
    session = make_session(5, 10)
    h = read_fits_header(srv.url("/big.fits"), session)
    assert h["NAXIS1"] > 3000
    wait_for(lambda: srv.sent, 20, what="the server to see the reader hang up")
    assert srv.sent[0] < len(header) + 3_000_000 < data_len, srv.sent  # 50 MB never sent
    assert footprint_cone(h)[2] > 0


def test_server_that_stalls_after_the_header_does_not_hold_the_reader(fits_server):
    srv = fits_server(stall=True)
    header, data_len = _big_image_header(50)
    srv.files["/stall.fits"] = (header, data_len)
    # the data never comes: a reader that waited for it would hit the 30 s deadline
    h = read_fits_header(srv.url("/stall.fits"), make_session(5, 30), deadline=30)
    assert h["NAXIS"] == 2


def test_gzip_over_http_and_404(tmp_path: Path, fits_server):
    srv = fits_server()
    gz = gzip.compress(write_tan(tmp_path / "img.fits").read_bytes())
    srv.files["/img.fits.gz"] = (gz, 0)
    h = read_fits_header(srv.url("/img.fits.gz"), make_session(5, 10))
    assert h["NAXIS1"] == 100
    assert "does not exist (HTTP 404)" in _error(srv.url("/nothing.fits"),
                                                 session=make_session(5, 10))


def test_http_header_trickled_past_the_deadline(fits_server):
    srv = fits_server(stall=True)
    header, _ = _big_image_header(1)
    srv.files["/half.fits"] = (header[:BLOCK // 2], 100_000)  # half a header, then silence
    text = _error(srv.url("/half.fits"), session=make_session(5, 1), deadline=1)
    assert "the header of the image half.fits did not arrive" in text
