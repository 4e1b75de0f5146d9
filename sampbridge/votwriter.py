"""Write a result table as a TABLEDATA VOTable, atomically (the engine's match results)."""

from __future__ import annotations

import os
from pathlib import Path

from astropy.table import Table

from ._astropy import quiet_astropy

__all__ = ["write_votable"]


def write_votable(table: Table, dest: Path, name: str) -> None:
    """Write ``table`` as a VOTable atomically (temporary name, then rename)."""
    part = dest.with_name(dest.name + ".part")
    out = table.copy(copy_data=False)
    out.meta = {k: v for k, v in out.meta.items() if isinstance(v, str)}
    out.meta["name"] = name
    for col in out.itercols():
        if col.dtype.kind == "O":
            out[col.name] = col.astype(str)
    try:
        with quiet_astropy():
            # TABLEDATA through astropy's Python writer, not its C one: the C TABLEDATA writer
            # (astropy 8.0.2) corrupted memory on match tables, an intermittent SIGSEGV later
            # anywhere in the process (gone with the C writer bypassed, in 75 runs of
            # 1000-row matches). BINARY2 avoids it too, but STIL (TOPCAT) cannot read
            # astropy's BINARY2 'bit' columns, which the CSC flags are.
            from astropy.io.votable import from_table

            vot = from_table(out)
            with open(part, "wb") as fh:
                vot.to_xml(fh, tabledata_format="tabledata", _debug_python_based_parser=True)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
