"""sampbridge doctor against the real peers, in the states that trigger each finding.

One JSAMP hub under Xvfb for the module, in a sandboxed HOME (``<root>/home``, while the
account's home is elsewhere: the very trap of Aladin's ``${user.home}/.samp``). Each DS9
verdict of the doctor is checked against DS9's own state (``SampBridgeTestSampState`` in
tests/peers/ds9_init.tcl: how many *other* clients DS9 counts for image.load.fits and for
table.load.fits), and the good state by a real pan that DS9 broadcasts.

The tests run in file order on one stack: the hub's own states first, Aladin last.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.wcs import WCS

from sampbridge.config import defaults
from sampbridge.doctor import aladin, desktop
from sampbridge.doctor.findings import Finding

from conftest import wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers.harness import ALADIN_JAR, JAVA, PeerStack, require_peers

pytestmark = pytest.mark.peers

Findings = dict[str, Finding]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerStack]:
    require_peers("topcat", "ds9", "aladin", hub="jsamp")
    st = PeerStack(tmp_path_factory.mktemp("doctor-peers"), hub="jsamp")
    st.start()
    try:
        yield st
    finally:
        st.stop()


@pytest.fixture
def look(stack: PeerStack, monkeypatch: pytest.MonkeyPatch) -> Callable[[], Findings]:
    """Run the doctor's SAMP checks as a user of the stack's sandboxed home would."""
    monkeypatch.setenv("HOME", str(stack.home))
    monkeypatch.setenv("SAMP_HUB", stack.env["SAMP_HUB"])
    real = aladin.find_processes

    def ours(home: Path | None = None) -> list[aladin.AladinProcess]:
        # only the Aladins of this stack: another test session's may run beside it
        pids = {p.pid for name, p in stack.procs.items() if name.startswith("aladin")}
        return [p for p in real(home) if p.pid in pids]

    monkeypatch.setattr(aladin, "find_processes", ours)
    return lambda: {f.topic: f for f in desktop.check(defaults(), 10)}


def _ds9_counts(st: PeerStack, image: Callable[[int], bool], table: Callable[[int], bool]
                ) -> dict[str, int]:
    """Wait until DS9's own lists (refreshed ~1 s after a client event) satisfy both."""
    got: dict[str, int] = {}

    def settled() -> bool:
        got.update(st.ds9_samp_state())
        return bool(got.get("connected")) and image(got["image"]) and table(got["table"])

    wait_for(settled, 20, interval=0.2, what=f"DS9's image/table subscriber counts (last {got})")
    return got


def _ds9(st: PeerStack) -> None:
    """Start DS9 unless it runs (the tests share it; each may run alone)."""
    if not st.is_running("ds9"):
        st.start_ds9()


class Bridge:
    """``python -m sampbridge run`` on the stack's hub, stopped by SIGTERM."""

    def __init__(self, st: PeerStack, workdir: Path, vo: str, **settings: object) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        values = {"services": {"cone": f"{vo}/csc21scs/coneSearch",
                               "siap": f"{vo}/csc21siap/queryImages",
                               "tap": f"{vo}/csc21tap"},
                  "results": {"dir": str(workdir / "results")},
                  "hub": {"mode": "connect", "ping_interval": 0.5},
                  "folder": {"enabled": False}, **settings}
        cfg = workdir / "sampbridge.yaml"
        cfg.write_text(yaml.safe_dump(values))
        self.log = workdir / "sampbridge.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "sampbridge", "run", "--config",
                                          str(cfg)], env=st.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.id = st.find_client("sampbridge", timeout=30, need_mtypes=["coord.pointAt.sky"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def test_the_hub_stopped_then_running(stack: PeerStack, look: Callable[[], Findings]) -> None:
    f = look()["hub"]
    assert f.level == "OK"
    assert f.text.startswith("a hub answers at http://") and str(stack.lockfile) in f.text
    stack._kill("hub")                    # JSAMP, stopped
    f = look()["hub"]
    assert f.level == "FAIL"
    assert f.text.startswith(("no SAMP hub runs: there is no lockfile",
                              "the hub at "))          # JSAMP may leave its lockfile
    assert str(stack.lockfile) in f.text
    stack.start_hub()
    assert look()["hub"].level == "OK"


def test_ds9_alone_does_not_broadcast(stack: PeerStack, look: Callable[[], Findings]) -> None:
    _ds9(stack)
    got = look()
    assert got["DS9"].level == "OK" and "SAOImageDS9" in got["DS9"].text
    assert got["sampbridge"].level == "FAIL"
    assert got["DS9 clicks"].level == "FAIL"
    assert "no other client subscribes to image.load.fits or table.load.fits" in \
        got["DS9 clicks"].text
    # DS9 agrees: nobody else in either of its lists
    assert _ds9_counts(stack, lambda n: n == 0, lambda n: n == 0)["image"] == 0


def test_a_votable_subscriber_is_not_a_table_subscriber_for_ds9(
        stack: PeerStack, look: Callable[[], Findings]) -> None:
    _ds9(stack)
    with stack.connect_client("listener", ["image.load.fits", "table.load.votable"]):
        f = look()["DS9 clicks"]
        assert f.level == "FAIL"
        assert "no other client subscribes to table.load.fits," in f.text
        assert "start sampbridge" not in f.fix
        counts = _ds9_counts(stack, lambda n: n >= 1, lambda n: n == 0)
        assert (counts["image"], counts["table"]) == (1, 0)


def _load_image(st: PeerStack, tmp: Path) -> None:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [83.633, 22.0145]
    w.wcs.crpix = [32.5, 32.5]
    w.wcs.cdelt = [-0.002, 0.002]
    path = tmp / "field.fits"
    fits.PrimaryHDU(np.zeros((64, 64), "f4"), header=w.to_header()).writeto(path)
    st.ds9_set(f"fits {path}")


def _pan_is_broadcast(st: PeerStack, tries: int = 3) -> None:
    with st.connect_client("ears", ["coord.pointAt.sky"]) as ears:
        for attempt in range(tries):      # DS9 skips a pan while it handles a SAMP message
            ears.clear()
            st.ds9_send_point_at(83.633, 22.0145 + attempt * 1e-4, via="pan")
            try:
                ears.wait_for("coord.pointAt.sky", sender=st.peer_id("ds9"), timeout=5)
                return
            except TimeoutError:
                continue
    raise AssertionError("DS9 did not broadcast a pan")


def test_sampbridge_alone_is_enough_for_ds9(stack: PeerStack, look: Callable[[], Findings],
                                            vo_server: str, tmp_path: Path) -> None:
    _ds9(stack)
    bridge = Bridge(stack, tmp_path / "bridge", vo_server)
    try:
        got = look()
        assert got["sampbridge"].level == "OK"
        assert got["sampbridge"].text == (f"sampbridge is registered ({bridge.id}) and "
                                          "listens to clicks")
        assert got["DS9 clicks"] == Finding(
            "OK", "DS9 clicks", "DS9 broadcasts clicks: other clients take image.load.fits by "
                                "sampbridge; table.load.fits by sampbridge")
        counts = _ds9_counts(stack, lambda n: n >= 1, lambda n: n >= 1)
        assert counts["image"] >= 1 and counts["table"] >= 1
        _load_image(stack, tmp_path)
        _pan_is_broadcast(stack)
    finally:
        bridge.stop()


def test_without_table_subscriptions_ds9_needs_topcat(
        stack: PeerStack, look: Callable[[], Findings], vo_server: str, tmp_path: Path) -> None:
    _ds9(stack)
    bridge = Bridge(stack, tmp_path / "bridge", vo_server, tables={"subscribe": False})
    try:
        f = look()["DS9 clicks"]
        assert f.level == "FAIL" and "no other client subscribes to table.load.fits," in f.text
        assert "tables.subscribe: true" in f.fix
        _ds9_counts(stack, lambda n: n >= 1, lambda n: n == 0)
        stack.start_topcat()
        got = look()
        assert got["TOPCAT"].level == "OK"
        assert got["DS9 clicks"].level == "OK"
        assert "table.load.fits by topcat" in got["DS9 clicks"].text
        _ds9_counts(stack, lambda n: n >= 1, lambda n: n >= 1)
    finally:
        bridge.stop()
        stack.stop_peer("topcat")


def test_no_aladin_in_a_sandboxed_home_is_a_warning(stack: PeerStack,
                                                    look: Callable[[], Findings]) -> None:
    account = aladin.account_home()
    assert os.path.realpath(account) != os.path.realpath(stack.home)   # the sandbox
    got = look()
    assert got["Aladin"].level == "INFO"
    f = got["Aladin's lockfile"]
    assert f.level == "WARN"
    assert f.text == (f"an Aladin started without -Duser.home reads only {account}/.samp, but "
                      f"the hub's lockfile is {stack.lockfile}: it would not find this hub")
    assert f.fix == f"start Aladin as: java -Duser.home={stack.home} -jar aladin.jar"


def test_aladin_with_the_right_home_finds_the_hub(stack: PeerStack,
                                                  look: Callable[[], Findings]) -> None:
    stack.start_aladin()
    try:
        got = look()
        assert got["Aladin"].level == "OK"
        assert got["Aladin's lockfile"] == Finding(
            "OK", "Aladin's lockfile", "Aladin is registered, so it reads the hub's lockfile "
                                       f"{stack.lockfile}")
    finally:
        stack.stop_peer("aladin")


def test_aladin_reading_another_home_is_a_failure(stack: PeerStack,
                                                  look: Callable[[], Findings]) -> None:
    elsewhere = stack.root / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    jvm = [a if not a.startswith("-Duser.home=") else f"-Duser.home={elsewhere}"
           for a in stack.peer_jvm_args]
    p = stack._spawn("aladin-elsewhere", [JAVA, "-Xmx512m", *jvm, "-jar", ALADIN_JAR,
                                          *stack.ALADIN_OFFLINE_FLAGS])
    try:
        wait_for(lambda: any(a.pid == p.pid for a in aladin.find_processes()), 20,
                 what="the Aladin process")
        got = look()
        assert got["Aladin"].level == "INFO"                   # not on this hub
        f = got["Aladin's lockfile"]
        assert f.level == "FAIL"
        assert f.text == (f"the running Aladin (pid {p.pid}) reads only {elsewhere}/.samp (its "
                          f"-Duser.home), but the hub's lockfile is {stack.lockfile}: it will "
                          "not find this hub")
        assert f.fix == f"restart Aladin as: java -Duser.home={stack.home} -jar aladin.jar"
    finally:
        stack._kill("aladin-elsewhere")


def test_a_desktop_in_order_exits_0(stack: PeerStack, vo_server: str, tmp_path: Path) -> None:
    """The command itself, as the user runs it: every viewer, sampbridge, the mimic."""
    _ds9(stack)
    bridge = Bridge(stack, tmp_path / "bridge", vo_server)
    stack.start_topcat()
    stack.start_aladin()
    try:
        run = subprocess.run([sys.executable, "-m", "sampbridge", "doctor", "--config",
                              str(tmp_path / "bridge" / "sampbridge.yaml")], env=stack.env,
                             capture_output=True, text=True, timeout=120)
        lines = run.stdout.splitlines()
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.stderr == ""
        assert [line.split()[0] for line in lines[:-1]] == ["OK"] * 10 + ["INFO", "OK"]
        assert [line.split(":")[0].split(None, 1)[1] for line in lines[:-1]] == [
            "hub", "sampbridge", "TOPCAT", "DS9", "Aladin", "DS9 clicks", "Aladin's lockfile",
            "cone service", "SIAP service", "TAP service", "mirror", "results folder"]
        assert lines[-1] == "all 12 checks passed"
        # and one thing wrong: sampbridge gone
        bridge.stop()
        run = subprocess.run([sys.executable, "-m", "sampbridge", "doctor", "--no-services"],
                             env=stack.env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 1
        assert "FAIL  sampbridge: sampbridge is not registered with this hub, so clicks go " \
               "nowhere -> start it: sampbridge run" in run.stdout
    finally:
        bridge.stop()
        stack.stop_peer("aladin")
        stack.stop_peer("topcat")
