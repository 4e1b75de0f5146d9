"""Record the local mimic's answers, one folder per shape (see README.md here).

    python3 tests/data/recorded/record.py [--base http://127.0.0.1:18080]

Each file is the body the service sent, byte for byte; README.md lists the URL of each. The
shapes are those of docs/testing.md: ``cxc`` (the CXC-shaped front, what the real services
document) and ``standard`` (plain DaCHS passed through the front).
"""

from __future__ import annotations

import argparse
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).parent
RHO = "RA=246.7925&DEC=-24.32027"
PATHS = {
    "cxc": {"scs": "/csc21scs/coneSearch", "siap": "/csc21siap/queryImages",
            "tap": "/csc21tap"},
    "standard": {"scs": "/csc21/q/coneSearch/scs.xml", "siap": "/csc21/q/queryImages/siap.xml",
                 "tap": "/tap"},
}


def tap_query(adql: str, maxrec: int | None = None) -> str:
    q = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": adql}
    if maxrec:
        q["MAXREC"] = str(maxrec)
    return "/sync?" + urllib.parse.urlencode(q)


REQUESTS = {
    "scs_v1.xml": ("scs", f"?{RHO}&SR=0.05&VERB=1"),
    "scs_v2.xml": ("scs", f"?{RHO}&SR=0.05&VERB=2"),
    "scs_v3.xml": ("scs", f"?{RHO}&SR=0.05&VERB=3"),
    "scs_error.xml": ("scs", f"?{RHO}&VERB=2"),
    "siap.xml": ("siap", "?POS=246.7925,-24.32027&SIZE=0.2&FORMAT=ALL"),
    "tap_overflow.xml": ("tap", tap_query("SELECT name, ra, dec FROM csc21.master_source", 3)),
    "tap_error.xml": ("tap", tap_query("SELECT nope FROM csc21.master_source")),
}


def fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.read()
    except urllib.error.HTTPError as exc:      # an error document is what we record
        return exc.read()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="http://127.0.0.1:18080")
    base = ap.parse_args().base.rstrip("/")
    lines = ["# Recorded answers of the local CSC mimic", "",
             "Written by `python3 tests/data/recorded/record.py` from the mimic of",
             "`tests/vo_server/setup.sh`; each folder is one shape (docs/testing.md):",
             "`cxc/` is the CXC-shaped front, `standard/` plain DaCHS behind it.", "",
             "| file | shape | request |", "|---|---|---|"]
    for shape, paths in PATHS.items():
        (HERE / shape).mkdir(exist_ok=True)
        for name, (service, tail) in REQUESTS.items():
            path = paths[service] + tail
            (HERE / shape / name).write_bytes(fetch(base + path))
            lines.append(f"| `{shape}/{name}` | {shape} | `{path}` |")
    (HERE / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
