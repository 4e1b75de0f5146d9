"""The CXC-shaped front (tests/vo_server/cxc_front.py) models each documented CXC difference.

The front runs as a subprocess on a free loopback port in front of the running DaCHS mimic
(127.0.0.1:18081 once setup.sh moves it there, else 127.0.0.1:18080); DaCHS is only read.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import selectors
import subprocess
import sys
import time
import urllib.request
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from astropy.io import fits
from astropy.io.votable import parse_single_table
from astropy.wcs import WCS

from sampbridge.csc.adql import cone_query
from sampbridge.csc.errors import QueryError
from sampbridge.csc.http import make_session
from sampbridge.csc.tap import TapCapabilities, TapClient

from conftest import need, wait_for

pytestmark = pytest.mark.server

FRONT_SCRIPT = Path(__file__).parent / "vo_server" / "cxc_front.py"
RA0, DEC0 = 246.7925, -24.32027          # rho Oph field centre (a bright source)
VERB2 = ["name", "ra", "dec", "err_ellipse_r0", "conf_flag", "sat_src_flag", "significance",
         "flux_aper_b", "flux_aper_lolim_b", "flux_aper_hilim_b",
         "flux_aper_w", "flux_aper_lolim_w", "flux_aper_hilim_w",
         "extent_flag", "hard_hm", "hard_hm_lolim", "hard_hm_hilim",
         "hard_ms", "hard_ms_lolim", "hard_ms_hilim",
         "var_intra_index_b", "var_inter_index_b", "var_intra_index_w", "var_inter_index_w"]
TIMEOUT = (5, 120)


@dataclass
class Front:
    base: str
    dachs: str
    proc: subprocess.Popen

    @property
    def tap(self) -> str:
        return f"{self.base}/csc21tap"


def _is_dachs(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/tap/availability", timeout=5) as r:
            return r.headers.get("Server", "").startswith("DaCHS")
    except Exception:
        return False


def _dachs_base() -> str | None:
    for base in (os.environ.get("SAMPBRIDGE_TEST_DACHS"), "http://127.0.0.1:18081",
                 "http://127.0.0.1:18080"):
        if base and _is_dachs(base):
            return base.rstrip("/")
    return None


def _public_url(dachs: str) -> str:
    """The base URL DaCHS writes into its answers ([web]serverURL): the installed front's once
    setup.sh has put DaCHS behind it, else DaCHS's own."""
    with urllib.request.urlopen(f"{dachs}/tap/capabilities", timeout=10) as r:
        text = r.read().decode()
    m = re.search(r"<accessURL[^>]*>(https?://[^/<]+)/", text)
    return m.group(1) if m else dachs


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise AssertionError(f"the front did not start: {buf!r}")
        if sel.select(left):
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                continue
            buf += chunk
    return buf.decode().splitlines()[0]


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    dachs = _dachs_base()
    need(dachs is not None, "no DaCHS mimic answers on 127.0.0.1:18081 or :18080",
         "sudo bash tests/vo_server/setup.sh")
    assert dachs is not None
    log = tmp_path_factory.mktemp("front") / "front.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, str(FRONT_SCRIPT), "--listen", "127.0.0.1:0",
                                 "--dachs", dachs, "--dachs-public-url", _public_url(dachs)],
                                stdout=subprocess.PIPE, stderr=err)
    try:
        line = _first_line(proc, 30)
        m = re.search(r"listening on (http://\S+)", line)
        assert m, line
        yield Front(m.group(1), dachs, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    s = requests.Session()
    yield s
    s.close()


def status_of(body: bytes) -> tuple[str, str]:
    m = re.search(rb'<INFO name="QUERY_STATUS" value="(\w+)"\s*(?:/>|>(.*?)</INFO>)', body,
                  re.S)
    assert m, body[:500]
    return m.group(1).decode(), (m.group(2) or b"").decode()


def table(body: bytes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return parse_single_table(io.BytesIO(body)).to_table()


def sync(http: requests.Session, url: str, query: str, **params: str) -> requests.Response:
    data = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query, **params}
    return http.post(f"{url}/sync", data=data, allow_redirects=False, timeout=TIMEOUT)


def sync_result(http: requests.Session, url: str, query: str, **params: str) -> bytes:
    r = sync(http, url, query, **params)
    assert r.status_code == 303, r.content[:400]
    got = http.get(r.headers["Location"], timeout=TIMEOUT)
    assert got.status_code == 200
    return got.content


def dachs_rows(front: Front, query: str) -> list[list[str]]:
    r = requests.post(f"{front.dachs}/tap/sync", timeout=TIMEOUT, data={
        "REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query, "RESPONSEFORMAT": "tsv"})
    assert r.status_code == 200 and not r.content.startswith(b"<"), r.content[:300]
    return [line.split("\t") for line in r.text.splitlines() if line]


def box_query(cols: str, r_arcmin: float, extra: str = "") -> str:
    return (f"SELECT {cols} FROM csc21.master_source WHERE dec BETWEEN {DEC0 - 0.1} AND "
            f"{DEC0 + 0.1} AND ra BETWEEN {RA0 - 0.12} AND {RA0 + 0.12} AND "
            f"dbo.cone_distance(ra, dec, {RA0}, {DEC0}) <= {r_arcmin}{extra}")


# ------------------------------------------------------------------------------------- TAP
def test_capabilities_list_no_geometry_no_upload_but_cone_distance(front: Front,
                                                                   http: requests.Session):
    r = http.get(f"{front.tap}/capabilities", timeout=TIMEOUT)
    assert r.status_code == 200
    text = r.text
    assert "features-adqlgeo" not in text and "uploadMethod" not in text
    assert "dbo.cone_distance(" in text
    assert f">{front.tap}<" in text and "/__system__/" not in text
    caps = TapClient(front.tap, make_session()).capabilities()
    assert caps == TapCapabilities(geometry=False, upload=False)
    # the standard shape is still there, through the same port
    assert TapClient(f"{front.base}/tap", make_session()).capabilities() == \
        TapCapabilities(geometry=True, upload=True)


@pytest.mark.parametrize("func, query", [
    ("CONTAINS", "SELECT name FROM csc21.master_source WHERE "
                 "1=CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 246.79, -24.32, 0.01))"),
    ("CONTAINS", "select name from csc21.master_source where "
                 "1=contains(point('ICRS', ra, dec), circle('ICRS', 246.79, -24.32, 0.01))"),
    ("CIRCLE", "SELECT TOP 1 CIRCLE('ICRS', ra, dec, 0.1) AS c FROM csc21.master_source"),
    ("POINT", "SELECT TOP 1 POINT('ICRS', ra, dec) AS p FROM csc21.master_source"),
    ("INTERSECTS", "SELECT name FROM csc21.master_source WHERE "
                   "1=INTERSECTS(CIRCLE('ICRS', ra, dec, 0.1), CIRCLE('ICRS', 1, 1, 1))"),
    ("BOX", "SELECT TOP 1 BOX('ICRS', ra, dec, 1, 1) AS b FROM csc21.master_source"),
    ("POLYGON", "SELECT TOP 1 POLYGON('ICRS', 1, 1, 2, 2, 3, 1) AS p FROM csc21.master_source"),
    ("DISTANCE", "SELECT TOP 1 DISTANCE(ra, dec, 246.79, -24.32) AS d "
                 "FROM csc21.master_source"),
])
def test_geometry_functions_are_refused(front: Front, http: requests.Session, func: str,
                                        query: str):
    r = sync(http, front.tap, query)
    assert r.status_code == 400 and "Location" not in r.headers
    assert b'<VOTABLE version="1.2"' in r.content
    status, message = status_of(r.content)
    assert status == "ERROR" and f"geometry function {func} is not supported" in message


def test_geometry_words_in_strings_and_names_are_no_calls(front: Front, http: requests.Session):
    body = sync_result(http, front.tap, "SELECT TOP 2 ra AS point_ra FROM csc21.master_source "
                       "WHERE name NOT LIKE 'CONTAINS(POINT(1, 2))' -- CIRCLE(\n ORDER BY 1")
    assert status_of(body)[0] == "OK"
    assert table(body).colnames == ["point_ra"] and len(table(body)) == 2


def test_cone_distance_is_evaluated_in_arcmin(front: Front, http: requests.Session):
    body = sync_result(http, front.tap, box_query(
        f"name, dbo.cone_distance(ra, dec, {RA0}, {DEC0}) AS d", 3.0))
    got = {str(r["name"]): float(r["d"]) for r in table(body)}
    want = {row[0]: float(row[1]) * 60.0 for row in dachs_rows(front, (
        f"SELECT name, DISTANCE(POINT('ICRS', ra, dec), POINT('ICRS', {RA0}, {DEC0})) AS d "
        f"FROM csc21.master_source WHERE "
        f"1=CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {RA0}, {DEC0}, {3.0 / 60}))"))}
    assert len(want) > 20 and set(got) == set(want)
    assert all(abs(got[n] - want[n]) < 1e-6 for n in want)
    assert max(got.values()) <= 3.0


def test_sampbridge_csc_dialect_equals_geometry_dialect(front: Front, tmp_path: Path):
    """The `csc` dialect (box + dbo.cone_distance) runs, sync and async, and finds what
    CONTAINS finds on plain DaCHS; the RA-wrap field too."""
    session = make_session()
    for ra, dec, r in ((RA0, DEC0, 0.05), (0.02, 1.5, 0.2)):
        csc = cone_query("csc21.master_source", ra, dec, r, "csc", columns=["name"])
        geo = cone_query("csc21.master_source", ra, dec, r, "geometry", columns=["name"])
        want = sorted(row[0] for row in dachs_rows(front, geo))
        client = TapClient(front.tap, session)
        for mode in ("sync", "async"):
            res = client.query_to_file(csc, tmp_path / f"{mode}-{ra}.vot", mode=mode)
            got = sorted(str(n) for n in table(res.path.read_bytes())["name"])
            assert got == want and len(want) > 5, (mode, ra)


def test_cone_distance_without_dbo_is_not_found(front: Front, http: requests.Session):
    r = sync(http, front.tap, box_query("name", 3.0).replace("dbo.cone_distance",
                                                             "cone_distance"))
    assert r.status_code == 400
    assert "function not found: cone_distance" in status_of(r.content)[1]


def test_pessimistic_shape_knows_no_cone_distance(front: Front, http: requests.Session):
    query = box_query("name", 3.0)
    plain_box = query.split(" AND dbo.cone_distance")[0]
    assert sync(http, front.tap, query).status_code == 303
    # the /pessimistic prefix: both shapes at once, nothing to flip
    r = sync(http, f"{front.base}/pessimistic/csc21tap", query)
    assert r.status_code == 400 and "function not found" in status_of(r.content)[1]
    assert sync(http, f"{front.base}/pessimistic/csc21tap", plain_box).status_code == 303
    # the runtime switch, flipped and restored
    assert http.get(f"{front.base}/_front/pessimistic", timeout=TIMEOUT).text.strip() == "off"
    try:
        assert http.post(f"{front.base}/_front/pessimistic", data="on",
                         timeout=TIMEOUT).text.strip() == "on"
        r = sync(http, front.tap, query)
        assert r.status_code == 400 and "function not found" in status_of(r.content)[1]
        assert sync(http, front.tap, plain_box).status_code == 303
    finally:
        http.post(f"{front.base}/_front/pessimistic", data="off", timeout=TIMEOUT)
    assert sync(http, front.tap, query).status_code == 303


def test_sync_answers_303_to_a_stored_result(front: Front, http: requests.Session):
    query = "SELECT TOP 3 name FROM csc21.master_source ORDER BY name"
    r = sync(http, front.tap, query)
    assert r.status_code == 303
    loc = r.headers["Location"]
    assert loc.startswith(f"{front.tap}/results/")
    first, again = http.get(loc, timeout=TIMEOUT), http.get(loc, timeout=TIMEOUT)
    assert first.status_code == again.status_code == 200 and first.content == again.content
    assert first.headers["Content-Type"].startswith("application/x-votable+xml")
    got = http.get(f"{front.tap}/sync", params={"LANG": "ADQL", "QUERY": query},
                   allow_redirects=False, timeout=TIMEOUT)
    assert got.status_code == 303
    assert http.get(f"{front.tap}/results/nosuchresult", timeout=TIMEOUT).status_code == 404
    assert [str(n) for n in table(first.content)["name"]] == \
        [row[0] for row in dachs_rows(front, query)]


def test_votable_format_is_tabledata_12_with_tf_and_empty_nulls(front: Front,
                                                                http: requests.Session):
    body = sync_result(http, front.tap,
                       "SELECT TOP 20 name, conf_flag, var_intra_index_w, flux_aper_w "
                       "FROM csc21.master_source WHERE flux_aper_w IS NULL ORDER BY name",
                       FORMAT="votable")
    assert b'<VOTABLE version="1.2" xmlns="http://www.ivoa.net/xml/VOTable/v1.2"' in body
    assert b"<TABLEDATA>" in body and b"<BINARY" not in body
    assert b"NaN" not in body and b"-9999" not in body
    rows = re.findall(rb"<TR>(.*?)</TR>", body)
    assert len(rows) == 20
    for row in rows:
        cells = re.findall(rb"<TD>(.*?)</TD>|<TD/>", row)
        assert len(cells) == 4
        assert cells[1] in (b"T", b"F") and cells[2] == b"" and cells[3] == b""
    assert table(body)["flux_aper_w"].mask.all()


def test_text_format_is_tsv_with_hash_lines(front: Front, http: requests.Session):
    query = "SELECT TOP 5 name, ra, dec, conf_flag FROM csc21.master_source ORDER BY name"
    for fmt in ("text", "TEXT"):
        r = http.get(sync(http, front.tap, query, FORMAT=fmt).headers["Location"],
                     timeout=TIMEOUT)
        assert r.headers["Content-Type"].startswith("text/plain")
        lines = r.text.splitlines()
        assert [ln.split("\t")[0] for ln in lines[:4]] == ["# name", "# ra", "# dec",
                                                           "# conf_flag"]
        assert lines[1].split("\t")[1] == "deg"
        assert lines[4] == "name\tra\tdec\tconf_flag"
        data = [ln.split("\t") for ln in lines[5:]]
        assert [d[0] for d in data] == [row[0] for row in dachs_rows(front, query)]
        assert all(len(d) == 4 and d[3] in ("TRUE", "FALSE") for d in data)


def test_upload_is_refused(front: Front, http: requests.Session):
    vot = (b'<?xml version="1.0"?><VOTABLE version="1.3" '
           b'xmlns="http://www.ivoa.net/xml/VOTable/v1.3"><RESOURCE><TABLE>'
           b'<FIELD name="ra" datatype="double"/><FIELD name="dec" datatype="double"/>'
           b"<DATA><TABLEDATA><TR><TD>246.79</TD><TD>-24.32</TD></TR></TABLEDATA></DATA>"
           b"</TABLE></RESOURCE></VOTABLE>")
    data = {"REQUEST": "doQuery", "LANG": "ADQL", "UPLOAD": "t1,param:t1",
            "QUERY": "SELECT * FROM TAP_UPLOAD.t1"}
    r = http.post(f"{front.tap}/sync", data=data, files={"t1": ("t1.xml", vot)},
                  allow_redirects=False, timeout=TIMEOUT)
    assert r.status_code == 400 and "UPLOAD is not supported" in status_of(r.content)[1]
    r = sync(http, front.tap, "SELECT * FROM TAP_UPLOAD.t1",
             UPLOAD=f"t1,{front.dachs}/getproduct/nothing.xml")
    assert r.status_code == 400 and "UPLOAD" in status_of(r.content)[1]
    # plain DaCHS behind the same port still takes the upload
    r = http.post(f"{front.base}/tap/sync", data=data, files={"t1": ("t1.xml", vot)},
                  timeout=TIMEOUT)
    assert r.status_code == 200 and status_of(r.content)[0] == "OK"


def _job_phase(http: requests.Session, job: str) -> str:
    return http.get(f"{job}/phase", timeout=TIMEOUT).text.strip()


def test_async_passes_through_with_front_urls(front: Front, http: requests.Session):
    query = box_query("name", 2.0)
    for fmt in ("votable", "text"):
        r = http.post(f"{front.tap}/async", data={"REQUEST": "doQuery", "LANG": "ADQL",
                                                  "QUERY": query, "FORMAT": fmt},
                      allow_redirects=False, timeout=TIMEOUT)
        assert r.status_code == 303
        job = r.headers["Location"]
        assert job.startswith(f"{front.tap}/async/")
        try:
            assert "PENDING" in http.get(job, timeout=TIMEOUT).text
            ran = http.post(f"{job}/phase", data={"PHASE": "RUN"}, allow_redirects=False,
                            timeout=TIMEOUT)
            assert ran.status_code == 303 and ran.headers["Location"] == job
            wait_for(lambda job=job: _job_phase(http, job) in ("COMPLETED", "ERROR"), 60,
                     interval=0.1, what="the async job")
            doc = http.get(job, timeout=TIMEOUT).text
            assert "COMPLETED" in doc and f'"{job}/results/result"' in doc
            assert "/__system__/" not in doc
            res = http.get(f"{job}/results/result", timeout=TIMEOUT).content
            if fmt == "text":
                got = [ln.split("\t")[0] for ln in res.decode().splitlines()
                       if not ln.startswith("#")][1:]
            else:
                assert b'<VOTABLE version="1.2"' in res and b"<TABLEDATA>" in res
                got = [str(n) for n in table(res)["name"]]
            assert sorted(got) == sorted(str(n) for n in table(
                sync_result(http, front.tap, query))["name"]) and got
        finally:
            gone = http.post(job, data={"ACTION": "DELETE"}, allow_redirects=False,
                             timeout=TIMEOUT)
        assert gone.status_code == 303 and gone.headers["Location"] == f"{front.tap}/async"


def test_async_refused_query_ends_in_error(front: Front, http: requests.Session,
                                           tmp_path: Path):
    geo = cone_query("csc21.master_source", RA0, DEC0, 0.05, "geometry", columns=["name"])
    r = http.post(f"{front.tap}/async", data={"LANG": "ADQL", "QUERY": geo},
                  allow_redirects=False, timeout=TIMEOUT)
    job = r.headers["Location"]
    assert r.status_code == 303 and job.startswith(f"{front.tap}/async/")
    assert _job_phase(http, job) == "PENDING"
    http.post(f"{job}/phase", data={"PHASE": "RUN"}, timeout=TIMEOUT)
    assert _job_phase(http, job) == "ERROR"
    assert "is not supported" in http.get(job, timeout=TIMEOUT).text
    assert status_of(http.get(f"{job}/error", timeout=TIMEOUT).content)[0] == "ERROR"
    assert http.delete(job, allow_redirects=False, timeout=TIMEOUT).status_code == 303
    # as sampbridge sees it: one readable error, the job deleted
    with pytest.raises(QueryError, match="geometry function CONTAINS is not supported"):
        TapClient(front.tap, make_session()).async_to_file(geo, tmp_path / "x.vot")


# ------------------------------------------------------------------------------ cone search
def cone(http: requests.Session, front: Front, ra: float = RA0, dec: float = DEC0,
         sr: float = 0.05, **extra: str) -> bytes:
    params = {"RA": str(ra), "DEC": str(dec), "SR": str(sr), **extra}
    r = http.get(f"{front.base}/csc21scs/coneSearch", params=params, timeout=TIMEOUT)
    assert r.status_code == 200
    return r.content


def test_cone_verb_gives_the_documented_columns(front: Front, http: requests.Session):
    all_cols = [row[0] for row in dachs_rows(
        front, "SELECT column_name FROM TAP_SCHEMA.columns "
               "WHERE table_name = 'csc21.master_source'")]
    assert table(cone(http, front, VERB="1")).colnames == ["name", "ra", "dec"]
    assert table(cone(http, front, VERB="2")).colnames == VERB2
    assert table(cone(http, front)).colnames == VERB2
    verb3 = table(cone(http, front, VERB="3")).colnames
    assert sorted(verb3) == sorted(all_cols) and "err_ellipse_r1" in verb3
    assert "_r" not in verb3 and "err_ellipse_ang" not in VERB2


def test_cone_is_votable_12_tabledata_with_tf_and_empty_nulls(front: Front,
                                                              http: requests.Session):
    body = cone(http, front)
    assert b'<VOTABLE version="1.2" xmlns="http://www.ivoa.net/xml/VOTable/v1.2"' in body
    assert b"<TABLEDATA>" in body and b"<BINARY" not in body and b"NaN" not in body
    assert b'ucd="ID_MAIN"' in body and b'ucd="POS_EQ_RA_MAIN"' in body
    rows = [re.findall(rb"<TD>(.*?)</TD>|<TD/>", tr) for tr in re.findall(rb"<TR>(.*?)</TR>",
                                                                         body)]
    flags = [VERB2.index(c) for c in ("conf_flag", "sat_src_flag", "extent_flag")]
    assert rows and all(r[i] in (b"T", b"F") for r in rows for i in flags)
    assert any(r[VERB2.index("flux_aper_w")] == b"" for r in rows)     # ACIS: no w band
    t = table(body)
    assert str(t["name"][0]) == "2CXO J162710.2-241912"              # nearest first
    native = requests.get(f"{front.dachs}/csc21/q/coneSearch/scs.xml", timeout=TIMEOUT,
                          params={"RA": RA0, "DEC": DEC0, "SR": 0.05,
                                  "RESPONSEFORMAT": "votabletd"}).content
    assert sorted(map(str, t["name"])) == sorted(map(str, table(native)["name"]))


@pytest.mark.parametrize("params, word", [
    ({"RA": "246.79", "DEC": "-24.32"}, "SR"),
    ({"ra": "246.79", "dec": "-24.32", "sr": "0.1"}, "RA"),
    ({"RA": "246.79", "DEC": "95", "SR": "0.1"}, "DEC"),
    ({"RA": "x", "DEC": "-24.32", "SR": "0.1"}, "decimal"),
])
def test_cone_errors_are_votable_errors(front: Front, http: requests.Session,
                                        params: dict[str, str], word: str):
    r = http.get(f"{front.base}/csc21scs/coneSearch", params=params, timeout=TIMEOUT)
    status, message = status_of(r.content)
    assert r.status_code == 200 and status == "ERROR" and word in message


# ------------------------------------------------------------------------------------- SIAP
RETRIEVE = re.compile(r"^(?P<base>http://[^/]+)/csccli/retrieveFile\?filetype=(?P<t>\w+)&"
                      r"filename=(?P<f>[\w.]+)&version=rel2\.1$")


def siap(http: requests.Session, front: Front, size: float = 0.2, fmt: str = "ALL"):
    r = http.get(f"{front.base}/csc21siap/queryImages", timeout=TIMEOUT,
                 params={"POS": f"{RA0},{DEC0}", "SIZE": size, "FORMAT": fmt})
    assert r.status_code == 200 and status_of(r.content)[0] == "OK"
    assert b'<VOTABLE version="1.2"' in r.content
    return table(r.content)


def test_siap_gives_fits_and_jpeg_rows_with_cxo_bands(front: Front, http: requests.Session):
    t = siap(http, front)
    mimes = [str(m) for m in t["mime"]]
    assert mimes.count("image/fits") == mimes.count("image/jpeg") >= 6
    assert {str(b) for b in t["band"]} == {"CXO_b", "CXO_h"}
    for row in t:
        m = RETRIEVE.match(str(row["accref"]))
        assert m and m.group("base") == front.base, row["accref"]
        assert m.group("f").endswith(".fits" if row["mime"] == "image/fits" else ".jpg")
    fits_only = siap(http, front, fmt="image/fits")
    assert {str(m) for m in fits_only["mime"]} == {"image/fits"}
    assert len(fits_only) == mimes.count("image/fits")
    assert {str(m) for m in siap(http, front, fmt="image/jpeg")["mime"]} == {"image/jpeg"}


def test_siap_small_size_finds_nothing(front: Front, http: requests.Session):
    tiny = siap(http, front, size=0.01)
    assert len(tiny) == 0 and "accref" in tiny.colnames
    assert len(siap(http, front, size=0.05)) > 0


def _gunzip_size(resp: requests.Response) -> tuple[int, bytes]:
    dec = zlib.decompressobj(31)
    total, head = 0, b""
    for chunk in resp.iter_content(1 << 20):
        out = dec.decompress(chunk)
        head = head or out[:80]
        total += len(out)
    total += len(dec.flush())
    assert dec.eof
    return total, head


def test_retrieve_serves_gzipped_fits_and_jpeg(front: Front, http: requests.Session,
                                               tmp_path: Path):
    t = siap(http, front)
    full = 0
    for row in t:
        url, kind = str(row["accref"]), str(row["mime"])
        with http.get(url, stream=True, timeout=TIMEOUT) as r:
            assert r.status_code == 200 and "Content-Encoding" not in r.headers
            assert int(r.headers["Content-Length"]) == int(row["accsize"])
            if kind == "image/jpeg":
                assert r.headers["Content-Type"] == "image/jpeg"
                body = r.content
                assert body[:2] == b"\xff\xd8" and body[-2:] == b"\xff\xd9"
                continue
            assert r.raw.read(2, decode_content=False) == b"\x1f\x8b"
        with http.get(url, stream=True, timeout=TIMEOUT) as r:
            size, head = _gunzip_size(r)
        assert head.startswith(b"SIMPLE  =") and size % 2880 == 0
        if size > 1_000_000:
            assert 50e6 <= size <= 90e6, (url, size)
            full += 1
    assert full >= 2
    small = next(str(r["accref"]) for r in t
                 if r["mime"] == "image/fits" and "1626504" in str(r["accref"]))
    path = tmp_path / "small.fits.gz"
    path.write_bytes(http.get(small, timeout=TIMEOUT).content)
    with fits.open(path) as hdul:
        w = WCS(hdul[0].header).celestial
        assert w.has_celestial and hdul[0].data.shape == (200, 200)
    native = requests.get(f"{front.dachs}/getproduct/csc21/data/images/"
                          "acisfJ1626504m241612_001_b.fits", timeout=TIMEOUT).content
    assert gzip.decompress(path.read_bytes()) == native


def test_jpeg_decodes(front: Front, http: requests.Session):
    url = next(str(r["accref"]) for r in siap(http, front, fmt="image/jpeg"))
    body = http.get(url, timeout=TIMEOUT).content
    sof = body.index(b"\xff\xc0")
    height, width = int.from_bytes(body[sof + 5:sof + 7], "big"), \
        int.from_bytes(body[sof + 7:sof + 9], "big")
    assert height > 100 and width > 100
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(io.BytesIO(body)) as im:
        im.load()
        assert im.size == (width, height)


def test_retrieve_refuses_unknown_files(front: Front, http: requests.Session):
    base = f"{front.base}/csccli/retrieveFile"
    good = "acisfJ1626504m241612_001N021_b_img3.fits"
    cases = [({"filetype": "stkecorrimg", "filename": "nosuch_001N021_b_img3.fits"}, 404),
             ({"filetype": "stkecorrimg", "filename": "../etc/passwd"}, 404),
             ({"filetype": "stkecorrimg", "filename": good, "version": "rel2.0"}, 404),
             ({"filetype": "stkecorrimg_jpg", "filename": good, "version": "rel2.1"}, 400)]
    for params, code in cases:
        assert http.get(base, params=params, timeout=TIMEOUT).status_code == code, params


# ------------------------------------------------------------------------------- pass-through
def test_plain_dachs_passes_through_unchanged(front: Front, http: requests.Session):
    geo = cone_query("csc21.master_source", RA0, DEC0, 0.05, "geometry", columns=["name"])
    r = http.post(f"{front.base}/tap/sync", timeout=TIMEOUT,
                  data={"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": geo})
    assert r.status_code == 200 and r.headers["Server"].startswith("DaCHS")
    assert b'version="1.4"' in r.content
    assert sorted(map(str, table(r.content)["name"])) == sorted(
        row[0] for row in dachs_rows(front, geo))
    assert "features-adqlgeo" in http.get(f"{front.base}/tap/capabilities",
                                          timeout=TIMEOUT).text
    native = http.get(f"{front.base}/csc21/q/coneSearch/scs.xml", timeout=TIMEOUT,
                      params={"RA": RA0, "DEC": DEC0, "SR": 0.01, "VERB": 1})
    assert native.status_code == 200 and b"<BINARY" in native.content
    product = "/getproduct/csc21/data/images/acisfJ1627321m242312_001_h.fits"
    via = http.get(f"{front.base}{product}", timeout=TIMEOUT)
    assert via.status_code == 200
    assert via.content == requests.get(f"{front.dachs}{product}", timeout=TIMEOUT).content


def test_one_kept_alive_connection_serves_requests_in_step(front: Front):
    """Bodies are always consumed, so the next request on the same connection is read whole."""
    u = urlsplit(front.base)
    conn = HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        for path, body in (("/csccli/retrieveFile?filename=x", b"junk=1&more=2"),
                           ("/csc21scs/coneSearch", b"RA=246.7925&DEC=-24.32027&SR=0.01"),
                           ("/_front/health", None)):
            conn.request("POST" if body else "GET", path, body=body, headers={
                "Content-Type": "application/x-www-form-urlencoded"})
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status in (200, 404), (path, resp.status)
        assert data == b"ok\n"
    finally:
        conn.close()
