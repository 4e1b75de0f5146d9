"""The build's TABLEDATA fast path reads what astropy reads, and declines what it cannot read."""

from __future__ import annotations

import numpy as np
import pytest

from sampbridge.csc import http
from sampbridge.csc.tap import TapClient
from sampbridge.mirror.slices import _astropy_columns
from sampbridge.mirror.tabledata import fast_columns

HEAD = (b'<?xml version="1.0"?><VOTABLE version="1.2"><RESOURCE><TABLE>'
        b'<FIELD name="s" datatype="char" arraysize="*"/><FIELD name="f" datatype="float"/>'
        b'<FIELD name="b" datatype="boolean"/><FIELD name="i" datatype="short"/>'
        b"<DATA><TABLEDATA>")
TAIL = b"</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>"


def same(fast, slow) -> None:
    assert fast.keys() == slow.keys()
    for c in fast:
        (fv, fm), (sv, sm) = fast[c], slow[c]
        fm = np.zeros(len(fv), bool) if fm is None else fm
        sm = np.zeros(len(sv), bool) if sm is None else sm
        if fv.dtype.kind == "f":
            fm, sm = fm | np.isnan(fv), sm | np.isnan(sv.astype(float))
        assert fv.dtype == sv.dtype, c
        assert np.array_equal(fm, sm), c
        assert np.array_equal(fv[~fm], sv[~sm]), c


def test_cells_nulls_entities_and_types():
    body = HEAD + (b"<TR><TD>a &amp; b</TD><TD>0.0866</TD><TD>T</TD><TD>2</TD></TR>"
                   b"<TR><TD/><TD/><TD/><TD/></TR>"
                   b"<TR><TD>c</TD><TD>3.19545e-12</TD><TD>F</TD><TD>-7</TD></TR>") + TAIL
    fast = fast_columns(body, ["s", "f", "b", "i"])
    assert fast is not None
    assert list(fast["s"][0]) == ["a & b", "", "c"]
    assert fast["f"][0].dtype == np.float32 and fast["i"][0].dtype == np.int16
    assert list(fast["b"][1]) == [False, True, False]
    same(fast, _astropy_columns(body, ["s", "f", "b", "i"]))


@pytest.mark.parametrize("odd", [
    b"<TR><TD><![CDATA[x]]></TD><TD>1</TD><TD>T</TD><TD>1</TD></TR>",
    b'<TR><TD ref="x">a</TD><TD>1</TD><TD>T</TD><TD>1</TD></TR>',
    b"<TR><TD>a</TD><TD>1</TD><TD>T</TD></TR>",
])
def test_what_it_cannot_read_goes_to_astropy(odd: bytes):
    assert fast_columns(HEAD + odd + TAIL, ["s", "f", "b", "i"]) is None


@pytest.mark.server
def test_the_cxc_tap_answer_reads_as_astropy_reads_it(vo_server: str):
    s = http.make_session(5, 60, "no")
    names = ["name", "ra", "dec", "err_ellipse_r0", "conf_flag", "flux_aper_w",
             "var_inter_index_w", "likelihood_class"]
    body = TapClient(f"{vo_server}/csc21tap", s).sync_body(
        f"SELECT {', '.join(names)} FROM csc21.master_source", 100000)
    s.close()
    fast = fast_columns(body, names)
    assert fast is not None and len(fast["ra"][0]) == 3622
    same(fast, _astropy_columns(body, names))
