"""``sampbridge doctor``: check a desktop and say, one line each, what to fix.

Each check gives :class:`Finding` lines: ``OK``, ``INFO`` (nothing to check: Aladin is not
running, no mirror was built), ``WARN`` (works, but not as it should: a folder open to other
users, a slow service) or ``FAIL`` (a click will do nothing: no hub, no sampbridge, DS9 without
the subscribers it needs, an unreachable service). The exit status is 0 when no line is a
``WARN`` or a ``FAIL``, else 1. The rooms:

- :mod:`.findings`: a :class:`Finding`, its line, the report and the exit status;
- :mod:`.desktop`: the SAMP hub, sampbridge, TOPCAT, DS9 (and its subscriber rule), Aladin;
- :mod:`.aladin`: where a running (or future) Aladin looks for the hub's lockfile;
- :mod:`.local`: the services (a tiny timed query each), the mirror, the folders' modes.

docs/user-guide.md, "When a click does nothing", explains every line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from . import desktop, local
from .findings import GUIDE, LEVELS, Finding, exit_status, format_finding, report

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["GUIDE", "LEVELS", "Finding", "collect", "exit_status", "format_finding", "report",
           "run"]


def collect(cfg: Config, timeout: float = 10.0, *, samp: bool = True,
            services: bool = True) -> list[Finding]:
    """Run every check and return the findings, in the order of the report.

    Parameters
    ----------
    cfg : Config
        The configuration whose services, mirror and folders are checked.
    timeout : float
        Seconds a hub call or a service query may take.
    samp : bool
        Check the hub and the SAMP clients.
    services : bool
        Query the services.
    """
    out: list[Finding] = []
    if samp:
        out += desktop.check(cfg, timeout)
    if services:
        out += local.check_services(cfg, timeout)
    out += local.check_mirror(cfg)
    out += local.check_folders(cfg)
    return out


def run(cfg: Config, timeout: float = 10.0, say: Callable[[str], None] = print, *,
        samp: bool = True, services: bool = True) -> int:
    """Run ``sampbridge doctor``: print the report and return the exit status.

    Parameters
    ----------
    cfg : Config
        The configuration to check against.
    timeout : float
        Seconds a hub call or a service query may take.
    say : callable
        Prints one line.
    samp, services : bool
        As for :func:`collect`.
    """
    findings = collect(cfg, timeout, samp=samp, services=services)
    for line in report(findings):
        say(line)
    return exit_status(findings)
