"""A small on-disk cache of query results and images, keyed by the normalised query, with a TTL.

An entry is a private, read-only (0400) copy that no result file shares: a result is a copy
of the entry and an entry a copy of a result, so editing a delivered file in place cannot
reach the cache.  Each entry records its size and SHA-256; the bytes served are checked
against them, and a damaged entry is dropped so the service is asked again.  No SAMP here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ResultCache", "CacheHit", "cone_key", "image_key", "tap_key", "normalise_adql"]

log = logging.getLogger(__name__)

_HASH = "sha256"          # hardware-accelerated here; faster than blake2b at 100 MB
_CHUNK = 1 << 20
_STALE_PART = 3600.0      # seconds after which an unfinished copy is a leftover of a crash


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


# ADQL tokens whose text must be kept as it is: a string literal ('' escapes a quote), a
# delimited identifier ("" escapes a quote), a comment (to the end of its line).
_ADQL_TOKENS = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\r\n]*|\s+|[^'"\s-]+|-""")


def normalise_adql(adql: str) -> str:
    """Return ``adql`` with whitespace collapsed outside literals, identifiers and comments.

    Each run of whitespace becomes one space and the ends are stripped.  String literals,
    delimited identifiers and ``--`` comments are kept byte for byte (a comment keeps the
    line break that ends it).  When the text cannot be split safely (an unterminated quote,
    or a ``/*`` that another parser could read as a comment), the ADQL
    is returned unchanged: a missed cache hit, never a wrong one.
    """
    out: list[str] = []
    pos = 0
    for m in _ADQL_TOKENS.finditer(adql):
        tok = m.group()
        if m.start() != pos or (tok[0] not in "'\"-" and "/*" in tok):
            return adql
        pos = m.end()
        if tok.isspace():
            out.append("\n" if out and out[-1].startswith("--") else " ")
        else:
            out.append(tok)
    if pos != len(adql):
        return adql
    return "".join(out).strip()


def tap_key(service: str, adql: str, maxrec: int | None, mode: str) -> str:
    """Key of a TAP query: ADQL normalised by :func:`normalise_adql`, MAXREC and service."""
    return json.dumps(["tap", service, normalise_adql(adql), maxrec, mode])


def _copy_fd(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes from ``src`` to ``dst`` in the kernel (a reflink where supported)."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, size - done, done, done)
            if n == 0:
                break
            done += n
        return
    except (AttributeError, OSError):      # no copy_file_range, or not across these files
        os.ftruncate(dst, 0)
    done = 0
    while chunk := os.pread(src, _CHUNK, done):
        os.pwrite(dst, chunk, done)
        done += len(chunk)


def _digest(fd: int) -> str:
    h = hashlib.new(_HASH)
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        h.update(chunk)
        offset += len(chunk)
    return f"{_HASH}:{h.hexdigest()}"


def _copy_to(src: Path, part: Path, mode: int) -> tuple[int, str]:
    """Copy ``src`` into the new file ``part`` with ``mode``; return the copy's size and hash.

    The size and hash are those of the copy, which is what a reader of it gets.
    """
    with open(src, "rb") as fin:
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _copy_fd(fin.fileno(), fd, os.fstat(fin.fileno()).st_size)
            size = os.fstat(fd).st_size
            digest = _digest(fd)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    return size, digest


def _part(path: Path) -> Path:
    """Return a new name beside ``path`` that no one else uses (it is opened O_EXCL)."""
    return path.with_name(f"{path.name}.{os.getpid()}.{os.urandom(4).hex()}.part")


@dataclass
class CacheHit:
    """A cached result: its file and what was recorded about it."""

    path: Path
    meta: dict[str, Any]


class ResultCache:
    """Cache of result files under ``folder``, valid for ``ttl`` seconds.

    ``folder`` is created private (0700) if it does not exist; an existing one keeps its mode.
    """

    def __init__(self, folder: Path, ttl: float) -> None:
        self.folder = folder
        self.ttl = ttl
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
        else:
            os.chmod(folder, 0o700)

    def _paths(self, key: str) -> tuple[Path, Path]:
        h = hashlib.sha256(key.encode()).hexdigest()[:32]
        return self.folder / f"{h}.vot", self.folder / f"{h}.json"

    def _drop(self, key: str, why: str) -> None:
        """Delete a damaged entry, so that the next request asks the service again."""
        data, meta = self._paths(key)
        log.warning("result cache: dropped a damaged entry (%s); the service is asked again",
                    why)
        meta.unlink(missing_ok=True)
        data.unlink(missing_ok=True)

    def get(self, key: str) -> CacheHit | None:
        """Return the entry for ``key`` if it is younger than the TTL and looks intact.

        The entry must be a regular file of the recorded size, linked nowhere else; a
        damaged one is dropped.  Its hash is checked on the copy that :meth:`materialize`
        makes, so the bytes served are the bytes checked.
        """
        data, meta = self._paths(key)
        try:
            info = json.loads(meta.read_text())
            if info.get("key") != key or time.time() - info["created"] > self.ttl:
                return None
            st = data.stat()
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self._drop(key, "unreadable record")
            return None
        if not isinstance(info.get("size"), int) or not isinstance(info.get("hash"), str):
            self._drop(key, "no size or hash recorded")
        elif not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            self._drop(key, "not a private file")
        elif st.st_size != info["size"]:
            self._drop(key, f"{st.st_size} bytes instead of {info['size']}")
        else:
            return CacheHit(data, info)
        return None

    def put(self, key: str, result: Path, **meta: Any) -> None:
        """Store a read-only copy of ``result`` under ``key``, with its size and hash."""
        data, mpath = self._paths(key)
        part, mtmp = _part(data), _part(mpath)
        try:
            size, digest = _copy_to(result, part, 0o400)
            os.replace(part, data)
            fd = os.open(mtmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({"key": key, "created": time.time(), "size": size, "hash": digest,
                           **meta}, fh)
            os.replace(mtmp, mpath)
        except OSError as exc:
            log.warning("result cache: cannot store %s: %s", result.name, exc.strerror or exc)
        finally:
            part.unlink(missing_ok=True)
            mtmp.unlink(missing_ok=True)

    def materialize(self, hit: CacheHit, dest: Path, mode: int = 0o600) -> bool:
        """Write a private copy of the cached file at ``dest``; return False if it cannot be served.

        The copy is checked against the recorded size and hash before it takes the name
        ``dest``; a damaged entry is dropped (with a warning) and nothing is written.
        """
        key = hit.meta["key"]
        part = _part(dest)
        try:
            size, digest = _copy_to(hit.path, part, mode)
            if size != hit.meta.get("size") or digest != hit.meta.get("hash"):
                self._drop(key, f"{dest.name}: its content does not match its hash")
                return False
            os.replace(part, dest)
        except OSError as exc:
            log.info("result cache: cannot serve %s: %s", dest.name, exc.strerror or exc)
            return False
        finally:
            part.unlink(missing_ok=True)
        return True

    def prune(self) -> int:
        """Delete expired entries, and copies left unfinished an hour ago; return how many."""
        n = 0
        now = time.time()
        for part in self.folder.glob("*.part"):
            try:
                if now - part.stat().st_mtime > _STALE_PART:
                    part.unlink()
            except OSError:
                pass
        for meta in self.folder.glob("*.json"):
            try:
                created = json.loads(meta.read_text())["created"]
            except (OSError, ValueError, KeyError, TypeError):
                created = 0
            if now - created > self.ttl:
                meta.unlink(missing_ok=True)
                meta.with_suffix(".vot").unlink(missing_ok=True)
                n += 1
        return n
