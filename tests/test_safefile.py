"""Hostile files met directly: special files, links, huge and sparse files, YAML bombs and tags.

Each is refused quickly, in one sentence that names the file and never quotes its content, and
the process stays small (its peak RSS is reset and read from /proc/self/status).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sampbridge.config import ConfigError, defaults, load_config, parse_config_text
from sampbridge.queryfiles import MAX_QUERY_BYTES, QueryFileError, parse_query_file, query_bytes
from sampbridge.safefile import FileMissing, FileRefused, check_regular, copy_regular, read_regular
from sampbridge.tables import TableError, read_table

from helpers import BOMB_LEVELS, GB3, QUERY_BOMB, SECRET, peak_rss_growth


def _short_id(value: object) -> str:
    return repr(value)[1:25]


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A private file outside any folder, holding a secret."""
    d = tmp_path / "outside"
    d.mkdir()
    f = d / "creds.csv"
    f.write_text(f"ra,dec,token\n1,2,{SECRET}\n")
    f.chmod(0o600)
    return f


@pytest.fixture
def root(tmp_path: Path) -> Path:
    d = tmp_path / "queries"
    d.mkdir()
    return d


def one_sentence(text: str, name: str) -> None:
    assert name in text, text
    assert "\n" not in text and len(text) < 240, text
    assert SECRET not in text and "Traceback" not in text and "Errno" not in text, text


# -- safefile ----------------------------------------------------------------------------------
def test_regular_file_is_read_within_its_cap(root):
    f = root / "q.adql"
    f.write_bytes(b"SELECT 1")
    assert read_regular(f, 100, root) == b"SELECT 1"
    check_regular(f, 8, root)
    with pytest.raises(FileRefused, match=r"q.adql is 8 bytes, over the cap of 7 bytes \(x\)"):
        read_regular(f, 7, root, cap_name="x")
    with pytest.raises(FileMissing, match="nope.adql does not exist"):
        read_regular(root / "nope.adql", 100, root)


@pytest.mark.parametrize("kind, words", [
    ("fifo", "p.adql is a named pipe (FIFO), not a regular file"),
    ("link-shadow", "p.adql is a symbolic link; only regular files inside the folder are read"),
    ("link-zero", "p.adql is a symbolic link"),
    ("dangling", "p.adql is a symbolic link"),
    ("dir", "p.adql is a folder, not a regular file"),
    ("socket", "p.adql is a socket, not a regular file"),
])
def test_special_files_are_refused_without_blocking(root, outside, kind, words):
    p = root / "p.adql"
    sock = None
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "link-shadow":
        p.symlink_to(outside)
    elif kind == "link-zero":
        p.symlink_to("/dev/zero")
    elif kind == "dangling":
        p.symlink_to(root / "gone")
    elif kind == "dir":
        p.mkdir()
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(p))
    try:
        t0 = time.monotonic()
        with pytest.raises(FileRefused) as info:
            read_regular(p, 10**6, root)
        assert time.monotonic() - t0 < 1
        assert words in str(info.value)
        one_sentence(str(info.value), "p.adql")
        with pytest.raises(FileRefused, match="only regular files are read"):
            read_regular(p, 10**6)            # without a root too
    finally:
        if sock is not None:
            sock.close()


def test_a_device_is_never_opened():
    with pytest.raises(FileRefused, match="null is a character device, not a regular file"):
        read_regular("/dev/null", 100)


def test_a_file_longer_than_its_size_is_cut_while_streaming(tmp_path):
    # /proc files say 0 bytes and hold more: the same as a file that grows while it is read
    with pytest.raises(FileRefused, match="status grew over the cap of 100 bytes"):
        read_regular("/proc/self/status", 100)
    assert b"VmRSS" in read_regular("/proc/self/status", 10**6)
    dest = tmp_path / "copy"
    with pytest.raises(FileRefused, match="grew over"):
        copy_regular("/proc/self/status", dest, 100)
    assert not dest.exists()
    assert copy_regular("/proc/self/status", dest, 10**6) > 100
    assert dest.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("how, words", [
    ("dotdot", "goes up out of its folder with '..'"),
    ("absolute", "is outside the folder"),
    ("linked-dir", "lies in a folder that is a symbolic link"),
])
def test_root_keeps_reads_inside_the_folder(root, outside, how, words):
    if how == "dotdot":
        target = root / ".." / "outside" / "creds.csv"
    elif how == "absolute":
        target = outside
    else:
        (root / "sub").symlink_to(outside.parent, target_is_directory=True)
        target = root / "sub" / "creds.csv"
    with pytest.raises(FileRefused) as info:
        read_regular(target, 10**6, root)
    assert words in str(info.value)
    one_sentence(str(info.value), "creds.csv")
    (root / "tables").mkdir()
    inside = root / "tables" / "t.csv"
    inside.write_text("ra,dec\n1,2\n")
    assert read_regular(inside, 100, root).startswith(b"ra,dec")


def test_sparse_3gb_table_costs_nothing(root):
    big = root / "big.csv"
    with open(big, "wb") as fh:
        fh.truncate(GB3)
    grew, result, secs = peak_rss_growth(lambda: read_table(big, 1000, max_bytes=200_000_000))
    assert isinstance(result, TableError), result
    assert str(result) == ("big.csv is 3,000,000,000 bytes, over the cap of 200,000,000 bytes "
                           "(tables.max_bytes)")
    assert secs < 1 and grew < 200 * 2**20, (secs, grew)
    grew, result, secs = peak_rss_growth(lambda: read_table(big, 1000))    # the default cap
    assert isinstance(result, TableError) and "over the cap" in str(result)
    assert secs < 1 and grew < 200 * 2**20
    cfg = defaults()
    grew, result, secs = peak_rss_growth(lambda: parse_query_file(big, cfg))
    assert isinstance(result, QueryFileError) and "over the cap" in str(result)
    assert secs < 1 and grew < 200 * 2**20
    grew, result, secs = peak_rss_growth(lambda: query_bytes(big, cfg, root))
    assert result.startswith(b"refused: big.csv is 3,000,000,000 bytes")
    assert secs < 1 and grew < 200 * 2**20


def test_query_files_have_a_1_mb_cap(root):
    q = root / "huge.adql"
    with open(q, "wb") as fh:
        fh.truncate(MAX_QUERY_BYTES + 1)
    with pytest.raises(QueryFileError, match=r"huge.adql is 1,000,001 bytes, over the cap of "
                                             r"1,000,000 bytes \(the limit for query files\)"):
        parse_query_file(q, defaults())


@pytest.mark.parametrize("name, make", [
    ("p.adql", lambda p, outside: os.mkfifo(p)),
    ("z.csv", lambda p, outside: p.symlink_to("/dev/zero")),
    ("shadow.csv", lambda p, outside: p.symlink_to(outside)),
    ("q.yaml", lambda p, outside: p.symlink_to(outside)),
])
def test_parse_query_file_refuses_special_files_fast_and_small(root, outside, name, make):
    p = root / name
    make(p, outside)
    grew, result, secs = peak_rss_growth(lambda: parse_query_file(p, defaults()))
    assert isinstance(result, QueryFileError), result
    one_sentence(str(result), name)
    assert secs < 1 and grew < 200 * 2**20, (secs, grew)
    grew, result, secs = peak_rss_growth(lambda: read_table(p, 1000))
    assert isinstance(result, TableError), result
    one_sentence(str(result), name)
    assert secs < 1 and grew < 200 * 2**20, (secs, grew)


def test_read_table_never_quotes_the_file(root):
    for name, body in [("t.csv", f"{SECRET}\n1,2,3\n"), ("t.vot", f"<VOTABLE>{SECRET}<oops"),
                       ("t.fits", f"SIMPLE  = {SECRET}")]:
        (root / name).write_text(body)
        with pytest.raises(TableError, match="not a readable table") as info:
            read_table(root / name, 100)
        assert SECRET not in str(info.value), str(info.value)


# -- YAML --------------------------------------------------------------------------------------
def test_yaml_bomb_in_a_query_file_is_refused_at_once(root):
    q = root / "bomb.yaml"
    q.write_text(QUERY_BOMB)
    assert len(QUERY_BOMB) < 600
    grew, result, secs = peak_rss_growth(lambda: parse_query_file(q, defaults()))
    assert isinstance(result, QueryFileError), result
    assert str(result) == ("bomb.yaml, line 2, column 8: YAML aliases (*name) are not allowed in "
                           "query files; write the value out again")
    assert secs < 2 and grew < 100 * 2**20, (secs, grew)


def test_yaml_bomb_in_a_config_file_is_one_short_line(tmp_path):
    c = tmp_path / "bomb.yaml"
    c.write_text(BOMB_LEVELS + "\n")
    grew, result, secs = peak_rss_growth(lambda: load_config(c))
    assert isinstance(result, ConfigError), result
    assert str(result) == (f"{c}:2: YAML aliases (*name) are not allowed in configuration "
                           "files; write the value out again (column 8)")
    assert secs < 2 and grew < 100 * 2**20, (secs, grew)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "sampbridge", "check-config", str(c)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r
    assert r.stdout == "" and r.stderr.count("\n") == 1 and len(r.stderr) < 300, r.stderr
    assert "YAML aliases (*name) are not allowed" in r.stderr
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("body, words", [
    ("cone: !custom 1\n", "q.yaml, line 1, column 7: YAML tags such as !custom are not allowed"
                          " in query files"),
    ("cone: !!python/object:os.system 1\n",
     "q.yaml, line 1, column 7: YAML tags such as !!python/object:os.system are not allowed"),
    ("cone: {ra: !!python/name:os.system '', dec: 1}\n",
     "q.yaml, line 1, column 12: YAML tags such as !!python/name:os.system"),
    ("? [a, b]\n: 1\n", "q.yaml, line 1, column 3: complex YAML keys (a list or mapping as a "
                        "key) are not allowed in query files"),
    ("cone: {ra: 1, dec: 2}\n? {x: 1}\n: 1\n", "q.yaml, line 2, column 3: complex YAML keys"),
    ("cone: {ra: 2001-13-45, dec: 1}\n", "q.yaml, line 1, column 12: this value cannot be read"),
    ("cone: " + "[" * 60 + "\n", "q.yaml, line 1, column 56: lists and mappings are nested"),
    ("cone: {ra: 1, dec: 2}\nname: \x07\n",
     "q.yaml, line 2, column 7: not valid YAML: the control character #x0007"),
    ("cone: {ra: 1, dec: 2}\n" + "x" * 1000 + ": 1\n", "q.yaml, line 2, column 1: unknown key"),
    ("cone: {ra: 1, dec: 2, colour: red}\n", "unknown parameter for a cone"),
    ("match: {table: t.csv, mode: '" + "m" * 5000 + "'}\n", "'mode' must be best or all"),
    ("cone: {ra: 1, dec: 2, " + ", ".join(f"k{i}: 1" for i in range(3000)) + "}\n",
     "unknown parameters for a cone: 'k0', 'k1'"),
    ("cone: {ra: 1, dec: 2}\nname: !!str 5\n", None),
    ("cone: {ra: &x 1, dec: 2}\n", None),          # an anchor alone is harmless
], ids=_short_id)
def test_yaml_tags_and_complex_keys_get_line_and_column(root, body, words):
    q = root / "q.yaml"
    q.write_text(body)
    (root / "t.csv").write_text("ra,dec\n1,2\n")
    if words is None:
        assert parse_query_file(q, defaults())
        return
    with pytest.raises(QueryFileError) as info:
        parse_query_file(q, defaults())
    text = str(info.value)
    assert words in text, text
    assert len(text) < 300 and "\n" not in text, text


@pytest.mark.parametrize("body, words", [
    ("cone: !custom 1\n", "c.yaml:1: YAML tags such as !custom are not allowed in configuration "
                          "files; write plain values (column 7)"),
    ("cone:\n  radius: !!python/object/apply:os.system ['true']\n",
     "c.yaml:2: YAML tags such as !!python/object/apply:os.system"),
    ("? [a, b]\n: 1\n", "c.yaml:1: complex YAML keys"),
    ("cone:\n  radius: &r 0.01\n  max_radius: *r\n", "c.yaml:3: YAML aliases (*name)"),
    ("cone:\n  radius: '" + "9" * 10000 + "'\n", "c.yaml:2: cone.radius: must be a number, not"),
    ("x" * 1000 + ": 1\n", "c.yaml:1: xxxxxxxx"),
], ids=_short_id)
def test_config_yaml_refusals_are_short(body, words):
    with pytest.raises(ConfigError) as info:
        parse_config_text(body, "c.yaml")
    text = str(info.value)
    assert words in text and len(text) < 200 and "\n" not in text, text


def test_config_file_that_is_a_fifo_or_too_big(tmp_path):
    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="cannot read the file: it is a named pipe"):
        load_config(fifo)
    big = tmp_path / "big.yaml"
    with open(big, "wb") as fh:
        fh.truncate(GB3)
    with pytest.raises(ConfigError, match="over the cap of 1,000,000 bytes"):
        load_config(big)
    real = tmp_path / "real.yaml"
    real.write_text("cone:\n  radius: 0.01\n")
    (tmp_path / "link.yaml").symlink_to(real)      # a dotfile manager's link is followed
    assert load_config(tmp_path / "link.yaml")["cone.radius"] == 0.01
