"""The machine side of ``sampbridge doctor``: the services, the mirror and the folders.

Each configured service gets one tiny query with short timeouts and no retry (a cone of
0.36 arcsec, a SIAP search of 0.001 deg, ``SELECT TOP 1``), run side by side; a failure is
the CSC layer's own one-sentence error. The mirror is judged from its manifest (no file is
opened). A folder is private when no group or other bit is set on it.
"""

from __future__ import annotations

import importlib
import json
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import SampBridgeError
from .findings import Finding

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["check_folders", "check_mirror", "check_services", "folder_finding",
           "mirror_finding", "timed"]

#: Where the tiny queries look (rho Ophiuchi, a field the CSC covers); rows do not matter.
RA, DEC = 246.7925, -24.32027
#: A service slower than this (seconds) for a tiny query is a WARN: clicks will wait.
SLOW = 3.0
#: Size cap of a tiny query's answer.
TINY_BYTES = 5_000_000


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def timed(topic: str, key: str, url: str, query: Callable[[], object],
          timeout: float) -> Finding:
    """Run ``query`` on a thread and say how long it took, or why it failed.

    Parameters
    ----------
    topic : str
        The finding's topic (``cone service``).
    key : str
        The setting that holds the URL (``services.cone``).
    url : str
        The service's URL, for the text.
    query : callable
        Runs the tiny query; raises a :class:`~sampbridge.errors.SampBridgeError` on failure.
    timeout : float
        Seconds the query may take in all (its HTTP timeouts are set from the same value).
    """
    outcome: list[BaseException | float] = []

    def work() -> None:
        t0 = time.perf_counter()
        try:
            query()
            outcome.append(time.perf_counter() - t0)
        except BaseException as exc:  # every failure is reported, never raised
            outcome.append(exc)

    t = threading.Thread(target=work, name=f"doctor-{topic}", daemon=True)
    t.start()
    t.join(timeout * 2 + 2)             # connect + read timeouts, and a margin
    where = f"check your network, or {key} in your configuration ({url})"
    if not outcome:
        return Finding("FAIL", topic, f"{_host(url)} gave no answer within {timeout * 2:g} s",
                       where)
    got = outcome[0]
    if isinstance(got, SampBridgeError):
        return Finding("FAIL", topic, str(got), where)
    if isinstance(got, BaseException):
        return Finding("FAIL", topic, f"the query to {_host(url)} failed "
                                      f"({type(got).__name__})", where)
    ms = got * 1000
    if got > SLOW:
        return Finding("WARN", topic, f"{_host(url)} answered a tiny query in {ms:,.0f} ms: "
                                      "slow, clicks will wait", "check your network")
    return Finding("OK", topic, f"{_host(url)} answered a tiny query in {ms:,.0f} ms")


def check_services(cfg: Config, timeout: float = 10.0) -> list[Finding]:
    """Time a tiny query on each configured service (cone, SIAP, TAP), side by side.

    Parameters
    ----------
    cfg : Config
        Gives ``services.*``, ``tap.table`` and ``http.compress``.
    timeout : float
        Connect and read timeout of each request, in seconds.
    """
    from ..csc.cone import ConeService
    from ..csc.http import make_session
    from ..csc.siap import SiapService
    from ..csc.tap import TapClient

    session = make_session(connect_timeout=min(timeout, cfg["http.connect_timeout"]),
                           read_timeout=timeout, compress=cfg["http.compress"], retries=0)
    cone = ConeService(cfg["services.cone"], session, TINY_BYTES, retries=0)
    siap = SiapService(cfg["services.siap"], session, TINY_BYTES, retries=0)
    tap = TapClient(cfg["services.tap"], session, TINY_BYTES)
    adql = f"SELECT TOP 1 * FROM {cfg['tap.table']}"
    jobs: list[tuple[str, str, str, Callable[[], object]]] = [
        ("cone service", "services.cone", cone.url,
         lambda: cone.fetch_body(RA, DEC, 1e-4, verb=1)),
        ("SIAP service", "services.siap", siap.url, lambda: siap.search(RA, DEC, 0.001)),
        ("TAP service", "services.tap", tap.url,
         lambda: tap.sync_body(adql, maxrec=1, what="TAP query")),
    ]
    out: list[Finding | None] = [None] * len(jobs)

    def one(i: int) -> None:
        out[i] = timed(*jobs[i], timeout)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    session.close()
    return [f for f in out if f is not None]


# -- the mirror ----------------------------------------------------------------------------
def _mirror_pkg() -> Any:
    try:
        return importlib.import_module("sampbridge.mirror")
    except ImportError:
        return None


def mirror_finding(release: str, status: dict[str, Any], others: list[str],
                   wanted: str = "auto") -> Finding:
    """Judge the mirror's state (``sampbridge.mirror.status``) against the configured release.

    Parameters
    ----------
    release : str
        The configured release (``release``).
    status : dict
        ``state`` (``ready``, ``absent``, ``other``, ``old``, ``corrupt``), ``reason``,
        ``rows``, ``built_at``, ``building``: what ``mirror status --json`` gives.
    others : list of str
        Releases of the other mirrors found beside it.
    wanted : str
        ``cone.source``: with ``mirror``, a mirror that cannot answer is a ``FAIL``.
    """
    topic = "mirror"
    state = status.get("state")
    if state == "ready":
        rows = status.get("rows")
        extra = f", {rows:,} rows" if isinstance(rows, int) else ""
        extra += f", built {status['built_at']}" if status.get("built_at") else ""
        return Finding("OK", topic, f"a mirror of release {release}{extra} matches the "
                                    "configured services")
    level = "FAIL" if wanted == "mirror" else "WARN"
    build = f"sampbridge mirror build (release {release})"
    if state != "absent":
        return Finding(level, topic, f"the mirror is not used: {status.get('reason') or state}",
                       build)
    building = status.get("building")
    if building:
        return Finding(level, topic, f"a build of release {release} stopped after "
                                     f"{building.get('slices', 0)} slices: the mirror is not "
                                     "used yet", f"{build} resumes it")
    if others:
        return Finding(level, topic, f"the mirror holds release {', '.join(others)}, not the "
                                     f"configured {release}: it is not used, so clicks go to "
                                     "the service", build)
    if wanted == "mirror":
        return Finding("FAIL", topic, "cone.source is mirror, but there is no mirror", build)
    return Finding("INFO", topic, "no mirror: cones go to the service (sampbridge mirror "
                                  "build makes one for offline and fast clicks)")


def _mirror_root(cfg: Config, pkg: Any) -> Path | None:
    raw = cfg.values.get("mirror.dir")
    if raw:
        return Path(os.path.expandvars(os.path.expanduser(str(raw))))
    root = getattr(pkg, "default_root", None)
    return Path(root()) if callable(root) else None


def _other_releases(root: Path, release: str) -> list[str]:
    """Return the releases of the finished mirrors under ``root`` other than ``release``."""
    found = []
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return []
    for folder in folders:
        try:
            got = json.loads((folder / "manifest.json").read_text()).get("release")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(got, str) and got != release:
            found.append(got)
    return found


def check_mirror(cfg: Config) -> list[Finding]:
    """Say whether a mirror of the configured release and services is there to use.

    Parameters
    ----------
    cfg : Config
        Gives ``release``, ``services.*``, ``cone.source`` and ``mirror.dir``.
    """
    pkg = _mirror_pkg()
    status = getattr(pkg, "status", None)
    root = _mirror_root(cfg, pkg) if pkg is not None else None
    if root is None or not callable(status):
        return [Finding("INFO", "mirror", "no mirror (this sampbridge has none)")]
    services = {k: cfg[f"services.{k}"] for k in ("tap", "cone")}
    try:
        st = status(root, cfg["release"], services)
    except SampBridgeError as exc:
        return [Finding("WARN", "mirror", f"cannot check the mirror: {exc}",
                        "sampbridge mirror status says more")]
    return [mirror_finding(cfg["release"], st, _other_releases(root, cfg["release"]),
                           str(cfg.values.get("cone.source", "auto")))]


# -- the folders ---------------------------------------------------------------------------
def folder_finding(label: str, path: Path, *, quiet_if_absent: bool = False) -> Finding | None:
    """Say whether a folder of sampbridge's is private; ``WARN`` when others may read it.

    Parameters
    ----------
    label : str
        What the folder is (``results folder``).
    path : Path
        The folder.
    quiet_if_absent : bool
        Say nothing about a folder that does not exist (a sub-folder made later).
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        if quiet_if_absent:
            return None
        return Finding("OK", label, f"{path} does not exist yet; sampbridge creates it "
                                    "private (0700)")
    except OSError as exc:
        return Finding("FAIL", label, f"cannot look at {path} ({exc.strerror})",
                       "check the permissions of its parent folders")
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        return Finding("FAIL", label, f"{path} is not a folder", "move it away, or set "
                                                                  "another folder")
    if st.st_uid != os.getuid():
        return Finding("WARN", label, f"{path} belongs to another user (uid {st.st_uid})",
                       "use a folder of your own")
    if not os.access(path, os.W_OK | os.X_OK):
        return Finding("FAIL", label, f"sampbridge cannot write to {path} (mode {mode:04o})",
                       f"chmod 700 {path}")
    if mode & 0o077:
        who = "every local user" if mode & 0o007 else "your group"
        return Finding("WARN", label, f"{path} is open to {who} (mode {mode:04o}): they can "
                                      "read what is there", f"chmod 700 {path}")
    return Finding("OK", label, f"{path} is private ({mode:04o})")


def check_folders(cfg: Config) -> list[Finding]:
    """Check the results folder, the query folder (and its done/failed) and the mirror's.

    Parameters
    ----------
    cfg : Config
        Gives ``results.dir``, ``folder.enabled`` and ``folder.dir``.
    """
    out = [folder_finding("results folder", cfg.results_dir)]
    if cfg["folder.enabled"]:
        q = Path(os.path.expandvars(os.path.expanduser(cfg["folder.dir"])))
        out.append(folder_finding("query folder", q))
        for sub in ("done", "failed"):
            out.append(folder_finding(f"query folder's {sub}", q / sub, quiet_if_absent=True))
    pkg = _mirror_pkg()
    root = _mirror_root(cfg, pkg) if pkg is not None else None
    if root is not None:
        out.append(folder_finding("mirror folder", root, quiet_if_absent=True))
    return [f for f in out if f is not None]
