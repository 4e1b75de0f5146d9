"""The SAMP side of ``sampbridge doctor``: the hub, sampbridge, TOPCAT, DS9 and Aladin.

:func:`probe` looks (the lockfile, a ping, a short registration that subscribes to nothing a
viewer counts); the other functions only judge what it saw, so that the tests can feed them
any desktop.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..samp import ClientInfo, HubConnection
from ..samp.connection import find_running_hub, lockfile_path
from . import aladin
from .findings import Finding

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["HubView", "check", "daemon_finding", "ds9_finding", "hub_finding", "probe",
           "subscribes", "viewer_findings"]

#: The viewers checked, as (name shown, samp.name pattern, what it is for).
VIEWERS = (("TOPCAT", "topcat*", "tables"),
           ("DS9", "*ds9*", "images and clicks"),
           ("Aladin", "aladin*", "images and clicks"))
DS9_NEEDS = ("image.load.fits", "table.load.fits")
START_HUB = "start TOPCAT or Aladin, or 'sampbridge run' (each starts a hub when none runs)"


@dataclass
class HubView:
    """What :func:`probe` saw of the hub.

    Attributes
    ----------
    lockfile : Path
        The standard-profile lockfile (``$SAMP_HUB`` or ``~/.samp``).
    exists : bool
        Whether that file exists.
    url : str
        The hub's XML-RPC address from it (``""`` when unknown).
    live : bool
        Whether that hub answered a ping.
    registered : bool
        Whether the doctor could register with it.
    clients : list of ClientInfo
        The other clients, with their subscriptions.
    """

    lockfile: Path
    exists: bool = False
    url: str = ""
    live: bool = False
    registered: bool = False
    clients: list[ClientInfo] = field(default_factory=list)


def _lockfile_url(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "samp.hub.xmlrpc.url":
            return value.strip().replace("\\", "")
    return ""


def probe(timeout: float = 5.0) -> HubView:
    """Find the hub, register for a moment, and list the other clients.

    Parameters
    ----------
    timeout : float
        Seconds the ping, the registration and each hub call may take.
    """
    lock = lockfile_path()
    view = HubView(lock, lock.exists(), _lockfile_url(lock))
    params = find_running_hub(timeout)
    if params is None:
        return view
    view.live = True
    view.url = params.get("samp.hub.xmlrpc.url", view.url).replace("\\", "")
    conn = HubConnection("sampbridge-doctor", "sampbridge doctor: checks this desktop",
                         __version__, {}, mode="connect", ping_interval=min(timeout, 2.0),
                         call_timeout=timeout)
    try:
        conn.start(wait=timeout)
        view.registered = conn.connected
        if view.registered:
            view.clients = conn.clients()
    finally:
        conn.stop()
    return view


def subscribes(client: ClientInfo, mtype: str) -> bool:
    """Tell whether ``client`` subscribes to ``mtype`` (SAMP wildcards ``*``, ``x.*`` count)."""
    for pattern in client.subscriptions:
        if pattern == mtype or pattern == "*" or (
                pattern.endswith(".*") and mtype.startswith(pattern[:-1])):
            return True
    return False


def hub_finding(view: HubView) -> Finding:
    """Say whether a hub runs, and which lockfile names it.

    Parameters
    ----------
    view : HubView
        From :func:`probe`.
    """
    via = " ($SAMP_HUB)" if os.environ.get("SAMP_HUB") else ""
    if not view.exists:
        return Finding("FAIL", "hub", f"no SAMP hub runs: there is no lockfile {view.lockfile}"
                                      f"{via}", START_HUB)
    if not view.live:
        at = f" at {view.url}" if view.url else ""
        return Finding("FAIL", "hub", f"the hub{at} named in {view.lockfile}{via} does not "
                                      "answer: a hub that stopped left it behind",
                       f"remove {view.lockfile}, then {START_HUB}")
    if not view.registered:
        return Finding("FAIL", "hub", f"the hub at {view.url} ({view.lockfile}) answers a ping "
                                      "but would not register a client",
                       "restart the hub (quit the program that runs it)")
    return Finding("OK", "hub", f"a hub answers at {view.url}, lockfile {view.lockfile}{via}")


def _named(clients: Iterable[ClientInfo], pattern: str) -> list[ClientInfo]:
    return [c for c in clients if fnmatch.fnmatchcase(c.name.lower(), pattern)]


def _names(clients: Iterable[ClientInfo]) -> str:
    return ", ".join(sorted({c.name for c in clients}))


def daemon_finding(clients: list[ClientInfo]) -> Finding:
    """Say whether sampbridge is registered and listens to clicks.

    Parameters
    ----------
    clients : list of ClientInfo
        The clients on the hub.
    """
    mine = [c for c in clients if c.name == "sampbridge"]
    if not mine:
        return Finding("FAIL", "sampbridge", "sampbridge is not registered with this hub, so "
                                             "clicks go nowhere",
                       "start it: sampbridge run (at every login: sampbridge service install)")
    ids = ", ".join(c.id for c in mine)
    if len(mine) > 1:
        return Finding("WARN", "sampbridge", f"{len(mine)} sampbridge clients are registered "
                                             f"({ids}): each click runs twice",
                       "stop all but one (sampbridge service status tells which one starts "
                       "at login)")
    if not subscribes(mine[0], "coord.pointAt.sky"):
        return Finding("WARN", "sampbridge", f"sampbridge ({ids}) is registered but does not "
                                             "listen to clicks",
                       "set pointat.enabled: true in its configuration and restart it")
    return Finding("OK", "sampbridge", f"sampbridge is registered ({ids}) and listens to "
                                       "clicks")


def viewer_findings(clients: list[ClientInfo]) -> list[Finding]:
    """Say which of TOPCAT, DS9 and Aladin are registered (``INFO`` for the absent).

    Parameters
    ----------
    clients : list of ClientInfo
        The clients on the hub.
    """
    out = []
    for shown, pattern, role in VIEWERS:
        found = _named(clients, pattern)
        if found:
            out.append(Finding("OK", shown, "registered as " + ", ".join(
                f"{c.name} ({c.id})" for c in found)))
        else:
            out.append(Finding("INFO", shown, f"not registered with this hub (it shows "
                                              f"{role}; start it if you use it)"))
    return out


def ds9_finding(clients: list[ClientInfo]) -> Finding | None:
    """Say whether DS9 will broadcast a click; ``None`` when DS9 is not registered.

    DS9 (``SAMPSendCoordPointAtSkyCmd`` in its ``library/samp.tcl``) sends
    ``coord.pointAt.sky`` only while at least one *other* client subscribes to
    ``image.load.fits`` and one to ``table.load.fits`` (not ``table.load.votable``).

    Parameters
    ----------
    clients : list of ClientInfo
        The clients on the hub (the doctor itself is not among them).
    """
    ds9 = _named(clients, "*ds9*")
    if not ds9:
        return None
    others = [c for c in clients if c.id not in {d.id for d in ds9}]
    takers = {mtype: [c for c in others if subscribes(c, mtype)] for mtype in DS9_NEEDS}
    missing = [mtype for mtype in DS9_NEEDS if not takers[mtype]]
    if not missing:
        said = "; ".join(f"{m} by {_names(takers[m])}" for m in DS9_NEEDS)
        return Finding("OK", "DS9 clicks", f"DS9 broadcasts clicks: other clients take {said}")
    fixes = []
    if "image.load.fits" in missing:
        fixes.append("start sampbridge or Aladin (they take image.load.fits)")
    if "table.load.fits" in missing:
        fixes.append("start TOPCAT or Aladin, or set tables.subscribe: true for sampbridge "
                     "(they take table.load.fits)")
    return Finding("FAIL", "DS9 clicks",
                   f"DS9 does not broadcast clicks: no other client subscribes to "
                   f"{' or '.join(missing)}, and DS9 sends coord.pointAt.sky only while "
                   "others take both image.load.fits and table.load.fits",
                   "; ".join(fixes))


def check(cfg: Config, timeout: float = 5.0, view: HubView | None = None) -> list[Finding]:
    """Return the SAMP findings: hub, sampbridge, viewers, DS9's rule, Aladin's lockfile.

    Parameters
    ----------
    cfg : Config
        The configuration (not read yet; kept for checks that will need it).
    timeout : float
        Seconds each hub call may take.
    view : HubView, optional
        What was seen; default a fresh :func:`probe`.
    """
    view = view if view is not None else probe(timeout)
    out = [hub_finding(view)]
    usable = view.live and view.registered
    if usable:
        out.append(daemon_finding(view.clients))
        out += viewer_findings(view.clients)
        ds9 = ds9_finding(view.clients)
        if ds9 is not None:
            out.append(ds9)
    home = aladin.account_home()
    found = aladin.finding(view.lockfile if usable else None,
                           bool(_named(view.clients, "aladin*")), aladin.find_processes(home),
                           home)
    if found is not None:
        out.append(found)
    return out
