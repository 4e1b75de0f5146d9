"""Simple Cone Search (SCS 1.03): the result is streamed to a file, never parsed into memory.

The rows are counted as the body streams past (:class:`.votable.StreamScan`), so a
TABLEDATA answer, such as the CXC's VOTable 1.2, is never read a second time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import requests

from . import http
from .votable import StreamScan, VOTableSummary, check_result

__all__ = ["ConeResult", "ConeService", "VERB_COLUMNS", "verb_for"]

#: the columns the CSC 2.1 cone search gives at VERB=1 and VERB=2 (CXC's documentation and its
#: own clients); VERB=3 gives every ``master_source`` column.  No ``_r``: a distance column is
#: DaCHS's addition, and ``err_ellipse_r1``/``err_ellipse_ang`` come at VERB=3 only.
VERB_COLUMNS: dict[int, tuple[str, ...]] = {
    1: ("name", "ra", "dec"),
    2: ("name", "ra", "dec", "err_ellipse_r0", "conf_flag", "sat_src_flag", "significance",
        "flux_aper_b", "flux_aper_lolim_b", "flux_aper_hilim_b",
        "flux_aper_w", "flux_aper_lolim_w", "flux_aper_hilim_w",
        "extent_flag", "hard_hm", "hard_hm_lolim", "hard_hm_hilim",
        "hard_ms", "hard_ms_lolim", "hard_ms_hilim",
        "var_intra_index_b", "var_inter_index_b", "var_intra_index_w", "var_inter_index_w"),
}


def verb_for(columns: Iterable[str], verb: int = 1) -> int:
    """Return the lowest VERB, at least ``verb``, whose cone search answer has all ``columns``.

    Parameters
    ----------
    columns : iterable of str
        Column names wanted (``err_ellipse_r1``, say, needs VERB=3).
    verb : int
        The configured VERB, which is never lowered.
    """
    wanted = set(columns)
    for level in (1, 2):
        if level >= verb and wanted <= set(VERB_COLUMNS[level]):
            return level
    return 3


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
    retries : int, optional
        Retries after transient failures (the query is idempotent); by default the
        session's (``http.retries``, see :mod:`.retry`).
    """

    def __init__(self, url: str, session: requests.Session, max_bytes: int = 500_000_000,
                 retries: int | None = None) -> None:
        self.url = url
        self.session = session
        self.max_bytes = max_bytes
        self.retries = retries

    def params(self, ra: float, dec: float, radius: float, verb: int = 2) -> dict[str, str]:
        """Return the query parameters for a cone."""
        return {"RA": repr(float(ra)), "DEC": repr(float(dec)), "SR": repr(float(radius)),
                "VERB": str(int(verb))}

    def fetch_body(self, ra: float, dec: float, radius: float, verb: int = 2
                   ) -> tuple[bytes, str]:
        """Download one cone's VOTable into memory, within the size cap.

        Network only, no parsing: a match runs many of these on worker threads and parses the
        bodies on its own thread (see :mod:`sampbridge.match`).

        Returns
        -------
        tuple of (bytes, str)
            The body and the URL it came from.

        Raises
        ------
        sampbridge.csc.CSCError
            On any failure, :class:`ResultTooLarge` over ``max_bytes``.
        """
        resp = http.request(self.session, "GET", self.url, "cone search", retries=self.retries,
                            params=self.params(ra, dec, radius, verb), stream=True)
        with resp:
            http.raise_for_http(resp, "cone search")
            return http.read_capped(resp, "cone search", self.max_bytes), resp.url

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
        scan = StreamScan()
        http.download(self.session, self.url, dest, what="cone search", params=params,
                      max_bytes=self.max_bytes, retries=self.retries, on_chunk=scan.feed)
        try:
            summary = check_result(dest, self.url, "cone search", scan)
        except Exception:
            dest.unlink(missing_ok=True)
            raise
        return ConeResult(dest, summary, self.url, time.perf_counter() - t0)
