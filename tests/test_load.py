"""Load: a pointAt flood from two peers, and 50 concurrent custom-MType calls."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import RecordingPeer, wait_for

pytestmark = pytest.mark.server


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("Threads", "VmRSS"):
            out[k] = int(v.split()[0])
    return out


@pytest.fixture
def daemon_proc(vo_server, hub, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"services:\n  cone: {vo_server}/csc21scs/coneSearch\n"
        f"  siap: {vo_server}/csc21siap/queryImages\n  tap: {vo_server}/csc21tap\n"
        f"results:\n  dir: {tmp_path / 'res'}\nhub:\n  mode: connect\n"
        "images:\n  enabled: false\nfolder:\n  enabled: false\n"
        "pointat:\n  quiet: 0.3\n  max_wait: 3.0\n")
    log = tmp_path / "daemon.log"
    with open(log, "w") as fh:
        p = subprocess.Popen([sys.executable, "-m", "sampbridge", "run", "--config", str(cfg)],
                             env=dict(os.environ), stderr=fh, stdout=fh)
    p.log = log  # type: ignore[attr-defined]
    yield p
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        p.wait(30)


def test_point_at_flood_from_two_peers(daemon_proc):
    ds9 = RecordingPeer("SAOImageDS9", ["image.load.fits"])
    aladin = RecordingPeer("Aladin", ["image.load.fits"])
    topcat = RecordingPeer("topcat", ["table.load.votable"])
    try:
        sid = topcat.find("sampbridge", timeout=20, mtype="coord.pointAt.sky")
        base = proc_status(daemon_proc.pid)
        samples: list[dict[str, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.1):
                samples.append(proc_status(daemon_proc.pid))

        threading.Thread(target=sample, daemon=True).start()
        n, t0 = 0, time.monotonic()
        for i in range(1000):                     # 100 per second for 10 s, two senders
            peer = ds9 if i % 2 else aladin
            peer.notify(sid, "coord.pointAt.sky", {"ra": f"{83.70 + i * 0.0002:.5f}",
                                                   "dec": "-5.39"})
            n += 1
            due = t0 + n / 100.0
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)                 # pacing the load, not waiting for a result
        log = daemon_proc.log
        wait_for(lambda: len(re.findall(r"coord\.pointAt\.sky from (SAOImageDS9|Aladin)",
                                        log.read_text())) >= 1000, 30,
                 what="all 1000 messages logged")
        ds9.notify(sid, "coord.pointAt.sky", {"ra": "246.7925", "dec": "-24.32027"})
        wait_for(lambda: any(t["name"].startswith("CSC 2.1 cone 246.79250")
                             for t in topcat.of("table.load.votable")), 30,
                 what="the last position answered")
        stop.set()
        threads = max(s["Threads"] for s in samples)
        rss_growth = max(s["VmRSS"] for s in samples) - base["VmRSS"]
    finally:
        for p in (ds9, aladin, topcat):
            p.close()
    daemon_proc.send_signal(signal.SIGTERM)
    assert daemon_proc.wait(30) == 0
    text = daemon_proc.log.read_text()
    queries = int(re.search(r"stopped \(received \d+, queries (\d+)", text).group(1))
    print(f"flood: threads max {threads} (idle {base['Threads']}), RSS +{rss_growth} kB, "
          f"{queries} queries for 1001 messages", file=sys.stderr)
    assert queries <= 8
    assert threads <= base["Threads"] + 40
    assert rss_growth < 80_000


def test_fifty_concurrent_custom_calls_are_all_replied(daemon_proc):
    peer = RecordingPeer("topcat", ["table.load.votable"])
    caller = RecordingPeer("script", [])
    try:
        sid = peer.find("sampbridge", timeout=20, mtype="x-sampbridge.query.cone")

        def one(i: int) -> dict:
            return caller.call(sid, "x-sampbridge.query.cone",
                             {"ra": f"{246.70 + i * 0.004:.4f}", "dec": "-24.32",
                              "radius": "0.01"}, timeout=60)

        with ThreadPoolExecutor(50) as pool:
            replies = list(pool.map(one, range(50)))
        assert len(replies) == 50
        assert all(r["samp.status"] == "samp.ok" for r in replies), \
            [r for r in replies if r["samp.status"] != "samp.ok"][:2]
        assert len({r["samp.result"]["table-id"] for r in replies}) == 50
        peer.wait_for("table.load.votable", 50, timeout=60)
    finally:
        peer.close()
        caller.close()
