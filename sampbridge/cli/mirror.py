"""``sampbridge mirror build | status | remove``: the local mirror of master_source."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from .parser import Subparsers

__all__ = ["register", "build", "status", "remove"]

log = logging.getLogger(__name__)


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``mirror`` and its actions."""
    m = sub.add_parser("mirror", help="build, check or remove the local mirror of the CSC "
                       "master sources (docs/mirror.md)")
    actions = m.add_subparsers(dest="action", required=True, metavar="ACTION")
    b = actions.add_parser("build", parents=[common],
                           help="download master_source into the mirror (resumes a stopped "
                                "build)")
    b.add_argument("--columns", choices=["default", "all"], default="default",
                   help="default: the columns of the cone at cone.verb and the error ellipse; "
                        "all: every master_source column")
    b.set_defaults(handler=build)
    s = actions.add_parser("status", parents=[common],
                           help="release, service, rows, columns, size, built when, verified")
    s.add_argument("--json", action="store_true", help="print the status as JSON")
    s.add_argument("--no-verify", action="store_true",
                   help="do not read the whole table to check its sha256")
    s.set_defaults(handler=status)
    r = actions.add_parser("remove", parents=[common], help="delete the mirror of the release")
    r.set_defaults(handler=remove)
    e = actions.add_parser("export-hats", parents=[common],
                           help="write the mirror as a HATS catalogue for LSDB (needs "
                                "`pip install 'sampbridge[scale]'`; docs/mirror.md)")
    e.add_argument("dir", help="the HATS collection folder to write (replaced whole)")
    e.add_argument("--margin", type=float, help="margin cache width in arcsec (default 60): "
                   "LSDB matches up to this radius")
    e.add_argument("--dask-scheduler", metavar="ADDRESS",
                   help="run hats-import on this Dask scheduler (default: a local cluster)")
    e.set_defaults(handler=export_hats)


def _side(args: argparse.Namespace) -> Any:
    from ..config import load_config
    from ..csc import http
    from ..csc.cone import ConeService
    from ..csc.tap import TapClient
    from ..engine_mirror import MirrorSide

    cfg = load_config(args.config)
    session = http.make_session(cfg["http.connect_timeout"], cfg["http.read_timeout"],
                                cfg["http.compress"])
    tap = TapClient(cfg["services.tap"], session, cfg["results.max_bytes"],
                    cfg["tap.job_timeout"])
    cone = ConeService(cfg["services.cone"], session, cfg["results.max_bytes"],
                       cfg["http.retries"])
    return MirrorSide(cfg, tap, cone, open_now=False), session


def build(args: argparse.Namespace) -> int:
    """Build (or resume) the mirror and print what was built."""
    from .. import progress
    from .query.context import Stopped, StopSignals

    side, session = _side(args)
    t0 = time.monotonic()
    try:
        # a tqdm bar on a terminal, else a log line every 10 s (sampbridge/progress.py);
        # SIGINT, SIGTERM and SIGHUP stop it the same way, the slices saved so far kept
        with StopSignals() as stop, progress.bar(None, "mirror build", unit="rows") as bar:
            m = side.build(columns="all" if args.columns == "all" else None,
                           progress=bar.on_count, cancel=stop.cancel)
    except Stopped as exc:
        print("sampbridge: stopped; the slices saved so far are kept: run `sampbridge mirror "
              "build` again to resume", file=sys.stderr)
        return 128 + exc.signum
    finally:
        session.close()
    print(f"mirror of CSC {m['release']} built: {m['rows']:,} rows, {len(m['columns'])} "
          f"columns, {m['bytes'] / 1e6:.1f} MB in {time.monotonic() - t0:.1f} s at "
          f"{side.root}")
    return 0


def _lines(st: dict[str, Any]) -> list[str]:
    out = [f"mirror: {st['state']}" + ("" if st["usable"] else f" ({st['reason']})"),
           f"path: {st['path']}"]
    if st.get("release") is not None:
        verified = {True: "yes (sha256 matches)", False: "NO (sha256 differs)",
                    None: "not checked"}[st["verified"]]
        out += [f"release: {st['release']}",
                f"services: tap {st['services'].get('tap')}, cone {st['services'].get('cone')}",
                f"rows: {st['rows']:,}", f"columns ({len(st['columns'])}): "
                + ", ".join(st["columns"]),
                f"size: {st['bytes'] / 1e6:.2f} MB ({st['raw_bytes'] / 1e6:.2f} MB of values)",
                f"built: {st['built_at']} in {st['build_seconds']} s",
                f"verified: {verified}"]
    if st.get("building"):
        b = st["building"]
        out.append(f"unfinished build: {b['slices']} slices, {b['rows']:,} rows saved "
                   "(`sampbridge mirror build` resumes it)")
    out.append(f"cone.source: {st['source']}")
    return out


def status(args: argparse.Namespace) -> int:
    """Print the mirror's status; exit 0 when it is usable, 1 when not."""
    side, session = _side(args)
    session.close()
    st = side.status(verify=not args.no_verify)
    if st["state"] == "corrupt":
        log.warning("%s", st["reason"])
    print(json.dumps(st, indent=1) if args.json else "\n".join(_lines(st)))
    return 0 if st["usable"] else 1


def remove(args: argparse.Namespace) -> int:
    """Remove the mirror of the configured release."""
    side, session = _side(args)
    session.close()
    gone = side.remove()
    print(f"mirror removed from {side.root}" if gone else f"no mirror under {side.root}")
    return 0


def export_hats(args: argparse.Namespace) -> int:
    """Export the mirror as a HATS catalogue (the scale extra, :mod:`sampbridge.scale`)."""
    from ..scale.commands import export_hats_command

    return export_hats_command(args)
