"""Running a claimed query file: each request through ``Engine.run``, results staged, then landed.

Results are written to the file's private staging folder (outside the watched folder) under the
names its :class:`~.plan.Plan` claimed, and moved into ``done/`` at the end by :func:`land`.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine import Engine, ImageResult, MatchResult, TableResult
from ..errors import Cancelled, SampBridgeError
from ..model import RequestError, TapRequest
from ..queryfiles import FileRequest, QueryFileError
from .plan import Plan, makes_images

__all__ = ["FileOutcome", "Run", "Runner", "land", "retarget"]


@dataclass
class FileOutcome:
    """What one query file produced: results to deliver, with its ``send_to`` override."""

    query: Path
    results: list[TableResult | ImageResult] = field(default_factory=list)
    send_to: list[list[str] | None] = field(default_factory=list)


@dataclass
class Run:
    """A file's run: the outcome to deliver, and the line for ``status.log``."""

    outcome: FileOutcome
    summary: str


class Runner:
    """Runs the requests of a claimed file.

    Parameters
    ----------
    engine : Engine
        Runs each request (:meth:`Engine.run`).
    cancel : threading.Event
        Set at shutdown; a TAP query stops at it (and the file runs at the next start).
    """

    def __init__(self, engine: Engine, cancel: threading.Event) -> None:
        self.engine = engine
        self.cancel = cancel

    def _one(self, fr: FileRequest, plan: Plan, i: int) -> TableResult | ImageResult:
        """Run request ``i`` (1-based) into the staging folder, under its claimed name."""
        assert plan.work is not None
        options: dict[str, Any] = {}
        if makes_images(fr):
            dest = plan.work
            options["prefix"] = plan.image_prefix(i)
        else:
            dest = plan.work / plan.table_name(i)
        if isinstance(fr.request, TapRequest):
            options["cancel"] = self.cancel
        res = self.engine.run(fr.request, dest=dest, **options)
        if isinstance(res, ImageResult) and not res.images:
            raise RequestError(f"no image found at that position ({res.found} found)")
        return res

    def run(self, path: Path, plan: Plan) -> Run:
        """Run the file's requests; each result is staged, and listed in ``plan.staged``.

        Raises
        ------
        QueryFileError
            When a request fails: which one, why, and that the results before it are kept.
        Cancelled
            When the folder is stopped during a query.
        """
        requests = plan.requests
        outcome = FileOutcome(path)
        parts: list[str] = []
        for i, fr in enumerate(requests, 1):
            try:
                res = self._one(fr, plan, i)
            except Cancelled:
                raise
            except SampBridgeError as exc:
                where = f"request {i} ({fr.kind})" if len(requests) > 1 else fr.kind
                kept = f"; results of requests 1-{i - 1} are in done/" if i > 1 else ""
                raise QueryFileError(f"{path.name}: {where}: {exc}{kept}") from None
            if isinstance(res, TableResult):
                if fr.name and not isinstance(res, MatchResult):
                    res.name = fr.name
                plan.staged.append(res.path)
                parts.append(f"{fr.kind} {res.rows} rows -> done/{res.path.name}"
                             + (" (truncated at MAXREC)" if res.overflow else ""))
            else:
                plan.staged += [img.path for img in res.images if img.path]
                parts.append(f"{fr.kind} {len(res.images)} images -> done/"
                             + ", done/".join(img.path.name for img in res.images if img.path))
            outcome.results.append(res)
            outcome.send_to.append(fr.send_to)
        return Run(outcome, "; ".join(parts))


def land(staged: list[Path], done_dir: Path) -> dict[Path, Path]:
    """Move staged results into ``done_dir`` (0600); return where each went.

    Call with the names lock held (:attr:`.plan.Claims.lock`).
    """
    moved: dict[Path, Path] = {}
    for src in staged:
        dest = done_dir / src.name
        os.chmod(src, 0o600)
        try:
            os.replace(src, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:    # staging is on another file system
                raise
            part = done_dir / f".{src.name}.part"
            shutil.copyfile(src, part)
            os.chmod(part, 0o600)
            os.replace(part, dest)
        moved[src] = dest
    return moved


def retarget(outcome: FileOutcome, moved: dict[Path, Path]) -> None:
    """Point the results at their places in ``done/``."""
    for res in outcome.results:
        if isinstance(res, TableResult):
            res.path = moved.get(res.path, res.path)
        else:
            for img in res.images:
                if img.path is not None:
                    img.path = moved.get(img.path, img.path)
