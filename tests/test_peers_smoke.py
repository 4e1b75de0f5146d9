"""Smoke test of the real-peer harness (tests/peers/harness.py) with both hubs.

Starts Xvfb, the hub, TOPCAT, DS9 and Aladin once per hub, checks each peer answers, round-trips
a VOTable through TOPCAT, asks DS9 over SAMP, and checks that everything stops cleanly.
Needs the peers: ``sudo bash tests/peers/install.sh``.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.io.votable import from_table
from astropy.table import Table
from astropy.wcs import WCS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers.harness import PEERS, PeerStack, require_peers

pytestmark = pytest.mark.peers

HUBS = ["jsamp", "python"]
ROWS = [("src1", 83.62, 22.0, 1.5), ("src2", 83.633, 22.0145, 2.5), ("src3", 83.65, 22.02, 3.5)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("peer-data")
    t = Table(rows=ROWS, names=["name", "ra", "dec", "flux"])
    t["ra"].unit = t["dec"].unit = "deg"
    vot = from_table(t)
    fields = vot.get_first_table().fields
    fields[1].ucd, fields[2].ucd = "pos.eq.ra;meta.main", "pos.eq.dec;meta.main"
    vot.to_xml(str(d / "small.vot"))
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [83.633, 22.0145]
    w.wcs.crpix = [32.5, 32.5]
    w.wcs.cdelt = [-0.002, 0.002]
    fits.PrimaryHDU(np.zeros((64, 64), "f4"), header=w.to_header()).writeto(d / "small.fits")
    return d


@pytest.fixture(scope="module", params=HUBS)
def stack(request, tmp_path_factory):
    hub = request.param
    require_peers("topcat", "ds9", "aladin", hub=hub)
    st = PeerStack(tmp_path_factory.mktemp(f"peers-{hub}"), hub=hub)
    t0 = time.monotonic()
    st.start()
    try:
        st.start_topcat()
        st.start_ds9()
        st.start_aladin()
    except BaseException:
        st.stop()
        raise
    st.timings["total_start"] = time.monotonic() - t0
    (st.root / "timings.json").write_text(json.dumps(st.timings, indent=1))
    print(f"\n[{hub}] ready after " + ", ".join(f"{k} {v:.2f}s" for k, v in st.timings.items()))
    yield st
    st.stop()


def test_peers_ready(stack):
    for name in ("topcat", "ds9", "aladin"):
        cid = stack.peer_id(name)
        assert stack.client.get_metadata(cid)["samp.name"] == PEERS[name][0]
        subs = stack.client.get_subscriptions(cid)
        assert all(mt in subs for mt in PEERS[name][1])
        assert stack.call(name, "samp.app.ping", timeout=10)["samp.status"] == "samp.ok"
    assert stack.find_client("topcat") == stack.ids["topcat"]


def test_topcat_votable_roundtrip(stack, data_dir):
    before = stack.topcat_table_count()
    r = stack.send_votable("topcat", data_dir / "small.vot", table_id="smoke-1", name="smoke")
    assert r["samp.status"] == "samp.ok", r
    assert stack.topcat_table_count(at_least=before + 1) == before + 1
    rows = stack.topcat_table_rows(before + 1)
    got = [(r["name"], float(r["ra"]), float(r["dec"]), float(r["flux"])) for r in rows]
    assert got == ROWS
    assert list(stack.topcat_table(before + 1)["name"]) == [r[0] for r in ROWS]


def test_ds9_answers_over_samp(stack, data_dir):
    assert stack.ds9_get("version").split()[-1].startswith("8.")
    img = data_dir / "small.fits"
    stack.call_ok("ds9", "image.load.fits", {"url": img.as_uri(), "name": "smoke"})
    assert stack.ds9_get("file") == str(img)
    r = stack.send_votable("ds9", data_dir / "small.vot", table_id="smoke-ds9", name="smoke")
    assert r["samp.status"] == "samp.ok", r
    # the tclxml fix is loaded: the catalog is not empty
    assert [n for _, n, _ in stack.ds9_catalogs()][-1] == len(ROWS)


def test_peers_send_point_at(stack, data_dir):
    img = data_dir / "small.fits"
    stack.call_ok("aladin", "image.load.fits", {"url": img.as_uri(), "name": "smoke"})
    with stack.connect_client("smoke-listener", ["coord.pointAt.sky"]) as listener:
        stack.ds9_send_point_at(83.6111, 22.0222)
        m = listener.wait_for("coord.pointAt.sky", sender=stack.ids["ds9"])
        assert (float(m.params["ra"]), float(m.params["dec"])) == (83.6111, 22.0222)
        stack.aladin_send_point_at(83.633, 22.0145)
        m = listener.wait_for("coord.pointAt.sky", sender=stack.ids["aladin"])
        assert abs(float(m.params["ra"]) - 83.633) < 1e-6
        assert abs(float(m.params["dec"]) - 22.0145) < 1e-6


def test_stop_is_clean(stack):
    # runs last for each hub: the module fixture's own teardown then finds nothing to do
    pids = {name: p.pid for name, p in stack.procs.items()}
    assert set(pids) == {"xvfb", "hub", "topcat", "ds9", "aladin"}
    t0 = time.monotonic()
    stack.stop()
    print(f"\n[{stack.hub_kind}] stop took {time.monotonic() - t0:.2f}s")
    assert stack.leftover_processes() == []
    assert not stack.procs
    assert not stack.lockfile.exists()
