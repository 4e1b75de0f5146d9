"""The Dask client a scale job runs on: a local cluster, or a scheduler at an address."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from .errors import ScaleError, require

__all__ = ["dask_client", "quiet_libraries", "LOCAL_WORKERS"]

log = logging.getLogger(__name__)

#: workers of the default local cluster
LOCAL_WORKERS = 2
#: loggers of the libraries the extra drives: their INFO lines (a cluster's start and stop,
#: some forty lines) are held back unless sampbridge logs at DEBUG (-v)
LIBRARY_LOGGERS = ("distributed", "dask", "hats", "hats_import", "lsdb", "bokeh")


class _NotCollections(logging.Filter):
    """Drop hats' "Looking for catalog - found collection." (a warning on the root logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Looking for catalog")


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Hold back the libraries' chatter (log lines and UserWarnings) while a scale job runs.

    Under DEBUG (``-v``) everything is kept.  The previous levels are restored afterwards.
    """
    import warnings

    root = logging.getLogger()
    if root.getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    old = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    drop = _NotCollections()
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    root.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)      # "large graph", "may be slow"
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        root.removeFilter(drop)
        for name, level in old.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, *, workers: int = LOCAL_WORKERS,
                processes: bool = False, timeout: float = 10.0) -> Iterator[Any]:
    """Yield a ``distributed.Client``: to ``scheduler`` if given, else on a local cluster.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``).  Its workers must read the
        HATS catalogue at the same path as this process.
    workers : int
        Workers of the local cluster (one thread each).
    processes : bool
        Local workers as processes (True; the calling script needs an
        ``if __name__ == "__main__":`` guard) or threads of this process (False: no start-up
        cost, no copies between processes).
    timeout : float
        Seconds to wait for the scheduler.

    Raises
    ------
    ScaleError
        When the scheduler cannot be reached.
    """
    require("dask", "distributed")
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ScaleError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); start "
                             "one (`dask scheduler`, then `dask worker ADDRESS`) or leave out "
                             "--dask-scheduler for a local cluster") from None
        log.info("scale: on the Dask scheduler at %s", scheduler)
        with client:
            yield client
        return
    # everything on loopback (the scheduler, the workers and their HTTP servers, which Dask
    # starts even without a dashboard: in-process "inproc" workers bind them to 0.0.0.0), on
    # ports the system picks, so that two clusters on one machine do not meet on 8787; no
    # dashboard (Bokeh)
    # the workers' scratch (spilled partitions) in a private folder, not the shared 0755
    # /tmp/dask-scratch-space
    scratch = tempfile.mkdtemp(prefix="sampbridge-dask-")
    try:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes,
                               protocol="tcp://", host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", local_directory=scratch,
                               scheduler_kwargs={"dashboard": False})
        log.info("scale: on a local Dask cluster of %d %s", workers,
                 "processes" if processes else "threads")
        with cluster, Client(cluster) as client:
            yield client
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
