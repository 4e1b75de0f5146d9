"""Shared fixtures: the local CSC mimic, private SAMP hubs, a recording peer and the daemon."""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pyvo.samp as psamp

from sampbridge.config import Config, defaults
from sampbridge.samp.hub import Hub

psamp.conf.use_internet = False

VO_BASE = os.environ.get("SAMPBRIDGE_TEST_VO", "http://127.0.0.1:18080")
HERE = Path(__file__).parent
DATA = HERE / "data"
GUIDE_DIR = DATA / "cxc_guide"


def need(ok: bool, why: str, install: str) -> None:
    """Skip when a needed part is missing; under CI that is a failure, never a silent skip."""
    if ok:
        return
    msg = f"{why}; install and start it with: {install}"
    if os.environ.get("CI"):
        pytest.fail(f"CI: {msg}", pytrace=False)
    pytest.skip(msg)


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.02,
             what: str = "condition") -> object:
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _vo_up() -> bool:
    try:
        with urllib.request.urlopen(f"{VO_BASE}/csc21scs/coneSearch?RA=0&DEC=0&SR=0.001&VERB=1",
                                    timeout=5) as r:
            return r.status == 200
    except Exception:
        return False


@pytest.fixture(scope="session")
def vo_server() -> str:
    """The base URL of the local CSC 2.1 mimic (GAVO DaCHS), which must be running."""
    need(_vo_up(), f"the local CSC mimic does not answer at {VO_BASE}",
         "sudo bash tests/vo_server/setup.sh")
    return VO_BASE


def local_config(base: str, results: Path, **changes: object) -> Config:
    """A configuration pointing at the local mimic, with results in ``results``."""
    cfg = defaults().replace(**{
        "services.cone": f"{base}/csc21scs/coneSearch",
        "services.siap": f"{base}/csc21siap/queryImages",
        "services.tap": f"{base}/csc21tap",
        "results.dir": str(results),
        "http.connect_timeout": 5.0,
        "http.read_timeout": 30.0,
        "hub.ping_interval": 0.5,
        "hub.call_timeout": 10.0,
        "pointat.quiet": 0.1,
        "pointat.max_wait": 1.0,
        "folder.enabled": False,
        "folder.dir": str(results / "queries"),
    })
    return cfg.replace(**changes) if changes else cfg


@pytest.fixture
def cfg(vo_server: str, tmp_path: Path) -> Config:
    """Configuration for the local mimic with a private results folder."""
    return local_config(vo_server, tmp_path / "results")


@pytest.fixture
def samp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME and SAMP lockfile: the user's ~/.samp is never touched."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SAMP_HUB", f"std-lockurl:file://{home}/.samp")
    return home


@pytest.fixture
def hub(samp_home: Path) -> Iterator[psamp.SAMPHubServer]:
    """A pyvo.samp hub in this process on the private lockfile."""
    h = Hub(addr="127.0.0.1", web_profile=False, lockfile=str(samp_home / ".samp"),
                            label="test")
    h.start(wait=False)
    wait_for(lambda: (samp_home / ".samp").exists(), what="hub lockfile")
    yield h
    h.stop()


class RecordingPeer:
    """A real SAMP client standing in for a viewer: it records what it receives and replies."""

    def __init__(self, name: str, mtypes: list[str], fail: bool = False,
                 silent: bool = False) -> None:
        self.name = name
        self.received: list[tuple[str, dict, str]] = []
        self.lock = threading.Lock()
        self.fail = fail
        self.silent = silent            # never replies to calls (as Aladin 12 at first)
        self.client = psamp.SAMPIntegratedClient(name=name, addr="127.0.0.1")
        # pyvo's default pool of 20 hub connections would let 20+ blocked call_and_wait
        # threads starve this client's own replies
        self.client.connect(pool_size=100)
        for mt in mtypes:
            self.client.bind_receive_call(mt, self._on_call, declare=False)
            self.client.bind_receive_notification(mt, self._on_notify, declare=False)
        self.client.declare_subscriptions()

    def _on_call(self, private_key, sender_id, msg_id, mtype, params, extra):
        with self.lock:
            self.received.append((mtype, dict(params), sender_id))
        if self.silent:
            return
        if self.fail:
            self.client.ereply(msg_id, "samp.error", error={"samp.errortxt": "peer refuses"})
        else:
            self.client.ereply(msg_id, "samp.ok", result={})

    def _on_notify(self, private_key, sender_id, mtype, params, extra):
        with self.lock:
            self.received.append((mtype, dict(params), sender_id))

    def of(self, mtype: str) -> list[dict]:
        with self.lock:
            return [p for m, p, _ in self.received if m == mtype]

    def wait_for(self, mtype: str, count: int = 1, timeout: float = 20.0) -> list[dict]:
        wait_for(lambda: len(self.of(mtype)) >= count, timeout, what=f"{count} x {mtype} "
                 f"at {self.name}")
        return self.of(mtype)

    def call(self, recipient: str, mtype: str, params: dict, timeout: float = 30.0) -> dict:
        return self.client.call_and_wait(recipient, {"samp.mtype": mtype,
                                                     "samp.params": params}, str(int(timeout)))

    def notify(self, recipient: str, mtype: str, params: dict) -> None:
        self.client.notify(recipient, {"samp.mtype": mtype, "samp.params": params})

    def find(self, name: str, timeout: float = 10.0, mtype: str | None = None) -> str:
        """Return the id of client ``name`` once it is registered **and subscribed**.

        Registered is not subscribed: a client declares its metadata (so its name is found)
        before its subscriptions, and a call in between fails with "not subscribed". This
        waits until the client has declared subscriptions (``mtype`` among them, if given).
        """
        def look() -> str | None:
            for cid in self.client.get_registered_clients():
                try:
                    if self.client.get_metadata(cid).get("samp.name") != name:
                        continue
                    subs = self.client.get_subscriptions(cid)
                except Exception:
                    continue
                if subs and (mtype is None or mtype in subs):
                    return cid
            return None
        return str(wait_for(look, timeout, what=f"client {name} registered and subscribed"
                            + (f" to {mtype}" if mtype else "")))

    def close(self) -> None:
        try:
            self.client.disconnect()
        except Exception:
            pass


@pytest.fixture
def make_peer(hub) -> Iterator[Callable[..., RecordingPeer]]:
    peers: list[RecordingPeer] = []

    def make(name: str = "topcat", mtypes: list[str] | None = None, fail: bool = False,
             silent: bool = False) -> RecordingPeer:
        p = RecordingPeer(name, mtypes or ["table.load.votable", "image.load.fits"], fail,
                          silent)
        peers.append(p)
        return p

    yield make
    for p in peers:
        p.close()


@pytest.fixture
def make_daemon(hub) -> Iterator[Callable[..., object]]:
    """Start :class:`sampbridge.daemon.Daemon` instances; all are stopped afterwards."""
    from sampbridge.daemon import Daemon

    started: list[Daemon] = []

    def make(cfg: Config) -> Daemon:
        d = Daemon(cfg)
        started.append(d)
        d.start(wait=10)
        assert d.conn.connected, "the daemon did not register with the hub"
        return d

    yield make
    for d in started:
        d.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI a skip is a failure: a missing peer or server must not pass silently."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped under CI, which counts as a failure: {reason}"


@pytest.fixture
def make_conn(hub) -> Iterator[Callable[..., object]]:
    """Start :class:`sampbridge.samp.HubConnection` instances on the private hub (stopped after).

    ``make(handlers, name=..., **options)`` returns one registered **and subscribed** (its
    subscriptions are declared before ``connected`` is set).
    """
    from sampbridge.samp import HubConnection

    started: list[HubConnection] = []

    def make(handlers: dict | None = None, name: str = "sampbridge",
             **options: object) -> HubConnection:
        opts: dict = {"mode": "connect", "ping_interval": 0.2, "call_timeout": 5.0}
        opts.update(options)
        c = HubConnection(name, "a test connection", "0", handlers or {}, **opts)
        started.append(c)
        c.start(wait=10)
        assert c.connected, "the connection did not register with the hub"
        return c

    yield make
    for c in started:
        c.stop()


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Undo what an in-process ``cli.main`` does to logging (the CLI owns it: it replaces the
    root handlers with one on the sys.stderr of that moment), so that a later test's threads
    never log to a stream pytest has closed, and pytest's own capture stays in place."""
    root = logging.getLogger()
    names = ("sampbridge", "urllib3", "astropy")
    saved = (root.handlers[:], root.level, [logging.getLogger(n).level for n in names])
    astropy_handlers = logging.getLogger("astropy").handlers[:]
    yield
    logging.getLogger("astropy").handlers[:] = astropy_handlers
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for n, level in zip(names, saved[2], strict=True):
        logging.getLogger(n).setLevel(level)
