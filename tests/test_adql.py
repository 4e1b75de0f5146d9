from __future__ import annotations

import math
import random

import pytest

from sampbridge.csc.adql import cone_condition, cone_query, identifier, number, ra_dec_box
from sampbridge.flow import separation_deg


def test_number_and_identifier():
    assert number(246.7925) == "246.7925"
    assert number(-0.0) == "0"
    assert number(1e-7) == "0.0000001"
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError):
            number(bad)
    assert identifier("csc21.master_source") == "csc21.master_source"
    assert identifier("Weird Col") == '"Weird Col"'
    for bad in ('a"; DROP TABLE x; --', "", "a..b", 'x"y'):
        with pytest.raises(ValueError):
            identifier(bad)


def test_geometry_dialect():
    q = cone_query("csc21.master_source", 246.7925, -24.32027, 0.05, "geometry",
                   columns=["name", "ra", "dec"])
    assert q == ("SELECT name, ra, dec FROM csc21.master_source WHERE 1=CONTAINS(POINT('ICRS', "
                 "ra, dec), CIRCLE('ICRS', 246.7925, -24.32027, 0.05))")


def test_csc_dialect_plain():
    c = cone_condition(246.7925, -24.32027, 0.05, "csc")
    assert c.startswith("dec BETWEEN -24.37027 AND -24.27027 AND ra BETWEEN 246.73")
    assert c.endswith("AND dbo.cone_distance(ra, dec, 246.7925, -24.32027) <= 3")
    assert " OR " not in c


def test_csc_dialect_splits_at_ra_zero():
    c = cone_condition(0.02, 1.5, 0.1, "csc")
    assert "(ra BETWEEN 359.9" in c and "AND 360 OR ra BETWEEN 0 AND 0.12" in c
    c = cone_condition(359.95, -3, 0.1, "csc")
    assert "ra BETWEEN 359.84" in c and "OR ra BETWEEN 0 AND 0.05" in c


def test_csc_dialect_drops_ra_at_the_poles():
    for dec in (89.85, 90.0, -89.97):
        c = cone_condition(12.0, dec, 0.25, "csc")
        assert "ra BETWEEN" not in c
        assert (" AND 90 AND " in c) if dec > 0 else ("BETWEEN -90 AND" in c)


def _in_box(ra: float, dec: float, box) -> bool:
    (dlo, dhi), ras = box
    return dlo <= dec <= dhi and (not ras or any(a <= ra <= b for a, b in ras))


def test_box_contains_every_point_of_the_cone():
    rng = random.Random(5)
    for _ in range(300):
        ra0, dec0 = rng.uniform(0, 360), rng.uniform(-89.9, 89.9)
        r = rng.choice([0.001, 0.05, 0.5, 2.0])
        box = ra_dec_box(ra0, dec0, r)
        for _ in range(50):
            # a random point on the cone's rim or inside
            bearing, d = rng.uniform(0, 2 * math.pi), r * math.sqrt(rng.random())
            d1, a1, dr = map(math.radians, (dec0, ra0, d))
            dec = math.asin(math.sin(d1) * math.cos(dr)
                            + math.cos(d1) * math.sin(dr) * math.cos(bearing))
            ra = a1 + math.atan2(math.sin(bearing) * math.sin(dr) * math.cos(d1),
                                 math.cos(dr) - math.sin(d1) * math.sin(dec))
            ra, dec = math.degrees(ra) % 360.0, math.degrees(dec)
            assert separation_deg(ra, dec, ra0, dec0) <= r * (1 + 1e-9)
            assert _in_box(ra, dec, box), (ra0, dec0, r, ra, dec, box)


def test_bad_inputs():
    with pytest.raises(ValueError):
        cone_condition(1, 91, 0.1, "csc")
    with pytest.raises(ValueError):
        cone_condition(1, 1, 0, "geometry")
    with pytest.raises(ValueError):
        cone_condition(1, 1, 0.1, "sql")
