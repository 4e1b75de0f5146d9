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
