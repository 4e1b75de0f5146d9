"""File names made from text a service or a user gave: one rule for every layer.

It lives in ``sampbridge.csc`` (which imports nothing above it) so that the SIAP client and the
layers above (tables, the engine, the query folder) share it without reaching into SIAP.
"""

from __future__ import annotations

import re

__all__ = ["safe_name"]


def safe_name(text: str, limit: int = 80) -> str:
    """Return ``text`` as a file-name part that cannot leave its folder.

    Parameters
    ----------
    text : str
        Any text, e.g. an image title, a URL's stem or a query file's name.
    limit : int, optional
        The longest name returned.

    Returns
    -------
    str
        Letters, digits and ``._+-`` only, without a leading or trailing dot or underscore;
        ``"result"`` when nothing is left.
    """
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._")
    return (name or "result")[:limit]
