"""sampbridge.csc.cone on the three shapes of the local CSC (CXC, CXC pessimistic, standard).

The CXC shapes answer VOTable 1.2 TABLEDATA with booleans T/F and empty cells for nulls, and
exactly the documented columns per VERB; the standard shape (DaCHS) answers VOTable 1.4 BINARY
with a `_r` column of its own.  sampbridge must forward each answer as it came, count its rows
while it streams (no parse), and, where it reads the values, keep nulls as nulls.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import requests
from astropy.io.votable import parse_single_table

from sampbridge.csc import votable
from sampbridge.csc.cone import VERB_COLUMNS, verb_for
from sampbridge.csc.votable import read_table
from sampbridge.engine import Engine
from sampbridge.model import ConeRequest

from conftest import local_config
from helpers import SHAPES, Shape, shape

pytestmark = pytest.mark.server

RA0, DEC0 = 246.7925, -24.32027          # rho Oph: 109 sources within 3'
#: the VERB=2 columns as CXC documents them (csc-services.md), typed out here on purpose
DOCUMENTED_VERB2 = [
    "name", "ra", "dec", "err_ellipse_r0", "conf_flag", "sat_src_flag", "significance",
    "flux_aper_b", "flux_aper_lolim_b", "flux_aper_hilim_b",
    "flux_aper_w", "flux_aper_lolim_w", "flux_aper_hilim_w",
    "extent_flag", "hard_hm", "hard_hm_lolim", "hard_hm_hilim",
    "hard_ms", "hard_ms_lolim", "hard_ms_hilim",
    "var_intra_index_b", "var_inter_index_b", "var_intra_index_w", "var_inter_index_w"]


@pytest.fixture(params=SHAPES)
def shaped(request, vo_server) -> Shape:
    return shape(vo_server, request.param)


@pytest.fixture
def engine(vo_server, shaped, tmp_path):
    e = Engine(local_config(vo_server, tmp_path / "res", **shaped.settings(),
                            **{"cache.enabled": False}))
    yield e
    e.close()


def _fields(path) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [f.name for f in parse_single_table(str(path)).fields]


def _direct(url: str, ra: float, dec: float, sr: float, verb: int) -> bytes:
    params = {"RA": repr(ra), "DEC": repr(dec), "SR": repr(sr), "VERB": str(verb)}
    r = requests.get(url, params=params, timeout=(5, 60),
                     headers={"Accept-Encoding": "identity"})
    r.raise_for_status()
    return r.content


def test_verb_for_asks_for_the_columns_it_needs():
    assert verb_for(["name", "ra", "dec"], 1) == 1
    assert verb_for(["name", "ra", "dec"], 2) == 2            # never lowered
    assert verb_for(["hard_ms", "var_inter_index_w"], 1) == 2
    assert verb_for(["name", "err_ellipse_r1"], 2) == 3       # VERB=3 only at CXC
    assert verb_for(["err_ellipse_ang"], 1) == 3
    assert verb_for(["_r"], 2) == 3                           # no `_r` below VERB=3 (nor at it)
    assert list(VERB_COLUMNS[2]) == DOCUMENTED_VERB2


@pytest.mark.parametrize("verb", [1, 2, 3])
@pytest.mark.parametrize("name", ["cxc", "pessimistic"])     # DaCHS has columns of its own
def test_cxc_shapes_give_exactly_the_documented_columns(vo_server, tmp_path, name, verb):
    e = Engine(local_config(vo_server, tmp_path / "res", **shape(vo_server, name).settings()))
    try:
        res = e.run_cone(ConeRequest(RA0, DEC0, 0.02, verb))
    finally:
        e.close()
    got = _fields(res.path)
    assert "_r" not in got
    if verb < 3:
        assert got == list(VERB_COLUMNS[verb]) == DOCUMENTED_VERB2[:len(got)]
    else:
        assert {"err_ellipse_r1", "err_ellipse_ang"} <= set(got)
        assert set(DOCUMENTED_VERB2) < set(got)


def test_the_file_is_the_service_answer_unchanged_with_rows_counted_as_it_streams(
        engine, shaped, monkeypatch):
    """The cone result is the body the service sent, byte for byte; its rows are counted by
    the stream scan (TABLEDATA) or by decoding one column (BINARY), never by a second parse
    of a TABLEDATA body."""
    body = _direct(shaped.cone, RA0, DEC0, 0.05, 2)
    tabledata = b"<TABLEDATA>" in body[:1 << 16]
    assert tabledata == (shaped.name != "standard")
    if tabledata:
        def no_parse(*_a, **_k):
            raise AssertionError("a TABLEDATA cone result was parsed a second time")
        monkeypatch.setattr(votable.ET, "iterparse", no_parse)
    res = engine.run_cone(ConeRequest(RA0, DEC0, 0.05, 2))
    assert _same_answer(res.path.read_bytes(), body)
    assert res.rows == 109 == len(read_table(body))


def _same_answer(a: bytes, b: bytes) -> bool:
    """Byte for byte, but for the TABLE name that DaCHS draws at random for every answer."""
    def norm(x: bytes) -> bytes:
        return re.sub(rb'<TABLE name="[a-z]+">', b"<TABLE>", x, count=1)
    return norm(a) == norm(b)


def test_nulls_stay_nulls_where_the_cone_is_read(vo_server, tmp_path):
    """CXC's VOTable 1.2 writes a null integer as an empty cell, which astropy reads as 0 in a
    1.2 document: sampbridge reads it as null, the value the standard shape gives."""
    std = read_table(_direct(shape(vo_server, "standard").cone, RA0, DEC0, 0.05, 3))
    col = "var_intra_index_w"
    assert np.ma.count_masked(std[col]) > 0           # the field has null integers to get wrong
    for name in ("cxc", "pessimistic"):
        body = _direct(shape(vo_server, name).cone, RA0, DEC0, 0.05, 2)
        assert b'version="1.2"' in body[:400] and b"<TD/>" in body
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            naive = parse_single_table(str(_save(tmp_path / f"{name}.vot", body))).to_table()
        assert np.ma.count_masked(naive[col]) == 0     # what a plain astropy read makes of it
        got = read_table(body)
        by_name = {str(n): i for i, n in enumerate(std["name"])}
        order = [by_name[str(n)] for n in got["name"]]
        for c in DOCUMENTED_VERB2:
            a, b = got[c], std[c][order]
            assert (np.ma.getmaskarray(a) == np.ma.getmaskarray(b)).all(), c
            keep = ~np.ma.getmaskarray(b)
            if a.dtype.kind in "fc":
                assert np.allclose(np.asarray(a)[keep], np.asarray(b)[keep], rtol=1e-6), c
            else:
                assert (np.asarray(a)[keep] == np.asarray(b)[keep]).all(), c


def _save(path, body: bytes):
    path.write_bytes(body)
    return path
