"""``sampbridge doctor``: check this desktop and say, one line each, what to fix."""

from __future__ import annotations

import argparse

from .parser import Subparsers

__all__ = ["register", "seconds"]


def seconds(text: str) -> float:
    """Read a ``--timeout``: a number of seconds above 0 (argparse says so otherwise)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text!r}")
    return value


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``doctor``."""
    p = sub.add_parser(
        "doctor", parents=[common],
        help="check the hub, the viewers, the services, the mirror and the folders; say what "
             "to fix",
        description="Check this desktop: the SAMP hub and its lockfile, sampbridge, TOPCAT, "
                    "DS9 (and the subscribers it needs before it broadcasts a click), Aladin "
                    "(and the lockfile it reads), a tiny timed query to each service, the "
                    "mirror's release and the folders' permissions. One line per finding; exit "
                    "status 0 when no line is a WARN or FAIL, else 1. docs/user-guide.md, "
                    "'When a click does nothing', explains each line.")
    p.add_argument("--timeout", type=seconds, default=10.0, metavar="SECONDS",
                   help="seconds a hub call or a service query may take (default 10)")
    p.add_argument("--no-services", dest="services", action="store_false",
                   help="do not query the services (offline)")
    # the report is the output: the log's INFO lines (a registration) would only interleave
    p.set_defaults(handler=doctor, quiet=True)


def doctor(args: argparse.Namespace) -> int:
    """Run the checks against ``--config`` (or the defaults) and print the report."""
    from ..config import load_config
    from ..doctor import run

    return run(load_config(args.config), args.timeout, services=args.services)
