"""Text about a file for one line of a log: names escaped, errors in one sentence."""

from __future__ import annotations

import unicodedata
from pathlib import Path

__all__ = ["show_name", "error_text"]

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_HIDDEN = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def show_name(text: str) -> str:
    r"""Return ``text`` fit for one line of a log: control characters escaped.

    A newline, a carriage return, a terminal escape, a Unicode line separator or a lone
    surrogate (an undecodable byte of a file name) becomes ``\n``, ``\x1b``, ``\u2028``...;
    a backslash is doubled, so an escaped name never reads as another one.
    """
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif unicodedata.category(ch) in _HIDDEN:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def error_text(exc: BaseException) -> str:
    """One sentence for a failed file (an OSError without its errno or full path)."""
    if isinstance(exc, OSError):
        what = f" ({Path(exc.filename).name})" if exc.filename else ""
        return f"cannot write its result{what}: {exc.strerror or 'input/output error'}"
    return str(exc)
