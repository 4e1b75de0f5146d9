"""ADQL built from validated numbers and identifiers only: cones in three dialects.

* ``geometry``: ``1=CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', ra0, dec0, r))``, for
  services whose ``/capabilities`` list the ADQL geometry functions (DaCHS and most others).
* ``csc``: what the CSC TAP service documents, which has no ADQL geometry: a ``BETWEEN`` box on
  ``ra``/``dec`` (so the index is used) cut by ``dbo.cone_distance(...) <= R_ARCMIN``.  The box
  is exact on the sphere, splits at RA 0/360 and drops the RA limits when the cone holds a pole.
* ``box``: the same box and nothing else, for a service that knows no distance function at
  all; the caller cuts the rows to the cone itself (see :meth:`.tap.TapClient.cone_to_file`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

__all__ = ["DIALECTS", "number", "identifier", "ra_dec_box", "cone_condition", "cone_query",
           "pair_condition"]

#: the cone dialects, in the order a client falls back through them
DIALECTS = ("geometry", "csc", "box")

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def number(x: float) -> str:
    """Return a finite number as an ADQL literal (plain decimal, no exponent).

    Raises
    ------
    ValueError
        If ``x`` is not a finite number.
    """
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {x!r}")
    text = f"{x:.10f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def identifier(name: str) -> str:
    """Return a validated (optionally schema-qualified) identifier, quoting parts as needed."""
    parts = name.split(".")
    if not parts or any(not p for p in parts):
        raise ValueError(f"not an identifier: {name!r}")
    out = []
    for p in parts:
        if _IDENT.match(p):
            out.append(p)
        elif '"' not in p and p.isprintable():
            out.append(f'"{p}"')
        else:
            raise ValueError(f"not an identifier: {name!r}")
    return ".".join(out)


def ra_dec_box(ra: float, dec: float, radius: float) -> tuple[tuple[float, float],
                                                             list[tuple[float, float]]]:
    """Return the (dec range, RA ranges) that contain a cone; RA ranges lie in [0, 360].

    An empty RA list means no RA limit (the cone holds a pole or spans all RA).
    """
    ra = ra % 360.0
    dlo, dhi = dec - radius, dec + radius
    if dhi >= 90.0 or dlo <= -90.0:
        return (max(dlo, -90.0), min(dhi, 90.0)), []
    # exact half-width in RA of a small circle: sin(alpha) = sin(r) / cos(dec)
    s = math.sin(math.radians(radius)) / math.cos(math.radians(dec))
    if s >= 1.0:
        return (dlo, dhi), []
    alpha = math.degrees(math.asin(s)) * (1 + 1e-9) + 1e-9
    lo, hi = ra - alpha, ra + alpha
    if lo < 0.0:
        return (dlo, dhi), [(lo + 360.0, 360.0), (0.0, hi)]
    if hi > 360.0:
        return (dlo, dhi), [(lo, 360.0), (0.0, hi - 360.0)]
    return (dlo, dhi), [(lo, hi)]


def cone_condition(ra: float, dec: float, radius: float, dialect: str, *,
                   ra_col: str = "ra", dec_col: str = "dec",
                   distance: str | None = None) -> str:
    """Return an ADQL WHERE condition selecting a cone of ``radius`` degrees.

    Parameters
    ----------
    ra, dec, radius : float
        Centre and radius in degrees (validated here).
    dialect : {'geometry', 'csc', 'box'}
        Which form to write (see the module docstring); ``box`` selects a superset of the
        cone, which the caller cuts.
    ra_col, dec_col : str
        Position columns (validated identifiers).
    distance : str, optional
        For the ``csc`` dialect, a template for the distance cut, with ``{ra}``, ``{dec}``,
        ``{ra0}``, ``{dec0}``, ``{r_deg}`` and ``{r_arcmin}``.  The default is CSC's
        ``dbo.cone_distance({ra}, {dec}, {ra0}, {dec0}) <= {r_arcmin}``.
    """
    if not -90.0 <= float(dec) <= 90.0:
        raise ValueError(f"dec must be between -90 and 90, not {dec!r}")
    if not 0.0 < float(radius) <= 180.0:
        raise ValueError(f"radius must be between 0 and 180 degrees, not {radius!r}")
    rc, dc = identifier(ra_col), identifier(dec_col)
    ra0 = float(ra) % 360.0
    if dialect == "geometry":
        return (f"1=CONTAINS(POINT('ICRS', {rc}, {dc}), "
                f"CIRCLE('ICRS', {number(ra0)}, {number(dec)}, {number(radius)}))")
    if dialect not in ("csc", "box"):
        raise ValueError(f"unknown ADQL dialect {dialect!r}")
    (dlo, dhi), ras = ra_dec_box(ra0, float(dec), float(radius))
    terms = [f"{dc} BETWEEN {number(dlo)} AND {number(dhi)}"]
    if ras:
        parts = [f"{rc} BETWEEN {number(a)} AND {number(b)}" for a, b in ras]
        terms.append(parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")")
    if dialect == "box":
        return " AND ".join(terms)
    tmpl = distance or "dbo.cone_distance({ra}, {dec}, {ra0}, {dec0}) <= {r_arcmin}"
    terms.append(tmpl.format(ra=rc, dec=dc, ra0=number(ra0), dec0=number(dec),
                             r_deg=number(radius), r_arcmin=number(radius * 60.0)))
    return " AND ".join(terms)


def cone_query(table: str, ra: float, dec: float, radius: float, dialect: str, *,
               columns: Sequence[str] = ("*",), ra_col: str = "ra", dec_col: str = "dec",
               top: int | None = None, distance: str | None = None) -> str:
    """Return a complete ADQL cone query on ``table``."""
    cols = ", ".join("*" if c == "*" else identifier(c) for c in columns)
    top_s = f"TOP {int(top)} " if top else ""
    where = cone_condition(ra, dec, radius, dialect, ra_col=ra_col, dec_col=dec_col,
                           distance=distance)
    return f"SELECT {top_s}{cols} FROM {identifier(table)} WHERE {where}"


def pair_condition(dialect: str, radius: float, *, ra_col: str = "m.ra", dec_col: str = "m.dec",
                   ra0_col: str = "u.sb_ra", dec0_col: str = "u.sb_dec",
                   max_abs_dec: float = 90.0) -> str:
    """Return an ADQL join condition: rows within ``radius`` degrees of another table's rows.

    Used to join an uploaded table of positions (``ra0_col``, ``dec0_col``) to the catalogue.

    Parameters
    ----------
    dialect : {'geometry', 'csc', 'box'}
        ``geometry``: CONTAINS; ``csc``: a declination band and ``dbo.cone_distance``;
        ``box``: a declination band and an RA window (at RA 0/360 too), a superset the caller
        cuts.
    radius : float
        Degrees.
    ra_col, dec_col, ra0_col, dec0_col : str
        Column references (validated identifiers).
    max_abs_dec : float
        The largest ``|dec|`` among the uploaded positions: it sets the box's RA window, which
        is dropped when a cone may reach a pole.
    """
    if not 0.0 < float(radius) <= 180.0:
        raise ValueError(f"radius must be between 0 and 180 degrees, not {radius!r}")
    rc, dc, r0, d0 = (identifier(c) for c in (ra_col, dec_col, ra0_col, dec0_col))
    r = number(radius)
    if dialect == "geometry":
        return f"1=CONTAINS(POINT('ICRS', {rc}, {dc}), CIRCLE('ICRS', {r0}, {d0}, {r}))"
    pad = number(float(radius) * (1 + 1e-9) + 1e-9)     # never narrower than the radius
    band = f"{dc} BETWEEN {d0} - {pad} AND {d0} + {pad}"
    if dialect == "csc":
        return (f"{band} AND dbo.cone_distance({rc}, {dc}, {r0}, {d0}) "
                f"<= {number(radius * 60.0)}")
    if dialect != "box":
        raise ValueError(f"unknown ADQL dialect {dialect!r}")
    edge = abs(float(max_abs_dec)) + float(radius)
    s = math.sin(math.radians(radius)) / math.cos(math.radians(min(edge, 90.0)) or 1e-300)
    if edge >= 90.0 or s >= 1.0:
        return band
    w = number(math.degrees(math.asin(s)) * (1 + 1e-9) + 1e-9)
    windows = [f"{rc} BETWEEN {r0} - {w} AND {r0} + {w}",
               f"{rc} BETWEEN {r0} - {w} + 360 AND {r0} + {w} + 360",
               f"{rc} BETWEEN {r0} - {w} - 360 AND {r0} + {w} - 360"]
    return f"{band} AND ({' OR '.join(windows)})"
