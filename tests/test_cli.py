"""The command line through its own door: ``python3 -m sampbridge ...`` as a subprocess.

Issue 11 items 12 (a stopped ``query tap`` deletes its async job, whatever the signal), 13 (bad
input gets one line and exit status 2, service errors exit 1, never a traceback) and 15
(a negative sexagesimal declination is a value, not an option).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from astropy.table import Table
from astropy.units import UnitsWarning

from conftest import wait_for
from faulty_server import FaultyServer, wait_port_closed_url

STOPPED_DELETED = "sampbridge: stopped: the TAP job was deleted on the server"


def write_config(tmp_path: Path, base: str, name: str = "config.yaml", **services: str) -> Path:
    """A config file with every service under ``base`` (or as given) and no cache."""
    urls = {"cone": f"{base}/csc21scs/coneSearch", "siap": f"{base}/csc21siap/queryImages",
            "tap": f"{base}/csc21tap", **services}
    path = tmp_path / name
    path.write_text("services:\n" + "".join(f"  {k}: {v}\n" for k, v in urls.items())
                    + f"results:\n  dir: {tmp_path / 'results'}\n"
                    "http:\n  connect_timeout: 5.0\n  read_timeout: 30.0\n"
                    "cache:\n  enabled: false\n")
    return path


def cli(*args: str | Path, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``python3 -m sampbridge args`` and return what it did."""
    return subprocess.run([sys.executable, "-m", "sampbridge", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def one_line_error(r: subprocess.CompletedProcess, code: int) -> str:
    """Assert exit ``code``, no traceback and a single stderr line; return that line."""
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stderr
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("sampbridge: error: "), lines[0]
    return lines[0]


# -- a loopback UWS whose jobs never finish (item 12) ---------------------------------------------
_JOB = """<?xml version="1.0" encoding="UTF-8"?>
<uws:job version="1.1" xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><uws:jobId>{id}</uws:jobId>
<uws:ownerId xsi:nil="true"/><uws:phase>{phase}</uws:phase>
<uws:quote>2026-01-02T00:00:00Z</uws:quote><uws:creationTime>2026-01-01T00:00:00Z</uws:creationTime>
<uws:startTime xsi:nil="true"/><uws:endTime xsi:nil="true"/>
<uws:executionDuration>3600</uws:executionDuration>
<uws:destruction>2026-01-02T00:00:00Z</uws:destruction>
<uws:parameters><uws:parameter id="query">SELECT 1</uws:parameter></uws:parameters>
<uws:results/></uws:job>"""


class _UWSHandler(BaseHTTPRequestHandler):
    server: NeverEndingUWS

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, code: int, body: bytes = b"", location: str | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        if location:
            self.send_header("Location", location)
        self.end_headers()
        self.wfile.write(body)

    def _parts(self) -> list[str]:
        return self.path.split("?")[0].strip("/").split("/")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts, uws = self._parts(), self.server
        if parts == ["tap", "async"]:
            job = uws.new_job()
            self._reply(303, location=f"/tap/async/{job}")
        elif len(parts) == 4 and parts[3] == "phase" and parts[2] in uws.jobs:
            uws.set_phase(parts[2], "EXECUTING")
            self._reply(303, location=f"/tap/async/{parts[2]}")
        else:
            self._reply(404)

    def do_GET(self) -> None:
        parts, uws = self._parts(), self.server
        phase = uws.jobs.get(parts[2]) if len(parts) == 3 else None
        if phase is None:
            self._reply(404)
            return
        if phase == "EXECUTING" and uws.stall_polls:
            uws.release.wait(30)            # a poll that hangs: the CLI's worker is stuck in it
        self._reply(200, _JOB.format(id=parts[2], phase=phase).encode())

    def do_DELETE(self) -> None:
        parts, uws = self._parts(), self.server
        with uws.lock:
            uws.deletes.append(parts[-1])
        if uws.delete_mode == "hang":
            uws.release.wait(30)
            return
        if uws.delete_mode == "refuse":
            self._reply(500, b"cannot delete now")
            return
        with uws.lock:
            uws.jobs.pop(parts[-1], None)
        self._reply(303, location="/tap/async")


class NeverEndingUWS(ThreadingHTTPServer):
    """A TAP ``/async`` on 127.0.0.1 whose jobs stay EXECUTING; it records every DELETE.

    Parameters
    ----------
    delete_mode : {"ok", "refuse", "hang"}
        How a DELETE is answered: 303, HTTP 500, or not at all.
    stall_polls : bool
        Whether a poll of an executing job hangs (the client is stuck in the network).
    """

    daemon_threads = True

    def __init__(self, delete_mode: str = "ok", stall_polls: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _UWSHandler)
        self.delete_mode = delete_mode
        self.stall_polls = stall_polls
        self.jobs: dict[str, str] = {}
        self.deletes: list[str] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def new_job(self) -> str:
        with self.lock:
            job = f"job{len(self.jobs) + len(self.deletes) + 1}"
            self.jobs[job] = "PENDING"
        return job

    def set_phase(self, job: str, phase: str) -> None:
        with self.lock:
            self.jobs[job] = phase

    def executing(self) -> list[str]:
        with self.lock:
            return [j for j, p in self.jobs.items() if p == "EXECUTING"]

    def handle_error(self, request: object, client_address: object) -> None:
        pass                                # a client that left mid-answer is expected here

    def __enter__(self) -> NeverEndingUWS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()

    @property
    def tap_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/tap"


def _stop_tap_query(tmp_path: Path, uws: NeverEndingUWS, sig: int
                    ) -> tuple[subprocess.CompletedProcess, str, float]:
    """Start ``query tap`` on ``uws``, send ``sig`` once its job runs; return (result, job, s)."""
    cfg = write_config(tmp_path, wait_port_closed_url(), tap=uws.tap_url)
    out = tmp_path / "out.vot"
    p = subprocess.Popen([sys.executable, "-m", "sampbridge", "query", "tap", "--config",
                          str(cfg), "--adql", "SELECT TOP 1 * FROM csc21.master_source",
                          "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=dict(os.environ))
    try:
        job = wait_for(uws.executing, 30, what="the TAP job to run")[0]
        t0 = time.monotonic()
        p.send_signal(sig)
        stdout, stderr = p.communicate(timeout=30)
        seconds = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert not out.exists() and not out.with_name("out.vot.part").exists()
    return subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr), job, seconds


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130),
                                           (signal.SIGHUP, 129)])
def test_a_stopped_tap_query_deletes_its_job(tmp_path, sig, code):
    """Item 12: SIGTERM and SIGHUP delete the async job as SIGINT does, then exit 128+n."""
    with NeverEndingUWS() as uws:
        r, job, seconds = _stop_tap_query(tmp_path, uws, sig)
        assert uws.deletes == [job]
        assert uws.jobs == {}
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == code, r.stderr
    assert r.stderr.strip().splitlines() == [STOPPED_DELETED]
    assert seconds < 5, f"took {seconds:.1f} s to stop"


def test_a_stopped_tap_query_stuck_in_a_poll_still_deletes_its_job(tmp_path):
    """Item 12: a worker blocked in the network does not hold the exit; the CLI deletes."""
    with NeverEndingUWS(stall_polls=True) as uws:
        r, job, seconds = _stop_tap_query(tmp_path, uws, signal.SIGTERM)
        assert uws.deletes == [job]
        assert job not in uws.jobs
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 143, r.stderr
    assert r.stderr.strip().splitlines() == [STOPPED_DELETED]
    assert seconds < 8, f"took {seconds:.1f} s to stop"


@pytest.mark.parametrize("delete_mode", ["refuse", "hang"])
def test_a_job_that_cannot_be_deleted_is_named_and_the_exit_is_prompt(tmp_path, delete_mode):
    """Item 12: a service that refuses or ignores the DELETE gets a short timeout, and the
    message says the job may still run, with its URL."""
    with NeverEndingUWS(delete_mode=delete_mode) as uws:
        r, job, seconds = _stop_tap_query(tmp_path, uws, signal.SIGTERM)
        assert uws.deletes == [job]         # one DELETE, not one per waiting thread
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 143, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last == (f"sampbridge: stopped: the TAP job {uws.tap_url}/async/{job} could not be "
                    "deleted on the server; it runs until the service ends it")
    # the delete's own timeout is 5 s, whatever the connection's read timeout (30 s here)
    assert seconds < 8, f"took {seconds:.1f} s to stop"


def test_a_stopped_cone_search_exits_at_once_without_a_partial_file(tmp_path):
    """Item 12: SIGTERM stops a query that is waiting for its service as SIGINT does."""
    with FaultyServer(slow_seconds=60) as slow:
        cfg = write_config(tmp_path, wait_port_closed_url(), cone=slow.url("/slow"))
        out = tmp_path / "cone.vot"
        p = subprocess.Popen([sys.executable, "-m", "sampbridge", "query", "cone", "--config",
                              str(cfg), "246.8", "-24:19:13", "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ))
        try:
            wait_for(lambda: slow.hits.get("/slow"), 30, what="the cone request")
            t0 = time.monotonic()
            p.send_signal(signal.SIGTERM)
            _, stderr = p.communicate(timeout=30)
            seconds = time.monotonic() - t0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert "Traceback" not in stderr, stderr
    assert p.returncode == 143, stderr
    assert stderr.strip().splitlines() == ["sampbridge: stopped"]
    assert seconds < 3, f"took {seconds:.1f} s to stop"
    assert list(tmp_path.glob("cone.vot*")) == []


# -- one line, exit 2 for the user's errors and 1 for the service's (item 13) ---------------------
def test_a_latin1_adql_file_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path, wait_port_closed_url())
    Path("q.adql").write_bytes("SELECT name, '\xe9' FROM t".encode("latin-1"))
    r = cli("query", "tap", "--config", cfg, "--file", "q.adql", "--out", "o.vot")
    assert one_line_error(r, 2) == ("sampbridge: error: q.adql is not UTF-8 text (byte 14); "
                                    "save it as UTF-8")


def _bad_input_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    """(arguments, what the one line must say) for input a person must fix."""
    cfg = write_config(tmp_path, wait_port_closed_url())
    (tmp_path / "dir").mkdir()
    (tmp_path / "ok.adql").write_text("SELECT 1")
    (tmp_path / "nul.adql").write_bytes(b"SELECT \x00 1")
    (tmp_path / "latin1.yaml").write_bytes("results:\n  dir: /tmp/\xe9\n".encode("latin-1"))
    (tmp_path / "proc.yaml").write_text("results:\n  dir: /proc/sampbridge-results\n")
    (tmp_path / "a-file").write_text("x")
    tap = ["query", "tap", "--config", str(cfg)]
    out = ["--out", str(tmp_path / "o.vot")]
    sel = ["--adql", "SELECT 1"]
    return [
        ([*tap, "--file", str(tmp_path / "missing.adql"), *out], "No such file or directory"),
        ([*tap, "--file", str(tmp_path / "dir"), *out], "Is a directory"),
        ([*tap, "--file", "/dev/zero", *out], "over 1,000,000 bytes"),
        ([*tap, "--file", str(tmp_path / "nul.adql"), *out], "binary data"),
        ([*tap, *sel, "--out", str(tmp_path / "nowhere" / "o.vot")], "does not exist"),
        ([*tap, "--file", str(tmp_path / "ok.adql"), "--out", str(tmp_path / "dir")],
         "is a folder"),
        (["query", "tap", "--config", str(tmp_path / "proc.yaml"), *sel, *out],
         "cannot write /proc/sampbridge-results"),
        ([*tap, *sel, "--maxrec", "lots", *out], "'maxrec' must be a number"),
        (["query", "tap", "--config", str(tmp_path / "none.yaml"), *sel, *out],
         str(tmp_path / "none.yaml")),
        (["query", "tap", "--config", str(tmp_path / "dir"), *sel, *out], str(tmp_path / "dir")),
        (["query", "tap", "--config", str(tmp_path / "latin1.yaml"), *sel, *out],
         "not UTF-8 text"),
        (["check-config", str(tmp_path / "latin1.yaml")], "not UTF-8 text"),
        (["query", "cone", "--config", str(cfg), "north", "-24:19:13", *out],
         "'ra' must be a number"),
        (["query", "cone", "--config", str(cfg), "246.8", "-94:19:13", *out],
         "between -90 and +90"),
        (["query", "siap", "--config", str(cfg), "246.8", "-24.3", "--out",
          str(tmp_path / "a-file")], "is a file"),
        (["query", "siap", "--config", str(cfg), "246.8", "-24.3", "--out",
          str(tmp_path / "nowhere" / "deeper" / "imgs")], "does not exist"),
        (["query", "siap", "--config", str(cfg), "246.8", "-24.3", "--count", "-1", "--out",
          str(tmp_path / "imgs")], "--count must be 0 or more"),
    ]


def test_every_bad_input_is_one_line_and_exit_2(tmp_path):
    """Item 13: each user error names what to fix, in one line, exit 2, no traceback."""
    for args, says in _bad_input_cases(tmp_path):
        r = cli(*args)
        line = one_line_error(r, 2)
        assert says in line, (args, line)


def test_service_errors_are_one_line_and_exit_1(tmp_path, vo_server):
    """Item 13: an ADQL the service rejects, and a service that is not there, exit 1."""
    cfg = write_config(tmp_path, vo_server)
    r = cli("query", "tap", "--config", cfg, "--adql", "SELEC nonsense", "--out",
            tmp_path / "o.vot")
    assert "rejected by the service" in one_line_error(r, 1)
    down = write_config(tmp_path, wait_port_closed_url(), "down.yaml")
    r = cli("query", "cone", "--config", down, "246.8", "-24.3", "--out", tmp_path / "o.vot")
    one_line_error(r, 1)
    assert not (tmp_path / "o.vot").exists()
    # the query ran, its result cannot be written where the user said: theirs to fix
    r = cli("query", "cone", "--config", cfg, "246.8", "-24.3", "--out", "/proc/o.vot")
    assert one_line_error(r, 2) == ("sampbridge: error: cannot write /proc/o.vot: "
                                    "No such file or directory")


# -- negative sexagesimal declinations (item 15) --------------------------------------------------
def _rows(path: Path) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnitsWarning)
        return len(Table.read(path, format="votable"))


@pytest.fixture(scope="module")
def decimal_cone(vo_server, tmp_path_factory) -> tuple[Path, int]:
    """A config for the mimic, and the rows of the cone at 246.7925 -24.3202778 (decimal)."""
    tmp = tmp_path_factory.mktemp("cone")
    cfg = write_config(tmp, vo_server)
    r = cli("query", "cone", "--config", cfg, "246.7925", "-24.3202778", "--radius", "0.05",
            "--out", tmp / "ref.vot")
    assert r.returncode == 0, r.stderr
    rows = _rows(tmp / "ref.vot")
    assert rows > 0
    return cfg, rows


@pytest.mark.parametrize(("ra", "dec"), [
    ("16h27m10.2s", "-24d19m13s"), ("16h27m10.2s", "-24:19:13"), ("16:27:10.2", "-24 19 13"),
    ("16:27:10.2", "-24d19m13.0s"), ("246.7925", "-24.3202778")])
@pytest.mark.parametrize("options_first", [False, True])
def test_a_negative_declination_is_a_value_in_every_spelling(tmp_path, decimal_cone, ra, dec,
                                                             options_first):
    """Item 15: ``query cone 16h27m10.2s -24d19m13s`` finds what the decimal call finds."""
    cfg, expected = decimal_cone
    out = tmp_path / "x.vot"
    opts = ["--config", str(cfg), "--radius", "0.05", "--out", str(out)]
    args = [*opts, ra, dec] if options_first else [ra, dec, *opts]
    r = cli("query", "cone", *args)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{expected} rows -> "), r.stdout
    assert _rows(out) == expected


def test_siap_takes_a_negative_sexagesimal_declination(tmp_path, vo_server):
    """Item 15: siap reads the same spellings and finds the images the decimal call finds."""
    cfg = write_config(tmp_path, vo_server)
    found = []
    for ra, dec in [("246.7925", "-24.3202778"), ("16h27m10.2s", "-24d19m13s"),
                    ("16:27:10.2", "-24:19:13")]:
        r = cli("query", "siap", "--config", cfg, ra, dec, "--count", "0", "--out",
                tmp_path / "imgs")
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        found.append(r.stderr.strip().splitlines()[-1].split(" images found")[0])
    assert found[0] != "0" and found == [found[0]] * 3, found


def test_help_still_works_and_offers_sexagesimal():
    for kind in ("cone", "siap"):
        r = cli("query", kind, "--help")
        assert r.returncode == 0, r.stderr
        assert "dd:mm:ss" in r.stdout and "-24d19m13s" in r.stdout


def _leaves(parser, path=(), defaults=None):
    """Yield ``(words, defaults)`` for every command that runs (a parser without subcommands),
    with the defaults it and its parents set."""
    import argparse

    defaults = {**(defaults or {}), **parser._defaults}
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, defaults
        return
    for name, child in subs[0].choices.items():
        yield from _leaves(child, (*path, name), defaults)


def test_every_registered_command_has_a_handler():
    """The registries (cli.commands.GROUPS, cli.query.KINDS) give every leaf command a
    handler, and every query kind a run_query."""
    from sampbridge.cli.commands import GROUPS, groups
    from sampbridge.cli.parser import build_parser
    from sampbridge.cli.query import KINDS

    leaves = dict(_leaves(build_parser(groups())))
    assert {words[0] for words in leaves} == {g.replace("_", "-") for g in GROUPS}
    assert {words[1] for words in leaves if words[0] == "query"} == set(KINDS)
    for words, defaults in leaves.items():
        assert callable(defaults.get("handler")), words
        if words[0] == "query":
            assert callable(defaults.get("run_query")), words


def test_check_config_in_process_and_a_config_error_is_exit_2(tmp_path, capsys):
    import logging

    from astropy import log as astropy_log

    from sampbridge.cli import main

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, astropy_log.handlers[:])
    try:                                # main() sets logging up: put it back afterwards
        assert main(["check-config"]) == 0
        assert "(defaults): OK" in capsys.readouterr().out
        bad = tmp_path / "bad.yaml"
        bad.write_text("cone:\n  radius: -1\n  nonsense: 3\n")
        assert main(["check-config", str(bad)]) == 2
    finally:
        root.handlers[:], astropy_log.handlers[:] = saved[0], saved[2]
        root.setLevel(saved[1])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 2 and all(line.startswith("sampbridge: error: ") for line in err), err


def test_one_group_defaults_do_not_leak_into_another():
    """A group may quieten its own commands (set_defaults(quiet=True)); no other command
    becomes quiet for it: each group has its own copy of the common options."""
    import argparse

    from sampbridge.cli.commands import groups
    from sampbridge.cli.parser import build_parser

    class Quiet:
        @staticmethod
        def register(sub, common: argparse.ArgumentParser) -> None:
            sub.add_parser("hush", parents=[common]).set_defaults(handler=print, quiet=True)

    parser = build_parser([*groups(), Quiet()])
    assert parser.parse_args(["hush"]).quiet
    for words in (["run"], ["check-config"], ["query", "cone", "1", "2", "--out", "x"]):
        args = parser.parse_args(words)
        assert args.quiet is False and args.verbose == 0, words
