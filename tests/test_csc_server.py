"""The query layer against the real local CSC mimic (GAVO DaCHS on 127.0.0.1)."""

from __future__ import annotations

import warnings

import pytest
import requests
from astropy.io import fits
from astropy.io.votable import parse_single_table
from astropy.wcs import WCS

from sampbridge.csc.adql import cone_query
from sampbridge.csc.errors import QueryError
from sampbridge.engine import Engine
from sampbridge.model import ConeRequest, SiapRequest, TapRequest

from helpers import GUIDE, direct_cone, names

pytestmark = pytest.mark.server

@pytest.fixture
def engine(cfg):
    e = Engine(cfg)
    yield e
    e.close()


def test_cone_equals_direct_pyvo_query(engine, vo_server):
    res = engine.run_cone(ConeRequest(246.7925, -24.32027, 0.05, 2))
    assert res.rows == 109
    assert names(res.path) == direct_cone(vo_server, 246.7925, -24.32027, 0.05)
    assert res.name == "CSC 2.1 cone 246.79250 -24.32027 r=3'"
    assert res.path.parent == engine.results_dir
    assert oct(engine.results_dir.stat().st_mode & 0o777) == "0o700"


#: CSC 2.1 cone search columns as CXC documents them (csc-services.md); VERB=3 is every
#: master_source column (79 in the mimic); no `_r` at any VERB (that column is DaCHS's)
VERB2 = ["name", "ra", "dec", "err_ellipse_r0", "conf_flag", "sat_src_flag", "significance",
         "flux_aper_b", "flux_aper_lolim_b", "flux_aper_hilim_b",
         "flux_aper_w", "flux_aper_lolim_w", "flux_aper_hilim_w",
         "extent_flag", "hard_hm", "hard_hm_lolim", "hard_hm_hilim",
         "hard_ms", "hard_ms_lolim", "hard_ms_hilim",
         "var_intra_index_b", "var_inter_index_b", "var_intra_index_w", "var_inter_index_w"]


@pytest.mark.parametrize("verb, ncols", [(1, 3), (2, 24), (3, 79)])
def test_cone_verb_levels(engine, verb, ncols):
    res = engine.run_cone(ConeRequest(246.7925, -24.32027, 0.02, verb))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = [f.name for f in parse_single_table(str(res.path)).fields]
    assert len(got) == ncols and "_r" not in got
    assert got[:3] == ["name", "ra", "dec"]
    if verb == 2:
        assert got == VERB2
    if verb == 3:
        assert set(VERB2) < set(got) and {"err_ellipse_r1", "err_ellipse_ang"} <= set(got)


@pytest.mark.parametrize("ra, dec, r", [(246.7925, -24.32027, 0.05), (0.02, 1.5, 0.1),
                                        (359.99, 1.5, 0.08), (12.0, 89.85, 0.25),
                                        (200.0, 89.99, 0.2)])
def test_csc_dialect_box_selects_the_same_rows_as_contains(cfg, vo_server, ra, dec, r):
    """The CSC dialect (BETWEEN box and dbo.cone_distance) on the CXC-shaped csc21tap selects
    the rows that CONTAINS selects on the standard service (plain DaCHS at /tap)."""
    geo = cone_query("csc21.master_source", ra, dec, r, "geometry", columns=["name"])
    csc = cone_query("csc21.master_source", ra, dec, r, "csc", columns=["name"])
    got = {}
    for tap, adql in ((f"{vo_server}/tap", geo), (f"{vo_server}/csc21tap", csc)):
        e = Engine(cfg.replace(**{"services.tap": tap}))
        try:
            got[tap] = e.run_tap(TapRequest(adql, "cone", None))
        finally:
            e.close()
    a, b = got.values()
    assert a.rows > 0 and b.rows == a.rows
    assert names(a.path) == names(b.path)


def test_capabilities_choose_the_csc_dialect_on_the_cxc_shape(engine):
    caps = engine.tap.capabilities()
    assert not caps.geometry and not caps.upload
    assert caps.dialect == "csc"
    assert engine.tap.dialect("csc") == "csc"
    assert engine.match_strategy() == "cone"


def test_capabilities_choose_the_geometry_dialect_on_the_standard_shape(cfg, vo_server):
    e = Engine(cfg.replace(**{"services.tap": f"{vo_server}/tap"}))
    try:
        caps = e.tap.capabilities()
        assert caps.geometry and caps.upload
        assert e.tap.dialect("auto") == "geometry"
        assert e.match_strategy() == "upload"
    finally:
        e.close()


def test_cone_through_tap_equals_scs(cfg, vo_server):
    e = Engine(cfg.replace(**{"cone.service": "tap"}))
    try:
        res = e.run_cone(ConeRequest(0.02, 1.5, 0.1, 2))
        assert names(res.path) == direct_cone(vo_server, 0.02, 1.5, 0.1)
    finally:
        e.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("query", sorted(p.name for p in GUIDE.glob("*.adql")))
def test_cxc_guide_queries_run_unchanged(cfg, query, mode):
    e = Engine(cfg.replace(**{"tap.mode": mode}))
    try:
        res = e.run_tap(TapRequest((GUIDE / query).read_text(), query, None))
        assert res.rows == 1000 and not res.overflow
        got = names(res.path)
        assert not any(n.endswith("X") for n in got)
    finally:
        e.close()


def test_maxrec_sets_the_overflow_flag(engine):
    res = engine.run_tap(TapRequest("SELECT name FROM csc21.master_source", None, 7))
    assert res.rows == 7 and res.overflow


def test_invalid_adql_gives_the_service_message_and_deletes_the_job(engine):
    jobs: list[str] = []
    with pytest.raises(QueryError) as ei:
        engine.tap.async_to_file("SELECT nope FROM csc21.master_source",
                                 engine.results_dir / "x.vot", on_job=jobs.append)
    assert "nope" in str(ei.value)
    assert jobs and requests.get(jobs[0], timeout=5).status_code == 404
    assert not (engine.results_dir / "x.vot").exists()


def test_async_job_is_deleted_after_success(engine):
    jobs: list[str] = []
    engine.tap.async_to_file("SELECT TOP 3 name FROM csc21.master_source",
                             engine.results_dir / "y.vot", on_job=jobs.append)
    assert requests.get(jobs[0], timeout=5).status_code == 404


def test_siap_downloads_real_fits_with_wcs(engine, tmp_path):
    res = engine.run_siap(SiapRequest(246.7925, -24.32027, 0.2), dest_dir=tmp_path, count=2)
    assert res.found == 6 and len(res.images) == 2
    for img in res.images:
        assert img.band == "b"
        with fits.open(img.path) as hdul:
            w = WCS(hdul[0].header)
            assert w.has_celestial and hdul[0].data.shape == (200, 200)
        assert img.centre is not None


def test_siap_size_cap_skips(cfg, tmp_path):
    e = Engine(cfg.replace(**{"images.max_bytes": 1000}))
    try:
        res = e.run_siap(SiapRequest(246.7925, -24.32027, 0.2), dest_dir=tmp_path)
        assert res.images == [] and res.skipped and "over the cap" in res.skipped[0]
        assert not list(tmp_path.glob("*.fits*"))
    finally:
        e.close()
