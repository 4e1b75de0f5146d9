"""A watched folder of query files: each complete file runs once; nothing is ever lost.

Layout of the folder::

    queries/            drop *.adql *.sql *.yaml *.yml *.vot *.xml *.fits *.csv here
    queries/done/       answered queries, each beside its results
    queries/failed/     queries that cannot run, each with <name>.error.txt
    queries/status.log  one line per file: what ran, rows, time, output (or the error)
    queries/.sampbridge/journal.jsonl   private (0700): what is in progress

Names in ``done/``: a query keeps its own name, ``<base><suffix>`` (``q.adql``,
``pos100.vot``). Its results are ``<base>.vot``, or ``<base>.match.vot`` when the query file is
itself a table (so a ``.vot`` query never meets its result); a list adds ``-N``
(``<base>-2.vot``); images are ``<base>[-N]-<title>.fits``. ``<base>`` is the file's safe stem,
with ``-2``, ``-3``... added until *every* name the file can produce is free: none exists in
``done/`` and none is claimed by a file still running.

Results are written to a private staging folder (outside the watched folder) and moved into
``done/`` at the end; after :meth:`QueryFolder.stop` no worker writes to the folder again.

No SAMP here: results are handed to a ``deliver`` callback.

The rooms, one job each:

- :mod:`.watch`: noticing files (watchdog events and a periodic rescan);
- :mod:`.settle`: which files are ready (settled, not stuck), and which are running;
- :mod:`.plan`: the names a file may produce, claimed free under one lock;
- :mod:`.runner`: running a claimed file's requests through ``Engine.run``, and landing results;
- :mod:`.shelves`: ``done/``, ``failed/``, ``status.log`` and the journal writes;
- :mod:`.journal`: the append-only journal of files in progress;
- :mod:`.queryfolder`: :class:`QueryFolder`, which wires them.
"""

from __future__ import annotations

from .plan import FolderStopped
from .queryfolder import QueryFolder
from .runner import FileOutcome
from .text import show_name

__all__ = ["QueryFolder", "FileOutcome", "FolderStopped", "show_name"]
