"""``sampbridge query match TABLE --out FILE``: match a table file against the CSC."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ... import progress
from ...model import MatchRequest, RequestError
from ..parser import Subparsers
from .context import QueryContext, out_file, rows_line

if TYPE_CHECKING:
    from ...results import TableResult

__all__ = ["register", "run"]


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``query match``."""
    p = sub.add_parser("match", parents=[common],
                       help="match a table file (VOTable, FITS, CSV...) against the CSC")
    p.add_argument("table", help="the table file; its RA/Dec columns are found by UCD or name")
    p.add_argument("--out", required=True, help="output VOTable file")
    p.add_argument("--radius", help="match radius in arcsec (default: match.radius)")
    p.add_argument("--mode", help="best (nearest source per row) or all (default: match.mode)")
    p.add_argument("--engine", choices=["local", "lsdb"], default="local",
                   help="local: in this process (the mirror, else the service); lsdb: LSDB on "
                        "a Dask cluster against the mirror's HATS export (needs `pip install "
                        "'sampbridge[scale]'`; docs/mirror.md)")
    p.add_argument("--dask-scheduler", metavar="ADDRESS",
                   help="with --engine lsdb: the Dask scheduler (default: a local cluster)")
    p.set_defaults(run_query=run)


def run(args: argparse.Namespace, ctx: QueryContext) -> int:
    """Match the table (from the mirror when one is usable) and print ``N rows -> FILE``."""
    table = Path(args.table).expanduser().resolve()
    # the same model and the same check of radius and mode as a SAMP or query-file match's
    req = MatchRequest.from_params(table, table.stem, {"radius": args.radius, "mode": args.mode},
                                   root=table.parent)
    res: TableResult
    if args.engine == "lsdb":
        from ...scale import match_file_lsdb

        res = match_file_lsdb(ctx.cfg, req, out_file(args.out), scheduler=args.dask_scheduler)
    elif args.dask_scheduler:
        raise RequestError("--dask-scheduler goes with --engine lsdb")
    else:
        # positions matched so far: a tqdm bar on a terminal, else a log line every 10 s
        with progress.bar(None, "match", unit="rows") as shown:
            res = ctx.engine.run(req, dest=out_file(args.out), progress=shown.on_count)
    print(rows_line(res) + f" ({res.what})")
    return 0
