"""The local mirror (issue 15): build, open, cones and matches, against the service, same run.

    python benchmarks/bench_mirror.py [--repeat 5] [--cones 200] [--no-stilts] [--big 407806]

Shipped defaults (mirror.parallel 3, mirror.slice_rows 50000, cone.verb 2, match.radius 3",
best) unless a row says otherwise.  The mirror is built from the CXC-shaped mimic (3622
master sources: the shared mimic is never re-imported).  For CSC 2.1's scale a synthetic
mirror of ``--big`` rows is written from the real one (the 3622 rows repeated, each copy
turned in RA, values kept), and the open, cone and 10^6-position match are timed on it too;
peak memory is the ``ru_maxrss`` of a child process that does only that step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from common import (
    BASE,
    CONE,
    STILTS,
    TAP,
    TAP_STANDARD,
    config,
    positions,
    run,
    synthetic,
    timed,
)

HERE = Path(__file__).parent


def child(code: str) -> tuple[dict, float]:
    """Run ``code`` in a fresh Python; return the JSON it prints and its own peak RSS in MB."""
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child would report its
    # parent's peak when that was higher
    code += ("\nimport re as _re\n_s = open('/proc/self/status').read()\n"
             "print(json.dumps({'rss': int(_re.search(r'VmHWM:\\s+(\\d+)', _s).group(1))}))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=1200, cwd=HERE)
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    out = p.stdout.strip().splitlines()
    return json.loads(out[-2]), json.loads(out[-1])["rss"] / 1024.0


def build_step(root: Path) -> tuple[dict, float]:
    code = f"""
import json, time
from pathlib import Path
from sampbridge.csc import http
from sampbridge.csc.cone import ConeService
from sampbridge.csc.tap import TapClient
from sampbridge.mirror import build
s = http.make_session(10, 120, "no")
t0 = time.perf_counter()
m = build(TapClient("{TAP}", s), ConeService("{CONE}", s), table="csc21.master_source",
          release="2.1", root=Path("{root}"), parallel=3, slice_rows=50000)
print(json.dumps({{"seconds": time.perf_counter() - t0, "rows": m["rows"], "bytes": m["bytes"],
                  "raw": m["raw_bytes"], "columns": [c["name"] for c in m["columns"]]}}))
"""
    return child(code)


def curl_dump(columns: list[str], dest: Path) -> float:
    q = f"SELECT {', '.join(columns)} FROM csc21.master_source"
    t0 = time.perf_counter()
    run(["curl", "-sS", "-L", "-o", str(dest), f"{TAP}/sync", "--data-urlencode", f"QUERY={q}",
         "-d", "REQUEST=doQuery", "-d", "LANG=ADQL", "-d", "FORMAT=votable",
         "-d", "MAXREC=10000000"])
    return time.perf_counter() - t0


def big_step(root: Path, n: int) -> tuple[dict, float]:
    code = f"""
import json, statistics, time
import numpy as np
from pathlib import Path
from sampbridge.mirror import open_mirror, cone_votable, match
t0 = time.perf_counter(); m = open_mirror(Path("{root}"), "2.1", {{}}); m.close()
opens = []
for _ in range(5):
    t0 = time.perf_counter(); m = open_mirror(Path("{root}"), "2.1", {{}})
    opens.append(time.perf_counter() - t0)
rng = np.random.default_rng(5)
at = rng.integers(0, m.rows, 300)
cones = []
for i in at:
    t0 = time.perf_counter(); cone_votable(m, float(m.ra[i]), float(m.dec[i]), 0.05, 2, "b")
    cones.append(time.perf_counter() - t0)
pick = rng.integers(0, m.rows, {n})
ra = (m.ra[pick] + rng.normal(0, 1.0, {n}) / 3600) % 360
dec = np.clip(m.dec[pick] + rng.normal(0, 1.0, {n}) / 3600, -90, 90)
t0 = time.perf_counter()
idx, rows, sep = match(m, ra, dec, np.ones({n}, bool), 3 / 3600)
t_match = time.perf_counter() - t0
print(json.dumps({{"rows": m.rows, "open": statistics.median(opens),
                  "cone_ms": 1000 * statistics.median(cones), "match": t_match,
                  "pairs": len(idx)}}))
"""
    return child(code)


def scale_build_steps(big: Path, work: Path, slices: int = 9) -> tuple[dict, float, dict, float]:
    """At the big mirror's scale: parse one 50,000-row TABLEDATA slice, and assemble parts.

    The first child writes part files as a build saves them (and one slice as the CXC TAP's
    TABLEDATA, by the mirror's own writer); the second only parses that slice with
    ``read_table`` (as a build does) and assembles the parts, so its peak RSS is the build's
    own after the downloads.
    """
    prep = f"""
import json
import numpy as np
from pathlib import Path
from sampbridge.mirror import open_mirror
from sampbridge.mirror.fields import votable_bytes
m = open_mirror(Path("{big}"), "2.1", {{}})
work = Path("{work}"); work.mkdir(parents=True, exist_ok=True)
order = np.argsort(m.ra, kind="stable")
done = {{}}
for k, rows in enumerate(np.array_split(order, {slices})):
    arrays = {{}}
    for c in m.columns:
        v, mk = m.column(c, rows)
        arrays["v_" + c] = v
        if mk is not None and mk.any():
            arrays["m_" + c] = mk
    np.savez(work / f"part-{{k}}.npz", **arrays)
    done[str(k)] = {{"a": float(k), "b": float(k + 1), "rows": len(rows),
                    "part": f"part-{{k}}.npz"}}
(work / "journal.json").write_text(json.dumps({{"head": {{}}, "done": done}}))
rows = order[:50000]
fields = m.manifest["verbs"]["3"]
fields = [f for f in fields if f["attrs"]["name"] in m.stored]
body = votable_bytes(fields, [m.column(f["attrs"]["name"], rows) for f in fields], name="s",
                     params={{}})
(work / "slice.vot").write_bytes(body)
print(json.dumps({{"columns": m.columns, "slice_bytes": len(body)}}))
"""
    info, _ = child(prep)
    run_parse = f"""
import json, time
from pathlib import Path
from sampbridge.csc.votable import read_table
from sampbridge.mirror.tabledata import fast_columns
body = (Path("{work}") / "slice.vot").read_bytes()
t0 = time.perf_counter(); cols = fast_columns(body, {info["columns"]!r})
fast = time.perf_counter() - t0
t0 = time.perf_counter(); t = read_table(body)
print(json.dumps({{"seconds": fast, "astropy": time.perf_counter() - t0, "rows": len(t)}}))
"""
    parse, rss_parse = child(run_parse)
    parse["slice_bytes"] = info["slice_bytes"]
    run_asm = f"""
import json, time
from pathlib import Path
from sampbridge.mirror.builder import _Journal, _assemble
work = Path("{work}")
j = _Journal(work, {{}})
t0 = time.perf_counter(); out = _assemble(work, j, {info["columns"]!r})
print(json.dumps({{"seconds": time.perf_counter() - t0, "rows": out["rows"]}}))
"""
    asm, rss_asm = child(run_asm)
    return parse, rss_parse, asm, rss_asm


def bench_click(tmp: Path, root: Path, n: int) -> tuple[float, float, float]:
    """Clicks through sampbridge's hub with the mirror: a stand-in TOPCAT sends pointAt.

    Returns the medians of click -> table received by the stand-in, and of the daemon's own
    message -> table delivered, and the fraction of cones answered from the mirror.
    """
    import os

    import pyvo.samp as psamp
    from bench_daemon import Recorder, wait

    from sampbridge.daemon import Daemon
    from sampbridge.samp.hub import Hub

    os.environ["HOME"] = str(tmp)
    os.environ["SAMP_HUB"] = f"std-lockurl:file://{tmp}/.samp"
    psamp.conf.use_internet = False
    hub = Hub(addr="127.0.0.1", web_profile=False, lockfile=str(tmp / ".samp"))
    hub.start(wait=False)
    wait(lambda: (tmp / ".samp").exists(), 10, "hub lockfile")
    topcat = Recorder("topcat")
    clicks, inside, mirrored = [], [], 0
    try:
        d = Daemon(config(tmp / "res-click", **{"mirror.dir": str(root)}))
        d.start(wait=10)
        sid = topcat.find("sampbridge")
        for i in range(n):
            ra, dec = 246.70 + i * 0.01, -24.30
            k, done = len(topcat.got), d.points_done
            t0 = time.perf_counter()
            topcat.point(sid, ra, dec)
            clicks.append(topcat.wait_name(f"CSC 2.1 cone {ra:.5f}", k) - t0)
            wait(lambda done=done: d.points_done > done, 10, "the click")
            inside.append(d.last_latency)
            params = topcat.got[-1][1]
            mirrored += "mirror" in str(params.get("name", "")) or \
                b"sampbridge_source" in Path(params["url"].removeprefix("file://")).read_bytes()
            wait(lambda: d._active == 0, 30, "the click's image work")
            time.sleep(d.cfg["pointat.quiet"] + 0.05)
        d.stop()
    finally:
        topcat.close()
        hub.stop()
    return statistics.median(clicks), statistics.median(inside), mirrored / n


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cones", type=int, default=200)
    ap.add_argument("--big", type=int, default=407806)
    ap.add_argument("--million", type=int, default=1_000_000)
    ap.add_argument("--no-stilts", action="store_true")
    ap.add_argument("--clicks", type=int, default=30)
    args = ap.parse_args(argv)
    from pyvo.dal import SCSService

    from sampbridge.engine import Engine
    from sampbridge.mirror import cone_rows, cone_votable, open_mirror

    tmp = Path(tempfile.mkdtemp(prefix="bench-mirror-"))
    lines = [f"### The mirror (`bench_mirror.py`, mimic {BASE}, {time.strftime('%Y-%m-%d')})",
             "", "| measurement | value | anchor | ratio |", "|---|---|---|---|"]

    def row(what: str, value: str, anchor: str = "", ratio: float | None = None) -> None:
        lines.append(f"| {what} | {value} | {anchor} | "
                     f"{'' if ratio is None else f'{ratio:.1f}×'} |")

    # -- build vs one curl dump of the same columns
    builds = [build_step(tmp / f"m{i}") for i in range(3)]
    b_sec = statistics.median(b[0]["seconds"] for b in builds)
    b = builds[0][0]
    rss = max(x[1] for x in builds)
    root = tmp / "m0"
    for i in (1, 2):
        shutil.rmtree(tmp / f"m{i}")
    curl = statistics.median(curl_dump(b["columns"], tmp / "dump.vot") for _ in range(3))
    row(f"build, {b['rows']} rows x {len(b['columns'])} columns (median of 3)", f"{b_sec:.2f} s",
        f"curl dump of the same columns {curl:.2f} s", b_sec / curl)
    row("build peak RSS (child process)", f"{rss:.0f} MB")
    dump = (tmp / "dump.vot").stat().st_size
    row("disk: mirror.fits vs raw bytes of the values", f"{b['bytes'] / 1e6:.3f} MB",
        f"raw {b['raw'] / 1e6:.3f} MB (VOTable dump {dump / 1e6:.2f} MB)", b["bytes"] / b["raw"])

    # -- open and cones, in process, against the loopback service
    m = open_mirror(root, "2.1", {})
    m.close()
    t_open, m = timed(lambda: open_mirror(root, "2.1", {}), args.repeat)
    row(f"open ({m.rows} rows, warm imports, median of {args.repeat})", f"{t_open * 1e3:.1f} ms")
    rng = np.random.default_rng(11)
    at = rng.integers(0, m.rows, args.cones)
    cs = [(float(m.ra[i]), float(m.dec[i])) for i in at]
    t_rows, t_vot, t_svc = [], [], []
    scs = SCSService(CONE)
    for ra, dec in cs:
        t0 = time.perf_counter()
        cone_rows(m, ra, dec, 0.05)
        t_rows.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cone_votable(m, ra, dec, 0.05, 2, "bench")
        t_vot.append(time.perf_counter() - t0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ra, dec in cs[:50]:
            t0 = time.perf_counter()
            scs.search((ra, dec), 0.05, verbosity=2)
            t_svc.append(time.perf_counter() - t0)
    svc = statistics.median(t_svc)
    row(f"cone r=0.05 deg, rows only (median of {args.cones})",
        f"{statistics.median(t_rows) * 1e3:.3f} ms")
    row(f"cone r=0.05 deg, VERB=2 VOTable bytes (median of {args.cones})",
        f"{statistics.median(t_vot) * 1e3:.3f} ms",
        f"loopback service cone, pyvo SCSService {svc * 1e3:.1f} ms (median of 50)",
        svc / statistics.median(t_vot))
    m.close()
    from sampbridge.model import ConeRequest

    e = Engine(config(tmp / "res", **{"mirror.dir": str(root)}))
    t_eng = []
    try:
        for ra, dec in cs[:100]:
            t0 = time.perf_counter()
            res = e.run_cone(ConeRequest(ra, dec, 0.05, 2))
            t_eng.append(time.perf_counter() - t0)
            assert res.service_url.startswith("mirror:")
    finally:
        e.close()
    row("Engine.run_cone from the mirror, r=0.05 deg (file written; median of 100)",
        f"{statistics.median(t_eng) * 1e3:.2f} ms")

    c_click, c_inside, share = bench_click(tmp, root, args.clicks)
    row(f"click -> table received by a stand-in TOPCAT through sampbridge's hub "
        f"(median of {args.clicks}; {share:.0%} from the mirror; image query beside it)",
        f"{c_click * 1e3:.1f} ms", "")
    row("  in the daemon: pointAt received -> table delivered", f"{c_inside * 1e3:.1f} ms")

    # -- matching 1000 positions
    pos = positions(1000)
    ra, dec = np.asarray(pos["RA"], float), np.asarray(pos["DEC"], float)
    valid = np.ones(len(pos), bool)

    def sb(strategy: str, **changes: object) -> float:
        e = Engine(config(tmp / "res", **{"mirror.dir": str(root), "match.strategy": strategy,
                                          **changes}))
        try:
            t, res = timed(lambda: e._match(strategy, ra, dec, valid, 3 / 3600),
                           args.repeat if strategy == "mirror" else 3)
            assert res.strategy == strategy, res.strategy
            return t
        finally:
            e.close()

    t_mirror = sb("mirror")
    t_cone = sb("cone", **{"cone.source": "service"})
    t_up = sb("upload", **{"cone.source": "service", "services.tap": TAP_STANDARD})
    row("match 1000 positions, mirror (in process)", f"{t_mirror * 1e3:.1f} ms")
    row("match 1000 positions, cone strategy (CXC shape)", f"{t_cone:.2f} s", "", t_cone / t_mirror)
    row("match 1000 positions, upload strategy (standard /tap)", f"{t_up:.2f} s", "",
        t_up / t_mirror)
    if not args.no_stilts and shutil.which("stilts"):
        inp = tmp / "pos.vot"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pos.write(inp, format="votable")
        stilts = {
            "coneskymatch parallel=5": ["coneskymatch", f"in={inp}", "ra=RA", "dec=DEC",
                                        f"sr={3 / 3600}", f"serviceurl={CONE}",
                                        "servicetype=cone", "verb=2", "parallel=5",
                                        "find=best", f"out={tmp / 'sc.vot'}", "ofmt=votable"],
            "tapskymatch (standard /tap)": ["tapskymatch", f"in={inp}", "inlon=RA", "inlat=DEC",
                                            f"tapurl={TAP_STANDARD}",
                                            "taptable=csc21.master_source", "taplon=ra",
                                            "taplat=dec", f"sr={3 / 3600}", "find=best",
                                            f"out={tmp / 'st.vot'}", "ofmt=votable"]}
        for label, cmd in stilts.items():
            try:
                t_s, _ = timed(lambda cmd=cmd: run([*STILTS, *cmd]), 1)
            except RuntimeError as exc:
                row(f"match 1000 positions, STILTS {label}", f"failed: {str(exc)[-80:]}")
                continue
            row(f"match 1000 positions, STILTS {label}", f"{t_s:.2f} s", "", t_s / t_mirror)
        print("\n".join(lines), flush=True)

    # -- CSC 2.1's scale: a synthetic mirror
    big = tmp / "big"
    synthetic(root, big, args.big)
    r, rss_big = big_step(big, args.million)
    row(f"synthetic mirror of {r['rows']:,} rows: open (warm imports, median of 5)",
        f"{r['open'] * 1e3:.0f} ms")
    row(f"synthetic {r['rows']:,} rows: cone r=0.05 deg VERB=2 VOTable (median of 300)",
        f"{r['cone_ms']:.3f} ms")
    row(f"synthetic {r['rows']:,} rows: match {args.million:,} positions, 3\" all pairs "
        f"({r['pairs']:,} pairs)", f"{r['match']:.2f} s")
    row("  peak RSS of that child (open + cones + match)", f"{rss_big:.0f} MB")
    parse, _rss, asm, rss_a = scale_build_steps(big, tmp / "parts")
    row(f"build at {r['rows']:,} rows: parse one 50,000-row TABLEDATA slice "
        f"({parse['slice_bytes'] / 1e6:.1f} MB, the build's fast path)",
        f"{parse['seconds']:.2f} s", f"astropy read_table {parse['astropy']:.2f} s",
        parse["astropy"] / parse["seconds"])
    row(f"build at {asm['rows']:,} rows: assemble 9 parts, sort, write FITS, sha256",
        f"{asm['seconds']:.2f} s", f"peak RSS {rss_a:.0f} MB")
    shutil.rmtree(tmp, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main()
