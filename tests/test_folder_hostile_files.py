"""Hostile files through the real folder door: links out, special files, huge files, YAML bombs.

Each is set aside in failed/ with one sentence in ``<name>.error.txt``; no byte of the file it
points at reaches status.log, failed/, done/ or the log; and a good query dropped after it still
runs, with one worker only (so a worker blocked by a FIFO would show).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from sampbridge.engine import Engine
from sampbridge.folder import QueryFolder
from sampbridge.model import quoted

from conftest import wait_for
from helpers import BOMB_LEVELS, GB3, SECRET, peak_rss_growth

pytestmark = pytest.mark.server

GOOD = "cone: {ra: 246.7925, dec: -24.32027, radius: 0.01}\n"
ONLY = "only regular files inside the folder are read"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A private folder beside the watched one, holding secrets."""
    d = tmp_path / "outside"
    d.mkdir()
    creds = d / "creds.csv"
    creds.write_text(f"ra,dec,token\n1,2,{SECRET}\n")
    creds.chmod(0o600)
    (d / "q.yaml").write_text(f"cone: {{ra: 1, dec: 2}}\nname: {SECRET}\n")
    return d


@pytest.fixture
def qdir(tmp_path: Path) -> Path:
    return tmp_path / "queries"


@pytest.fixture
def folder(cfg, qdir, caplog):
    caplog.set_level(logging.DEBUG, logger="sampbridge")
    engine = Engine(cfg)
    # one worker: a file that blocked it would keep every later file from running; a FIFO or a
    # link to a device is never "closed" by a writer, so settle_max decides when it is taken
    f = QueryFolder(qdir, engine, None, settle=0.2, settle_max=1.0, workers=1,
                    scan_interval=0.3)
    f.start()
    yield f
    f.stop()
    engine.close()


def _fifo(p: Path, outside: Path) -> None:
    os.mkfifo(p)


def _sparse(p: Path, outside: Path) -> None:
    with open(p, "wb") as fh:
        fh.truncate(GB3)


def _text(body: str) -> Callable[[Path, Path], None]:
    return lambda p, outside: p.write_text(body.replace("{OUT}", str(outside)))


def _link(target: str) -> Callable[[Path, Path], None]:
    return lambda p, outside: p.symlink_to(target.replace("{OUT}", str(outside)))


def _linked_dir(p: Path, outside: Path) -> None:
    (p.parent / "sub").symlink_to(outside, target_is_directory=True)
    p.write_text("match: {table: sub/creds.csv}\n")


#: (file name, how to make it, the sentence in failed/<name>.error.txt)
HOSTILE: list[tuple[str, Callable[[Path, Path], None], str]] = [
    ("shadow.csv", _link("{OUT}/creds.csv"), f"shadow.csv is a symbolic link; {ONLY}"),
    ("q.yaml", _link("{OUT}/q.yaml"), f"q.yaml is a symbolic link; {ONLY}"),
    ("z.csv", _link("/dev/zero"), f"z.csv is a symbolic link; {ONLY}"),
    ("p.adql", _fifo, f"p.adql is a named pipe (FIFO), not a regular file; {ONLY}"),
    ("big.csv", _sparse, "big.csv is 3,000,000,000 bytes, over the cap of 200,000,000 bytes "
                         "(tables.max_bytes)"),
    ("up.yaml", _text("match: {table: ../outside/creds.csv}\n"),
     "up.yaml, line 1, column 8: match: the table '../outside/creds.csv' goes up out of the "
     "folder with '..'; only files inside the query folder are read"),
    ("abs.yaml", _text("match: {table: {OUT}/creds.csv}\n"),
     "abs.yaml, line 1, column 8: match: the table '{OUT}/creds.csv' is outside the query "
     "folder; put it in the folder (a subfolder such as tables/ keeps it from running on its "
     "own)"),
    ("linked.yaml", _linked_dir,
     "linked.yaml, line 1, column 8: match: the table 'sub/creds.csv' lies in a folder that is a "
     f"symbolic link (or not a folder); {ONLY}"),
    ("bomb.yaml", _text(BOMB_LEVELS + "\ncone: {ra: *i, dec: 1}\n"),
     "bomb.yaml, line 2, column 8: YAML aliases (*name) are not allowed in query files; write "
     "the value out again"),
    ("tag.yaml", _text("cone: !custom 1\n"),
     "tag.yaml, line 1, column 7: YAML tags such as !custom are not allowed in query files; "
     "write plain values"),
    ("pyobj.yaml", _text("cone: !!python/object:os.system 1\n"),
     "pyobj.yaml, line 1, column 7: YAML tags such as !!python/object:os.system are not allowed "
     "in query files; write plain values"),
    ("complex.yaml", _text("? [a, b]\n: 1\n"),
     "complex.yaml, line 1, column 3: complex YAML keys (a list or mapping as a key) are not "
     "allowed in query files; keys are plain names"),
]


def expected(sentence: str, outside: Path) -> str:
    """The sentence for this run (a long path is shown cut, as every user value in an error)."""
    return sentence.replace("'{OUT}/creds.csv'", quoted(str(outside / "creds.csv")))


def status_lines(qdir: Path) -> list[str]:
    p = qdir / "status.log"
    return p.read_text().splitlines() if p.exists() else []


def regular_files(top: Path) -> list[Path]:
    """Every regular file under ``top``, never through a link (a FIFO is never opened).

    The 3 GB sparse file (all zeros) is left out: this scan must not read it either.
    """
    out = []
    for dirpath, _, names in os.walk(top):
        for name in names:
            p = Path(dirpath) / name
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_size < 10**7:
                out.append(p)
    return out


def assert_no_secret(qdir: Path, caplog) -> None:
    for p in regular_files(qdir):
        assert SECRET.encode() not in p.read_bytes(), p
    assert SECRET not in caplog.text


@pytest.mark.parametrize("name, make, sentence", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_file_is_set_aside_in_one_sentence(folder, qdir, outside, caplog,
                                                   name, make, sentence):
    make(qdir / name, outside)
    wait_for(lambda: len(status_lines(qdir)) >= 1, 30, what=f"{name} answered")
    sentence = expected(sentence, outside)
    err = qdir / "failed" / f"{name}.error.txt"
    assert err.read_text() == sentence + "\n"
    line = status_lines(qdir)[0]
    assert f" FAILED {name}: {sentence} -> failed/{name}" in line, line
    assert os.path.lexists(qdir / "failed" / name) and not os.path.lexists(qdir / name)
    assert not list((qdir / "done").iterdir())          # no result, no .reserved left
    (qdir / "good.yaml").write_text(GOOD)
    wait_for(lambda: len(status_lines(qdir)) >= 2, 60, what="the good query after it")
    assert " OK good.yaml: cone " in status_lines(qdir)[1]
    assert (qdir / "done" / "good.vot").stat().st_size > 0
    assert_no_secret(qdir, caplog)
    assert "failed unexpectedly" not in caplog.text and "Traceback" not in caplog.text


def test_all_hostile_files_at_once_then_a_good_one(folder, qdir, outside, caplog):
    peak_rss_growth(lambda: None)                       # reset the peak RSS
    for name, make, _ in HOSTILE:
        make(qdir / name, outside)
    (qdir / "good.yaml").write_text(GOOD)
    wait_for(lambda: len(status_lines(qdir)) >= len(HOSTILE) + 1, 90,
             what="every file answered")
    lines = status_lines(qdir)
    assert sum(" OK good.yaml: cone " in ln for ln in lines) == 1, lines
    assert sum(" FAILED " in ln for ln in lines) == len(HOSTILE), lines
    for name, _, sentence in HOSTILE:
        err = (qdir / "failed" / f"{name}.error.txt").read_text()
        assert err == expected(sentence, outside) + "\n", (name, err)
    status = Path("/proc/self/status").read_text()
    peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
    rss = int(status.split("VmRSS:")[1].split()[0]) * 1024
    assert peak - rss < 200 * 2**20, (peak, rss)       # no file was read into memory
    assert_no_secret(qdir, caplog)


def test_special_files_are_refused_without_waiting_for_a_close(cfg, qdir, tmp_path):
    """With the shipped settle_max (60 s), a FIFO, a link to a device and a dangling link are
    seen by the rescan and set aside at once: none waits for a writer's close."""
    engine = Engine(cfg)
    f = QueryFolder(qdir, engine, None, settle=0.2, settle_max=60.0, workers=1,
                    scan_interval=0.3)
    qdir.mkdir(parents=True)
    os.mkfifo(qdir / "p.adql")
    (qdir / "z.csv").symlink_to("/dev/zero")
    (qdir / "gone.yaml").symlink_to(tmp_path / "no-such-file.yaml")
    f.start()
    try:
        for name in ("p.adql", "z.csv", "gone.yaml"):
            err = qdir / "failed" / f"{name}.error.txt"
            wait_for(err.exists, 20, what=f"{name} set aside")
            assert ONLY in err.read_text() or "not a regular file" in err.read_text(), \
                err.read_text()
        assert not [p for p in qdir.iterdir() if p.name not in ("failed", "done", "status.log",
                                                                 ".sampbridge")]
    finally:
        f.stop()
        engine.close()
