"""The macOS room of ``sampbridge service``: the launchd agent (a property list).

Nothing here runs ``launchctl``; the lines to run are printed for the user.
"""

from __future__ import annotations

import plistlib
import shlex
from pathlib import Path

__all__ = ["AGENT_LABEL", "launchd_plist", "program_arguments", "start_hint", "stop_hint"]

AGENT_LABEL = "org.sampbridge.daemon"


def launchd_plist(argv: list[str], log: Path) -> bytes:
    """Return the launchd agent (an XML property list) that runs ``argv`` at login.

    Parameters
    ----------
    argv : list of str
        The command line, from :func:`sampbridge.service.command`.
    log : Path
        Where its standard output and error go.
    """
    return plistlib.dumps({
        "Label": AGENT_LABEL,
        "ProgramArguments": list(argv),
        "RunAtLoad": True,
        # started again when it crashes or fails, not after a clean stop
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 10,
        "StandardOutPath": str(log),
        "StandardErrorPath": str(log),
    })


def program_arguments(raw: bytes) -> list[str] | None:
    """Return an agent's ``ProgramArguments``, ``None`` if the file cannot be read as one.

    Parameters
    ----------
    raw : bytes
        The property list.
    """
    try:
        args = plistlib.loads(raw).get("ProgramArguments")
    except Exception:  # any damage reads as "unreadable"
        return None
    return [str(a) for a in args] if isinstance(args, list) else None


def start_hint(agent: Path) -> str:
    """Return the line that loads (and so starts) the agent at ``agent``."""
    return f"launchctl bootstrap gui/$(id -u) {shlex.quote(str(agent))}"


def stop_hint() -> str:
    """Return the line that stops a loaded agent."""
    return f"launchctl bootout gui/$(id -u)/{AGENT_LABEL}"
