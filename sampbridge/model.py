"""The request model: validated cone, image and TAP requests, whatever their origin.

A SAMP message, a CLI command and a query file all become one of these before any query runs,
so every check (and every error sentence) lives here once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .errors import SampBridgeError

__all__ = [
    "RequestError",
    "opt_float",
    "ConeRequest",
    "SiapRequest",
    "TapRequest",
    "MatchRequest",
    "parse_ra",
    "parse_dec",
    "parse_position",
    "match_options",
    "quoted",
]


class RequestError(SampBridgeError, ValueError):
    """A request that cannot run; the message is a sentence a person can act on."""


def _number(name: str, value: Any, unit: str = "") -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RequestError(f"'{name}' is missing")
    if isinstance(value, bool):
        raise RequestError(f"'{name}' must be a number{unit}, not {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = None
    if x is None:
        raise RequestError(f"'{name}' must be a number{unit}, not {quoted(value)}")
    if not math.isfinite(x):
        raise RequestError(f"'{name}' must be a finite number{unit}, not {quoted(value)}")
    return x


def quoted(value: Any) -> str:
    """Return ``value`` as an error sentence quotes it: its repr, cut to 60 characters.

    Every door (SAMP, query files, the CLI) quotes a bad value this way, so that the same
    mistake reads the same whichever door it came through.
    """
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"



def _sexagesimal(value: Any, unit: str) -> float | None:
    if not isinstance(value, str) or not any(c in value for c in ":hdms "):
        return None
    try:
        from astropy.coordinates import Angle

        return float(Angle(value.strip(), unit=unit).deg)
    except Exception:  # anything astropy cannot read is simply not sexagesimal
        return None


def parse_ra(value: Any, name: str = "ra") -> float:
    """Return a right ascension in degrees, in [0, 360).

    Accepts decimal degrees (numbers or strings) and sexagesimal hours such as
    ``16:27:10.2`` or ``16h27m10.2s``.
    """
    sx = _sexagesimal(value, "hourangle")
    ra = sx if sx is not None else _number(name, value, " of degrees")
    if not -360.0 <= ra <= 360.0:
        raise RequestError(f"'{name}' must be between 0 and 360 degrees, not {quoted(value)}")
    return ra % 360.0


def parse_dec(value: Any, name: str = "dec") -> float:
    """Return a declination in degrees, in [-90, 90] (decimal or sexagesimal degrees)."""
    sx = _sexagesimal(value, "deg")
    dec = sx if sx is not None else _number(name, value, " of degrees")
    if not -90.0 <= dec <= 90.0:
        raise RequestError(f"'{name}' must be between -90 and +90 degrees, not {quoted(value)}")
    return dec


def parse_position(params: Mapping[str, Any]) -> tuple[float, float]:
    """Return ``(ra, dec)`` from a parameter map with keys ``ra`` and ``dec``."""
    if not isinstance(params, Mapping):
        raise RequestError("the message parameters must be a map with 'ra' and 'dec'")
    missing = [k for k in ("ra", "dec") if k not in params]
    if missing:
        raise RequestError("the position is incomplete: " + " and ".join(f"'{k}'" for k in missing)
                           + " missing (expected decimal degrees, e.g. ra=246.7925 dec=-24.32)")
    return parse_ra(params["ra"]), parse_dec(params["dec"])


def opt_float(params: Mapping[str, Any], key: str, default: float, lo: float, hi: float,
              unit: str = "degrees") -> float:
    """Return the number ``params[key]`` in ``(lo, hi]``, or ``default`` when it is not given.

    Parameters
    ----------
    params : mapping
        A request's parameters (SAMP params, a query file's entry).
    key : str
        The parameter's name, as the sentence of a refusal names it.
    default : float
        The value when ``key`` is absent, ``None`` or empty.
    lo, hi : float
        The value must be greater than ``lo`` and at most ``hi``.
    unit : str, optional
        The unit a refusal names.

    Raises
    ------
    RequestError
        When the value is not a finite number in range.
    """
    if key not in params or params[key] in (None, ""):
        return default
    x = _number(key, params[key], f" of {unit}")
    if not lo < x <= hi:
        raise RequestError(f"'{key}' must be greater than {lo:g} and at most {hi:g} {unit}, "
                           f"not {quoted(params[key])}")
    return x


def match_options(params: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """Return a table match's ``(radius, mode)`` from its parameters (``None``: the default).

    The one check of a match's options, whichever door the request came through (a SAMP
    message or a query file), so that both give the same sentence.

    Parameters
    ----------
    params : mapping
        The request's parameters; ``radius`` in arcsec (greater than 0, at most 3600) and
        ``mode`` (``best`` or ``all``) are optional.

    Raises
    ------
    RequestError
        For a radius that is not a positive finite number of arcsec, or another mode.
    """
    radius = None
    if params.get("radius") not in (None, ""):
        radius = opt_float(params, "radius", 0.0, 0.0, 3600.0, "arcsec")
    mode = params.get("mode")
    if mode is not None and (not isinstance(mode, str) or mode not in ("best", "all")):
        shown = quoted(mode) if isinstance(mode, str) else \
            ("a list" if isinstance(mode, list) else "a map" if isinstance(mode, dict)
             else quoted(mode))
        raise RequestError(f"'mode' must be best or all, not {shown}")
    return radius, mode


def _opt_int(params: Mapping[str, Any], key: str, default: int | None,
             choices: tuple[int, ...] | None = None, lo: int = 0) -> int | None:
    if key not in params or params[key] in (None, ""):
        return default
    x = _number(key, params[key])
    if x != int(x):
        raise RequestError(f"'{key}' must be a whole number, not {quoted(params[key])}")
    n = int(x)
    if choices and n not in choices:
        raise RequestError(f"'{key}' must be one of {', '.join(map(str, choices))}, "
                           f"not {quoted(params[key])}")
    if n < lo:
        raise RequestError(f"'{key}' must be {lo} or more, not {quoted(params[key])}")
    return n


def _check_keys(params: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(k for k in params if k not in allowed and not str(k).startswith("x-"))
    if unknown:
        raise RequestError(f"unknown parameter{'s' if len(unknown) > 1 else ''} for {what}: "
                           + ", ".join(map(repr, unknown))
                           + f" (allowed: {', '.join(sorted(allowed))})")


@dataclass(frozen=True)
class ConeRequest:
    """A cone search: centre and radius in degrees, and the SCS VERB level."""

    ra: float
    dec: float
    radius: float
    verb: int

    @classmethod
    def from_params(cls, params: Mapping[str, Any], cfg: Config, strict: bool = True
                    ) -> ConeRequest:
        """Build from a parameter map (``ra``, ``dec``, optional ``radius`` and ``verb``)."""
        if strict:
            _check_keys(params, {"ra", "dec", "radius", "verb"}, "a cone")
        ra, dec = parse_position(params)
        radius = opt_float(params, "radius", cfg["cone.radius"], 0.0, cfg["cone.max_radius"])
        verb = _opt_int(params, "verb", cfg["cone.verb"], (1, 2, 3))
        return cls(ra, dec, radius, int(verb or 2))


@dataclass(frozen=True)
class SiapRequest:
    """An image query: centre and SIZE in degrees."""

    ra: float
    dec: float
    size: float

    @classmethod
    def from_params(cls, params: Mapping[str, Any], cfg: Config) -> SiapRequest:
        """Build from a parameter map (``ra``, ``dec``, optional ``size``)."""
        _check_keys(params, {"ra", "dec", "size"}, "an image query")
        ra, dec = parse_position(params)
        return cls(ra, dec, opt_float(params, "size", cfg["images.size"], 0.0, 10.0))


@dataclass(frozen=True)
class TapRequest:
    """A user's own ADQL, passed through unchanged, with an optional name and MAXREC."""

    adql: str
    name: str | None
    maxrec: int | None

    @classmethod
    def from_params(cls, params: Mapping[str, Any], cfg: Config) -> TapRequest:
        """Build from a parameter map (``adql``, optional ``name`` and ``maxrec``)."""
        _check_keys(params, {"adql", "name", "maxrec"}, "a TAP query")
        adql = params.get("adql")
        if not isinstance(adql, str) or not adql.strip():
            raise RequestError("'adql' is missing: give the ADQL query text, e.g. "
                               "SELECT TOP 10 name, ra, dec FROM csc21.master_source")
        name = params.get("name")
        if name is not None and not isinstance(name, str):
            raise RequestError(f"'name' must be text, not {quoted(name)}")
        maxrec = _opt_int(params, "maxrec", cfg["tap.maxrec"] or None, lo=1)
        return cls(adql.strip(), (name or "").strip() or None, maxrec)


@dataclass(frozen=True)
class MatchRequest:
    """A table to match against the CSC, whichever door it came through.

    A SAMP message gives a URL (the daemon fetches it), a query file and the CLI a file.

    Attributes
    ----------
    table : str or Path
        The table: a URL (SAMP) or a file (a query file, the CLI).
    name : str
        The table's name, for the result's title.
    rows : tuple of int, optional
        The rows to match (a SAMP row selection); ``None`` matches them all.
    radius : float, optional
        Match radius in arcsec; ``None`` takes ``match.radius``.
    mode : str, optional
        ``best`` or ``all``; ``None`` takes ``match.mode``.
    root : Path, optional
        The folder a file must lie in (a query folder's table).
    table_id : str, optional
        The SAMP ``table-id``, to know the table again when its rows are highlighted.
    """

    table: str | Path
    name: str
    rows: tuple[int, ...] | None = None
    radius: float | None = None
    mode: str | None = None
    root: Path | None = None
    table_id: str | None = None

    @classmethod
    def from_params(cls, table: str | Path, name: str, params: Mapping[str, Any],
                    **more: Any) -> MatchRequest:
        """Build from a table, its name and the ``radius``/``mode`` parameters.

        ``radius`` and ``mode`` go through :func:`match_options`, the one check of them
        whichever door the request came through; ``more`` sets the other attributes.
        """
        radius, mode = match_options(params)
        return cls(table, name, radius=radius, mode=mode, **more)
