"""sampbridge doctor without the peers: the lines, the judges fed any desktop, the folders'
modes, the mirror's manifests, and the services on the local mimic (and on a closed port).

The same findings against the real TOPCAT, DS9, Aladin and JSAMP hub are in
tests/test_doctor_peers.py.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from sampbridge import doctor, mirror
from sampbridge.config import defaults
from sampbridge.doctor import aladin, desktop, local
from sampbridge.doctor.findings import Finding
from sampbridge.mirror import store
from sampbridge.samp import ClientInfo

from conftest import local_config

HOME = Path("/home/ann")


def C(cid: str, name: str, *subs: str) -> ClientInfo:
    return ClientInfo(cid, name, sorted(subs))


SAMPBRIDGE = C("c1", "sampbridge", "coord.pointAt.sky", "image.load.fits", "table.load.fits",
               "table.load.votable")
DS9 = C("c2", "SAOImageDS9", "image.load.fits", "table.load.fits", "table.load.votable")
TOPCAT = C("c3", "topcat", "table.load.fits", "table.load.votable", "coord.pointAt.sky")
ALADIN = C("c4", "Aladin", "image.load.fits", "table.load.votable", "script.aladin.send")


# -- the lines ----------------------------------------------------------------------------
def test_a_line_is_level_topic_text_and_fix() -> None:
    assert doctor.format_finding(Finding("OK", "hub", "a hub answers")) == \
        "OK    hub: a hub answers"
    assert doctor.format_finding(Finding("FAIL", "hub", "no hub", "start one")) == \
        "FAIL  hub: no hub -> start one"
    with pytest.raises(ValueError, match="level must be one of"):
        Finding("BAD", "x", "y")


def test_exit_status_and_summary() -> None:
    good = [Finding("OK", "a", "x"), Finding("INFO", "b", "y")]
    assert doctor.exit_status(good) == 0
    assert doctor.report(good)[-1] == "all 2 checks passed"
    bad = [*good, Finding("WARN", "c", "z", "fix"), Finding("FAIL", "d", "w", "fix")]
    assert doctor.exit_status(bad) == 1
    assert doctor.report(bad)[-1] == ('1 FAIL, 1 WARN of 4 checks; each is explained in '
                                      'docs/user-guide.md, "When a click does nothing"')
    assert doctor.exit_status([Finding("WARN", "c", "z")]) == 1


def test_the_guide_has_the_section_the_lines_point_to() -> None:
    guide = (Path(__file__).resolve().parents[1] / "docs" / "user-guide.md").read_text()
    assert "\n## When a click does nothing\n" in guide


# -- the hub, sampbridge, the viewers, DS9's rule --------------------------------------------
def test_no_lockfile_a_stale_one_and_a_live_hub(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    lock = tmp_path / ".samp"
    monkeypatch.setenv("SAMP_HUB", f"std-lockurl:{lock.as_uri()}")
    view = desktop.probe(timeout=1)
    f = desktop.hub_finding(view)
    assert (f.level, f.text) == ("FAIL", f"no SAMP hub runs: there is no lockfile {lock} "
                                         "($SAMP_HUB)")
    assert "sampbridge run" in f.fix
    # a hub that died left its lockfile: a port nobody listens on
    lock.write_text("samp.secret=x\nsamp.hub.xmlrpc.url=http://127.0.0.1:9/xmlrpc\n"
                    "samp.profile.version=1.3\n")
    f = desktop.hub_finding(desktop.probe(timeout=1))
    assert f.level == "FAIL"
    assert f.text == (f"the hub at http://127.0.0.1:9/xmlrpc named in {lock} ($SAMP_HUB) does "
                      "not answer: a hub that stopped left it behind")
    assert f.fix.startswith(f"remove {lock}, then start TOPCAT")


def test_a_live_hub_lists_sampbridge_and_the_viewers(hub, make_peer) -> None:
    make_peer("topcat", ["table.load.votable", "table.load.fits"])
    view = desktop.probe(timeout=5)
    assert view.live and view.registered
    assert desktop.hub_finding(view).text.startswith("a hub answers at http://127.0.0.1:")
    assert [c.name for c in view.clients if c.name == "topcat"] == ["topcat"]
    assert "sampbridge-doctor" not in {c.name for c in view.clients}   # itself left out
    lines = {f.topic: f for f in desktop.check(defaults(), 5, view)}
    assert lines["TOPCAT"].level == "OK"
    assert lines["DS9"].level == "INFO" and lines["Aladin"].level == "INFO"
    assert lines["sampbridge"].level == "FAIL"
    assert "DS9 clicks" not in lines


def test_subscriptions_match_samp_wildcards() -> None:
    assert desktop.subscribes(C("x", "snoop", "*"), "table.load.fits")
    assert desktop.subscribes(C("x", "y", "table.*"), "table.load.fits")
    assert not desktop.subscribes(C("x", "y", "table.load.votable"), "table.load.fits")
    assert not desktop.subscribes(C("x", "y", "image.*"), "table.load.fits")


def test_ds9_needs_another_image_and_another_table_fits_subscriber() -> None:
    assert desktop.ds9_finding([TOPCAT]) is None                     # no DS9: nothing to say
    alone = desktop.ds9_finding([DS9])
    assert alone is not None and alone.level == "FAIL"
    assert "no other client subscribes to image.load.fits or table.load.fits" in alone.text
    assert "start sampbridge or Aladin" in alone.fix and "start TOPCAT" in alone.fix
    # DS9's own subscriptions do not count; a table.load.votable subscriber is not enough
    vot = C("c9", "listener", "image.load.fits", "table.load.votable")
    f = desktop.ds9_finding([DS9, vot])
    assert f is not None and f.level == "FAIL"
    assert "no other client subscribes to table.load.fits," in f.text
    assert "start sampbridge" not in f.fix
    ok = desktop.ds9_finding([DS9, SAMPBRIDGE])     # sampbridge takes both (tables.subscribe)
    assert ok is not None and ok.level == "OK"
    assert ok.text == ("DS9 broadcasts clicks: other clients take image.load.fits by "
                       "sampbridge; table.load.fits by sampbridge")
    no_tables = C("c1", "sampbridge", "coord.pointAt.sky", "image.load.fits")
    f = desktop.ds9_finding([DS9, no_tables])
    assert f is not None and f.level == "FAIL" and "tables.subscribe: true" in f.fix
    f = desktop.ds9_finding([DS9, no_tables, TOPCAT])
    assert f is not None and f.level == "OK"


def test_sampbridge_missing_twice_deaf_or_well() -> None:
    assert desktop.daemon_finding([TOPCAT]).level == "FAIL"
    assert "sampbridge run" in desktop.daemon_finding([]).fix
    twice = desktop.daemon_finding([SAMPBRIDGE, C("c7", "sampbridge", "coord.pointAt.sky")])
    assert twice.level == "WARN" and "each click runs twice" in twice.text
    deaf = desktop.daemon_finding([C("c1", "sampbridge", "image.load.fits")])
    assert deaf.level == "WARN" and "pointat.enabled: true" in deaf.fix
    assert desktop.daemon_finding([SAMPBRIDGE]) == Finding(
        "OK", "sampbridge", "sampbridge is registered (c1) and listens to clicks")


def test_viewers_registered_or_not() -> None:
    got = {f.topic: f for f in desktop.viewer_findings([TOPCAT, ALADIN])}
    assert got["TOPCAT"] == Finding("OK", "TOPCAT", "registered as topcat (c3)")
    assert got["Aladin"].level == "OK"
    assert got["DS9"].level == "INFO" and got["DS9"].text.startswith("not registered")


# -- Aladin's ${user.home}/.samp -------------------------------------------------------------
@pytest.mark.parametrize(("argv", "env", "home", "explicit"), [
    (["java", "-Xmx1024m", "-jar", "/usr/share/java/aladin.jar"], {}, HOME, False),
    (["/usr/bin/java", "-Duser.home=/tmp/box", "-jar", "/opt/Aladin.jar", "-nobeta"], {},
     Path("/tmp/box"), True),
    # an application argument after the jar is not a JVM option
    (["java", "-jar", "aladin.jar", "-Duser.home=/nope"], {}, HOME, False),
    (["java", "-cp", "a.jar:Aladin.jar", "cds.aladin.Aladin"],
     {"JAVA_TOOL_OPTIONS": "-Duser.home=/t"}, Path("/t"), True),
    # the command line beats JAVA_TOOL_OPTIONS; _JAVA_OPTIONS beats the command line
    (["java", "-Duser.home=/cmd", "-jar", "aladin.jar"], {"JAVA_TOOL_OPTIONS": "-Duser.home=/t"},
     Path("/cmd"), True),
    (["java", "-Duser.home=/cmd", "-jar", "aladin.jar"], {"_JAVA_OPTIONS": "-Duser.home=/j"},
     Path("/j"), True),
])
def test_the_home_an_aladin_reads(argv: list[str], env: dict[str, str], home: Path,
                                  explicit: bool) -> None:
    p = aladin.parse_command(42, argv, env, HOME)
    assert p == aladin.AladinProcess(42, home, explicit)
    assert p.lockfile == home / ".samp"


@pytest.mark.parametrize("argv", [
    ["java", "-jar", "/usr/share/java/starlink-topcat.jar"], ["vim", "aladin.jar"], [],
    ["python3", "-m", "aladin"]])
def test_other_programs_are_not_aladin(argv: list[str]) -> None:
    assert aladin.parse_command(1, argv, {}, HOME) is None


def test_aladin_findings(tmp_path: Path) -> None:
    hub = tmp_path / "box" / ".samp"
    assert aladin.finding(None, False, [], HOME) is None
    assert aladin.finding(hub, True, [], HOME).level == "OK"
    stray = aladin.AladinProcess(7, HOME, False)
    f = aladin.finding(hub, False, [stray], HOME)
    assert f.level == "FAIL"
    assert f.text == (f"the running Aladin (pid 7) reads only {HOME}/.samp (it was started "
                      "without -Duser.home, so Java's home is the account's), but the hub's "
                      f"lockfile is {hub}: it will not find this hub")
    assert f.fix == f"restart Aladin as: java -Duser.home={hub.parent} -jar aladin.jar"
    boxed = aladin.AladinProcess(8, hub.parent, True)
    assert aladin.finding(hub, False, [boxed], HOME).level == "WARN"    # still starting
    ahead = aladin.finding(hub, False, [], HOME)
    assert ahead.level == "WARN" and ahead.fix.startswith("start Aladin as: java -Duser.home=")
    assert aladin.finding(HOME / ".samp", False, [], HOME).level == "OK"
    odd = aladin.finding(tmp_path / "hub.lock", False, [stray], HOME)
    assert "unset SAMP_HUB" in odd.fix


def test_this_users_processes_are_scanned() -> None:
    # no Aladin runs in this test process's tree; the scan still walks /proc without error
    assert all(isinstance(p, aladin.AladinProcess) for p in aladin.find_processes())
    assert aladin.account_home().is_absolute()


# -- folders --------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "level", "words"), [
    (0o700, "OK", "is private (0700)"),
    (0o755, "WARN", "is open to every local user (mode 0755)"),
    (0o750, "WARN", "is open to your group (mode 0750)"),
])
def test_folder_modes(tmp_path: Path, mode: int, level: str, words: str) -> None:
    d = tmp_path / "results"
    d.mkdir()
    d.chmod(mode)
    f = local.folder_finding("results folder", d)
    assert f is not None and (f.level, f.text.startswith(f"{d} {words}")) == (level, True)
    if level == "WARN":
        assert f.fix == f"chmod 700 {d}"


def test_absent_and_wrong_folders(tmp_path: Path) -> None:
    f = local.folder_finding("results folder", tmp_path / "none")
    assert f is not None and f.level == "OK" and "creates it private (0700)" in f.text
    assert local.folder_finding("x", tmp_path / "none", quiet_if_absent=True) is None
    (tmp_path / "file").write_text("")
    f = local.folder_finding("x", tmp_path / "file")
    assert f is not None and f.level == "FAIL" and f.text.endswith("is not a folder")


def test_check_folders_looks_at_results_queries_done_and_failed(tmp_path: Path) -> None:
    res, q = tmp_path / "res", tmp_path / "q"
    res.mkdir(mode=0o700)
    (q / "done").mkdir(parents=True)
    q.chmod(0o700)
    (q / "done").chmod(0o755)
    cfg = defaults().replace(**{"results.dir": str(res), "folder.dir": str(q),
                                "folder.enabled": True})
    got = {f.topic: f.level for f in local.check_folders(cfg)}
    assert got["results folder"] == "OK" and got["query folder"] == "OK"
    assert got["query folder's done"] == "WARN"
    assert "query folder's failed" not in got              # absent: made private later
    off = {f.topic for f in local.check_folders(cfg.replace(folder__enabled=False))}
    assert "query folder" not in off


# -- the mirror -----------------------------------------------------------------------------
def test_mirror_judged_against_the_configured_release() -> None:
    absent = {"state": "absent", "building": None}
    assert local.mirror_finding("2.1", absent, []).level == "INFO"
    assert local.mirror_finding("2.1", absent, [], "mirror").level == "FAIL"
    ok = local.mirror_finding("2.1", {"state": "ready", "rows": 407806,
                                      "built_at": "2026-12-01T10:00:00Z"}, [])
    assert ok.level == "OK"
    assert ok.text == ("a mirror of release 2.1, 407,806 rows, built 2026-12-01T10:00:00Z "
                       "matches the configured services")
    other = local.mirror_finding("2.1", absent, ["2.0"])
    assert other.level == "WARN"
    assert other.text.startswith("the mirror holds release 2.0, not the configured 2.1")
    assert other.fix == "sampbridge mirror build (release 2.1)"
    bad = local.mirror_finding("2.1", {"state": "corrupt", "reason": "the mirror manifest x "
                                       "cannot be read"}, [], "mirror")
    assert bad.level == "FAIL" and bad.text.endswith("cannot be read")
    half = local.mirror_finding("2.1", {"state": "absent", "building": {"slices": 3}}, [])
    assert half.level == "WARN" and half.fix.endswith("resumes it")


def test_a_mirror_built_for_another_release_on_disk(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    root = Path(mirror.default_root())
    assert local.check_mirror(defaults())[0].level == "INFO"
    old = root / "2.0"
    old.mkdir(parents=True)
    (old / "manifest.json").write_text(json.dumps({
        "format": store.FORMAT_VERSION, "release": "2.0", "services": {}, "columns": [],
        "rows": 1, "bytes": 1, "sha256": "0"}))
    f = local.check_mirror(defaults())[0]
    assert (f.level, f.text.split(":")[0]) == ("WARN", "the mirror holds release 2.0, not the "
                                                       "configured 2.1")
    # a damaged mirror of the configured release: its own sentence
    mine = root / "2.1"
    mine.mkdir()
    (mine / "manifest.json").write_text("{not json")
    f = local.check_mirror(defaults())[0]
    assert f.level == "WARN" and f.text.startswith("the mirror is not used: the mirror manifest")
    assert f.text.endswith("cannot be read; run `sampbridge mirror build` again")


# -- the services ---------------------------------------------------------------------------
def test_the_services_of_the_mimic_answer(vo_server: str, tmp_path: Path) -> None:
    got = local.check_services(local_config(vo_server, tmp_path), timeout=10)
    assert [f.topic for f in got] == ["cone service", "SIAP service", "TAP service"]
    for f in got:
        assert f.level == "OK", f
        assert f.text.startswith("127.0.0.1:") and " answered a tiny query in " in f.text


def test_a_closed_port_is_one_sentence_per_service(tmp_path: Path) -> None:
    cfg = local_config("http://127.0.0.1:9", tmp_path)
    got = local.check_services(cfg, timeout=3)
    assert [f.level for f in got] == ["FAIL"] * 3
    for f in got:
        assert "cannot reach the service at 127.0.0.1:9: the connection was refused" in f.text
        assert "Pool" not in f.text and "Error(" not in f.text
        assert f.fix.startswith("check your network, or services.")


def test_a_service_that_never_answers_is_cut_off() -> None:
    hang = threading.Event()
    f = local.timed("TAP service", "services.tap", "http://x.example/tap",
                    lambda: hang.wait(30), timeout=0.2)
    hang.set()
    assert f == Finding("FAIL", "TAP service", "x.example gave no answer within 0.4 s",
                        "check your network, or services.tap in your configuration "
                        "(http://x.example/tap)")


def test_run_without_samp_prints_and_exits(vo_server: str, tmp_path: Path) -> None:
    res = tmp_path / "res"
    res.mkdir(mode=0o755)
    res.chmod(0o755)
    lines: list[str] = []
    cfg = local_config(vo_server, res)
    assert doctor.run(cfg, 10, lines.append, samp=False) == 1
    assert lines[-1].startswith("0 FAIL, 1 WARN of ")
    res.chmod(0o700)
    lines.clear()
    assert doctor.run(cfg, 10, lines.append, samp=False) == 0, lines
    assert lines[-1].startswith("all ")
    assert os.stat(res).st_mode & 0o777 == 0o700


def test_the_command_without_a_hub(samp_home: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"results:\n  dir: {tmp_path / 'res'}\nfolder:\n  enabled: false\n")
    run = subprocess.run([sys.executable, "-m", "sampbridge", "doctor", "--no-services",
                          "--config", str(cfg)], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ))
    assert run.returncode == 1
    assert run.stderr == ""
    lines = run.stdout.splitlines()
    assert lines[0] == (f"FAIL  hub: no SAMP hub runs: there is no lockfile {samp_home}/.samp "
                        "($SAMP_HUB) -> start TOPCAT or Aladin, or 'sampbridge run' (each "
                        "starts a hub when none runs)")
    assert lines[-1].startswith("1 FAIL, 0 WARN of ")
    bad = subprocess.run([sys.executable, "-m", "sampbridge", "doctor", "--timeout", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "--timeout: must be a number of seconds above 0, not '0'" in bad.stderr
