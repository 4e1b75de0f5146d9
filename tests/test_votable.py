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
