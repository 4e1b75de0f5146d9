"""The watched folder against hostile names, lost folders and a stop in the middle (issue 11).

Real QueryFolder (or a ``python3 -m sampbridge run`` process), real files, the local mimic for
real answers, and small loopback services owned by each test where a service must misbehave.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from sampbridge.engine import Engine
from sampbridge.folder import QueryFolder

from conftest import wait_for

pytestmark = pytest.mark.server

ADQL = "SELECT TOP 3 name, ra, dec FROM csc21.master_source\n"
CONE = "cone: {ra: 246.7925, dec: -24.32027, radius: 0.02}\n"


class _Handler(BaseHTTPRequestHandler):
    server: Service

    def log_message(self, *args: object) -> None:
        pass

    def _any(self) -> None:
        srv = self.server
        with srv.lock:
            srv.hits += 1
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        srv.released.wait(300)
        body = b"database is down"
        self.send_response(500)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        try:
            self.end_headers()
            self.wfile.write(body)
        except OSError:                 # the client gave up (or its process is gone)
            pass

    do_GET = do_POST = do_DELETE = _any


class Service(ThreadingHTTPServer):
    """A loopback service that counts requests and answers 500, at once or only once released.

    ``hold=True`` makes a service that hangs: every request waits until :meth:`release`.
    """

    daemon_threads = True

    def __init__(self, hold: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits = 0
        self.lock = threading.Lock()
        self.released = threading.Event()
        if not hold:
            self.released.set()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/tap"

    def release(self) -> None:
        self.released.set()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.shutdown()
        self.server_close()


@pytest.fixture
def qdir(tmp_path) -> Path:
    d = tmp_path / "queries"
    d.mkdir()
    return d


@pytest.fixture
def make_folder(cfg, qdir):
    made: list[tuple[QueryFolder, Engine]] = []

    def make(**changes: object) -> QueryFolder:
        engine = Engine(cfg.replace(**changes) if changes else cfg)
        f = QueryFolder(qdir, engine, settle=0.2, workers=3, scan_interval=0.3)
        f.start()
        made.append((f, engine))
        return f

    yield make
    for f, engine in made:
        f.stop(2.0)
        engine.close()


def status_lines(qdir: Path) -> list[str]:
    p = qdir / "status.log"
    return p.read_text().splitlines() if p.exists() else []


def wait_lines(qdir: Path, n: int, timeout: float = 60) -> list[str]:
    wait_for(lambda: len(status_lines(qdir)) >= n, timeout, what=f"{n} status lines")
    return status_lines(qdir)


def outputs_of(line: str) -> list[str]:
    """The result names a status line gives (``-> done/X``), not the query's own name."""
    results = line.split("; query -> ")[0]
    return re.findall(r"done/([^,;\s]+)", results)


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns,
                                       p.lstat().st_mode) for p in root.rglob("*")}


def nothing_changes(root: Path, before: dict, seconds: float = 3.0) -> None:
    """Poll ``seconds`` long: the listing must stay ``before``."""
    with pytest.raises(AssertionError, match="timed out"):
        wait_for(lambda: snapshot(root) != before, seconds, interval=0.05,
                 what="a change in the folder")


def positions_table(n: int) -> Table:
    rng = np.random.default_rng(1)
    return Table({"name": [f"s{i}" for i in range(n)],
                  "ra": 246.7925 + rng.normal(0, 0.03, n),
                  "dec": -24.32027 + rng.normal(0, 0.03, n)})


# -- item 1 --------------------------------------------------------------------------------
def test_a_dropped_table_never_takes_its_match_result_name(make_folder, qdir, tmp_path):
    """pos100.vot stays done/pos100.vot byte for byte; its match is done/pos100.match.vot."""
    make_folder()
    t = positions_table(100)
    src = tmp_path / "src"
    src.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.write(src / "pos100.vot", format="votable")
        t.write(src / "pos.vot", format="votable")
        t.write(src / "pos.xml", format="votable")
        t.write(src / "pos.fits", format="fits")
        t.write(src / "pos.csv", format="ascii.csv")
    for p in src.iterdir():
        shutil.copy(p, qdir / p.name)
    lines = wait_lines(qdir, 5)
    assert all(" OK " in ln for ln in lines), lines
    done = qdir / "done"
    assert (done / "pos100.vot").read_bytes() == (src / "pos100.vot").read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        match = Table.read(done / "pos100.match.vot", format="votable")
    assert len(match) > 0 and len(match.colnames) > len(t.colnames)    # CSC columns joined
    # four tables with the same stem: four queries kept intact, four match results, no name
    # shared between a query and a result
    names: list[str] = []
    for ln in lines:
        (query,) = re.findall(r"; query -> done/(\S+)$", ln)
        (result,) = outputs_of(ln)
        assert result.endswith(".match.vot") and result == \
            f"{query.rsplit('.', 1)[0]}.match.vot", ln
        original = src / ln.split()[2].rstrip(":")
        assert (done / query).read_bytes() == original.read_bytes(), ln
        names += [query, result]
    assert len(names) == len(set(names)) == 10


# -- item 2 --------------------------------------------------------------------------------
def test_a_list_file_never_overwrites_another_files_result(make_folder, qdir):
    """q-2.adql's answer survives a two-request q.yaml, dropped after it and beside it."""
    make_folder()
    (qdir / "q-2.adql").write_text(ADQL)
    (first,) = wait_lines(qdir, 1)
    assert outputs_of(first) == ["q-2.vot"]
    tap_answer = (qdir / "done" / "q-2.vot").read_bytes()
    (qdir / "q.yaml").write_text("- cone: {ra: 246.7925, dec: -24.32027, radius: 0.01}\n"
                                 "- cone: {ra: 246.79, dec: -24.32, radius: 0.02}\n")
    lines = wait_lines(qdir, 2)
    assert (qdir / "done" / "q-2.vot").read_bytes() == tap_answer
    assert len(outputs_of(lines[1])) == 2 and "q-2.vot" not in outputs_of(lines[1])
    # all at once: a list with images, and files whose names its results would take
    (qdir / "r.yaml").write_text(
        "- cone: {ra: 246.7925, dec: -24.32027, radius: 0.01}\n"
        "- tap: {adql: 'SELECT TOP 2 name FROM csc21.master_source'}\n"
        "- siap: {ra: 246.7925, dec: -24.32027}\n")
    for name in ("r-1.adql", "r-2.adql", "r.adql", "r-3.sql"):
        (qdir / name).write_text(ADQL)
    lines = wait_lines(qdir, 7, timeout=90)
    assert all(" OK " in ln for ln in lines), lines
    every = [n for ln in lines for n in outputs_of(ln)]
    every += [re.findall(r"; query -> done/(\S+)$", ln)[0] for ln in lines]
    assert len(every) == len(set(every)), every
    done = qdir / "done"
    assert all((done / n).is_file() for n in every)
    assert sorted(p.name for p in done.iterdir()) == sorted(every)
    assert any(n.endswith(".fits") for n in every)


# -- item 9 --------------------------------------------------------------------------------
def test_a_worker_that_wakes_after_stop_leaves_the_folder_alone(make_folder, qdir):
    """stop() is bounded by its grace; the blocked worker, once answered, touches nothing."""
    with Service(hold=True) as hang:
        f = make_folder(**{"services.tap": hang.url, "http.retries": 0})
        (qdir / "hang.adql").write_text(ADQL)
        wait_for(lambda: hang.hits >= 1, 20, what="the query at the hanging service")
        t0 = time.monotonic()
        f.stop(1.0)
        assert time.monotonic() - t0 < 2.0
        before = snapshot(qdir)
        hang.release()                  # the service answers 500 now: the worker wakes up
        wait_for(f.idle, 30, what="the worker to let go of its file")
        assert snapshot(qdir) == before
        nothing_changes(qdir, before, 1.0)
    assert (qdir / "hang.adql").exists() and not status_lines(qdir)
    assert not list((qdir / "failed").iterdir()) and not list((qdir / "done").iterdir())
    assert "hang.adql" in (qdir / ".sampbridge" / "journal.jsonl").read_text()


def test_sigterm_exits_within_the_grace_with_a_worker_blocked(vo_server, qdir, tmp_path,
                                                              samp_home):
    """One SIGTERM: the process is gone within ~7 s and the folder is as it was."""
    (qdir / "hang.adql").write_text(ADQL)
    cfgfile = tmp_path / "c.yaml"
    logfile = tmp_path / "run.log"
    with Service(hold=True) as hang:
        cfgfile.write_text(
            f"services:\n  cone: {vo_server}/csc21scs/coneSearch\n"
            f"  siap: {vo_server}/csc21siap/queryImages\n  tap: {hang.url}\n"
            f"results:\n  dir: {tmp_path / 'res'}\nhttp:\n  retries: 0\n  read_timeout: 120\n"
            f"hub:\n  mode: connect\nfolder:\n  dir: {qdir}\n  settle: 0.2\n")
        with open(logfile, "w") as err:
            p = subprocess.Popen([sys.executable, "-m", "sampbridge", "run", "--config",
                                  str(cfgfile)], env=dict(os.environ), stderr=err)
        try:
            wait_for(lambda: hang.hits >= 1, 30, what="the query at the hanging service")
            outside = {k: v for k, v in snapshot(qdir).items() if ".sampbridge" not in k}
            t0 = time.monotonic()
            p.send_signal(signal.SIGTERM)
            p.wait(30)
            took = time.monotonic() - t0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        text = logfile.read_text()
        assert took < 7.0, (took, text[-2000:])
        assert p.returncode == 0 and "stopped" in text, text[-2000:]
        after = snapshot(qdir)
        assert {k: v for k, v in after.items() if ".sampbridge" not in k} == outside
        nothing_changes(qdir, after, 3.0)
    assert (qdir / "hang.adql").exists() and not status_lines(qdir)
    assert "hang.adql" in (qdir / ".sampbridge" / "journal.jsonl").read_text()


# -- item 11 -------------------------------------------------------------------------------
def test_lost_done_and_failed_folders_come_back_and_nothing_runs_in_a_loop(make_folder,
                                                                           qdir):
    with Service() as broken:           # every TAP query fails with HTTP 500
        f = make_folder(**{"services.tap": broken.url, "http.retries": 0})
        shutil.rmtree(qdir / "done")
        shutil.rmtree(qdir / "failed")
        (qdir / "good.yaml").write_text(CONE)
        (qdir / "bad.adql").write_text(ADQL)
        lines = wait_lines(qdir, 2)
        assert sorted(ln.split()[1:3] for ln in lines) == [["FAILED", "bad.adql:"],
                                                           ["OK", "good.yaml:"]]
        for d in ("done", "failed"):
            assert oct((qdir / d).stat().st_mode & 0o777) == "0o700", d
        assert (qdir / "done" / "good.vot").is_file() and (qdir / "done" / "good.yaml").is_file()
        assert (qdir / "failed" / "bad.adql.error.txt").is_file()
        hits = broken.hits
        assert hits >= 1
        # failed/ cannot be made at all: the bad file stays, and is never sent again
        shutil.rmtree(qdir / "failed")
        (qdir / "failed").write_text("not a folder")
        (qdir / "bad2.adql").write_text(ADQL)
        lines = wait_lines(qdir, 3)
        assert " FAILED bad2.adql: " in lines[2] and "does not run again" in lines[2]
        sent = broken.hits
        assert sent == 2 * hits
        scans = f.scans
        wait_for(lambda: f.scans >= scans + 5 and f.idle(), 20, what="five more rescans")
        assert broken.hits == sent and len(status_lines(qdir)) == 3
        assert (qdir / "bad2.adql").exists()
        # the folder goes on, and a change to the file makes it run again
        (qdir / "good2.yaml").write_text(CONE)
        lines = wait_lines(qdir, 4)
        assert " OK good2.yaml" in lines[3]
        (qdir / "bad2.adql").write_text("-- again\n" + ADQL)
        lines = wait_lines(qdir, 5)
        assert " FAILED bad2.adql" in lines[4] and broken.hits == sent + hits


# -- item 14 (.reserved) -------------------------------------------------------------------
HOSTILE_YAML = {
    "tag.yaml": "cone: !custom 1\n",
    "pyobj.yaml": "!!python/object:os.system\ncone: {ra: 1, dec: 2}\n",
    "pyobj2.yaml": "cone: !!python/object/apply:os.system [ls]\n",
    "complex.yaml": "? [a, b]\n: 1\n",
    "complex2.yaml": "cone: {? [a, b] : 1}\n",
}


def test_no_reservation_is_left_behind_by_any_failure(make_folder, qdir, monkeypatch):
    f = make_folder()
    real = f.engine.run_cone

    def buggy(req, dest=None):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(f.engine, "run_cone", buggy)
    for name, body in HOSTILE_YAML.items():
        (qdir / name).write_text(body)
    (qdir / "boom.yaml").write_text(CONE)
    lines = wait_lines(qdir, len(HOSTILE_YAML) + 1)
    assert all(" FAILED " in ln for ln in lines), lines
    assert "unexpectedly" in (qdir / "failed" / "boom.yaml.error.txt").read_text()
    for name in HOSTILE_YAML:
        assert (qdir / "failed" / name).is_file() and \
            (qdir / "failed" / f"{name}.error.txt").is_file(), name
    assert not list(qdir.rglob("*.reserved")) and not list((qdir / "done").iterdir())
    assert not f.work_root.exists() or not list(f.work_root.iterdir())   # staging emptied
    # the names boom claimed are free again: the same name gets the same base
    monkeypatch.setattr(f.engine, "run_cone", real)
    (qdir / "boom.yaml").write_text(CONE)
    lines = wait_lines(qdir, len(HOSTILE_YAML) + 2)
    assert "-> done/boom.vot" in lines[-1] and (qdir / "done" / "boom.yaml").is_file()


# -- item 17 -------------------------------------------------------------------------------
def test_a_name_cannot_forge_a_status_line(make_folder, qdir, caplog):
    caplog.set_level(logging.INFO, logger="sampbridge")
    make_folder()
    forged = "x\nFAKE OK y.adql"
    (qdir / forged).write_text(ADQL)
    bad = "z\r2026-01-01T00:00:00 OK \x1b[2Jw\u2028.yaml"
    (qdir / bad).write_text("cone: {ra: 1}\n")
    lines = wait_lines(qdir, 2)
    text = (qdir / "status.log").read_text()
    assert len(text.splitlines()) == 2 and text.count("\n") == 2
    assert len(re.split(r"[\n\r\u2028\u2029\x0b\x0c\x1c\x1d\x1e\x85]", text.strip())) == 2
    assert not any(ln.startswith(("FAKE", "2026-01-01")) for ln in lines)
    (ok,) = [ln for ln in lines if ln.split()[1] == "OK"]
    assert " OK x\\nFAKE OK y.adql: tap 3 rows" in ok
    (failed,) = [ln for ln in lines if ln.split()[1] == "FAILED"]
    assert " FAILED z\\r2026-01-01T00:00:00 OK \\x1b[2Jw\\u2028.yaml: " in failed
    assert "\x1b" not in text
    err = next((qdir / "failed").glob("*.error.txt")).read_text()
    assert err.count("\n") == 1 and "\x1b" not in err and "\r" not in err
    for rec in caplog.records:
        msg = rec.getMessage()
        assert not re.search(r"[\n\r\x1b\u2028]", msg), msg
