"""Simple Cone Search (SCS 1.03): the result is streamed to a file, never parsed into memory."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import requests

from . import http
from .votable import VOTableSummary, check_result

__all__ = ["ConeResult", "ConeService"]


@dataclass
class ConeResult:
    """A cone search result written to ``path``."""

    path: Path
    summary: VOTableSummary
    url: str
    seconds: float

    @property
    def rows(self) -> int:
        """Number of rows in the result."""
        return self.summary.rows


class ConeService:
    """A cone search service (``RA``, ``DEC``, ``SR``, ``VERB``).

    Parameters
    ----------
    url : str
        The service URL, e.g. the CSC 2.1 ``.../csc21scs/coneSearch``.
    session : requests.Session
        A session with timeouts (see :func:`sampbridge.csc.http.make_session`).
    max_bytes : int
        Size cap of one result.
    retries : int
        Retries after transient failures (the query is idempotent).
    """

    def __init__(self, url: str, session: requests.Session, max_bytes: int = 500_000_000,
                 retries: int = 2) -> None:
        self.url = url
        self.session = session
        self.max_bytes = max_bytes
        self.retries = retries

    def params(self, ra: float, dec: float, radius: float, verb: int = 2) -> dict[str, str]:
        """Return the query parameters for a cone."""
        return {"RA": repr(float(ra)), "DEC": repr(float(dec)), "SR": repr(float(radius)),
                "VERB": str(int(verb))}

    def query_to_file(self, ra: float, dec: float, radius: float, dest: Path,
                      verb: int = 2) -> ConeResult:
        """Run the cone and stream the VOTable to ``dest``.

        Raises
        ------
        sampbridge.csc.CSCError
            On any failure; ``dest`` then does not exist.
        """
        t0 = time.perf_counter()
        params = self.params(ra, dec, radius, verb)
        http.download(self.session, self.url, dest, what="cone search", params=params,
                      max_bytes=self.max_bytes, retries=self.retries)
        try:
            summary = check_result(dest, self.url, "cone search")
        except Exception:
            dest.unlink(missing_ok=True)
            raise
        return ConeResult(dest, summary, self.url, time.perf_counter() - t0)
