"""SIAP against both shapes of the local CSC: CXC's (gzipped FITS and JPEG rows, ``CXO_`` bands,
nothing at a small SIZE, 67 MB full-field images) and the standard DaCHS one; hostile answers
come from small loopback servers that each test owns."""

from __future__ import annotations

import gzip
import logging
import os
import threading
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from astropy.io import fits
from astropy.wcs import WCS

from sampbridge.config import defaults
from sampbridge.csc import http
from sampbridge.csc.errors import ResultTooLarge, ServiceError
from sampbridge.csc.siap import IMAGE_CHUNK, SiapService, normal_band, retry_size
from sampbridge.csc.sky import separation_deg
from sampbridge.engine import Engine
from sampbridge.model import SiapRequest

from conftest import local_config

pytestmark = pytest.mark.server

RHO = (246.7925, -24.32027)
#: the SIAP query URL of each shape of the local CSC
SHAPES = {"cxc": "/csc21siap/queryImages", "standard": "/csc21/q/queryImages/siap.xml",
          "pessimistic": "/pessimistic/csc21siap/queryImages"}
FULL_FIELD = 4096 * 4096 * 4          # the front's full-field images: 4096 x 4096 int32
LIFTED = 100_000_000                  # a cap that lets them through (the user's opt-in)


def _engine(vo_server: str, tmp_path: Path, shape: str = "cxc", **changes: object) -> Engine:
    return Engine(local_config(vo_server, tmp_path / "results", **{
        "services.siap": vo_server + SHAPES[shape], **changes}))


@pytest.fixture
def make_engine(vo_server, tmp_path) -> Callable[..., Engine]:
    made: list[Engine] = []

    def make(shape: str = "cxc", **changes: object) -> Engine:
        made.append(_engine(vo_server, tmp_path, shape, **changes))
        return made[-1]

    yield make
    for e in made:
        e.close()


def _centre(path: Path) -> tuple[float, float, tuple[int, ...]]:
    with fits.open(path) as hdul:
        h = hdul[0].header
        w = WCS(h).celestial
        assert w.has_celestial
        ra, dec = w.all_pix2world([[(h["NAXIS1"] - 1) / 2, (h["NAXIS2"] - 1) / 2]], 0)[0]
        return float(ra), float(dec), hdul[0].data.shape


# ------------------------------------------------------------------ loopback servers
class Loopback(ThreadingHTTPServer):
    """Serves fixed answers on 127.0.0.1: ``routes[path] = (body, content type)``."""

    daemon_threads = True

    def __init__(self, routes: dict[str, tuple[bytes, str]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes = routes
        self.hits: list[tuple[str, dict[str, list[str]]]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> Loopback:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def paths(self) -> list[str]:
        with self.lock:
            return [p for p, _ in self.hits]


class _Handler(BaseHTTPRequestHandler):
    server: Loopback

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        with self.server.lock:
            self.server.hits.append((parts.path, parse_qs(parts.query)))
        body, ctype = self.server.routes.get(parts.path, (b"no such thing", "text/plain"))
        code = 404 if parts.path not in self.server.routes else 200
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:          # the client stopped reading: that is what some tests want
            pass


def siap_votable(rows: list[dict[str, str]]) -> bytes:
    """A SIAP 1.0 answer (VOTable 1.2 TABLEDATA) with the given rows."""
    fields = [("imageTitle", "VOX:Image_Title", "char"), ("accref", "VOX:Image_AccessReference",
              "char"), ("mime", "VOX:Image_Format", "char"), ("ra", "POS_EQ_RA_MAIN", "double"),
              ("dec", "POS_EQ_DEC_MAIN", "double"), ("band", "instr.bandpass", "char")]
    size = {"char": ' arraysize="*"', "double": ""}
    head = "".join(f'<FIELD name="{n}" ucd="{u}" datatype="{t}"{size[t]}/>'
                   for n, u, t in fields)
    trs = "".join("<TR>" + "".join(f"<TD>{r.get(n, '')}</TD>" for n, _, _ in fields) + "</TR>"
                  for r in rows)
    return ('<?xml version="1.0"?><VOTABLE version="1.2" '
            'xmlns="http://www.ivoa.net/xml/VOTable/v1.2"><RESOURCE type="results">'
            '<INFO name="QUERY_STATUS" value="OK"/><TABLE>' + head +
            f"<DATA><TABLEDATA>{trs}</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>").encode()


def fits_header(nx: int, ny: int, bitpix: int = 8) -> bytes:
    cards = [f"{'SIMPLE':8}= {'T':>20}", f"{'BITPIX':8}= {bitpix:>20}", f"{'NAXIS':8}= {2:>20}",
             f"{'NAXIS1':8}= {nx:>20}", f"{'NAXIS2':8}= {ny:>20}", "END"]
    text = "".join(c.ljust(80) for c in cards)
    return (text + " " * (-len(text) % 2880)).encode("ascii")


def gzip_of(head: bytes, zeros: int) -> bytes:
    """``head`` then ``zeros`` zero bytes, gzipped without ever holding them inflated."""
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [c.compress(head)]
    block = b"\0" * (1 << 20)
    for _ in range(zeros >> 20):
        out.append(c.compress(block))
    out.append(c.compress(b"\0" * (zeros & ((1 << 20) - 1))))
    out.append(c.flush())
    return b"".join(out)


#: a FITS header that claims 10 x 10 pixels, then 256 MB of zeros: about 250 kB gzipped
@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip_of(fits_header(10, 10), 256 << 20)


# ------------------------------------------------------------------ gzipped images
@pytest.mark.parametrize("shape", ["cxc", "pessimistic"])
def test_gzipped_full_field_image_is_delivered_decompressed(make_engine, tmp_path, shape):
    """The CXC shape serves .fits.gz bytes (no Content-Encoding): the file written is FITS."""
    e = make_engine(shape, **{"images.max_bytes": LIFTED})
    res = e.run_siap(SiapRequest(*RHO, 0.2), dest_dir=tmp_path / "out")
    (img,) = res.images
    assert "full-field" in img.title and img.band == "b" and img.format == "image/fits"
    assert img.path.read_bytes()[:9] == b"SIMPLE  ="
    assert img.nbytes == img.path.stat().st_size >= FULL_FIELD
    assert img.received < img.nbytes / 5          # it came gzipped, and was inflated here
    ra, dec, shape_ = _centre(img.path)
    assert shape_ == (4096, 4096)
    assert separation_deg(ra, dec, *RHO) < 0.01 and img.centre == pytest.approx((ra, dec))
    assert oct(img.path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in img.path.parent.iterdir()] == [img.path.name]   # no .part left


def test_standard_shape_image_is_plain_fits(make_engine, tmp_path):
    e = make_engine("standard")
    res = e.run_siap(SiapRequest(*RHO, 0.2), dest_dir=tmp_path / "out")
    (img,) = res.images
    assert img.band == "b" and img.received == img.nbytes == img.path.stat().st_size
    ra, dec, shape_ = _centre(img.path)
    assert shape_ == (200, 200) and separation_deg(ra, dec, *RHO) < 0.01


def test_download_decompresses_by_the_magic_bytes_not_the_headers(tmp_path):
    """gzip bytes labelled text/plain at a .fits URL are inflated; plain bytes at .gz are not."""
    data = fits_header(4, 4) + bytes(2880)
    routes = {"/a.fits": (gzip.compress(data), "text/plain"),
              "/b.fits.gz": (data, "application/gzip"),
              "/c": (gzip.compress(data[:1000]) + gzip.compress(data[1000:]), "image/fits")}
    s = http.make_session()
    with Loopback(routes) as srv:
        for path in routes:
            counts: dict[str, int] = {}
            n = http.download(s, srv.url(path), tmp_path / "x.fits", what="image download",
                              max_bytes=10**6, gunzip=True, counts=counts)
            assert n == counts["written"] == len(data), path
            assert (tmp_path / "x.fits").read_bytes() == data, path
    s.close()


def test_a_cut_off_gzip_body_is_an_error_and_leaves_no_file(tmp_path):
    whole = gzip.compress(fits_header(4, 4) + os.urandom(50_000))
    s = http.make_session()
    with Loopback({"/cut": (whole[:-40], "application/octet-stream")}) as srv:
        with pytest.raises(ServiceError, match="gzip-compressed body is cut off"):
            http.download(s, srv.url("/cut"), tmp_path / "x.fits", what="image download",
                          max_bytes=10**6, gunzip=True)
    s.close()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ bands and formats
def test_band_spellings():
    assert [normal_band(b) for b in ("CXO_b", "cxo_H", " b ", "CXO_w", "", None)] == \
        ["b", "h", "b", "w", "", ""]


@pytest.mark.parametrize("shape", ["cxc", "standard"])
@pytest.mark.parametrize("prefer", ["h", "CXO_h", "cxo_h"])
def test_the_preferred_band_is_chosen_in_either_spelling(make_engine, tmp_path, shape, prefer):
    e = make_engine(shape, **{"images.prefer_band": prefer, "images.max_bytes": LIFTED})
    res = e.run_siap(SiapRequest(*RHO, 0.2), dest_dir=tmp_path / "out")
    (img,) = res.images
    assert img.band == "h" and " h band" in img.title


def test_jpeg_rows_are_never_chosen_on_the_front(make_engine, tmp_path):
    """FORMAT=ALL: the front lists a JPEG row before each FITS row; only FITS is downloaded."""
    e = make_engine("cxc", **{"images.format": "ALL"})
    found = e.siap.search(*RHO, 0.2, "ALL")
    assert found[0].format == "image/jpeg" and {i.format for i in found} == {"image/jpeg",
                                                                             "image/fits"}
    res = e.run_siap(SiapRequest(*RHO, 0.2), dest_dir=tmp_path / "out", count=20)
    assert res.found == 12 and res.images
    for img in res.images:
        assert img.format == "image/fits" and "jpg" not in img.url
        assert img.path.read_bytes()[:9] == b"SIMPLE  ="


def test_jpeg_rows_answered_to_a_fits_query_are_skipped(tmp_path, caplog):
    """A service that answers JPEG rows to FORMAT=image/fits: none is downloaded or sent."""
    caplog.set_level(logging.INFO, logger="sampbridge")
    with Loopback({}) as srv:
        rows = [{"imageTitle": "x b band preview", "accref": srv.url("/x.jpg"),
                 "mime": "image/jpeg", "ra": "246.79", "dec": "-24.32", "band": "CXO_b"},
                {"imageTitle": "y b band", "accref": srv.url("/y.jpeg"), "mime": "",
                 "ra": "246.79", "dec": "-24.32", "band": "CXO_b"}]
        srv.routes["/siap"] = (siap_votable(rows), "text/xml")
        e = Engine(local_config("http://127.0.0.1:1", tmp_path / "results",
                                **{"services.siap": srv.url("/siap")}))
        try:
            res = e.run_siap(SiapRequest(*RHO, 0.2), dest_dir=tmp_path / "out")
        finally:
            e.close()
        assert res.images == [] and res.found == 2
        assert srv.paths() == ["/siap", "/siap"]      # the query and its one retry, no image
        assert list((tmp_path / "out").iterdir()) == []


# ------------------------------------------------------------------ small SIZE
def test_retry_size_rule():
    assert retry_size(0.01) == 0.1 and retry_size(0.03) == pytest.approx(0.12)
    assert retry_size(0.5) == 1.0 and retry_size(1.0) == 1.0 and retry_size(3.0) == 1.0


@pytest.mark.parametrize("shape", ["cxc", "pessimistic"])
def test_a_tiny_size_gets_one_documented_retry_and_finds_images(make_engine, tmp_path, caplog,
                                                                 shape):
    caplog.set_level(logging.INFO, logger="sampbridge")
    e = make_engine(shape)
    assert e.siap.search(*RHO, 0.01) == []           # the front, like CXC: nothing at SIZE 0.01
    res = e.run_siap(SiapRequest(*RHO, 0.01), dest_dir=tmp_path / "out")
    assert res.found == 6 and len(res.images) == 1
    assert "size=0.01 found no FITS image: asked once more with size=0.1" in res.what
    assert "with SIZE=0.01 found no FITS image; asking once more with SIZE=0.1" in caplog.text


def test_the_retry_happens_once(tmp_path):
    with Loopback({"/siap": (siap_votable([]), "text/xml")}) as srv:
        e = Engine(local_config("http://127.0.0.1:1", tmp_path / "results",
                                **{"services.siap": srv.url("/siap")}))
        try:
            res = e.run_siap(SiapRequest(*RHO, 0.02), dest_dir=tmp_path / "out")
            assert res.found == 0 and res.images == []
            assert [q["SIZE"] for _, q in srv.hits] == [["0.02"], ["0.1"]]
            e.run_siap(SiapRequest(*RHO, 1.0), dest_dir=tmp_path / "out")
            assert [q["SIZE"] for _, q in srv.hits[2:]] == [["1.0"]]   # nothing larger to ask
        finally:
            e.close()


# ------------------------------------------------------------------ caps
def test_a_gzip_bomb_is_refused_early(tmp_path, bomb):
    """256 MB of zeros in 250 kB of gzip: refused at the 1 MB cap, after a fraction of it."""
    s = http.make_session()
    with Loopback({"/bomb.fits": (bomb, "application/octet-stream")}) as srv:
        counts: dict[str, int] = {}
        with pytest.raises(ResultTooLarge, match="over the cap of 1,000,000 bytes once "
                                                 "decompressed"):
            http.download(s, srv.url("/bomb.fits"), tmp_path / "x.fits", what="image download",
                          max_bytes=1_000_000, gunzip=True, chunk_size=IMAGE_CHUNK,
                          counts=counts)
    s.close()
    assert counts["written"] <= 1_000_000 + (1 << 20)    # at most one inflated piece over
    assert counts["received"] < len(bomb) / 2
    assert list(tmp_path.iterdir()) == []


def test_a_gzip_bomb_image_is_skipped_with_the_sentence(tmp_path, bomb):
    """The same bomb as a SIAP image whose header lies (10 x 10 pixels): the cap holds."""
    with Loopback({"/bomb.fits": (bomb, "application/octet-stream")}) as srv:
        rows = [{"imageTitle": "bomb b band image", "accref": srv.url("/bomb.fits"),
                 "mime": "image/fits", "ra": "246.79", "dec": "-24.32", "band": "CXO_b"}]
        srv.routes["/siap"] = (siap_votable(rows), "text/xml")
        siap = SiapService(srv.url("/siap"), http.make_session(), max_bytes=1_000_000)
        res = siap.query_to_dir(*RHO, 0.2, tmp_path)
    assert res.downloaded == []
    (sentence,) = res.skipped
    assert sentence.startswith("bomb b band image: the decompressed image is over the cap of "
                               "1,000,000 bytes (images.max_bytes); raise images.max_bytes")
    assert res.found[0].received < len(bomb) / 2
    assert list(tmp_path.iterdir()) == []


def test_the_shipped_default_is_the_click_budget():
    assert defaults()["images.max_bytes"] == 10_000_000 < FULL_FIELD


def test_images_over_the_click_budget_are_skipped_with_the_sentence(make_engine, tmp_path):
    """Shipped defaults on the CXC shape: the full-field image (4096 x 4096 pixels, so at least
    16 MB whatever its BITPIX) is skipped from its row, never downloaded, with a sentence that
    names the setting; the nearest smaller image of the band is sent instead."""
    e = make_engine("cxc")
    assert e.cfg["images.max_bytes"] == defaults()["images.max_bytes"]
    res = e.run_siap(SiapRequest(*RHO, 0.2), dest_dir=tmp_path / "out")
    (img,) = res.images
    assert img.band == "b" and "full-field" not in img.title
    assert img.nbytes < e.cfg["images.max_bytes"] and _centre(img.path)[2] == (200, 200)
    assert res.skipped == [
        "acisfJ1627102m241912_001 b band full-field image: at least 16,777,216 bytes "
        "decompressed (4096 x 4096 pixels) is over the cap of 10,000,000 bytes "
        "(images.max_bytes); raise images.max_bytes to load it"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [img.path.name]


def test_an_image_refused_by_its_fits_header_costs_one_read(make_engine, tmp_path):
    """With a 20 MB cap the row cannot tell (16.7 M pixels of unknown BITPIX): the FITS header
    can, after one 64 kB read; the next click in the field skips it without asking again."""
    e = make_engine("cxc", **{"images.max_bytes": 20_000_000})
    received = []
    for n in (1, 2):
        (tmp_path / f"out{n}").mkdir()
        res = e.siap.query_to_dir(*RHO, 0.2, tmp_path / f"out{n}", prefer_band="CXO_b")
        (img,) = res.downloaded
        assert img.band == "b" and "full-field" not in img.title
        assert res.skipped == [
            "acisfJ1627102m241912_001 b band full-field image: 67,112,640 bytes decompressed "
            "(its FITS header: 4096 x 4096 pixels, BITPIX 32) is over the cap of 20,000,000 "
            "bytes (images.max_bytes); set images.max_bytes to 67112640 or more to load it"]
        full = next(i for i in res.found if "b band full-field image" in i.title)
        received.append(full.received)
        assert sorted(p.name for p in (tmp_path / f"out{n}").iterdir()) == [img.path.name]
    assert 0 < received[0] <= IMAGE_CHUNK and received[1] == 0


def test_a_fits_row_whose_body_is_not_fits_is_refused_at_its_first_bytes(tmp_path):
    """An HTML page (or a JPEG) served 200 for a FITS row: one read, an error, no file."""
    page = b"<html><body>" + b"maintenance " * 200_000 + b"</body></html>"
    with Loopback({"/img": (gzip.compress(page), "application/octet-stream")}) as srv:
        rows = [{"imageTitle": "x b band image", "accref": srv.url("/img"),
                 "mime": "image/fits", "ra": "246.79", "dec": "-24.32", "band": "b"}]
        srv.routes["/siap"] = (siap_votable(rows), "text/xml")
        siap = SiapService(srv.url("/siap"), http.make_session(), max_bytes=10_000_000)
        with pytest.raises(ServiceError, match="the service sent something that is not FITS"):
            siap.query_to_dir(*RHO, 0.2, tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ a click, through the daemon
@pytest.mark.parametrize("shape, cap, npix", [
    ("cxc", None, 200), ("standard", None, 200), ("pessimistic", None, 200),
    ("cxc", LIFTED, 4096)])
def test_a_click_sends_ds9_a_fits_image_on_every_shape(vo_server, tmp_path, make_daemon,
                                                       make_peer, shape, cap, npix):
    """A sky click in TOPCAT: DS9 gets a FITS file (never a JPEG, never gzip bytes) with a WCS;
    with the shipped cap the image is a small one, with the cap lifted the full-field one."""
    changes = {"services.siap": vo_server + SHAPES[shape]}
    if cap is not None:
        changes["images.max_bytes"] = cap
    make_daemon(local_config(vo_server, tmp_path / "results", **changes))
    topcat = make_peer("topcat", ["table.load.votable"])
    ds9 = make_peer("SAOImageDS9", ["image.load.fits"])
    sid = ds9.find("sampbridge", mtype="coord.pointAt.sky")
    # a click in TOPCAT: the image goes to the viewers that did not click
    topcat.notify(sid, "coord.pointAt.sky", {"ra": str(RHO[0]), "dec": str(RHO[1])})
    (img,) = ds9.wait_for("image.load.fits", timeout=30)
    path = Path(urlsplit(img["url"]).path)
    assert path.read_bytes()[:9] == b"SIMPLE  ="
    ra, dec, shape_ = _centre(path)
    assert shape_ == (npix, npix) and " b band" in img["name"]
    assert separation_deg(ra, dec, *RHO) < (0.01 if npix == 4096 else 0.15)
