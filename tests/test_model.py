from __future__ import annotations

import re

import pytest

from sampbridge.config import defaults
from sampbridge.model import ConeRequest, RequestError, SiapRequest, TapRequest, parse_position

CFG = defaults()


@pytest.mark.parametrize("params, words", [
    ({"ra": "10"}, "'dec' missing"),
    ({}, "'ra' and 'dec' missing"),
    ({"ra": "abc", "dec": "1"}, "'ra' must be a number"),
    ({"ra": "nan", "dec": "1"}, "finite"),
    ({"ra": "1", "dec": "inf"}, "finite"),
    ({"ra": "1", "dec": "91"}, "between -90 and +90"),
    ({"ra": "1", "dec": "-90.5"}, "between -90 and +90"),
    ({"ra": "400", "dec": "1"}, "between 0 and 360"),
    ({"ra": "", "dec": "1"}, "'ra' is missing"),
    ({"ra": ["1"], "dec": "1"}, "must be a number"),
])
def test_bad_positions_are_refused_with_a_sentence(params, words):
    with pytest.raises(RequestError, match=re.escape(words)):
        parse_position(params)


def test_positions_decimal_sexagesimal_and_wrap():
    assert parse_position({"ra": "246.7925", "dec": "-24.32027"}) == (246.7925, -24.32027)
    ra, dec = parse_position({"ra": "16:27:10.2", "dec": "-24:19:12"})
    assert ra == pytest.approx(246.7925) and dec == pytest.approx(-24.32)
    assert parse_position({"ra": "-10", "dec": "0"})[0] == 350.0
    assert parse_position({"ra": "360", "dec": "90"}) == (0.0, 90.0)


def test_cone_request_defaults_and_limits():
    r = ConeRequest.from_params({"ra": "1", "dec": "2"}, CFG)
    assert (r.radius, r.verb) == (CFG["cone.radius"], CFG["cone.verb"])
    assert ConeRequest.from_params({"ra": 1, "dec": 2, "radius": "0.1", "verb": "3"},
                                   CFG).verb == 3
    with pytest.raises(RequestError, match="'verb' must be one of 1, 2, 3"):
        ConeRequest.from_params({"ra": 1, "dec": 2, "verb": "9"}, CFG)
    with pytest.raises(RequestError, match="'radius' must be greater than 0 and at most 1"):
        ConeRequest.from_params({"ra": 1, "dec": 2, "radius": "5"}, CFG)
    with pytest.raises(RequestError, match="unknown parameter for a cone: 'colour'"):
        ConeRequest.from_params({"ra": 1, "dec": 2, "colour": "red"}, CFG)


def test_siap_and_tap_requests():
    assert SiapRequest.from_params({"ra": 1, "dec": 2, "size": "0.3"}, CFG).size == 0.3
    t = TapRequest.from_params({"adql": " SELECT 1 ", "maxrec": "10", "name": "x"}, CFG)
    assert (t.adql, t.maxrec, t.name) == ("SELECT 1", 10, "x")
    with pytest.raises(RequestError, match="'adql' is missing"):
        TapRequest.from_params({"adql": "  "}, CFG)
    with pytest.raises(RequestError, match="'maxrec' must be a whole number"):
        TapRequest.from_params({"adql": "SELECT 1", "maxrec": "1.5"}, CFG)


def test_samp_strings_are_ascii():
    from sampbridge.samp.connection import _sampify, samp_string

    assert samp_string("list \u00d7 CSC 2.1") == "list x CSC 2.1"
    assert samp_string("Caf\u00e9 \u03b1 r=3\u2032") == "Cafe ? r=3'"
    assert _sampify({"name": "a \u00d7 b", "rows": 3, "ok": True}) == {
        "name": "a x b", "rows": "3", "ok": "1"}
