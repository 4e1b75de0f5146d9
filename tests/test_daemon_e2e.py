"""End to end: a real hub (pyvo.samp, in process), the daemon, a peer acting as TOPCAT/DS9,
and the real local CSC mimic."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import requests
from astropy.io import fits
from astropy.io.votable import parse_single_table
from astropy.wcs import WCS

from conftest import local_config, wait_for
from helpers import GUIDE, direct_cone, names, path_of

pytestmark = pytest.mark.server

RHO = {"ra": "246.7925", "dec": "-24.32027"}


@pytest.fixture
def no_images(cfg):
    return cfg.replace(**{"images.enabled": False})


def test_registration_metadata_and_subscriptions(no_images, make_daemon, make_peer):
    d = make_daemon(no_images)
    peer = make_peer("topcat")
    sid = peer.find("sampbridge")
    md = peer.client.get_metadata(sid)
    assert md["samp.name"] == "sampbridge" and md["sampbridge.version"]
    assert "Chandra Source Catalog" in md["samp.description.text"]
    subs = peer.client.get_subscriptions(sid)
    for mt in ("coord.pointAt.sky", "x-sampbridge.query.cone", "x-sampbridge.query.siap",
               "x-sampbridge.query.tap", "samp.hub.event.shutdown", "samp.hub.disconnect"):
        assert mt in subs
    assert subs["x-sampbridge.query.tap"].get("x-samp.mostly-harmless") == "1"
    assert d.conn.connected


def test_point_at_sends_the_cone_table_to_topcat_and_fits_to_ds9(cfg, make_daemon, make_peer,
                                                                 vo_server):
    make_daemon(cfg)
    topcat = make_peer("topcat", ["table.load.votable"])
    ds9 = make_peer("SAOImageDS9", ["image.load.fits", "table.load.votable"])
    sid = topcat.find("sampbridge")
    topcat.notify(sid, "coord.pointAt.sky", RHO)
    (tab,) = topcat.wait_for("table.load.votable")
    assert tab["name"] == "CSC 2.1 cone 246.79250 -24.32027 r=3'"
    assert tab["table-id"].startswith("sampbridge-cone-")
    assert names(path_of(tab["url"])) == direct_cone(vo_server, 246.7925, -24.32027, 0.05)
    (img,) = ds9.wait_for("image.load.fits")
    with fits.open(path_of(img["url"])) as hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert WCS(hdul[0].header).has_celestial
    assert ds9.of("table.load.votable") == []   # tables go to send_tables_to only


def test_ds9_gets_a_tabledata_copy_of_a_binary_cone_table(no_images, make_daemon, make_peer,
                                                          vo_server):
    """DS9 8.4 shows BINARY VOTables as empty catalogs: it is sent a TABLEDATA copy.

    The standard shape's cone search (DaCHS) answers BINARY; CXC's answers TABLEDATA (see
    test_ds9_and_topcat_get_the_cxc_tabledata_cone_as_sent).
    """
    cfg = no_images.replace(**{"send_tables_to": ["topcat", "saoimageds9"],
                               "services.cone": f"{vo_server}/csc21/q/coneSearch/scs.xml"})
    make_daemon(cfg)
    topcat = make_peer("topcat", ["table.load.votable"])
    ds9 = make_peer("SAOImageDS9", ["table.load.votable"])
    topcat.notify(topcat.find("sampbridge"), "coord.pointAt.sky", RHO)
    (tab,) = topcat.wait_for("table.load.votable")
    (cat,) = ds9.wait_for("table.load.votable")
    original, copy = path_of(tab["url"]), path_of(cat["url"])
    assert b"<BINARY" in original.read_bytes()[:1 << 16]      # what the mimic answers
    assert copy != original and b"<TABLEDATA>" in copy.read_bytes()
    assert b"<BINARY" not in copy.read_bytes()
    assert (cat["name"], cat["table-id"]) == (tab["name"], tab["table-id"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        va, vb = (parse_single_table(str(p)) for p in (original, copy))
    a, b = va.to_table(), vb.to_table()
    assert a.colnames == b.colnames and len(a) == len(b) > 10
    assert list(a["name"]) == list(b["name"])
    assert [(f.unit, f.ucd) for f in va.fields] == [(f.unit, f.ucd) for f in vb.fields]


def test_ds9_and_topcat_get_the_cxc_tabledata_cone_as_sent(no_images, make_daemon, make_peer,
                                                           vo_server):
    """CXC's cone search answers VOTable 1.2 TABLEDATA (T/F, empty nulls): every peer gets
    that document as the service sent it, no copy, no re-encoding."""
    cfg = no_images.replace(**{"send_tables_to": ["topcat", "saoimageds9"]})
    make_daemon(cfg)
    topcat = make_peer("topcat", ["table.load.votable"])
    ds9 = make_peer("SAOImageDS9", ["table.load.votable"])
    topcat.notify(topcat.find("sampbridge"), "coord.pointAt.sky", RHO)
    (tab,) = topcat.wait_for("table.load.votable")
    (cat,) = ds9.wait_for("table.load.votable")
    assert path_of(tab["url"]) == path_of(cat["url"])
    sent = requests.get(cfg["services.cone"], timeout=(5, 60), params={
        "RA": "246.7925", "DEC": "-24.32027", "SR": "0.05", "VERB": "2"}).content
    assert b'version="1.2"' in sent[:300] and b"<TABLEDATA>" in sent and b"<TD/>" in sent
    assert path_of(tab["url"]).read_bytes() == sent


def test_table_ids_are_unique_and_results_persist(no_images, make_daemon, make_peer):
    make_daemon(no_images)
    topcat = make_peer("topcat", ["table.load.votable"])
    sid = topcat.find("sampbridge")
    for i, (ra, dec) in enumerate([("246.7925", "-24.32027"), ("246.80", "-24.32"),
                                   ("0.02", "1.5")]):
        topcat.call(sid, "coord.pointAt.sky", {"ra": ra, "dec": dec})
        tabs = topcat.wait_for("table.load.votable", i + 1)
    ids = [t["table-id"] for t in tabs]
    assert len(set(ids)) == 3
    assert all(path_of(t["url"]).exists() for t in tabs)


@pytest.mark.parametrize("params, words", [
    ({"ra": "abc", "dec": "1"}, "'ra' must be a number"),
    ({"ra": "nan", "dec": "1"}, "finite"),
    ({"ra": "10", "dec": "95"}, "between -90 and +90"),
    ({"ra": "10"}, "'dec' missing"),
])
def test_bad_positions_get_a_readable_samp_error(no_images, make_daemon, make_peer, params,
                                                 words):
    d = make_daemon(no_images)
    peer = make_peer("topcat", ["table.load.votable"])
    sid = peer.find("sampbridge")
    resp = peer.call(sid, "coord.pointAt.sky", params)
    assert resp["samp.status"] == "samp.error"
    assert words in resp["samp.error"]["samp.errortxt"]
    peer.notify(sid, "coord.pointAt.sky", params)      # as a notify: logged, nothing crashes
    assert peer.call(sid, "samp.app.ping", {})["samp.status"] == "samp.ok"
    assert d.conn.connected and d.stats["errors"] >= 2


def test_flood_of_point_at_is_coalesced(no_images, make_daemon, make_peer):
    d = make_daemon(no_images)
    topcat = make_peer("topcat", ["table.load.votable"])
    sid = topcat.find("sampbridge")
    for i in range(59):
        topcat.notify(sid, "coord.pointAt.sky", {"ra": f"{246.70 + i * 0.002:.4f}",
                                                 "dec": "-24.32027"})
    # notifications run on parallel threads, so their order is not fixed: let them all land,
    # then send the final position
    wait_for(lambda: d.coalescer.submitted + d.stats["echoes"] == 59, 20, what="the flood")
    topcat.notify(sid, "coord.pointAt.sky", {"ra": "246.8180", "dec": "-24.32027"})
    wait_for(lambda: any(t["name"].startswith("CSC 2.1 cone 246.81800")
                         for t in topcat.of("table.load.votable")), 20, what="last position")
    assert d.stats["queries"] <= 6


def test_a_single_click_runs_at_once_without_waiting_the_quiet_spell(no_images, make_daemon,
                                                                     make_peer, caplog):
    """Leading edge: with pointat.quiet at 60 s, the first click still runs at once."""
    caplog.set_level(logging.DEBUG, logger="sampbridge.flow")
    d = make_daemon(no_images.replace(**{"pointat.quiet": 60.0, "pointat.max_wait": 60.0}))
    topcat = make_peer("topcat", ["table.load.votable"])
    topcat.notify(topcat.find("sampbridge"), "coord.pointAt.sky", RHO)
    topcat.wait_for("table.load.votable")
    # shown by the counters and the log, not by the clock
    assert (d.coalescer.submitted, d.coalescer.ran, d.coalescer.leading) == (1, 1, 1)
    assert "item 1 runs at once (leading edge)" in caplog.text


def test_a_row_click_sent_twice_by_topcat_is_answered_once_at_once(no_images, make_daemon,
                                                                   make_peer, caplog,
                                                                   vo_server):
    """TOPCAT sends coord.pointAt.sky and table.highlight.row for one row click: one query,
    run at once, never superseded by its own twin."""
    caplog.set_level(logging.INFO, logger="sampbridge")
    d = make_daemon(no_images.replace(**{"pointat.quiet": 5.0, "pointat.max_wait": 10.0}))
    topcat = make_peer("topcat", ["table.load.votable"])
    sid = topcat.find("sampbridge")
    res = topcat.call(sid, "x-sampbridge.query.cone", RHO)["samp.result"]
    topcat.wait_for("table.load.votable")
    row = next(r for r in _rows(path_of(res["url"]))[1:] if r[1] != 246.7925)
    topcat.notify(sid, "coord.pointAt.sky", {"ra": repr(row[1]), "dec": repr(row[2])})
    topcat.notify(sid, "table.highlight.row", {"table-id": res["table-id"], "url": res["url"],
                                               "row": str(row[0])})
    wait_for(lambda: "the position just received; answered once" in caplog.text, 20,
             what="the twin message")
    (_, click) = topcat.wait_for("table.load.votable", 2)
    assert click["name"].startswith(f"CSC 2.1 cone {row[1]:.5f}")
    assert (d.coalescer.submitted, d.coalescer.ran, d.coalescer.leading) == (1, 1, 1)
    assert "superseded" not in caplog.text


def _rows(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = parse_single_table(str(path)).to_table()
    return [(i, float(r["ra"]), float(r["dec"])) for i, r in enumerate(t)]


def test_the_table_is_delivered_while_the_image_query_still_runs(cfg, make_daemon, make_peer):
    """The table does not wait for SIAP: the image server still holds the request."""
    from faulty_server import FaultyServer

    with FaultyServer(slow_seconds=60) as srv:
        d = make_daemon(cfg.replace(**{"services.siap": srv.url("/slow")}))
        topcat = make_peer("topcat", ["table.load.votable"])
        ds9 = make_peer("SAOImageDS9", ["image.load.fits"])
        topcat.notify(topcat.find("sampbridge"), "coord.pointAt.sky", RHO)
        topcat.wait_for("table.load.votable")
        wait_for(lambda: d.points_done == 1, 10, what="the click's table delivered")
        # ... while the image server still holds the image query
        assert srv.hits.get("/slow") == 1 and not srv.release.is_set()
        assert ds9.of("image.load.fits") == []
        srv.release.set()                      # the image query ends (it found no image)
        wait_for(lambda: all(f.done() for f in d._point_work), 20, what="the image query")
    assert len(topcat.of("table.load.votable")) == 1


def _topcat_click(cfg, make_daemon, make_peer):
    """A daemon, TOPCAT and DS9 stand-ins, and a click in TOPCAT at RHO: the image in DS9.

    The image goes to the viewers that did not send the click (DS9 here, as a click in TOPCAT
    or Aladin puts a CSC image in DS9).
    """
    d = make_daemon(cfg)
    topcat = make_peer("topcat", ["table.load.votable"])
    ds9 = make_peer("SAOImageDS9", ["image.load.fits"])
    sid = ds9.find("sampbridge")
    topcat.notify(sid, "coord.pointAt.sky", RHO)
    (img,) = ds9.wait_for("image.load.fits")
    topcat.wait_for("table.load.votable")
    return d, topcat, ds9, sid, img


def test_echo_after_an_image_load_starts_no_query(cfg, make_daemon, make_peer):
    d, topcat, ds9, sid, img = _topcat_click(cfg, make_daemon, make_peer)
    # what DS9 does next: it pans to the image and broadcasts its centre, then the position
    with fits.open(path_of(img["url"])) as hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = hdul[0].header
        ra_c, dec_c = WCS(h).celestial.all_pix2world([[(h["NAXIS1"] - 1) / 2,
                                                      (h["NAXIS2"] - 1) / 2]], 0)[0]
    queries = d.stats["queries"]
    ds9.call(sid, "coord.pointAt.sky", {"ra": f"{ra_c:.6f}", "dec": f"{dec_c:.6f}"})
    resp = ds9.call(sid, "coord.pointAt.sky", RHO)
    assert resp["samp.result"].get("ignored") == "echo"
    assert d.stats["echoes"] == 2
    assert d.stats["queries"] == queries and d.coalescer.submitted == 1
    # a genuinely new click still works
    ds9.notify(sid, "coord.pointAt.sky", {"ra": "246.70", "dec": "-24.30"})
    topcat.wait_for("table.load.votable", 2)


@pytest.mark.parametrize("skip_repeat", [True, False])
def test_a_second_click_in_the_same_field_does_not_reload_the_image(cfg, make_daemon,
                                                                    make_peer, caplog,
                                                                    skip_repeat):
    """DS9 would reload the same image and lose the user's pan, zoom and scale."""
    caplog.set_level(logging.INFO, logger="sampbridge")
    d, topcat, ds9, sid, first = _topcat_click(
        cfg.replace(**{"images.skip_repeat": skip_repeat}), make_daemon, make_peer)
    # another source in the same field: a new table, and the same image
    topcat.notify(sid, "coord.pointAt.sky", {"ra": "246.8000", "dec": "-24.3100"})
    wait_for(lambda: len(topcat.of("table.load.votable")) == 2, 20, what="the second table")
    wait_for(lambda: d.points_done == 2, 20, what="the second click to finish")
    if skip_repeat:
        # the image follows the table: wait for its verdict
        wait_for(lambda: "was sent with the previous click; not sent again" in caplog.text, 20,
                 what="the repeated image left out")
        assert len(ds9.of("image.load.fits")) == 1
    else:
        (_, again) = wait_for(lambda: (i := ds9.of("image.load.fits")) and len(i) == 2 and i,
                              10, what="the image sent again")
        assert again["name"] == first["name"] and again["url"] != first["url"]
        # ... from the cache, not a second download: the same bytes, in a file of its own
        # (never a link to the first: an edit of one must not change the other)
        a, b = path_of(again["url"]), path_of(first["url"])
        assert a.read_bytes() == b.read_bytes() and a.stat().st_ino != b.stat().st_ino
        assert "(1 from the cache)" in caplog.text


def test_custom_cone_mtype_replies_with_the_result(no_images, make_daemon, make_peer, vo_server):
    make_daemon(no_images)
    topcat = make_peer("topcat", ["table.load.votable"])
    sid = topcat.find("sampbridge")
    resp = topcat.call(sid, "x-sampbridge.query.cone", {**RHO, "radius": "0.02", "verb": "1"})
    assert resp["samp.status"] == "samp.ok", resp
    r = resp["samp.result"]
    assert r["status"] == "done" and int(r["rows"]) > 0
    assert names(path_of(r["url"])) == direct_cone(vo_server, 246.7925, -24.32027, 0.02, 1)
    (tab,) = topcat.wait_for("table.load.votable")
    assert tab["table-id"] == r["table-id"] and r["sent-to"] == ["topcat"]


def test_custom_siap_mtype(no_images, make_daemon, make_peer):
    make_daemon(no_images)
    ds9 = make_peer("SAOImageDS9", ["image.load.fits"])
    sid = ds9.find("sampbridge")
    resp = ds9.call(sid, "x-sampbridge.query.siap", {**RHO, "size": "0.2"})
    assert resp["samp.status"] == "samp.ok", resp
    assert path_of(resp["samp.result"]["url"]).read_bytes()[:9] == b"SIMPLE  ="
    ds9.wait_for("image.load.fits")


@pytest.mark.parametrize("query", sorted(p.name for p in GUIDE.glob("*.adql")))
def test_custom_tap_mtype_runs_the_cxc_guide_queries(no_images, make_daemon, make_peer, query):
    make_daemon(no_images)
    topcat = make_peer("topcat", ["table.load.votable"])
    sid = topcat.find("sampbridge")
    resp = topcat.call(sid, "x-sampbridge.query.tap",
                       {"adql": (GUIDE / query).read_text(), "name": query})
    assert resp["samp.status"] == "samp.ok", resp
    assert resp["samp.result"]["rows"] == "1000"
    (tab,) = topcat.wait_for("table.load.votable")
    assert tab["name"] == query and tab["table-id"] == resp["samp.result"]["table-id"]


@pytest.mark.parametrize("mtype, params, words", [
    ("x-sampbridge.query.tap", {"adql": "SELECT nope FROM csc21.master_source"},
     "column 'nope' could not be located"),
    ("x-sampbridge.query.tap", {"adql": "SELEKT * FROM x"}, "rejected by the service"),
    ("x-sampbridge.query.tap", {}, "'adql' is missing"),
    ("x-sampbridge.query.cone", {"ra": "1", "dec": "1", "radius": "30"}, "'radius' must be"),
    ("x-sampbridge.query.cone", {"ra": "1", "dec": "1", "verb": "x"}, "'verb' must be"),
    ("x-sampbridge.query.siap", {"ra": "1"}, "'dec' missing"),
    ("x-sampbridge.query.siap", {"ra": "120", "dec": "-60"}, "no image found"),
])
def test_custom_mtype_errors_are_readable(no_images, make_daemon, make_peer, mtype, params,
                                          words):
    d = make_daemon(no_images)
    peer = make_peer("topcat", ["table.load.votable"])
    sid = peer.find("sampbridge")
    resp = peer.call(sid, mtype, params)
    assert resp["samp.status"] == "samp.error"
    assert words in resp["samp.error"]["samp.errortxt"]
    assert d.conn.connected


def test_unreachable_service_gives_a_readable_error(tmp_path, make_daemon, make_peer):
    from faulty_server import wait_port_closed_url

    dead = wait_port_closed_url()
    cfg = local_config(dead.rsplit("/", 1)[0], tmp_path / "r", **{
        "images.enabled": False, "http.retries": 0, "services.cone": dead})
    make_daemon(cfg)
    peer = make_peer("topcat", ["table.load.votable"])
    sid = peer.find("sampbridge")
    resp = peer.call(sid, "x-sampbridge.query.cone", RHO)
    assert resp["samp.status"] == "samp.error"
    assert "cannot reach the service" in resp["samp.error"]["samp.errortxt"]


def test_long_tap_job_gets_an_early_pending_reply_then_the_table(no_images, make_daemon,
                                                                 make_peer):
    d = make_daemon(no_images.replace(reply_within=0.1))
    topcat = make_peer("topcat", ["table.load.votable"])
    sid = topcat.find("sampbridge")
    resp = topcat.call(sid, "x-sampbridge.query.tap",
                       {"adql": (GUIDE / "3_observation_detections.adql").read_text()})
    assert resp["samp.status"] == "samp.ok"
    assert resp["samp.result"]["status"] == "pending"
    (tab,) = topcat.wait_for("table.load.votable", timeout=30)
    assert path_of(tab["url"]).exists()
    assert d.conn.connected


def test_peer_that_refuses_a_table_is_logged_not_fatal(no_images, make_daemon, make_peer,
                                                       caplog):
    d = make_daemon(no_images)
    topcat = make_peer("topcat", ["table.load.votable"], fail=True)
    sid = topcat.find("sampbridge")
    resp = topcat.call(sid, "x-sampbridge.query.cone", RHO)
    assert resp["samp.status"] == "samp.ok" and resp["samp.result"].get("sent-to") in (None, [])
    assert d.conn.connected


def test_a_silent_recipient_does_not_hold_up_the_delivery(no_images, make_daemon, make_peer,
                                                          caplog):
    """A viewer that never replies (Aladin 12's first table) costs hub.send_wait, not more."""
    caplog.set_level(logging.INFO, logger="sampbridge")
    cfg = no_images.replace(**{"send_tables_to": ["topcat", "aladin"], "hub.send_wait": 0.5,
                               "hub.call_timeout": 3.0})
    d = make_daemon(cfg)
    topcat = make_peer("topcat", ["table.load.votable"])
    aladin = make_peer("Aladin", ["table.load.votable"], silent=True)
    sid = topcat.find("sampbridge")
    t0 = time.monotonic()
    resp = topcat.call(sid, "x-sampbridge.query.cone", RHO)
    took = time.monotonic() - t0
    assert resp["samp.status"] == "samp.ok", resp
    assert resp["samp.result"]["sent-to"] == ["topcat"]
    assert took < 3.0, f"the reply waited {took:.1f} s for the silent peer"
    assert topcat.of("table.load.votable") and aladin.of("table.load.votable")
    wait_for(lambda: "Aladin (no reply yet)" in caplog.text, 5, what="the pending log line")
    # the call times out later (hub.call_timeout), and that is logged too
    wait_for(lambda: "table.load.votable to Aladin failed" in caplog.text, 10,
             what="the late failure")
    assert d.conn.connected and d.stats["delivered"] == 1


def test_recipients_that_come_and_go_are_seen_at_once(no_images, make_daemon, make_peer):
    """The daemon keeps each MType's subscribers between sends, and the hub's events about
    clients (register, subscriptions, unregister) refresh them."""
    d = make_daemon(no_images.replace(**{"send_tables_to": ["topcat", "aladin"]}))
    topcat = make_peer("topcat", ["table.load.votable"])
    sid = topcat.find("sampbridge")
    for i, ra in enumerate(("246.7000", "246.7200", "246.7400")):
        if i == 1:
            aladin = make_peer("Aladin", ["table.load.votable"])
            # the hub tells the daemon; a send from now on must reach Aladin too
            wait_for(lambda: d.conn.targets("table.load.votable", ["aladin"]), 5,
                     what="the daemon to see Aladin")
        if i == 2:
            aladin.close()
            wait_for(lambda: not d.conn.targets("table.load.votable", ["aladin"]), 5,
                     what="the daemon to see Aladin leave")
        resp = topcat.call(sid, "x-sampbridge.query.cone", {"ra": ra, "dec": "-24.32"})
        assert resp["samp.status"] == "samp.ok", resp
        want = ["topcat", "Aladin"] if i == 1 else ["topcat"]
        assert sorted(resp["samp.result"]["sent-to"]) == sorted(want), (i, resp)
    assert len(aladin.of("table.load.votable")) == 1


def test_connect_mode_waits_for_a_late_hub(no_images, samp_home):
    from sampbridge.daemon import Daemon
    from sampbridge.samp.hub import Hub

    d = Daemon(no_images.replace(**{"hub.mode": "connect"}))
    d.start()
    try:
        assert not d.conn.connected and not d.conn.own_hub
        hub = Hub(addr="127.0.0.1", web_profile=False,
                                  lockfile=str(samp_home / ".samp"))
        hub.start(wait=False)
        try:
            wait_for(lambda: d.conn.connected, 10, what="registration with the late hub")
            hub.stop()
            wait_for(lambda: not d.conn.connected, 10, what="noticing the hub is gone")
            hub = Hub(addr="127.0.0.1", web_profile=False,
                                      lockfile=str(samp_home / ".samp"))
            hub.start(wait=False)
            wait_for(lambda: d.conn.connected and d.conn.connect_count == 2, 10,
                     what="registration with the new hub")
        finally:
            hub.stop()
    finally:
        d.stop()


def test_auto_mode_starts_its_own_hub(no_images, samp_home):
    from sampbridge.daemon import Daemon
    from sampbridge.samp.connection import find_running_hub

    d = Daemon(no_images)
    d.start(wait=10)
    try:
        assert d.conn.own_hub and d.conn.connected
        hub = find_running_hub()
        assert hub and hub["samp.hub.xmlrpc.url"].startswith("http://127.0.0.1:")
    finally:
        d.stop()
    assert find_running_hub() is None


def test_sampbridge_run_stops_cleanly_on_sigterm(no_images, hub, make_peer, tmp_path):
    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text(
        "services:\n"
        f"  cone: {no_images['services.cone']}\n"
        f"  siap: {no_images['services.siap']}\n"
        f"  tap: {no_images['services.tap']}\n"
        f"results:\n  dir: {tmp_path / 'res'}\nimages:\n  enabled: false\n"
        "hub:\n  mode: connect\n")
    proc = subprocess.Popen([sys.executable, "-m", "sampbridge", "run", "--config",
                             str(cfgfile)], env=dict(os.environ), stderr=subprocess.PIPE,
                            text=True)
    try:
        peer = make_peer("topcat", ["table.load.votable"])
        sid = peer.find("sampbridge", timeout=20)
        peer.notify(sid, "coord.pointAt.sky", RHO)
        peer.wait_for("table.load.votable")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sid not in peer.client.get_registered_clients()
    assert "received SIGTERM" in err and "stopped" in err
    assert "coord.pointAt.sky from topcat: 246.79250 -24.32027" in err
    assert "rows in" in err and "-> topcat" in err
    assert "Traceback" not in err
    assert not list((tmp_path / "res").glob("*.part"))
