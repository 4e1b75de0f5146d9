"""The mirror under faults: resume, pins, damage, no network, a full disk, a changing count.

Mimic at its default scale (3622 master sources).  The service faults come from servers this
module owns (a closed port; a private proxy that changes the row count), never the shared mimic.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests

from sampbridge.csc import http
from sampbridge.csc.cone import ConeService
from sampbridge.csc.tap import TapClient
from sampbridge.engine import Engine
from sampbridge.errors import SampBridgeError
from sampbridge.mirror import Mirror, MirrorError, MirrorUnusable, build, open_mirror, status
from sampbridge.mirror import builder as build_mod
from sampbridge.model import ConeRequest

from conftest import local_config
from faulty_server import wait_port_closed_url

pytestmark = pytest.mark.server
TABLE = "csc21.master_source"


def svc(base: str) -> dict[str, str]:
    return {"tap": f"{base}/csc21tap", "cone": f"{base}/csc21scs/coneSearch"}


def clients(tap: str, cone: str) -> tuple[TapClient, ConeService, requests.Session]:
    s = http.make_session(2, 30, "no", retries=0)
    return TapClient(tap, s), ConeService(cone, s, retries=0), s


def run_build(base: str, root: Path, **kw: object) -> dict:
    tap, cone, s = clients(**svc(base))
    try:
        return build(tap, cone, table=TABLE, release="2.1", root=root,
                     **{"retries": 0, **kw})  # type: ignore[arg-type]
    finally:
        s.close()


@pytest.fixture(scope="module")
def built(vo_server: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "mirrors"
    run_build(vo_server, root)
    return root


def one_sentence(exc: BaseException) -> str:
    text = str(exc)
    assert isinstance(exc, SampBridgeError) and "\n" not in text and "Traceback" not in text
    assert len(text) < 300, text
    return text


def test_an_interrupted_build_resumes_from_its_slices(vo_server: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "m"
    calls: list[int] = []

    def stop_after_one(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 2:                      # the first call is (0, total)
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):       # two slices of <= 2500 rows, one done
        run_build(vo_server, root, progress=stop_after_one, parallel=1, slice_rows=2500)
    work = root / "2.1.building"
    journal = json.loads((work / "journal.json").read_text())
    assert len(journal["done"]) == 1
    assert work.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in work.iterdir() if p.is_file())
    assert not (root / "2.1").exists()           # no half mirror that looks whole
    st = status(root, "2.1", svc(vo_server))
    assert st["state"] == "absent" and st["building"]["slices"] == 1
    with pytest.raises(MirrorUnusable):
        open_mirror(root, "2.1", svc(vo_server))

    fetched: list[str] = []
    real = build_mod.SliceSource.fetch

    def counting(self, s):                       # type: ignore[no-untyped-def]
        fetched.append(s.key)
        return real(self, s)
    monkeypatch.setattr(build_mod.SliceSource, "fetch", counting)
    manifest = run_build(vo_server, root, slice_rows=2500)
    assert manifest["rows"] == 3622 and fetched
    assert not set(fetched) & set(journal["done"])          # saved slices were not fetched
    assert not work.exists()
    m = open_mirror(root, "2.1", svc(vo_server))
    try:
        assert len(set(m.data.field("name"))) == 3622
    finally:
        m.close()


def test_a_mirror_is_pinned_to_its_release_and_services(built: Path, vo_server: str,
                                                        tmp_path: Path):
    man = json.loads((built / "2.1" / "manifest.json").read_text())
    assert man["slices"] == 1 and man["rows"] == 3622   # the guessed whole-sky slice was kept
    open_mirror(built, "2.1", svc(vo_server)).close()
    with pytest.raises(MirrorUnusable) as exc:          # another release: its own folder
        open_mirror(built, "2.0", svc(vo_server))
    assert exc.value.state == "absent"
    with pytest.raises(MirrorUnusable, match="release 2.1, not the configured 2.0") as exc:
        Mirror.open(built / "2.1", release="2.0")      # the manifest says so too
    assert exc.value.state == "other"
    other = {"tap": f"{vo_server}/tap", "cone": f"{vo_server}/csc21/q/coneSearch/scs.xml"}
    with pytest.raises(MirrorUnusable, match="built from the tap service") as exc:
        open_mirror(built, "2.1", other)
    assert exc.value.state == "other"
    cfg = local_config(vo_server, tmp_path / "r", **{"mirror.dir": str(built),
                                                     "services.tap": other["tap"]})
    e = Engine(cfg)
    try:
        assert e.mirror is None
        st = e.mirror_status()
        assert st["state"] == "other" and "not the configured" in st["reason"]
        assert e.match_strategy() != "mirror"
    finally:
        e.close()


def _copy(built: Path, tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(built, root)
    return root


def test_a_truncated_mirror_is_bypassed_and_reported(built: Path, vo_server: str,
                                                     tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture):
    root = _copy(built, tmp_path)
    fits_path = root / "2.1" / "mirror.fits"
    with open(fits_path, "r+b") as fh:
        fh.truncate(fits_path.stat().st_size // 2)
    cfg = local_config(vo_server, tmp_path / "r", **{"mirror.dir": str(root)})
    with caplog.at_level(logging.WARNING, logger="sampbridge"):
        e = Engine(cfg)
    try:
        assert e.mirror is None
        assert any("truncated" in r.getMessage() for r in caplog.records)
        res = e.run_cone(ConeRequest(246.79, -24.32, 0.05, 2))
        assert res.rows > 0 and not res.service_url.startswith("mirror:")
        st = e.mirror_status()
        assert st["state"] == "corrupt" and "truncated" in st["reason"]
    finally:
        e.close()


def test_a_changed_byte_fails_verification(built: Path, vo_server: str, tmp_path: Path):
    root = _copy(built, tmp_path)
    fits_path = root / "2.1" / "mirror.fits"
    data = bytearray(fits_path.read_bytes())
    data[-100] ^= 0xFF
    fits_path.write_bytes(bytes(data))
    assert status(root, "2.1", svc(vo_server))["state"] == "ready"      # size and header fine
    st = status(root, "2.1", svc(vo_server), verify=True)
    assert st["state"] == "corrupt" and st["verified"] is False and "sha256" in st["reason"]
    (root / "2.1" / "manifest.json").write_text("{not json")
    st = status(root, "2.1", svc(vo_server))
    assert st["state"] == "corrupt" and "manifest" in st["reason"]


def test_no_network_is_one_sentence(tmp_path: Path):
    dead = wait_port_closed_url().rsplit("/", 1)[0]
    tap, cone, s = clients(dead + "/csc21tap", dead + "/csc21scs/coneSearch")
    with pytest.raises(MirrorError) as exc:
        build(tap, cone, table=TABLE, release="2.1", root=tmp_path / "m", retries=0)
    s.close()
    assert "cannot reach" in one_sentence(exc.value)


def test_a_full_disk_is_one_sentence(vo_server: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch):
    def full(*a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(build_mod, "write_fits", full)
    with pytest.raises(MirrorError) as exc:
        run_build(vo_server, tmp_path / "m")
    assert "disk is full" in one_sentence(exc.value)
    assert not (tmp_path / "m" / "2.1").exists()
    assert (tmp_path / "m" / "2.1.building" / "journal.json").exists()     # resumable


class _CountChanger(BaseHTTPRequestHandler):
    """Forwards to the mimic; from the second whole-table COUNT(*) on, one row more."""

    server: _Proxy

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        r = requests.post(self.server.upstream + self.path, data=body, timeout=30,
                          headers={"Content-Type": self.headers.get("Content-Type", "")})
        content = r.content
        if b"COUNT" in body and b"WHERE" not in body:
            with self.server.lock:
                self.server.counts += 1
                later = self.server.counts > 1
            if later:
                content = content.replace(b"<TD>3622</TD>", b"<TD>3623</TD>")
        self.send_response(r.status_code)
        self.send_header("Content-Type", r.headers.get("Content-Type", "text/xml"))
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)


class _Proxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _CountChanger)
        self.upstream = upstream
        self.counts = 0
        self.lock = threading.Lock()


@pytest.fixture
def changing_tap(vo_server: str) -> Iterator[str]:
    proxy = _Proxy(vo_server)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{proxy.server_address[1]}/csc21tap"
    proxy.shutdown()
    proxy.server_close()


def test_a_row_count_that_changes_is_one_sentence(vo_server: str, changing_tap: str,
                                                  tmp_path: Path):
    tap, cone, s = clients(changing_tap, svc(vo_server)["cone"])
    with pytest.raises(MirrorError) as exc:
        build(tap, cone, table=TABLE, release="2.1", root=tmp_path / "m", retries=0)
    s.close()
    assert "changed its row count" in one_sentence(exc.value)
    assert not (tmp_path / "m" / "2.1").exists()


def test_cli_status_json_and_remove(built: Path, vo_server: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]):
    from sampbridge.cli import main

    root = _copy(built, tmp_path)
    conf = tmp_path / "c.yaml"
    conf.write_text(f"services:\n  tap: {vo_server}/csc21tap\n"
                    f"  cone: {vo_server}/csc21scs/coneSearch\n"
                    f"mirror:\n  dir: {root}\nresults:\n  dir: {tmp_path / 'r'}\n")
    assert main(["mirror", "status", "--json", "--config", str(conf)]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["state"] == "ready" and st["verified"] is True and st["rows"] == 3622
    table = tmp_path / "in.csv"
    rng = np.random.default_rng(3)
    table.write_text("ra,dec\n" + "".join(f"{246.79 + x:.6f},{-24.32 + y:.6f}\n"
                                          for x, y in rng.normal(0, 0.02, (50, 2))))
    out = tmp_path / "out.vot"
    assert main(["query", "match", str(table), "--out", str(out), "--radius", "5",
                 "--mode", "all", "--config", str(conf)]) == 0
    assert "mirror" in capsys.readouterr().out and out.exists()
    assert b"(mirror)" in out.read_bytes()[:2000]          # the table's name says so
    assert main(["mirror", "remove", "--config", str(conf)]) == 0
    assert not (root / "2.1").exists()
    assert main(["mirror", "status", "--config", str(conf)]) == 1
    assert "absent" in capsys.readouterr().out


def test_a_running_engine_takes_up_a_new_mirror(built: Path, vo_server: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch):
    import sampbridge.engine_mirror as em

    monkeypatch.setattr(em, "RECHECK", 0.0)
    root = tmp_path / "later"
    e = Engine(local_config(vo_server, tmp_path / "r", **{"mirror.dir": str(root)}))
    try:
        assert e.mirror is None
        first = e.run_cone(ConeRequest(246.79, -24.32, 0.05, 2))
        assert not first.service_url.startswith("mirror:")
        shutil.copytree(built, root)                     # as `mirror build` installs one
        res = e.run_cone(ConeRequest(246.79, -24.32, 0.05, 2))
        assert res.service_url.startswith("mirror:") and res.rows == first.rows
        shutil.rmtree(root / "2.1")                      # `mirror remove`
        again = e.run_cone(ConeRequest(246.79, -24.32, 0.05, 2))
        assert not again.service_url.startswith("mirror:")
    finally:
        e.close()


def test_kill_9_then_sigterm_keep_the_saved_slices(vo_server: str, tmp_path: Path):
    import signal
    import subprocess
    import sys

    from conftest import wait_for

    root = tmp_path / "m"
    conf = tmp_path / "c.yaml"
    conf.write_text(f"services:\n  tap: {vo_server}/csc21tap\n"
                    f"  cone: {vo_server}/csc21scs/coneSearch\n"
                    f"mirror:\n  dir: {root}\n  slice_rows: 300\n  parallel: 1\n"
                    f"results:\n  dir: {tmp_path / 'r'}\n")
    journal = root / "2.1.building" / "journal.json"

    def saved() -> int:
        try:
            return len(json.loads(journal.read_text())["done"])
        except (OSError, ValueError, KeyError):
            return 0

    def run_until(more_than: int, sig: int) -> subprocess.CompletedProcess:
        p = subprocess.Popen([sys.executable, "-m", "sampbridge", "mirror", "build", "--config",
                              str(conf)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        try:
            wait_for(lambda: saved() > more_than, 60, what="a slice saved")
        finally:
            p.send_signal(sig)
        out, err = p.communicate(timeout=60)
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)

    killed = run_until(0, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    first = saved()
    assert first >= 1 and not (root / "2.1").exists()
    stopped = run_until(first, signal.SIGTERM)       # resumes, saves more, then stops cleanly
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert "resume" in stopped.stderr.splitlines()[-1]
    assert saved() > first and not (root / "2.1").exists()
