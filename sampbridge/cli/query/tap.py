"""``sampbridge query tap --adql TEXT | --file F --out FILE``: a user's ADQL.

An async query runs on a worker thread, so that a stop signal is handled at once: the worker's
poll sees ``stop.cancel`` and deletes the job; one blocked in the network past
:data:`STOP_GRACE` is left behind and the job is deleted from here.
"""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ... import progress
from ...errors import Cancelled
from ...model import RequestError, TapRequest
from ..parser import Subparsers
from .context import QueryContext, Stopped, out_file, rows_line

if TYPE_CHECKING:
    from ...engine import Engine, TableResult

__all__ = ["register", "run", "read_adql", "MAX_ADQL_BYTES", "STOP_GRACE"]

log = logging.getLogger("sampbridge")

#: Largest ADQL file read by ``query tap --file`` (a real query is a few kB).
MAX_ADQL_BYTES = 1_000_000
#: Seconds a stopped TAP query's worker gets to delete its job before the CLI deletes it.
STOP_GRACE = 2.0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``query tap``."""
    tap = sub.add_parser("tap", parents=[common], help="TAP/ADQL query")
    src = tap.add_mutually_exclusive_group(required=True)
    src.add_argument("--adql", help="the ADQL text")
    src.add_argument("--file", help="a file holding the ADQL text")
    tap.add_argument("--maxrec", help="MAXREC (default: tap.maxrec)")
    tap.add_argument("--out", required=True, help="output VOTable file")
    tap.set_defaults(run_query=run)


def read_adql(name: str) -> str:
    """Return the ADQL text of ``--file name``: UTF-8, at most :data:`MAX_ADQL_BYTES`."""
    try:
        with open(Path(name).expanduser(), "rb") as fh:  # a pipe (<(...)) is fine too
            raw = fh.read(MAX_ADQL_BYTES + 1)
    except OSError as exc:
        raise RequestError(f"cannot read {name}: {exc.strerror}") from None
    if len(raw) > MAX_ADQL_BYTES:
        raise RequestError(f"{name} is over {MAX_ADQL_BYTES:,} bytes; an ADQL query is text "
                           "of a few lines, give the query file itself")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RequestError(f"{name} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
                           ) from None
    if "\x00" in text:
        raise RequestError(f"{name} holds binary data, not ADQL text")
    return text


def run(args: argparse.Namespace, ctx: QueryContext) -> int:
    """Run the ADQL (sync, or async on a worker) and print ``N rows -> FILE``."""
    adql = read_adql(args.file) if args.file else args.adql
    req = TapRequest.from_params({"adql": adql, "maxrec": args.maxrec}, ctx.cfg)
    dest = out_file(args.out)
    if ctx.cfg["tap.mode"] == "sync":
        res = ctx.engine.run(req, dest=dest)
    else:
        res = _run_async(ctx, req, dest)
    print(rows_line(res))
    return 0


def _run_async(ctx: QueryContext, req: TapRequest, dest: Path) -> TableResult:
    """Run an async TAP query in a worker; the main thread only waits for it or a signal."""
    engine, stop = ctx.engine, ctx.stop
    jobs: list[str] = []
    box: dict[str, object] = {}
    done = threading.Event()

    def on_job(url: str) -> None:
        jobs.append(url)
        log.debug("TAP job %s", url)
        if stop.cancel.is_set():
            raise Cancelled("stopped before the job ran", url=url)

    def work() -> None:
        try:
            # the job's phases: a tqdm line on a terminal, else a log line every 10 s
            with progress.phases("TAP job") as shown:
                box["result"] = engine.run(req, dest=dest, cancel=stop.cancel, on_job=on_job,
                                           on_phase=shown.on_phase)
        except BaseException as exc:  # handed to the main thread
            box["error"] = exc
        finally:
            done.set()

    try:
        threading.Thread(target=work, name="tap-query", daemon=True).start()
        done.wait()
    except Stopped as exc:
        exc.detail = _stop(engine, done, box, jobs, dest)
        raise
    if "error" in box:
        raise cast(BaseException, box["error"])
    return cast("TableResult", box["result"])


def _stop(engine: Engine, done: threading.Event, box: dict[str, object], jobs: list[str],
          dest: Path) -> str:
    """Make sure a stopped async query's job is gone; return what to add to "stopped"."""
    if done.wait(STOP_GRACE):
        err = box.get("error")
        if "result" in box:
            return f": the query had finished, its result is in {dest}"
        gone = err.job_deleted if isinstance(err, Cancelled) else None
    else:
        dest.with_name(dest.name + ".part").unlink(missing_ok=True)
        gone = engine.tap.delete_job(jobs[-1]) if jobs else None
    if gone is None:
        return ""
    if gone:
        return ": the TAP job was deleted on the server"
    return (f": the TAP job {jobs[-1]} could not be deleted on the server; it runs until the "
            "service ends it")
