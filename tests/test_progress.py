"""sampbridge.progress: a bar on a terminal, a log line every so often elsewhere, listeners."""

from __future__ import annotations

import io
import logging

import pytest

from sampbridge import progress


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "sampbridge.progress"]


@pytest.fixture
def caplog_info(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="sampbridge.progress")
    return caplog


def test_not_a_terminal_draws_nothing_and_logs_every_interval(
        caplog_info: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    clock = Clock()
    with progress.bar(100_000, "match", stream=out, interval=10, clock=clock) as p:
        for _ in range(10):
            p.update(1000)            # all within the first second: no line yet
        assert _lines(caplog_info) == []
        clock.t += 10.5
        p.update(40_000)
        clock.t += 3                  # within the interval of the last line: quiet
        p.update(10_000)
        clock.t += 8
        p.update(10_000)
    assert out.getvalue() == ""
    assert _lines(caplog_info) == [
        "match: 50,000 of 100,000 rows (50%), 10.5 s",
        "match: 70,000 of 100,000 rows (70%), 21.5 s",
        "match: done: 70,000 of 100,000 rows (70%), 21.5 s",
    ]


def test_a_short_job_off_a_terminal_says_nothing(caplog_info: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    with progress.bar(10, "cone", stream=io.StringIO(), clock=clock) as p:
        p.update(10)
        clock.t += 2
    assert _lines(caplog_info) == []


def test_phases_show_the_phase_and_the_time(caplog_info: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    seen: list[progress.State] = []
    with progress.phases("TAP job", stream=io.StringIO(), interval=5, clock=clock,
                         listener=seen.append) as p:
        p.phase("QUEUED")
        clock.t += 6
        p.phase("EXECUTING")
        clock.t += 70
        p.phase("COMPLETED")
    assert _lines(caplog_info) == ["TAP job: EXECUTING, 6.0 s",
                                   "TAP job: COMPLETED, 1 min 16 s",
                                   "TAP job: done: COMPLETED, 1 min 16 s"]
    assert [s.phase for s in seen] == ["QUEUED", "EXECUTING", "COMPLETED", "COMPLETED"]
    assert [s.finished for s in seen] == [False, False, False, True]
    assert all(s.percent is None and s.time_left is None for s in seen)


def test_the_listener_gets_percent_and_time_left() -> None:
    clock = Clock()
    seen: list[progress.State] = []
    p = progress.bar(None, "mirror", unit="files", stream=io.StringIO(), clock=clock,
                     listener=seen.append)
    clock.t += 4
    p.set_total(8)
    p.update(2)
    p.close()
    p.close()                          # twice is harmless
    p.update(5)                        # after close: ignored
    assert [(s.done, s.total, s.percent) for s in seen] == [(0, 8, 0.0), (2, 8, 25.0),
                                                            (2, 8, 25.0)]
    assert seen[1].time_left == pytest.approx(12.0)       # 2 files in 4 s, 6 to go
    assert seen[-1].finished and seen[-1].time_left is None


def test_a_failing_listener_does_not_stop_the_job() -> None:
    def bad(_: progress.State) -> None:
        raise RuntimeError("boom")

    with progress.bar(3, "x", stream=io.StringIO(), listener=bad) as p:
        p.update(3)
    assert p.state().done == 3


def test_on_a_terminal_tqdm_draws_and_removes_the_bar(
        caplog_info: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    with progress.bar(200, "match", stream=out, tty=True) as p:
        p.update(50)
        assert p._tqdm.n == 50
    drawn = out.getvalue()
    assert drawn.startswith("\rmatch:   0%|") and "/200 [" in drawn
    assert drawn.endswith("\r") and drawn.rsplit("\r", 2)[-2].strip() == ""   # wiped at the end
    assert _lines(caplog_info) == []


def test_a_phase_on_a_terminal_shows_its_text() -> None:
    out = io.StringIO()
    with progress.phases("TAP job", stream=out, tty=True) as p:
        p.phase("EXECUTING")
    assert "TAP job: EXECUTING [" in out.getvalue()


def test_a_stream_without_isatty_is_not_a_terminal() -> None:
    class Odd:
        def write(self, s: str) -> int:
            return len(s)

    p = progress.bar(1, "x", stream=Odd())  # type: ignore[arg-type]
    assert p._tqdm is None
    p.close()


@pytest.mark.parametrize(("secs", "text"), [(0.04, "0.0 s"), (59.9, "59.9 s"), (61, "1 min 01 s"),
                                            (3725, "1 h 02 min")])
def test_durations_read_well(secs: float, text: str) -> None:
    st = progress.State("x", 0, None, "", None, secs)
    assert st.text() == f"x: running, {text}"


def test_the_hooks_of_a_tap_job_and_of_a_match() -> None:
    seen: list[progress.State] = []
    with progress.phases("TAP job", stream=io.StringIO(), listener=seen.append) as job:
        job.on_phase("QUEUED", 0.0)
        job.on_phase("EXECUTING", 1.5)
    assert [s.phase for s in seen[:2]] == ["QUEUED", "EXECUTING"]
    seen.clear()
    with progress.bar(None, "match", stream=io.StringIO(), listener=seen.append) as m:
        m.on_count(0, 1000)
        m.on_count(250, 1000)
        m.on_count(250, 1000)          # no step: no update
        m.on_count(1000, 1000)
    assert [(s.done, s.total) for s in seen] == [(0, 1000), (250, 1000), (1000, 1000),
                                                 (1000, 1000)]
