"""``sampbridge service install|uninstall|status``: run the daemon at login."""

from __future__ import annotations

import argparse

from .parser import Subparsers

__all__ = ["register"]


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``service`` and its actions."""
    svc = sub.add_parser("service", help="run the daemon at login (systemd user unit, launchd)")
    acts = svc.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, what in (("install", "write the unit or agent (never needs root)"),
                         ("uninstall", "remove it"),
                         ("status", "is it installed, what it runs, is it active")):
        a = acts.add_parser(action, parents=[common], help=what)
        a.add_argument("--platform", choices=("linux", "macos"), help=argparse.SUPPRESS)
        a.set_defaults(handler=service)
    acts.choices["install"].add_argument(
        "--enable", action="store_true",
        help="also enable and start it now (systemctl --user; Linux)")


def service(args: argparse.Namespace) -> int:
    """Run the chosen action (:func:`sampbridge.service.run`)."""
    from ..service import run

    return run(args.action, args.config, args.platform, getattr(args, "enable", False))
