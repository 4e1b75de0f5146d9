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


def test_box_dialect_is_the_csc_box_without_a_distance_function():
    for ra, dec, r in ((246.7925, -24.32027, 0.05), (0.02, 1.5, 0.1), (12.0, 89.85, 0.25)):
        csc = cone_condition(ra, dec, r, "csc")
        box = cone_condition(ra, dec, r, "box")
        assert csc.startswith(box + " AND dbo.cone_distance(")
        assert "cone_distance" not in box and "CONTAINS" not in box
    assert cone_query("t", 1, 1, 0.1, "box", columns=["name"]).startswith(
        "SELECT name FROM t WHERE dec BETWEEN 0.9 AND 1.1 AND ra BETWEEN")


def test_pair_condition_in_each_dialect():
    from sampbridge.csc.adql import pair_condition

    r = 3 / 3600
    assert pair_condition("geometry", r) == (
        "1=CONTAINS(POINT('ICRS', m.ra, m.dec), CIRCLE('ICRS', u.sb_ra, u.sb_dec, 0.0008333333))")
    csc = pair_condition("csc", r, max_abs_dec=30)
    assert csc.startswith("m.dec BETWEEN u.sb_dec - 0.00083333") and \
        csc.endswith("dbo.cone_distance(m.ra, m.dec, u.sb_ra, u.sb_dec) <= 0.05")
    box = pair_condition("box", r, max_abs_dec=30)
    assert "cone_distance" not in box and box.count("m.ra BETWEEN") == 3   # RA 0/360 as well
    assert "m.ra" not in pair_condition("box", r, max_abs_dec=89.9999)    # a pole: no RA limit
    with pytest.raises(ValueError):
        pair_condition("sql", r)
    with pytest.raises(ValueError):
        pair_condition("box", 0)
    with pytest.raises(ValueError):
        pair_condition("box", r, ra_col='m.ra"; DROP TABLE x; --')


def test_box_pair_window_holds_every_pair_within_the_radius():
    """Evaluate the box join condition on random pairs within the radius: all are kept."""
    import re

    from sampbridge.csc.adql import pair_condition

    rng = random.Random(11)
    for _ in range(200):
        r = rng.choice([1 / 3600, 3 / 3600, 30 / 3600, 0.2])
        top = rng.uniform(0, 89)
        cond = pair_condition("box", r, max_abs_dec=top)
        pad = float(re.search(r"u\.sb_dec - ([0-9.]+)", cond).group(1))
        m = re.search(r"u\.sb_ra - ([0-9.]+) AND", cond)
        w = float(m.group(1)) if m else None
        for _ in range(20):
            ra0, dec0 = rng.uniform(0, 360), rng.uniform(-top, top)
            bearing, d = rng.uniform(0, 2 * math.pi), r * math.sqrt(rng.random())
            d1, a1, dr = map(math.radians, (dec0, ra0, d))
            dec = math.asin(math.sin(d1) * math.cos(dr)
                            + math.cos(d1) * math.sin(dr) * math.cos(bearing))
            ra = a1 + math.atan2(math.sin(bearing) * math.sin(dr) * math.cos(d1),
                                 math.cos(dr) - math.sin(d1) * math.sin(dec))
            ra, dec = math.degrees(ra) % 360.0, math.degrees(dec)
            assert abs(dec - dec0) <= pad
            if w is not None:
                assert any(ra0 - w <= ra + k <= ra0 + w for k in (0, 360, -360)), (ra0, ra, w)
