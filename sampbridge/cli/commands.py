"""The registry of command groups: a new group is one module here and one line in GROUPS.

Each module named in :data:`GROUPS` (a module of this package) has a function
``register(sub, common)`` that adds its parser(s) with ``sub.add_parser(..., parents=[common])``
and ``set_defaults(handler=fn)``; ``fn(args) -> int`` runs the command and returns its exit
status.  Errors are not caught there: :func:`sampbridge.cli.main` maps a ``SampBridgeError`` to
one line and exit status 2 (the user's to mend) or 1.  Modules import their heavy parts
(astropy, the engine, the daemon) inside the handler, so that ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import cast

from .parser import CommandGroup

__all__ = ["GROUPS", "groups"]

#: The command groups, in the order ``sampbridge --help`` lists them (module names).
GROUPS: tuple[str, ...] = (
    "run",
    "check_config",
    "query",
    "service",
    "mirror",
    "status",
    "doctor",
)


def groups() -> list[CommandGroup]:
    """Return the modules of :data:`GROUPS`, imported."""
    return [cast(CommandGroup, importlib.import_module(f"{__package__}.{name}"))
            for name in GROUPS]
