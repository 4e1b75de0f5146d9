"""The engine: one ``run`` for every request kind, against the local mimic; no SAMP."""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from sampbridge.engine import Engine, ImageResult, MatchResult, TableResult
from sampbridge.errors import Cancelled, SampBridgeError
from sampbridge.model import ConeRequest, MatchRequest, SiapRequest, TapRequest
from sampbridge.tables import TableError

pytestmark = pytest.mark.server

RHO = (246.7925, -24.32027)


@pytest.fixture
def engine(cfg):
    e = Engine(cfg)
    yield e
    e.close()


def test_every_request_kind_has_a_runner():
    """Each request kind of the model (and the query folder's match) maps to a method."""
    for kind, method in Engine.RUNNERS.items():
        assert callable(getattr(Engine, method)), (kind, method)
    assert set(Engine.RUNNERS) == {ConeRequest, SiapRequest, TapRequest, MatchRequest}


def test_run_a_cone_gives_a_table_result(engine, tmp_path):
    dest = tmp_path / "c.vot"
    res = engine.run(ConeRequest(*RHO, 0.05, 2), dest=dest)
    assert isinstance(res, TableResult) and not isinstance(res, MatchResult)
    assert res.path == dest and dest.stat().st_size > 0
    assert res.rows == 109 and res.name.startswith("CSC ") and " cone " in res.name
    assert res.url == dest.resolve().as_uri()


def test_run_without_dest_writes_into_the_results_folder(engine):
    res = engine.run(ConeRequest(*RHO, 0.02, 1))
    assert res.path.parent == engine.results_dir and res.path.exists()


def test_run_a_tap_query_keeps_its_name_and_maxrec(engine, tmp_path):
    res = engine.run(TapRequest("SELECT name, ra, dec FROM csc21.master_source", "five", 5),
                     dest=tmp_path / "t.vot")
    assert isinstance(res, TableResult)
    assert res.name == "five" and res.rows == 5 and res.overflow


def test_run_passes_options_to_the_kind(engine, tmp_path):
    """``cancel`` reaches a TAP query: one cancelled before it starts never runs."""
    stop = threading.Event()
    stop.set()
    req = TapRequest("SELECT TOP 3 name FROM csc21.master_source", None, None)
    e = Engine(engine.cfg.replace(**{"tap.mode": "async", "cache.enabled": False}))
    try:
        with pytest.raises(Cancelled):
            e.run(req, dest=tmp_path / "x.vot", cancel=stop)
    finally:
        e.close()
    assert not (tmp_path / "x.vot").exists()
    with pytest.raises(TypeError):
        engine.run(ConeRequest(*RHO, 0.02, 2), no_such_option=1)


def test_run_images_into_a_folder(engine, tmp_path):
    out = tmp_path / "imgs"
    res = engine.run(SiapRequest(*RHO, 0.2), dest=out, count=1, prefix="p-")
    assert isinstance(res, ImageResult)
    assert res.found >= 1 and len(res.images) == 1
    (img,) = res.images
    assert img.path is not None and img.path.parent == out and img.path.name.startswith("p-")


def _table_file(folder: Path, n: int = 5) -> Path:
    t = Table({"name": [f"s{i}" for i in range(n)],
               "ra": RHO[0] + np.arange(n) * 0.001, "dec": np.full(n, RHO[1])})
    path = folder / "src.vot"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.write(path, format="votable")
    return path


def test_run_a_match_file(engine, tmp_path):
    table = _table_file(tmp_path)
    res = engine.run(MatchRequest(table, "mine", radius=5.0, mode="all", root=tmp_path),
                     dest=tmp_path / "m.vot")
    assert isinstance(res, MatchResult)
    assert res.input_rows == 5 and res.no_position == 0
    assert res.name.startswith("mine ") and 'r=5"' in res.what and "all" in res.what
    assert (tmp_path / "m.vot").exists()


def test_a_match_file_outside_its_root_is_refused(engine, tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    table = _table_file(tmp_path)
    with pytest.raises(SampBridgeError):
        engine.run(MatchRequest(table, "x", root=inner))


def test_a_match_file_without_positions_is_a_table_error(engine, tmp_path):
    path = tmp_path / "nopos.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(TableError):
        engine.run(MatchRequest(path, "nopos", root=tmp_path))


@dataclass(frozen=True)
class _Unknown:
    ra: float = 1.0


def test_an_unknown_request_is_a_clear_type_error(engine):
    with pytest.raises(TypeError, match=r"Engine.run takes a request \(ConeRequest.*not a "
                                        r"_Unknown"):
        engine.run(_Unknown())  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="not a dict"):
        engine.run({"ra": 1, "dec": 2})  # type: ignore[call-overload]


def test_a_subclass_of_a_request_runs_as_its_kind(engine, tmp_path):
    @dataclass(frozen=True)
    class Marked(ConeRequest):
        pass

    res = engine.run(Marked(*RHO, 0.02, 1), dest=tmp_path / "s.vot")
    assert isinstance(res, TableResult) and res.rows > 0


def test_a_repeated_cone_comes_from_the_cache(engine, tmp_path):
    a = engine.run(ConeRequest(*RHO, 0.03, 2), dest=tmp_path / "a.vot")
    b = engine.run(ConeRequest(RHO[0] + 1e-7, RHO[1], 0.03, 2), dest=tmp_path / "b.vot")
    assert not a.what.endswith("(cached)") and b.what.endswith("(cached)")
    assert b.rows == a.rows and b.path.read_bytes() == a.path.read_bytes()
    assert b.table_id != a.table_id and b.name == a.name


def test_without_the_cache_every_run_asks_the_service(cfg, tmp_path):
    e = Engine(cfg.replace(**{"cache.enabled": False}))
    try:
        assert e.cache is None
        for name in ("a.vot", "b.vot"):
            res = e.run(ConeRequest(*RHO, 0.03, 2), dest=tmp_path / name)
            assert not res.what.endswith("(cached)")
    finally:
        e.close()
