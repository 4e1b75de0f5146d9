"""TAP ``/sync`` queries: the answer held in memory, or streamed to a file.

A sync query is idempotent, so it is retried like a GET (see :mod:`.retry`).  A 303 answer
is followed with a GET, as TAP wants.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import requests

from . import http
from .tapresult import TapResult
from .votable import StreamScan, check_body, check_result

__all__ = ["query_params", "sync_body", "sync_to_file"]


def query_params(adql: str, maxrec: int | None) -> dict[str, str]:
    """Return the parameters of a TAP query (``FORMAT=votable``: never CXC's text forms)."""
    p = {"REQUEST": "doQuery", "LANG": "ADQL", "FORMAT": "votable", "QUERY": adql}
    if maxrec:
        p["MAXREC"] = str(int(maxrec))
    return p


def sync_body(session: requests.Session, url: str, max_bytes: int, adql: str,
              maxrec: int | None = None, uploads: Mapping[str, bytes] | None = None,
              what: str = "TAP query") -> bytes:
    """Run ``adql`` on ``/sync`` and return the result body, held in memory (within the cap).

    For small results that are parsed next (cones of a match, an upload match).

    Parameters
    ----------
    session : requests.Session
        A session with timeouts and retries.
    url : str
        The TAP base URL (without ``/sync``).
    max_bytes : int
        Size cap of the answer.
    adql : str
        The query.
    maxrec : int, optional
        MAXREC.
    uploads : mapping of str to bytes, optional
        Tables to upload: name (``TAP_UPLOAD.<name>``) to VOTable document.
    what : str
        What the query is, for messages.

    Raises
    ------
    QueryError
        When the service refuses the query or the upload (in its own words).
    ResultTooLarge
        When the answer is over the size cap.
    """
    data = query_params(adql, maxrec)
    files = None
    if uploads:
        data["UPLOAD"] = ";".join(f"{name},param:{name}" for name in uploads)
        files = {name: (f"{name}.vot", body, "application/x-votable+xml")
                 for name, body in uploads.items()}
    resp = http.request(session, "POST", url + "/sync", what, stream=True, idempotent=True,
                        data=data, files=files)
    with resp:
        http.raise_for_http(resp, what)
        body = http.read_capped(resp, what, max_bytes)
        got_from = resp.url
    check_body(body, got_from, what)
    return body


def sync_to_file(session: requests.Session, url: str, max_bytes: int, adql: str, dest: Path,
                 maxrec: int | None = None) -> TapResult:
    """Run ``adql`` on ``/sync`` and stream the VOTable to ``dest`` (``url``: the TAP base).

    Raises
    ------
    CSCError
        On any failure; ``dest`` then does not exist.
    """
    t0 = time.perf_counter()
    url = url + "/sync"
    scan = StreamScan()
    http.download(session, url, dest, what="TAP query", method="POST", idempotent=True,
                  data=query_params(adql, maxrec), max_bytes=max_bytes, on_chunk=scan.feed)
    try:
        summary = check_result(dest, url, "TAP query", scan)
    except Exception:
        dest.unlink(missing_ok=True)
        raise
    return TapResult(dest, summary, url, time.perf_counter() - t0)
