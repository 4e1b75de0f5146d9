"""A small on-disk cache of query results and images, keyed by the normalised query, with a TTL.

Entries are hard links to result files, so a hit costs one ``link`` and no copy.  No SAMP here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ResultCache", "CacheHit", "cone_key", "image_key", "tap_key"]

log = logging.getLogger(__name__)


def _quantize(x: float, step_deg: float) -> float:
    return round(round(x / step_deg) * step_deg, 9) if step_deg > 0 else x


def cone_key(service: str, ra: float, dec: float, radius: float, verb: int,
             precision_arcsec: float) -> str:
    """Key of a cone: position rounded to ``precision_arcsec``, radius, VERB and service."""
    step = precision_arcsec / 3600.0
    return json.dumps(["cone", service, _quantize(ra % 360.0, step), _quantize(dec, step),
                       round(radius, 9), int(verb)])


def image_key(url: str) -> str:
    """Key of an image file: its access URL (a CSC image at one URL does not change)."""
    return json.dumps(["image", url])


def tap_key(service: str, adql: str, maxrec: int | None, mode: str) -> str:
    """Key of a TAP query: whitespace-normalised ADQL, MAXREC and service."""
    return json.dumps(["tap", service, " ".join(adql.split()), maxrec, mode])


@dataclass
class CacheHit:
    """A cached result: its file and what was recorded about it."""

    path: Path
    meta: dict[str, Any]


class ResultCache:
    """Cache of result files under ``folder`` (private), valid for ``ttl`` seconds."""

    def __init__(self, folder: Path, ttl: float) -> None:
        self.folder = folder
        self.ttl = ttl
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)

    def _paths(self, key: str) -> tuple[Path, Path]:
        h = hashlib.sha256(key.encode()).hexdigest()[:32]
        return self.folder / f"{h}.vot", self.folder / f"{h}.json"

    def get(self, key: str) -> CacheHit | None:
        """Return the entry for ``key`` if it exists and is younger than the TTL."""
        data, meta = self._paths(key)
        try:
            info = json.loads(meta.read_text())
            if info.get("key") != key or time.time() - info["created"] > self.ttl:
                return None
            if not data.exists():
                return None
        except (OSError, ValueError, KeyError):
            return None
        return CacheHit(data, info)

    def put(self, key: str, result: Path, **meta: Any) -> None:
        """Store ``result`` (by hard link, else by copy) under ``key``."""
        data, mpath = self._paths(key)
        tmp = data.with_name(data.name + f".{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            try:
                os.link(result, tmp)
            except OSError:
                import shutil

                shutil.copyfile(result, tmp)
            os.replace(tmp, data)
            mtmp = mpath.with_name(mpath.name + ".tmp" + str(threading.get_ident()))
            mtmp.write_text(json.dumps({"key": key, "created": time.time(), **meta}))
            os.replace(mtmp, mpath)
        except OSError as exc:
            log.warning("result cache: cannot store %s: %s", result.name, exc)
        finally:
            tmp.unlink(missing_ok=True)

    def materialize(self, hit: CacheHit, dest: Path) -> None:
        """Make ``dest`` a new name for the cached file (hard link, else copy)."""
        try:
            os.link(hit.path, dest)
        except FileExistsError:
            dest.unlink()
            os.link(hit.path, dest)
        except OSError:
            import shutil

            shutil.copyfile(hit.path, dest)

    def prune(self) -> int:
        """Delete expired entries; return how many."""
        n = 0
        now = time.time()
        for meta in self.folder.glob("*.json"):
            try:
                created = json.loads(meta.read_text())["created"]
            except (OSError, ValueError, KeyError):
                created = 0
            if now - created > self.ttl:
                meta.unlink(missing_ok=True)
                meta.with_suffix(".vot").unlink(missing_ok=True)
                n += 1
        return n
