"""The watched folder with real files, a real watchdog observer and the real local mimic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from sampbridge.engine import Engine
from sampbridge.folder import QueryFolder

from conftest import GUIDE_DIR, local_config, wait_for
from helpers import SHAPES, shape

pytestmark = pytest.mark.server


@pytest.fixture
def qdir(tmp_path) -> Path:
    return tmp_path / "queries"


@pytest.fixture
def folder(cfg, qdir):
    engine = Engine(cfg)
    delivered: list = []
    f = QueryFolder(qdir, engine, delivered.append, settle=0.3, workers=3, scan_interval=0.5)
    f.delivered = delivered  # type: ignore[attr-defined]
    f.start()
    yield f
    f.stop()
    engine.close()


def status_lines(qdir: Path) -> list[str]:
    p = qdir / "status.log"
    return p.read_text().splitlines() if p.exists() else []


def wait_answered(qdir: Path, n: int, timeout: float = 60) -> list[str]:
    wait_for(lambda: len(status_lines(qdir)) >= n, timeout, what=f"{n} status lines")
    return status_lines(qdir)


def rows(path: Path) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return len(Table.read(path, format="votable"))


def sources_table(n: int = 10) -> Table:
    t = Table({"name": [f"s{i}" for i in range(n)],
               "ra": 246.7925 + np.arange(n) * 0.001, "dec": np.full(n, -24.32027)})
    return t


def test_every_file_type(folder, qdir):
    (qdir / "guide1.adql").write_text((GUIDE_DIR / "1_master_sources.adql").read_text())
    (qdir / "opts.sql").write_text("-- name: my ten\n-- maxrec: 10\n-- send_to: topcat, ds9\n"
                                   "SELECT name, ra, dec FROM csc21.master_source\n")
    (qdir / "cone.yaml").write_text("cone: {ra: 246.7925, dec: -24.32027, radius: 0.02}\n")
    (qdir / "many.yml").write_text(
        "- cone: {ra: 0.02, dec: 1.5}\n"
        "- siap: {ra: 246.7925, dec: -24.32027}\n"
        "- tap: {adql: 'SELECT TOP 3 name FROM csc21.master_source'}\n  name: three\n"
        "- match: {table: tables/src.vot, radius: 5}\n")
    t = sources_table()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (qdir / "tables").mkdir()       # a match: table lies inside the folder
        t.write(qdir / "tables" / "src.vot", format="votable")
        t.write(qdir / "list.vot", format="votable")
        t.write(qdir / "list2.xml", format="votable")
        t.write(qdir / "list3.fits", format="fits")
        t.write(qdir / "list4.csv", format="ascii.csv")
    lines = wait_answered(qdir, 8)
    assert all(" OK " in ln for ln in lines), lines
    done = qdir / "done"
    assert rows(done / "guide1.vot") == 1000
    assert rows(done / "opts.vot") == 10
    assert rows(done / "cone.vot") > 0
    assert rows(done / "many-1.vot") > 0 and rows(done / "many-3.vot") == 3
    assert list(done.glob("many-2-*.fits"))
    assert (done / "many-4.vot").exists()
    for name in ("list", "list2", "list3", "list4"):      # a table file's match result
        assert rows(done / f"{name}.match.vot") > 0, name
    for q in ("guide1.adql", "opts.sql", "cone.yaml", "many.yml", "list.vot", "list3.fits"):
        assert (done / q).exists() and not (qdir / q).exists()
    assert not list((qdir / "failed").iterdir())
    opts = [o for o in folder.delivered if o.query.name == "opts.sql"][0]
    assert opts.send_to == [["topcat", "ds9"]] and opts.results[0].name == "my ten"
    assert "tap 10 rows -> done/opts.vot (truncated at MAXREC)" in "\n".join(lines)


def test_backlog_is_processed_at_start(cfg, qdir):
    qdir.mkdir(parents=True)
    for i in range(5):
        (qdir / f"b{i}.yaml").write_text(f"cone: {{ra: 246.79, dec: -24.32, radius: 0.0{i + 1}}}")
    engine = Engine(cfg)
    f = QueryFolder(qdir, engine, settle=0.2)
    f.start()
    try:
        lines = wait_answered(qdir, 5)
        assert sorted(ln.split()[2] for ln in lines) == [f"b{i}.yaml:" for i in range(5)]
    finally:
        f.stop()
        engine.close()


def test_slow_writer_is_never_run_half_written(folder, qdir):
    text = (GUIDE_DIR / "2_stack_detections.adql").read_text()
    with open(qdir / "slow.adql", "w") as fh:
        for i in range(0, len(text), 80):
            fh.write(text[i:i + 80])
            fh.flush()
            time.sleep(0.1 if i < len(text) // 2 else 0.02)
        time.sleep(0.8)            # a pause longer than the settle time, file still open
        fh.write("\n")
    (line,) = wait_answered(qdir, 1)
    assert " OK slow.adql" in line and rows(qdir / "done" / "slow.vot") == 1000


def test_editor_style_save_runs_once(folder, qdir):
    for tmpname in (".cone.yaml.swp", "cone.yaml~", "#cone.yaml#", ".#cone.yaml", "4913",
                    "cone.yaml.part", "cone.yaml.tmp"):
        (qdir / tmpname).write_text("cone: {ra: 1, dec: 2}\n")
    tmp = qdir / ".cone.yaml.swx"
    tmp.write_text("cone: {ra: 246.7925, dec: -24.32027}\n")
    os.rename(tmp, qdir / "cone.yaml")
    (line,) = wait_answered(qdir, 1)
    assert " OK cone.yaml" in line
    scans = folder.scans
    wait_for(lambda: folder.scans >= scans + 2 and folder.idle(), 10, what="two more rescans")
    assert len(status_lines(qdir)) == 1


def test_same_name_dropped_again_runs_again(folder, qdir):
    (qdir / "q.yaml").write_text("cone: {ra: 246.7925, dec: -24.32027}\n")
    wait_answered(qdir, 1)
    (qdir / "q.yaml").write_text("cone: {ra: 246.79, dec: -24.32, radius: 0.01}\n")
    lines = wait_answered(qdir, 2)
    assert "done/q-2.vot" in lines[1]
    assert (qdir / "done" / "q.yaml").exists() and (qdir / "done" / "q-2.yaml").exists()


BROKEN = [
    ("syntax.yaml", "cone: {ra: 1, dec: [\n", "line 2, column 1: not valid YAML"),
    ("unknown.yaml", "cone: {ra: 1, dec: 2}\ncolour: red\n",
     "line 2, column 1: unknown key 'colour'"),
    ("two.yaml", "cone: {ra: 1, dec: 2}\ntap: {adql: x}\n", "exactly one of"),
    ("none.yaml", "name: x\n", "exactly one of cone, siap, tap, match (found none)"),
    ("empty.yaml", "", "the file is empty"),
    ("emptylist.yml", "[]\n", "the list of requests is empty"),
    ("scalar.yaml", "just text\n", "must be a mapping"),
    ("badra.yaml", "cone: {ra: abc, dec: 2}\n", "'ra' must be a number"),
    ("baddec.yaml", "cone: {ra: 1, dec: 95}\n", "between -90 and +90"),
    ("nodec.yaml", "cone: {ra: 1}\n", "'dec' missing"),
    ("verb.yaml", "cone: {ra: 1, dec: 2, verb: 9}\n", "'verb' must be one of 1, 2, 3"),
    ("param.yaml", "cone: {ra: 1, dec: 2, colour: red}\n", "unknown parameter for a cone"),
    ("conestr.yaml", "cone: 5\n", "'cone' must be a mapping"),
    ("sendto.yaml", "cone: {ra: 1, dec: 2}\nsend_to: 5\n", "send_to must be"),
    ("nomatch.yaml", "match: {table: nothere.vot}\n", "cannot read the table file"),
    ("badadql.adql", "SELECT nope FROM csc21.master_source\n", "could not be located"),
    ("syntaxadql.adql", "SELEKT * FROM x\n", "rejected by the service"),
    ("onlycomment.sql", "-- name: x\n-- just a comment\n", "holds no ADQL query"),
    ("option.adql", "-- colour: red\nSELECT 1 AS x FROM csc21.master_source\n",
     "line 1: unknown option 'colour'"),
    ("maxrec.adql", "-- maxrec: lots\nSELECT name FROM csc21.master_source\n",
     "'maxrec' must be a number"),
    ("binary.sql", "SELECT \x00\x01", "binary data"),
    ("latin1.adql", "SELECT 'caf\xe9'", "not UTF-8"),
    ("notable.vot", "this is not a VOTable", "not a readable table"),
    ("nopos.csv", "flux,mag\n1,2\n", "no position columns found"),
    ("emptytable.csv", "ra,dec\n", "the table is empty"),
    ("siapnone.yaml", "siap: {ra: 120, dec: -60}\n", "no image found"),
]


def test_broken_files_are_set_aside_with_a_readable_error(folder, qdir):
    for name, body, _ in BROKEN:
        data = body.encode("latin-1") if name == "latin1.adql" else body.encode()
        (qdir / name).write_bytes(data)
    wait_answered(qdir, len(BROKEN), timeout=90)
    failed = qdir / "failed"
    for name, _, words in BROKEN:
        assert (failed / name).exists(), name
        err = (failed / f"{name}.error.txt").read_text()
        assert words in err, (name, err)
        assert not (qdir / name).exists()
    assert not [p for p in (qdir / "done").iterdir() if not p.name.endswith(".reserved")]
    assert len(BROKEN) >= 20


def test_a_thousand_files_at_once(cfg, qdir):
    qdir.mkdir(parents=True)
    engine = Engine(cfg.replace(**{"http.retries": 3}))
    f = QueryFolder(qdir, engine, settle=0.2, workers=4, scan_interval=1.0)
    f.start()
    try:
        rng = np.random.default_rng(0)
        for i in range(1000):
            ra, dec = 246.7925 + rng.normal(0, 0.05), -24.32027 + rng.normal(0, 0.05)
            (qdir / f"q{i:04d}.yaml").write_text(f"cone: {{ra: {ra:.6f}, dec: {dec:.6f}, "
                                                 "radius: 0.005, verb: 1}\n")
        lines = wait_answered(qdir, 1000, timeout=300)
        names = [ln.split()[2].rstrip(":") for ln in lines]
        assert len(names) == 1000 and len(set(names)) == 1000
        assert all(" OK " in ln for ln in lines)
        done = qdir / "done"
        assert len(list(done.glob("q*.yaml"))) == 1000 and len(list(done.glob("q*.vot"))) == 1000
        assert not list(qdir.glob("q*.yaml"))
        wait_for(f.idle, 10, what="idle")
    finally:
        f.stop()
        engine.close()


def _write_cfg(path: Path, cone_url: str, base: str, qdir: Path, res: Path) -> None:
    path.write_text(
        f"services:\n  cone: {cone_url}\n  siap: {base}/csc21siap/queryImages\n"
        f"  tap: {base}/csc21tap\n"
        f"results:\n  dir: {res}\nhttp:\n  retries: 0\n  read_timeout: 60\n"
        f"hub:\n  mode: connect\nfolder:\n  dir: {qdir}\n  settle: 0.2\n")


def test_kill_9_mid_query_then_restart_answers_exactly_once(vo_server, qdir, tmp_path,
                                                            samp_home):
    from faulty_server import FaultyServer

    qdir.mkdir(parents=True)
    (qdir / "k.yaml").write_text("cone: {ra: 246.7925, dec: -24.32027}\n")
    cfgfile = tmp_path / "c.yaml"
    with FaultyServer(slow_seconds=60) as slow:
        _write_cfg(cfgfile, slow.url("/slow"), vo_server, qdir, tmp_path / "res")
        p = subprocess.Popen([sys.executable, "-m", "sampbridge", "run", "--config",
                              str(cfgfile)], env=dict(os.environ), stderr=subprocess.DEVNULL)
        try:
            journal = qdir / ".sampbridge" / "journal.jsonl"
            wait_for(lambda: journal.exists() and '"start"' in journal.read_text(), 20,
                     what="the query to start")
            wait_for(lambda: slow.hits.get("/slow"), 10, what="the request in flight")
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        finally:
            if p.poll() is None:
                p.kill()
    assert (qdir / "k.yaml").exists() and not status_lines(qdir)
    _write_cfg(cfgfile, f"{vo_server}/csc21scs/coneSearch", vo_server, qdir, tmp_path / "res")
    p = subprocess.Popen([sys.executable, "-m", "sampbridge", "run", "--config", str(cfgfile)],
                         env=dict(os.environ), stderr=subprocess.DEVNULL)
    try:
        (line,) = wait_answered(qdir, 1, timeout=30)
        assert " OK k.yaml" in line
        # a file dropped after it is answered after it: by then a second run of k.yaml
        # would have shown
        (qdir / "marker.yaml").write_text("cone: {ra: 246.79, dec: -24.32, radius: 0.01}\n")
        lines = wait_answered(qdir, 2, timeout=30)
        assert [ln for ln in lines if "k.yaml" in ln] == [line]
        assert [x.name for x in (qdir / "done").iterdir()] and (qdir / "done" / "k.vot").exists()
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
    finally:
        if p.poll() is None:
            p.kill()
    assert journal.read_text().strip() == ""


def test_crash_after_the_result_landed_does_not_run_again(vo_server, qdir, tmp_path):
    """The journal says the result landed; the restart only finishes the move."""
    import hashlib

    from faulty_server import wait_port_closed_url

    qdir.mkdir(parents=True)
    body = b"cone: {ra: 246.7925, dec: -24.32027}\n"
    (qdir / "j.yaml").write_bytes(body)
    (qdir / "done").mkdir()
    result = qdir / "done" / "j.vot"
    result.write_text("<VOTABLE/>")
    state = qdir / ".sampbridge"
    state.mkdir(mode=0o700)
    key = f"j.yaml:{hashlib.sha256(body).hexdigest()[:20]}"
    (state / "journal.jsonl").write_text(
        json.dumps({"key": key, "event": "start", "file": "j.yaml"}) + "\n"
        + json.dumps({"key": key, "event": "landed", "base": "j", "outputs": [str(result)],
                      "summary": "cone 5 rows -> done/j.vot"}) + "\n")
    dead = wait_port_closed_url()           # re-running would fail against this
    engine = Engine(local_config(vo_server, tmp_path / "res", **{"services.cone": dead}))
    f = QueryFolder(qdir, engine, settle=0.1)
    f.start()
    try:
        (line,) = wait_answered(qdir, 1)
        assert " OK j.yaml: cone 5 rows -> done/j.vot" in line
        assert (qdir / "done" / "j.yaml").exists() and not list((qdir / "failed").iterdir())
    finally:
        f.stop()
        engine.close()


def test_exception_in_a_handler_does_not_kill_the_watcher(folder, qdir, monkeypatch):
    calls = {"n": 0}
    real = folder.runner.run

    def flaky(path, plan):
        calls["n"] += 1
        if path.name == "boom.yaml":
            raise RuntimeError("simulated bug")
        return real(path, plan)

    monkeypatch.setattr(folder.runner, "run", flaky)
    (qdir / "boom.yaml").write_text("cone: {ra: 1, dec: 2}\n")
    wait_answered(qdir, 1)
    assert "unexpectedly" in (qdir / "failed" / "boom.yaml.error.txt").read_text()
    (qdir / "after.yaml").write_text("cone: {ra: 246.7925, dec: -24.32027}\n")
    lines = wait_answered(qdir, 2)
    assert " OK after.yaml" in lines[1]
    assert folder.watcher.observer.is_alive()


def _table_names(path: Path, col: str = "name") -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = Table.read(path, format="votable")
    return sorted(str(v) for v in t[col])


def test_the_folder_answers_alike_on_every_shape(vo_server, tmp_path):
    """The same query files (a guide query, a cone by SCS, a cone by TAP, images and a table
    match) on the CXC, pessimistic CXC and standard shapes, with no setting changed by hand:
    every file lands in done/ and the answers agree."""
    got: dict[str, dict[str, object]] = {}
    for name in SHAPES:
        sh = shape(vo_server, name)
        qdir = tmp_path / name / "queries"
        engine = Engine(local_config(vo_server, tmp_path / name / "results",
                                     **sh.settings(), **{"cache.enabled": False}))
        f = QueryFolder(qdir, engine, None, settle=0.2, workers=2, scan_interval=0.5)
        f.start()
        try:
            (qdir / "guide1.adql").write_text((GUIDE_DIR / "1_master_sources.adql").read_text())
            (qdir / "cone.yaml").write_text("cone: {ra: 0.02, dec: 1.5, radius: 0.05}\n")
            (qdir / "tapcone.yaml").write_text(
                "tap: {adql: \"SELECT name FROM csc21.master_source WHERE ra BETWEEN 246.78 "
                "AND 246.80 AND dec BETWEEN -24.33 AND -24.31\"}\n")
            (qdir / "img.yaml").write_text("siap: {ra: 246.7925, dec: -24.32027}\n")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sources_table().write(qdir / "pos.vot", format="votable")
            lines = wait_answered(qdir, 5)
            assert all(" OK " in ln for ln in lines), (name, lines)
            done = qdir / "done"
            got[name] = {
                "guide": _table_names(done / "guide1.vot"),
                "cone": _table_names(done / "cone.vot"),
                "tapcone": _table_names(done / "tapcone.vot"),
                "images": len(list(done.glob("img-*.fits"))),
                "match": _table_names(done / "pos.match.vot", "name_csc"),
            }
            for img in done.glob("img-*.fits"):
                assert img.read_bytes()[:9] == b"SIMPLE  ="    # gzip inflated on the CXC shapes
        finally:
            f.stop()
            engine.close()
    ref = got["standard"]
    assert len(ref["guide"]) == 1000 and ref["cone"] and ref["tapcone"] and ref["match"]
    for name in ("cxc", "pessimistic"):
        for key in ("guide", "cone", "tapcone", "match"):
            assert got[name][key] == ref[key], (name, key)
        assert got[name]["images"] >= 1
