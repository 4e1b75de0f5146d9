"""Query files into requests: each kind, and each refusal in one sentence with its place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sampbridge.config import defaults
from sampbridge.model import ConeRequest, MatchRequest, RequestError, SiapRequest, TapRequest
from sampbridge.queryfiles import (
    QueryFileError,
    is_candidate,
    parse_query_file,
    query_bytes,
)

CFG = defaults()


def parse(folder: Path, name: str, text: str | bytes) -> list:
    path = folder / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return parse_query_file(path, CFG)


def refused(folder: Path, name: str, text: str | bytes) -> str:
    with pytest.raises(QueryFileError) as err:
        parse(folder, name, text)
    return str(err.value)


# -- each kind ---------------------------------------------------------------------------------
def test_a_cone_takes_the_defaults_it_is_not_given(tmp_path):
    (fr,) = parse(tmp_path, "c.yaml", "cone: {ra: 246.7925, dec: -24.32027}\n")
    assert fr.kind == "cone" and fr.send_to is None and fr.name is None
    assert fr.request == ConeRequest(246.7925, -24.32027, CFG["cone.radius"], CFG["cone.verb"])


def test_a_siap_request_reads_sexagesimal(tmp_path):
    (fr,) = parse(tmp_path, "s.yml", "siap: {ra: '16:27:10.2', dec: -24.3, size: 0.1}\n")
    assert fr.kind == "siap" and isinstance(fr.request, SiapRequest)
    assert fr.request.ra == pytest.approx(246.7925) and fr.request.size == 0.1


def test_a_tap_request_with_name_and_send_to(tmp_path):
    (fr,) = parse(tmp_path, "t.yaml", "tap: {adql: 'SELECT 1', maxrec: 5}\nname: five\n"
                                      "send_to: topcat, ds9\n")
    assert fr.request == TapRequest("SELECT 1", "five", 5)
    assert fr.name == "five" and fr.send_to == ["topcat", "ds9"]


def test_an_adql_file_with_its_options(tmp_path):
    (fr,) = parse(tmp_path, "q.adql", "-- name: ten\n-- maxrec: 10\n-- send_to: topcat\n"
                                      "SELECT TOP 10 * FROM t\n")
    assert fr.request == TapRequest("SELECT TOP 10 * FROM t", "ten", 10)
    assert fr.kind == "tap" and fr.send_to == ["topcat"] and fr.name == "ten"
    (plain,) = parse(tmp_path, "plain.sql", "-- just a note\nSELECT 1\n")
    assert plain.request.name == "plain" and plain.request.adql.endswith("SELECT 1")


def test_a_match_file_request_lies_in_its_folder(tmp_path):
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "t.csv").write_text("ra,dec\n1,2\n")
    (fr,) = parse(tmp_path, "m.yaml", "match: {table: tables/t.csv, radius: 3, mode: best}\n"
                                      "name: mine\n")
    req = fr.request
    assert isinstance(req, MatchRequest) and fr.kind == "match"
    assert req.table == tmp_path / "tables" / "t.csv" and req.root == tmp_path
    assert (req.name, req.radius, req.mode) == ("mine", 3.0, "best")
    (unnamed,) = parse(tmp_path, "n.yaml", "match: {table: tables/t.csv}\n")
    assert unnamed.request.name == "t" and unnamed.request.radius is None


def test_a_table_file_is_a_match_of_itself(tmp_path):
    (fr,) = parse(tmp_path, "list.csv", "ra,dec\n1,2\n")
    assert fr.kind == "match" and fr.name == "list"
    assert fr.request == MatchRequest(tmp_path / "list.csv", "list", root=tmp_path)


def test_a_list_gives_one_request_each_in_order(tmp_path):
    got = parse(tmp_path, "l.yaml", "- cone: {ra: 1, dec: 2}\n- siap: {ra: 1, dec: 2}\n"
                                    "- tap: {adql: 'SELECT 1'}\n  send_to: [topcat]\n")
    assert [fr.kind for fr in got] == ["cone", "siap", "tap"]
    assert got[2].send_to == ["topcat"] and got[0].send_to is None


# -- refusals, with their place ----------------------------------------------------------------
@pytest.mark.parametrize("name, text, expected", [
    ("b.yaml", "cone:\n  ra: 1\n  dec: 2\n  radius: -1\n",
     "b.yaml, line 2, column 3: cone: 'radius' must be greater than 0 and at most 1 degrees"),
    ("c.yaml", "cone: {ra: 1, dec: 2}\nbogus: 3\n",
     "c.yaml, line 2, column 1: unknown key 'bogus' (expected one of cone, siap, tap, match"),
    ("d.yaml", "- cone: {ra: 1, dec: 2}\n- siap: {ra: 1}\n",
     "d.yaml, line 2, column 9: siap: the position is incomplete: 'dec' missing"),
    ("e.yaml", "cone: {ra: 1, dec: [2\n",
     "e.yaml, line 2, column 1: not valid YAML: expected ',' or ']'"),
    ("g.yaml", "[]\n", "g.yaml, line 1, column 1: the list of requests is empty"),
    ("h.yaml", "cone: {ra: 1, dec: 2}\ntap: {adql: x}\n",
     "h.yaml, line 1, column 1: the request must have exactly one of cone, siap, tap, match "
     "(found cone, tap)"),
    ("i.yaml", "x: &a 1\ncone: {ra: *a, dec: 2}\n",
     "i.yaml, line 2, column 12: YAML aliases (*name) are not allowed in query files"),
    ("j.yaml", "match: {table: t.csv, radius: -5}\n",
     "j.yaml, line 1, column 8: match: 'radius' must be greater than 0 and at most 3600 arcsec"),
    ("m.yaml", "match: {table: t.csv, colour: red}\n",
     "m.yaml, line 1, column 8: match: unknown parameter for a match: 'colour'"),
    ("mm.yaml", "match: {table: t.csv, mode: [best]}\n",
     "mm.yaml, line 1, column 8: match: 'mode' must be best or all, not a list"),
    ("n.yaml", "cone: 5\n", "n.yaml, line 1, column 7: 'cone' must be a mapping of parameters"),
    ("o.yaml", "name: 3\ncone: {ra: 1, dec: 2}\n", "o.yaml, line 1, column 7: name must be text"),
    ("p.yaml", "send_to: []\ncone: {ra: 1, dec: 2}\n", "p.yaml, line 1: send_to is empty"),
    ("f.yaml", "", "f.yaml: the file is empty"),
    ("q.adql", "-- nme: x\nSELECT 1\n",
     "q.adql, line 1: unknown option 'nme' (known: name, maxrec, send_to)"),
    ("r.adql", "-- only a comment\n", "r.adql: the file holds no ADQL query"),
    ("s.adql", b"\xff\xfeSELECT", "s.adql: not UTF-8 text (byte 0)"),
    ("z.adql", b"SELECT \x00", "z.adql: binary data, not a text query"),
    ("t.sql", "-- maxrec: 0\nSELECT 1\n", "t.sql: 'maxrec' must be 1 or more, not '0'"),
    ("y.txt", "x", "y.txt: unknown kind of file (.txt)"),
])
def test_a_refusal_names_the_file_and_the_place(tmp_path, name, text, expected):
    (tmp_path / "t.csv").write_text("ra,dec\n1,2\n")
    message = refused(tmp_path, name, text)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_every_refusal_is_a_request_error(tmp_path):
    with pytest.raises(RequestError):
        parse(tmp_path, "x.yaml", "cone: {}\n")


@pytest.mark.parametrize("table, expected", [
    ("../t.csv", "goes up out of the folder with '..'"),
    ("/etc/hostname", "is outside the query folder"),
    ("nofile.csv", "cannot read the table file 'nofile.csv': it does not exist"),
])
def test_a_match_table_must_be_a_file_inside_the_folder(tmp_path, table, expected):
    inner = tmp_path / "q"
    inner.mkdir()
    (tmp_path / "t.csv").write_text("ra,dec\n1,2\n")
    message = refused(inner, "m.yaml", f"match: {{table: '{table}'}}\n")
    assert message.startswith("m.yaml, line 1, column 8: match: ") and expected in message


def test_a_link_to_a_table_outside_is_refused(tmp_path):
    inner = tmp_path / "q"
    inner.mkdir()
    (tmp_path / "t.csv").write_text("ra,dec\n1,2\n")
    os.symlink(tmp_path / "t.csv", inner / "link.csv")
    message = refused(inner, "m.yaml", "match: {table: link.csv}\n")
    assert message.startswith("m.yaml, line 1, column 8: match: "), message


# -- names and identity ------------------------------------------------------------------------
@pytest.mark.parametrize("name, ok", [
    ("q.adql", True), ("q.SQL", True), ("q.yaml", True), ("q.yml", True), ("t.vot", True),
    ("t.xml", True), ("t.fits", True), ("t.csv", True), ("q.txt", False), (".q.adql", False),
    ("q.adql~", False), ("q.adql.part", False), (".q.adql.swp", False), ("#q.adql#", False),
    ("4913", False), ("q.yaml.bak", False), ("q.tmp", False),
])
def test_is_candidate(name, ok):
    assert is_candidate(Path(name)) is ok


def test_query_bytes_is_the_content_or_the_refusal(tmp_path):
    path = tmp_path / "q.adql"
    path.write_text("SELECT 1\n")
    assert query_bytes(path, CFG) == b"SELECT 1\n"
    fifo = tmp_path / "p.adql"
    os.mkfifo(fifo)
    assert query_bytes(fifo, CFG).startswith(b"refused: ")
    with pytest.raises(FileNotFoundError):
        query_bytes(tmp_path / "gone.adql", CFG)
