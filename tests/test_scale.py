"""The scale extra: the mirror as HATS, and LSDB on a 2-worker Dask cluster giving exactly the
in-process matcher's pairs (issue 15, "Past one machine").

Scale: 1,000,000 input positions (half of them over the mimic's field, half over the whole sky)
against the mirror of the local mimic (3622 master sources), exported with small partitions
(at most 1000 rows) so that the field spans several HEALPix partitions and pairs cross their
edges.  The cluster is local: 2 workers, threads of this process, on loopback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from sampbridge.csc import http
from sampbridge.csc.cone import ConeService
from sampbridge.csc.tap import TapClient
from sampbridge.match import Matches, best_only
from sampbridge.mirror import Mirror, build, match, open_mirror
from sampbridge.scale import ExtraMissing, ScaleError, default_hats_dir, export_hats, match_lsdb

from conftest import need

pytestmark = pytest.mark.server

# the extra missing: a skip on a desk, a failure under CI (tests/run_all.sh installs it)
need(importlib.util.find_spec("lsdb") is not None, "the scale extra (lsdb) is not installed",
     "pip install -e '.[test,scale]'")

N = int(os.environ.get("SAMPBRIDGE_SCALE_ROWS", "1000000"))
RELEASE = "2.1"


def services(base: str) -> dict[str, str]:
    return {"tap": f"{base}/csc21tap", "cone": f"{base}/csc21scs/coneSearch"}


@pytest.fixture(scope="module")
def mirror(vo_server: str, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("scale") / "mirrors"
    s = http.make_session(5, 60, "no")
    svc = services(vo_server)
    build(TapClient(svc["tap"], s), ConeService(svc["cone"], s), table="csc21.master_source",
          release=RELEASE, root=root, parallel=3, slice_rows=5000)
    s.close()
    m = open_mirror(root, RELEASE, svc)
    yield m
    m.close()


@pytest.fixture(scope="module")
def hats(mirror: Mirror) -> Path:
    # where `query match --engine lsdb` looks for it, so the CLI test reuses it
    out = default_hats_dir(mirror)
    info = export_hats(mirror, out, margin_arcsec=60.0, pixel_threshold=1000)
    assert info["rows"] == mirror.rows and info["partitions"] > 4
    return out


def positions(m: Mirror, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = n // 4
    at = rng.integers(0, m.rows, k)
    ra = np.r_[m.ra[at] + rng.normal(0, 2.0, k) / 3600, rng.uniform(246.3, 247.3, k),
               rng.uniform(0, 360, n - 2 * k)]
    dec = np.r_[m.dec[at] + rng.normal(0, 2.0, k) / 3600, rng.uniform(-24.8, -23.8, k),
                np.degrees(np.arcsin(rng.uniform(-1, 1, n - 2 * k)))]
    return ra % 360.0, np.clip(dec, -90, 90)


def pairs(m: Mirror, idx: np.ndarray, rows: np.ndarray) -> list[tuple[int, str]]:
    names = np.asarray(m.data.field("name"))[rows]
    return sorted(zip(idx.tolist(), [str(x) for x in names], strict=True))


def best(m: Mirror, got: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[tuple[int, str]]:
    idx, rows, sep = got
    b = best_only(Matches(idx, Table({"row": rows}), sep, "x"))
    return pairs(m, b.idx, np.asarray(b.csc["row"]))


def test_lsdb_gives_the_in_process_pairs_for_a_million_rows(mirror: Mirror, hats: Path):
    ra, dec = positions(mirror, N, 11)
    valid = np.ones(N, bool)
    valid[::97] = False                          # rows that are not matched stay unmatched
    radius = 3.0 / 3600
    ref = match(mirror, ra, dec, valid, radius)
    got = match_lsdb(mirror, ra, dec, valid, radius, hats)
    assert len(ref[0]) > 0.15 * N
    assert pairs(mirror, got[0], got[1]) == pairs(mirror, ref[0], ref[1])        # mode all
    assert best(mirror, got) == best(mirror, ref)                                 # mode best
    for a, b in zip(got, ref, strict=True):      # the same order and separations, too
        assert np.array_equal(a, b)


def test_a_wide_radius_grows_the_neighbours_asked(mirror: Mirror, hats: Path,
                                                  caplog: pytest.LogCaptureFixture):
    ra, dec = positions(mirror, 20_000, 12)
    valid = np.ones(len(ra), bool)
    radius = 55.0 / 3600                         # up to the margin; dozens of sources a row
    caplog.set_level("INFO", logger="sampbridge.scale")
    ref = match(mirror, ra, dec, valid, radius)
    got = match_lsdb(mirror, ra, dec, valid, radius, hats)
    assert np.bincount(ref[0]).max() > 8 and "asking for 32" in caplog.text
    assert pairs(mirror, got[0], got[1]) == pairs(mirror, ref[0], ref[1])
    assert best(mirror, got) == best(mirror, ref)


def test_a_dask_scheduler_address(mirror: Mirror, hats: Path):
    from distributed import LocalCluster

    ra, dec = positions(mirror, 5000, 13)
    valid = np.ones(len(ra), bool)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
                      host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster:
        got = match_lsdb(mirror, ra, dec, valid, 3 / 3600, hats,
                         scheduler=cluster.scheduler_address)
    ref = match(mirror, ra, dec, valid, 3 / 3600)
    assert pairs(mirror, got[0], got[1]) == pairs(mirror, ref[0], ref[1])


def _listening() -> set[tuple[str, int]]:
    import psutil

    procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
    return {(c.laddr.ip, c.laddr.port) for p in procs for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


def test_the_local_cluster_is_on_loopback_and_private(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    import tempfile

    from sampbridge.scale.cluster import dask_client

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = _listening()
    for processes in (False, True):
        with dask_client(None, processes=processes) as client:
            addrs = [client.scheduler.address, *client.scheduler_info()["workers"]]
            assert len(addrs) == 3 and all(a.startswith("tcp://127.0.0.1:") for a in addrs)
            new = _listening() - before          # the cluster's sockets, HTTP servers too
            assert new and {ip for ip, _ in new} == {"127.0.0.1"}, new
            scratch = list(tmp_path.glob("sampbridge-dask-*"))
            assert len(scratch) == 1 and scratch[0].stat().st_mode & 0o077 == 0
        assert not list(tmp_path.glob("sampbridge-dask-*"))     # removed after


def test_the_export_is_pinned_private_and_checked(mirror: Mirror, hats: Path, tmp_path: Path):
    info = json.loads((hats / "sampbridge.json").read_text())
    assert info["mirror_sha256"] == mirror.manifest["sha256"] and info["margin_arcsec"] == 60
    for p in [hats, *hats.rglob("*")]:
        assert p.stat().st_mode & 0o077 == 0, p
    one = (np.array([246.79]), np.array([-24.32]), np.ones(1, bool))
    with pytest.raises(ScaleError, match="margin of 60.*narrower than the match radius 90"):
        match_lsdb(mirror, *one, 90 / 3600, hats)
    with pytest.raises(ScaleError, match="no HATS export"):
        match_lsdb(mirror, *one, 3 / 3600, tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "csc_master_source").mkdir()
    (other / "csc_master_source_margin").mkdir()
    (other / "sampbridge.json").write_text(json.dumps(dict(info, mirror_sha256="0" * 64)))
    with pytest.raises(ScaleError, match="another mirror"):
        match_lsdb(mirror, *one, 3 / 3600, other)


def test_query_match_engine_lsdb_writes_the_local_engine_table(mirror: Mirror, hats: Path,
                                                              vo_server: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture):
    from sampbridge.cli import main
    from sampbridge.csc.votable import read_table

    conf = tmp_path / "c.yaml"
    conf.write_text(f"services:\n  tap: {vo_server}/csc21tap\n"
                    f"  cone: {vo_server}/csc21scs/coneSearch\n"
                    f"mirror:\n  dir: {mirror.path.parent}\nresults:\n  dir: {tmp_path / 'r'}\n")
    ra, dec = positions(mirror, 1000, 14)
    table = tmp_path / "in.csv"
    table.write_text("ra,dec\n" + "".join(f"{a:.7f},{d:.7f}\n" for a, d in zip(ra, dec,
                                                                             strict=True)))
    got = {}
    for engine in ("local", "lsdb"):
        for mode in ("all", "best"):
            out = tmp_path / f"{engine}-{mode}.vot"
            assert main(["query", "match", str(table), "--out", str(out), "--radius", "4",
                         "--mode", mode, "--engine", engine, "--config", str(conf)]) == 0
            said = capsys.readouterr().out
            assert ("lsdb" if engine == "lsdb" else "mirror") in said
            t = read_table(out.read_bytes())
            got[engine, mode] = sorted(zip(t["input_row"].tolist(), t["name_csc"].tolist(),
                                           strict=True))
    for mode in ("all", "best"):
        assert got["lsdb", mode] == got["local", mode] and len(got["local", mode]) > 100
    assert main(["query", "match", str(table), "--out", str(tmp_path / "x.vot"),
                 "--dask-scheduler", "tcp://127.0.0.1:1", "--config", str(conf)]) == 2
    assert "--dask-scheduler goes with --engine lsdb" in capsys.readouterr().err


def test_without_the_extra_one_sentence(mirror: Mirror, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch):
    code = ("import sys, sampbridge.scale, sampbridge.cli.mirror, sampbridge.cli.query.match\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('lsdb', 'hats', 'hats_import', 'dask', 'distributed')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"                   # the base install imports none of them
    monkeypatch.setitem(sys.modules, "lsdb", None)
    with pytest.raises(ExtraMissing) as exc:
        match_lsdb(mirror, np.zeros(1), np.zeros(1), np.ones(1, bool), 1 / 3600, tmp_path)
    text = str(exc.value)
    assert text.count(". ") == 0 and "pip install 'sampbridge[scale]'" in text
    with pytest.raises(ExtraMissing):
        export_hats(mirror, tmp_path / "h")
