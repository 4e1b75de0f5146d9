"""``sampbridge query siap RA DEC --out FOLDER``: find images and download them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...model import RequestError, SiapRequest
from ..parser import Subparsers
from .context import QueryContext

__all__ = ["register", "run"]


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``query siap``."""
    siap = sub.add_parser("siap", parents=[common], help="image query and download")
    siap.add_argument("ra", help="RA, degrees (or hh:mm:ss, 16h27m10.2s)")
    siap.add_argument("dec", help="Dec, degrees (or dd:mm:ss, -24d19m13s; a minus sign is fine)")
    siap.add_argument("--size", help="SIZE in degrees (default: images.size)")
    siap.add_argument("--count", type=int, help="images to download (default: images.max_count)")
    siap.add_argument("--out", required=True, help="output folder")
    siap.set_defaults(run_query=run)


def run(args: argparse.Namespace, ctx: QueryContext) -> int:
    """Download the images; print each path, and the counts on stderr."""
    req = SiapRequest.from_params({"ra": args.ra, "dec": args.dec, "size": args.size}, ctx.cfg)
    if args.count is not None and args.count < 0:
        raise RequestError(f"--count must be 0 or more, not {args.count}")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise RequestError(f"--out {args.out} is a file; give a folder")
    if not out.exists() and not out.parent.exists():
        raise RequestError(f"--out {args.out}: the folder {out.parent} does not exist")
    img = ctx.engine.run(req, dest=out, count=args.count)
    for i in img.images:
        print(i.path)
    for s in img.skipped:
        print(f"skipped: {s}", file=sys.stderr)
    print(f"{img.found} images found, {len(img.images)} downloaded -> {out}", file=sys.stderr)
    return 0
