"""The scale extra: in-process matching against the mirror vs LSDB on a local 2-worker Dask cluster.

    python benchmarks/bench_scale.py [--sizes 10000 100000 1000000] [--big 407806] [--repeat 3]

Two mirrors: the local mimic's (3622 master sources) and a synthetic one of CSC 2.1's size
(the mimic's rows repeated, each copy turned in RA, as in bench_mirror.py).  Each is exported
as HATS (timed), then matched at each size, 3" all pairs, 80% of the positions within 1" of a
source and 20% on blank sky nearby.  The LSDB times are with the cluster already running
(threads, and processes), and cold (cluster start included, as `query match --engine lsdb`
pays it).  Every LSDB match is checked against the in-process pairs.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from common import CONE, TAP, synthetic, timed


def build_mimic(root: Path) -> None:
    from sampbridge.csc import http
    from sampbridge.csc.cone import ConeService
    from sampbridge.csc.tap import TapClient
    from sampbridge.mirror import build

    s = http.make_session(10, 120, "no")
    build(TapClient(TAP, s), ConeService(CONE, s), table="csc21.master_source", release="2.1",
          root=root, parallel=3, slice_rows=50000)
    s.close()


def positions(m, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, m.rows, n)
    blank = rng.random(n) < 0.2
    ra = m.ra[pick] + np.where(blank, rng.normal(0, 120, n), rng.normal(0, 1.0, n)) / 3600
    dec = m.dec[pick] + np.where(blank, rng.normal(0, 120, n), rng.normal(0, 1.0, n)) / 3600
    return ra % 360.0, np.clip(dec, -90, 90)


def same(a, b) -> None:
    if not all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)):
        raise AssertionError("LSDB and the in-process matcher gave different pairs")


def one_size(m, hats: Path, n: int, repeat: int) -> str:
    from sampbridge.mirror import match
    from sampbridge.scale import match_lsdb
    from sampbridge.scale.cluster import dask_client

    radius = 3.0 / 3600
    ra, dec = positions(m, n, n)
    valid = np.ones(n, bool)
    t_in, ref = timed(lambda: match(m, ra, dec, valid, radius), repeat)
    warm = {}
    for processes in (False, True):
        with dask_client(None, processes=processes) as client:
            match_lsdb(m, ra[:100], dec[:100], valid[:100], radius, hats, client=client)
            warm[processes], got = timed(
                lambda client=client: match_lsdb(m, ra, dec, valid, radius, hats,
                                                 client=client), repeat)
            same(got, ref)
    t0 = time.perf_counter()
    same(match_lsdb(m, ra, dec, valid, radius, hats), ref)      # starts its own cluster
    cold = time.perf_counter() - t0
    line = (f"| {m.rows:,} | {n:,} | {len(ref[0]):,} | {t_in:.3f} | {warm[False]:.2f} "
            f"| {warm[True]:.2f} | {cold:.2f} | {warm[False] / t_in:.0f}\u00d7 |")
    print(line, flush=True)
    return line


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--big", type=int, default=407_806, help="rows of the synthetic mirror")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    from sampbridge.mirror import open_mirror
    from sampbridge.scale import export_hats

    out = [f"### Scale extra: in-process vs LSDB on a local 2-worker Dask cluster "
           f"({os.cpu_count()} cores, {platform.machine()}, "
           f"{time.strftime('%Y-%m-%d %H:%M')})", "",
           "| mirror rows | positions | pairs (3\") | in process, s | LSDB threads, s "
           "| LSDB processes, s | LSDB cold, s | LSDB/in process |",
           "|---|---|---|---|---|---|---|---|"]
    exports = []
    with tempfile.TemporaryDirectory(prefix="sampbridge-bench-scale-") as tmp:
        small, big = Path(tmp) / "mimic", Path(tmp) / "big"
        build_mimic(small)
        synthetic(small, big, args.big)
        for root in (small, big):
            m = open_mirror(root, "2.1", {})
            t0 = time.perf_counter()
            info = export_hats(m, Path(tmp) / f"{root.name}.hats")
            exports.append(f"HATS export of {m.rows:,} rows: {time.perf_counter() - t0:.1f} s, "
                           f"{info['partitions']} partitions")
            print(exports[-1], flush=True)
            out += [one_size(m, Path(tmp) / f"{root.name}.hats", n, args.repeat)
                    for n in args.sizes]
            m.close()
    text = "\n".join(out + [""] + [f"- {e}" for e in exports]) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main()
