"""Match 1000 positions against the local CSC mimic: sampbridge vs STILTS, same run.

    python benchmarks/bench_match.py [--n 1000] [--repeat 3]

Anchors: STILTS ``coneskymatch parallel=5`` (cone service) and ``tapskymatch`` (TAP upload),
on the same server, the same positions and the same 3" radius, best match per row.

The CXC shape (the default URLs) has no TAP upload, so sampbridge matches by cones there, with the
shipped settings; the upload strategy and STILTS ``tapskymatch`` are measured on the standard
shape of the same data (``/tap``), and each row says which shape it ran on.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

from astropy.table import Table
from common import CONE, STILTS, TAP_STANDARD, config, positions, report, run, timed


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    from sampbridge.engine import Engine

    tmp = Path(tempfile.mkdtemp(prefix="bench-match-"))
    pos = positions(args.n)
    inp = tmp / "pos.vot"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pos.write(inp, format="votable")
    sr = 3 / 3600

    def sb(**changes):
        e = Engine(config(tmp / "res", **changes))
        try:
            return e.run_match(pos, "bench")
        finally:
            e.close()

    # shipped defaults on the CXC shape: match.strategy auto -> cones (no upload there)
    t_cone, r_cone = timed(lambda: sb(), args.repeat)
    t_cone1, r_cone1 = timed(lambda: sb(**{"match.batch_cell": 0.0}), 1)
    t_up, r_up = timed(lambda: sb(**{"services.tap": TAP_STANDARD}), args.repeat)
    out1, out2 = tmp / "stilts_cone.vot", tmp / "stilts_tap.vot"
    t_sc, _ = timed(lambda: run([*STILTS, "coneskymatch", f"in={inp}", "ra=RA", "dec=DEC",
                                 f"sr={sr}", f"serviceurl={CONE}", "servicetype=cone",
                                 "verb=2", "parallel=5", "find=best", f"out={out1}",
                                 "ofmt=votable"]), args.repeat)
    t_st, _ = timed(lambda: run([*STILTS, "tapskymatch", f"in={inp}", "inlon=RA",
                                 "inlat=DEC", f"tapurl={TAP_STANDARD}",
                                 "taptable=csc21.master_source",
                                 "taplon=ra", "taplat=dec", f"sr={sr}", "find=best",
                                 f"out={out2}", "ofmt=votable"]), args.repeat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n_sc = len(Table.read(out1, format="votable"))
        n_st = len(Table.read(out2, format="votable"))
    rows = [
        (f"CXC shape: sampbridge, shipped defaults ({r_cone.strategy} strategy, "
         f"{r_cone.rows} matched rows)", t_cone, "s", t_sc / t_cone),
        (f"CXC shape: sampbridge, one cone per row (match.batch_cell 0; {r_cone1.rows} rows)",
         t_cone1, "s", t_sc / t_cone1),
        (f"CXC shape: STILTS coneskymatch parallel=5 ({n_sc} rows) [anchor]", t_sc, "s",
         float("nan")),
        (f"standard shape (/tap): sampbridge, {r_up.strategy} strategy ({r_up.rows} rows)", t_up,
         "s", t_st / t_up),
        (f"standard shape (/tap): STILTS tapskymatch ({n_st} rows) [anchor]", t_st, "s",
         float("nan")),
    ]
    text = report(f"Matching {args.n} positions (3\", best), median of {args.repeat}", rows)
    print(text)
    return text


if __name__ == "__main__":
    main()
