"""The cost of a click's image part on realistic (full-field, gzipped) CSC images.

    python3 benchmarks/bench_click_cost.py [--repeat 3]

A sky click in a new field runs a SIAP query and downloads the chosen image.  On the
CXC-shaped front of the local mimic the field at rho Oph has two full-field images (4096 x 4096
int32, 67 MB decompressed, about 3 MB gzipped), as CXC serves them.  This measures, for one
click in a new field (fresh results folder and cache each time):

- the image part with the shipped defaults (what a user gets without touching anything);
- the same with a 20 MB cap, which only the image's FITS header can show it is over (a probe);
- the same with the cap lifted to 100 MB, the former default (each ``images.max_bytes``
  override is printed beside its figure);
- the anchors, measured in the same run: the SIAP query alone (one HTTP GET with curl), and a
  direct ``curl`` of the same full-field file, raw and piped through ``gunzip`` to a file.

Everything is on 127.0.0.1, so the network costs nothing here: the figures "at N Mbit/s" are
computed (received bytes / bandwidth), not measured, to show what the same bytes cost over a
real link.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import urlencode

from common import SIAP, config

RHO = (246.7925, -24.32027)
KEYS = ("services.siap", "images.enabled", "images.size", "images.format", "images.max_count",
        "images.max_bytes", "images.prefer_band", "cache.enabled", "http.compress",
        "http.retries", "http.read_timeout")
LIFTED = 100_000_000          # the former default cap, which lets a full-field image through
HEADER_CAP = 20_000_000       # over 4096 x 4096 x 1 byte: only the FITS header can refuse it
LINKS_MBIT = (20, 100)        # computed transfer times at these link speeds


def _click(cfg, repeat: int) -> dict:
    """Median time of the image part of a click in a new field, and what it cost."""
    from sampbridge.engine import Engine
    from sampbridge.model import SiapRequest

    times, last = [], None
    for _ in range(repeat):
        tmp = Path(tempfile.mkdtemp(prefix="bench-click-"))
        e = Engine(cfg.replace(**{"results.dir": str(tmp / "results")}))
        # keep the SIAP layer's own result: its rows say what every download (the chosen
        # images' and the probes of the refused ones) received
        seen: list = []
        e.siap.query_to_dir = _recording(e.siap.query_to_dir, seen)
        try:
            t0 = time.perf_counter()
            res = e.run_siap(SiapRequest(*RHO, cfg["images.size"]))
            times.append(time.perf_counter() - t0)
            disk = sum(p.stat().st_size for p in (tmp / "results").rglob("*") if p.is_file())
            last = {"res": res, "disk": disk, "found": seen[-1].found}
        finally:
            e.close()
            shutil.rmtree(tmp, ignore_errors=True)
    res = last["res"]
    received = sum(i.received for i in last["found"])
    sent = {id(i) for i in res.images}
    probes = sum(i.received for i in last["found"] if id(i) not in sent)
    written = sum(i.nbytes for i in res.images)
    return {"seconds": statistics.median(times), "received": received, "probes": probes,
            "written": written, "disk": last["disk"],
            "images": [(i.title, i.nbytes) for i in res.images], "skipped": res.skipped}


def _recording(query, seen: list):
    """``query``, keeping each result it returns in ``seen``."""
    def run(*args, **kwargs):
        seen.append(query(*args, **kwargs))
        return seen[-1]
    return run


def _full_field_url(cfg) -> str:
    from pyvo.dal import SIAService

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = SIAService(cfg["services.siap"]).search(pos=RHO, size=cfg["images.size"],
                                                       format="image/fits")
    for rec in rows:
        if "full-field" in str(rec.title) and str(rec["band"]).endswith("b"):
            return str(rec.getdataurl())
    raise SystemExit("the front serves no full-field b image at rho Oph: is the mimic the "
                     "CXC-shaped front (tests/vo_server/setup.sh)?")


def _curl(args: list[str], repeat: int, shell: str | None = None) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        if shell:
            p = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True,
                               text=True, timeout=300, check=True)
        else:
            p = subprocess.run(["curl", "-sS", "--fail", *args], capture_output=True, text=True,
                               timeout=300, check=True)
        times.append(time.perf_counter() - t0)
        out = p.stdout
    return statistics.median(times), out


def _read_pixels(path: Path, repeat: int) -> float:
    from astropy.io import fits

    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        with fits.open(path, memmap=False) as hdul:
            float(hdul[0].data.sum())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def _link(received: int) -> str:
    secs = [received * 8 / (m * 1e6) for m in LINKS_MBIT]
    return ", ".join((f"{t:.1f} s" if t >= 1 else f"{t * 1e3:.0f} ms") + f" at {m} Mbit/s"
                     for t, m in zip(secs, LINKS_MBIT, strict=True))


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    base = config(Path(tempfile.gettempdir()) / "bench-click-unused")
    out = ["### The cost of a click's image part (CXC-shaped front, rho Oph, a new field)", "",
           "Configuration (shipped defaults, mimic URLs):", ""]
    out += [f"- `{k}`: `{base[k]}`" for k in KEYS]
    out += ["", f"Median of {args.repeat} clicks, each with an empty results folder and cache.",
            "", "| case | time | received (of which refused images) | written (decompressed) "
            "| on disk (result + cache) | image sent | over a real link (computed) |",
            "|---|---|---|---|---|---|---|"]

    cases = [("shipped defaults", base),
             (f"override `images.max_bytes: {HEADER_CAP}`",
              base.replace(**{"images.max_bytes": HEADER_CAP})),
             (f"override `images.max_bytes: {LIFTED}`",
              base.replace(**{"images.max_bytes": LIFTED}))]
    _click(base, 1)               # warm-up (imports, connections), not counted
    for label, cfg in cases:
        c = _click(cfg, args.repeat)
        image = "; ".join(f"{t} ({_mb(n)})" for t, n in c["images"]) or "none"
        out.append(f"| {label} | {c['seconds']:.3f} s | {_mb(c['received'])} "
                   f"({c['probes'] / 1e3:.0f} kB) | {_mb(c['written'])} | {_mb(c['disk'])} | "
                   f"{image} | {_link(c['received'])} |")
        for s in c["skipped"]:
            out.append(f"| | | | | | skipped: {s} | |")


    url = _full_field_url(base)
    qs = urlencode({"POS": f"{RHO[0]},{RHO[1]}", "SIZE": base["images.size"],
                    "FORMAT": base["images.format"]})
    t_q, _ = _curl(["-o", "/dev/null", f"{SIAP}?{qs}"], args.repeat)
    t_raw, meta = _curl(["-o", "/dev/null", "-w", "%{size_download}", url], args.repeat)
    tmp = Path(tempfile.mkdtemp(prefix="bench-curl-"))
    try:
        t_gz, _ = _curl([], args.repeat, shell=f"curl -sS --fail '{url}' | gunzip -c > "
                                                f"{tmp / 'x.fits'}")
        plain = (tmp / "x.fits").stat().st_size
        t_read = _read_pixels(tmp / "x.fits", args.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out += ["", "Anchors (same run):", "",
            "| anchor | time | bytes |", "|---|---|---|",
            f"| curl: the SIAP query alone | {t_q:.3f} s | |",
            f"| curl: the full-field b file, raw (gzipped) to /dev/null | {t_raw:.3f} s | "
            f"{_mb(int(meta))} |",
            f"| curl \\| gunzip: the same file decompressed to disk | {t_gz:.3f} s | "
            f"{_mb(plain)} |",
            f"| astropy reads its pixels (a stand-in for a viewer's load) | {t_read:.3f} s | "
            f"{_mb(plain)} |", ""]
    text = "\n".join(out)
    print(text)
    return text


if __name__ == "__main__":
    main()
