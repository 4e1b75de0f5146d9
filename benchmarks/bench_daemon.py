"""Click to delivery through the daemon, with the shipped defaults: what users get.

    python benchmarks/bench_daemon.py [--n 30] [--no-peers] [--hub jsamp|python]

The daemon runs with config.yaml's defaults; the only settings changed are the service URLs
(the local CSC mimic) and the results folder, and every row of the report names any other
override beside its figure.  Anchor: a direct pyvo SCS query of the same cone (VERB=2, 0.05
deg, the defaults), measured in the same run.

1. Stand-ins (sampbridge's hub and daemon in this process, pyvo clients as TOPCAT and DS9):
   a single click sent by "TOPCAT" -> the table received by "TOPCAT", while "DS9" takes the
   image query that runs beside it; a repeat click from the cache; a flood of 100 pointAt/s
   for 10 s from two senders (cone queries issued, the final position's latency, and the
   daemon's answer to a ping during the flood).
2. Real peers (tests/peers/harness.py: Xvfb, a JSAMP hub, the real TOPCAT and DS9, no Aladin):
   the user's own image in DS9, a DS9 pan (XPA ``pan to``) -> the cone table loaded in TOPCAT
   (TOPCAT answers table.load.votable once it has loaded the table), minus a direct pyvo
   cone in the same run.  DS9 then gets the overlay (a VERB=3 cone and ds9.set), which the
   table never waits for.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from common import CONE, config

REPO = Path(__file__).resolve().parent.parent
RHO = (246.7925, -24.32027)
SHIPPED = "none (shipped defaults)"


class Recorder:
    """A SAMP client that timestamps every table.load.votable it receives."""

    def __init__(self, name: str = "topcat", mtypes: tuple[str, ...] = ("table.load.votable",)
                 ) -> None:
        import pyvo.samp as psamp

        self.got: list[tuple[float, dict]] = []
        self.cond = threading.Condition()
        self.c = psamp.SAMPIntegratedClient(name=name, addr="127.0.0.1")
        self.c.connect(pool_size=100)
        for mt in mtypes:
            self.c.bind_receive_call(mt, self._call, declare=False)
        self.c.declare_subscriptions()

    def _call(self, pk, sender, msg_id, mtype, params, extra):
        with self.cond:
            self.got.append((time.perf_counter(), dict(params)))
            self.cond.notify_all()
        self.c.ereply(msg_id, "samp.ok", result={})

    def wait_name(self, prefix: str, after: int, timeout: float = 30) -> float:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, p in self.got[after:]:
                    if p.get("name", "").startswith(prefix):
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

    def point(self, sid: str, ra: float, dec: float) -> None:
        self.c.notify(sid, {"samp.mtype": "coord.pointAt.sky",
                            "samp.params": {"ra": f"{ra:.5f}", "dec": f"{dec:.5f}"}})

    def close(self) -> None:
        self.c.disconnect()


def direct_cone(ra: float, dec: float) -> float:
    """Seconds for a direct pyvo SCS query of the default cone (VERB=2, 0.05 deg)."""
    from pyvo.dal import SCSService

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SCSService(CONE).search((ra, dec), 0.05, verbosity=2).to_table()
    return time.perf_counter() - t0


def wait(pred: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.002)


def counting_cones(d) -> list[int]:
    """Count the cone queries the daemon's engine runs (tables and overlays alike)."""
    count = [0]
    run = d.engine.run_cone

    def counted(*a, **k):
        count[0] += 1
        return run(*a, **k)

    d.engine.run_cone = counted
    return count


def ms(x: float) -> float:
    return x * 1000.0


# ----------------------------------------------------------------------------- stand-ins
def bench_standins(tmp: Path, n: int) -> list[tuple[str, float, str, str]]:
    import pyvo.samp as psamp

    from sampbridge.daemon import Daemon
    from sampbridge.samp.hub import Hub

    os.environ["HOME"] = str(tmp)
    os.environ["SAMP_HUB"] = f"std-lockurl:file://{tmp}/.samp"
    psamp.conf.use_internet = False
    hub = Hub(addr="127.0.0.1", web_profile=False, lockfile=str(tmp / ".samp"))
    hub.start(wait=False)
    rows: list[tuple[str, float, str, str]] = []
    topcat = Recorder("topcat")
    ds9 = Recorder("SAOImageDS9", ("image.load.fits",))
    try:
        # -- a single click: the table, while the image query runs beside it ----------------
        d = Daemon(config(tmp / "res"))
        d.start(wait=10)
        sid = topcat.find("sampbridge")
        clicks, directs = [], []
        for i in range(n):
            ra, dec = 246.70 + i * 0.01, -24.30
            directs.append(direct_cone(ra, dec))
            k = len(topcat.got)
            t0 = time.perf_counter()
            topcat.point(sid, ra, dec)
            clicks.append(topcat.wait_name(f"CSC 2.1 cone {ra:.5f}", k) - t0)
            # a click, not a pan: the next one comes after the quiet spell (and after this
            # click's image work), so it too runs at once
            wait(lambda: d._active == 0, 30, "the click's image work")
            time.sleep(d.cfg["pointat.quiet"] + 0.05)
        leading, ran = d.coalescer.leading, d.coalescer.ran
        d.stop()
        med_direct = statistics.median(directs)
        over = [c - di for c, di in zip(clicks, directs, strict=True)]
        rows += [
            ("direct pyvo SCS query, 0.05 deg, VERB=2 [anchor]", ms(med_direct), "ms", SHIPPED),
            ("single click -> table received by TOPCAT (stand-in), image query beside it",
             ms(statistics.median(clicks)), "ms", SHIPPED),
            ("**overhead: single click -> table minus direct pyvo (median)** (goal <= 15 ms)",
             ms(statistics.median(over)), "ms", SHIPPED),
            (f"clicks that ran at once (leading edge), of {ran} runs", float(leading), "clicks",
             SHIPPED),
        ]
        # -- a repeat click from the cache --------------------------------------------------
        d = Daemon(config(tmp / "res"))
        d.start(wait=10)
        sid = topcat.find("sampbridge")
        repeats, inside = [], []
        for i in range(n):
            ra, dec = 246.70 + i * 0.01, -24.30         # the cones of the first part
            k, done = len(topcat.got), d.points_done
            t0 = time.perf_counter()
            topcat.point(sid, ra, dec)
            repeats.append(topcat.wait_name(f"CSC 2.1 cone {ra:.5f}", k) - t0)
            wait(lambda done=done: d.points_done > done, 10)
            inside.append(d.last_latency)
            wait(lambda: d._active == 0, 30, "the click's image work")
            time.sleep(d.cfg["pointat.quiet"] + 0.05)
        d.stop()
        rows += [
            ("repeat click from the cache (notify -> table received, 2 hub hops)",
             ms(statistics.median(repeats)), "ms", SHIPPED),
            ("repeat click from the cache (in the daemon: message -> table delivered)",
             ms(statistics.median(inside)), "ms", SHIPPED),
        ]
        rows += bench_flood(tmp, topcat, ds9)
    finally:
        topcat.close()
        ds9.close()
        hub.stop()
    return rows


def bench_flood(tmp: Path, topcat: Recorder, ds9: Recorder
                ) -> list[tuple[str, float, str, str]]:
    """100 pointAt/s for 10 s, alternately from 'DS9' and 'Aladin' stand-ins."""
    from sampbridge.daemon import Daemon

    aladin = Recorder("Aladin", ("image.load.fits",))
    senders = [ds9, aladin]
    d = Daemon(config(tmp / "res-flood"))
    d.start(wait=10)
    cones = counting_cones(d)
    sid = topcat.find("sampbridge")
    pings: list[float] = []
    stop = threading.Event()

    def pinger() -> None:                    # is the daemon responsive throughout?
        while not stop.wait(0.05):
            t0 = time.perf_counter()
            topcat.c.call_and_wait(sid, {"samp.mtype": "samp.app.ping", "samp.params": {}},
                                   "10")
            pings.append(time.perf_counter() - t0)

    threading.Thread(target=pinger, daemon=True).start()
    try:
        t0 = time.perf_counter()
        for i in range(1000):
            senders[i % 2].point(sid, 266.30 + i * 0.0002, -29.00)
            delay = t0 + (i + 1) / 100.0 - time.perf_counter()
            if delay > 0:
                time.sleep(delay)                   # pacing the flood
        wait(lambda: d.coalescer.submitted + d.stats["echoes"] >= 1000, 30, "the flood")
        k = len(topcat.got)
        t_last = time.perf_counter()
        senders[0].point(sid, 266.41683, -29.00781)
        latency = topcat.wait_name("CSC 2.1 cone 266.41683", k) - t_last
        wait(lambda: d._active == 0, 60, "the flood's image work")
    finally:
        stop.set()
        queries = cones[0]
        d.stop()
        aladin.close()
    return [
        ("flood: cone queries issued for 1001 pointAt at 100/s, two senders (goal <= 8)",
         float(queries), "queries", SHIPPED),
        ("flood: latency of the final position (pointat.quiet 0.3 s)", ms(latency), "ms",
         SHIPPED),
        ("flood: slowest samp.app.ping answer during the flood", ms(max(pings)), "ms", SHIPPED),
    ]


# ----------------------------------------------------------------------------- real peers
def user_image(path: Path) -> Path:
    """The user's own image (not a CSC one): 400 x 400 pixels of 1" at rho Oph, TAN."""
    import numpy as np
    from astropy.io import fits
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(RHO)
    w.wcs.crpix = [200.5, 200.5]
    w.wcs.cdelt = [-1 / 3600, 1 / 3600]
    data = np.random.default_rng(1).normal(10, 1, (400, 400)).astype(np.float32)
    fits.PrimaryHDU(data, header=w.to_header()).writeto(path)
    return path


def bench_real_peers(tmp: Path, n: int, hub: str) -> list[tuple[str, float, str, str]]:
    sys.path.insert(0, str(REPO / "tests"))
    from sampbridge.daemon import Daemon

    from peers.harness import PeerStack, missing_requirements

    missing = missing_requirements("topcat", "ds9", "xdotool", hub=hub)
    if missing:
        print(f"real peers skipped: missing {', '.join(missing)} "
              "(sudo bash tests/peers/install.sh)", file=sys.stderr)
        return []
    st = PeerStack(tmp / "peers", hub=hub)
    st.start()
    rows: list[tuple[str, float, str, str]] = []
    d = None
    try:
        st.start_topcat()
        st.start_ds9()
        st.xpaset("fits", str(user_image(tmp / "my_image.fits")))
        os.environ["SAMP_HUB"] = st.env["SAMP_HUB"]
        os.environ["HOME"] = st.env["HOME"]
        d = Daemon(config(tmp / "res-peers"))
        d.start(wait=10)
        delivered: list[tuple[float, str, list[str]]] = []
        deliver = d.delivery.table

        def timed(res, origin, patterns=None):
            sent = deliver(res, origin, patterns)
            delivered.append((time.perf_counter(), res.name, sent))
            return sent

        d.delivery.table = timed  # type: ignore[method-assign]
        cones = counting_cones(d)
        pans, inside, directs = [], [], []
        for i in range(n):
            # positions on the user's image, 12" apart, each a new cone
            ra = RHO[0] + ((i % 6) - 2.5) * 12 / 3600 / math.cos(math.radians(RHO[1]))
            dec = RHO[1] + ((i // 6) - 2.0) * 12 / 3600
            if i % 2:
                directs.append(direct_cone(ra, dec))
            st.ds9_wait_broadcast_ready()           # DS9 not busy with the last overlay
            k, overlays = len(delivered), d.stats["overlays"]
            if i == 0:
                st.ds9_send_point_at(ra, dec, via="pan")   # moves the pointer off DS9 once
                t0 = math.nan
            else:
                t0 = time.perf_counter()
                st.xpaset("pan", "to", repr(ra), repr(dec), "wcs", "fk5")
            wait(lambda k=k: len(delivered) > k, 30, f"pan {i}: the table in TOPCAT")
            t1, name, sent = delivered[k]
            assert "topcat" in sent, (name, sent)
            if not math.isnan(t0):
                pans.append(t1 - t0)
                inside.append(d.last_latency)
            if not i % 2:
                directs.append(direct_cone(ra, dec))
            wait(lambda o=overlays: d.stats["overlays"] > o, 30, f"pan {i}: the overlay")
            time.sleep(d.cfg["pointat.quiet"] + 0.05)
        leading = d.coalescer.leading
        med_direct = statistics.median(directs)
        over = [p - di for p, di in zip(pans, directs[1:], strict=True)]
        rows += [
            ("direct pyvo SCS query, same run [anchor]", ms(med_direct), "ms", SHIPPED),
            (f"real DS9 pan (XPA) -> table loaded in real TOPCAT, {len(pans)} pans",
             ms(statistics.median(pans)), "ms", SHIPPED),
            ("**overhead: DS9 pan -> table in TOPCAT minus direct pyvo (median)** "
             "(goal <= 150 ms)", ms(statistics.median(over)), "ms", SHIPPED),
            ("of which in sampbridge: pointAt received -> TOPCAT answered table.load",
             ms(statistics.median(inside)), "ms", SHIPPED),
            (f"pans that ran at once (leading edge), of {n}", float(leading), "pans", SHIPPED),
            (f"cone queries for {n} pans (table VERB=2 + overlay VERB=3 each)",
             float(cones[0]), "queries", SHIPPED),
        ]
    finally:
        if d is not None:
            d.stop()
        st.stop()
    return rows


def report(title: str, rows: list[tuple[str, float, str, str]]) -> str:
    out = [f"### {title}", "", "| measurement | value | overrides |", "|---|---|---|"]
    out += [f"| {what} | {value:.1f} {unit} | {over} |" for what, value, unit, over in rows]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--no-peers", action="store_true", help="skip the real-peer measurement")
    ap.add_argument("--hub", default="jsamp", choices=("jsamp", "python"))
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    text = report(f"Daemon round trips with the shipped defaults, median of {args.n} "
                  "(stand-ins)", bench_standins(tmp, args.n))
    if not args.no_peers:
        rows = bench_real_peers(tmp, args.n, args.hub)
        if rows:
            text += "\n" + report(f"Real DS9 8.4 and TOPCAT 4.8 ({args.hub} hub), median of "
                                  f"{args.n - 1} pans", rows)
    text += ("\nEvery setting is config.yaml's default except the service URLs (the local "
             "mimic) and results.dir.\n")
    print(text)
    return text


if __name__ == "__main__":
    sys.exit(main() and 0)
