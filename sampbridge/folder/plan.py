"""Name claims: every name a query file may produce in ``done/``, chosen free and held.

``<base>`` is the file's safe stem, with ``-2``, ``-3``... added until *every* name the file can
produce is free: none exists in ``done/`` and none is claimed by a file still running.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..csc.names import safe_name
from ..errors import Cancelled
from ..model import SiapRequest
from ..queryfiles import TABLE_SUFFIXES, FileRequest
from ..safefile import ensure_private_dir

__all__ = ["Claims", "FolderStopped", "Plan", "makes_images"]


class FolderStopped(Cancelled):
    """The folder was stopped: a worker leaves its file as it is (it runs at the next start)."""

    def __init__(self) -> None:
        super().__init__("the query folder was stopped; the file stays and runs at the next "
                         "start")


def makes_images(fr: FileRequest) -> bool:
    """Tell whether a request's results are images (named by prefix), not one table."""
    return isinstance(fr.request, SiapRequest)


@dataclass(eq=False)
class Plan:
    """Every name one query file may produce in ``done/``, and where its results are staged.

    ``names`` are exact names; each of ``prefixes`` stands for every ``<prefix>*.fits`` (the
    images of a SIAP request, whose titles are known only once the service answered).
    """

    base: str
    query_name: str
    requests: list[FileRequest]
    table_file: bool
    work: Path | None = None
    staged: list[Path] = field(default_factory=list)

    @property
    def many(self) -> bool:
        """Tell whether the file holds a list of requests (its names get ``-N``)."""
        return len(self.requests) > 1

    def tag(self, i: int) -> str:
        """Return the ``-N`` of request ``i`` (1-based) in a list, else nothing."""
        return f"-{i}" if self.many else ""

    def table_name(self, i: int) -> str:
        """Return the name of request ``i``'s result (1-based) when it is a table."""
        return f"{self.base}{self.tag(i)}{'.match' if self.table_file else ''}.vot"

    def image_prefix(self, i: int) -> str:
        """Return the start of the names of request ``i``'s images."""
        return f"{self.base}{self.tag(i)}-"

    @cached_property
    def names(self) -> frozenset[str]:
        """The exact names: the query's own, each table and its TABLEDATA copy."""
        out = {self.query_name}
        for i, fr in enumerate(self.requests, 1):
            if not makes_images(fr):
                table = self.table_name(i)
                # the TABLEDATA copy a delivery may write beside a BINARY result
                out |= {table, table[:-len(".vot")] + ".tabledata.vot"}
        return frozenset(out)

    @cached_property
    def prefixes(self) -> tuple[str, ...]:
        """The starts of the image names."""
        return tuple(self.image_prefix(i) for i, fr in enumerate(self.requests, 1)
                     if makes_images(fr))

    def takes(self, name: str) -> bool:
        """Tell whether ``name`` is one this file may produce."""
        return name in self.names or (name.endswith(".fits") and
                                      any(name.startswith(p) for p in self.prefixes))

    def meets(self, other: Plan) -> bool:
        """Tell whether this file and ``other`` could produce the same name."""
        if any(other.takes(n) for n in self.names) or any(self.takes(n) for n in other.names):
            return True
        return any(a.startswith(b) or b.startswith(a)
                   for a in self.prefixes for b in other.prefixes)

    def free_in(self, existing: Iterable[str]) -> bool:
        """Tell whether none of the names is among ``existing`` (a set of names)."""
        if not self.names.isdisjoint(existing):
            return False
        return not any(name.endswith(".fits") and name.startswith(p)
                       for name in existing for p in self.prefixes)


class Claims:
    """The names held by files still running, and the lock over every name of the folder.

    ``lock`` guards the names in ``done/`` and ``failed/``, the journal and the status log;
    once :meth:`close` ran, :meth:`guard` raises :class:`FolderStopped`, so no worker writes to
    the folder again.

    Parameters
    ----------
    done_dir : Path
        The folder of answered queries.
    work_root : Path
        The private staging folder, outside the watched folder.
    """

    def __init__(self, done_dir: Path, work_root: Path) -> None:
        self.done_dir = done_dir
        self.work_root = work_root
        self.lock = threading.RLock()
        self.closed = False
        self._plans: list[Plan] = []

    def guard(self) -> None:
        """Raise :class:`FolderStopped` once the folder is stopped; call with ``lock`` held."""
        if self.closed:
            raise FolderStopped

    def close(self) -> None:
        """Refuse every write from now on; call with ``lock`` held."""
        self.closed = True

    def taken(self, name: str) -> bool:
        """Tell whether a running file may produce ``name`` in ``done/``."""
        return any(p.takes(name) for p in self._plans)

    def claim(self, path: Path, requests: list[FileRequest]) -> Plan:
        """Choose the file's base so that every name it may produce is free, and claim them."""
        stem = safe_name(path.stem)
        table_file = path.suffix.lower() in TABLE_SUFFIXES
        with self.lock:
            self.guard()
            try:
                existing = set(os.listdir(self.done_dir))
            except OSError:
                existing = set()            # made again when the results land
            n = 1
            while True:
                base = stem if n == 1 else f"{stem}-{n}"
                plan = Plan(base, f"{base}{path.suffix}", requests, table_file)
                if plan.free_in(existing) and not any(plan.meets(p) for p in self._plans):
                    break
                n += 1
            work = plan.work = self.work_root / uuid.uuid4().hex
            self._plans.append(plan)
        try:
            ensure_private_dir(work)
        except OSError:
            self.release(plan)
            raise
        return plan

    def release(self, plan: Plan) -> None:
        """Give the names back and remove the file's staging folder."""
        with self.lock:
            if plan in self._plans:
                self._plans.remove(plan)
        if plan.work is not None:
            shutil.rmtree(plan.work, ignore_errors=True)
