"""Command line: ``sampbridge run | check-config | query ...``; the only place logging is set."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

from . import __version__
from .config import Config, ConfigError, load_config
from .errors import SampBridgeError
from .model import RequestError

if TYPE_CHECKING:                   # imported where used: a query loads astropy, --help does not
    from .engine import Engine, TableResult
    from .model import TapRequest

__all__ = ["main"]

log = logging.getLogger("sampbridge")


class _SecretFilter(logging.Filter):
    """Keep SAMP secrets and private keys out of the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        import re

        msg = record.getMessage()
        clean = re.sub(r"(samp\.secret|private[_-]?key|secret)([=:\s'\"]+)[0-9a-zA-Z:_-]{6,}",
                       r"\1\2***", msg)
        if clean != msg:
            record.msg, record.args = clean, ()
        return True


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(_SecretFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("sampbridge").setLevel(level)
    # pyvo.samp's hub logs through astropy's logger, which has a handler of its own: without
    # this every hub line came out twice, once past the secret filter.
    from astropy import log as astropy_log  # its own Logger class: import it, never create it

    astropy_log.handlers[:] = []
    logging.captureWarnings(True)


#: A word that starts like a negative number is a value, never an option: ``-24:19:13``,
#: ``-24d19m13s`` and ``-.5`` are declinations (argparse alone takes only ``-24.32``).
_NEGATIVE_VALUE = re.compile(r"-\.?\d")


class _Parser(argparse.ArgumentParser):
    """An argument parser that reads ``-24:19:13`` or ``-24d19m13s`` as a value."""

    def _parse_optional(self, arg_string: str):  # argparse's own return type
        if _NEGATIVE_VALUE.match(arg_string):
            return None
        return super()._parse_optional(arg_string)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sampbridge", description=(
        "Chandra Source Catalog results in TOPCAT, DS9 and Aladin over SAMP."))
    p.add_argument("--version", action="version", version=f"sampbridge {__version__}")
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="PATH", help="configuration file (YAML)")
    common.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", parents=[common], help="run the daemon (starts a hub if none runs)")
    cc = sub.add_parser("check-config", parents=[common], help="validate a configuration file")
    cc.add_argument("path", nargs="?", help="the file (default: --config, else the defaults)")

    q = sub.add_parser("query", help="run one query without SAMP and write its result")
    qs = q.add_subparsers(dest="kind", required=True, metavar="KIND")
    cone = qs.add_parser("cone", parents=[common], help="cone search")
    cone.add_argument("ra", help="RA, degrees (or hh:mm:ss, 16h27m10.2s)")
    cone.add_argument("dec", help="Dec, degrees (or dd:mm:ss, -24d19m13s; a minus sign is fine)")
    cone.add_argument("--radius", help="radius in degrees (default: cone.radius)")
    cone.add_argument("--verb", help="VERB 1, 2 or 3 (default: cone.verb)")
    cone.add_argument("--out", required=True, help="output VOTable file")
    siap = qs.add_parser("siap", parents=[common], help="image query and download")
    siap.add_argument("ra", help="RA, degrees (or hh:mm:ss, 16h27m10.2s)")
    siap.add_argument("dec", help="Dec, degrees (or dd:mm:ss, -24d19m13s; a minus sign is fine)")
    siap.add_argument("--size", help="SIZE in degrees (default: images.size)")
    siap.add_argument("--count", type=int, help="images to download (default: images.max_count)")
    siap.add_argument("--out", required=True, help="output folder")
    tap = qs.add_parser("tap", parents=[common], help="TAP/ADQL query")
    src = tap.add_mutually_exclusive_group(required=True)
    src.add_argument("--adql", help="the ADQL text")
    src.add_argument("--file", help="a file holding the ADQL text")
    tap.add_argument("--maxrec", help="MAXREC (default: tap.maxrec)")
    tap.add_argument("--out", required=True, help="output VOTable file")

    svc = sub.add_parser("service", help="run the daemon at login (systemd user unit, launchd)")
    acts = svc.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, what in (("install", "write the unit or agent (never needs root)"),
                         ("uninstall", "remove it"),
                         ("status", "is it installed, what it runs, is it active")):
        a = acts.add_parser(action, parents=[common], help=what)
        a.add_argument("--platform", choices=("linux", "macos"), help=argparse.SUPPRESS)
    acts.choices["install"].add_argument(
        "--enable", action="store_true",
        help="also enable and start it now (systemctl --user; Linux)")
    return p


def _run(cfg_path: str | None) -> int:
    from .daemon import Daemon

    cfg = load_config(cfg_path)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    daemon = Daemon(cfg)
    try:
        daemon.start()
        while not stop.wait(1.0):
            pass
    finally:
        # Daemon.stop waits for several things in turn; whatever it waits for, the process
        # leaves within the grace (and a little for the log), never later
        late = (f"still stopping after {_RUN_GRACE + 1.5:g} s; exiting now (unfinished query "
                "files run at the next start)")
        watchdog = threading.Timer(_RUN_GRACE + 1.5, _exit_now, (late,))
        watchdog.daemon = True
        watchdog.start()
        daemon.stop(_RUN_GRACE)
        watchdog.cancel()
        for s, h in old.items():
            signal.signal(s, h)
    stuck = _blocked_threads()
    if stuck:
        # a request still blocked in the network: its result file was removed and its
        # caller answered (a folder file stays journaled), so leave now rather than wait for
        # the read timeout
        _exit_now(f"exiting with {len(stuck)} worker threads still blocked "
                  f"({', '.join(stuck[:4])})", logging.INFO)
    return 0


#: Seconds ``run`` gives the daemon to stop (docs/reliability.md: "within about 5 s").
_RUN_GRACE = 5.0


def _blocked_threads() -> list[str]:
    """Name the threads that would hold the exit: non-daemon ones, and pool workers.

    A ``ThreadPoolExecutor`` worker started from a daemon thread is a daemon thread too, yet
    ``concurrent.futures`` joins every worker at exit: one blocked in a read holds the process.
    """
    from concurrent.futures import thread as cf_thread

    joined = set(getattr(cf_thread, "_threads_queues", {}).keys())
    me = threading.current_thread()
    return [t.name for t in threading.enumerate()
            if t is not me and t.is_alive() and (not t.daemon or t in joined)]


def _exit_now(why: str, level: int = logging.WARNING) -> None:
    """Log ``why`` and leave at once (exit status 0: a stop was asked for).

    No ``logging.shutdown()``: from the watchdog it could wait on a lock that the stuck main
    thread holds; the stream handler has flushed the line already.
    """
    log.log(level, "%s", why)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


def _out_file(path: str) -> Path:
    out = Path(path).expanduser()
    if out.is_dir():
        raise RequestError(f"--out {path} is a folder; give a file name")
    if not out.parent.exists():
        raise RequestError(f"--out {path}: the folder {out.parent} does not exist")
    return out


#: Largest ADQL file read by ``query tap --file`` (a real query is a few kB).
_MAX_ADQL_BYTES = 1_000_000
#: Seconds a stopped TAP query's worker gets to delete its job before the CLI deletes it.
_STOP_GRACE = 2.0


def _read_adql(name: str) -> str:
    """Return the ADQL text of ``--file name``: UTF-8, at most ``_MAX_ADQL_BYTES``."""
    try:
        with open(Path(name).expanduser(), "rb") as fh:  # a pipe (<(...)) is fine too
            raw = fh.read(_MAX_ADQL_BYTES + 1)
    except OSError as exc:
        raise RequestError(f"cannot read {name}: {exc.strerror}") from None
    if len(raw) > _MAX_ADQL_BYTES:
        raise RequestError(f"{name} is over {_MAX_ADQL_BYTES:,} bytes; an ADQL query is text "
                           "of a few lines, give the query file itself")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RequestError(f"{name} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
                           ) from None
    if "\x00" in text:
        raise RequestError(f"{name} holds binary data, not ADQL text")
    return text


class _Stopped(BaseException):
    """Raised in the main thread by the first SIGINT, SIGTERM or SIGHUP during a query."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.detail = ""


class _StopSignals:
    """While active, SIGINT, SIGTERM and SIGHUP all stop a query the same way.

    The first signal sets ``cancel`` (which an async TAP job's poll honours by deleting the
    job) and raises :class:`_Stopped` in the main thread; later ones are ignored, so that the
    cleanup, which is bounded by short timeouts, runs to its end.
    """

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.signum: int | None = None
        self._old: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def __enter__(self) -> _StopSignals:
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            if hasattr(signal, name):
                num = getattr(signal, name)
                self._old[num] = signal.signal(num, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for num, handler in self._old.items():
            signal.signal(num, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        self.cancel.set()
        raise _Stopped(signum)


def _rows_line(res: TableResult) -> str:
    return f"{res.rows} rows -> {res.path}" + (" (truncated at MAXREC)" if res.overflow else "")


def _cone(args: argparse.Namespace, cfg: Config, engine: Engine) -> None:
    from .model import ConeRequest

    req = ConeRequest.from_params({"ra": args.ra, "dec": args.dec, "radius": args.radius,
                                   "verb": args.verb}, cfg)
    print(_rows_line(engine.run_cone(req, dest=_out_file(args.out))))


def _siap(args: argparse.Namespace, cfg: Config, engine: Engine) -> None:
    from .model import SiapRequest

    req = SiapRequest.from_params({"ra": args.ra, "dec": args.dec, "size": args.size}, cfg)
    if args.count is not None and args.count < 0:
        raise RequestError(f"--count must be 0 or more, not {args.count}")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise RequestError(f"--out {args.out} is a file; give a folder")
    if not out.exists() and not out.parent.exists():
        raise RequestError(f"--out {args.out}: the folder {out.parent} does not exist")
    img = engine.run_siap(req, dest_dir=out, count=args.count)
    for i in img.images:
        print(i.path)
    for s in img.skipped:
        print(f"skipped: {s}", file=sys.stderr)
    print(f"{img.found} images found, {len(img.images)} downloaded -> {out}", file=sys.stderr)


def _tap(args: argparse.Namespace, cfg: Config, engine: Engine, adql: str | None,
         stop: _StopSignals) -> None:
    from .model import TapRequest

    req = TapRequest.from_params({"adql": adql, "maxrec": args.maxrec}, cfg)
    dest = _out_file(args.out)
    if cfg["tap.mode"] == "sync":
        res = engine.run_tap(req, dest=dest)
    else:
        res = _tap_async(engine, req, dest, stop)
    print(_rows_line(res))


def _tap_async(engine: Engine, req: TapRequest, dest: Path,
               stop: _StopSignals) -> TableResult:
    """Run an async TAP query in a worker, so that a signal is handled at once.

    The main thread only waits: on a signal, the worker's poll sees ``stop.cancel`` and
    deletes the job; a worker blocked in the network past ``_STOP_GRACE`` is left behind and
    the job is deleted from here.
    """
    from .errors import Cancelled

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
            box["result"] = engine.run_tap(req, dest=dest, cancel=stop.cancel, on_job=on_job)
        except BaseException as exc:  # handed to the main thread
            box["error"] = exc
        finally:
            done.set()

    try:
        threading.Thread(target=work, name="tap-query", daemon=True).start()
        done.wait()
    except _Stopped as exc:
        exc.detail = _stop_tap(engine, done, box, jobs, dest)
        raise
    if "error" in box:
        raise cast(BaseException, box["error"])
    return cast("TableResult", box["result"])


def _stop_tap(engine: Engine, done: threading.Event, box: dict[str, object], jobs: list[str],
              dest: Path) -> str:
    """Make sure a stopped async query's job is gone; return what to add to "stopped"."""
    from .errors import Cancelled

    if done.wait(_STOP_GRACE):
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


def _query(args: argparse.Namespace) -> int:
    with _StopSignals() as stop:
        try:
            return _run_query(args, stop)
        except _Stopped as exc:
            print(f"sampbridge: stopped{exc.detail}", file=sys.stderr)
            return 128 + exc.signum


def _run_query(args: argparse.Namespace, stop: _StopSignals) -> int:
    from .engine import Engine

    cfg = load_config(args.config)
    adql = None
    if args.kind == "tap":
        adql = _read_adql(args.file) if args.file else args.adql
    engine = Engine(cfg)
    try:
        if args.kind == "cone":
            _cone(args, cfg, engine)
        elif args.kind == "siap":
            _siap(args, cfg, engine)
        else:
            _tap(args, cfg, engine, adql, stop)
    finally:
        engine.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 on success).

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.
    """
    args = _parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    try:
        if args.command == "run":
            return _run(args.config)
        if args.command == "service":
            from .service import run as service

            return service(args.action, args.config, args.platform,
                           getattr(args, "enable", False))
        if args.command == "check-config":
            path = args.path or args.config
            cfg = load_config(path)
            print(f"{path or '(defaults)'}: OK ({len(cfg.values)} settings)")
            return 0
        return _query(args)
    except ConfigError as exc:
        for problem in exc.problems:        # check-config lists every error of the file
            print(f"sampbridge: error: {problem}", file=sys.stderr)
        return 2
    except SampBridgeError as exc:
        print(f"sampbridge: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, RequestError) else 1
    except KeyboardInterrupt:
        print("sampbridge: stopped", file=sys.stderr)
        return 130
    except OSError as exc:
        # a path the user gave (an --out that cannot be written): say which, without errno
        if exc.filename is not None:
            name = re.sub(r"\.part$", "", str(exc.filename))  # the partial file's final name
            print(f"sampbridge: error: cannot write {name}: {exc.strerror or 'failed'}",
                  file=sys.stderr)
            return 2
        print(f"sampbridge: error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug still gets one line, the trace under -v
        log.debug("unexpected failure", exc_info=True)
        print(f"sampbridge: error: unexpected failure ({type(exc).__name__}); run it again "
              "with -v for the details and report them", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
