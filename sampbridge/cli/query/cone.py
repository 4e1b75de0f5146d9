"""``sampbridge query cone RA DEC --out FILE``: a cone search."""

from __future__ import annotations

import argparse

from ...model import ConeRequest
from ..parser import Subparsers
from .context import QueryContext, out_file, rows_line

__all__ = ["register", "run"]


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``query cone``."""
    cone = sub.add_parser("cone", parents=[common], help="cone search")
    cone.add_argument("ra", help="RA, degrees (or hh:mm:ss, 16h27m10.2s)")
    cone.add_argument("dec", help="Dec, degrees (or dd:mm:ss, -24d19m13s; a minus sign is fine)")
    cone.add_argument("--radius", help="radius in degrees (default: cone.radius)")
    cone.add_argument("--verb", help="VERB 1, 2 or 3 (default: cone.verb)")
    cone.add_argument("--out", required=True, help="output VOTable file")
    cone.set_defaults(run_query=run)


def run(args: argparse.Namespace, ctx: QueryContext) -> int:
    """Run the cone and print ``N rows -> FILE``."""
    req = ConeRequest.from_params({"ra": args.ra, "dec": args.dec, "radius": args.radius,
                                   "verb": args.verb}, ctx.cfg)
    print(rows_line(ctx.engine.run(req, dest=out_file(args.out))))
    return 0
