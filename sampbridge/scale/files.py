"""``sampbridge query match TABLE --engine lsdb``: a table file matched with LSDB.

The same steps and output as the engine's in-process mirror match (:meth:`Engine.run_match`):
read the table within ``tables.*``, find its positions, match, keep the nearest per row in
``best`` mode (:func:`sampbridge.match.best_only`), join (:func:`sampbridge.match.join`) and
write the VOTable; only the pairs come from LSDB.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import mirror as mirror_pkg
from ..config import Config
from ..engine_mirror import mirror_root
from ..match import Matches, best_only, join
from ..mirror import MirrorUnusable
from ..model import MatchRequest
from ..results import MatchResult
from ..tables import TableError, positions, read_table
from ..votwriter import write_votable
from .errors import ScaleError, require
from .export import ensure_hats
from .lsdb_match import match_lsdb

__all__ = ["match_file_lsdb"]


def match_file_lsdb(cfg: Config, req: MatchRequest, dest: Path, *,
                    scheduler: str | None = None, hats_dir: Path | None = None) -> MatchResult:
    """Match the table file of ``req`` against the mirror with LSDB and write the result.

    Parameters
    ----------
    cfg : Config
        The configuration (release, services, ``mirror.dir``, ``match.*``, ``tables.*``).
    req : MatchRequest
        The table, radius and mode.
    dest : Path
        The output VOTable.
    scheduler : str, optional
        A Dask scheduler address; a local 2-worker cluster by default.
    hats_dir : Path, optional
        The HATS export; by default ``<mirror folder>.hats``, exported when missing or stale.

    Raises
    ------
    ExtraMissing
        When the scale extra is not installed.
    ScaleError
        When there is no usable mirror or the match cannot run.
    TableError
        When the table cannot be read or has no usable position.
    """
    require()
    t0 = time.perf_counter()
    try:
        m = mirror_pkg.open_mirror(mirror_root(cfg), cfg["release"],
                                   {"tap": cfg["services.tap"], "cone": cfg["services.cone"]})
    except MirrorUnusable as exc:
        raise ScaleError(f"--engine lsdb matches against the local mirror: {exc}") from None
    try:
        cols = list(cfg["match.columns"])
        lacking = [c for c in cols if c not in m.stored]
        if lacking:
            raise ScaleError(f"the mirror lacks match.columns {', '.join(lacking)}; build it "
                             "with `sampbridge mirror build --columns all`")
        table = read_table(Path(req.table), cfg["tables.max_rows"],
                           max_bytes=cfg["tables.max_bytes"], root=req.root)
        pos = positions(table)
        if not pos.valid.any():
            raise TableError(f"none of the {len(table)} rows has a usable position in "
                             f"{pos.ra_col}/{pos.dec_col} (NaN, empty or out of range)")
        radius = (req.radius or cfg["match.radius"]) / 3600.0
        mode = req.mode or cfg["match.mode"]
        hats = ensure_hats(m, hats_dir, radius_arcsec=radius * 3600, scheduler=scheduler)
        idx, rows, sep = match_lsdb(m, pos.ra, pos.dec, pos.valid, radius, hats,
                                    scheduler=scheduler)
        matches = Matches(idx, mirror_pkg.table(m, rows, cols), sep, "lsdb", 0)
    finally:
        m.close()
    if mode == "best":
        matches = best_only(matches)
    out = join(table, matches)
    title = f"{req.name} \u00d7 CSC {cfg['release']}"
    write_votable(out, dest, title)
    n_in = len(table)
    no_pos = int((~pos.valid).sum())
    matched = len(np.unique(matches.idx))
    return MatchResult(dest, f"match-lsdb-{int(time.time() * 1000)}", title, len(out),
                       time.perf_counter() - t0,
                       f"match of {n_in} rows (lsdb, r={radius * 3600:g}\", {mode})", False, "",
                       input_rows=n_in, no_position=no_pos, unmatched=n_in - no_pos - matched,
                       strategy="lsdb")
