"""``sampbridge run``: the daemon in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from ..config import load_config
from .parser import Subparsers

__all__ = ["register", "run", "RUN_GRACE"]

log = logging.getLogger("sampbridge")

#: Seconds ``run`` gives the daemon to stop (docs/reliability.md: "within about 5 s").
RUN_GRACE = 5.0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``run``."""
    p = sub.add_parser("run", parents=[common], help="run the daemon (starts a hub if none runs)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the daemon until a signal; leave within :data:`RUN_GRACE` (plus a little)."""
    from ..daemon import Daemon

    cfg = load_config(args.config)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    daemon = Daemon(cfg)
    try:
        daemon.start()
        while not stop.wait(1.0):
            pass
    finally:
        # Daemon.stop waits for several things in turn; whatever it waits for, the process
        # leaves within the grace (and a little for the log), never later
        late = (f"still stopping after {RUN_GRACE + 1.5:g} s; exiting now (unfinished query "
                "files run at the next start)")
        watchdog = threading.Timer(RUN_GRACE + 1.5, _exit_now, (late,))
        watchdog.daemon = True
        watchdog.start()
        daemon.stop(RUN_GRACE)
        watchdog.cancel()
        for s, h in old.items():
            signal.signal(s, h)
    stuck = _blocked_threads()
    if stuck:
        # a request still blocked in the network: its result file was removed and its
        # caller answered (a folder file stays journaled), so leave now rather than wait for
        # the read timeout
        _exit_now(f"exiting with {len(stuck)} worker threads still blocked "
                  f"({', '.join(stuck[:4])})", logging.INFO)
    return 0


def _blocked_threads() -> list[str]:
    """Name the threads that would hold the exit: non-daemon ones, and pool workers.

    A ``ThreadPoolExecutor`` worker started from a daemon thread is a daemon thread too, yet
    ``concurrent.futures`` joins every worker at exit: one blocked in a read holds the process.
    """
    from concurrent.futures import thread as cf_thread

    joined = set(getattr(cf_thread, "_threads_queues", {}).keys())
    me = threading.current_thread()
    return [t.name for t in threading.enumerate()
            if t is not me and t.is_alive() and (not t.daemon or t in joined)]


def _exit_now(why: str, level: int = logging.WARNING) -> None:
    """Log ``why`` and leave at once (exit status 0: a stop was asked for).

    No ``logging.shutdown()``: from the watchdog it could wait on a lock that the stuck main
    thread holds; the stream handler has flushed the line already.
    """
    log.log(level, "%s", why)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)
