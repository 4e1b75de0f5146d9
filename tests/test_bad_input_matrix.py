"""The bad-input matrix: malformed messages, parameters, table URLs, query files and config
files.  Each gets its readable error, the daemon survives all of them, and no query file is lost.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import wait_for
from helpers import BOMB_LEVELS, SECRET

pytestmark = pytest.mark.server

PT = "coord.pointAt.sky"
CONE, SIAP, TAP, MATCH = ("x-sampbridge.query.cone", "x-sampbridge.query.siap",
                          "x-sampbridge.query.tap", "x-sampbridge.match.table")
TLOAD = "table.load.votable"

RADIUS_RANGE = "'radius' must be greater than 0 and at most 3600 arcsec, not '-5'"
RADIUS_NAN = "'radius' must be a finite number of arcsec, not 'nan'"
MODE_WORDS = "'mode' must be best or all, not 'near'"

#: (kind, what, expected words in the error)
MATRIX: list[tuple[str, object, str]] = [
    # SAMP messages and parameters
    ("call", (PT, {"ra": "abc", "dec": "1"}), "'ra' must be a number"),
    ("call", (PT, {"ra": "nan", "dec": "1"}), "finite"),
    ("call", (PT, {"ra": "1", "dec": "-inf"}), "finite"),
    ("call", (PT, {"ra": "1", "dec": "90.5"}), "between -90 and +90"),
    ("call", (PT, {"ra": "1000", "dec": "1"}), "between 0 and 360"),
    ("call", (PT, {"dec": "1"}), "'ra' missing"),
    ("call", (PT, {}), "'ra' and 'dec' missing"),
    ("call", (PT, {"ra": ["1", "2"], "dec": "1"}), "must be a number"),
    ("call", (PT, {"ra": {"x": "1"}, "dec": "1"}), "must be a number"),
    ("call", (CONE, {"ra": "1", "dec": "1", "radius": "-1"}), "'radius' must be greater"),
    ("call", (CONE, {"ra": "1", "dec": "1", "radius": "45"}), "at most 1"),
    ("call", (CONE, {"ra": "1", "dec": "1", "verb": "4"}), "'verb' must be one of"),
    ("call", (CONE, {"ra": "1", "dec": "1", "verb": "2.5"}), "whole number"),
    ("call", (CONE, {"ra": "1", "dec": "1", "colour": "red"}), "unknown parameter"),
    ("call", (SIAP, {"ra": "1", "dec": "1", "size": "0"}), "'size' must be greater"),
    ("call", (TAP, {}), "'adql' is missing"),
    ("call", (TAP, {"adql": "   "}), "'adql' is missing"),
    ("call", (TAP, {"adql": "SELECT 1", "maxrec": "-5"}), "'maxrec' must be 1 or more"),
    ("call", (TAP, {"adql": "SELECT nope FROM csc21.master_source"}), "could not be located"),
    ("call", (TAP, {"adql": "DROP TABLE csc21.master_source"}), "rejected by the service"),
    ("call", (TAP, {"adql": "SELECT * FROM csc21.no_such_table"}), "rejected by the service"),
    ("call", (TAP, {"adql": "SELECT x", "name": ["a"]}), "'name' must be text"),
    ("call", ("table.highlight.row", {"table-id": "nope", "row": "1"}), "does not know table"),
    ("call", ("table.select.rowList", {"table-id": "nope", "row-list": ["1"]}),
     "does not know table"),
    ("call", ("table.highlight.row", {"table-id": ["a", "b"], "row": "1"}),
     "'table-id' must be text"),
    ("call", ("table.highlight.row", {"table-id": {"a": "b"}, "row": "1"}),
     "'table-id' must be text"),
    # table URLs
    ("call", (TLOAD, {}), "no table 'url'"),
    ("call", (TLOAD, {"url": "gopher://127.0.0.1/x"}), "only file:"),
    ("call", (TLOAD, {"url": "http://198.51.100.7/t.vot"}), "refusing to fetch"),
    ("call", (TLOAD, {"url": "file://otherhost/t.vot"}), "names another host"),
    ("call", (TLOAD, {"url": "file:///nonexistent/t.vot"}), "cannot read the table file"),
    ("call", (TLOAD, {"url": "{http}/missing.vot"}), "does not exist (HTTP 404)"),
    ("call", (TLOAD, {"url": "{tmp}/notatable.vot"}), "not a readable table"),
    ("call", (TLOAD, {"url": "{tmp}/nopos.csv"}), "no position columns found"),
    ("call", (MATCH, {"url": "{tmp}/nopos.csv", "radius": "zero"}), "'radius' must be a"),
    # one request model: the same bad match options get the same sentence through every door
    ("call", (MATCH, {"url": "{tmp}/nopos.csv", "radius": "-5"}), RADIUS_RANGE),
    ("call", (MATCH, {"url": "{tmp}/nopos.csv", "radius": "nan"}), RADIUS_NAN),
    ("call", (MATCH, {"url": "{tmp}/nopos.csv", "mode": "near"}), MODE_WORDS),
    # query files
    ("file", ("bad.yaml", "cone: {ra: 1, dec: [\n"), "not valid YAML"),
    ("file", ("key.yaml", "cone: {ra: 1, dec: 2}\nfoo: 1\n"), "unknown key 'foo'"),
    ("file", ("dec.yaml", "cone: {ra: 1, dec: 99}\n"), "between -90 and +90"),
    ("file", ("adql.adql", "SELECT nope FROM csc21.master_source\n"), "could not be located"),
    ("file", ("opt.sql", "-- maxrecs: 5\nSELECT 1 AS x FROM csc21.master_source\n"),
     "unknown option 'maxrecs'"),
    ("file", ("t.csv", "a,b\n1,2\n"), "no position columns found"),
    ("file", ("r5.yaml", "match: {table: t.csv, radius: -5}\n"), RADIUS_RANGE),
    ("file", ("rnan.yaml", "match: {table: t.csv, radius: .nan}\n"), RADIUS_NAN),
    ("file", ("near.yaml", "match: {table: t.csv, mode: near}\n"), MODE_WORDS),
    # hostile query files (issue 11): escapes, bombs, tags, special files, other encodings
    ("file", ("bomb.yaml", BOMB_LEVELS + "\ncone: {ra: *i, dec: 1}\n"), "YAML aliases"),
    ("file", ("tag.yaml", "cone: {ra: !custom 1, dec: 2}\n"), "YAML tags such as !custom"),
    ("file", ("obj.yaml", "cone: !!python/object:os.system {}\n"), "YAML tags"),
    ("file", ("cplx.yaml", "? [a, b]\n: 1\n"), "line 1, column"),
    ("file", ("out.yaml", "match: {table: ../outside.csv}\n"),
     "only files inside the query folder"),
    ("file", ("latin.adql", "SELECT name FROM csc21.master_source WHERE name = '\xe9'\n"
              .encode("latin-1")), "not UTF-8 text"),
    ("link", ("shadow.csv", "{tmp}/outside.csv"), "is a symbolic link"),
    ("link", ("zero.csv", "/dev/zero"), "is a symbolic link"),
    ("fifo", "pipe.adql", "named pipe"),
    # config files
    ("config", "cone:\n  radius: -1\n", "c.yaml:2: cone.radius: must be between"),
    ("config", "hub:\n  mode: sometimes\n", "c.yaml:2: hub.mode: must be one of"),
    ("config", "typo_key: 1\n", "c.yaml:1: typo_key: unknown key"),
    ("config", "services:\n  cone: not-a-url\n", "c.yaml:2: services.cone: must be an http"),
    ("config", "folder: [1, 2]\n", "c.yaml:1: folder: must be a mapping"),
    ("config", ": : :\n", "not valid YAML"),
    ("config", BOMB_LEVELS + "\nrelease: *i\n", "YAML aliases"),
    ("config", "release: !custom 1\n", "YAML tags"),
]


def test_bad_input_matrix(cfg, make_daemon, make_peer, tmp_path):
    assert len(MATRIX) >= 30
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    (tmp_path / "notatable.vot").write_text("this is not a VOTable")
    (tmp_path / "nopos.csv").write_text("flux,mag\n1,2\n")
    (tmp_path / "outside.csv").write_text(f"ra,dec,token\n1,2,{SECRET}\n")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    qdir = tmp_path / "queries"
    d = make_daemon(cfg.replace(**{"images.enabled": False, "folder.enabled": True,
                                   "folder.dir": str(qdir), "folder.settle": 0.1}))
    peer = make_peer("topcat", ["table.load.votable"])
    sid = peer.find("sampbridge")
    problems: list[str] = []
    files: list[tuple[str, str]] = []
    try:
        for kind, what, words in MATRIX:
            if kind == "call":
                mtype, params = what  # type: ignore[misc]
                params = {k: (v.format(tmp=tmp_path.as_uri(),
                                       http=f"http://127.0.0.1:{srv.server_address[1]}")
                              if isinstance(v, str) else v) for k, v in params.items()}
                resp = peer.call(sid, mtype, params)
                text = resp.get("samp.error", {}).get("samp.errortxt", "")
                if resp["samp.status"] != "samp.error" or words not in text:
                    problems.append(f"{mtype} {params}: {resp}")
                peer.notify(sid, mtype, params)        # the notify form is only logged
            elif kind == "file":
                name, body = what  # type: ignore[misc]
                if isinstance(body, bytes):
                    (qdir / name).write_bytes(body)
                else:
                    (qdir / name).write_text(body)
                files.append((name, words))
            elif kind == "link":
                name, target = what  # type: ignore[misc]
                (qdir / name).symlink_to(target.format(tmp=tmp_path))
                files.append((name, words))
            elif kind == "fifo":
                os.mkfifo(qdir / str(what))
                files.append((str(what), words))
            else:
                c = tmp_path / "c.yaml"
                c.write_text(str(what))
                r = subprocess.run([sys.executable, "-m", "sampbridge", "check-config", str(c)],
                                   capture_output=True, text=True, timeout=60)
                lines = r.stderr.strip().splitlines()
                if r.returncode != 2 or len(lines) != 1 or words not in lines[0] \
                        or "Traceback" in r.stderr:
                    problems.append(f"config {what!r}: rc {r.returncode} {r.stderr!r}")
        for name, words in files:
            err = qdir / "failed" / f"{name}.error.txt"
            wait_for(err.exists, 30, what=f"{name} set aside")
            if words not in err.read_text():
                problems.append(f"file {name}: {err.read_text()!r}")
        # no query file lost: each one is in failed/ (none answered, none left, none twice)
        assert sorted(p.name for p in (qdir / "failed").iterdir()
                      if not p.name.endswith(".error.txt")) == sorted(n for n, _ in files)
        assert not [p for p in qdir.iterdir() if p.is_file() and p.name != "status.log"]
        # nothing of a file outside the folder leaks into what the folder writes
        for written in [qdir / "status.log", *(qdir / "failed").glob("*.error.txt")]:
            assert SECRET not in written.read_text(), written
        assert peer.call(sid, "samp.app.ping", {})["samp.status"] == "samp.ok"
        assert d.conn.connected
        assert not re.search(r"Traceback", "".join(p for p in problems))
    finally:
        srv.shutdown()
        srv.server_close()
    assert not problems, "\n".join(problems)
