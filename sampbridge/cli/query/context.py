"""What every ``query`` kind shares: the settings, the engine, the stop signals, ``--out``."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from ...config import Config
from ...model import RequestError

if TYPE_CHECKING:                   # imported when used: a query loads astropy, --help does not
    from ...engine import Engine, TableResult

__all__ = ["QueryContext", "StopSignals", "Stopped", "out_file", "rows_line"]


class Stopped(BaseException):
    """Raised in the main thread by the first SIGINT, SIGTERM or SIGHUP during a query.

    ``detail`` is added to the line ``sampbridge: stopped``, e.g. what became of a TAP job.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.detail = ""


class StopSignals:
    """While active, SIGINT, SIGTERM and SIGHUP all stop a query the same way.

    The first signal sets ``cancel`` (which an async TAP job's poll honours by deleting the
    job) and raises :class:`Stopped` in the main thread; later ones are ignored, so that the
    cleanup, which is bounded by short timeouts, runs to its end.
    """

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.signum: int | None = None
        self._old: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def __enter__(self) -> StopSignals:
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
        raise Stopped(signum)


class QueryContext:
    """Handed to a query kind's ``run(args, ctx)``: settings, stop signals, a lazy engine.

    Parameters
    ----------
    cfg : Config
        The loaded configuration.
    stop : StopSignals
        The active stop signals (``stop.cancel`` is set by the first one).
    """

    def __init__(self, cfg: Config, stop: StopSignals) -> None:
        self.cfg = cfg
        self.stop = stop
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        """The engine, made at first use: a request is checked before any folder is made."""
        if self._engine is None:
            from ...engine import Engine

            self._engine = Engine(self.cfg)
        return self._engine

    def close(self) -> None:
        """Close the engine's connections, if it was made."""
        if self._engine is not None:
            self._engine.close()


def out_file(path: str) -> Path:
    """Return ``--out`` as a file path whose folder exists."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise RequestError(f"--out {path} is a folder; give a file name")
    if not out.parent.exists():
        raise RequestError(f"--out {path}: the folder {out.parent} does not exist")
    return out


def rows_line(res: TableResult) -> str:
    """Return the line a table query prints: rows, the file, and whether MAXREC cut it."""
    return f"{res.rows} rows -> {res.path}" + (" (truncated at MAXREC)" if res.overflow else "")
