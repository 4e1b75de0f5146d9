from __future__ import annotations

import json
import time

import pytest

from sampbridge.cache import ResultCache, cone_key, tap_key
from sampbridge.engine import Engine
from sampbridge.model import ConeRequest, TapRequest


def test_keys_normalise():
    a = cone_key("u", 246.79250, -24.32027, 0.05, 2, 1.0)
    assert a == cone_key("u", 246.79251, -24.320271, 0.05, 2, 1.0)   # < 1" apart
    assert a != cone_key("u", 246.7935, -24.32027, 0.05, 2, 1.0)
    assert a != cone_key("u", 246.7925, -24.32027, 0.05, 3, 1.0)
    assert cone_key("u", 360.0, 0, 0.1, 2, 1.0) == cone_key("u", 0.0, 0, 0.1, 2, 1.0)
    assert tap_key("u", "SELECT  a\n FROM b", 10, "async") == tap_key("u", "SELECT a FROM b",
                                                                     10, "async")


def test_put_get_ttl_and_prune(tmp_path):
    c = ResultCache(tmp_path / "c", ttl=100)
    f = tmp_path / "r.vot"
    f.write_text("<VOTABLE/>")
    c.put("k", f, rows=3)
    hit = c.get("k")
    assert hit and hit.meta["rows"] == 3 and hit.path.read_text() == "<VOTABLE/>"
    dest = tmp_path / "again.vot"
    c.materialize(hit, dest)
    assert dest.read_text() == "<VOTABLE/>"
    assert c.get("other") is None
    meta = next((tmp_path / "c").glob("*.json"))
    info = json.loads(meta.read_text())
    info["created"] = time.time() - 101
    meta.write_text(json.dumps(info))
    assert c.get("k") is None and c.prune() == 1


@pytest.mark.server
def test_repeat_queries_come_from_the_cache(cfg):
    e = Engine(cfg)
    try:
        a = e.run_cone(ConeRequest(246.7925, -24.32027, 0.05, 2))
        b = e.run_cone(ConeRequest(246.79250001, -24.32027, 0.05, 2))
        assert b.what.endswith("(cached)") and b.rows == a.rows == 109
        assert b.path != a.path and b.path.read_bytes() == a.path.read_bytes()
        assert b.table_id != a.table_id
        t1 = e.run_tap(TapRequest("SELECT TOP 4 name FROM csc21.master_source", None, None))
        t2 = e.run_tap(TapRequest("SELECT TOP 4 name\nFROM csc21.master_source", None, None))
        assert t2.what.endswith("(cached)") and t2.rows == t1.rows == 4
    finally:
        e.close()
    e2 = Engine(cfg.replace(**{"cache.enabled": False}))
    try:
        c = e2.run_cone(ConeRequest(246.7925, -24.32027, 0.05, 2))
        assert not c.what.endswith("(cached)")
    finally:
        e2.close()
