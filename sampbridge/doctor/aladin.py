"""Where Aladin looks for the hub: only ``${user.home}/.samp``.

Aladin ignores ``$SAMP_HUB``, and Java takes ``user.home`` from the account (``getpwuid``), not
from ``$HOME``. So an Aladin started without ``-Duser.home`` in a sandboxed ``$HOME`` (a
container, a test session, a desktop that sets ``$HOME`` elsewhere) reads the account's
``.samp`` and does not find a hub whose lockfile is ``$HOME/.samp``. This module finds running
Aladins (``/proc``, or ``ps`` where there is none), reads the ``user.home`` each was given, and
compares the lockfile it reads with the hub's.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .findings import Finding

__all__ = ["AladinProcess", "account_home", "find_processes", "finding", "parse_command"]

TOPIC = "Aladin's lockfile"
#: Seconds ``ps`` may take, where there is no /proc.
PS_TIMEOUT = 5.0


@dataclass(frozen=True)
class AladinProcess:
    """A running Aladin: its pid and the home that its Java uses.

    Attributes
    ----------
    pid : int
        Process id.
    user_home : Path
        Java's ``user.home``: from ``-Duser.home`` when given, else the account's home.
    explicit : bool
        True when ``-Duser.home`` was given (on the command line or in ``_JAVA_OPTIONS`` /
        ``JAVA_TOOL_OPTIONS``).
    """

    pid: int
    user_home: Path
    explicit: bool

    @property
    def lockfile(self) -> Path:
        """The only lockfile this Aladin reads."""
        return self.user_home / ".samp"


def account_home() -> Path:
    """Return the account's home (what Java's ``user.home`` is when not told otherwise)."""
    try:
        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:                 # no passwd entry (a bare container): Java falls back too
        return Path(os.path.expanduser("~"))


def _is_aladin(argv: list[str]) -> bool:
    if not argv or not os.path.basename(argv[0]).lower().startswith("java"):
        return False
    for a in argv[1:]:
        low = a.lower()
        if low == "cds.aladin.aladin" or (low.endswith(".jar") and "aladin" in
                                           os.path.basename(low)):
            return True
    return False


def _home_option(words: list[str]) -> str | None:
    home = None
    for w in words:
        if w.startswith("-Duser.home="):
            home = w[len("-Duser.home="):]
    return home


def parse_command(pid: int, argv: list[str], environ: dict[str, str] | None = None,
                  home: Path | None = None) -> AladinProcess | None:
    """Return the Aladin that command line ``argv`` runs, ``None`` when it is not Aladin.

    Java reads ``JAVA_TOOL_OPTIONS`` first, then the command line (up to the jar or main
    class), then ``_JAVA_OPTIONS``; the last ``-Duser.home`` wins.

    Parameters
    ----------
    pid : int
        Its process id.
    argv : list of str
        Its command line.
    environ : dict, optional
        Its environment, when readable.
    home : Path, optional
        The account's home; default :func:`account_home`.
    """
    if not _is_aladin(argv):
        return None
    env = environ or {}
    jvm: list[str] = []
    for w in argv[1:]:
        if w in ("-jar", "-cp", "-classpath") or not w.startswith("-"):
            break
        jvm.append(w)
    found = None
    for words in (shlex.split(env.get("JAVA_TOOL_OPTIONS", "")), jvm,
                  shlex.split(env.get("_JAVA_OPTIONS", ""))):
        found = _home_option(words) or found
    if found:
        return AladinProcess(pid, Path(found), True)
    return AladinProcess(pid, home or account_home(), False)


def _from_proc(home: Path) -> list[AladinProcess]:
    out = []
    me = os.getuid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != me:
                continue
            raw = Path(entry.path, "cmdline").read_bytes()
            argv = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
            if not _is_aladin(argv):
                continue
            try:
                env_raw = Path(entry.path, "environ").read_bytes()
                env = dict(kv.decode("utf-8", "replace").partition("=")[::2]
                           for kv in env_raw.split(b"\0") if b"=" in kv)
            except OSError:
                env = {}
        except OSError:                 # it ended meanwhile
            continue
        p = parse_command(int(entry.name), argv, env, home)
        if p is not None:
            out.append(p)
    return out


def _from_ps(home: Path) -> list[AladinProcess]:
    exe = shutil.which("ps")
    if exe is None:
        return []
    try:
        done = subprocess.run([exe, "-x", "-U", str(os.getuid()), "-ww", "-o", "pid=,command="],
                              capture_output=True, text=True, timeout=PS_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    out = []
    for line in done.stdout.splitlines():
        pid, _, cmd = line.strip().partition(" ")
        try:
            p = parse_command(int(pid), cmd.split(), None, home)
        except ValueError:
            continue
        if p is not None:
            out.append(p)
    return out


def find_processes(home: Path | None = None) -> list[AladinProcess]:
    """Return this user's running Aladins.

    Parameters
    ----------
    home : Path, optional
        The account's home; default :func:`account_home`.
    """
    home = home or account_home()
    return _from_proc(home) if os.path.isdir("/proc/self") else _from_ps(home)


def _same(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _restart_fix(hub_lock: Path) -> str:
    if hub_lock.name == ".samp":
        return (f"restart Aladin as: java -Duser.home={shlex.quote(str(hub_lock.parent))} "
                "-jar aladin.jar")
    return (f"Aladin can only read a lockfile called .samp: run a hub whose lockfile is "
            f"~/.samp (unset SAMP_HUB, now {hub_lock})")


def finding(hub_lock: Path | None, registered: bool, procs: list[AladinProcess],
            home: Path) -> Finding | None:
    """Say whether Aladin finds the hub; ``None`` when there is no hub to find.

    Parameters
    ----------
    hub_lock : Path or None
        The lockfile of the running hub; ``None`` when no hub runs.
    registered : bool
        Whether an Aladin is registered with that hub.
    procs : list of AladinProcess
        The running Aladins.
    home : Path
        The account's home, where an Aladin started without ``-Duser.home`` looks.
    """
    if hub_lock is None:
        return None
    if registered:
        return Finding("OK", TOPIC, f"Aladin is registered, so it reads the hub's lockfile "
                                    f"{hub_lock}")
    for p in procs:
        if not _same(p.lockfile, hub_lock):
            how = "its -Duser.home" if p.explicit else \
                "it was started without -Duser.home, so Java's home is the account's"
            return Finding("FAIL", TOPIC,
                           f"the running Aladin (pid {p.pid}) reads only {p.lockfile} ({how}), "
                           f"but the hub's lockfile is {hub_lock}: it will not find this hub",
                           _restart_fix(hub_lock))
    if procs:
        return Finding("WARN", TOPIC,
                       f"Aladin (pid {procs[0].pid}) reads the hub's lockfile {hub_lock} but "
                       "is not registered: it is still starting, or it runs a hub of its own",
                       "wait a few seconds; if it stays so, quit Aladin and start it again "
                       "after the hub")
    expected = home / ".samp"
    if not _same(expected, hub_lock):
        return Finding("WARN", TOPIC,
                       f"an Aladin started without -Duser.home reads only {expected}, but the "
                       f"hub's lockfile is {hub_lock}: it would not find this hub",
                       _restart_fix(hub_lock).replace("restart Aladin", "start Aladin"))
    return Finding("OK", TOPIC, f"an Aladin started now reads {expected}, the hub's lockfile")
