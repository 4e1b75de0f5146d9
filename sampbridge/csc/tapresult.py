"""What a TAP query gives back, and what a TAP service offers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .votable import VOTableSummary

__all__ = ["TapCapabilities", "TapResult"]


@dataclass
class TapResult:
    """A TAP result written to ``path``."""

    path: Path
    summary: VOTableSummary
    url: str
    seconds: float
    job_url: str | None = None
    dialect: str | None = None

    @property
    def rows(self) -> int:
        """Number of rows in the result."""
        return self.summary.rows

    @property
    def overflow(self) -> bool:
        """True when MAXREC cut the result short (``QUERY_STATUS=OVERFLOW``)."""
        return self.summary.overflow


@dataclass(frozen=True)
class TapCapabilities:
    """What a TAP service's ``/capabilities`` say that matters here."""

    geometry: bool
    upload: bool

    @property
    def dialect(self) -> str:
        """``geometry`` where CONTAINS, POINT and CIRCLE are listed, else ``csc``."""
        return "geometry" if self.geometry else "csc"
