"""Unit tests on recorded responses of the local mimic (no server needed)."""

from __future__ import annotations

import pytest

from sampbridge.csc.errors import QueryError, ServiceError
from sampbridge.csc.votable import check_result, summarize

from conftest import DATA

REC = DATA / "recorded"


@pytest.mark.parametrize("name, rows, ncols", [
    ("cxc/scs_v1.xml", 109, 3), ("cxc/scs_v2.xml", 109, 24), ("cxc/scs_v3.xml", 109, 79),
    ("cxc/siap.xml", 12, 27),
    ("standard/scs_v1.xml", 109, 4), ("standard/scs_v2.xml", 109, 24),
    ("standard/scs_v3.xml", 109, 80), ("standard/siap.xml", 6, 27)])
def test_recorded_votables_are_counted(name, rows, ncols):
    """Both shapes: the CXC front's 1.2 TABLEDATA and DaCHS's 1.4 BINARY (README.md here)."""
    s = summarize(REC / name)
    assert (s.status, s.rows, len(s.columns)) == ("OK", rows, ncols)


@pytest.mark.parametrize("shape", ["cxc", "standard"])
def test_overflow_after_the_table_is_seen(shape):
    s = summarize(REC / shape / "tap_overflow.xml")
    assert s.overflow and s.rows == 3


@pytest.mark.parametrize("name, words", [
    ("cxc/scs_error.xml", "missing required parameter(s) SR"),
    ("standard/scs_error.xml", "Required parameter 'SR' missing"),
    ("cxc/tap_error.xml", "column 'nope' could not be located"),
    ("standard/tap_error.xml", "column 'nope' could not be located"),
])
def test_service_errors_carry_the_service_message(name, words):
    with pytest.raises(QueryError) as ei:
        check_result(REC / name, "http://127.0.0.1/x", "cone search")
    assert words in str(ei.value)
    assert ei.value.url == "http://127.0.0.1/x"
    assert ei.value.service_message and words in ei.value.service_message


@pytest.mark.parametrize("body, words", [
    (b"<html><body>Service down</body></html>", "not a VOTable"),
    (b"", "empty body"),
    ((REC / "cxc" / "scs_v2.xml").read_bytes()[:5000], "not a complete VOTable"),
    (b"SIMPLE  = T", "not a complete VOTable"),
])
def test_bodies_that_are_not_votables(tmp_path, body, words):
    p = tmp_path / "r.vot"
    p.write_bytes(body)
    with pytest.raises(ServiceError, match=words):
        check_result(p, "http://127.0.0.1/x")


def _big_votable(rows: int, prefix: str = "", tail: str = "") -> bytes:
    p = f"{prefix}:" if prefix else ""
    ns = f' xmlns:{prefix}="http://www.ivoa.net/xml/VOTable/v1.3"' if prefix else ""
    body = "".join(f"<{p}TR><{p}TD>src &lt;TR {i}</{p}TD></{p}TR>" for i in range(rows))
    return (f'<?xml version="1.0"?><{p}VOTABLE{ns}><{p}RESOURCE>'
            f'<{p}INFO name="QUERY_STATUS" value="OK"/><{p}TABLE>'
            f'<{p}FIELD name="name" datatype="char" arraysize="*"/><{p}DATA><{p}TABLEDATA>'
            f"{body}</{p}TABLEDATA></{p}DATA></{p}TABLE>{tail}</{p}RESOURCE></{p}VOTABLE>\n"
            ).encode()


@pytest.mark.parametrize("prefix", ["", "vot"])
def test_large_tabledata_is_scanned_not_parsed(tmp_path, prefix):
    from sampbridge.csc import votable

    p = tmp_path / "big.vot"
    overflow = f'<{prefix + ":" if prefix else ""}INFO name="QUERY_STATUS" value="OVERFLOW"/>'
    p.write_bytes(_big_votable(60000, prefix, overflow))
    assert p.stat().st_size > votable.FAST_SCAN_BYTES
    fast = summarize(p)
    assert (fast.rows, fast.status, fast.columns) == (60000, "OVERFLOW", ["name"])
    votable.FAST_SCAN_BYTES, saved = 1 << 40, votable.FAST_SCAN_BYTES
    try:
        slow = summarize(p)
    finally:
        votable.FAST_SCAN_BYTES = saved
    assert (slow.rows, slow.status, slow.columns) == (fast.rows, fast.status, fast.columns)


def test_large_truncated_votable_is_an_error(tmp_path):
    p = tmp_path / "cut.vot"
    p.write_bytes(_big_votable(60000)[:-5000])
    with pytest.raises(ServiceError, match="not a complete VOTable"):
        check_result(p)


@pytest.mark.parametrize("prefix", ["", "vot"])
@pytest.mark.parametrize("chunk", [1, 7, 4096, 65536, 1 << 22])
def test_stream_scan_counts_rows_whatever_the_chunks(tmp_path, prefix, chunk):
    """The rows counted while the bytes stream by equal a full parse, for any chunking."""
    from sampbridge.csc.votable import StreamScan

    overflow = f'<{prefix + ":" if prefix else ""}INFO name="QUERY_STATUS" value="OVERFLOW"/>'
    n = 2000 if chunk < 100 else 60000
    body = _big_votable(n, prefix, overflow)
    scan = StreamScan()
    for i in range(0, len(body), chunk):
        scan.feed(body[i:i + chunk])
    got = scan.summary()
    assert got is not None and scan.size == len(body)
    assert (got.rows, got.status, got.columns) == (n, "OVERFLOW", ["name"])
    p = tmp_path / "big.vot"
    p.write_bytes(body)
    parsed = summarize(p if len(body) > 1 << 20 else body)
    assert (parsed.rows, parsed.status) == (got.rows, got.status)


def test_stream_scan_used_by_check_result_skips_second_read(tmp_path, monkeypatch):
    """With a scan that saw the whole file, check_result does not read the file again."""
    from sampbridge.csc import votable

    body = _big_votable(60000)
    p = tmp_path / "big.vot"
    p.write_bytes(body)
    scan = votable.StreamScan()
    for i in range(0, len(body), 65536):
        scan.feed(body[i:i + 65536])
    monkeypatch.setattr(votable, "_fast_summary",
                        lambda path: pytest.fail("the file was read a second time"))
    assert check_result(p, scan=scan).rows == 60000
    short = votable.StreamScan()
    short.feed(body[:-10])          # a scan that did not see it all is not trusted
    monkeypatch.undo()
    assert check_result(p, scan=short).rows == 60000


def test_stream_scan_of_truncated_and_binary_bodies():
    from sampbridge.csc.votable import StreamScan

    scan = StreamScan()
    scan.feed(_big_votable(60000)[:-5000])
    with pytest.raises(ServiceError, match="not a complete VOTable"):
        scan.summary()
    binary = StreamScan()
    binary.feed(b'<?xml version="1.0"?><VOTABLE><RESOURCE><TABLE><FIELD name="a" '
                b'datatype="int"/><DATA><BINARY2><STREAM encoding="base64">AAAA</STREAM>'
                b"</BINARY2></DATA></TABLE></RESOURCE></VOTABLE>")
    assert binary.summary() is None      # left to the parser


def _v12(version: str = "1.2", root: str = "VOTABLE", extra: str = "") -> bytes:
    """A CXC-style VOTable: 1.2 namespace, TABLEDATA, T/F booleans, empty cells for nulls."""
    ns = "" if ":" in root else ' xmlns="http://www.ivoa.net/xml/VOTable/v1.2"'
    p = root.split(":")[0] + ":" if ":" in root else ""
    xmlns = f' xmlns:{p[:-1]}="http://www.ivoa.net/xml/VOTable/v1.2"' if p else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} version="{version}"{ns}{xmlns}>'
            f'<{p}RESOURCE type="results"><{p}INFO name="QUERY_STATUS" value="OK"/>{extra}'
            f'<{p}TABLE><{p}FIELD name="name" datatype="char" arraysize="*"/>'
            f'<{p}FIELD name="n" datatype="short"/><{p}FIELD name="flag" datatype="boolean"/>'
            f'<{p}FIELD name="x" datatype="double"/><{p}DATA><{p}TABLEDATA>'
            f"<{p}TR><{p}TD>a</{p}TD><{p}TD>2</{p}TD><{p}TD>T</{p}TD><{p}TD>1.5</{p}TD></{p}TR>"
            f"<{p}TR><{p}TD>b</{p}TD><{p}TD/><{p}TD>F</{p}TD><{p}TD/></{p}TR>"
            f"<{p}TR><{p}TD>c</{p}TD><{p}TD></{p}TD><{p}TD/><{p}TD>-3</{p}TD></{p}TR>"
            f"</{p}TABLEDATA></{p}DATA></{p}TABLE></{p}RESOURCE></{root}>\n").encode()


@pytest.mark.parametrize("root", ["VOTABLE", "vot:VOTABLE"])
def test_empty_integer_cells_of_a_1_2_table_are_read_as_nulls(root):
    import io
    import warnings

    import numpy as np
    from astropy.io.votable import parse_single_table

    from sampbridge.csc.votable import nulls_kept, read_table

    body = _v12(root=root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive = parse_single_table(io.BytesIO(body)).to_table()
    assert list(naive["n"]) == [2, 0, 0]           # astropy 8 on a 1.2 document: 0, not null
    t = read_table(body)
    assert list(np.ma.getmaskarray(t["n"])) == [False, True, True] and t["n"][0] == 2
    assert list(np.ma.getmaskarray(t["x"])) == [False, True, False]
    assert [bool(v) for v in t["flag"][:2]] == [True, False]
    assert [str(v) for v in t["name"]] == ["a", "b", "c"]
    fixed = nulls_kept(body)
    assert b'version="1.3"' in fixed and b"VOTable/v1.2" in fixed      # namespace kept
    assert len(fixed) == len(body) and fixed.replace(b'"1.3"', b'"1.2"') == body


@pytest.mark.parametrize("version", ["1.3", "1.4"])
def test_nulls_kept_leaves_newer_documents_alone(version):
    from sampbridge.csc.votable import nulls_kept

    body = _v12(version)
    assert nulls_kept(body) == body
    late = _v12("1.2", extra="<INFO name='x' value='version=\"1.1\"'/>")
    assert nulls_kept(late).count(b'"1.3"') == 1         # the root's attribute only


def test_error_text_reads_the_services_words():
    from sampbridge.csc.votable import error_text

    cxc = (b'<?xml version="1.0" encoding="UTF-8"?>\n<VOTABLE version="1.2" '
           b'xmlns="http://www.ivoa.net/xml/VOTable/v1.2"><RESOURCE type="results">'
           b'<INFO name="QUERY_STATUS" value="ERROR">Query failed: dbo.cone_distance(ra, dec) '
           b"&lt;= r is\n   wrong</INFO></RESOURCE></VOTABLE>")
    assert error_text(cxc) == "Query failed: dbo.cone_distance(ra, dec) <= r is wrong"
    assert error_text((REC / "standard" / "tap_error.xml").read_bytes()) == (
        "Field query: No such field known: column 'nope' could not be located in table metadata")
    assert error_text(b'<VOTABLE><INFO name="ERROR" value="bad &amp; worse"/></VOTABLE>') == \
        "bad & worse"
    assert error_text(b'<VOTABLE><RESOURCE><INFO name="QUERY_STATUS" value="ERROR"/>'
                      b"</RESOURCE></VOTABLE>") == "QUERY_STATUS=ERROR"
    assert error_text(_v12()) is None
    assert error_text(b"<html><title>Bad Request</title></html>") is None
    assert error_text(b"") is None


def test_overflowed():
    from sampbridge.csc.votable import overflowed

    assert overflowed((REC / "cxc" / "tap_overflow.xml").read_bytes())
    assert not overflowed(_v12())


def test_a_small_tabledata_result_is_summarized_from_its_scan(tmp_path, monkeypatch):
    """Cone answers are small: with the scan that watched them stream, no parse at all."""
    from sampbridge.csc import votable

    body = _v12()
    p = tmp_path / "cone.vot"
    p.write_bytes(body)
    scan = votable.StreamScan()
    for i in range(0, len(body), 50):
        scan.feed(body[i:i + 50])
    monkeypatch.setattr(votable.ET, "iterparse",
                        lambda *a, **k: pytest.fail("a streamed TABLEDATA body was parsed"))
    s = check_result(p, scan=scan)
    assert (s.rows, s.status, s.columns) == (3, "OK", ["name", "n", "flag", "x"])
