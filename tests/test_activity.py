"""sampbridge.activity: the last requests and the counters, safe between threads, JSON-ready."""

from __future__ import annotations

import json
import threading

import pytest

from sampbridge.activity import COUNTERS, Activity, utc_text


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, t: float = 1_796_212_800.0) -> None:    # 2026-12-02T12:00:00Z
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_fresh_record_has_every_counter_at_zero_and_nothing_recent() -> None:
    clock = Clock()
    snap = Activity(clock=clock).snapshot()
    assert snap["counters"] == dict.fromkeys(COUNTERS, 0)
    assert snap["recent"] == []
    assert snap["started"] == "2026-12-02T12:00:00Z"
    assert snap["uptime_s"] >= 0


def test_a_request_is_timed_and_kept_with_its_rows() -> None:
    clock = Clock()
    act = Activity(clock=clock)
    with act.request("topcat", "x-sampbridge.query.cone", 'cone 83.6 +22.0 r=30"') as req:
        clock.t += 0.0452
        req.rows = 12
    [entry] = act.snapshot()["recent"]
    assert entry == {"time": "2026-12-02T12:00:00Z", "sender": "topcat",
                     "mtype": "x-sampbridge.query.cone", "what": 'cone 83.6 +22.0 r=30"',
                     "rows": 12, "ms": 45.2, "error": None}


def test_an_exception_is_recorded_as_the_error_and_counted_and_still_raised() -> None:
    act = Activity(clock=Clock())
    with pytest.raises(ValueError, match="bad radius"), \
            act.request("ds9", "coord.pointAt.sky", "cone 1 2"):
        raise ValueError("bad radius")
    [entry] = act.recent()
    assert entry.error == "bad radius" and entry.rows is None
    assert act.counters()["errors"] == 1


def test_an_error_set_by_the_caller_is_kept_rather_than_the_exception_text() -> None:
    act = Activity(clock=Clock())
    with pytest.raises(KeyError), act.request("x", "m", "w") as req:
        req.error = "the service is down"
        raise KeyError("k")
    assert act.recent()[0].error == "the service is down"


def test_only_the_last_n_are_kept_oldest_first() -> None:
    act = Activity(size=3, clock=Clock())
    for i in range(5):
        act.record("s", "m", f"job {i}", rows=i)
    assert [e["what"] for e in act.snapshot()["recent"]] == ["job 2", "job 3", "job 4"]


def test_counters_add_and_new_names_appear() -> None:
    act = Activity()
    act.count("cones")
    act.count("cones", 2)
    act.count("mirror_builds")
    counters = act.counters()
    assert counters["cones"] == 3 and counters["mirror_builds"] == 1
    act.count("cones")
    assert counters["cones"] == 3, "counters() must return a copy"


def test_the_snapshot_is_plain_json() -> None:
    act = Activity()
    act.record("topcat", "x-sampbridge.query.tap", "TAP async 'SELECT ...'", rows=None,
               ms=1234.56, error="the TAP job ended in phase ERROR")
    text = json.dumps(act.snapshot(), ensure_ascii=True)
    assert json.loads(text)["recent"][0]["ms"] == 1234.6


def test_utc_text_is_iso_utc_with_a_z() -> None:
    assert utc_text(0) == "1970-01-01T00:00:00Z"


def test_many_threads_lose_no_count_and_no_entry() -> None:
    act = Activity(size=10_000)
    n, per = 8, 500

    def work(k: int) -> None:
        for i in range(per):
            act.count("messages")
            act.record(f"peer{k}", "m", str(i), error="e" if i % 2 else None)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    counters = act.counters()
    assert counters["messages"] == n * per
    assert counters["errors"] == n * per // 2
    assert len(act.recent()) == n * per
