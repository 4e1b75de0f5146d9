"""Real SAMP peers for sampbridge's integration tests: Xvfb + hub + TOPCAT / DS9 / Aladin.

Typical use (see tests/test_peers_smoke.py, which puts tests/ on sys.path first)::

    from peers.harness import PeerStack, require_peers

    require_peers("topcat", "ds9", hub="jsamp")  # skip (or fail when $CI is set) if missing
    with PeerStack(tmp_dir, hub="jsamp") as st:  # Xvfb + hub; peers start only on demand
        st.start_topcat(); st.start_ds9(); st.start_aladin()
        daemon = subprocess.Popen([sys.executable, "-m", "sampbridge"], env=st.env)
        st.call("topcat", "table.load.votable", {"url": url, "table-id": "t1"})
        rows = st.topcat_table_rows()

Install the peers with ``sudo bash tests/peers/install.sh`` (Debian 12 packages).

Isolation (each rule was checked against the Debian 12 packages; see tests/peers/README.md):

* one private directory per session: ``<root>/home`` is HOME for every process and
  ``-Duser.home`` for every JVM (Java ignores $HOME). The hub lockfile is ``<home>/.samp`` and
  SAMP_HUB=std-lockurl:file://<home>/.samp. Aladin 12 ignores SAMP_HUB and only reads
  ``${user.home}/.samp``, so that is the only layout every peer agrees on. The real ``~/.samp``
  is never read or written.
* DS9: XPA_METHOD=local (unix sockets in <home>/xpa, no TCP), TMP=<root>/tmp (DS9 ignores
  TMPDIR), ``-port 0 -unix none -fifo none`` (no IIS server).
* Xvfb picks a free display itself (``-displayfd``), ``-nolisten tcp``.
* Every child runs in its own session (process group == its PID) and is stopped by PID /
  process group. DS9 is asked to ``exit`` over XPA first: on SIGTERM it does not unregister.
* Every hub RPC made from here has a socket timeout, and every SAMP call a finite timeout.
* All SAMP traffic is advertised on 127.0.0.1 (the pyvo hub and pyvo clients also bind there;
  JSAMP, TOPCAT, Aladin and DS9 bind their sockets to the wildcard address: run the tests
  under ``unshare -n`` if that matters). TOPCAT and Aladin get a dead HTTP/FTP proxy on
  127.0.0.1:9 for every non-local host, so their start-up look-ups never leave the machine.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import itertools
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import xmlrpc.client
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyvo.samp as samp
from pyvo.samp.hub_proxy import SAMPHubProxy
from pyvo.samp.utils import SAMPXXEServerProxy, ServerProxyPool, get_safe_parser

# Without this, every pyvo hub / client start does urlopen("http://google.com", timeout=1).
samp.conf.use_internet = False

HERE = Path(__file__).resolve().parent
INSTALL_COMMAND = "sudo bash tests/peers/install.sh"
DS9_INIT_TCL = HERE / "ds9_init.tcl"

JAVA = "java"
JSAMP_JAR = "/usr/share/java/jsamp.jar"
TOPCAT_JAR = "/usr/share/java/starlink-topcat.jar"
ALADIN_JAR = "/usr/share/java/aladin.jar"

#: samp.name each peer registers with, and the MTypes it must be subscribed to before it
#: counts as ready (on top of answering samp.app.ping).
PEERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "topcat": ("topcat", ("table.load.votable", "table.get.stil")),
    "ds9": ("SAOImageDS9", ("image.load.fits", "table.load.votable", "ds9.get")),
    "aladin": ("Aladin", ("image.load.fits", "table.load.votable", "script.aladin.send")),
}

#: How long to wait for things, in seconds. Peers are ready in 1-3 s on an idle 2-CPU box;
#: the margins are for a loaded CI machine.
START_TIMEOUT = 60.0
HUB_TIMEOUT = 30.0
CALL_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
#: Socket timeout for every XML-RPC request a harness client makes to the hub. It bounds
#: call_and_wait too, so SAMP call timeouts must stay below it.
RPC_SOCKET_TIMEOUT = 120.0

# Executables / files each component needs (for require_peers / missing_requirements).
_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "xvfb": ("Xvfb",),
    "jsamp": (JAVA, JSAMP_JAR),
    "python": (),
    "topcat": (JAVA, TOPCAT_JAR),
    "ds9": ("ds9", "xpaset", "xpaget"),
    "aladin": (JAVA, ALADIN_JAR),
    "xdotool": ("xdotool",),
    "screenshot": ("import",),
}
_GUI = {"topcat", "ds9", "aladin", "xdotool", "screenshot"}


class PeerError(RuntimeError):
    """A peer or the hub failed to start, answer or stop (message includes its log tail)."""


class SampCallError(PeerError):
    """A SAMP call was answered with samp.error (or another non-ok status)."""

    def __init__(self, message: str, response: dict | None = None):
        super().__init__(message)
        self.response = response or {}


# ----------------------------------------------------------------------------- requirements
def missing_requirements(*names: str, hub: str | None = None) -> list[str]:
    """Return what is missing on this machine for the given components.

    ``names`` are peers/tools: "topcat", "ds9", "aladin", "xdotool", "screenshot"; ``hub`` is
    "jsamp" or "python". Xvfb is implied by any GUI component.
    """
    wanted = list(names) + ([hub] if hub else [])
    if any(n in _GUI for n in wanted):
        wanted.append("xvfb")
    missing: list[str] = []
    for name in wanted:
        if name not in _REQUIREMENTS:
            raise ValueError(f"unknown peer/tool {name!r}; known: {sorted(_REQUIREMENTS)}")
        for req in _REQUIREMENTS[name]:
            ok = os.path.exists(req) if req.startswith("/") else shutil.which(req) is not None
            if not ok and req not in missing:
                missing.append(req)
    if "ds9" in wanted and shutil.which("tclsh"):
        r = subprocess.run(
            ["tclsh"],
            input="puts [package require xml]\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        if r.returncode != 0 and "tclxml" not in missing:
            missing.append("tclxml (tcl package 'xml')")
    return missing


def require_peers(*names: str, hub: str | None = None) -> None:
    """Skip the calling test if a needed peer is not installed, or fail when $CI is set.

    Call it from a test or fixture (it imports pytest lazily; the harness itself does not
    depend on pytest).
    """
    missing = missing_requirements(*names, hub=hub)
    if not missing:
        return
    import pytest

    msg = (
        f"real SAMP peers not installed (missing: {', '.join(missing)}); "
        f"install them with `{INSTALL_COMMAND}`"
    )
    if os.environ.get("CI"):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


# ----------------------------------------------------------------------------- small helpers
def _deadline_loop(timeout: float, step: float = 0.1) -> Iterable[float]:
    """Yield the time left until ``timeout`` has elapsed, sleeping ``step`` between yields."""
    end = time.monotonic() + timeout
    first = True
    while True:
        left = end - time.monotonic()
        if not first:
            if left <= 0:
                return
            time.sleep(min(step, left))
            left = end - time.monotonic()
        first = False
        yield max(left, 0.0)


def _tail(path: Path | str, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"<no log: {e}>"
    return "\n".join(data.splitlines()[-lines:])


def read_lockfile(path: str | os.PathLike) -> dict[str, str]:
    """Parse a SAMP standard-profile lockfile (``key=value`` lines) into a dict."""
    out: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out[key.strip()] = value.strip().replace("\\", "")  # JSAMP escapes ':' as '\:'
    return out


def file_url(path: str | os.PathLike) -> str:
    """Return the ``file:///abs/path`` URL of a local file."""
    return Path(path).resolve().as_uri()


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch_url(url: str, timeout: float = 30.0) -> bytes:
    """GET a (loopback or file) URL, never through a proxy."""
    with _NO_PROXY_OPENER.open(url, timeout=timeout) as r:
        return r.read()


def _group_members(pgid: int) -> list[tuple[int, str, str]]:
    """Processes in process group ``pgid`` as (pid, state, comm), read from /proc."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces/parens -> split at last ')'
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            out.append((int(d), fields[0], comm))
    return out


# ----------------------------------------------------------------------------- SAMP clients
class _TimeoutTransport(xmlrpc.client.Transport):
    """xmlrpc transport with a socket timeout and pyvo's XXE-safe parser."""

    def __init__(self, timeout: float):
        super().__init__()
        self._timeout = timeout

    def make_connection(self, host):
        conn = super().make_connection(host)
        conn.timeout = self._timeout
        return conn

    def getparser(self):
        return get_safe_parser(self._use_datetime, self._use_builtin_types)


class _TimeoutHubProxy(SAMPHubProxy):
    """pyvo's SAMPHubProxy, but every request to the hub has a socket timeout."""

    def __init__(self, timeout: float):
        super().__init__()
        self._rpc_timeout = timeout

    def connect(self, hub=None, hub_params=None, pool_size=8):
        if hub_params is None:
            raise ValueError("harness clients always connect with explicit hub_params")
        self._connected = False
        self.lockfile = {}
        url = hub_params["samp.hub.xmlrpc.url"].replace("\\", "")
        timeout = self._rpc_timeout

        def make_proxy(uri, **kw):
            return SAMPXXEServerProxy(uri, transport=_TimeoutTransport(timeout), **kw)

        self.proxy = ServerProxyPool(pool_size, make_proxy, url, allow_none=1)
        self.ping()
        self.lockfile = copy.deepcopy(hub_params)
        self._connected = True


def connect_pyvo_client(
    lockfile: str | os.PathLike,
    name: str,
    *,
    metadata: dict | None = None,
    callable: bool = True,
    timeout: float = 10.0,
    rpc_timeout: float = RPC_SOCKET_TIMEOUT,
) -> samp.SAMPIntegratedClient:
    """Register a pyvo.samp client (callback server on 127.0.0.1) with the hub of ``lockfile``.

    Retries until ``timeout`` (the lockfile may not be written yet). Every hub request made
    through the client has a socket timeout of ``rpc_timeout`` seconds.
    """
    last: Exception | None = None
    for _ in _deadline_loop(timeout, 0.1):
        try:
            params = read_lockfile(lockfile)
            if "samp.hub.xmlrpc.url" not in params:
                raise PeerError(f"incomplete lockfile {lockfile}")
            cli = samp.SAMPIntegratedClient(
                name=name, metadata=dict(metadata or {}), addr="127.0.0.1", callable=callable
            )
            cli.hub = _TimeoutHubProxy(rpc_timeout)
        except Exception as e:  # hub not up yet, half-written lockfile, ...
            last = e
            continue
        try:
            cli.connect(hub_params=params)
            return cli
        except Exception as e:  # hub not answering yet
            last = e
            disconnect_pyvo_client(cli)  # close the callback server socket / thread
    raise PeerError(f"could not register SAMP client {name!r} via {lockfile}: {last!r}")


def disconnect_pyvo_client(cli: samp.SAMPIntegratedClient) -> None:
    """Unregister and stop a pyvo client; never raises, never hangs on a dead hub.

    Works around pyvo's callable=False bug (disconnect() is a no-op there, so the client
    would stay registered for ever).
    """
    try:
        if cli.is_connected:
            cli.disconnect()
        elif cli.hub.is_connected:
            with contextlib.suppress(Exception):
                if cli.client is not None and cli.client.is_registered:
                    cli.client.unregister()
            cli.hub.disconnect()
    except Exception:  # hub already gone
        with contextlib.suppress(Exception):
            if cli.client is not None and cli.client.is_running:
                cli.client.stop(timeout=5)
        with contextlib.suppress(Exception):
            cli.hub.disconnect()


def _id_order(cid: str) -> tuple[int, str]:
    m = re.search(r"(\d+)$", cid)
    return (int(m.group(1)) if m else -1, cid)


def find_client_id(
    cli: samp.SAMPIntegratedClient,
    samp_name: str,
    *,
    timeout: float = 30.0,
    need_mtypes: Iterable[str] = (),
    ping: bool = True,
    alive: Callable[[], None] | None = None,
) -> str:
    """Return the id of the newest client whose samp.name is ``samp_name`` (case-insensitive).

    The client must also be subscribed to every MType in ``need_mtypes`` and, if ``ping``,
    answer samp.app.ping. Neither hub drops dead clients (a DS9 killed by a signal stays
    listed), so stale registrations are skipped by the ping. ``alive`` is called on every
    poll and may raise to abort early (e.g. when the peer's process died).
    """
    need = tuple(need_mtypes)
    last_seen: list[str] = []
    for _ in _deadline_loop(timeout, 0.2):
        if alive is not None:
            alive()
        try:
            ids = sorted(cli.get_registered_clients(), key=_id_order, reverse=True)
        except Exception:  # hub restarting
            continue
        last_seen = []
        for cid in ids:
            try:
                md = cli.get_metadata(cid)
                last_seen.append(f"{cid}={md.get('samp.name')}")
                if str(md.get("samp.name", "")).lower() != samp_name.lower():
                    continue
                subs = cli.get_subscriptions(cid) if need else {}
                if any(mt not in subs for mt in need):
                    continue
                if ping:
                    r = cli.call_and_wait(
                        cid, {"samp.mtype": "samp.app.ping", "samp.params": {}}, "5"
                    )
                    if r.get("samp.status") != "samp.ok":
                        continue
                return cid
            except Exception:  # stale client, refused connection, ...
                continue
    raise PeerError(
        f"no live SAMP client named {samp_name!r} (subscribed to {list(need)}) "
        f"within {timeout:.0f}s; registered: {last_seen}"
    )


@dataclass
class Message:
    """A message received by a :class:`SampClient`."""

    kind: str  # "notify" or "call"
    sender: str  # sender's client id
    mtype: str
    params: dict
    time: float = field(default_factory=time.monotonic)
    msg_id: str | None = None


class SampClient:
    """A pyvo.samp client on a stack's hub that records what it receives.

    It subscribes to ``subscribe`` and answers calls with ``responder(message)`` (default:
    samp.ok with an empty result). ``cli`` is the underlying pyvo SAMPIntegratedClient.
    """

    def __init__(
        self,
        lockfile: str | os.PathLike,
        name: str,
        subscribe: Iterable[str] = (),
        *,
        metadata: dict | None = None,
        responder: Callable[[Message], dict] | None = None,
        timeout: float = 10.0,
    ):
        self.cli = connect_pyvo_client(lockfile, name, metadata=metadata, timeout=timeout)
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._responder = responder
        mtypes = list(subscribe)
        for mt in mtypes:
            # declare once at the end: one declareSubscriptions instead of 2 per MType
            self.cli.bind_receive_notification(mt, self._on_notify, declare=False)
            self.cli.bind_receive_call(mt, self._on_call, declare=False)
        if mtypes:
            self.cli.declare_subscriptions()

    @property
    def id(self) -> str:
        """This client's public id on the hub."""
        return self.cli.get_public_id()

    def _store(self, msg: Message) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def _on_notify(self, private_key, sender_id, mtype, params, extra):
        self._store(Message("notify", sender_id, mtype, dict(params)))

    def _on_call(self, private_key, sender_id, msg_id, mtype, params, extra):
        msg = Message("call", sender_id, mtype, dict(params), msg_id=msg_id)
        self._store(msg)
        try:
            resp = (
                self._responder(msg)
                if self._responder
                else {"samp.status": "samp.ok", "samp.result": {}}
            )
        except Exception as e:  # report to the caller instead of hanging it
            resp = {"samp.status": "samp.error", "samp.error": {"samp.errortxt": repr(e)}}
        with contextlib.suppress(Exception):
            self.cli.reply(msg_id, resp)

    def clear(self) -> None:
        """Forget the messages received so far."""
        with self._cond:
            self.messages.clear()

    def wait_for(
        self,
        mtype: str,
        *,
        sender: str | None = None,
        timeout: float = 10.0,
        pred: Callable[[Message], bool] | None = None,
    ) -> Message:
        """Wait for the first received message of ``mtype`` (from ``sender``, matching ``pred``)."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages:
                    if (
                        m.mtype == mtype
                        and (sender is None or m.sender == sender)
                        and (pred is None or pred(m))
                    ):
                        return m
                left = end - time.monotonic()
                if left <= 0:
                    got = [(m.mtype, m.sender) for m in self.messages]
                    raise TimeoutError(
                        f"no {mtype} from {sender or 'anyone'} within {timeout}s; received {got}"
                    )
                self._cond.wait(left)

    def call(
        self, target: str, mtype: str, params: dict | None = None, timeout: float = CALL_TIMEOUT
    ) -> dict:
        """call_and_wait ``target`` (a client id); return the full SAMP response."""
        return _call(self.cli, target, mtype, params, timeout)

    def notify(self, target: str, mtype: str, params: dict | None = None) -> None:
        """Send a notification to ``target`` (a client id)."""
        self.cli.notify(target, {"samp.mtype": mtype, "samp.params": dict(params or {})})

    def close(self) -> None:
        """Unregister from the hub."""
        disconnect_pyvo_client(self.cli)

    def __enter__(self) -> SampClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _call(
    cli: samp.SAMPIntegratedClient, target: str, mtype: str, params: dict | None, timeout: float
) -> dict:
    if not 0 < timeout < RPC_SOCKET_TIMEOUT - 5:
        raise ValueError(f"SAMP call timeout must be in (0, {RPC_SOCKET_TIMEOUT - 5})")
    msg = {"samp.mtype": mtype, "samp.params": dict(params or {})}
    return cli.call_and_wait(target, msg, str(max(1, int(round(timeout)))))


# ----------------------------------------------------------------------------- TOPCAT GUI
class TopcatGui:
    """xdotool automation of TOPCAT 4.8.7 under Xvfb (no window manager).

    TOPCAT has no remote-control MType, so this is the only way to make the real TOPCAT
    *send* table.load.votable / table.highlight.row / coord.pointAt.sky. Coordinates are
    window-relative, measured with the default Metal look and DejaVu fonts at 1600x1000;
    re-measure from a screenshot if those change.
    """

    # Toolbar buttons of the Control Window, and widgets of the other windows.
    BROADCAST = (114, 41)
    ACTIVATION = (343, 41)
    TABLE_DATA = (160, 41)
    SEND_SKY = (40, 139)  # "Send Sky Coordinates" in the Activation Actions window
    SEND_ROW = (40, 301)  # "Send row index" (listed only if another client has the table)
    ROW0_Y, ROW_DY, ROW_X = 97, 16, 52

    def __init__(self, env: dict[str, str], shot: Callable[[str], Any] | None = None):
        self.env = env
        self._shot = shot

    def _x(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(
            ["xdotool", *args], env=self.env, capture_output=True, text=True, timeout=30
        )
        if check and r.returncode != 0:
            raise PeerError(f"xdotool {' '.join(args)} failed: {r.stderr.strip()}")
        return r.stdout.strip()

    def window(self, name_regex: str, timeout: float = 20.0) -> str:
        """Id of the (last) visible window whose title matches ``name_regex``."""
        for _ in _deadline_loop(timeout, 0.2):
            out = self._x("search", "--onlyvisible", "--name", name_regex, check=False)
            if out:
                return out.splitlines()[-1]
        msg = f"no visible window matching {name_regex!r} within {timeout}s"
        if self._shot is not None:
            with contextlib.suppress(Exception):
                msg += f"; screenshot: {self._shot('topcat-gui-failure')}"
        raise PeerError(msg)

    def click(self, win: str, x: int, y: int) -> None:
        """Raise ``win`` (other windows pile up at +0+0 without a WM) and click at (x, y).

        Every step is confirmed before the next (the stacking order, then the pointer's
        position); what Swing does with the click is for the caller to poll for.
        """
        self.raise_window(win)
        wx, wy, _, _ = self.geometry(win)
        self._x("mousemove", "--window", win, str(x), str(y))
        # (not --sync: it waits for the pointer to move, forever if it is there already)
        for _ in _deadline_loop(10.0, 0.02):
            out = self._x("getmouselocation", "--shell")
            v = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
            if (int(v["X"]), int(v["Y"])) == (wx + x, wy + y):
                break
        else:
            raise PeerError(f"the pointer did not reach ({x}, {y}) in window {win}")
        self._x("click", "1")

    def move(self, win: str, x: int, y: int) -> None:
        """Move ``win`` (works without a WM); returns once the X server has moved it."""
        self._x("windowmove", "--sync", win, str(x), str(y))

    def resize(self, win: str, width: int, height: int) -> None:
        """Resize ``win`` (works without a WM); returns once the X server has resized it."""
        self._x("windowsize", "--sync", win, str(width), str(height))

    def _top_window(self) -> int | None:
        """Id of the top-most child of the root window (xwininfo lists top-most first)."""
        r = subprocess.run(["xwininfo", "-root", "-children"], env=self.env,
                           capture_output=True, text=True, timeout=30)
        m = re.search(r"^\s+(0x[0-9a-f]+) ", r.stdout, re.M)
        return int(m.group(1), 16) if m else None

    def _toplevel(self, win: int) -> int:
        """The child of the root window that holds ``win`` (``win`` itself, usually)."""
        for _ in range(10):
            r = subprocess.run(["xwininfo", "-id", str(win), "-children"], env=self.env,
                               capture_output=True, text=True, timeout=30)
            root = re.search(r"Root window id: (0x[0-9a-f]+)", r.stdout)
            parent = re.search(r"Parent window id: (0x[0-9a-f]+)", r.stdout)
            if not root or not parent or parent.group(1) == root.group(1):
                return win
            win = int(parent.group(1), 16)
        return win

    def raise_window(self, win: str, timeout: float = 10.0) -> None:
        """Put ``win`` on top of the others (any X window, e.g. DS9's) and wait until it is."""
        top = self._toplevel(int(win))
        self._x("windowraise", win)
        for _ in _deadline_loop(timeout, 0.05):
            if self._top_window() == top:
                return
        raise PeerError(f"window {win} did not come on top within {timeout} s")

    def geometry(self, win: str) -> tuple[int, int, int, int]:
        """(x, y, width, height) of ``win`` on the screen."""
        out = self._x("getwindowgeometry", "--shell", win)
        v = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return int(v["X"]), int(v["Y"]), int(v["WIDTH"]), int(v["HEIGHT"])

    def broadcast_current_table(self) -> None:
        """Click *Broadcast table*: TOPCAT calls table.load.votable on all subscribers."""
        self.click(self.window("^TOPCAT$"), *self.BROADCAST)

    def enable_send_activation(self, sky: bool = True, row: bool = True) -> str:
        """Open *Activation Actions* for the current table and tick the send actions.

        The checkboxes toggle: call this once per table. Returns the window id.
        """
        ctl = self.window("^TOPCAT$")
        act = None
        for _ in range(3):
            self.click(ctl, *self.ACTIVATION)
            with contextlib.suppress(PeerError):
                act = self.window("Activation Actions", timeout=5)
                break
        if act is None:
            raise PeerError("TOPCAT's Activation Actions window did not open")
        self.move(act, 850, 0)
        if sky:
            self.click(act, *self.SEND_SKY)
        if row:
            self.click(act, *self.SEND_ROW)
        return act

    def open_table_browser(self) -> str:
        """Open *Table Data* (the row browser) for the current table; return its window id."""
        ctl = self.window("^TOPCAT$")
        tb = None
        for _ in range(3):       # a click Swing missed is clicked again; a second one is harmless
            self.click(ctl, *self.TABLE_DATA)
            with contextlib.suppress(PeerError):
                tb = self.window("Table Browser", timeout=5)
                break
        if tb is None:
            raise PeerError("TOPCAT's Table Browser did not open after 3 clicks")
        self.move(tb, 0, 400)
        return tb

    def click_row(self, browser: str, k: int) -> None:
        """Click 1-based row ``k`` in the Table Browser window ``browser``.

        With activation enabled TOPCAT then *calls* table.highlight.row (row = k-1) and
        coord.pointAt.sky on all clients. Clicking the already selected row sends nothing.
        """
        self.click(browser, self.ROW_X, self.ROW0_Y + self.ROW_DY * k)


# ----------------------------------------------------------------------------- the stack
class PeerStack:
    """A private SAMP world: Xvfb, a hub ('jsamp' or 'python') and real peers on demand.

    ``root`` is the session directory (created if needed; a temp dir if None); logs go to
    ``root/logs/<name>.log``. Use as a context manager, or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        hub: str = "jsamp",
        *,
        screen: str = "1600x1000x24",
        ds9_title: str = "ds9test",
    ):
        if hub not in ("jsamp", "python"):
            raise ValueError(f"hub must be 'jsamp' or 'python', not {hub!r}")
        self.root = Path(
            root if root is not None else tempfile.mkdtemp(prefix="sampbridge-peers-")
        ).resolve()
        self.hub_kind = hub
        self.screen = screen
        self.ds9_title = ds9_title
        self.home = self.root / "home"
        self.tmp = self.root / "tmp"
        self.logs = self.root / "logs"
        self.lockfile = self.home / ".samp"
        # XPA's unix socket paths must fit in sun_path (108 bytes)
        self.xpa_dir = self.home / "xpa"
        self._own_xpa_dir = len(str(self.xpa_dir)) > 60
        if self._own_xpa_dir:
            self.xpa_dir = Path(tempfile.mkdtemp(prefix="xpa-"))
        for d in (self.home, self.tmp, self.logs, self.xpa_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._write_no_internet_config()

        self.procs: dict[str, subprocess.Popen] = {}
        self.timings: dict[str, float] = {}
        self.ids: dict[str, str] = {}  # peer name -> SAMP client id
        self.display: str | None = None
        self._client: samp.SAMPIntegratedClient | None = None
        self._client_lock = threading.RLock()
        self._gui: TopcatGui | None = None
        self._counter = itertools.count(1)
        self._started_pgids: dict[str, int] = {}

        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DISPLAY", "SAMP_HUB", "XAUTHORITY", "WAYLAND_DISPLAY")
        }
        no_proxy = ",".join(filter(None, [os.environ.get("no_proxy", ""), "127.0.0.1,localhost"]))
        env.update(
            {
                "HOME": str(self.home),
                "SAMP_HUB": "std-lockurl:" + self.lockfile.as_uri(),
                "XPA_METHOD": "local",
                "XPA_TMPDIR": str(self.xpa_dir),
                "TMP": str(self.tmp),  # DS9 temp files (it ignores TMPDIR)
                "TEMP": str(self.tmp),
                "TMPDIR": str(self.tmp),
                "no_proxy": no_proxy,
                "NO_PROXY": no_proxy,
            }
        )
        self._env = env
        self.jvm_args = [
            f"-Duser.home={self.home}",  # Java ignores $HOME
            f"-Djava.io.tmpdir={self.tmp}",
            "-XX:-UsePerfData",  # no /tmp/hsperfdata_<user>
        ]
        # For the peers (not the hub, which must reach every client's callback URL): any
        # HTTP(S)/FTP fetch to a host other than this machine (Aladin's start-up getLang
        # query, HiPS lookups, ...) goes to a dead proxy on 127.0.0.1:9 and fails at once,
        # without DNS and without leaving the machine. Local URLs go direct.
        local = "|".join(
            dict.fromkeys(["localhost", "127.*", "[::1]", socket.gethostname(), socket.getfqdn()])
        )
        self.peer_jvm_args = [
            *self.jvm_args,
            *(
                f"-D{proto}.{key}={value}"
                for proto in ("http", "https", "ftp")
                for key, value in (("proxyHost", "127.0.0.1"), ("proxyPort", "9"))
            ),
            f"-Dhttp.nonProxyHosts={local}",  # https uses http.nonProxyHosts too
            f"-Dftp.nonProxyHosts={local}",
        ]

    # ------------------------------------------------------------------ environment
    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses (e.g. the daemon under test): a fresh copy."""
        return dict(self._env)

    @property
    def hub_env(self) -> dict[str, str]:
        """Only the variables the harness sets (HOME, SAMP_HUB, DISPLAY, XPA_*, TMP...)."""
        keys = (
            "HOME",
            "SAMP_HUB",
            "DISPLAY",
            "XPA_METHOD",
            "XPA_TMPDIR",
            "TMP",
            "TEMP",
            "TMPDIR",
            "no_proxy",
            "NO_PROXY",
        )
        return {k: self._env[k] for k in keys if k in self._env}

    def _write_no_internet_config(self) -> None:
        # astropy/pyvo processes started with HOME=self.home (e.g. the daemon under test)
        # read these, so their SAMP code does not probe http://google.com either.
        # Affiliated packages such as pyvo keep their <pkg>.cfg in astropy's config dir.
        d = self.home / ".astropy" / "config"
        d.mkdir(parents=True, exist_ok=True)
        for pkg in ("pyvo", "astropy"):
            (d / f"{pkg}.cfg").write_text("[samp]\nuse_internet = False\n")

    # ------------------------------------------------------------------ processes
    def log_path(self, name: str) -> Path:
        """Path of the log file of process ``name``."""
        return self.logs / f"{name}.log"

    def log_tail(self, name: str, lines: int = 40) -> str:
        """Last ``lines`` lines of process ``name``'s log."""
        return _tail(self.log_path(name), lines)

    def _error(self, name: str, what: str) -> PeerError:
        return PeerError(f"{what}\n--- tail of {self.log_path(name)} ---\n{self.log_tail(name)}")

    def _spawn(
        self, name: str, argv: list[str], extra_env: dict[str, str] | None = None, **kw
    ) -> subprocess.Popen:
        if name in self.procs and self.procs[name].poll() is None:
            raise PeerError(f"{name} is already running (pid {self.procs[name].pid})")
        log = open(self.log_path(name), "ab")
        log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        try:
            p = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self._env, **(extra_env or {})},
                cwd=self.root,
                start_new_session=True,
                **kw,
            )
        finally:
            log.close()
        self.procs[name] = p
        self._started_pgids[name] = p.pid  # new session: pgid == pid
        return p

    def _check_alive(self, name: str) -> None:
        p = self.procs.get(name)
        if p is None:
            raise PeerError(f"{name} was not started")
        if p.poll() is not None:
            raise self._error(name, f"{name} exited with status {p.returncode}")

    def _kill(self, name: str, timeout: float = STOP_TIMEOUT) -> None:
        p = self.procs.pop(name, None)
        if p is None:
            return
        pgid = self._started_pgids.get(name, p.pid)
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)  # the whole group: wrapper + JVM, ds9 + xpans
            try:
                p.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone; give the rest of the group the same grace period
            for _ in _deadline_loop(wait, 0.05):
                if not [m for m in _group_members(pgid) if m[1] != "Z"]:
                    return
            continue

    def is_running(self, name: str) -> bool:
        """Whether process ``name`` (xvfb, hub, topcat, ds9, aladin) is running."""
        p = self.procs.get(name)
        return p is not None and p.poll() is None

    def leftover_processes(self) -> list[tuple[str, int, str]]:
        """Non-zombie processes still alive in any process group this stack started.

        Returns (name, pid, command) triples; empty after a clean :meth:`stop`.
        """
        left = []
        for name, pgid in self._started_pgids.items():
            for pid, state, comm in _group_members(pgid):
                if state != "Z":
                    left.append((name, pid, comm))
        return left

    def rss_kb(self, name: str) -> int:
        """Resident memory (kB) of process ``name`` plus its descendants."""
        p = self.procs[name]
        out = subprocess.run(
            ["ps", "-e", "-o", "pid=,ppid=,rss="], capture_output=True, text=True, timeout=30
        ).stdout
        rows = [tuple(map(int, ln.split())) for ln in out.splitlines() if ln.strip()]
        kids: dict[int, list[int]] = {}
        rss = {}
        for pid, ppid, r in rows:
            kids.setdefault(ppid, []).append(pid)
            rss[pid] = r
        todo, total = [p.pid], 0
        while todo:
            pid = todo.pop()
            total += rss.get(pid, 0)
            todo.extend(kids.get(pid, []))
        return total

    # ------------------------------------------------------------------ X server
    def start_xvfb(self, timeout: float = 30.0) -> str:
        """Start Xvfb on a free display (``-displayfd``); return e.g. ``':1'``."""
        t0 = time.monotonic()
        r, w = os.pipe()
        try:
            self._spawn(
                "xvfb",
                ["Xvfb", "-displayfd", str(w), "-screen", "0", self.screen, "-nolisten", "tcp"],
                pass_fds=(w,),
            )
        finally:
            os.close(w)
        buf = b""
        try:
            for left in _deadline_loop(timeout, 0):
                ready, _, _ = select.select([r], [], [], min(left, 0.5))
                if ready:
                    chunk = os.read(r, 64)
                    if not chunk:
                        break  # EOF: Xvfb exited (or closed fd without a number)
                    buf += chunk
                    if buf.endswith(b"\n"):
                        break
                self._check_alive("xvfb")
        finally:
            os.close(r)
        if not buf.strip().isdigit():
            self._kill("xvfb")
            raise self._error("xvfb", f"Xvfb did not report a display number ({buf!r})")
        self.display = ":" + buf.decode().strip()
        self._env["DISPLAY"] = self.display
        self.timings["xvfb"] = time.monotonic() - t0
        return self.display

    # ------------------------------------------------------------------ hub
    def start_hub(self, timeout: float = HUB_TIMEOUT) -> Path:
        """Start the hub and wait until it answers; return the lockfile path."""
        self._check_not_other_hub()
        with contextlib.suppress(FileNotFoundError):
            self.lockfile.unlink()  # stale lock of our own dead hub (private dir)
        t0 = time.monotonic()
        if self.hub_kind == "jsamp":
            argv = [
                JAVA,
                "-Djava.awt.headless=true",
                *self.jvm_args,
                "-cp",
                JSAMP_JAR,
                "org.astrogrid.samp.JSamp",
                "hub",
                "-mode",
                "no-gui",
                "-profiles",
                "std",
            ]
        else:
            argv = [
                sys.executable,
                "-u",
                str(Path(__file__).resolve()),
                "python-hub",
                str(self.lockfile),
            ]
        self._spawn("hub", argv)
        for _ in _deadline_loop(timeout, 0.05):
            self._check_alive("hub")
            if self.lockfile.exists() and self.lockfile.stat().st_size > 0:
                with contextlib.suppress(PeerError):
                    self._connect_observer(timeout=1.0)
                    break
        else:
            self._kill("hub")
            raise self._error("hub", f"{self.hub_kind} hub not answering within {timeout}s")
        self.timings["hub"] = time.monotonic() - t0
        return self.lockfile

    def _check_not_other_hub(self) -> None:
        if "hub" in self.procs and self.procs["hub"].poll() is None:
            raise PeerError("hub already running")

    def kill_hub(self, hard: bool = False) -> None:
        """Stop the hub. ``hard``: SIGKILL, leaving a stale lockfile (as after a crash).

        A normal stop (SIGTERM) lets the hub remove its lockfile and tell clients it is
        shutting down. Peers stay running.
        """
        self._drop_observer()
        p = self.procs.get("hub")
        if p is None:
            return
        if hard:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        self._kill("hub")
        self.ids.clear()

    def restart_hub(
        self,
        timeout: float = HUB_TIMEOUT,
        *,
        reconnect_peers: bool = True,
        grace: float = 5.0,
        peer_timeout: float = START_TIMEOUT,
    ) -> dict[str, str]:
        """Kill the hub if it is running, start a new one, and bring the running peers back.

        Returns ``{peer: "reconnected" | "restarted"}``. What the peers do by themselves
        (measured with TOPCAT 4.8.7, DS9 8.4.1, Aladin 12.001):

        * DS9 connects only at start-up, and after a SIGKILLed hub still believes it is
          connected: it is told ``samp disconnect`` + ``samp connect`` over XPA.
        * TOPCAT re-registers within ~1 s after a JSAMP hub's clean stop, only sometimes
          after the pyvo hub's, and not after a hard kill: if it is not back within
          ``grace`` seconds it is restarted (its loaded tables are then lost).
        * Aladin re-registers after a clean stop but with a callback URL whose server it
          has shut down, so nothing can reach it: it is always restarted.

        With ``reconnect_peers=False`` only the hub is started (the peers are left as they are).
        """
        if self.is_running("hub"):
            self.kill_hub()
        self.start_hub(timeout)
        if not reconnect_peers:
            return {}
        return self.reconnect_peers(grace=grace, peer_timeout=peer_timeout)

    def reconnect_peers(
        self, *, grace: float = 5.0, peer_timeout: float = START_TIMEOUT
    ) -> dict[str, str]:
        """Bring the running peers back to a (new) hub started with :meth:`start_hub`.

        The second half of :meth:`restart_hub`, for a test that starts the hub itself (e.g. to
        time how fast another client registers) and only then wants the peers back. Returns
        ``{peer: "reconnected" | "restarted"}``.
        """
        result: dict[str, str] = {}
        if self.is_running("ds9"):
            with contextlib.suppress(PeerError):
                self.xpaset("samp", "disconnect")
            self.xpaset("samp", "connect")
        if self.is_running("aladin"):
            self._stop_peer("aladin")
            self.start_aladin(peer_timeout)
            result["aladin"] = "restarted"
        if self.is_running("topcat"):
            try:
                self.wait_ready("topcat", grace)
                result["topcat"] = "reconnected"
            except PeerError:
                self._stop_peer("topcat")
                self.start_topcat(peer_timeout)
                result["topcat"] = "restarted"
        if self.is_running("ds9"):
            self.wait_ready("ds9", peer_timeout)
            result["ds9"] = "reconnected"
        return result

    # ------------------------------------------------------------------ observer client
    def _connect_observer(self, timeout: float = 10.0) -> samp.SAMPIntegratedClient:
        with self._client_lock:
            if self._client is None:
                self._client = connect_pyvo_client(
                    self.lockfile, "peerstack-observer", timeout=timeout
                )
            return self._client

    def _drop_observer(self) -> None:
        with self._client_lock:
            if self._client is not None:
                disconnect_pyvo_client(self._client)
                self._client = None

    @property
    def client(self) -> samp.SAMPIntegratedClient:
        """The harness's own pyvo client ('peerstack-observer'); reconnects after a hub restart."""
        with self._client_lock:
            if self._client is not None:
                try:
                    self._client.ping()
                except Exception:  # hub restarted or gone
                    self._drop_observer()
            return self._connect_observer()

    def connect_client(
        self,
        name: str = "test-client",
        subscribe: Iterable[str] = (),
        *,
        metadata: dict | None = None,
        responder: Callable[[Message], dict] | None = None,
    ) -> SampClient:
        """Register a new recording :class:`SampClient` on this stack's hub (close it after)."""
        return SampClient(self.lockfile, name, subscribe, metadata=metadata, responder=responder)

    # ------------------------------------------------------------------ peers
    def find_client(
        self,
        samp_name: str,
        *,
        timeout: float = 10.0,
        need_mtypes: Iterable[str] = (),
        ping: bool = True,
    ) -> str:
        """Client id of the newest live client named ``samp_name`` that answers ping."""
        return find_client_id(
            self.client, samp_name, timeout=timeout, need_mtypes=need_mtypes, ping=ping
        )

    def wait_ready(self, name: str, timeout: float = START_TIMEOUT) -> str:
        """Wait until peer ``name`` is registered, subscribed and answers ping; return its id."""
        samp_name, mtypes = PEERS[name]
        try:
            cid = find_client_id(
                self.client,
                samp_name,
                timeout=timeout,
                need_mtypes=mtypes,
                alive=lambda: self._check_alive(name),
            )
        except PeerError as e:
            if self.log_path(name).exists() and "--- tail of" not in str(e):
                raise self._error(name, str(e)) from None
            raise
        self.ids[name] = cid
        return cid

    def peer_id(self, name: str, timeout: float = 10.0) -> str:
        """SAMP client id of peer ``name`` ('topcat', 'ds9', 'aladin'), checked with a ping."""
        cid = self.ids.get(name)
        if cid is not None:
            with contextlib.suppress(Exception):
                r = self.client.call_and_wait(
                    cid, {"samp.mtype": "samp.app.ping", "samp.params": {}}, "5"
                )
                if r.get("samp.status") == "samp.ok":
                    return cid
        return self.wait_ready(name, timeout)

    def _start_peer(
        self,
        name: str,
        argv: list[str],
        timeout: float,
        marker: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> str:
        """Spawn a peer; ready = SAMP-ready (see wait_ready) and ``marker`` file written."""
        if not self.is_running("hub"):
            raise PeerError("start the hub before the peers (Aladin would start its own)")
        if marker is not None:
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()
        t0 = time.monotonic()
        self._spawn(name, argv, extra_env=extra_env)
        try:
            cid = self.wait_ready(name, timeout)
            if marker is not None:
                left = max(1.0, timeout - (time.monotonic() - t0))
                for _ in _deadline_loop(left, 0.05):
                    if marker.exists():
                        break
                    self._check_alive(name)
                else:
                    raise self._error(name, f"{name} never wrote its start-up marker {marker}")
        except BaseException:
            self._stop_peer(name)
            raise
        self.timings[name] = time.monotonic() - t0
        return cid

    def start_topcat(self, timeout: float = START_TIMEOUT, xmx: str = "512m") -> str:
        """Start TOPCAT (java run directly, so the PID is the JVM's); return its client id."""
        argv = [JAVA, *self.peer_jvm_args, f"-Xmx{xmx}", "-Duk.ac.starlink.topcat.cmdname=topcat"]
        argv += ["-cp", TOPCAT_JAR, "uk.ac.starlink.topcat.Driver", "-nohub"]
        return self._start_peer("topcat", argv, timeout)

    def start_ds9(self, timeout: float = START_TIMEOUT) -> str:
        """Start DS9 with the tclxml fix (tests/peers/ds9_init.tcl); return its client id.

        DS9 registers with the hub *before* it processes its command line, so readiness also
        waits for ds9_init.tcl to have run (it writes $SAMPBRIDGE_DS9_READY_FILE).
        """
        marker = self.tmp / "ds9-init-done"
        argv = ["ds9", "-title", self.ds9_title, "-geometry", "900x800+700+0"]
        argv += ["-port", "0", "-unix", "none", "-fifo", "none"]  # no IIS server
        argv += ["-source", str(DS9_INIT_TCL)]
        env = {"SAMPBRIDGE_DS9_READY_FILE": str(marker)}
        return self._start_peer("ds9", argv, timeout, marker=marker, extra_env=env)

    ALADIN_OFFLINE_FLAGS = ("-local", "-noreleasetest", "-nolog", "-noplugin", "-nobeta")

    def start_aladin(self, timeout: float = START_TIMEOUT, xmx: str = "1024m") -> str:
        """Start Aladin offline (-local -noreleasetest -nolog -noplugin -nobeta); return its id.

        Aladin registers with the hub before it has built its ServerDialog, and until then
        every image.load.fits / table.load.votable dies with a NullPointerException and is
        never answered. Its launch script runs after that point, so the script
        ``backup <marker>`` writes a file that marks Aladin as really ready.
        """
        marker = self.tmp / f"aladin-ready-{next(self._counter)}.aj"
        argv = [JAVA, f"-Xmx{xmx}", *self.peer_jvm_args, "-jar", ALADIN_JAR]
        argv += [*self.ALADIN_OFFLINE_FLAGS, "-location=0,330,700,650", f"-script=backup {marker}"]
        return self._start_peer("aladin", argv, timeout, marker=marker)

    def _stop_peer(self, name: str) -> None:
        if name == "ds9" and self.is_running("ds9"):
            # DS9 unregisters from the hub only on a real exit, not on SIGTERM
            with contextlib.suppress(Exception):
                self.xpaset("exit", timeout=10)
                self.procs["ds9"].wait(STOP_TIMEOUT)
        self._kill(name)
        self.ids.pop(name, None)

    def stop_peer(self, name: str) -> None:
        """Stop one peer ('topcat', 'ds9', 'aladin') by PID / process group."""
        self._stop_peer(name)

    def start(self) -> PeerStack:
        """Start Xvfb and the hub (peers are started with start_topcat/ds9/aladin)."""
        try:
            self.start_xvfb()
            self.start_hub()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process this stack started: peers, then the hub, then Xvfb."""
        errors = []
        for name in ("ds9", "topcat", "aladin"):
            try:
                self._stop_peer(name)
            except Exception as e:  # keep stopping the rest
                errors.append(f"{name}: {e!r}")
        self._drop_observer()
        for name in ("hub", "xvfb"):
            try:
                self._kill(name)
            except Exception as e:
                errors.append(f"{name}: {e!r}")
        if self._own_xpa_dir:
            shutil.rmtree(self.xpa_dir, ignore_errors=True)
        if errors:
            raise PeerError("errors while stopping the peer stack: " + "; ".join(errors))

    def __enter__(self) -> PeerStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ SAMP calls
    def _target(self, target: str) -> str:
        return self.peer_id(target) if target in PEERS else target

    def call(
        self, target: str, mtype: str, params: dict | None = None, timeout: float = CALL_TIMEOUT
    ) -> dict:
        """call_and_wait ``target`` (peer name or client id); return the full response."""
        return _call(self.client, self._target(target), mtype, params, timeout)

    def call_ok(
        self,
        target: str,
        mtype: str,
        params: dict | None = None,
        timeout: float = CALL_TIMEOUT,
        allow_warning: bool = False,
    ) -> dict:
        """Like :meth:`call` but return samp.result, raising SampCallError unless samp.ok."""
        r = self.call(target, mtype, params, timeout)
        ok = ("samp.ok", "samp.warning") if allow_warning else ("samp.ok",)
        if r.get("samp.status") not in ok:
            raise SampCallError(
                f"{mtype} to {target}: {r.get('samp.status')} "
                f"{r.get('samp.error', {}).get('samp.errortxt', r)}",
                r,
            )
        return r.get("samp.result", {}) or {}

    def notify(self, target: str, mtype: str, params: dict | None = None) -> None:
        """Send a notification to ``target`` (peer name or client id)."""
        self.client.notify(
            self._target(target), {"samp.mtype": mtype, "samp.params": dict(params or {})}
        )

    def send_votable(
        self,
        target: str,
        path_or_url: str | os.PathLike,
        *,
        table_id: str | None = None,
        name: str | None = None,
        timeout: float = CALL_TIMEOUT,
    ) -> dict:
        """Call table.load.votable on ``target``; return the full response."""
        s = str(path_or_url)
        url = s if re.match(r"^[a-z]+:", s) else file_url(s)
        params = {"url": url}
        if table_id is not None:
            params["table-id"] = table_id
        if name is not None:
            params["name"] = name
        return self.call(target, "table.load.votable", params, timeout)

    # ------------------------------------------------------------------ TOPCAT
    def _topcat_get_stil(self, index: int | None, fmt: str, timeout: float) -> str:
        params = {"format": fmt}
        if index is not None:
            params["index"] = str(index)  # TOPCAT 4.8.7 reads 'index', not the documented 'id'
        last: dict = {}
        for _ in _deadline_loop(timeout, 0.2):
            last = self.call("topcat", "table.get.stil", params, timeout=10)
            if last.get("samp.status") == "samp.ok":
                return last["samp.result"]["url"]
        raise SampCallError(
            f"TOPCAT table.get.stil {params} failed: {last.get('samp.error', last)}", last
        )

    def topcat_table_rows(
        self, index: int | None = None, timeout: float = 5.0
    ) -> list[dict[str, str]]:
        """Rows of TOPCAT table ``index`` (1-based; None = current table) as CSV string dicts.

        Retries for ``timeout`` seconds (a table loaded over SAMP may appear a moment after
        the reply).
        """
        url = self._topcat_get_stil(index, "csv", timeout)
        text = fetch_url(url).decode("utf-8")
        return list(csv.DictReader(io.StringIO(text)))

    def topcat_table(self, index: int | None = None, timeout: float = 5.0):
        """TOPCAT table ``index`` as an astropy Table (fetched as VOTable: typed columns)."""
        from astropy.io.votable import parse_single_table

        url = self._topcat_get_stil(index, "votable", timeout)
        return parse_single_table(io.BytesIO(fetch_url(url))).to_table()

    def topcat_table_count(self, at_least: int = 0, timeout: float = 5.0) -> int:
        """Number of tables loaded in TOPCAT (probes table.get.stil index=1, 2, ...).

        A table loaded over SAMP appears in TOPCAT's list a moment after the samp.ok reply,
        so this polls until there are ``at_least`` tables or ``timeout`` has passed, and then
        returns the count (which may be lower: compare it in the test).
        """
        n = 0
        for _ in _deadline_loop(timeout, 0.1):
            while True:
                r = self.call(
                    "topcat", "table.get.stil", {"format": "csv", "index": str(n + 1)}, timeout=10
                )
                if r.get("samp.status") != "samp.ok":
                    break
                n += 1
            if n >= at_least:
                break
        return n

    @property
    def topcat_gui(self) -> TopcatGui:
        """xdotool driver for TOPCAT's GUI (broadcast, activation actions, row clicks)."""
        if self._gui is None:

            def shot(tag: str) -> Path:
                return self.screenshot(self.logs / f"{tag}-{next(self._counter)}.png")

            self._gui = TopcatGui(self._env, shot=shot)
        return self._gui

    def topcat_enable_activation(self, sky: bool = True, row: bool = True) -> None:
        """Tick *Send Sky Coordinates* / *Send row index* for TOPCAT's current table (once!)."""
        self.topcat_gui.enable_send_activation(sky=sky, row=row)

    def topcat_click_row(self, k: int) -> None:
        """Click 1-based row ``k`` of TOPCAT's current table in its Table Browser.

        Call :meth:`topcat_enable_activation` once for the table first; TOPCAT then calls
        table.highlight.row (row=k-1) and coord.pointAt.sky on every client.
        """
        browser = self.topcat_gui.open_table_browser()
        self.topcat_gui.click_row(browser, k)

    def topcat_broadcast_table(self) -> None:
        """Make TOPCAT broadcast its current table (GUI click -> table.load.votable calls)."""
        self.topcat_gui.broadcast_current_table()

    # ------------------------------------------------------------------ DS9
    def xpaget(self, *args: str, timeout: float = 30.0) -> str:
        """``xpaget <ds9 title> args...`` against this stack's DS9; returns stdout."""
        r = subprocess.run(
            ["xpaget", self.ds9_title, *args],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0:
            raise PeerError(f"xpaget {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout.strip()

    def xpaset(self, *args: str, data: str | None = None, timeout: float = 30.0) -> None:
        """``xpaset -p <ds9 title> args...`` (or with ``data`` on stdin)."""
        argv = (
            ["xpaset", "-p", self.ds9_title, *args]
            if data is None
            else ["xpaset", self.ds9_title, *args]
        )
        r = subprocess.run(
            argv, env=self._env, input=data, capture_output=True, text=True, timeout=timeout
        )
        if r.returncode != 0 or "XPA$ERROR" in r.stdout + r.stderr:
            raise PeerError(f"xpaset {' '.join(args)}: {(r.stdout + r.stderr).strip()}")

    def ds9_get(self, cmd: str, timeout: float = CALL_TIMEOUT) -> str:
        """DS9's answer to SAMP ``ds9.get {cmd}`` (e.g. 'file', 'pan wcs fk5 degrees')."""
        return str(self.call_ok("ds9", "ds9.get", {"cmd": cmd}, timeout).get("value", ""))

    def ds9_set(self, cmd: str, timeout: float = CALL_TIMEOUT) -> None:
        """SAMP ``ds9.set {cmd}`` (e.g. 'frame delete all')."""
        self.call_ok("ds9", "ds9.set", {"cmd": cmd}, timeout)

    def ds9_source_tcl(self, code: str) -> None:
        """Run Tcl ``code`` inside DS9 at global scope (written to a file and sourced over XPA)."""
        path = self.tmp / f"ds9_cmd_{next(self._counter)}.tcl"
        path.write_text(code + "\n")
        self.xpaset("source", str(path))

    def ds9_catalogs(self) -> list[tuple[str, int, str]]:
        """Catalogs loaded in DS9 as (catvar, nrows, title); nrows -1 if unknown."""
        out = self.tmp / f"ds9_catinfo_{next(self._counter)}.txt"
        self.ds9_source_tcl(f"SampBridgeTestCatInfo {{{out}}}")
        return read_catinfo(out)

    def ds9_send_point_at(self, ra: float, dec: float, via: str = "tcl") -> None:
        """Make DS9 broadcast coord.pointAt.sky (a notification).

        ``via='tcl'`` calls DS9's own SAMPSendCoordPointAtSky, unconditionally.
        ``via='pan'`` pans with XPA, DS9's natural path; it only sends if an image with WCS is
        loaded, the position is inside it, some other client subscribes to image.load.fits
        and some to table.load.fits (DS9 re-checks 1 s after each register event), and
        the X pointer is off the frame (moved away here).
        """
        if via == "tcl":
            self.ds9_source_tcl(f"SampBridgeTestEmitPoint {ra!r} {dec!r}")
        elif via == "pan":
            self.ds9_wait_broadcast_ready()
            self._pointer_off_frames()
            self.xpaset("pan", "to", repr(ra), repr(dec), "wcs", "fk5")
        else:
            raise ValueError("via must be 'tcl' or 'pan'")

    def ds9_samp_state(self) -> dict[str, int]:
        """DS9's SAMP broadcast state: ``connected``, ``lock``, ``image`` and ``table`` counts."""
        out = self.tmp / f"ds9_sampstate_{next(self._counter)}.txt"
        self.ds9_source_tcl(f"SampBridgeTestSampState {{{out}}}")
        state = {}
        for line in out.read_text().splitlines():
            key, _, value = line.partition(" ")
            state[key] = int(value.strip() or 0)
        return state

    def ds9_wait_broadcast_ready(self, timeout: float = 20.0) -> dict[str, int]:
        """Wait until DS9 would broadcast a pan: connected, not locked, and with other clients
        subscribed to image.load.fits and table.load.fits in its own (refreshed) lists.

        DS9 re-reads those lists about 1 s after every hub register event, and skips a
        broadcast while it handles a SAMP message; a pan before that sends nothing.
        """
        state: dict[str, int] = {}
        for _ in _deadline_loop(timeout, 0.1):
            state = self.ds9_samp_state()
            if state.get("connected") and not state.get("lock") and state.get("image") \
                    and state.get("table"):
                return state
        raise PeerError(f"DS9 would not broadcast coord.pointAt.sky within {timeout:g} s: "
                        f"its SAMP state is {state} (it needs lock 0 and some other client "
                        "subscribed to image.load.fits and to table.load.fits)")

    def _pointer_off_frames(self, timeout: float = 10.0) -> None:
        """Move the X pointer to the screen's bottom-left corner, and wait until it is there."""
        def run(*args: str) -> str:
            return subprocess.run(["xdotool", *args], env=self._env, capture_output=True,
                                  text=True, timeout=30).stdout

        run("mousemove", "5", "995")
        for _ in _deadline_loop(timeout, 0.02):
            v = dict(line.split("=", 1) for line in run("getmouselocation", "--shell")
                     .splitlines() if "=" in line)
            if (v.get("X"), v.get("Y")) == ("5", "995"):
                return
        raise PeerError("the X pointer did not move off DS9's frame")

    def ds9_send_rows(self, catvar: str, rows: Iterable[int]) -> None:
        """Make DS9 send table.highlight.row / table.select.rowList for catalog ``catvar``.

        ``rows`` are 1-based (DS9 sends them 0-based); one row gives table.highlight.row.
        DS9 only sends for a catalog that came over SAMP, while a table client is registered.
        """
        rows_tcl = " ".join(str(int(r)) for r in rows)
        self.ds9_source_tcl(f"SampBridgeTestEmitRows {catvar} {{{rows_tcl}}}")

    # ------------------------------------------------------------------ Aladin
    def aladin_script(self, script: str) -> None:
        """Run an Aladin script command (script.aladin.send, sent as a NOTIFY).

        As a call Aladin 12.001 never replies for commands that return nothing.
        """
        self.notify("aladin", "script.aladin.send", {"script": script})

    def aladin_send_point_at(self, ra: float, dec: float) -> None:
        """Make Aladin go to (ra, dec); it then broadcasts coord.pointAt.sky (a notification)."""
        self.aladin_script(f"{ra:.8f} {dec:+.8f}")

    # ------------------------------------------------------------------ display
    def screenshot(
        self, path: str | os.PathLike, crop: tuple[int, int, int, int] | None = None
    ) -> Path:
        """Save a PNG of the whole Xvfb screen (ImageMagick ``import -window root``).

        ``crop`` = (x, y, width, height) keeps only that part of the screen.
        """
        path = Path(path)
        geometry = []
        if crop is not None:
            x, y, w, h = (int(v) for v in crop)
            geometry = ["-crop", f"{w}x{h}+{x}+{y}", "+repage"]
        r = subprocess.run(
            ["import", "-window", "root", *geometry, str(path)],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode != 0:
            raise PeerError(f"screenshot failed: {r.stderr.strip()}")
        return path


def read_catinfo(path: Path) -> list[tuple[str, int, str]]:
    """Parse the listing written by ``SampBridgeTestCatInfo``: (catvar, nrows, title)."""
    rows = []
    for line in path.read_text().splitlines():
        parts = _tcl_list(line)
        if len(parts) >= 2:
            rows.append((parts[0], int(parts[1]), parts[2] if len(parts) > 2 else ""))
    return rows


def _tcl_list(line: str) -> list[str]:
    """Split a simple Tcl list (words, {braced words})."""
    return [a or b for a, b in re.findall(r"\{([^{}]*)\}|(\S+)", line)]


# ----------------------------------------------------------------------------- pyvo hub process
def _python_hub_main(lockfile: str) -> int:
    """Run a pyvo.samp hub on 127.0.0.1 until SIGTERM/SIGINT, then remove its lockfile.

    It is the hub sampbridge itself starts in ``hub.mode: auto``: pyvo's SAMPHubServer with
    its callAndWait race fixed (see sampbridge/samp/hub.py).
    """
    from sampbridge.samp.hub import Hub

    hub = Hub(
        addr="127.0.0.1", lockfile=lockfile, web_profile=False, label="sampbridge-tests"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    hub.start(wait=False)
    print(f"pyvo hub running, lockfile {lockfile}", flush=True)
    while not stop.wait(0.5):
        pass
    hub.stop()
    print("pyvo hub stopped", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "python-hub":
        sys.exit(_python_hub_main(sys.argv[2]))
    print(f"usage: {sys.argv[0]} python-hub LOCKFILE", file=sys.stderr)
    sys.exit(2)
