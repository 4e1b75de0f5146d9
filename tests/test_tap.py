"""sampbridge.csc.tap on the three shapes of the local CSC (CXC, CXC pessimistic, standard).

CXC documents no ADQL geometry (cones are ``dbo.cone_distance`` and a BETWEEN box), a 2026
report says even ``cone_distance`` is refused (the pessimistic shape), and a standard service
(DaCHS, HEASARC) speaks CONTAINS.  With ``tap.dialect: auto`` sampbridge must find out which,
from ``/capabilities`` and from the answers, and give the same rows everywhere.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import requests
from astropy.io.votable import parse_single_table

from sampbridge.csc import tap as tapmod
from sampbridge.csc import tapsync, votable
from sampbridge.csc.errors import QueryError, ServiceError, ServiceTimeout
from sampbridge.csc.http import make_session
from sampbridge.csc.tap import TapClient, forget, learnt, refuses_dialect, refuses_upload
from sampbridge.engine import Engine
from sampbridge.model import ConeRequest, TapRequest

from conftest import local_config
from helpers import GUIDE, SHAPES, LyingTap, Shape, names, shape

pytestmark = pytest.mark.server

QUERIES = sorted(p.name for p in GUIDE.glob("*.adql"))
CONES = [(246.7925, -24.32027, 0.05), (359.99, 1.5, 0.08), (0.02, 1.5, 0.1),
         (200.0, 89.99, 0.2)]                       # rho Oph, RA wrap both sides, the pole
DIALECT = {"cxc": "csc", "pessimistic": "box", "standard": "geometry"}
REFUSAL = "the ADQL geometry function CONTAINS is not supported by this service"
CONTAINS = ("SELECT TOP 3 name FROM csc21.master_source WHERE "
            "1=CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 246.79, -24.32, 0.1))")


@pytest.fixture(params=SHAPES)
def shaped(request, vo_server) -> Shape:
    return shape(vo_server, request.param)


def _engine(vo_server: str, s: Shape, results, **changes) -> Engine:
    return Engine(local_config(vo_server, results, **s.settings(),
                               **{"cache.enabled": False, **changes}))


@pytest.fixture(scope="module")
def reference(vo_server, tmp_path_factory) -> dict[str, list[str]]:
    """The guide queries' names on the standard shape (plain DaCHS at /tap)."""
    e = _engine(vo_server, shape(vo_server, "standard"), tmp_path_factory.mktemp("ref"),
                **{"tap.mode": "sync"})
    try:
        return {q: names(e.run_tap(TapRequest((GUIDE / q).read_text(), q, None)).path)
                for q in QUERIES}
    finally:
        e.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("query", QUERIES)
def test_the_cxc_guide_queries_run_unchanged_on_every_shape(vo_server, shaped, reference,
                                                            tmp_path, query, mode):
    e = _engine(vo_server, shaped, tmp_path, **{"tap.mode": mode})
    try:
        res = e.run_tap(TapRequest((GUIDE / query).read_text(), query, None))
    finally:
        e.close()
    assert res.rows == 1000 and not res.overflow
    got = names(res.path)
    assert got == reference[query]
    assert not any(n.endswith("X") for n in got)


@pytest.mark.parametrize("name", ["cxc", "pessimistic"])
def test_a_sync_303_is_followed_and_its_result_kept_as_sent(vo_server, tmp_path, name):
    """CXC answers /sync with 303 to the result: sampbridge follows it (a GET) and keeps the
    VOTable 1.2 TABLEDATA document as it is, rows counted as it streamed."""
    s = shape(vo_server, name)
    q = "SELECT TOP 25 name, ra, dec, var_intra_index_w FROM csc21.master_source ORDER BY name"
    r = requests.post(f"{s.tap}/sync", data={"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": q,
                                             "FORMAT": "votable"},
                      allow_redirects=False, timeout=(5, 60))
    assert r.status_code == 303 and r.headers["Location"].startswith(s.tap)
    sent = requests.get(r.headers["Location"], timeout=(5, 60)).content
    assert b'version="1.2"' in sent[:300] and b"<TABLEDATA>" in sent and b"<TD/>" in sent
    client = TapClient(s.tap, make_session(5, 60))
    res = client.sync_to_file(q, tmp_path / "r.vot")
    assert res.path.read_bytes() == sent
    assert res.rows == 25


@pytest.mark.parametrize("ra, dec, r", CONES)
def test_a_tap_cone_gives_the_rows_of_the_cone_search(vo_server, shaped, tmp_path, ra, dec, r):
    by = {}
    for service in ("scs", "tap"):
        e = _engine(vo_server, shaped, tmp_path / service, **{"cone.service": service})
        try:
            res = e.run_cone(ConeRequest(ra, dec, r, 2))
        finally:
            e.close()
        by[service] = names(res.path)
        assert res.rows == len(by[service])
    assert by["tap"] == by["scs"] and len(by["scs"]) > 5
    assert f"TAP cone ({DIALECT[shaped.name]})" in res.what
    assert learnt(shaped.tap)["dialect"] == DIALECT[shaped.name]


def test_the_pessimistic_shape_falls_back_to_a_box_once(vo_server, tmp_path, caplog):
    """/capabilities promise dbo.cone_distance; the service says 'function not found': the box
    takes over, is remembered for the URL and said once in the log, not at every cone."""
    s = shape(vo_server, "pessimistic")
    forget(s.tap)
    e = _engine(vo_server, s, tmp_path, **{"cone.service": "tap"})
    caplog.set_level(logging.INFO, logger="sampbridge")
    try:
        assert e.tap.dialects() == ["csc", "box"]
        rows = [e.run_cone(ConeRequest(ra, dec, r, 2)).rows for ra, dec, r in CONES]
        assert e.tap.dialects() == ["box"]
    finally:
        e.close()
    assert all(rows)
    said = [r for r in caplog.records if "dialect from now on" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert "'csc' refused" in said[0].getMessage()
    assert "function not found: cone_distance" in said[0].getMessage()
    assert learnt(s.tap)["dialect"] == "box"


def test_a_box_keeps_the_nulls_it_cuts(vo_server, tmp_path):
    """The box's rows outside the cone are dropped here; the rest keep their values, nulls
    included (the 1.2 document's empty cells are read as nulls, written as nulls)."""
    got = {}
    for name in ("pessimistic", "standard"):
        e = _engine(vo_server, shape(vo_server, name), tmp_path / name,
                    **{"cone.service": "tap"})
        try:
            res = e.run_cone(ConeRequest(246.7925, -24.32027, 0.05, 2))
        finally:
            e.close()
        got[name] = votable.read_table(res.path)
        got[name].sort("name")
    box, std = got["pessimistic"], got["standard"]
    assert len(box) == len(std) == 109
    for col in ("var_intra_index_w", "var_inter_index_b", "flux_aper_w", "conf_flag"):
        assert list(box[col].filled(-99) if hasattr(box[col], "filled") else box[col]) == \
            list(std[col].filled(-99) if hasattr(std[col], "filled") else std[col]), col


def test_capabilities_promise_a_dialect_per_shape(vo_server, shaped):
    client = TapClient(shaped.tap, make_session(5, 60))
    caps = client.capabilities()
    standard = shaped.name == "standard"
    assert (caps.geometry, caps.upload) == (standard, standard)
    assert caps.dialect == ("geometry" if standard else "csc")
    assert client.dialect("box") == "box" and client.dialects("csc") == ["csc"]


def test_capabilities_that_promise_geometry_are_corrected_by_the_answers(vo_server, tmp_path,
                                                                         caplog):
    """A service whose /capabilities list CONTAINS but which refuses it (HTTP 400 and a VOTable
    error, like CXC's): the csc dialect takes over and gives the cone search's rows."""
    caplog.set_level(logging.INFO, logger="sampbridge")
    with LyingTap(f"{vo_server}/tap", f"{vo_server}/csc21tap") as lying:
        cxc = shape(vo_server, "cxc")
        e = Engine(local_config(vo_server, tmp_path, **{
            **cxc.settings(), "services.tap": lying.url, "cone.service": "tap",
            "cache.enabled": False}))
        try:
            assert e.tap.dialects() == ["geometry", "csc", "box"]
            first = e.run_cone(ConeRequest(246.7925, -24.32027, 0.05, 2))
            syncs = lying.syncs
            again = e.run_cone(ConeRequest(0.02, 1.5, 0.1, 2))
        finally:
            e.close()
        assert syncs == 2 and lying.syncs == 3           # geometry once, then csc only
    assert first.what.startswith("TAP cone (csc)") and again.what.startswith("TAP cone (csc)")
    e = _engine(vo_server, cxc, tmp_path / "scs")
    try:
        assert names(first.path) == names(e.run_cone(ConeRequest(246.7925, -24.32027, 0.05,
                                                                 2)).path)
    finally:
        e.close()
    said = [r.getMessage() for r in caplog.records if "dialect from now on" in r.getMessage()]
    assert len(said) == 1 and REFUSAL in said[0]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("name", ["cxc", "pessimistic"])
def test_a_cxc_refusal_reaches_the_user_in_its_own_words(vo_server, tmp_path, name, mode):
    e = _engine(vo_server, shape(vo_server, name), tmp_path, **{"tap.mode": mode})
    try:
        with pytest.raises(QueryError) as ei:
            e.run_tap(TapRequest(CONTAINS, None, None))
    finally:
        e.close()
    text = str(ei.value)
    assert REFUSAL in text and "rejected by the service" in text
    assert "<?xml" not in text and "VOTABLE" not in text and "INFO" not in text


def test_a_cxc_refusal_reaches_a_samp_caller_in_its_own_words(cfg, make_daemon, make_peer):
    d = make_daemon(cfg.replace(**{"images.enabled": False}))
    topcat = make_peer("topcat", ["table.load.votable"])
    resp = topcat.call(topcat.find("sampbridge"), "x-sampbridge.query.tap", {"adql": CONTAINS})
    assert resp["samp.status"] == "samp.error"
    text = resp["samp.error"]["samp.errortxt"]
    assert REFUSAL in text and "<?xml" not in text and "QUERY_STATUS" not in text
    assert d.conn.connected


def test_refusals_are_told_apart():
    def refused(text: str, status: int = 200) -> QueryError:
        return QueryError("TAP query was rejected by the service", status=status,
                          service_message=text)

    assert refuses_dialect(refused("function not found: cone_distance"), "csc")
    assert refuses_dialect(refused("Could not parse your query: Expected boolean expression, "
                                   "found '('  (at char 66)"), "csc")
    assert refuses_dialect(refused(REFUSAL, 400), "geometry")
    assert refuses_dialect(ServiceError("TAP query failed with HTTP 400", status=400,
                                        service_message="Unknown function CONTAINS"),
                           "geometry")
    assert not refuses_dialect(refused("function not found: cone_distance"), "box")
    assert not refuses_dialect(ServiceError("TAP query failed with HTTP 500", status=500,
                                            service_message="database is down"), "geometry")
    assert not refuses_dialect(ServiceTimeout("TAP query: no answer in time"), "csc")
    assert not refuses_dialect(refused("MAXREC must be a number"), "geometry")
    upload = refused("UPLOAD is not supported by this service: table upload is not available",
                     400)
    assert refuses_upload(upload) and not refuses_dialect(upload, "geometry")
    assert not refuses_upload(refused("While ingesting upload sb_pos: No data left"))
    assert refuses_upload(refused("Unknown parameter UPLOAD"))


def test_what_is_learnt_is_per_service_url():
    forget("http://127.0.0.1:1/a")
    assert learnt("http://127.0.0.1:1/a") == {"dialect": None, "upload": True}
    assert tapmod.no_upload("http://127.0.0.1:1/a/", "UPLOAD is not supported")
    assert not tapmod.no_upload("http://127.0.0.1:1/a", "again")       # said once
    assert learnt("http://127.0.0.1:1/a")["upload"] is False
    assert learnt("http://127.0.0.1:1/b")["upload"] is True
    forget("http://127.0.0.1:1/a")
    assert learnt("http://127.0.0.1:1/a")["upload"] is True


def test_sampbridge_asks_for_votable(vo_server, tmp_path):
    """FORMAT=votable: CXC's TAP also speaks tab-separated text, which sampbridge never wants."""
    client = TapClient(f"{vo_server}/csc21tap", make_session(5, 60))
    res = client.sync_to_file("SELECT TOP 2 name FROM csc21.master_source", tmp_path / "a.vot")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(parse_single_table(str(res.path)).array) == 2
    assert tapsync.query_params("SELECT 1", None)["FORMAT"] == "votable"


def test_http_errors_say_what_the_service_said(tmp_path):
    """HTTP 4xx/5xx bodies: a VOTable error gives its text, an HTML page its title, plain text
    its first line; never the markup."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from sampbridge.csc import http

    bodies = {
        "/vot": (400, b'<?xml version="1.0"?>\n<VOTABLE version="1.2"><RESOURCE><INFO '
                      b'name="QUERY_STATUS" value="ERROR">Query failed: UPLOAD is not '
                      b"supported</INFO></RESOURCE></VOTABLE>"),
        "/vot500": (500, b'<VOTABLE><INFO name="QUERY_STATUS" value="ERROR">database '
                         b"unavailable</INFO></VOTABLE>"),
        "/html": (502, b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>"
                       b"<body><h1>oops</h1></body></html>"),
        "/text": (503, b"Service down for maintenance until 14:00\nsecond line"),
    }

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            code, body = bodies[self.path]
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    got = {}
    try:
        for path in bodies:
            with pytest.raises((QueryError, ServiceError)) as ei:
                http.download(make_session(5, 10), base + path, tmp_path / "x", what="TAP query",
                              max_bytes=10**6)
            got[path] = ei.value
    finally:
        srv.shutdown()
        srv.server_close()
    assert isinstance(got["/vot"], QueryError) and got["/vot"].status == 400
    assert str(got["/vot"]) == ("TAP query was rejected by the service (HTTP 400 Bad Request): "
                                "Query failed: UPLOAD is not supported")
    assert str(got["/vot500"]).endswith(": database unavailable")
    assert not isinstance(got["/vot500"], QueryError)
    assert got["/html"].service_message == "502 Bad Gateway" and "<" not in str(got["/html"])
    assert str(got["/text"]).endswith(": Service down for maintenance until 14:00")
    assert not (tmp_path / "x").exists()
