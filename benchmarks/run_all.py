"""Run every benchmark against the local CSC mimic and print one table per benchmark.

    python benchmarks/run_all.py [--quick] [--out benchmarks/results/latest.md]

Each result is given beside its anchor measured in the same run (direct pyvo, curl, STILTS),
as a ratio anchor / sampbridge (above 1: sampbridge is faster or smaller).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import bench_daemon
import bench_match
import bench_tap


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats and positions")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "latest.md"))
    args = ap.parse_args(argv)
    rep = ["--repeat", "1"] if args.quick else []
    parts = [f"# sampbridge benchmarks, {time.strftime('%Y-%m-%d %H:%M')}, "
             f"{platform.node()} ({platform.processor() or platform.machine()}, "
             f"Python {platform.python_version()})\n"]
    parts.append(bench_daemon.main(["--n", "10" if args.quick else "30"]))
    parts.append(bench_match.main([*rep, "--n", "1000"]))
    parts.append(bench_tap.main(rep))
    text = "\n".join(parts)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"(written to {out})")


if __name__ == "__main__":
    main()
