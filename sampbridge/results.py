"""What a query produced: result records on disk, and the TABLEDATA copy some viewers need.

No SAMP and no network here: :class:`~sampbridge.engine.Engine` makes these records, the daemon,
the query folder and the command line read them.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ._astropy import quiet_astropy
from .csc.siap import ImageInfo

__all__ = ["TableResult", "MatchResult", "ImageResult", "tabledata_copy"]


@dataclass
class TableResult:
    """A table result on disk, ready to be sent: ``url`` is a ``file://`` URL to ``path``."""

    path: Path
    table_id: str
    name: str
    rows: int
    seconds: float
    what: str
    overflow: bool = False
    service_url: str = ""

    @property
    def url(self) -> str:
        """The ``file://`` URL of the result."""
        return self.path.resolve().as_uri()


@dataclass
class MatchResult(TableResult):
    """A match table, with the counts a person wants to see."""

    input_rows: int = 0
    no_position: int = 0
    unmatched: int = 0
    strategy: str = ""


@dataclass
class ImageResult:
    """Images on disk found by one SIAP query."""

    images: list[ImageInfo]
    found: int
    seconds: float
    what: str
    skipped: list[str] = field(default_factory=list)


def tabledata_copy(path: Path) -> Path:
    """Return a TABLEDATA version of the VOTable at ``path``: itself, or a copy beside it.

    Some table viewers (DS9 8.4) load a BINARY VOTable as an empty catalog.  The copy keeps
    the document as it is (INFO, FIELD units and UCDs) and only re-encodes the table data;
    it is written once, atomically, as ``<stem>.tabledata.vot``.
    """
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if b"BINARY" not in head:
        return path
    dest = path.with_name(path.stem + ".tabledata.vot")
    if dest.exists() and dest.stat().st_mtime >= path.stat().st_mtime:
        return dest
    part = dest.with_name(dest.name + f".{threading.get_ident()}.part")
    try:
        with quiet_astropy():
            from astropy.io.votable import parse

            vot = parse(str(path), verify="ignore")
            for table in vot.iter_tables():
                table.format = "tabledata"
            with open(part, "wb") as fh:
                # astropy's Python writer, not its C one: see engine._write_votable
                vot.to_xml(fh, tabledata_format="tabledata", _debug_python_based_parser=True)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest
