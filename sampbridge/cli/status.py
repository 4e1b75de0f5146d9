"""``sampbridge status [--json]``: ask the running daemon what it is doing.

A short-lived SAMP client finds the hub, finds the client called ``sampbridge`` and calls its
``x-sampbridge.status`` (no new network port: the hub carries the question). The reply's
``samp.result`` holds ``{"json": "<text>"}``, the object described in docs/user-guide.md
(hub, peers, recent requests, counters, cache, mirror). :func:`format_status` turns it into
the human table; it is pure, so the tests feed it any object.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import SampBridgeError
from .doctor import seconds
from .parser import Subparsers

__all__ = ["MTYPE", "DaemonUnavailable", "ask_daemon", "format_status", "register"]

MTYPE = "x-sampbridge.status"
#: Subscriptions shown for each peer (the others are counted): what sampbridge deals in.
SHOWN = ("coord.pointAt.sky", "image.load.fits", "table.load.votable", "table.load.fits",
         "table.highlight.row", "table.select.rowList", "script.aladin.send",
         "samp.msg.progress")


class DaemonUnavailable(SampBridgeError):
    """No hub, no sampbridge on it, or no answer from it: one sentence, exit status 1."""


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``status``."""
    p = sub.add_parser(
        "status", parents=[common],
        help="what the running daemon is doing: hub, peers, last requests, counters",
        description="Ask the running sampbridge daemon, through the SAMP hub, for its state: "
                    "the hub, the peers and their subscriptions, the last requests (sender, "
                    "what ran, rows, milliseconds, errors), counters since start, cache and "
                    "mirror. Exit status 1 when no hub or no daemon runs.")
    p.add_argument("--json", action="store_true", help="print the daemon's JSON, for scripts")
    p.add_argument("--timeout", type=seconds, default=10.0, metavar="SECONDS",
                   help="seconds to wait for the hub and for the daemon's answer (default 10)")
    p.set_defaults(handler=status, quiet=True)


def status(args: argparse.Namespace) -> int:
    """Print the daemon's state, as a table or (``--json``) as JSON."""
    data = ask_daemon(args.timeout)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=False))
    else:
        print("\n".join(format_status(data)))
    return 0


def ask_daemon(timeout: float = 10.0) -> dict[str, Any]:
    """Find the daemon on the hub, call ``x-sampbridge.status`` and return its object.

    Parameters
    ----------
    timeout : float
        Seconds for the hub and for the daemon's reply.

    Raises
    ------
    DaemonUnavailable
        When no hub runs, no sampbridge is registered, or it does not answer.
    """
    from .. import __version__
    from ..samp import HubConnection
    from ..samp.connection import find_running_hub, lockfile_path

    if find_running_hub(min(timeout, 3.0)) is None:
        raise DaemonUnavailable(f"no SAMP hub runs (none answers at {lockfile_path()}), so no "
                                "sampbridge daemon does either; start it with: sampbridge run")
    conn = HubConnection("sampbridge-status", "sampbridge status: asks the daemon",
                         __version__, {}, mode="connect", ping_interval=2.0,
                         call_timeout=timeout)
    try:
        conn.start(wait=timeout)
        if not conn.connected or conn.client is None:
            raise DaemonUnavailable(f"the SAMP hub at {lockfile_path()} would not register "
                                    "a client; restart the hub")
        mine = [c for c in conn.clients() if c.name == "sampbridge"]
        if not mine:
            raise DaemonUnavailable(f"no sampbridge daemon is registered with the hub "
                                    f"({conn.hub_url}); start it with: sampbridge run")
        able = [c for c in mine if MTYPE in c.subscriptions]
        if not able:
            raise DaemonUnavailable(f"the sampbridge daemon ({mine[0].id}) does not answer "
                                    f"{MTYPE}: it is older than this command; restart it")
        return _call(conn.client, able[0].id, timeout)
    finally:
        conn.stop()


def _call(client: Any, daemon: str, timeout: float) -> dict[str, Any]:
    try:
        resp = client.call_and_wait(daemon, {"samp.mtype": MTYPE, "samp.params": {}},
                                    str(max(1, int(round(timeout)))))
    except Exception as exc:  # pyvo: a timeout, or the daemon left meanwhile
        why = "did not answer within" if "imeout" in str(exc) else "failed to answer in"
        raise DaemonUnavailable(f"the sampbridge daemon ({daemon}) {why} {timeout:g} s; "
                                "is it stuck? its log says more") from None
    if not isinstance(resp, dict) or resp.get("samp.status") == "samp.error":
        err = (resp or {}).get("samp.error", {}).get("samp.errortxt", "an error")
        raise DaemonUnavailable(f"the sampbridge daemon answered {MTYPE} with: {err}")
    text = (resp.get("samp.result") or {}).get("json")
    try:
        data = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise DaemonUnavailable(f"the sampbridge daemon's answer to {MTYPE} holds no JSON "
                                "object; restart it")
    return data


# -- the table -----------------------------------------------------------------------------
def _duration(s: float) -> str:
    s = max(0, int(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} GB"


def _table(head: list[str], rows: list[list[str]], right: tuple[int, ...] = (),
           indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    out = []
    for r in [head, *rows]:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        out.append((indent + "  ".join(cells)).rstrip())
    return out


def _subs(subs: list[str]) -> str:
    shown = [m for m in SHOWN if m in subs]
    shown += [m for m in subs if m.startswith("x-sampbridge.") and m not in shown]
    rest = len(subs) - len(shown)
    text = ", ".join(shown) or "-"
    return text + (f" (+{rest} more)" if rest > 0 else "")


def _mirror_line(m: dict[str, Any] | None) -> str:
    if not m:
        return "mirror: none"
    state = m.get("state") or ("ready" if m.get("usable") else "unknown")
    bits = [f"release {m['release']}" if m.get("release") else "", str(state)]
    if isinstance(m.get("rows"), int):
        bits.append(f"{m['rows']:,} rows")
    if m.get("built_at"):
        bits.append(f"built {m['built_at']}")
    if m.get("reason"):
        bits.append(str(m["reason"]))
    return "mirror: " + ", ".join(b for b in bits if b)


def format_status(data: dict[str, Any]) -> list[str]:
    """Return the human table of a status object (the JSON of ``x-sampbridge.status``).

    Missing parts are shown as such, never an error: an older or newer daemon may send more
    or less.

    Parameters
    ----------
    data : dict
        The decoded JSON object.
    """
    out = []
    up = data.get("uptime_s")
    since = f" (since {data['started']})" if data.get("started") else ""
    head = f"sampbridge {data.get('version', '?')}, pid {data.get('pid', '?')}"
    if isinstance(up, (int, float)):
        head += f", up {_duration(up)}{since}"
    out.append(head)
    hub = data.get("hub") or {}
    if hub:
        whose = "its own" if hub.get("own_hub") else "another program's"
        state = "" if hub.get("connected", True) else ", NOT connected"
        out.append(f"hub: {hub.get('url') or '?'} ({whose}, lockfile "
                   f"{hub.get('lockfile') or '?'}){state}")
    folder = data.get("query_folder")
    out.append(f"results: {data.get('results_dir') or '?'}; query folder: {folder or 'off'}")
    peers = data.get("peers") or []
    out.append(f"peers ({len(peers)}):")
    rows = [[f"{p.get('name', '?')} ({p.get('id', '?')})", _subs(list(p.get('subscriptions')
                                                                      or []))]
            for p in peers]
    out += _table(["CLIENT", "SUBSCRIBES TO"], rows) if rows else ["  none"]
    recent = data.get("recent") or []
    out.append(f"last requests ({len(recent)}, newest last):")
    rows = []
    for r in recent:
        t = str(r.get("time") or "")
        rows.append([t[11:19] if len(t) >= 19 else t, str(r.get("sender") or ""),
                     str(r.get("mtype") or ""), str(r.get("what") or ""),
                     "" if r.get("rows") is None else f"{r['rows']:,}",
                     "" if r.get("ms") is None else f"{r['ms']:,.0f}",
                     f"error: {r['error']}" if r.get("error") else "ok"])
    out += _table(["TIME", "SENDER", "MTYPE", "WHAT", "ROWS", "MS", "OUTCOME"], rows,
                  right=(4, 5)) if rows else ["  none yet"]
    counters = data.get("counters") or {}
    out.append("counters: " + (", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                                         for k, v in counters.items()) or "none"))
    cache = data.get("cache")
    if cache:
        out.append(f"cache: {cache.get('dir', '?')}, {cache.get('entries', 0):,} entries, "
                   f"{_size(float(cache.get('bytes') or 0))}")
    else:
        out.append("cache: off")
    out.append(_mirror_line(data.get("mirror")))
    return out
