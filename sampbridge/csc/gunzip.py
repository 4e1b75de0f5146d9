"""Gunzip a body while it streams, in pieces of bounded size (a "gzip bomb" is stopped early)."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["GZIP_MAGIC", "Gunzip", "maybe_gunzip"]

#: the first bytes of a gzip stream
GZIP_MAGIC = b"\x1f\x8b"
#: the most bytes one decompression step gives
_CHUNK = 1 << 20


def maybe_gunzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Return the body, decompressed if its first bytes are the gzip magic."""
    it = iter(chunks)
    head = b""
    for chunk in it:
        head += chunk
        if len(head) >= len(GZIP_MAGIC):
            break
    if not head.startswith(GZIP_MAGIC):
        return _chain(head, it)
    return Gunzip().inflate(_chain(head, it))


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


class Gunzip:
    """Decompresses a gzip stream (one member or several) in pieces of bounded size.

    Each call of ``zlib``'s ``decompress`` is limited to :data:`_CHUNK` bytes of output, so a
    small input that inflates enormously never sits in memory whole: the caller sees it
    piece by piece and can stop.  Zero bytes after the last member (padding) are ignored;
    any other stray bytes raise :class:`zlib.error`, and a stream cut short raises
    :class:`EOFError`.
    """

    def __init__(self) -> None:
        self._d: Any = None          # the current member's decompressor; None between members
        self._pending = b""          # bytes between members, not yet known to start one

    def inflate(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Yield the decompressed bytes of ``chunks``; raise if the stream ends early."""
        for chunk in chunks:
            yield from self._feed(chunk)
        if self._d is not None or self._pending:
            raise EOFError("the compressed stream ends before its last member does")

    def _feed(self, data: bytes) -> Iterator[bytes]:
        buf = data
        while True:
            if self._d is None:
                buf, self._pending = self._pending + buf, b""
                if not buf.strip(b"\0"):
                    return
                if len(buf) < len(GZIP_MAGIC) and GZIP_MAGIC.startswith(buf):
                    self._pending = buf
                    return
                if not buf.startswith(GZIP_MAGIC):
                    raise zlib.error("stray bytes after the end of the compressed data")
                self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = self._d.decompress(buf, _CHUNK)
            buf = self._d.unconsumed_tail
            if out:
                yield out
            if self._d.eof:
                # at the end of a member, the input after it is in unused_data (CPython may
                # leave a copy of it in unconsumed_tail too: that copy is not used)
                buf, self._d = self._d.unused_data, None
                if not buf:
                    return
            elif not buf and len(out) < _CHUNK:
                return
