"""Run at login: ``sampbridge service install | uninstall | status``.

Linux gets a systemd user unit (``~/.config/systemd/user/sampbridge.service``), macOS a launchd
agent (``~/Library/LaunchAgents/org.sampbridge.daemon.plist``). Everything stays in the user's
home and nothing here ever needs root: the only programs run are ``systemctl --user`` (status,
and ``install --enable``), and only when a systemd user manager answers.

The platform rooms: :mod:`.systemd` (the unit, ``systemctl --user``) and :mod:`.launchd` (the
agent's property list); this module chooses between them and writes the files.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..safefile import ensure_private_dir
from . import launchd, systemd
from .launchd import AGENT_LABEL, launchd_plist
from .systemd import CONFIG_EXIT, SYSTEMCTL_TIMEOUT, UNIT_NAME, systemd_unit, user_systemd

__all__ = ["AGENT_LABEL", "CONFIG_EXIT", "PLATFORMS", "SYSTEMCTL_TIMEOUT", "UNIT_NAME",
           "ServiceError", "Target", "command", "current_platform", "install",
           "installed_command", "launchd_plist", "run", "status", "systemd_unit", "target",
           "uninstall", "user_systemd"]

#: The platforms ``service`` writes for, as ``--platform`` names them.
PLATFORMS = ("linux", "macos")

Say = Callable[[str], None]


class ServiceError(Exception):
    """One sentence a person can act on; ``service`` exits with status 2."""


@dataclass(frozen=True)
class Target:
    """Where the service file of one platform lives, and how to talk about it."""

    platform: str
    path: Path
    kind: str
    log: Path | None = None


def current_platform() -> str:
    """Return ``"linux"`` or ``"macos"`` for this machine.

    Raises
    ------
    ServiceError
        On any other system.
    """
    if sys.platform == "darwin":
        return "macos"
    if sys.platform.startswith("linux"):
        return "linux"
    raise ServiceError(f"sampbridge service knows Linux (systemd) and macOS (launchd), not "
                       f"{sys.platform}; start 'sampbridge run' from your session's autostart")


def target(platform: str, home: Path | None = None) -> Target:
    """Return where the unit (Linux) or agent (macOS) goes for the user whose home is ``home``.

    Parameters
    ----------
    platform : {"linux", "macos"}
        The platform to write for.
    home : Path, optional
        The user's home; default ``Path.home()`` (``$HOME``).
    """
    home = Path(home or Path.home())
    if platform == "macos":
        return Target(platform, home / "Library" / "LaunchAgents" / f"{AGENT_LABEL}.plist",
                      "launchd agent", home / "Library" / "Logs" / "sampbridge.log")
    # systemd.unit(5): $XDG_CONFIG_HOME/systemd/user, else ~/.config/systemd/user
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    config = Path(xdg) if os.path.isabs(xdg) else home / ".config"
    return Target(platform, config / "systemd" / "user" / UNIT_NAME, "systemd user unit")


def command(config: str | os.PathLike | None = None, argv0: str | None = None) -> list[str]:
    """Return the command line that the service runs: this sampbridge, ``run``, ``--config``.

    Parameters
    ----------
    config : str or path-like, optional
        The configuration file; it is made absolute, since a service has no working folder.
    argv0 : str, optional
        The program as started; default ``sys.argv[0]``. When it is the ``sampbridge``
        script, its resolved path is used, else ``sys.executable -m sampbridge``.
    """
    prog = Path(argv0 if argv0 is not None else sys.argv[0])
    if not prog.is_absolute() and os.sep not in str(prog):
        prog = Path(shutil.which(str(prog)) or prog)
    if prog.name == "sampbridge" and prog.is_file() and os.access(prog, os.X_OK):
        argv = [str(prog.resolve())]
    else:
        # never resolve the interpreter: a venv's python is a link out of the venv
        argv = [os.path.abspath(sys.executable), "-m", "sampbridge"]
    argv.append("run")
    if config is not None:
        argv += ["--config", os.path.abspath(os.path.expanduser(os.fspath(config)))]
    for word in argv:
        if re.search(r"[\x00-\x1f\x7f]", word):
            raise ServiceError(f"the path {word!r} holds a control character, which a service "
                               "file cannot hold; move the file to a plainer path")
    return argv


def _make_private_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents 0700; folders that exist keep their mode."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise ServiceError(f"{p} is not a folder; move it away and install again")
    ensure_private_dir(path)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (0600) through a temporary file and an atomic rename."""
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def _read(t: Target) -> bytes | None:
    try:
        return t.path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def installed_command(t: Target) -> list[str] | None:
    """Return the command line in the installed unit or agent, ``None`` if unreadable.

    Parameters
    ----------
    t : Target
        From :func:`target`.
    """
    raw = _read(t)
    if raw is None:
        return None
    if t.platform == "macos":
        return launchd.program_arguments(raw)
    return systemd.exec_start(raw)


def _start_hint(t: Target) -> str:
    return launchd.start_hint(t.path) if t.platform == "macos" else systemd.start_hint()


def _stop_hint(t: Target) -> str:
    return launchd.stop_hint() if t.platform == "macos" else systemd.stop_hint()


def _sudo_warning(t: Target, say: Say) -> None:
    if getattr(os, "geteuid", lambda: -1)() == 0 and os.environ.get("SUDO_USER"):
        say(f"warning: run through sudo, so this is {t.path}, root's {t.kind}; for your own "
            "login run it as yourself, without sudo (it never needs root)")


def install(t: Target, argv: list[str], enable: bool, say: Say) -> int:
    """Write the unit or agent for ``argv``; with ``enable``, enable and start it (Linux).

    Parameters
    ----------
    t : Target
        From :func:`target`.
    argv : list of str
        From :func:`command`.
    enable : bool
        Run ``systemctl --user enable --now`` (Linux, where a user manager answers).
    say : callable
        Prints one line.

    Returns
    -------
    int
        0, or 1 when ``enable`` was asked and could not be done.
    """
    _sudo_warning(t, say)
    if t.platform == "macos":
        assert t.log is not None            # target() gives every launchd agent its log
        data = launchd_plist(argv, t.log)
    else:
        data = systemd_unit(argv).encode("utf-8")
    old = _read(t)
    runs = shlex.join(argv)
    if old == data:
        say(f"unchanged: {t.path} ({t.kind}) already runs: {runs}")
    else:
        _make_private_dirs(t.path.parent)
        _write_private(t.path, data)
        say(f"{'updated' if old is not None else 'wrote'} {t.path} ({t.kind}); it runs: {runs}")
    if t.platform == "macos":
        assert t.log is not None
        _make_private_dirs(t.log.parent)
        if not t.log.exists():
            os.close(os.open(t.log, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        say(f"its log: {t.log}")
        say("to start it now (it starts at every login by itself):")
        say(f"    {_start_hint(t)}")
        if old is not None and old != data:
            say(f"if it runs already, restart it: {_stop_hint(t)} && {_start_hint(t)}")
        return 0
    say(f"its log: journalctl --user -u {UNIT_NAME}")
    if enable:
        return systemd.enable(say)
    say("to start it now and at every login, run:")
    say(f"    {_start_hint(t)}")
    if old is not None and old != data:
        say(f"if it runs already: systemctl --user daemon-reload && systemctl --user restart "
            f"{UNIT_NAME}")
    return 0


def uninstall(t: Target, say: Say) -> int:
    """Remove the unit or agent (and its enable link); say how to stop a running one.

    Parameters
    ----------
    t : Target
        From :func:`target`.
    say : callable
        Prints one line.
    """
    _sudo_warning(t, say)
    if _read(t) is None:
        say(f"nothing to remove: no {t.kind} at {t.path}")
        return 0
    if t.platform == "linux":
        systemd.unlink_wants(t.path)
    t.path.unlink()
    say(f"removed {t.path} ({t.kind}); it will not start at the next login")
    if t.platform == "linux" and systemd.is_active() is False:
        return 0
    say("if it runs now, stop it with:")
    say(f"    {_stop_hint(t)}")
    return 0


def status(t: Target, say: Say) -> int:
    """Say whether the unit or agent exists, what it runs and (Linux) whether it is active.

    Parameters
    ----------
    t : Target
        From :func:`target`.
    say : callable
        Prints one line.

    Returns
    -------
    int
        0 when it is installed, 1 when not.
    """
    if _read(t) is None:
        say(f"not installed: no {t.kind} at {t.path}; add it with: sampbridge service install")
        return 1
    argv = installed_command(t)
    say(f"installed: {t.path} ({t.kind})")
    if argv is None:
        say("runs: (cannot read its command; run 'sampbridge service install' again)")
    else:
        say(f"runs: {shlex.join(argv)}")
        if argv and not os.access(argv[0], os.X_OK):
            say(f"warning: {argv[0]} is no longer there, so it cannot start; run "
                "'sampbridge service install' again from the sampbridge you use now")
    if t.platform == "macos":
        say(f"its log: {t.log}")
        say(f"whether it runs: launchctl print gui/$(id -u)/{AGENT_LABEL}")
        return 0
    systemd.status_lines(t.path, say)
    return 0


def run(action: str, config: str | None = None, platform: str | None = None,
        enable: bool = False, home: Path | None = None, say: Say = print) -> int:
    """Run ``sampbridge service ACTION``; return the exit status.

    Parameters
    ----------
    action : {"install", "uninstall", "status"}
        What to do.
    config : str, optional
        ``--config`` for the service's ``run`` (install only); it is checked first.
    platform : {"linux", "macos"}, optional
        Write for this platform; default this machine's.
    enable : bool
        ``install --enable``: enable and start the unit now (Linux).
    home : Path, optional
        The user's home; default ``$HOME``.
    say : callable
        Prints one line; default :func:`print`.
    """
    try:
        t = target(platform or current_platform(), home)
        if action == "install":
            if config is not None:
                from ..config import load_config

                load_config(config)     # a ConfigError now beats a unit that cannot start
            return install(t, command(config), enable, say)
        if action == "uninstall":
            return uninstall(t, say)
        return status(t, say)
    except ServiceError as exc:
        print(f"sampbridge: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = exc.filename if exc.filename is not None else "the service file"
        print(f"sampbridge: error: cannot change {where}: {exc.strerror or 'failed'}",
              file=sys.stderr)
        return 1
