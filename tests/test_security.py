"""Security: loopback only, no Web Profile, private folders, no secrets in logs, safe ADQL and
safe names.  (Table URL limits: test_tables.py; ADQL literals: test_adql.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from sampbridge.csc.adql import cone_query
from sampbridge.csc.siap import safe_name
from sampbridge.engine import Engine
from sampbridge.model import TapRequest

from conftest import DATA, local_config, wait_for


def listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state owned by ``pid``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state != "0A" or inode not in inodes:
                continue
            addr_hex, port_hex = local.split(":")
            if v6:
                addr = "::1" if addr_hex == "00000000000000000000000001000000" else addr_hex
            else:
                addr = ".".join(str(int(addr_hex[i:i + 2], 16)) for i in (6, 4, 2, 0))
            out.append((addr, int(port_hex, 16)))
    return out


@pytest.fixture
def own_hub_daemon(samp_home, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"results:\n  dir: {tmp_path / 'res'}\nhub:\n  mode: start\n"
                   f"folder:\n  dir: {tmp_path / 'q'}\n")
    log = tmp_path / "daemon.log"
    with open(log, "w") as fh:
        p = subprocess.Popen([sys.executable, "-m", "sampbridge", "run", "-v", "--config",
                              str(cfg)], env=dict(os.environ), stderr=fh, stdout=fh)
    wait_for(lambda: "registered with the SAMP hub" in log.read_text(), 20,
             what="registration")
    yield p, log, samp_home / ".samp", tmp_path
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        p.wait(30)


def test_only_loopback_sockets_and_no_web_profile(own_hub_daemon):
    p, log, lockfile, _ = own_hub_daemon
    socks = listening(p.pid)
    assert len(socks) >= 2          # the hub and the client's callback server
    assert all(addr in ("127.0.0.1", "::1") for addr, _ in socks), socks
    assert 21012 not in [port for _, port in socks]
    text = lockfile.read_text()
    assert "samp.hub.xmlrpc.url=http://127.0.0.1:" in text
    assert "web" not in text.lower().replace("samp.profile.version", "")


def test_private_folders_and_no_secret_in_the_log(own_hub_daemon):
    p, log, lockfile, tmp = own_hub_daemon
    secret = [ln.split("=", 1)[1] for ln in lockfile.read_text().splitlines()
              if ln.startswith("samp.secret=")][0]
    # the folder starts right after the registration: wait for its journal's folder
    wait_for(lambda: (tmp / "q" / ".sampbridge").is_dir(), 20, what="the folder's journal")
    for d in (tmp / "res", tmp / "q" / ".sampbridge"):
        assert oct(d.stat().st_mode & 0o777) == "0o700", d
    assert oct((tmp / "res" / "cache").stat().st_mode & 0o777) == "0o700"
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    text = log.read_text()
    assert "DEBUG" in text          # the most talkative level was on
    assert secret not in text


def test_hub_log_lines_go_once_through_the_filtered_handler(capsys):
    import logging

    from astropy import log as astropy_log

    from sampbridge.cli import _setup_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, astropy_log.handlers[:])
    try:
        _setup_logging(verbose=0, quiet=False)
        astropy_log.info("Hub: samp.secret=abcdef123456 registered")
        out, err = capsys.readouterr()   # astropy's own handler writes INFO to stdout
        assert (out + err).count("registered") == 1, out + err
        assert "abcdef123456" not in out + err
    finally:
        root.handlers[:], astropy_log.handlers[:] = saved[0], saved[2]
        root.setLevel(saved[1])


def test_log_filter_masks_secrets():
    import logging

    from sampbridge.cli import _SecretFilter

    rec = logging.LogRecord("x", logging.INFO, "f", 1, "samp.secret=%s and private-key: %s",
                            ("abcdef123456", "0123456789abcdef"), None)
    _SecretFilter().filter(rec)
    assert "abcdef123456" not in rec.getMessage()
    assert "0123456789abcdef" not in rec.getMessage()


def test_adql_is_built_only_from_numbers_and_identifiers():
    # anything but a plain name becomes a delimited identifier: inert text, not SQL
    q = cone_query("csc21.master_source; DROP TABLE x", 1, 2, 0.1, "geometry",
                   columns=["name) FROM x --"])
    assert 'FROM csc21."master_source; DROP TABLE x" WHERE' in q
    assert q.startswith('SELECT "name) FROM x --" FROM')
    for bad in ('a"b', "", "a..b", "x\nDROP"):
        with pytest.raises(ValueError):
            cone_query(bad, 1, 2, 0.1, "geometry")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            cone_query("t", bad, 2, 0.1, "csc")


def test_a_users_adql_goes_through_unchanged(tmp_path):
    seen: list[dict] = []
    body = (DATA / "recorded" / "standard" / "scs_v2.xml").read_bytes()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            n = int(self.headers["Content-Length"])
            seen.append(parse_qs(self.rfile.read(n).decode(), keep_blank_values=True))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        e = Engine(local_config(base, tmp_path / "r", **{"tap.mode": "sync",
                                                         "cache.enabled": False}))
        adql = "SELECT  name -- odd spacing, quotes ' \" and ; kept\nFROM csc21.master_source"
        e.run_tap(TapRequest(adql, None, None))
        e.close()
    finally:
        srv.shutdown()
        srv.server_close()
    assert seen[0]["QUERY"] == [adql]


@pytest.mark.parametrize("name, expected", [
    ("../../etc/passwd", "etc_passwd"), ("..", "result"), ("/abs/path", "abs_path"),
    ("a b\x00c", "a_b_c"), ("ok-name_1.vot", "ok-name_1.vot")])
def test_output_names_cannot_leave_their_folder(name, expected):
    assert safe_name(name) == expected
    assert "/" not in safe_name(name) and safe_name(name) not in (".", "..")


@pytest.mark.server
def test_query_file_names_and_options_stay_in_the_folder(cfg, tmp_path):
    from sampbridge.folder import QueryFolder

    qdir = tmp_path / "queries"
    qdir.mkdir()
    e = Engine(cfg)
    f = QueryFolder(qdir, e, settle=0.1)
    f.start()
    try:
        (qdir / "evil name;rm -rf ..%.adql").write_text(
            "-- name: ../../../tmp/owned\nSELECT TOP 2 name FROM csc21.master_source\n")
        (qdir / "trip.yaml").write_text(
            "tap: {adql: 'SELECT TOP 1 name FROM csc21.master_source'}\nname: ../../x\n")
        wait_for(lambda: len((qdir / "status.log").read_text().splitlines()) >= 2
                 if (qdir / "status.log").exists() else False, 30)
    finally:
        f.stop()
        e.close()
    made = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert all(str(p).startswith(("queries/", "results/")) for p in made), made
    assert (qdir / "done" / "evil_name_rm_-rf.vot").exists(), sorted(made)
    assert not Path("/tmp/owned").exists() and not (tmp_path / "x").exists()
