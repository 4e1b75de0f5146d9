"""Command line: ``sampbridge run | check-config | query ...``; the only place logging is set."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import ConfigError, load_config
from .csc.errors import CSCError
from .model import RequestError

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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sampbridge", description=(
        "Chandra Source Catalog results in TOPCAT, DS9 and Aladin over SAMP."))
    p.add_argument("--version", action="version", version=f"sampbridge {__version__}")
    common = argparse.ArgumentParser(add_help=False)
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
    cone.add_argument("ra", help="RA, degrees (or hh:mm:ss)")
    cone.add_argument("dec", help="Dec, degrees (or dd:mm:ss)")
    cone.add_argument("--radius", help="radius in degrees (default: cone.radius)")
    cone.add_argument("--verb", help="VERB 1, 2 or 3 (default: cone.verb)")
    cone.add_argument("--out", required=True, help="output VOTable file")
    siap = qs.add_parser("siap", parents=[common], help="image query and download")
    siap.add_argument("ra")
    siap.add_argument("dec")
    siap.add_argument("--size", help="SIZE in degrees (default: images.size)")
    siap.add_argument("--count", type=int, help="images to download (default: images.max_count)")
    siap.add_argument("--out", required=True, help="output folder")
    tap = qs.add_parser("tap", parents=[common], help="TAP/ADQL query")
    src = tap.add_mutually_exclusive_group(required=True)
    src.add_argument("--adql", help="the ADQL text")
    src.add_argument("--file", help="a file holding the ADQL text")
    tap.add_argument("--maxrec", help="MAXREC (default: tap.maxrec)")
    tap.add_argument("--out", required=True, help="output VOTable file")
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


def _query(args: argparse.Namespace) -> int:
    from .engine import Engine
    from .model import ConeRequest, SiapRequest, TapRequest

    cfg = load_config(args.config)
    engine = Engine(cfg)
    try:
        if args.kind == "cone":
            req = ConeRequest.from_params({"ra": args.ra, "dec": args.dec, "radius": args.radius,
                                           "verb": args.verb}, cfg)
            res = engine.run_cone(req, dest=_out_file(args.out))
            print(f"{res.rows} rows -> {res.path}" + (" (truncated at MAXREC)"
                                                      if res.overflow else ""))
        elif args.kind == "siap":
            req = SiapRequest.from_params({"ra": args.ra, "dec": args.dec, "size": args.size},
                                          cfg)
            out = Path(args.out).expanduser()
            if out.exists() and not out.is_dir():
                raise RequestError(f"--out {args.out} is a file; give a folder")
            img = engine.run_siap(req, dest_dir=out, count=args.count)
            for i in img.images:
                print(i.path)
            for s in img.skipped:
                print(f"skipped: {s}", file=sys.stderr)
            print(f"{img.found} images found, {len(img.images)} downloaded -> {out}",
                  file=sys.stderr)
        else:
            if args.file:
                try:
                    adql = Path(args.file).read_text(encoding="utf-8")
                except OSError as exc:
                    raise RequestError(f"cannot read {args.file}: {exc.strerror}") from None
            else:
                adql = args.adql
            req = TapRequest.from_params({"adql": adql, "maxrec": args.maxrec}, cfg)
            res = engine.run_tap(req, dest=_out_file(args.out))
            print(f"{res.rows} rows -> {res.path}" + (" (truncated at MAXREC)"
                                                      if res.overflow else ""))
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
        if args.command == "check-config":
            path = args.path or args.config
            cfg = load_config(path)
            print(f"{path or '(defaults)'}: OK ({len(cfg.values)} settings)")
            return 0
        return _query(args)
    except (ConfigError, RequestError, CSCError) as exc:
        print(f"sampbridge: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (ConfigError, RequestError)) else 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"sampbridge: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
