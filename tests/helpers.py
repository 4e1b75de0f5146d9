"""Helpers shared by several test modules (test modules never import each other)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from astropy.io.votable import parse_single_table
from pyvo.dal import SCSService

GUIDE = Path(__file__).parent / "data" / "cxc_guide"

SECRET = "SECRET-MARKER-6b1d93"
GB3 = 3 * 10**9

#: The "billion laughs": 9 levels of 9 aliases each, about 500 bytes (9**9 strings if expanded).
BOMB_LEVELS = "\n".join(
    [f'a: &a [{", ".join(["lol"] * 9)}]']
    + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi",
                                                                     strict=True)])
QUERY_BOMB = BOMB_LEVELS + "\ncone: {ra: *i, dec: 1}\n"


def peak_rss_growth(fn: Callable[[], Any]) -> tuple[int, Any, float]:
    """Run ``fn``; return how far the peak RSS rose over the RSS before (bytes), and its time."""
    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(field)

    Path("/proc/self/clear_refs").write_text("5")     # reset VmHWM to the current RSS
    before = status("VmRSS")
    t0 = time.perf_counter()
    try:
        result: Any = fn()
    except Exception as exc:  # noqa: BLE001 - the caller looks at what was raised
        result = exc
    secs = time.perf_counter() - t0
    return status("VmHWM") - before, result, secs


def names(path: Path) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = parse_single_table(str(path)).to_table()
    return sorted(str(n) for n in t["name"])


def direct_cone(base: str, ra: float, dec: float, sr: float, verb: int = 2) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = SCSService(f"{base}/csc21scs/coneSearch").search((ra, dec), sr, verbosity=verb)
    return sorted(str(n) for n in t.to_table()["name"])


def path_of(url: str) -> Path:
    return Path(url2pathname(urlsplit(url).path))
