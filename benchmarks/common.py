"""Shared pieces of the benchmarks: the local mimic's URLs, timing, positions and reporting."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.table import Table

BASE = os.environ.get("SAMPBRIDGE_BENCH_VO", "http://127.0.0.1:18080")
CONE = f"{BASE}/csc21scs/coneSearch"
SIAP = f"{BASE}/csc21siap/queryImages"
TAP = f"{BASE}/csc21tap"
#: the standard VO shape of the same data (plain DaCHS behind the CXC-shaped front): TAP with
#: ADQL geometry and upload, which the CXC shape does not offer
TAP_STANDARD = f"{BASE}/tap"
STILTS = ["stilts", "-Djava.awt.headless=true"]


def config(results: Path, **changes):
    """A sampbridge configuration for the local mimic."""
    from sampbridge.config import defaults

    cfg = defaults().replace(**{"services.cone": CONE, "services.siap": SIAP,
                                "services.tap": TAP, "results.dir": str(results)})
    return cfg.replace(**changes) if changes else cfg


def timed(fn: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    """Return the median wall time of ``repeat`` runs and the last run's value."""
    times, value = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def run(cmd: list[str]) -> None:
    """Run a command, failing loudly with its output."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr[-2000:]}")


def positions(n: int, seed: int = 1) -> Table:
    """``n`` positions: 80% near mimic sources (0.5" noise), 20% blank sky in the same fields."""
    from astropy.io.votable import parse_single_table

    from sampbridge.engine import Engine
    from sampbridge.model import TapRequest

    e = Engine(config(Path("/tmp/sampbridge-bench")))
    try:
        res = e.run_tap(TapRequest("SELECT name, ra, dec FROM csc21.master_source", None, None))
    finally:
        e.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = parse_single_table(str(res.path)).to_table()
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(src), n, replace=len(src) < n)
    ra = np.asarray(src["ra"], float)[pick]
    dec = np.asarray(src["dec"], float)[pick]
    blank = rng.random(n) < 0.2
    ra = ra + np.where(blank, rng.normal(0, 60, n), rng.normal(0, 0.5, n)) / 3600
    dec = dec + np.where(blank, rng.normal(0, 60, n), rng.normal(0, 0.5, n)) / 3600
    t = Table({"id": np.arange(n), "RA": ra % 360, "DEC": np.clip(dec, -90, 90)})
    t["RA"].unit = t["DEC"].unit = "deg"
    t["RA"].meta["ucd"] = "pos.eq.ra;meta.main"
    t["DEC"].meta["ucd"] = "pos.eq.dec;meta.main"
    return t


def report(title: str, rows: list[tuple[str, float, str, float]]) -> str:
    """Format rows of (what, value, unit, ratio vs anchor) as a Markdown table."""
    out = [f"### {title}", "", "| measurement | value | ratio (anchor / sampbridge) |",
           "|---|---|---|"]
    for what, value, unit, ratio in rows:
        r = "" if ratio != ratio else f"{ratio:.2f}\u00d7"
        out.append(f"| {what} | {value:.3f} {unit} | {r} |")
    return "\n".join(out) + "\n"


def synthetic(src_root: Path, dest_root: Path, rows: int) -> None:
    """Write a mirror of ``rows`` rows from the real one: copies turned in RA."""
    from sampbridge.mirror import open_mirror
    from sampbridge.mirror.store import private_dir, sha256_of, write_fits

    m = open_mirror(src_root, "2.1", {})
    k = -(-rows // m.rows)
    every = np.arange(m.rows)
    cols = {}
    for name in m.columns:
        v, mask = m.column(name, every)
        v = np.concatenate([v] * k)[:rows]
        cols[name] = (v, None if mask is None else np.concatenate([mask] * k)[:rows])
    turn = np.repeat(np.arange(k) * (360.0 / k) + 0.37, m.rows)[:rows]
    cols["ra"] = ((cols["ra"][0] + turn) % 360.0, None)
    order = np.lexsort((cols["ra"][0], cols["dec"][0]))
    cols = {c: (v[order], None if mk is None else mk[order]) for c, (v, mk) in cols.items()}
    folder = private_dir(dest_root / "2.1")
    how = write_fits(folder / "mirror.fits", cols)
    man = dict(m.manifest, rows=rows, columns=how, bytes=(folder / "mirror.fits").stat().st_size,
               sha256=sha256_of(folder / "mirror.fits"))
    (folder / "manifest.json").write_text(json.dumps(man))
    m.close()
