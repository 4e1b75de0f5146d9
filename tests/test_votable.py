"""Unit tests on recorded responses of the local mimic (no server needed)."""

from __future__ import annotations

import pytest

from sampbridge.csc.errors import QueryError, ServiceError
from sampbridge.csc.votable import check_result, summarize

from conftest import DATA

REC = DATA / "recorded"


@pytest.mark.parametrize("name, rows, ncols", [
    ("scs_v1.xml", 109, 4), ("scs_v2.xml", 109, 24), ("scs_v3.xml", 109, 80),
    ("siap.xml", 6, 27)])
def test_binary_votables_are_counted(name, rows, ncols):
    s = summarize(REC / name)
    assert (s.status, s.rows, len(s.columns)) == ("OK", rows, ncols)


def test_overflow_after_the_table_is_seen():
    s = summarize(REC / "tap_overflow.xml")
    assert s.overflow and s.rows == 3


@pytest.mark.parametrize("name, words", [
    ("scs_error.xml", "Required parameter 'SR' missing"),
    ("tap_error.xml", "column 'nope' could not be located"),
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
    ((REC / "scs_v2.xml").read_bytes()[:5000], "not a complete VOTable"),
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
