"""The Linux room of ``sampbridge service``: the systemd user unit and ``systemctl --user``.

Only ``systemctl --user`` is ever run, with a timeout, and only when a user manager answers.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

__all__ = ["CONFIG_EXIT", "SYSTEMCTL_TIMEOUT", "UNIT_NAME", "enable", "exec_start",
           "first_line", "start_hint", "stop_hint", "systemctl", "systemd_unit",
           "unlink_wants", "user_systemd"]

UNIT_NAME = "sampbridge.service"
#: Seconds any ``systemctl --user`` call may take.
SYSTEMCTL_TIMEOUT = 10.0
#: Exit status of ``sampbridge run`` on a bad configuration: restarting cannot mend it.
CONFIG_EXIT = 2

Say = Callable[[str], None]


def _unit_word(word: str) -> str:
    """Quote one ExecStart word for systemd (``%`` and ``$`` are its specifiers)."""
    word = word.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_./:+=,@%$-]+", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(argv: list[str]) -> str:
    """Return the text of the systemd user unit that runs ``argv``.

    Parameters
    ----------
    argv : list of str
        The command line, from :func:`sampbridge.service.command`.
    """
    return "\n".join([
        "# Written by 'sampbridge service install'; remove with 'sampbridge service uninstall'.",
        "[Unit]",
        "Description=sampbridge: Chandra Source Catalog results in TOPCAT, DS9 and Aladin "
        "over SAMP",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(_unit_word(w) for w in argv),
        "Restart=on-failure",
        "RestartSec=5",
        f"# exit status {CONFIG_EXIT} is a bad configuration: fix it, then start the unit again",
        f"RestartPreventExitStatus={CONFIG_EXIT}",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ])


def exec_start(raw: bytes) -> list[str] | None:
    """Return the command line of a unit's ``ExecStart=``, ``None`` if there is none readable.

    Parameters
    ----------
    raw : bytes
        The unit file.
    """
    for line in raw.decode("utf-8", "replace").splitlines():
        if line.startswith("ExecStart="):
            value = line[len("ExecStart="):].replace("%%", "%").replace("$$", "$")
            try:
                return shlex.split(value)
            except ValueError:
                return None
    return None


def systemctl(*args: str) -> subprocess.CompletedProcess | None:
    """Run ``systemctl --user ARGS``; ``None`` when there is no systemctl or it hangs."""
    exe = shutil.which("systemctl")
    if exe is None:
        return None
    try:
        return subprocess.run([exe, "--user", *args], capture_output=True, text=True,
                              timeout=SYSTEMCTL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def user_systemd() -> bool:
    """Return whether a systemd user manager answers ``systemctl --user`` here."""
    done = systemctl("show-environment")
    return done is not None and done.returncode == 0


def first_line(done: subprocess.CompletedProcess) -> str:
    """Return the first line that a failed ``systemctl`` printed, or its exit status."""
    text = (done.stderr or done.stdout or "").strip()
    return text.splitlines()[0] if text else f"exit status {done.returncode}"


def start_hint() -> str:
    """Return the line that enables and starts the unit."""
    return f"systemctl --user enable --now {UNIT_NAME}"


def stop_hint() -> str:
    """Return the line that stops a running unit after its file is gone."""
    return f"systemctl --user stop {UNIT_NAME} && systemctl --user daemon-reload"


def enable(say: Say) -> int:
    """Reload the user manager and ``enable --now`` the unit; 1 (said why) when it cannot.

    Parameters
    ----------
    say : callable
        Prints one line.
    """
    if not user_systemd():
        say("systemctl --user does not answer here (no systemd user session), so nothing was "
            "started; in your desktop session run:")
        say(f"    {start_hint()}")
        return 1
    for args in (("daemon-reload",), ("enable", "--now", UNIT_NAME)):
        done = systemctl(*args)
        if done is None or done.returncode != 0:
            why = first_line(done) if done is not None else "it did not answer"
            say(f"systemctl --user {' '.join(args)} failed: {why}")
            return 1
    say(f"enabled and started: systemctl --user enable --now {UNIT_NAME}")
    return 0


def unlink_wants(unit: Path) -> None:
    """Remove ``default.target.wants/sampbridge.service`` when it points at ``unit``.

    Parameters
    ----------
    unit : Path
        The unit file, whose folder holds ``default.target.wants``.
    """
    link = unit.parent / "default.target.wants" / UNIT_NAME
    if link.is_symlink() and Path(os.path.realpath(link)) == Path(os.path.realpath(unit)):
        link.unlink()


def status_lines(unit: Path, say: Say) -> None:
    """Say whether the unit starts at login and whether it runs now.

    Parameters
    ----------
    unit : Path
        The unit file.
    say : callable
        Prints one line.
    """
    linked = (unit.parent / "default.target.wants" / UNIT_NAME).is_symlink()
    if not user_systemd():
        say(f"starts at login: {'yes' if linked else 'no'}; whether it runs now is unknown "
            "(systemctl --user does not answer here)")
        return
    enabled = systemctl("is-enabled", UNIT_NAME)
    active = systemctl("is-active", UNIT_NAME)
    say(f"starts at login: {enabled.stdout.strip() if enabled else 'unknown'}; "
        f"now: {active.stdout.strip() if active else 'unknown'}")


def is_active() -> bool | None:
    """Return whether the unit runs now, ``None`` when no user manager answers."""
    if not user_systemd():
        return None
    active = systemctl("is-active", UNIT_NAME)
    return active is not None and active.stdout.strip() == "active"
