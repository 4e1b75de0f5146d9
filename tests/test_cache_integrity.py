"""The cache never shares a file with a user or a peer, and never serves a damaged entry.

Issue 11 items 3 (result files were hard links to cache entries), 4 (the TAP key collapsed
whitespace inside string literals) and 6 (``query siap --out DIR`` chmodded an existing DIR).
Items 3 and 6 go through the command line, as the probe did.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sampbridge.cache import ResultCache, normalise_adql, tap_key
from sampbridge.engine import Engine, ensure_private_dir
from sampbridge.model import TapRequest

pytestmark = pytest.mark.server

RHO = ("246.7925", "-24.32027")
TAP_ONE = "SELECT TOP 5 name FROM csc21.master_source WHERE name LIKE '2CXO J%'"
TAP_TWO = "SELECT TOP 5 name FROM csc21.master_source WHERE name LIKE '2CXO  J%'"


def _config(tmp_path: Path, vo: str, *, cache: bool = True, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"""services:
  cone: {vo}/csc21scs/coneSearch
  siap: {vo}/csc21siap/queryImages
  tap: {vo}/csc21tap
results:
  dir: {tmp_path / "results"}
cache:
  enabled: {"true" if cache else "false"}
""")
    return path


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "sampbridge", "query", *args], cwd=cwd,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def _image(tmp_path: Path, config: Path, out: str) -> Path:
    """Download one image into ``tmp_path / out`` through the command line; return its path."""
    r = _cli(tmp_path, "siap", *RHO, "--count", "1", "--config", str(config),
             "--out", str(tmp_path / out))
    (path,) = r.stdout.splitlines()
    return Path(path)


def _data(path: Path) -> bytes:
    """The table data of a VOTable: the service names each answer's TABLE at random."""
    raw = path.read_bytes()
    return raw[raw.index(b"<DATA>"):raw.index(b"</DATA>")]


def _entry(tmp_path: Path) -> tuple[Path, dict]:
    """The one cache entry: its file and its record."""
    (meta,) = (tmp_path / "results" / "cache").glob("*.json")
    return meta.with_suffix(".vot"), json.loads(meta.read_text())


def _overwrite(path: Path, at: bytes, new: bytes) -> None:
    """Edit ``path`` in place (same inode), as an editor that writes through would."""
    with open(path, "r+b") as fh:
        fh.seek(path.read_bytes().index(at))
        fh.write(new)


def _assert_apart(entry: Path, *delivered: Path) -> None:
    """The entry is a private read-only file that no delivered file shares."""
    st = entry.stat()
    assert st.st_nlink == 1 and stat.S_IMODE(st.st_mode) == 0o400
    for d in delivered:
        assert d.stat().st_ino != st.st_ino
        assert stat.S_IMODE(d.stat().st_mode) == 0o600


def test_a_result_edited_in_place_does_not_change_the_next_cached_answer(tmp_path, vo_server):
    c = _config(tmp_path, vo_server)
    assert "109 rows" in _cli(tmp_path, "cone", *RHO, "--out", "a.vot", "--config", str(c)).stdout
    a = tmp_path / "a.vot"
    original = a.read_bytes()
    entry, record = _entry(tmp_path)
    _overwrite(a, b"2CXO J", b"EDITED")

    r = _cli(tmp_path, "cone", *RHO, "--out", "fresh.vot", "--config", str(c))
    fresh = tmp_path / "fresh.vot"
    assert "109 rows" in r.stdout
    assert _entry(tmp_path)[1]["created"] == record["created"]      # served from the cache
    assert fresh.read_bytes() == original != a.read_bytes()
    assert fresh.stat().st_ino != a.stat().st_ino
    _assert_apart(entry, a, fresh)
    # ... and it is the service's answer
    _cli(tmp_path, "cone", *RHO, "--out", "direct.vot",
         "--config", str(_config(tmp_path, vo_server, cache=False, name="nocache.yaml")))
    assert _data(fresh) == _data(tmp_path / "direct.vot")


@pytest.mark.parametrize("damage", ["same size", "shorter", "linked elsewhere"])
def test_a_damaged_cache_entry_is_dropped_and_the_service_asked_again(tmp_path, vo_server,
                                                                      damage):
    c = _config(tmp_path, vo_server)
    _cli(tmp_path, "cone", *RHO, "--out", "a.vot", "--config", str(c))
    entry, record = _entry(tmp_path)
    entry.chmod(0o600)
    if damage == "same size":
        _overwrite(entry, b"2CXO J", b"BROKEN")
    elif damage == "shorter":
        os.truncate(entry, entry.stat().st_size // 2)
    else:                                 # as the cache of an earlier version left them
        os.link(entry, tmp_path / "elsewhere.vot")
    entry.chmod(0o400)

    r = _cli(tmp_path, "cone", *RHO, "--out", "fresh.vot", "--config", str(c))
    assert "109 rows" in r.stdout
    assert "dropped a damaged entry" in r.stderr
    _cli(tmp_path, "cone", *RHO, "--out", "direct.vot",
         "--config", str(_config(tmp_path, vo_server, cache=False, name="nocache.yaml")))
    fresh = tmp_path / "fresh.vot"
    assert _data(fresh) == _data(tmp_path / "direct.vot")
    # the service was asked, and its answer is the new, intact entry
    entry, again = _entry(tmp_path)
    assert again["created"] > record["created"] and entry.read_bytes() == fresh.read_bytes()
    _assert_apart(entry, fresh)


def test_an_image_edited_in_place_does_not_change_the_next_cached_image(tmp_path, vo_server):
    c = _config(tmp_path, vo_server)
    first = _image(tmp_path, c, "one")
    original = first.read_bytes()
    entry, record = _entry(tmp_path)
    with open(first, "r+b") as fh:                # the pixels, past the 2880-byte header
        fh.seek(len(original) - 100)
        fh.write(b"\xff" * 100)

    second = _image(tmp_path, c, "two")
    assert _entry(tmp_path)[1]["created"] == record["created"]      # served from the cache
    assert second.read_bytes() == original != first.read_bytes()
    _assert_apart(entry, first, second)
    nocache = _config(tmp_path, vo_server, cache=False, name="nocache.yaml")
    direct = _image(tmp_path, nocache, "three")
    assert second.read_bytes() == direct.read_bytes()


def test_siap_out_keeps_the_mode_of_an_existing_folder(tmp_path, vo_server):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    c = _config(tmp_path, vo_server, cache=False)
    image = _image(tmp_path, c, "shared")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert image.parent == shared and stat.S_IMODE(image.stat().st_mode) == 0o600
    # a folder that sampbridge makes is private
    _image(tmp_path, c, "new")
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700


def test_the_results_folder_keeps_the_mode_the_user_gave_it(tmp_path, cfg):
    mine = tmp_path / "mine"
    mine.mkdir()
    mine.chmod(0o755)
    Engine(cfg.replace(**{"results.dir": str(mine)})).close()
    assert stat.S_IMODE(mine.stat().st_mode) == 0o755
    assert stat.S_IMODE((mine / "cache").stat().st_mode) == 0o700
    made = tmp_path / "a" / "b" / "results"        # with the parents that it makes
    assert ensure_private_dir(made) == made
    for d in (made, made.parent, made.parent.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        ensure_private_dir(tmp_path / "file")


def test_prune_removes_copies_that_a_crash_left_unfinished(tmp_path):
    c = ResultCache(tmp_path / "c", ttl=100)
    stale, busy = tmp_path / "c" / "x.vot.1.ab.part", tmp_path / "c" / "y.vot.2.cd.part"
    stale.write_text("half")
    busy.write_text("half")
    os.utime(stale, (0, 0))
    c.prune()
    assert not stale.exists() and busy.exists()


@pytest.mark.parametrize(("a", "b", "same"), [
    (TAP_ONE, TAP_TWO, False),
    ("SELECT  a\n FROM b WHERE n = 'x  y'", "SELECT a FROM b WHERE n = 'x  y'", True),
    ("SELECT a FROM b WHERE n = 'x  y'", "SELECT a FROM b WHERE n = 'x y'", False),
    ("SELECT a FROM b WHERE n = 'it''s  x'", "SELECT a FROM b WHERE n = 'it''s x'", False),
    ('SELECT "my  col" FROM b', 'SELECT "my col" FROM b', False),
    ("SELECT a -- x\nFROM b", "SELECT a -- x FROM b", False),
    ("SELECT a --  x\n  FROM b", "SELECT a --  x\nFROM b", True),
    ("SELECT a /* 'x */ FROM b", "SELECT  a /* 'x */ FROM b", False),
])
def test_the_tap_key_keeps_literals_identifiers_and_comments(a, b, same):
    assert (tap_key("u", a, None, "sync") == tap_key("u", b, None, "sync")) is same


def test_unsplittable_adql_is_kept_as_it_is():
    for adql in ("SELECT  a FROM b WHERE n = 'open", 'SELECT  "open FROM b',
                 "SELECT  a /* c */ FROM b"):
        assert normalise_adql(adql) == adql


def test_a_query_that_differs_only_inside_a_literal_is_not_answered_from_the_cache(cfg):
    e = Engine(cfg)
    ref = Engine(cfg.replace(**{"cache.enabled": False}))
    try:
        one = e.run_tap(TapRequest(TAP_ONE, None, None))
        two = e.run_tap(TapRequest(TAP_TWO, None, None))
        direct = ref.run_tap(TapRequest(TAP_TWO, None, None))
    finally:
        e.close()
        ref.close()
    assert one.rows == 5
    assert not two.what.endswith("(cached)") and two.rows == direct.rows == 0
    assert _data(two.path) == _data(direct.path)
