"""``sampbridge check-config [PATH]``: validate a configuration file."""

from __future__ import annotations

import argparse

from ..config import load_config
from .parser import Subparsers

__all__ = ["register"]


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``check-config``."""
    cc = sub.add_parser("check-config", parents=[common], help="validate a configuration file")
    cc.add_argument("path", nargs="?", help="the file (default: --config, else the defaults)")
    cc.set_defaults(handler=check_config)


def check_config(args: argparse.Namespace) -> int:
    """Load the file; every error of it is a ``ConfigError`` that ``main`` lists (exit 2)."""
    path = args.path or args.config
    cfg = load_config(path)
    print(f"{path or '(defaults)'}: OK ({len(cfg.values)} settings)")
    return 0
