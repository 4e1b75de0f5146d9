"""Service faults and shutdown: the real mimic behind a proxy the test stops and restarts (never
the shared mimic itself), and a loopback server that misbehaves on purpose."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest

from conftest import VO_BASE, RecordingPeer, local_config, wait_for
from faulty_server import FaultyServer, ServiceProxy

pytestmark = pytest.mark.server

#: about 15 s of work for the mimic's PostgreSQL: a job that is surely still running
SLOW_ADQL = ("SELECT COUNT(*) AS n FROM csc21.observation_source AS a "
             "JOIN csc21.observation_source AS b ON a.obsid = b.obsid "
             "JOIN csc21.stack_source AS c ON c.region_id = a.region_id "
             "JOIN csc21.master_stack_assoc AS d ON d.region_id = b.region_id")
RHO = {"ra": "246.7925", "dec": "-24.32027"}


def async_jobs() -> dict[str, str]:
    """Job id -> phase of the jobs the mimic holds."""
    with urllib.request.urlopen(f"{VO_BASE}/tap/async", timeout=10) as r:
        text = r.read().decode()
    ids = re.findall(r'<uws:jobref id="([^"]+)"', text)
    phases = re.findall(r"<uws:phase>([A-Z]+)</uws:phase>", text)
    return dict(zip(ids, phases, strict=False))


@pytest.mark.parametrize("path, words", [
    ("/slow", "did not answer within the read timeout"),
    ("/500", "HTTP 500"),
    ("/html", "not a VOTable"),
    ("/truncated", "cut off|not a complete VOTable"),
])
def test_service_faults_reach_the_caller_as_readable_errors(tmp_path, make_daemon, make_peer,
                                                            path, words):
    with FaultyServer(slow_seconds=30) as srv:
        cfg = local_config(VO_BASE, tmp_path / "r", **{
            "services.cone": srv.url(path), "http.read_timeout": 1.0, "http.retries": 1,
            "images.enabled": False})
        d = make_daemon(cfg)
        peer = make_peer("topcat", ["table.load.votable"])
        sid = peer.find("sampbridge")
        resp = peer.call(sid, "x-sampbridge.query.cone", RHO)
        assert resp["samp.status"] == "samp.error"
        assert re.search(words, resp["samp.error"]["samp.errortxt"]), resp
        assert "url=http://127.0.0.1" in resp["samp.error"].get("samp.debugtxt", "")
        assert peer.call(sid, "samp.app.ping", {})["samp.status"] == "samp.ok"
        assert d.conn.connected
        srv.release.set()


def test_429_with_retry_after_is_retried(tmp_path, make_daemon, make_peer):
    with FaultyServer() as srv:
        cfg = local_config(VO_BASE, tmp_path / "r", **{
            "services.cone": srv.url("/429-then-ok"), "images.enabled": False})
        make_daemon(cfg)
        peer = make_peer("topcat", ["table.load.votable"])
        resp = peer.call(peer.find("sampbridge"), "x-sampbridge.query.cone", RHO)
        assert resp["samp.status"] == "samp.ok" and resp["samp.result"]["rows"] == "109"
        assert srv.hits["/429-then-ok"] == 2


@pytest.fixture
def mimic_proxy(vo_server):
    """The mimic behind a proxy this test owns: stopping it never touches the shared mimic."""
    with ServiceProxy(vo_server) as proxy:
        yield proxy


def delete_jobs(ids: set[str]) -> None:
    """Delete the mimic's async jobs ``ids`` (those a test left running)."""
    for job in ids:
        req = urllib.request.Request(f"{VO_BASE}/tap/async/{job}", method="DELETE")
        try:
            urllib.request.urlopen(req, timeout=10).close()
        except Exception:  # gone already
            pass


def test_service_stopped_then_restarted(mimic_proxy, tmp_path, make_daemon, make_peer):
    qdir = tmp_path / "queries"
    base = mimic_proxy.base
    cfg = local_config(base, tmp_path / "r", **{
        "images.enabled": False, "http.retries": 0, "cache.enabled": False,
        "folder.enabled": True, "folder.dir": str(qdir), "folder.settle": 0.1})
    d = make_daemon(cfg)
    peer = make_peer("topcat", ["table.load.votable"])
    sid = peer.find("sampbridge", mtype="x-sampbridge.query.tap")
    before = set(async_jobs())
    # a TAP job is running when the server goes away
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("r", peer.call(
        sid, "x-sampbridge.query.tap", {"adql": SLOW_ADQL}, timeout=60)))
    t.start()
    try:
        wait_for(lambda: "EXECUTING" in {p for j, p in async_jobs().items() if j not in before},
                 20, what="the job to run")
        mimic_proxy.stop()
        t.join(60)
    finally:
        delete_jobs(set(async_jobs()) - before)
    assert box["r"]["samp.status"] == "samp.error"
    assert "cannot reach the service" in box["r"]["samp.error"]["samp.errortxt"]
    resp = peer.call(sid, "x-sampbridge.query.cone", RHO)
    assert resp["samp.status"] == "samp.error"
    host = base.removeprefix("http://")
    assert f"cannot reach the service at {host}" in resp["samp.error"]["samp.errortxt"]
    (qdir / "down.yaml").write_text("cone: {ra: 246.7925, dec: -24.32027}\n")
    wait_for(lambda: (qdir / "failed" / "down.yaml.error.txt").exists(), 20)
    assert "cannot reach the service" in (qdir / "failed" / "down.yaml.error.txt").read_text()
    mimic_proxy.start()
    resp = peer.call(sid, "x-sampbridge.query.cone", RHO)
    assert resp["samp.status"] == "samp.ok" and resp["samp.result"]["rows"] == "109"
    assert d.conn.connected


def test_sigterm_in_the_middle_of_everything(vo_server, hub, tmp_path):
    qdir = tmp_path / "queries"
    qdir.mkdir()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"services:\n  cone: {vo_server}/csc21scs/coneSearch\n"
        f"  siap: {vo_server}/csc21siap/queryImages\n  tap: {vo_server}/csc21tap\n"
        f"results:\n  dir: {tmp_path / 'res'}\nhub:\n  mode: connect\n"
        f"cache:\n  enabled: false\nfolder:\n  dir: {qdir}\n  settle: 0.1\n"
        "reply_within: 60\n")
    before = set(async_jobs())
    log = tmp_path / "daemon.log"
    with open(log, "w") as fh:
        p = subprocess.Popen([sys.executable, "-m", "sampbridge", "run", "--config", str(cfg)],
                             env=dict(os.environ), stderr=fh, stdout=fh)
    peer = RecordingPeer("topcat", ["table.load.votable"])
    try:
        sid = peer.find("sampbridge", timeout=20)
        box: dict = {}
        t = threading.Thread(target=lambda: box.setdefault("r", peer.call(
            sid, "x-sampbridge.query.tap", {"adql": SLOW_ADQL}, timeout=60)))
        t.start()
        (qdir / "slow.adql").write_text(SLOW_ADQL + "\n")
        wait_for(lambda: len(set(async_jobs()) - before) >= 2, 20, what="two jobs running")
        ours = set(async_jobs()) - before
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
        t.join(30)
        # the caller was answered, with a sentence
        assert box["r"]["samp.status"] == "samp.error"
        assert "stopped" in box["r"]["samp.error"]["samp.errortxt"]
        # the daemon unregistered
        assert sid not in peer.client.get_registered_clients()
    finally:
        if p.poll() is None:
            p.kill()
        peer.close()
    # the query file is journaled, not lost: still in the folder, to run at the next start
    assert (qdir / "slow.adql").exists()
    assert '"start"' in (qdir / ".sampbridge" / "journal.jsonl").read_text()
    assert not list((qdir / "failed").iterdir())
    # no half-written result anywhere, and the server jobs were deleted
    assert not list(tmp_path.glob("**/*.part"))
    wait_for(lambda: not (set(async_jobs()) & ours), 20, what="the jobs to be deleted")
    text = log.read_text()
    assert "received SIGTERM" in text and "stopped (" in text and "Traceback" not in text
