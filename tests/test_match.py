"""sampbridge.match on the local mimic: cone and upload strategies, and their progress hook."""

from __future__ import annotations

import numpy as np
import pytest

from sampbridge.csc.cone import ConeService
from sampbridge.csc.http import make_session
from sampbridge.csc.tap import TapClient
from sampbridge.csc.votable import read_table
from sampbridge.match import TapCones, match_by_cones, match_by_upload

from helpers import shape

pytestmark = pytest.mark.server

COLUMNS = ["name", "ra", "dec"]


@pytest.fixture(scope="module")
def positions(vo_server) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """40 CSC sources of the mimic, near rho Oph, with a tenth of an arcsec of offset."""
    tap = TapClient(shape(vo_server, "standard").tap, make_session(5, 60))
    t = read_table(tap.sync_body("SELECT TOP 40 name, ra, dec FROM csc21.master_source "
                                 "WHERE name NOT LIKE '%X' ORDER BY name"))
    ra = np.asarray(t["ra"], float) + 0.1 / 3600
    return ra, np.asarray(t["dec"], float), [str(n) for n in t["name"]]


def _check(seen: list[tuple[int, int]], total: int) -> None:
    assert seen[0] == (0, total) and seen[-1] == (total, total), seen
    assert all(t == total for _, t in seen)
    done = [d for d, _ in seen]
    assert done == sorted(done)


@pytest.mark.parametrize("how", ["scs", "tap"])
def test_cones_report_progress_in_positions(vo_server, positions, how):
    ra, dec, names = positions
    s = shape(vo_server, "cxc")
    svc: ConeService | TapCones = (
        ConeService(s.cone, make_session(5, 60)) if how == "scs"
        else TapCones(TapClient(s.tap, make_session(5, 60)), "csc21.master_source"))
    valid = np.ones(len(ra), bool)
    valid[3] = False                                   # a row not matched is not counted
    seen: list[tuple[int, int]] = []
    m = match_by_cones(svc, ra, dec, valid, 2 / 3600, COLUMNS, cell=0.02, parallelism=3,
                       progress=lambda d, t: seen.append((d, t)))
    _check(seen, len(ra) - 1)
    assert len(seen) == m.requests + 1                 # before the first, after each cone
    pairs = set(zip(m.idx.tolist(), [str(n) for n in m.csc["name"]], strict=True))
    assert {(i, names[i]) for i in range(len(ra)) if i != 3} <= pairs
    assert 3 not in m.idx


def test_an_upload_reports_before_and_after(vo_server, positions):
    ra, dec, names = positions
    tap = TapClient(shape(vo_server, "standard").tap, make_session(5, 60))
    seen: list[tuple[int, int]] = []
    m = match_by_upload(tap, ra, dec, np.ones(len(ra), bool), 2 / 3600, COLUMNS,
                        "csc21.master_source", progress=lambda d, t: seen.append((d, t)))
    assert seen == [(0, len(ra)), (len(ra), len(ra))]
    assert sorted(set(m.idx.tolist())) == list(range(len(ra)))


def test_a_failing_progress_hook_does_not_stop_the_match(vo_server, positions, caplog):
    ra, dec, _ = positions

    def broken(done: int, total: int) -> None:
        raise RuntimeError("the display went away")

    svc = ConeService(shape(vo_server, "standard").cone, make_session(5, 60))
    m = match_by_cones(svc, ra[:5], dec[:5], np.ones(5, bool), 2 / 3600, COLUMNS, cell=0,
                       progress=broken)
    assert len(set(m.idx.tolist())) == 5
    assert sum("progress hook failed" in r.getMessage() for r in caplog.records) == 1
