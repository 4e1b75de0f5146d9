"""Click to delivery through the daemon: overhead over direct pyvo, cache hits, and a flood.

    python benchmarks/bench_daemon.py [--n 30]

Everything runs on 127.0.0.1: sampbridge's hub and daemon in this process, a recording peer
standing in for TOPCAT, and the local CSC mimic.  Anchor: a direct pyvo SCS query of the same
cone, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from common import CONE, config, report


class Recorder:
    """A SAMP client that timestamps every table.load.votable it receives."""

    def __init__(self, name: str = "topcat") -> None:
        import pyvo.samp as psamp

        self.got: list[tuple[float, dict]] = []
        self.cond = threading.Condition()
        self.c = psamp.SAMPIntegratedClient(name=name, addr="127.0.0.1")
        self.c.connect(pool_size=100)
        self.c.bind_receive_call("table.load.votable", self._call, declare=False)
        self.c.declare_subscriptions()

    def _call(self, pk, sender, msg_id, mtype, params, extra):  # noqa: ANN001
        with self.cond:
            self.got.append((time.perf_counter(), dict(params)))
            self.cond.notify_all()
        self.c.ereply(msg_id, "samp.ok", result={})

    def wait_name(self, prefix: str, after: int, timeout: float = 30) -> float:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, p in self.got[after:]:
                    if p["name"].startswith(prefix):
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(prefix)
                self.cond.wait(left)

    def find(self, name: str) -> str:
        for cid in self.c.get_registered_clients():
            if self.c.get_metadata(cid).get("samp.name") == name:
                return cid
        raise LookupError(name)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    os.environ["HOME"] = str(tmp)
    os.environ["SAMP_HUB"] = f"std-lockurl:file://{tmp}/.samp"
    import pyvo.samp as psamp
    from pyvo.dal import SCSService

    from sampbridge.daemon import Daemon
    from sampbridge.samp.hub import Hub

    psamp.conf.use_internet = False
    hub = Hub(addr="127.0.0.1", web_profile=False, lockfile=str(tmp / ".samp"))
    hub.start(wait=False)
    rec = Recorder()
    rows_out: list[tuple[str, float, str, float]] = []
    try:
        # -- overhead: click -> table delivered, minus a direct pyvo query ----------------
        cfg = config(tmp / "res", **{"images.enabled": False, "cache.enabled": False,
                                     "folder.enabled": False, "pointat.quiet": 0.0,
                                     "pointat.max_wait": 0.01, "echo.window": 0.0})
        d = Daemon(cfg)
        d.start(wait=10)
        sid = rec.find("sampbridge")
        svc = SCSService(CONE)
        clicks, directs = [], []
        for i in range(args.n):
            ra, dec = 246.70 + i * 0.01, -24.30
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                svc.search((ra, dec), 0.05, verbosity=2).to_table()
            directs.append(time.perf_counter() - t0)
            n = len(rec.got)
            t0 = time.perf_counter()
            rec.c.notify(sid, {"samp.mtype": "coord.pointAt.sky",
                               "samp.params": {"ra": f"{ra:.5f}", "dec": f"{dec:.5f}"}})
            clicks.append(rec.wait_name(f"CSC 2.1 cone {ra:.5f}", n) - t0)
        d.stop()
        med_click, med_direct = statistics.median(clicks), statistics.median(directs)
        over = [c - di for c, di in zip(clicks, directs, strict=True)]
        rows_out += [
            ("direct pyvo SCS query, 0.05 deg [anchor]", med_direct * 1000, "ms", float("nan")),
            ("click -> table in TOPCAT (pointAt notify to table.load received)",
             med_click * 1000, "ms", med_direct / med_click),
            ("overhead: click -> delivered minus direct pyvo (median)",
             statistics.median(over) * 1000, "ms", float("nan")),
        ]
        # -- cache: a repeat click --------------------------------------------------------
        d = Daemon(cfg.replace(**{"cache.enabled": True}))
        d.start(wait=10)
        sid = rec.find("sampbridge")
        firsts, repeats, inside = [], [], []
        for i in range(args.n):
            ra, dec = 246.70 + i * 0.01, -24.30
            for bucket in (firsts, repeats):
                n, done = len(rec.got), d.points_done
                t0 = time.perf_counter()
                rec.c.notify(sid, {"samp.mtype": "coord.pointAt.sky",
                                   "samp.params": {"ra": f"{ra:.5f}", "dec": f"{dec:.5f}"}})
                bucket.append(rec.wait_name(f"CSC 2.1 cone {ra:.5f}", n) - t0)
                deadline = time.monotonic() + 10
                while d.points_done == done and time.monotonic() < deadline:
                    time.sleep(0.001)
            inside.append(d.last_latency)
        d.stop()
        rows_out += [
            ("first click, cache miss (notify -> table received)",
             statistics.median(firsts) * 1000, "ms", med_direct / statistics.median(firsts)),
            ("repeat click from the cache (notify -> table received, 2 hub hops)",
             statistics.median(repeats) * 1000, "ms", med_direct / statistics.median(repeats)),
            ("repeat click from the cache (in the daemon: message -> delivered)",
             statistics.median(inside) * 1000, "ms", med_direct / statistics.median(inside)),
        ]
        # -- flood: 100 pointAt/s for 10 s --------------------------------------------------
        d = Daemon(cfg.replace(**{"pointat.quiet": 0.3, "pointat.max_wait": 3.0,
                                  "cache.enabled": False}))
        d.start(wait=10)
        sid = rec.find("sampbridge")
        t0 = time.perf_counter()
        for i in range(1000):
            rec.c.notify(sid, {"samp.mtype": "coord.pointAt.sky",
                               "samp.params": {"ra": f"{266.30 + i * 0.0002:.5f}",
                                               "dec": "-29.00"}})
            delay = t0 + (i + 1) / 100.0 - time.perf_counter()
            if delay > 0:
                time.sleep(delay)                   # pacing the flood
        deadline = time.monotonic() + 30
        while d.coalescer.submitted + d.stats["echoes"] < 1000 and time.monotonic() < deadline:
            time.sleep(0.01)
        n = len(rec.got)
        t_last = time.perf_counter()
        rec.c.notify(sid, {"samp.mtype": "coord.pointAt.sky",
                           "samp.params": {"ra": "266.41683", "dec": "-29.00781"}})
        latency = rec.wait_name("CSC 2.1 cone 266.41683", n) - t_last
        queries = d.stats["queries"]
        d.stop()
        rows_out += [
            ("flood: queries issued for 1001 pointAt at 100/s", float(queries), "queries",
             float("nan")),
            ("flood: latency of the final position (quiet 0.3 s)", latency * 1000, "ms",
             float("nan")),
        ]
    finally:
        rec.c.disconnect()
        hub.stop()
    text = report(f"Daemon round trips, median of {args.n}", rows_out)
    print(text)
    return text


if __name__ == "__main__":
    sys.exit(main() and 0)
