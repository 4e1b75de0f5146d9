"""Input tables without a server: URL spellings, position columns, caches, cone planning."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from sampbridge.csc.http import make_session
from sampbridge.match import Matches, best_only, plan_cones, sep_arcsec
from sampbridge.tables import (
    KnownTable,
    KnownTables,
    TableError,
    fetch_table,
    find_position_columns,
    positions,
    read_table,
    url_to_path,
)

from faulty_server import FaultyServer


@pytest.mark.parametrize("url", ["file:/x/y.vot", "file:///x/y.vot", "file://localhost/x/y.vot",
                                 "file://localhost//x/y.vot"])
def test_file_url_spellings(url):
    assert str(url_to_path(url)) == "/x/y.vot"


def test_other_hosts_and_schemes_are_refused(tmp_path):
    s = make_session(1, 1)
    with pytest.raises(TableError, match="names another host"):
        fetch_table("file://example.org/x.vot", tmp_path, s, max_bytes=10)
    with pytest.raises(TableError, match="only file:, and http"):
        fetch_table("ftp://127.0.0.1/x.vot", tmp_path, s, max_bytes=10)
    with pytest.raises(TableError, match="refusing to fetch a table from 10.1.2.3"):
        fetch_table("http://10.1.2.3/x.vot", tmp_path, s, max_bytes=10)
    with pytest.raises(TableError, match="cannot read the table file"):
        fetch_table(f"file://{tmp_path}/missing.vot", tmp_path, s, max_bytes=10)
    big = tmp_path / "big.vot"
    big.write_bytes(b"x" * 100)
    with pytest.raises(TableError, match="over the cap of 10 bytes"):
        fetch_table(big.as_uri(), tmp_path, s, max_bytes=10)


def test_an_empty_table_body_is_fetched_again(tmp_path):
    """A peer's HTTP server that answers 200 with no body once: the second try gets it."""
    with FaultyServer() as server:
        s = make_session(2, 2)
        got = fetch_table(server.url("/empty-then-ok.vot"), tmp_path, s, max_bytes=1 << 20)
        assert got.stat().st_size > 1000 and len(read_table(got, 1000)) == 109
        assert server.hits["/empty-then-ok.vot"] == 2
        with pytest.raises(TableError, match="gave an empty body, 3 times"):
            fetch_table(server.url("/empty.vot"), tmp_path, s, max_bytes=1 << 20)
        assert server.hits["/empty.vot"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [got.name]   # no empty leftovers


def test_columns_by_ucd_before_names():
    t = Table({"ra": [1.0], "dec": [2.0], "RA_main": [3.0], "DE_main": [4.0]})
    t["RA_main"].meta["ucd"] = "pos.eq.ra;meta.main"
    t["DE_main"].meta["ucd"] = "pos.eq.dec;meta.main"
    assert find_position_columns(t) == ("RA_main", "DE_main")
    t2 = Table({"x": [1.0], "RAJ2000": [3.0], "_DEJ2000": [4.0]})
    assert find_position_columns(t2) == ("RAJ2000", "_DEJ2000")


def test_no_position_columns_names_what_was_looked_for():
    with pytest.raises(TableError) as ei:
        find_position_columns(Table({"flux": [1.0], "mag": [2.0]}))
    text = str(ei.value)
    assert "pos.eq.ra;meta.main" in text and "RAJ2000".lower() in text.lower()
    assert "flux, mag" in text


def test_positions_sexagesimal_units_and_bad_values():
    t = Table({"RA": ["16:27:10.2", "16h27m10.2s", "246.7925", "", "nonsense", "1.0"],
               "DEC": ["-24:19:12", "-24d19m12s", "-24.32", "0", "0", "95"]})
    p = positions(t)
    assert p.valid.tolist() == [True, True, True, False, False, False]
    assert np.allclose(p.ra[:3], 246.7925) and np.allclose(p.dec[:3], [-24.32, -24.32, -24.32])
    t2 = Table({"ra": [np.radians(246.7925)], "dec": [np.radians(-24.32)]})
    t2["ra"].unit = t2["dec"].unit = "rad"
    assert np.allclose(positions(t2).ra, 246.7925)
    t3 = Table({"ra": [np.nan, 10.0], "dec": [1.0, np.inf]})
    assert not positions(t3).valid.any()


@pytest.mark.parametrize("body, words", [(b"", "not a readable table|neither"),
                                         (b"hello world\x00\x01", "not a readable table|neither"),
                                         (b"<VOTABLE><RESOURCE>", "not a readable table")])
def test_unreadable_tables(tmp_path, body, words):
    p = tmp_path / "t.vot"
    p.write_bytes(body)
    with pytest.raises(TableError, match=words):
        read_table(p, 100)


def test_empty_and_too_long_tables(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("ra,dec\n")
    with pytest.raises(TableError, match="empty"):
        read_table(p, 100)
    p.write_text("ra,dec\n" + "1,2\n" * 11)
    with pytest.raises(TableError, match="over the limit of 10"):
        read_table(p, 10)


def test_known_tables_lru():
    k = KnownTables(size=2)
    for i in range(3):
        k.put(KnownTable(f"id{i}", f"file:///t{i}", None, f"t{i}"))  # type: ignore[arg-type]
    assert len(k) == 2
    assert k.get("id0", None) is None and k.get("id0", "file:///t0") is None
    assert k.get("nope", "file:///t1").table_id == "id1"
    k.put(KnownTable("id3", "file:///t3", None, "t3"))  # type: ignore[arg-type]
    assert k.get("id2", None) is None and k.get("id1", None) is not None


def test_plan_cones_covers_every_match():
    rng = np.random.default_rng(3)
    ra = np.concatenate([rng.normal(246.79, 0.05, 200), rng.normal(0.01, 0.05, 100) % 360,
                         rng.uniform(0, 360, 20)])
    dec = np.concatenate([rng.normal(-24.3, 0.05, 200), rng.normal(1.5, 0.05, 100),
                          rng.uniform(89.5, 90, 20)])
    radius = 3 / 3600
    plan = plan_cones(ra, dec, np.arange(len(ra)), radius, 0.1)
    assert len(plan) < len(ra) / 4
    members = np.concatenate([m for *_, m in plan])
    assert sorted(members.tolist()) == list(range(len(ra)))
    for rc, dc, sr, m in plan:      # every member's match circle lies inside its cone
        assert (sep_arcsec(ra[m], dec[m], rc, dc) / 3600 + radius <= sr * (1 + 1e-6)).all()


def test_best_only_keeps_the_nearest():
    m = Matches(np.array([0, 0, 1, 2, 2]), Table({"name": list("abcde")}),
                np.array([2.0, 1.0, 0.5, 0.1, 0.3]), "cone")
    b = best_only(m)
    assert b.idx.tolist() == [0, 1, 2] and list(b.csc["name"]) == ["b", "c", "d"]
