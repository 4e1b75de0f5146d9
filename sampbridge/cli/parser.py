"""The argument parser: the program's options, and each command group's part of it."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from typing import Any, Protocol

from .. import __version__

__all__ = ["CommandGroup", "Parser", "Subparsers", "build_parser", "common_options"]

#: A word that starts like a negative number is a value, never an option: ``-24:19:13``,
#: ``-24d19m13s`` and ``-.5`` are declinations (argparse alone takes only ``-24.32``).
_NEGATIVE_VALUE = re.compile(r"-\.?\d")

#: What ``add_subparsers`` returns (argparse's own private type).
Subparsers = Any


class Parser(argparse.ArgumentParser):
    """An argument parser that reads ``-24:19:13`` or ``-24d19m13s`` as a value."""

    def _parse_optional(self, arg_string: str):  # argparse's own return type
        if _NEGATIVE_VALUE.match(arg_string):
            return None
        return super()._parse_optional(arg_string)


class CommandGroup(Protocol):
    """A module of one command group (``run``, ``query``...), as :mod:`.commands` lists it."""

    def register(self, sub: Subparsers, common: argparse.ArgumentParser) -> None:
        """Add the group's parser(s) to ``sub``; each sets ``handler`` (see cli.ready)."""


def common_options() -> argparse.ArgumentParser:
    """Return the parent parser of every command: ``--config``, ``-v``, ``-q``."""
    common = Parser(add_help=False)
    common.add_argument("--config", metavar="PATH", help="configuration file (YAML)")
    common.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return common


def build_parser(groups: Iterable[CommandGroup]) -> argparse.ArgumentParser:
    """Return the parser of ``sampbridge``, with each group's commands in order."""
    p = Parser(prog="sampbridge", description=(
        "Chandra Source Catalog results in TOPCAT, DS9 and Aladin over SAMP."))
    p.add_argument("--version", action="version", version=f"sampbridge {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in groups:
        # a parent's actions are shared, not copied: one group's set_defaults(quiet=True)
        # would change -q's default for every command, so each group gets its own parent
        group.register(sub, common_options())
    return p
