"""Tables in, CSC matches out: the daemon with a real hub, peers and the local mimic."""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from astropy.io.votable import parse_single_table
from astropy.table import Table

from sampbridge.csc import tap as tapmod
from sampbridge.csc.errors import QueryError
from sampbridge.engine import Engine
from sampbridge.model import TapRequest

from conftest import wait_for
from helpers import SHAPES, LyingTap, path_of, shape

pytestmark = pytest.mark.server


def read(path: Path) -> Table:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return parse_single_table(str(path)).to_table()


def _sources(vo_server: str, d: Path, n: int) -> Table:
    """``n`` CSC sources from the mimic: names and positions, with 0.3" noise."""
    from conftest import local_config

    e = Engine(local_config(vo_server, d))
    try:
        res = e.run_tap(TapRequest(f"SELECT TOP {n} name, ra, dec FROM csc21.master_source "
                                   "WHERE name NOT LIKE '%X' ORDER BY name", None, None))
    finally:
        e.close()
    t = read(res.path)
    rng = np.random.default_rng(7)
    out = Table()
    out["id"] = np.arange(len(t))
    out["src"] = [str(n) for n in t["name"]]
    out["RA_deg"] = np.asarray(t["ra"]) + rng.normal(0, 0.3, len(t)) / 3600
    out["DE_deg"] = np.asarray(t["dec"]) + rng.normal(0, 0.3, len(t)) / 3600
    out["RA_deg"].unit = out["DE_deg"].unit = "deg"
    out["RA_deg"].meta["ucd"] = "pos.eq.ra;meta.main"
    out["DE_deg"].meta["ucd"] = "pos.eq.dec;meta.main"
    out["mag"] = rng.uniform(10, 20, len(t))
    out["mag"].unit = "mag"
    out["mag"].meta["ucd"] = "phot.mag;em.opt.V"
    return out


@pytest.fixture(scope="module")
def sources(vo_server, tmp_path_factory) -> Table:
    """300 CSC sources from the mimic: names and positions, with 0.3" noise."""
    return _sources(vo_server, tmp_path_factory.mktemp("src"), 300)


@pytest.fixture(scope="module")
def sources1000(vo_server, tmp_path_factory) -> Table:
    """1000 CSC sources from the mimic, built as ``sources``."""
    return _sources(vo_server, tmp_path_factory.mktemp("src1000"), 1000)


def pairs_of(path: Path) -> list[tuple[int, str]]:
    t = read(path)
    return sorted(zip(t["input_row"].tolist(), [str(n) for n in t["name_csc"]], strict=True))


def write(t: Table, path: Path, fmt: str = "votable") -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.write(path, format=fmt, overwrite=True)
    return path


@pytest.mark.parametrize("mode", ["best", "all"])
def test_upload_and_cone_strategies_give_the_same_rows(cfg, vo_server, sources, mode):
    """An upload join on the standard shape (CXC takes no upload) and cone searches on CXC."""
    pairs = {}
    for strategy, cell in (("upload", 0.1), ("cone", 0.1), ("cone", 0.0)):
        tap = f"{vo_server}/tap" if strategy == "upload" else cfg["services.tap"]
        e = Engine(cfg.replace(**{"match.strategy": strategy, "match.batch_cell": cell,
                                  "match.mode": mode, "services.tap": tap}))
        try:
            res = e.run_match(sources[:120], "list")
        finally:
            e.close()
        t = read(res.path)
        pairs[(strategy, cell)] = sorted(zip(t["input_row"].tolist(),
                                             [str(n) for n in t["name_csc"]], strict=True))
        assert res.strategy == strategy and res.input_rows == 120
    assert pairs[("upload", 0.1)] == pairs[("cone", 0.1)] == pairs[("cone", 0.0)]
    assert len(pairs[("upload", 0.1)]) >= 120 if mode == "all" else True


@pytest.mark.parametrize("name, strategy", [("cxc", "cone"), ("pessimistic", "cone"),
                                            ("standard", "upload")])
def test_match_keeps_units_ucds_and_finds_the_right_sources(cfg, vo_server, sources, tmp_path,
                                                            name, strategy):
    e = Engine(cfg.replace(**shape(vo_server, name).settings()))
    try:
        res = e.run_match(sources, "mylist")
    finally:
        e.close()
    assert res.name == "mylist \u00d7 CSC 2.1" and res.strategy == strategy
    # TABLEDATA (which TOPCAT reads, bit columns included), written by astropy's Python writer
    # since its C writer corrupted memory (docs/performance.md)
    assert b"<TABLEDATA>" in res.path.read_bytes()
    assert res.unmatched == 0 and res.rows == 300
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vt = parse_single_table(str(res.path))
    fields = {f.name: f for f in vt.fields}
    assert fields["mag"].ucd == "phot.mag;em.opt.V" and str(fields["mag"].unit) == "mag"
    assert fields["RA_deg"].ucd == "pos.eq.ra;meta.main"
    assert str(fields["sep_arcsec"].unit) == "arcsec"
    t = vt.to_table()
    assert [str(a) for a in t["src"]] == [str(b) for b in t["name_csc"]]
    assert (np.asarray(t["sep_arcsec"]) < 3).all()


@pytest.mark.parametrize("cones", ["scs", "tap"])
def test_a_1000_row_match_gives_the_same_pairs_on_every_shape(cfg, vo_server, sources1000,
                                                              cones):
    """Upload on the standard shape, cones on both CXC shapes (cone searches, or ADQL cones in
    the dialect each accepts: dbo.cone_distance on CXC, a box cut here on the pessimistic)."""
    got, strategy = {}, {}
    for name in SHAPES:
        e = Engine(cfg.replace(**shape(vo_server, name).settings(),
                               **{"match.mode": "all", "cone.service": cones,
                                  "cache.enabled": False}))
        try:
            res = e.run_match(sources1000, "thousand")
        finally:
            e.close()
        got[name], strategy[name] = pairs_of(res.path), res.strategy
        assert res.input_rows == 1000 and res.unmatched == 0
    assert strategy == {"cxc": "cone", "pessimistic": "cone", "standard": "upload"}
    assert got["cxc"] == got["pessimistic"] == got["standard"]
    assert len({i for i, _ in got["standard"]}) == 1000
    if cones == "tap":
        assert tapmod.learnt(shape(vo_server, "cxc").tap)["dialect"] == "csc"
        assert tapmod.learnt(shape(vo_server, "pessimistic").tap)["dialect"] == "box"


def test_an_upload_refused_at_run_time_goes_by_cones_and_is_remembered(cfg, vo_server,
                                                                       sources, caplog):
    """/capabilities promise upload and geometry, but the service refuses the upload (HTTP 400
    and a VOTable error, as CXC's does): the match goes by cones, now and from then on."""
    caplog.set_level(logging.INFO, logger="sampbridge")
    with LyingTap(f"{vo_server}/tap", f"{vo_server}/csc21tap") as lying:
        e = Engine(cfg.replace(**{"services.tap": lying.url, "cache.enabled": False}))
        try:
            assert e.match_strategy() == "upload"
            first = e.run_match(sources[:60], "list")
            assert e.match_strategy() == "cone"
            again = e.run_match(sources[60:120], "list")
        finally:
            e.close()
        assert lying.uploads == 1
    assert first.strategy == again.strategy == "cone"
    assert first.unmatched == again.unmatched == 0
    said = [r.getMessage() for r in caplog.records if "refused a table upload" in r.getMessage()]
    assert len(said) == 1 and "UPLOAD is not supported by this service" in said[0]
    ref = Engine(cfg.replace(**{"match.strategy": "upload",
                                "services.tap": f"{vo_server}/tap"}))
    try:
        assert pairs_of(first.path) == pairs_of(ref.run_match(sources[:60], "list").path)
    finally:
        ref.close()


def test_a_forced_upload_that_is_refused_says_so(cfg, vo_server, sources):
    """match.strategy: upload on CXC: the user asked for it, so the service's refusal is the
    answer (in its own words), not a silent switch to cones."""
    e = Engine(cfg.replace(**{"match.strategy": "upload"}))
    try:
        with pytest.raises(QueryError) as ei:
            e.run_match(sources[:5], "list")
    finally:
        e.close()
    text = str(ei.value)
    assert "UPLOAD is not supported by this service" in text and "<?xml" not in text


def test_a_match_by_cones_keeps_the_nulls(cfg, vo_server, sources):
    """CXC's 1.2 cone answers write null integers as empty cells: the match keeps them null,
    as the standard shape's upload join does."""
    cols = ["name", "ra", "dec", "var_intra_index_w", "var_inter_index_b", "flux_aper_w",
            "conf_flag"]
    got = {}
    for name in ("cxc", "standard"):
        e = Engine(cfg.replace(**shape(vo_server, name).settings(),
                               **{"match.columns": cols, "match.mode": "all"}))
        try:
            t = read(e.run_match(sources[:120], "list").path)
        finally:
            e.close()
        t.sort(["input_row", "name_csc"])
        got[name] = t
    a, b = got["cxc"], got["standard"]
    assert len(a) == len(b) >= 120
    assert np.ma.count_masked(b["var_intra_index_w_csc"]) > 0
    for c in cols:
        col = c + "_csc"
        assert (np.ma.getmaskarray(a[col]) == np.ma.getmaskarray(b[col])).all(), col
        keep = ~np.ma.getmaskarray(b[col])
        assert (np.asarray(a[col])[keep] == np.asarray(b[col])[keep]).all(), col


def test_a_match_asks_for_the_verb_its_columns_need(cfg, sources, caplog):
    """err_ellipse_r1 and err_ellipse_ang come at VERB=3 only from CXC's cone search."""
    caplog.set_level(logging.INFO, logger="sampbridge")
    cols = ["name", "ra", "dec", "err_ellipse_r0", "err_ellipse_r1", "err_ellipse_ang"]
    e = Engine(cfg.replace(**{"match.columns": cols}))
    try:
        res = e.run_match(sources[:20], "list")
    finally:
        e.close()
    t = read(res.path)
    assert {"err_ellipse_r1_csc", "err_ellipse_ang_csc"} <= set(t.colnames)
    assert not np.ma.getmaskarray(t["err_ellipse_r1_csc"]).any()
    assert "at VERB=3" in caplog.text


@pytest.fixture
def bridge(cfg, make_daemon, make_peer):
    d = make_daemon(cfg.replace(**{"images.enabled": False}))
    topcat = make_peer("topcat", ["table.load.votable"])
    return d, topcat, topcat.find("sampbridge")


@pytest.mark.parametrize("spelling", ["file:{p}", "file://{p}", "file://localhost/{p}",
                                      "file://localhost//{p}"])
def test_table_load_by_file_url_in_every_spelling(bridge, sources, tmp_path, spelling):
    d, topcat, sid = bridge
    p = write(sources[:50], tmp_path / "mine.vot")
    url = spelling.format(p=str(p).lstrip("/") if spelling.endswith("/{p}") else p)
    if spelling == "file://{p}":
        url = "file://" + str(p)
    resp = topcat.call(sid, "table.load.votable", {"url": url, "table-id": "t1",
                                                    "name": "mine"})
    assert resp["samp.status"] == "samp.ok", resp
    r = resp["samp.result"]
    assert (r["input-rows"], r["no-position"], r["unmatched"]) == ("50", "0", "0")
    (tab,) = topcat.wait_for("table.load.votable")
    # SAMP strings are ASCII: the name sent is 'mine x CSC 2.1'; the VOTable keeps the sign
    assert tab["name"] == "mine x CSC 2.1" and tab["table-id"] == r["table-id"]
    assert "mine \u00d7 CSC 2.1" in path_of(tab["url"]).read_text(encoding="utf-8")
    assert len(read(path_of(tab["url"]))) == 50


@pytest.mark.parametrize("fmt, suffix", [("fits", ".fits"), ("ascii.csv", ".csv")])
def test_fits_and_csv_tables(bridge, sources, tmp_path, fmt, suffix):
    d, topcat, sid = bridge
    t = sources[:20].copy()
    if fmt == "ascii.csv":      # sexagesimal strings, names only
        from astropy.coordinates import Angle
        t["RA"] = [Angle(x, "deg").to_string(unit="hourangle", sep=":", precision=3)
                   for x in t["RA_deg"]]
        t["DEC"] = [Angle(x, "deg").to_string(sep=":", precision=2, alwayssign=True)
                    for x in t["DE_deg"]]
        t.remove_columns(["RA_deg", "DE_deg"])
    p = write(t, tmp_path / f"mine{suffix}", fmt)
    mtype = "table.load.fits" if fmt == "fits" else "table.load.votable"
    resp = topcat.call(sid, mtype, {"url": p.as_uri(), "name": "m"})
    assert resp["samp.status"] == "samp.ok", resp
    assert resp["samp.result"]["unmatched"] == "0"


def test_table_from_a_loopback_http_url(bridge, sources, tmp_path):
    d, topcat, sid = bridge
    write(sources[:10], tmp_path / "served.vot")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        resp = topcat.call(sid, "table.load.votable", {"url": f"{base}/served.vot"})
        assert resp["samp.status"] == "samp.ok", resp
        resp = topcat.call(sid, "table.load.votable", {"url": f"{base}/missing.vot"})
        assert resp["samp.status"] == "samp.error"
        assert "does not exist (HTTP 404)" in resp["samp.error"]["samp.errortxt"]
    finally:
        srv.shutdown()
        srv.server_close()


def test_highlight_runs_a_cone_and_select_matches_the_rows(bridge, sources, tmp_path):
    d, topcat, sid = bridge
    p = write(sources[:30], tmp_path / "list.vot")
    resp = topcat.call(sid, "table.load.votable", {"url": p.as_uri(), "table-id": "tc-1",
                                                    "name": "list"})
    assert resp["samp.status"] == "samp.ok"
    topcat.wait_for("table.load.votable", 1)
    resp = topcat.call(sid, "table.highlight.row", {"table-id": "tc-1", "url": p.as_uri(),
                                                    "row": "4"})
    assert resp["samp.status"] == "samp.ok"
    tabs = topcat.wait_for("table.load.votable", 2)
    cone = read(path_of(tabs[1]["url"]))
    assert tabs[1]["name"].startswith("CSC 2.1 cone ")
    assert sources["src"][4] in [str(n) for n in cone["name"]]
    # by URL only
    resp = topcat.call(sid, "table.highlight.row", {"url": p.as_uri(), "row": "7"})
    assert resp["samp.status"] == "samp.ok"
    topcat.wait_for("table.load.votable", 3)
    resp = topcat.call(sid, "table.select.rowList", {"table-id": "tc-1",
                                                     "row-list": ["1", "3", "5"]})
    assert resp["samp.status"] == "samp.ok", resp
    assert resp["samp.result"]["input-rows"] == "3"
    tab = topcat.wait_for("table.load.votable", 4)[-1]
    assert tab["name"] == "list [3 selected] x CSC 2.1"
    assert sorted(read(path_of(tab["url"]))["input_row"].tolist()) == [1, 3, 5]


def test_highlight_of_an_own_result_runs_a_cone(bridge):
    d, topcat, sid = bridge
    resp = topcat.call(sid, "x-sampbridge.query.cone", {"ra": "246.7925", "dec": "-24.32027",
                                                        "radius": "0.01"})
    tid = resp["samp.result"]["table-id"]
    topcat.wait_for("table.load.votable", 1)
    wait_for(lambda: not d.echo.is_echo(246.7925, -24.32027), 10, what="echo window")
    resp = topcat.call(sid, "table.highlight.row", {"table-id": tid, "row": "0"})
    assert resp["samp.status"] == "samp.ok", resp
    topcat.wait_for("table.load.votable", 2)


def _bad_tables(tmp: Path, sources: Table) -> list[tuple[str, dict, str]]:
    nopos = write(Table({"flux": [1.0, 2.0]}), tmp / "nopos.vot")
    nan = sources[:3].copy()
    nan["RA_deg"] = np.nan
    nanp = write(nan, tmp / "nan.vot")
    notatable = tmp / "junk.vot"
    notatable.write_text("this is not a table")
    empty = write(sources[:0], tmp / "empty.vot")
    return [
        ("table.load.votable", {"url": nopos.as_uri()}, "no position columns found"),
        ("table.load.votable", {"url": nanp.as_uri()}, "none of the 3 rows has a usable"),
        ("table.load.votable", {"url": notatable.as_uri()}, "not a readable table"),
        ("table.load.votable", {"url": empty.as_uri()}, "the table is empty"),
        ("table.load.votable", {"url": (tmp / "gone.vot").as_uri()}, "cannot read the table"),
        ("table.load.votable", {}, "no table 'url'"),
        ("table.load.votable", {"url": "ftp://127.0.0.1/x.vot"}, "only file:"),
        ("table.load.votable", {"url": "http://192.0.2.1/x.vot"}, "refusing to fetch"),
        ("table.highlight.row", {"table-id": "never-seen", "row": "1"}, "does not know table"),
        ("table.select.rowList", {"table-id": "never-seen", "row-list": ["1"]},
         "does not know table"),
        ("x-sampbridge.match.table", {"url": nopos.as_uri(), "mode": "some"},
         "'mode' must be best or all"),
    ]


def test_bad_tables_get_readable_errors_and_the_daemon_goes_on(bridge, sources, tmp_path):
    d, topcat, sid = bridge
    for mtype, params, words in _bad_tables(tmp_path, sources):
        resp = topcat.call(sid, mtype, params)
        assert resp["samp.status"] == "samp.error", (mtype, params, resp)
        assert words in resp["samp.error"]["samp.errortxt"], (words, resp)
        topcat.notify(sid, mtype, params)      # a notify is logged, never fatal
    assert topcat.call(sid, "samp.app.ping", {})["samp.status"] == "samp.ok"
    assert d.conn.connected


def test_table_over_the_cap(cfg, make_daemon, make_peer, sources, tmp_path):
    make_daemon(cfg.replace(**{"images.enabled": False, "tables.max_bytes": 1000}))
    topcat = make_peer("topcat", ["table.load.votable"])
    sid = topcat.find("sampbridge")
    p = write(sources, tmp_path / "big.vot")
    resp = topcat.call(sid, "table.load.votable", {"url": p.as_uri()})
    assert resp["samp.status"] == "samp.error"
    assert "over the cap of 1,000 bytes" in resp["samp.error"]["samp.errortxt"]
