"""Reading a SAMP message's params, and the sentences and log words that go back out.

Nothing here sends or runs anything: these are the small checks every room shares, so that
one kind of bad value gets one sentence whichever MType it came in.
"""

from __future__ import annotations

from typing import Any

from ..csc.errors import CSCError
from ..errors import Cancelled, SampBridgeError
from ..model import ConeRequest, RequestError, SiapRequest, TapRequest, quoted

__all__ = ["clip", "debug_text", "describe", "error_text", "kind", "ms", "row_number",
           "text_param"]


def ms(seconds: float) -> str:
    """Say a duration in milliseconds, for the log."""
    return f"{seconds * 1000:.0f} ms"


def clip(text: str, limit: int = 80) -> str:
    """Shorten ``text`` to ``limit`` characters, ending in '...' when cut."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def kind(value: Any) -> str:
    """Name a SAMP value's type for a message: 'a list', 'a map', ..."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a map"
    if isinstance(value, (int, float)):
        return "a number"
    return f"a {type(value).__name__}"


def text_param(params: dict[str, Any], key: str) -> str | None:
    """Return ``params[key]`` if it is text (or absent); refuse a list, a map or the like.

    Raises
    ------
    RequestError
        When the value is there but is not text.
    """
    value = params.get(key)
    if value is None or isinstance(value, str):
        return value
    raise RequestError(f"'{key}' must be text, not {kind(value)}")


def row_number(value: Any, key: str = "row") -> int:
    """Read a row number given as text (or a number); refuse anything else in one sentence.

    Raises
    ------
    RequestError
        When the value is not a whole number.
    """
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        try:
            return int(str(value).strip())
        except ValueError:
            pass
        raise RequestError(f"'{key}' must be a row number, not {quoted(value)}")
    raise RequestError(f"'{key}' must be a row number, not {kind(value)}")


def error_text(exc: BaseException) -> str:
    """Say an error to a caller: sampbridge's own as they are, others marked internal."""
    if isinstance(exc, SampBridgeError):
        return str(exc)
    return f"internal error ({exc.__class__.__name__}: {exc})"


def debug_text(exc: BaseException) -> str | None:
    """Return the ``samp.debugtxt`` of a service failure: its URL and HTTP status, if known."""
    if isinstance(exc, (CSCError, Cancelled)):
        parts = [f"url={exc.url}" if exc.url else "", f"http={exc.status}" if exc.status else ""]
        return " ".join(p for p in parts if p) or None
    return None


def describe(req: object) -> str:
    """Say in a few words what a request runs, for the status: 'cone 83.63310 +22.01450 r=30"'."""
    if isinstance(req, ConeRequest):
        return f'cone {req.ra:.5f} {req.dec:+.5f} r={req.radius * 3600:.4g}"'
    if isinstance(req, SiapRequest):
        return f"images {req.ra:.5f} {req.dec:+.5f} size={req.size:g}"
    if isinstance(req, TapRequest):
        return f"TAP '{clip(' '.join(req.adql.split()), 60)}'"
    return clip(str(req), 120)
