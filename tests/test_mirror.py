"""The mirror answers as the service does: 1000 cones and a 1000-row match, row for row.

Scale: the local mimic at its default size, 3622 master sources (not CSC 2.1's 407,806; the
shared mimic is never re-imported).  The mirror is built once for the module from the
CXC-shaped services (``/csc21tap``, ``/csc21scs/coneSearch``), with small slices so that the
build splits slices and runs them in parallel.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from sampbridge.config import Config
from sampbridge.csc import http
from sampbridge.csc.cone import ConeService
from sampbridge.csc.tap import TapClient
from sampbridge.csc.votable import read_table
from sampbridge.engine import Engine
from sampbridge.mirror import (
    Mirror,
    MirrorError,
    build,
    cone_rows,
    cone_votable,
    open_mirror,
    status,
)
from sampbridge.mirror.fields import parse_fields

from conftest import local_config

pytestmark = pytest.mark.server

N_CONES = int(os.environ.get("SAMPBRIDGE_MIRROR_CONES", "1000"))
RELEASE = "2.1"


def services(base: str) -> dict[str, str]:
    return {"tap": f"{base}/csc21tap", "cone": f"{base}/csc21scs/coneSearch"}


@pytest.fixture(scope="module")
def built(vo_server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("mirror") / "mirrors"
    s = http.make_session(5, 60, "no")
    svc = services(vo_server)
    manifest = build(TapClient(svc["tap"], s), ConeService(svc["cone"], s),
                     table="csc21.master_source", release=RELEASE, root=root, parallel=3,
                     slice_rows=1500)
    s.close()
    return root, manifest


@pytest.fixture(scope="module")
def mirror(built, vo_server: str):
    m = open_mirror(built[0], RELEASE, services(vo_server))
    yield m
    m.close()


def mirror_cfg(vo_server: str, root: Path, results: Path, **changes: object) -> Config:
    return local_config(vo_server, results, **{"mirror.dir": str(root), **changes})


def test_build_is_whole_private_and_pinned(built, mirror: Mirror, vo_server: str):
    root, manifest = built
    assert manifest["rows"] == mirror.rows == 3622
    assert manifest["slices"] >= 3                       # slices of <= 1500 rows
    assert {"err_ellipse_r0", "err_ellipse_r1", "err_ellipse_ang"} <= set(mirror.columns)
    assert set(f["attrs"]["name"] for f in manifest["verbs"]["2"]) <= set(mirror.columns)
    folder = root / RELEASE
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "mirror.fits"]
    for p in (root, folder):
        assert p.stat().st_mode & 0o777 == 0o700
    for p in folder.iterdir():
        assert p.stat().st_mode & 0o777 == 0o600
    assert not (root / f"{RELEASE}.building").exists()
    assert np.all(np.diff(mirror.dec) >= 0)            # sorted by declination
    st = status(root, RELEASE, services(vo_server), verify=True)
    assert st["state"] == "ready" and st["verified"] is True and st["rows"] == 3622


def _cones(mirror: Mirror, n: int) -> list[tuple[float, float, float]]:
    rng = np.random.default_rng(20261202)
    edge = [(0.0, 0.0, 0.2), (359.99999, -24.3, 0.3), (0.0, 90.0, 1.0), (180.0, -90.0, 1.0),
            (12.0, 89.95, 0.2), (300.0, -89.9, 0.3), (0.02, 10.0, 0.1), (359.98, 10.0, 0.1),
            (100.0, 33.0, 0.05)]                        # RA 0/360, the poles, empty sky
    at = rng.integers(0, mirror.rows, n)
    near = [(float(mirror.ra[i] + rng.normal(0, 0.02)) % 360.0,
             float(np.clip(mirror.dec[i] + rng.normal(0, 0.02), -90, 90)),
             float(rng.choice([0.003, 0.01, 0.02, 0.05]))) for i in at[: n // 2]]
    sky = [(float(rng.uniform(0, 360)), float(np.degrees(np.arcsin(rng.uniform(-1, 1)))),
            float(rng.uniform(0.01, 0.1))) for _ in range(n - n // 2 - len(edge))]
    return edge + near + sky


def _same(service: Table, local: Table, where: str) -> None:
    assert service.colnames == local.colnames, where
    assert len(service) == len(local), where
    a = service[np.argsort(np.asarray(service["name"], dtype=str))]
    b = local[np.argsort(np.asarray(local["name"], dtype=str))]
    for c in service.colnames:
        if c == "_r":       # DaCHS's own distance (an approximation, up to 4.6e-7 deg off
            #                   astropy's) against astropy's: within 1e-6 deg (3.6 mas)
            assert np.allclose(np.asarray(a[c], float), np.asarray(b[c], float), rtol=0,
                               atol=1e-6), where
            continue
        ma, mb = np.ma.getmaskarray(a[c]), np.ma.getmaskarray(b[c])
        assert np.array_equal(ma, mb), (where, c)
        va, vb = np.asarray(a[c])[~ma], np.asarray(b[c])[~mb]
        assert va.dtype.kind == vb.dtype.kind or {va.dtype.kind, vb.dtype.kind} <= {"U", "O"}, \
            (where, c, va.dtype, vb.dtype)
        assert np.array_equal(va.astype(str) if va.dtype.kind in "UO" else va,
                              vb.astype(str) if vb.dtype.kind in "UO" else vb), (where, c)


def test_1000_cones_give_the_service_rows_and_values(mirror: Mirror, vo_server: str):
    s = http.make_session(5, 60, "no")
    svc = ConeService(services(vo_server)["cone"], s)
    cones = _cones(mirror, N_CONES)
    fields = None
    rows = 0
    with ThreadPoolExecutor(16) as pool:       # compared here while the next ones download
        bodies = pool.map(lambda c: svc.fetch_body(c[0], c[1], c[2], 2)[0], cones)
        for (ra, dec, r), body in zip(cones, bodies, strict=True):
            local, n = cone_votable(mirror, ra, dec, r, 2, "test")
            if fields is None:
                fields = parse_fields(body)
                assert parse_fields(local) == fields    # names, types, units, UCDs, order
            _same(read_table(body), read_table(local), f"cone {ra} {dec} r={r}")
            rows += n
    s.close()
    assert rows > 5 * N_CONES                           # the cones were not all empty


def test_verb_1_and_a_verb_the_mirror_lacks(mirror: Mirror, vo_server: str):
    s = http.make_session(5, 60, "no")
    svc = ConeService(services(vo_server)["cone"], s)
    body, _ = svc.fetch_body(246.79, -24.32, 0.05, 1)
    local, n = cone_votable(mirror, 246.79, -24.32, 0.05, 1, "t")
    _same(read_table(body), read_table(local), "VERB=1")
    assert parse_fields(local) == parse_fields(body)
    with pytest.raises(MirrorError, match="VERB=3"):
        cone_votable(mirror, 246.79, -24.32, 0.05, 3, "t")
    s.close()


def test_cone_rows_are_nearest_first(mirror: Mirror):
    rows, sep = cone_rows(mirror, 246.79, -24.32, 0.1)
    assert len(rows) > 10 and np.all(np.diff(sep) >= 0) and sep[-1] <= 360.0


def _match_input(mirror: Mirror) -> Table:
    rng = np.random.default_rng(7)
    at = rng.choice(mirror.rows, 700, replace=False)
    ra = np.r_[mirror.ra[at] + rng.normal(0, 0.7, 700) / 3600, rng.uniform(246.6, 247.0, 300)]
    dec = np.r_[mirror.dec[at] + rng.normal(0, 0.7, 700) / 3600, rng.uniform(-24.5, -24.1, 300)]
    return Table({"ra": ra % 360.0, "dec": np.clip(dec, -90, 90), "id": np.arange(1000)})


def test_1000_row_match_gives_the_upload_and_cone_pairs(built, mirror: Mirror, vo_server: str,
                                                        tmp_path: Path):
    table = _match_input(mirror)
    ra, dec = np.asarray(table["ra"]), np.asarray(table["dec"])
    valid = np.ones(len(table), bool)
    radius = 3.0 / 3600
    got = {}
    for strategy in ("mirror", "upload", "cone"):
        cfg = mirror_cfg(vo_server, built[0], tmp_path / strategy, **{
            "match.strategy": strategy, "match.batch_cell": 0.5, "match.parallelism": 8,
            "cone.source": "auto" if strategy == "mirror" else "service"})
        if strategy == "upload":
            cfg = cfg.replace(**{"services.tap": f"{vo_server}/tap"})
        e = Engine(cfg)
        try:
            assert e.match_strategy() == strategy
            got[strategy] = e._match(strategy, ra, dec, valid, radius)
        finally:
            e.close()
    ref = got["mirror"]
    assert ref.strategy == "mirror" and len(ref) > 500
    order = np.lexsort((ref.sep, ref.idx))
    for other in ("upload", "cone"):
        m = got[other]
        o = np.lexsort((m.sep, m.idx))
        assert np.array_equal(ref.idx[order], m.idx[o]), other
        assert np.array_equal(ref.sep[order], m.sep[o]), other
        assert list(ref.csc["name"][order]) == list(m.csc["name"][o]), other
    cone = got["cone"]
    o = np.lexsort((cone.sep, cone.idx))
    _same(cone.csc[o], ref.csc[order][cone.csc.colnames], "match columns")


def test_engine_answers_cones_from_the_mirror_with_its_name(built, vo_server: str,
                                                            tmp_path: Path):
    from sampbridge.model import ConeRequest

    cfg = mirror_cfg(vo_server, built[0], tmp_path / "r")
    e = Engine(cfg)
    try:
        assert e.mirror is not None
        res = e.run_cone(ConeRequest(246.79, -24.32, 0.05, 2))
        assert res.service_url.startswith("mirror:") and "mirror" in res.what
        body = res.path.read_bytes()
        assert b'name="sampbridge_source"' in body and b'value="mirror"' in body
        assert b'name="csc_release"' in body
        assert res.path.stat().st_mode & 0o777 == 0o600
        assert e.mirror_status()["state"] == "ready" and e.mirror_status()["answering"]
        direct = Engine(cfg.replace(**{"cone.source": "service"}))
        try:
            assert direct.mirror is None
            res2 = direct.run_cone(ConeRequest(246.79, -24.32, 0.05, 2))
            assert not res2.service_url.startswith("mirror:") and res2.rows == res.rows
        finally:
            direct.close()
    finally:
        e.close()


def test_the_standard_shape_too(vo_server: str, tmp_path: Path):
    """Standard DaCHS services: TAP answers BINARY (read by astropy), the cone adds ``_r``."""
    std = {"tap": f"{vo_server}/tap", "cone": f"{vo_server}/csc21/q/coneSearch/scs.xml"}
    s = http.make_session(5, 60, "no")
    cone = ConeService(std["cone"], s)
    manifest = build(TapClient(std["tap"], s), cone, table="csc21.master_source",
                     release=RELEASE, root=tmp_path / "std")
    assert manifest["verbs"]["2"][0]["attrs"]["name"] == "_r"
    m = open_mirror(tmp_path / "std", RELEASE, std)
    try:
        for ra, dec, r in _cones(m, 30)[:30]:
            for verb in (1, 2):
                body, _ = cone.fetch_body(ra, dec, r, verb)
                local, _n = cone_votable(m, ra, dec, r, verb, "t")
                assert parse_fields(local) == parse_fields(body)
                _same(read_table(body), read_table(local), f"standard {ra} {dec} {r} {verb}")
    finally:
        m.close()
        s.close()


def test_columns_all_answers_verb_3(vo_server: str, tmp_path: Path):
    svc = services(vo_server)
    s = http.make_session(5, 60, "no")
    cone = ConeService(svc["cone"], s)
    manifest = build(TapClient(svc["tap"], s), cone, table="csc21.master_source",
                     release=RELEASE, root=tmp_path / "all", columns="all")
    assert len(manifest["columns"]) == 79
    m = open_mirror(tmp_path / "all", RELEASE, svc)
    try:
        for ra, dec, r in [(246.79, -24.32, 0.05), (0.0, 90.0, 1.0), (83.6, 22.0, 0.2)]:
            body, _ = cone.fetch_body(ra, dec, r, 3)
            local, _n = cone_votable(m, ra, dec, r, 3, "t")
            assert parse_fields(local) == parse_fields(body)
            _same(read_table(body), read_table(local), f"VERB=3 {ra} {dec}")
    finally:
        m.close()
        s.close()
