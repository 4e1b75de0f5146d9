"""Helpers shared by several test modules (test modules never import each other)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
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
    except Exception as exc:  # the caller looks at what was raised
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


#: the three shapes of the local CSC (docs/testing.md): CXC as documented, CXC with no distance
#: function at all (the pessimistic reading of a 2026 report), and plain DaCHS (a standard VO
#: service, as HEASARC serves CSC 2.1.1)
SHAPES = ("cxc", "pessimistic", "standard")


@dataclass(frozen=True)
class Shape:
    """The service URLs of one shape of the local CSC."""

    name: str
    cone: str
    siap: str
    tap: str

    def settings(self) -> dict[str, str]:
        """The configuration keys that point sampbridge at this shape."""
        return {"services.cone": self.cone, "services.siap": self.siap,
                "services.tap": self.tap}


def shape(base: str, name: str) -> Shape:
    """Return the URLs of shape ``name`` (one of :data:`SHAPES`) of the mimic at ``base``."""
    if name == "standard":
        return Shape(name, f"{base}/csc21/q/coneSearch/scs.xml",
                     f"{base}/csc21/q/queryImages/siap.xml", f"{base}/tap")
    prefix = f"{base}/pessimistic" if name == "pessimistic" else base
    return Shape(name, f"{prefix}/csc21scs/coneSearch", f"{prefix}/csc21siap/queryImages",
                 f"{prefix}/csc21tap")


class LyingTap:
    """A TAP service on a free loopback port that promises more than it does.

    Its ``/capabilities`` are those of ``promise`` (the standard shape: ADQL geometry and
    upload), while its ``/sync`` is ``actual`` (the CXC shape, which refuses both): a client
    that trusts the capabilities learns otherwise from the answers.  Each request is relayed
    as it is (status, Content-Type and Location included: a 303 points at ``actual``'s result).
    Use as a context manager; ``url`` is the TAP base URL; ``syncs`` counts the /sync requests
    and ``uploads`` those that carried an UPLOAD.
    """

    def __init__(self, promise: str, actual: str) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        import requests

        owner = self
        self.syncs = 0
        self.uploads = 0
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def relay(self, resp: requests.Response) -> None:
                self.send_response(resp.status_code)
                for k in ("Content-Type", "Location"):
                    if k in resp.headers:
                        self.send_header(k, resp.headers[k])
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            def do_GET(self) -> None:
                if self.path.split("?")[0].endswith("/capabilities"):
                    self.relay(requests.get(f"{promise}/capabilities", timeout=(5, 60)))
                else:
                    self.relay(requests.get(actual + self.path, timeout=(5, 60),
                                            allow_redirects=False))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with owner._lock:
                    owner.syncs += self.path.startswith("/sync")
                    owner.uploads += b"UPLOAD" in body
                self.relay(requests.post(actual + self.path, data=body, timeout=(5, 120),
                                         allow_redirects=False,
                                         headers={"Content-Type": self.headers["Content-Type"]}))

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> LyingTap:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
