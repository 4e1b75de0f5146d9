"""Progress of the ``query`` commands: a bar on a terminal, nothing extra when piped.

The command runs as a user runs it (``python3 -m sampbridge``), its stderr once a pseudo
terminal and once a pipe, against the local mimic's CXC-shaped services.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from astropy.table import Table

from conftest import VO_BASE

pytestmark = pytest.mark.server


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"services:\n  cone: {VO_BASE}/csc21scs/coneSearch\n"
                    f"  siap: {VO_BASE}/csc21siap/queryImages\n  tap: {VO_BASE}/csc21tap\n"
                    f"results:\n  dir: {tmp_path / 'results'}\ncache:\n  enabled: false\n"
                    "cone:\n  source: service\nmatch:\n  strategy: cone\n")
    return path


def _on_a_terminal(args: list[str], timeout: float = 120.0) -> tuple[int, str, str]:
    """Run ``python3 -m sampbridge args`` with stderr on a pseudo terminal."""
    master, slave = pty.openpty()
    # a terminal of 24 x 100 (a new pty has 0 columns, where tqdm draws nothing)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "sampbridge", *args], stdout=subprocess.PIPE,
                         stderr=slave, env=dict(os.environ, COLUMNS="100"))
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:         # the other end closed: the command has ended
                break
            if not chunk:
                break
            seen += chunk
        elif p.poll() is not None:
            break
    os.close(master)
    out = p.communicate(timeout=10)[0].decode()
    return p.wait(timeout=10), out, seen.decode(errors="replace")


def _query_tap(cfg: Path, out: Path) -> list[str]:
    return ["query", "tap", "--config", str(cfg), "--out", str(out), "--adql",
            "SELECT TOP 20 name, ra, dec FROM csc21.master_source"]


def test_an_async_tap_query_shows_its_job_phases_on_a_terminal(tmp_path: Path) -> None:
    code, out, err = _on_a_terminal(_query_tap(_config(tmp_path), tmp_path / "t.vot"))
    assert code == 0, err
    assert "20 rows" in out
    assert "TAP job" in err                       # the bar's description
    assert any(phase in err for phase in ("QUEUED", "EXECUTING", "COMPLETED", "DOWNLOADING")), err


def test_a_match_shows_its_rows_on_a_terminal(tmp_path: Path) -> None:
    table = tmp_path / "mine.csv"
    Table({"ra": [83.633, 246.79, 10.0], "dec": [22.014, -24.32, -5.0]}).write(table)
    code, out, err = _on_a_terminal(["query", "match", str(table), "--config",
                                     str(_config(tmp_path)), "--out", str(tmp_path / "m.vot")])
    assert code == 0, err
    assert "rows" in out
    assert "match:" in err and "/3 [" in err, err   # a bar, its total known: 3 positions


def test_piped_output_has_no_bar(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "sampbridge",
                        *_query_tap(_config(tmp_path), tmp_path / "t.vot")],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "TAP job" not in r.stderr   # a short job: not one line
    assert r.stdout.strip().startswith("20 rows")
