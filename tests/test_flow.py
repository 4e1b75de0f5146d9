from __future__ import annotations

import threading
import time

from sampbridge.flow import Coalescer, EchoGuard

from conftest import wait_for


def test_flood_is_coalesced_and_the_latest_wins():
    ran: list[int] = []
    done = threading.Event()

    def run(item: int, seq: int) -> None:
        ran.append(item)
        if item == 499:
            done.set()

    c = Coalescer(run, quiet=0.05, max_wait=0.3)
    try:
        for i in range(500):          # a pan in DS9: 500 positions over about 1 s
            c.submit(i)
            time.sleep(0.002)
        assert done.wait(5), "the last position was never run"
        assert ran[-1] == 499
        assert 1 <= len(ran) <= 8, ran
        assert c.submitted == 500
    finally:
        c.stop()


def test_items_arriving_during_a_run_are_coalesced_again():
    ran: list[int] = []
    gate = threading.Event()

    def run(item: int, seq: int) -> None:
        ran.append(item)
        if item == 0:
            gate.wait(5)

    c = Coalescer(run, quiet=0.01, max_wait=0.05)
    try:
        c.submit(0)
        wait_for(lambda: ran == [0], 5, what="first run")
        for i in range(1, 50):
            c.submit(i)
        assert c.superseded(1)
        gate.set()
        wait_for(lambda: ran[-1] == 49, 5, what="latest run")
        assert ran == [0, 49]
    finally:
        c.stop()


def test_a_failing_item_does_not_kill_the_worker():
    ran: list[int] = []

    def run(item: int, seq: int) -> None:
        if item == 1:
            raise RuntimeError("boom")
        ran.append(item)

    c = Coalescer(run, quiet=0.0, max_wait=0.01)
    try:
        c.submit(1)
        wait_for(lambda: c.ran == 1, 5)
        c.submit(2)
        wait_for(lambda: ran == [2], 5)
    finally:
        c.stop()


def test_echo_guard_window_and_radius():
    now = [100.0]
    g = EchoGuard(window=5.0, radius_arcsec=5.0, clock=lambda: now[0])
    g.remember((246.7925, -24.32027), None, (359.9999, 0.0))
    assert g.is_echo(246.7925 + 1 / 3600, -24.32027)
    assert not g.is_echo(246.7925 + 20 / 3600, -24.32027)
    assert g.is_echo(0.0001, 0.0)            # across RA 0/360
    now[0] += 5.1
    assert not g.is_echo(246.7925, -24.32027)


def test_a_single_item_runs_at_once_whatever_the_quiet_window():
    """Leading edge: a lone click does not wait for ``quiet`` (30 s here) to pass."""
    ran = threading.Event()
    c = Coalescer(lambda item, seq: ran.set(), quiet=30.0, max_wait=60.0)
    try:
        c.submit("click")
        assert ran.wait(5), "a single item waited for the quiet window instead of running"
        wait_for(lambda: c.ran == 1, 5, what="the run to be counted")
        assert c.leading == 1 and c.submitted == 1
    finally:
        c.stop()


def test_an_item_right_after_a_leading_run_is_coalesced_not_run_at_once():
    ran: list[str] = []
    c = Coalescer(lambda item, seq: ran.append(item), quiet=30.0, max_wait=60.0)
    try:
        c.submit("first")
        wait_for(lambda: ran == ["first"], 5, what="the leading run")
        c.submit("second")                       # inside the window after a run started
        assert c.submitted == 2 and c.leading == 1
        assert ran == ["first"] and c.superseded(1)
    finally:
        c.stop()


def test_a_new_burst_after_a_quiet_spell_leads_again():
    ran: list[int] = []
    c = Coalescer(lambda item, seq: ran.append(item), quiet=0.05, max_wait=0.2)
    try:
        c.submit(1)
        wait_for(lambda: ran == [1], 5, what="the first leading run")
        # a quiet spell: nothing running, no item and no run start for `quiet` seconds
        wait_for(lambda: c._quiet_spell(time.monotonic()), 5, what="a quiet spell")
        c.submit(2)
        wait_for(lambda: ran == [1, 2], 5, what="the second leading run")
        assert c.leading == 2
    finally:
        c.stop()


def test_a_flood_from_two_senders_runs_few_times_and_answers_the_last_item():
    ran: list[tuple[int, int]] = []
    seqs: dict[int, tuple[int, int]] = {}
    lock = threading.Lock()

    def run(item: tuple[int, int], seq: int) -> None:
        ran.append((seq, *item))

    c = Coalescer(run, quiet=0.3, max_wait=2.0)

    def sender(k: int) -> None:
        for i in range(500):                   # 2 x 500 positions over about 1 s
            with lock:                         # so that seqs maps each number to its item
                seqs[c.submit((k, i))] = (k, i)
            time.sleep(0.002)

    try:
        senders = [threading.Thread(target=sender, args=(k,)) for k in (1, 2)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(30)
        last = c.latest_seq
        assert c.submitted == 1000 and last == 1000
        wait_for(lambda: ran and ran[-1][0] == last, 10, what="the last item to run")
        assert (ran[-1][1], ran[-1][2]) == seqs[last]
        assert len(ran) <= 8, ran
        assert c.leading == 1 and c.ran == len(ran)
    finally:
        c.stop()
