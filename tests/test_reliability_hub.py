"""Hub loss: 20 kill-and-restart cycles on the JSAMP hub and on the pyvo hub.

sampbridge must register again within 5 s each time (it pings, re-reads the lockfile, and
re-declares metadata and subscriptions), and results that finished while no hub was up must be
delivered after the reconnect.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import wait_for
from peers.harness import PeerStack, require_peers

pytestmark = [pytest.mark.peers, pytest.mark.server]

CYCLES = 20


def write_config(path: Path, base: str, tmp: Path) -> None:
    path.write_text(
        f"services:\n  cone: {base}/csc21scs/coneSearch\n  siap: {base}/csc21siap/queryImages\n"
        f"  tap: {base}/csc21tap\nresults:\n  dir: {tmp / 'results'}\n"
        "images:\n  enabled: false\n"
        "hub:\n  mode: connect\n  ping_interval: 0.5\n"
        f"folder:\n  dir: {tmp / 'queries'}\n  settle: 0.1\n  scan_interval: 0.5\n")


@pytest.mark.parametrize("hub", ["jsamp", "python"])
def test_twenty_hub_kills_and_restarts(hub, vo_server, tmp_path):
    require_peers(hub=hub)
    cfg = tmp_path / "c.yaml"
    write_config(cfg, vo_server, tmp_path)
    log = open(tmp_path / "daemon.log", "w")
    with PeerStack(tmp_path / "stack", hub=hub) as st:
        d = subprocess.Popen([sys.executable, "-m", "sampbridge", "run", "--config", str(cfg)],
                             env=st.env, stderr=log, stdout=log)
        try:
            st.find_client("sampbridge", timeout=20)
            times, delivered = [], 0
            for i in range(CYCLES):
                hard = i % 2 == 0
                st.kill_hub(hard=hard)
                outage_file = None
                if i % 5 == 4:
                    # a result finishes while no hub is up
                    outage_file = tmp_path / "queries" / f"outage{i}.yaml"
                    outage_file.write_text("cone: {ra: 246.7925, dec: -24.32027, "
                                           f"radius: 0.0{i % 9 + 1}}}\n")
                    wait_for(lambda f=outage_file: (f.parent / "done" / f.name).exists(), 20,
                             what="the query answered during the outage")
                st.start_hub()
                t0 = time.monotonic()
                st.find_client("sampbridge", timeout=15)
                times.append(time.monotonic() - t0)
                if outage_file is not None:
                    with st.connect_client("topcat", ["table.load.votable"]) as rec:
                        msg = rec.wait_for("table.load.votable", timeout=20)
                        assert msg.params["name"].startswith("CSC 2.1 cone")
                        delivered += 1
            assert max(times) < 5.0, times
            assert delivered == CYCLES // 5
        finally:
            d.send_signal(signal.SIGTERM)
            rc = d.wait(30)
            log.close()
    text = (tmp_path / "daemon.log").read_text()
    assert rc == 0, text[-3000:]
    assert text.count("registered with the SAMP hub") == CYCLES + 1
    assert "kept for delivery after the reconnect" in text
    print(f"{hub}: reconnect times (s): min {min(times):.2f} median "
          f"{sorted(times)[len(times) // 2]:.2f} max {max(times):.2f}", file=sys.stderr)
