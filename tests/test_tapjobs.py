"""TAP async jobs (sampbridge.csc.tapjobs): the ``on_phase`` progress hook, and the job's end.

A real job runs on the local mimic (the CXC shape and the standard one); the once-a-second
report of an unchanged phase is checked on a job that stands in for a slow service.
"""

from __future__ import annotations

import threading
import time

import pytest

from sampbridge.csc.http import make_session
from sampbridge.csc.tap import TapClient
from sampbridge.csc.tapjobs import DOWNLOADING, AsyncJobs, _Progress

from helpers import shape

QUERY = "SELECT TOP 5 name, ra, dec FROM csc21.master_source"


@pytest.mark.server
@pytest.mark.parametrize("name", ["cxc", "standard"])
def test_on_phase_follows_a_real_job_to_its_download(vo_server, tmp_path, name):
    seen: list[tuple[str, float]] = []
    tap = TapClient(shape(vo_server, name).tap, make_session(5, 60))
    res = tap.query_to_file(QUERY, tmp_path / "r.vot", mode="async",
                            on_phase=lambda p, t: seen.append((p, t)))
    assert res.rows == 5
    phases = [p for p, _ in seen]
    assert phases[0] == "PENDING" and phases[-2:] == ["COMPLETED", DOWNLOADING], phases
    assert set(phases) <= {"PENDING", "QUEUED", "EXECUTING", "COMPLETED", DOWNLOADING}
    times = [t for _, t in seen]
    assert times == sorted(times) and times[0] >= 0


@pytest.mark.server
def test_a_failing_hook_does_not_stop_the_query(vo_server, tmp_path, caplog):
    def broken(phase: str, elapsed: float) -> None:
        raise RuntimeError("the display went away")

    tap = TapClient(shape(vo_server, "standard").tap, make_session(5, 60))
    res = tap.async_to_file(QUERY, tmp_path / "r.vot", on_phase=broken)
    assert res.rows == 5
    assert sum("progress hook failed" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.server
def test_without_a_hook_nothing_changes(vo_server, tmp_path):
    tap = TapClient(shape(vo_server, "cxc").tap, make_session(5, 60))
    assert tap.async_to_file(QUERY, tmp_path / "r.vot").rows == 5


class _SlowJob:
    """Stands in for a pyvo job: EXECUTING for ``seconds``, then COMPLETED."""

    url = "http://127.0.0.1:1/tap/async/slow"

    def __init__(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds
        self.polls = 0

    @property
    def phase(self) -> str:
        self.polls += 1
        return "EXECUTING" if time.monotonic() < self.until else "COMPLETED"


def test_an_unchanged_phase_is_reported_about_once_a_second():
    seen: list[tuple[str, float]] = []
    jobs = AsyncJobs("http://127.0.0.1:1/tap", make_session(1, 1), 1000, 30.0, 1.0)
    job = _SlowJob(2.6)
    phase = jobs._wait(job, threading.Event(),  # type: ignore[arg-type]  # duck-typed job
                       _Progress(lambda p, t: seen.append((p, t))))
    assert phase == "COMPLETED"
    executing = [t for p, t in seen if p == "EXECUTING"]
    assert [p for p, _ in seen][-1] == "COMPLETED"
    assert len(executing) >= 3, seen                       # at about 0, 1, 2 (, 3) s
    gaps = [b - a for a, b in zip(executing, executing[1:], strict=False)]
    assert all(0.9 <= g <= 1.3 for g in gaps), gaps
    assert seen[-1][1] < 2.6 + 2.1                         # seen at the next poll, <= 2 s on
    assert job.polls < 12                                  # polls still back off to 2 s
