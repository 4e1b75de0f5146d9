"""Large TAP results: sampbridge streams them to disk; time and peak memory as they grow.

    python benchmarks/bench_tap.py [--sizes 1000,12000,...]

For each size, in the same run, each tool in a fresh process:
  * curl: a plain HTTP download of the same sync TAP result (the speed anchor);
  * pyvo: ``TAPService.run_sync(...).to_table()`` (the memory anchor);
  * sampbridge: ``sampbridge query tap`` (sync), which streams to the output file.
Sizes above the mimic's master_source need the scale knob: ``CSC21_EXTRA_MASTERS=400000
sudo bash tests/vo_server/setup.sh``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import TAP, config, report

TABLE = "csc21.observation_source"      # 12,327 x 65 in the standard mimic


def query(n: int) -> str:
    return f"SELECT TOP {n} * FROM {TABLE}"


def rows_in(table: str) -> int:
    import urllib.parse
    import urllib.request

    data = urllib.parse.urlencode({"REQUEST": "doQuery", "LANG": "ADQL",
                                   "QUERY": f"SELECT COUNT(*) AS n FROM {table}",
                                   "RESPONSEFORMAT": "csv"}).encode()
    with urllib.request.urlopen(f"{TAP}/sync", data, timeout=60) as r:
        return int(r.read().decode().splitlines()[1])


def child(code: str) -> dict:
    """Run ``code`` in a fresh Python; it prints a JSON dict; add its peak RSS (kB, VmHWM)."""
    wrapper = (code + "\nimport json, sys\n"
               # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so
               # a child would report at least its parent's size at fork (run_all.py's 149 MB)
               "out['maxrss_kb'] = int(next(l.split()[1] for l in open('/proc/self/status')"
               " if l.startswith('VmHWM:')))\n"
               "print(json.dumps(out))\n")
    p = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True,
                       timeout=1200)
    if p.returncode:
        raise RuntimeError(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_curl(n: int, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["curl", "-sf", "-o", str(out), f"{TAP}/sync", "--data-urlencode",
                    f"QUERY={query(n)}", "-d", "LANG=ADQL", "-d", "REQUEST=doQuery",
                    "-d", f"MAXREC={n}"], check=True, timeout=1200)
    return time.perf_counter() - t0


def run_pyvo(n: int) -> dict:
    return child(
        "import time, warnings\nwarnings.simplefilter('ignore')\n"
        "from pyvo.dal import TAPService\nt0 = time.perf_counter()\n"
        f"t = TAPService({TAP!r}).run_sync({query(n)!r}, maxrec={n}).to_table()\n"
        "out = {'seconds': time.perf_counter() - t0, 'rows': len(t)}")


def run_sampbridge(n: int, out: Path, cfgfile: Path) -> dict:
    return child(
        "import time\nfrom sampbridge.cli import main\nimport sampbridge.engine\n"
        "t0 = time.perf_counter()\n"
        f"rc = main(['query', 'tap', '--adql', {query(n)!r}, '--maxrec', '{n}', '--config', "
        f"{str(cfgfile)!r}, '--out', {str(out)!r}, '-q'])\n"
        "out = {'seconds': time.perf_counter() - t0, 'rc': rc}")


def baseline_rss() -> int:
    return child("import sampbridge.cli, sampbridge.engine\nout = {}")["maxrss_kb"]


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    global TABLE
    total = rows_in(TABLE)
    masters = rows_in("csc21.master_source")
    if masters > total:             # scaled with CSC21_EXTRA_MASTERS: use the big table
        TABLE, total = "csc21.master_source", masters
    sizes = [int(s) for s in args.sizes.split(",") if s] or \
        [s for s in (1000, 4000, 30000, 100000, 400000) if s < total] + [total]
    tmp = Path(tempfile.mkdtemp(prefix="bench-tap-"))
    cfgfile = tmp / "c.yaml"
    cfg = config(tmp / "res")
    cfgfile.write_text(
        f"services:\n  cone: {cfg['services.cone']}\n  siap: {cfg['services.siap']}\n"
        f"  tap: {cfg['services.tap']}\nresults:\n  dir: {tmp / 'res'}\n"
        "tap:\n  mode: sync\n  maxrec: 0\ncache:\n  enabled: false\nfolder:\n  enabled: false\n")
    base = baseline_rss()
    rows = []
    for n in sizes:
        # curl and sampbridge alternate, so that a drift of the server (its caches, the
        # machine's other load) weighs on both alike
        curl_runs, sb = [], []
        for _ in range(args.repeat):
            curl_runs.append(run_curl(n, tmp / "curl.vot"))
            sb.append(run_sampbridge(n, tmp / "sb.vot", cfgfile))
        print(f"{n} rows: curl {[round(t, 3) for t in curl_runs]} s, sampbridge "
              f"{[round(r['seconds'], 3) for r in sb]} s", file=sys.stderr)
        t_curl = statistics.median(curl_runs)
        t_sb = statistics.median(r["seconds"] for r in sb)
        rss_sb = max(r["maxrss_kb"] for r in sb)
        py = run_pyvo(n)
        size_mb = (tmp / "curl.vot").stat().st_size / 1e6
        rows += [
            (f"{n} rows ({size_mb:.1f} MB): curl download [anchor]", t_curl, "s", float("nan")),
            (f"{n} rows: sampbridge query tap (streamed)", t_sb, "s", t_curl / t_sb),
            (f"{n} rows: pyvo run_sync().to_table()", py["seconds"], "s", float("nan")),
            (f"{n} rows: sampbridge peak RSS (import baseline {base / 1024:.0f} MB)",
             rss_sb / 1024, "MB", py["maxrss_kb"] / rss_sb),
            (f"{n} rows: pyvo peak RSS [memory anchor]", py["maxrss_kb"] / 1024, "MB",
             float("nan")),
        ]
    text = report(f"Large TAP results from {TABLE} ({total} rows), median of {args.repeat}",
                  rows)
    print(text)
    return text


if __name__ == "__main__":
    main()
