"""CSC error ellipses as overlays: the text, and what real DS9 and Aladin make of it.

The peer tests start their own private stack (Xvfb on a free display, a pyvo hub, DS9 with its
own XPA name and folder, Aladin) through tests/peers/harness.py; nothing shared is touched.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import MaskedColumn, Table
from astropy.wcs import WCS

from sampbridge.overlay import (
    DS9_COMMAND_MAX,
    TAG,
    aladin_script,
    ds9_angle,
    ds9_file_url,
    ds9_overlay_params,
    ds9_region_text,
    source_ellipses,
    write_ds9_regions,
)

from conftest import wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers.harness import PeerStack, require_peers

RA, DEC = 246.79, -24.32
#: name, ra, dec, r0, r1, ang: position angles on the axes and off them, and a long thin one
ROWS = [("2CXO J162709.6-241912", RA, DEC, 20.0, 10.0, 0.0),
        ("2CXO J162710.2-241930", RA + 0.01, DEC - 0.005, 12.5, 4.0, 30.0),
        ("2CXO J162708.8-241846", RA - 0.012, DEC + 0.008, 15.0, 3.0, 90.0),
        ("2CXO J162711.5-241909", RA + 0.004, DEC + 0.015, 8.0, 7.9, 135.5),
        ("2CXO J162707.0-241955X", RA - 0.02, DEC - 0.012, 25.0, 2.5, 179.0)]


def csc_table(rows=ROWS) -> Table:
    return Table(rows=rows, names=["name", "ra", "dec", "err_ellipse_r0", "err_ellipse_r1",
                                   "err_ellipse_ang"])


# ----------------------------------------------------------------------------- text
def test_ds9_angle_is_position_angle_plus_90():
    assert [ds9_angle(p) for p in (0, 30, 90, 179, 270)] == [90, 120, 180, 269, 0]


def test_region_file_text():
    text = ds9_region_text(source_ellipses(csc_table()))
    lines = text.splitlines()
    assert lines[0] == "# Region file format: DS9 version 4.1" and "icrs" in lines
    assert lines[-5] == ('ellipse(246.7900000,-24.3200000,20.0000",10.0000",90.0000) '
                         '# text={2CXO J162709.6-241912} tag={sampbridge}')
    assert sum(line.startswith("ellipse(") for line in lines) == 5


def test_missing_ellipse_values_degrade_to_circles_and_points():
    t = csc_table(ROWS[:4])
    t["err_ellipse_r1"] = MaskedColumn(t["err_ellipse_r1"], mask=[False, True, False, False])
    t["err_ellipse_r0"] = MaskedColumn(t["err_ellipse_r0"], mask=[False, False, True, False])
    t["err_ellipse_ang"][3] = np.nan
    t["err_ellipse_r1"][0] = 30.0                       # minor > major: swapped, turned 90
    e = source_ellipses(t)
    assert (e[0].r0, e[0].r1, e[0].pa) == (30.0, 20.0, 90.0)
    assert e[1].r1 == e[1].r0 == 12.5                   # no minor axis: a circle
    assert e[2].r0 is None                              # no ellipse: a point
    assert e[3].pa == 0.0
    text = ds9_region_text(e)
    assert "point(246.7780000,-24.3120000) # point=x" in text
    vb2 = source_ellipses(Table(rows=[("a", RA, DEC, 3.0)],
                                names=["name", "ra", "dec", "err_ellipse_r0"]))
    assert (vb2[0].r0, vb2[0].r1, vb2[0].pa) == (3.0, 3.0, 0.0)


def test_names_cannot_break_out_of_the_text_or_the_script():
    t = csc_table([('evil"} # tag={x}; rm -all\n[x]', RA, DEC, 1.0, 1.0, 0.0)])
    e = source_ellipses(t)
    assert e[0].name == "evil  tag=x rm -allx"
    script = aladin_script(e).split("\n")
    assert len(script) == 4 and not any(";" in line for line in script)
    assert script[-1] == 'draw string(246.7900000,-24.3200000,"evil  tag=x rm -allx")'
    assert "text={evil  tag=x rm -allx} tag={sampbridge}" in ds9_region_text(e)


def test_inline_commands_stay_under_ds9s_4096_byte_cut():
    rows = [(f"2CXO J1627{i:05d}", RA + i * 1e-4, DEC, 5.0, 2.0, i % 180) for i in range(300)]
    params = ds9_overlay_params(source_ellipses(csc_table(rows)))
    assert params[0] == {"cmd": "regions group sampbridge delete"}
    assert len(params) > 8 and all(len(p["cmd"]) <= DS9_COMMAND_MAX for p in params)
    assert sum(p["cmd"].count("ellipse(") for p in params) == 300
    assert ds9_overlay_params([]) == [{"cmd": "regions group sampbridge delete"}]


def test_file_url_is_literal_and_refuses_what_ds9_would_misread(tmp_path: Path):
    assert ds9_file_url("/data/my results/o.reg") == "file:///data/my results/o.reg"
    for bad in ("/data/a#b.reg", "/data/a%20b.reg", "/données/o.reg", "/a?b.reg", "rel.reg"):
        assert ds9_file_url(bad) is None
    path = write_ds9_regions(source_ellipses(csc_table()), tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert ds9_overlay_params(source_ellipses(csc_table()), ds9_file_url(path)) == [
        {"cmd": "regions group sampbridge delete"},
        {"cmd": "regions", "url": f"file://{path}"}]


def test_aladin_script_text():
    script = aladin_script(source_ellipses(csc_table(ROWS[:3])))
    lines = script.split("\n")
    assert lines[:2] == ["rm sampbridge", "draw newtool(sampbridge)"]
    assert lines[2] == "draw ellipse(246.7900000,-24.3200000,0.005555556,0.002777778,90.000001)"
    assert lines[3] == 'draw string(246.7900000,-24.3200000,"2CXO J162709.6-241912")'
    assert lines[4].endswith(",120.000000)")
    assert len(lines) == 2 + 2 * 3


# ----------------------------------------------------------------------------- real peers
def _tan_image(path: Path, rot: float = 0.0, flip: bool = False) -> WCS:
    """A 400x400 image at 1"/pixel around (RA, DEC): north up and east left, unless turned."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [RA, DEC]
    w.wcs.crpix = [200.5, 200.5]
    c, s = np.cos(np.radians(rot)), np.sin(np.radians(rot))
    w.wcs.cd = np.diag([(1 if flip else -1) / 3600, 1 / 3600]) @ np.array([[c, -s], [s, c]])
    rng = np.random.default_rng(3)
    fits.PrimaryHDU(rng.random((400, 400), dtype=np.float32), header=w.to_header()).writeto(path)
    return w


_ELLIPSE = re.compile(r'^ellipse\(([^)]*)\)\s*#(.*)$')


def _regions(st: PeerStack, *system: str) -> list[tuple[list[float], str]]:
    """DS9's ellipse regions, as (numbers, properties), read back over XPA."""
    out = []
    for line in st.xpaget("regions", *system).splitlines():
        m = _ELLIPSE.match(line.strip())
        if m:
            out.append(([float(v.rstrip('"')) for v in m.group(1).split(",")], m.group(2)))
    return out


def _tagged(regions, tag: str = TAG):
    return [r for r in regions if f"tag={{{tag}}}" in r[1]]


def _major_axis_pa(w: WCS, x: float, y: float, a: float, angle: float) -> float:
    """Position angle (deg E of N, mod 180) of an image-system DS9 ellipse's major axis."""
    cen = w.pixel_to_world(x - 1, y - 1)
    tip = w.pixel_to_world(x - 1 + a * np.cos(np.radians(angle)),
                           y - 1 + a * np.sin(np.radians(angle)))
    return cen.position_angle(tip).deg % 180.0


def _send_ds9(st: PeerStack, params: list[dict[str, str]]) -> None:
    for p in params:
        st.call_ok("ds9", "ds9.set", p, timeout=20)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_peers("ds9", hub="python")
    st = PeerStack(tmp_path_factory.mktemp("overlay-peers"), hub="python",
                   ds9_title="sbovl")
    st.start()
    try:
        st.start_ds9()
        yield st
    finally:
        st.stop()


@pytest.mark.peers
def test_ds9_reads_back_the_ellipses_on_the_users_image(stack: PeerStack, tmp_path: Path):
    st = stack
    image = tmp_path / "my_image.fits"
    w = _tan_image(image)
    st.xpaset("frame", "delete", "all")
    st.xpaset("frame", "new")
    st.xpaset("fits", str(image))                        # the user's own image, not a CSC one
    st.xpaset("regions", "command", "{circle 100 100 20}")   # and a region of the user's
    frame, file = st.xpaget("frame"), st.xpaget("file")
    ellipses = source_ellipses(csc_table())
    region_file = write_ds9_regions(ellipses, tmp_path)
    _send_ds9(st, ds9_overlay_params(ellipses, ds9_file_url(region_file)))

    fk5 = _tagged(_regions(st, "-system", "wcs", "-sky", "fk5"))
    assert len(fk5) == len(ROWS)
    for (vals, props), (name, ra, dec, r0, r1, pa) in zip(fk5, ROWS, strict=True):
        want = SkyCoord(ra * u.deg, dec * u.deg).fk5    # CSC is ICRS; DS9 answers in FK5
        got = SkyCoord(vals[0] * u.deg, vals[1] * u.deg, frame="fk5")
        assert got.separation(want).arcsec < 0.1, (name, got, want)
        assert vals[2:4] == pytest.approx([r0, r1], abs=1e-3)
        turn = (vals[4] - (pa + 90)) % 180
        assert min(turn, 180 - turn) < 1e-3, (name, vals[4], pa)
        assert f"text={{{name}}}" in props
    # the proof of the +90: each major axis, read back in image pixels and turned into a
    # position angle through the image's own WCS, points where the catalogue says
    image_regions = _tagged(_regions(st, "-system", "image"))
    for ((x, y, a, _b, angle), _), (*_, pa) in zip(image_regions, ROWS, strict=True):
        measured = _major_axis_pa(w, x, y, a, angle)
        assert min(abs(measured - pa), 180 - abs(measured - pa)) < 0.05, (pa, measured)
    # the user's view stays theirs: same frame, same file, their own region kept
    assert (st.xpaget("frame"), st.xpaget("file")) == (frame, file)
    assert "circle(100,100,20)" in st.xpaget("regions", "-system", "image")

    # the next overlay replaces this one (sent inline this time): the count does not grow
    second = source_ellipses(csc_table(ROWS[1:3]))
    _send_ds9(st, ds9_overlay_params(second))
    again = _tagged(_regions(st, "-system", "wcs", "-sky", "fk5"))
    assert len(again) == 2
    assert "circle(100,100,20)" in st.xpaget("regions", "-system", "image")


@pytest.mark.peers
@pytest.mark.parametrize("rot, flip", [(40.0, False), (0.0, True), (-70.0, True)])
def test_ds9_plus_90_holds_on_rotated_and_flipped_images(stack: PeerStack, tmp_path: Path,
                                                          rot: float, flip: bool):
    st = stack
    image = tmp_path / "turned.fits"
    w = _tan_image(image, rot, flip)
    st.xpaset("frame", "delete", "all")
    st.xpaset("frame", "new")
    st.xpaset("fits", str(image))
    _send_ds9(st, ds9_overlay_params(source_ellipses(csc_table())))
    got = _tagged(_regions(st, "-system", "image"))
    assert len(got) == len(ROWS)
    for ((x, y, a, _b, angle), _), (*_, pa) in zip(got, ROWS, strict=True):
        measured = _major_axis_pa(w, x, y, a, angle)
        assert min(abs(measured - pa), 180 - abs(measured - pa)) < 0.05, (rot, flip, pa)


@pytest.mark.peers
def test_ds9_inline_overlay_of_many_sources_is_complete(stack: PeerStack, tmp_path: Path):
    st = stack
    image = tmp_path / "img.fits"
    _tan_image(image)
    st.xpaset("frame", "delete", "all")
    st.xpaset("frame", "new")
    st.xpaset("fits", str(image))
    rows = [(f"2CXO J1627{i:05d}", RA + (i % 20) * 0.002, DEC + (i // 20) * 0.002, 3.0, 1.5,
             (7 * i) % 180) for i in range(400)]
    params = ds9_overlay_params(source_ellipses(csc_table(rows)))
    assert len(params) > 10                        # many commands, each under the 4 KB cut
    _send_ds9(st, params)
    assert len(_tagged(_regions(st, "-system", "wcs", "-sky", "fk5"))) == 400


# ----------------------------------------------------------------------------- Aladin
def _aladin_backup(st: PeerStack, path: Path) -> ET.Element:
    """Aladin's stack, written by its ``backup`` command and parsed once complete."""
    st.aladin_script(f"backup {path}")
    wait_for(lambda: path.exists() and path.read_text(errors="replace").rstrip().endswith(
        "</ALADINJAVA>"), 30, what="Aladin's backup file")
    return ET.fromstring(path.read_text(errors="replace"))


def _tool_planes(root: ET.Element, label: str = TAG) -> list[list[list[str]]]:
    """Rows (tab-separated fields) of every Tool plane called ``label``."""
    planes = []
    for plane in root.iter("PLANE"):
        if plane.get("type") == "Tool" and plane.get("label") == label:
            text = "".join(v.text or "" for v in plane.iter("VALUE"))
            planes.append([line.split("\t") for line in text.splitlines() if line.strip()])
    return planes


def _aladin_show(st: PeerStack, image: Path, label: str, folder: Path) -> None:
    """Load ``image`` in Aladin as the user would, and wait until its view shows it.

    Aladin answers image.load.fits before the view is set: a drawing plane made in between
    becomes the view's reference (an empty all-sky view), which a user never sees.
    """
    st.call_ok("aladin", "image.load.fits", {"url": image.as_uri(), "name": label}, timeout=60)
    polls = iter(range(10_000))

    def shown() -> bool:
        root = _aladin_backup(st, folder / f"view-{label}-{next(polls)}.aj")
        return any(v.get("pref") == label for v in root.iter("VIEW"))

    wait_for(shown, 30, interval=0.2, what=f"Aladin's view to show {label}")


@pytest.mark.peers
def test_aladin_plane_is_replaced_and_its_labels_sit_on_the_sources(stack: PeerStack,
                                                                    tmp_path: Path):
    require_peers("aladin", hub="python")
    st = stack
    if not st.is_running("aladin"):
        st.start_aladin()
    image = tmp_path / "user.fits"
    _tan_image(image)
    _aladin_show(st, image, "user", tmp_path)
    st.aladin_script(aladin_script(source_ellipses(csc_table())))
    first = _tool_planes(_aladin_backup(st, tmp_path / "one.aj"))
    st.aladin_script(aladin_script(source_ellipses(csc_table(ROWS[:2]))))
    root = _aladin_backup(st, tmp_path / "two.aj")
    second = _tool_planes(root)
    # one plane each time, replaced, not stacked; the user's image plane is still there
    assert len(first) == 1 and len(second) == 1
    assert any(p.get("label") == "user" and p.get("type") == "Image" for p in root.iter("PLANE"))
    for rows, want in ((first[0], ROWS), (second[0], ROWS[:2])):
        labels = [r for r in rows if r[0] == "taglabel"]
        assert len(labels) == len(want)
        for r, (name, ra, dec, *_rest) in zip(labels, want, strict=True):
            assert r[-1].split("|")[0] == name
            got = SkyCoord(float(r[2]) * u.deg, float(r[3]) * u.deg)
            assert got.separation(SkyCoord(ra * u.deg, dec * u.deg)).arcsec < 0.1
        # Aladin 12.001 writes its ellipses as 'unknown' rows without their axes: one per source
        assert sum(r[0] == "unknown" for r in rows) >= len(want)


def _read_ppm(path: Path) -> np.ndarray:
    """A binary PPM (P6, 8 or 16 bits) as an (height, width, 3) array of bytes."""
    data = path.read_bytes()
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:                      # magic, width, height, maxval
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        end = pos
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    assert fields[0] == b"P6" and fields[3] in (b"255", b"65535"), fields
    w, h = int(fields[1]), int(fields[2])
    if fields[3] == b"255":
        return np.frombuffer(data[pos + 1:pos + 1 + w * h * 3], np.uint8).reshape(h, w, 3)
    wide = np.frombuffer(data[pos + 1:pos + 1 + w * h * 6], ">u2").reshape(h, w, 3)
    return (wide // 257).astype(np.uint8)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The (x, y) coordinates of the largest 8-connected set of True pixels, as a 2xN array."""
    todo = set(zip(*np.nonzero(mask), strict=True))
    best: list[tuple[int, int]] = []
    while todo:
        seed = todo.pop()
        group, stack = [seed], [seed]
        while stack:
            y, x = stack.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    n = (y + dy, x + dx)
                    if n in todo:
                        todo.remove(n)
                        group.append(n)
                        stack.append(n)
        if len(group) > len(best):
            best = group
    return np.array([[x for _, x in best], [y for y, _ in best]], dtype=float).reshape(2, -1)


@pytest.mark.peers
@pytest.mark.parametrize("pa", [30.0, 120.0])
def test_aladin_draws_the_major_axis_at_the_position_angle(stack: PeerStack, tmp_path: Path,
                                                           pa: float):
    """Aladin cannot give its ellipses back, so they are measured on the screen.

    A north-up, east-left image fills the view; one long thin ellipse in a colour nothing else
    on the screen has is drawn; the principal axis of its pixels gives the angle on the sky.
    """
    require_peers("aladin", "screenshot", hub="python")
    st = stack
    if not st.is_running("aladin"):
        st.start_aladin()
    image = tmp_path / "north_up.fits"
    _tan_image(image)
    _aladin_show(st, image, f"user{pa:g}", tmp_path)
    rows = [("thin", RA, DEC, 150.0, 25.0, pa)]
    st.aladin_script(aladin_script(source_ellipses(csc_table(rows))).replace(
        '\ndraw string(246.7900000,-24.3200000,"thin")', "")
        + f"\nset {TAG} color=rgb(3,250,{int(pa)})")
    colour = np.array([3, 250, int(pa)])       # one of its own: not the previous test's

    def pixels() -> tuple[np.ndarray] | None:
        shot = _read_ppm(st.screenshot(tmp_path / "screen.ppm"))
        outline = _largest_component(np.all(shot == colour, axis=-1))
        return (outline,) if outline.shape[1] > 150 else None

    # the plane's name in Aladin's stack is written in the plane's colour too: the ellipse is
    # the largest connected set of pixels of that colour
    (xy,) = wait_for(pixels, 30, interval=0.3, what="the ellipse on Aladin's screen")
    x, y = xy[0] - xy[0].mean(), -(xy[1] - xy[1].mean())   # y up on the screen: north
    evals, evecs = np.linalg.eigh(np.cov(np.vstack([x, y])))
    major = evecs[:, np.argmax(evals)]
    measured = np.degrees(np.arctan2(-major[0], major[1])) % 180   # east is left: -x
    assert min(abs(measured - pa), 180 - abs(measured - pa)) < 8, (pa, measured)
    assert evals.max() > 4 * evals.min()              # an ellipse, not a blob
