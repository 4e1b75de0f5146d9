"""Images in, sources out, and overlays instead of images for the viewer that clicked.

Daemon level: a real hub in this process, the daemon, the local CSC mimic, and RecordingPeer
stand-ins for TOPCAT, DS9 (``ds9.set``) and Aladin (``script.aladin.send``).  The real DS9 and
Aladin read the same overlays back in tests/test_peers_scenarios.py and tests/test_overlay.py.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from conftest import RecordingPeer, wait_for
from helpers import direct_cone, path_of

pytestmark = pytest.mark.server

RHO = (246.7925, -24.32027)
CLICK = {"ra": "246.7925", "dec": "-24.32027"}
TAG = "sampbridge"
_ELLIPSE = re.compile(r'^ellipse\(([^)]*)\) # text=\{([^}]*)\} tag=\{sampbridge\}$')


class ViewerPeer(RecordingPeer):
    """A DS9 or Aladin stand-in that also keeps what a region file held when it was called.

    sampbridge removes a region file once the viewer has answered its ``ds9.set``, so the
    stand-in reads the file inside the call, as DS9 does.
    """

    def __init__(self, name: str, mtypes: list[str]) -> None:
        self.region_texts: list[str] = []
        super().__init__(name, mtypes)

    def _on_call(self, private_key, sender_id, msg_id, mtype, params, extra):
        url = params.get("url", "") if mtype == "ds9.set" else ""
        if url.startswith("file://"):
            self.region_texts.append(Path(url[len("file://"):]).read_text())
        super()._on_call(private_key, sender_id, msg_id, mtype, params, extra)


@pytest.fixture
def viewers(hub):
    """TOPCAT, DS9 and Aladin stand-ins: tables, and images with their overlay MTypes."""
    made = {
        "topcat": RecordingPeer("topcat", ["table.load.votable"]),
        "ds9": ViewerPeer("SAOImageDS9", ["image.load.fits", "table.load.votable", "ds9.set"]),
        "aladin": ViewerPeer("Aladin", ["image.load.fits", "table.load.votable",
                                        "script.aladin.send"]),
    }
    yield made
    for p in made.values():
        p.close()


def user_image(path: Path, size: int = 400, scale: float = 1.0) -> Path:
    """The user's own image (not a CSC one): TAN at rho Oph, north up, ``scale`` "/pixel."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(RHO)
    w.wcs.crpix = [(size + 1) / 2, (size + 1) / 2]
    w.wcs.cdelt = [-scale / 3600, scale / 3600]
    data = np.random.default_rng(5).random((size, size), dtype=np.float32)
    fits.PrimaryHDU(data, header=w.to_header()).writeto(path)
    return path


def _bytes(hdu: fits.PrimaryHDU) -> bytes:
    import io

    buf = io.BytesIO()
    hdu.writeto(buf)
    return buf.getvalue()


def drawn(peer: ViewerPeer) -> list[tuple[str, list[float]]]:
    """(name, numbers) of every ellipse in the region files DS9 was sent."""
    out = []
    for text in peer.region_texts:
        for line in text.splitlines():
            m = _ELLIPSE.match(line)
            if m:
                out.append((m.group(2), [float(v.rstrip('"')) for v in m.group(1).split(",")]))
    return out


def script_ellipses(script: str) -> int:
    return sum(line.startswith("draw ellipse(") for line in script.splitlines())


def sources(vo: str, ra: float, dec: float, radius: float, verb: int = 3):
    """The mimic's own answer to the same cone."""
    import warnings

    from pyvo.dal import SCSService

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SCSService(f"{vo}/csc21scs/coneSearch").search((ra, dec), radius,
                                                               verbosity=verb).to_table()


def check_overlay(got: list[tuple[str, list[float]]], want) -> None:
    """The drawn ellipses are the cone's sources: same names, centres and axes, PA + 90."""
    assert len(got) == len(want) > 10
    rows = {str(r["name"]): r for r in want}
    for name, (ra, dec, a, b, angle) in got:
        r = rows[name]
        sep = SkyCoord(ra * u.deg, dec * u.deg).separation(
            SkyCoord(float(r["ra"]) * u.deg, float(r["dec"]) * u.deg)).arcsec
        assert sep < 0.01
        r0, r1, pa = (float(r[c]) for c in ("err_ellipse_r0", "err_ellipse_r1",
                                             "err_ellipse_ang"))
        if r1 > r0:                                  # the major axis is drawn first
            r0, r1, pa = r1, r0, pa + 90
        assert [a, b] == pytest.approx([r0, r1], abs=1e-3)
        turn = (angle - (pa + 90)) % 180             # DS9's angle: position angle + 90
        assert min(turn, 180 - turn) < 1e-3, (name, angle, pa)


# ============================================================================= click overlays
def test_a_click_in_ds9_draws_the_ellipses_on_its_image_and_sends_it_no_image(
        cfg, make_daemon, viewers, vo_server):
    d = make_daemon(cfg)
    topcat, ds9, aladin = viewers["topcat"], viewers["ds9"], viewers["aladin"]
    sid = ds9.find("sampbridge")
    ds9.notify(sid, "coord.pointAt.sky", CLICK)
    (tab,) = topcat.wait_for("table.load.votable")
    # the table is what cone.verb (2) says: err_ellipse_r0 only
    assert "VERB=2" not in tab["name"]
    assert b"err_ellipse_r1" not in path_of(tab["url"]).read_bytes()
    wait_for(lambda: len(ds9.of("ds9.set")) >= 2, 20, what="the overlay in DS9")
    sets = ds9.of("ds9.set")
    assert sets[0] == {"cmd": f"regions group {TAG} delete"}
    assert sets[1]["cmd"] == "regions" and sets[1]["url"].startswith("file://")
    check_overlay(drawn(ds9), sources(vo_server, *RHO, 0.05))
    # the region file was removed once DS9 answered; the results folder keeps no overlay files
    wait_for(lambda: not list((d.engine.results_dir / "overlays").iterdir()), 10,
             what="the overlay's files removed")
    # the image goes to the viewer that did not click; none to DS9, no overlay to Aladin
    (img,) = aladin.wait_for("image.load.fits")
    assert path_of(img["url"]).read_bytes()[:9] == b"SIMPLE  ="
    wait_for(lambda: d.stats["overlays"] == 1, 10, what="the overlay counted")
    assert ds9.of("image.load.fits") == [] and aladin.of("script.aladin.send") == []


def test_a_click_in_aladin_draws_a_plane_in_aladin_and_puts_the_image_in_ds9(
        cfg, make_daemon, viewers, vo_server):
    make_daemon(cfg)
    topcat, ds9, aladin = viewers["topcat"], viewers["ds9"], viewers["aladin"]
    aladin.notify(aladin.find("sampbridge"), "coord.pointAt.sky", CLICK)
    topcat.wait_for("table.load.votable")
    (script,) = aladin.wait_for("script.aladin.send")
    lines = script["script"].splitlines()
    assert lines[:2] == [f"rm {TAG}", f"draw newtool({TAG})"]
    assert script_ellipses(script["script"]) == len(sources(vo_server, *RHO, 0.05))
    ds9.wait_for("image.load.fits")
    assert aladin.of("image.load.fits") == [] and ds9.of("ds9.set") == []


def test_images_to_sender_restores_the_image_for_the_clicking_viewer(cfg, make_daemon,
                                                                     viewers):
    d = make_daemon(cfg.replace(**{"images.to_sender": True}))
    ds9, aladin = viewers["ds9"], viewers["aladin"]
    ds9.notify(ds9.find("sampbridge"), "coord.pointAt.sky", CLICK)
    ds9.wait_for("image.load.fits")
    aladin.wait_for("image.load.fits")
    viewers["topcat"].wait_for("table.load.votable")
    wait_for(lambda: d.points_done == 1, 10, what="the click done")
    assert ds9.of("ds9.set") == [] and d.stats["overlays"] == 0


def test_with_verb_3_one_cone_gives_the_table_and_the_overlay(cfg, make_daemon, viewers,
                                                               vo_server, caplog):
    caplog.set_level(logging.INFO, logger="sampbridge")
    d = make_daemon(cfg.replace(**{"cone.verb": 3, "images.enabled": False}))
    ds9 = viewers["ds9"]
    ds9.notify(ds9.find("sampbridge"), "coord.pointAt.sky", CLICK)
    (tab,) = viewers["topcat"].wait_for("table.load.votable")
    assert b"err_ellipse_r1" in path_of(tab["url"]).read_bytes()
    wait_for(lambda: d.stats["overlays"] == 1, 20, what="the overlay")
    check_overlay(drawn(ds9), sources(vo_server, *RHO, 0.05))
    assert len(re.findall(r"\bcone 246\.79250 -24\.32027 r=0\.05 VERB=3", caplog.text)) == 1


# ============================================================================= images in
def _accepted(resp: dict) -> dict:
    assert resp["samp.status"] == "samp.ok", resp
    res = resp["samp.result"]
    assert res["status"] == "accepted", res
    return res


def test_an_image_sent_to_sampbridge_gives_the_sources_of_its_footprint(
        cfg, make_daemon, viewers, vo_server, tmp_path):
    d = make_daemon(cfg)
    topcat, ds9, aladin = viewers["topcat"], viewers["ds9"], viewers["aladin"]
    image = user_image(tmp_path / "my image.fits")
    res = _accepted(topcat.call(topcat.find("sampbridge"), "image.load.fits",
                                {"url": image.as_uri(), "name": "my image"}))
    ra, dec, radius = float(res["ra"]), float(res["dec"]), float(res["radius"])
    # the cone covers the image: centre on the image centre, radius to its corners (200" x 1.41)
    assert SkyCoord(ra * u.deg, dec * u.deg).separation(
        SkyCoord(*RHO, unit="deg")).arcsec < 0.6
    assert radius * 3600 == pytest.approx(200 * np.sqrt(2), rel=0.01)
    (tab,) = topcat.wait_for("table.load.votable")
    assert tab["name"] == "CSC 2.1 sources of my image"
    assert sorted(map(str, _names(path_of(tab["url"])))) == direct_cone(vo_server, ra, dec,
                                                                        radius)
    # both image viewers get the overlay of the sources (they may show that image)
    wait_for(lambda: d.stats["overlays"] == 2, 20, what="the overlays")
    check_overlay(drawn(ds9), sources(vo_server, ra, dec, radius))
    (script,) = aladin.of("script.aladin.send")
    assert script_ellipses(script["script"]) == len(drawn(ds9))
    # no image is sent for an image in
    assert ds9.of("image.load.fits") == [] and aladin.of("image.load.fits") == []


def _names(path: Path) -> list[str]:
    import warnings

    from astropy.io.votable import parse_single_table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [str(n) for n in parse_single_table(str(path)).to_table()["name"]]


def test_a_broadcast_gzip_image_is_answered_and_ds9s_pan_to_it_is_an_echo(
        cfg, make_daemon, viewers, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sampbridge")
    d = make_daemon(cfg.replace(**{"images.enabled": False}))
    topcat, ds9 = viewers["topcat"], viewers["ds9"]
    image = tmp_path / "user.fits.gz"
    image.write_bytes(gzip.compress(_bytes(_hdu())))
    script = RecordingPeer("script", [])
    try:
        sid = script.find("sampbridge", mtype="image.load.fits")
        script.client.notify_all({"samp.mtype": "image.load.fits",
                                  "samp.params": {"url": image.as_uri()}})
        (tab,) = topcat.wait_for("table.load.votable")
    finally:
        script.close()
    assert tab["name"] == "CSC 2.1 sources of user.fits.gz"
    ds9.wait_for("image.load.fits")              # the broadcast reached DS9 too
    # DS9 then pans to the image it loaded and says so: not a click
    resp = ds9.call(sid, "coord.pointAt.sky", CLICK)
    assert resp["samp.result"] == {"ignored": "echo"}
    assert d.stats["queries"] == 1


def _hdu(size: int = 200) -> fits.PrimaryHDU:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(RHO)
    w.wcs.crpix = [(size + 1) / 2] * 2
    w.wcs.cdelt = [-1 / 3600, 1 / 3600]
    return fits.PrimaryHDU(np.zeros((size, size), np.float32), header=w.to_header())


def test_a_wide_image_gets_the_central_cone_and_says_so(cfg, make_daemon, viewers, tmp_path):
    make_daemon(cfg.replace(**{"cone.max_radius": 0.05}))
    topcat = viewers["topcat"]
    image = user_image(tmp_path / "wide.fits", size=100, scale=36.0)    # 1 deg wide
    res = _accepted(topcat.call(topcat.find("sampbridge"), "image.load.fits",
                                {"url": image.as_uri()}))
    assert float(res["radius"]) == 0.05
    assert "only the central 0.05 deg (cone.max_radius) is searched" in res["note"]
    topcat.wait_for("table.load.votable")


def _bad_images(tmp: Path) -> dict[str, tuple[str, str]]:
    """name -> (url, words the error must hold)."""
    broken = tmp / "broken.fits"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(4000))
    headerless = tmp / "headerless.fits"
    headerless.write_bytes(np.arange(4000, dtype=">f4").tobytes())
    cut = tmp / "cut.fits"
    cut.write_bytes(_bytes(_hdu())[:1440])
    big = tmp / "big_header.fits"
    h = _hdu().header
    for i in range(40_000):                   # 3.2 MB of cards, over the 1 MB default cap
        h.add_comment(f"padding {i}")
    fits.PrimaryHDU(np.zeros((4, 4), np.float32), header=h).writeto(big)
    flat = tmp / "lab.fits"
    lh = fits.Header()
    lh["CTYPE1"], lh["CTYPE2"] = "LINEAR", "LINEAR"
    fits.PrimaryHDU(np.zeros((20, 30), np.float32), header=lh).writeto(flat)
    empty = tmp / "empty.fits"
    empty.write_bytes(b"")
    return {
        "broken": (broken.as_uri(), "broken.fits is not a FITS file"),
        "headerless": (headerless.as_uri(), "headerless.fits is not a FITS file"),
        "truncated": (cut.as_uri(), "cut.fits ends before its FITS header does"),
        "oversized": (big.as_uri(), "big_header.fits has an oversized header"),
        "non-celestial": (flat.as_uri(), "has no celestial WCS"),
        "empty": (empty.as_uri(), "empty.fits is empty"),
        "missing": ((tmp / "gone.fits").as_uri(), "does not exist"),
        "remote": ("http://example.org/sky.fits", "refusing to fetch an image from example.org"),
        "no url": ("", "the message has no image 'url'"),
    }


def test_bad_images_get_one_readable_sentence_and_nothing_crashes(cfg, make_daemon, viewers,
                                                                  tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sampbridge")
    d = make_daemon(cfg.replace(**{"images.enabled": False}))
    topcat = viewers["topcat"]
    sid = topcat.find("sampbridge")
    for what, (url, words) in _bad_images(tmp_path).items():
        resp = topcat.call(sid, "image.load.fits", {"url": url})
        assert resp["samp.status"] == "samp.error", (what, resp)
        text = resp["samp.error"]["samp.errortxt"]
        assert words in text, (what, text)
        assert "Traceback" not in text and "Error(" not in text and "\n" not in text, text
        topcat.notify(sid, "image.load.fits", {"url": url})   # a notification: logged only
    wait_for(lambda: caplog.text.count("image.load.fits from topcat refused") == 18, 20,
             what="every refusal logged")
    assert "Traceback" not in caplog.text
    # and the daemon goes on: a good image still works
    assert topcat.call(sid, "samp.app.ping", {})["samp.status"] == "samp.ok"
    good = user_image(tmp_path / "good.fits", size=100)
    _accepted(topcat.call(sid, "image.load.fits", {"url": good.as_uri()}))
    topcat.wait_for("table.load.votable")
    assert d.conn.connected and d.stats["queries"] == 1
