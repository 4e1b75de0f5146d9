"""``sampbridge query KIND ...``: one query without SAMP, its result written to ``--out``.

A new kind is one module of this package and one line in :data:`KINDS`.  The module has
``register(sub, common)``, which adds its parser with ``parents=[common]`` and
``set_defaults(run_query=fn)``; ``fn(args, ctx) -> int`` builds the request from the
arguments (through :mod:`sampbridge.model`), runs it with ``ctx.engine.run(request, dest=...)``
and prints the result (see :class:`.context.QueryContext`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ...config import load_config
from ..parser import Subparsers
from .context import QueryContext, Stopped, StopSignals

__all__ = ["KINDS", "register", "query"]

#: The kinds of ``query``, in the order ``--help`` lists them (module names of this package).
KINDS: tuple[str, ...] = (
    "cone",
    "siap",
    "tap",
    "match",
)


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``query`` and each of its kinds."""
    q = sub.add_parser("query", help="run one query without SAMP and write its result")
    q.set_defaults(handler=query)
    kinds = q.add_subparsers(dest="kind", required=True, metavar="KIND")
    for name in KINDS:
        importlib.import_module(f"{__package__}.{name}").register(kinds, common)


def query(args: argparse.Namespace) -> int:
    """Run the chosen kind; a stop signal exits ``128 + signum`` with one line."""
    with StopSignals() as stop:
        try:
            ctx = QueryContext(load_config(args.config), stop)
            try:
                status: int = args.run_query(args, ctx)
            finally:
                ctx.close()
            return status
        except Stopped as exc:
            print(f"sampbridge: stopped{exc.detail}", file=sys.stderr)
            return 128 + exc.signum
