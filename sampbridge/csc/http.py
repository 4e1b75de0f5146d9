"""HTTP plumbing: a session with timeouts, a User-Agent and retries; streamed downloads.

Retries are urllib3's (see :mod:`.retry` for what is retried and when); every failure,
retries used up or not, becomes a :class:`CSCError` of one sentence (:func:`failure`).
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import astropy
import pyvo
import requests
import urllib3

from .. import __version__
from .errors import (
    CSCError,
    QueryError,
    ResultTooLarge,
    ServiceError,
    ServiceTimeout,
    ServiceUnreachable,
)
from .gunzip import Gunzip, maybe_gunzip
from .retry import RetryAdapter, per_call, policy

__all__ = ["USER_AGENT", "Gunzip", "TimeoutSession", "make_session", "download", "failure",
           "raise_for_http", "read_capped", "request", "unreachable_reason"]

USER_AGENT = f"sampbridge/{__version__} (pyvo/{pyvo.__version__} astropy/{astropy.__version__})"
_CHUNK = 1 << 20
_LOOPBACK = ("localhost", "::1")


class TimeoutSession(requests.Session):
    """A :class:`requests.Session` whose every request has a connect and a read timeout.

    Parameters
    ----------
    connect_timeout, read_timeout : float
        Seconds; used whenever a caller (pyvo included) passes no timeout of its own.
    compress : {"auto", "yes", "no"}
        Whether to ask for gzip-compressed responses.  ``auto`` asks remote services only: a
        VOTable shrinks several times, which pays over a network, while on loopback the
        compression costs both ends CPU and saves nothing.
    retries : int
        Retries of a request after a transient failure (``http.retries``), by urllib3 on the
        session's adapter (:class:`.retry.RetryAdapter`); what is retried is said in
        :mod:`.retry`.  pyvo's requests on this session get it too, without read retries.
    """

    def __init__(self, connect_timeout: float = 10.0, read_timeout: float = 120.0,
                 compress: str = "auto", retries: int = 2) -> None:
        super().__init__()
        self.timeout = (connect_timeout, read_timeout)
        self.compress = compress
        self.retries = retries
        self.headers["User-Agent"] = USER_AGENT
        adapter = RetryAdapter(pool_connections=8, pool_maxsize=32,
                               max_retries=policy(retries, reads=False))
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def request(self, method: str | bytes, url: str | bytes, *args: Any,
                **kwargs: Any) -> requests.Response:
        """Send a request, adding the session's timeout when none is given."""
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        if not self._wants_gzip(url if isinstance(url, str) else url.decode("utf-8", "replace")):
            kwargs["headers"] = {"Accept-Encoding": "identity", **(kwargs.get("headers") or {})}
        return super().request(method, url, *args, **kwargs)

    def _wants_gzip(self, url: str) -> bool:
        if self.compress != "auto":
            return self.compress == "yes"
        from urllib.parse import urlsplit
        host = (urlsplit(url).hostname or "").lower()
        return not (host.startswith("127.") or host in _LOOPBACK)


def make_session(connect_timeout: float = 10.0, read_timeout: float = 120.0,
                 compress: str = "auto", retries: int = 2) -> TimeoutSession:
    """Return a new :class:`TimeoutSession` (``retries``: ``http.retries``)."""
    return TimeoutSession(connect_timeout, read_timeout, compress, retries)


def raise_for_http(resp: requests.Response, what: str) -> None:
    """Raise for an HTTP error status, quoting the service's own words.

    A body that is a VOTable error document (``QUERY_STATUS=ERROR`` or an ``ERROR`` INFO, as
    TAP and cone services send with HTTP 400) gives its error text, and a 4xx of that kind is
    a :class:`QueryError` (the service refused the query); an HTML page gives its title; a
    plain-text body its first line.  At most the first 64 kB of the body are read.

    Raises
    ------
    QueryError
        For HTTP 4xx whose body is a VOTable stating an error.
    ServiceError
        For any other HTTP status of 400 or more.
    """
    if resp.status_code < 400:
        return
    try:
        head = next(resp.iter_content(1 << 16), b"") or b""
    except Exception:  # a body that cannot be read says nothing useful
        head = b""
    from .votable import error_text

    stated = error_text(head) if isinstance(head, bytes) else None
    status = f"HTTP {resp.status_code} {resp.reason or ''}".rstrip()
    if stated is not None and 400 <= resp.status_code < 500:
        raise QueryError(f"{what} was rejected by the service ({status})", url=resp.url,
                         status=resp.status_code, service_message=_short(stated))
    raise ServiceError(f"{what} failed with {status}", url=resp.url, status=resp.status_code,
                       service_message=_short(stated) if stated else _body_line(head))


def _body_line(head: bytes) -> str | None:
    """Return the gist of an error body: an HTML title, or a plain text's first line."""
    text = head.decode("utf-8", "replace").strip()
    if not text:
        return None
    if text.startswith("<"):
        import html
        import re

        m = re.search(r"<title[^>]*>(.*?)</title>", text, re.S | re.I)
        title = " ".join(html.unescape(m.group(1)).split()) if m else ""
        return title[:300] or None              # markup itself says nothing to a person
    return text.splitlines()[0][:300]


def request(session: requests.Session, method: str, url: str, what: str, *,
            retries: int | None = None, idempotent: bool = False, stream: bool = False,
            give_up_at: float | None = None, **kwargs: Any) -> requests.Response:
    """Send one request, retried by urllib3, and turn every failure into a :class:`CSCError`.

    Parameters
    ----------
    session : requests.Session
        Its adapter retries (a :func:`make_session` session; a plain session tries once).
    method, url : str
        The request.
    what : str
        What the request is, for messages ("cone search").
    retries : int, optional
        Retries of this call; by default the session's (``http.retries``).
    idempotent : bool
        A POST that may be sent twice (a TAP ``/sync`` query): retried like a GET.
    stream : bool
        Leave the body to be read by the caller.
    give_up_at : float, optional
        A :func:`time.monotonic` time after which no retry starts (see :mod:`.retry`).
    **kwargs
        For :meth:`requests.Session.request`.

    Returns
    -------
    requests.Response
        The last answer, whatever its status (see :func:`raise_for_http`).

    Raises
    ------
    CSCError
        For a failure of the transport (:func:`failure`), after the retries.
    """
    count = getattr(session, "retries", 0) if retries is None else retries
    try:
        with per_call(policy(count, idempotent=idempotent, give_up_at=give_up_at)):
            return session.request(method, url, stream=stream, **kwargs)
    except requests.exceptions.RequestException as exc:
        raise failure(exc, what, url) from None


def failure(exc: requests.exceptions.RequestException, what: str, url: str) -> CSCError:
    """Return the one-sentence error of a failed request (no library repr in it).

    ``MaxRetryError`` (urllib3's "retries used up"), in whichever requests exception it
    arrives, says what the last try met: a connect or read timeout, a refused or unreachable
    host (:func:`unreachable_reason`), or a service that stayed busy.
    """
    last = _last_reason(exc)
    if isinstance(exc, requests.exceptions.ConnectTimeout) or (
            isinstance(last, urllib3.exceptions.ConnectTimeoutError)
            and not isinstance(last, urllib3.exceptions.NewConnectionError)):
        return ServiceTimeout(f"{what}: the service did not accept a connection in time",
                              url=url, service_message="ConnectTimeout")
    if isinstance(exc, requests.exceptions.ReadTimeout) or isinstance(
            last, urllib3.exceptions.ReadTimeoutError):
        return ServiceTimeout(f"{what}: the service did not answer within the read timeout",
                              url=url)
    if isinstance(exc, requests.exceptions.RetryError) or isinstance(
            last, urllib3.exceptions.ResponseError):
        return ServiceError(f"{what}: the service stayed busy through every retry", url=url)
    if isinstance(exc, requests.exceptions.ConnectionError):
        return ServiceUnreachable(f"{what}: cannot reach the service at {_host(url)}: "
                                  f"{unreachable_reason(exc)}", url=url)
    return ServiceError(f"{what}: the request failed", url=url, service_message=_short(exc))


def _last_reason(exc: BaseException) -> BaseException | None:
    """Return the ``reason`` of a ``MaxRetryError`` inside ``exc``, if any."""
    for inner in (exc, *getattr(exc, "args", ())):
        if isinstance(inner, urllib3.exceptions.MaxRetryError):
            return inner.reason
    return None


def unreachable_reason(exc: BaseException) -> str:
    """Say in a few words why a connection failed, from the chain of ``exc`` (no library repr).

    ``HTTPSConnectionPool(host=..., port=443): Max retries exceeded ... NameResolutionError``
    becomes "the name does not resolve (offline?)".
    """
    import socket
    import ssl

    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 12:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [getattr(e, "reason", None), e.__cause__, e.__context__,
                 *(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))]
    names = " ".join(type(e).__name__ for e in seen) + " " + " ".join(str(e) for e in seen)
    if any(isinstance(e, socket.gaierror) for e in seen) or "NameResolutionError" in names \
            or "Name or service not known" in names or "nodename nor servname" in names:
        return "the name does not resolve (offline?)"
    if any(isinstance(e, ConnectionRefusedError) for e in seen) or "Connection refused" in names:
        return "the connection was refused (is the service running?)"
    if any(isinstance(e, ssl.SSLError) for e in seen) or "SSLError" in names:
        bad = next((e for e in seen if isinstance(e, ssl.SSLError)), None)
        why = getattr(bad, "reason", None) or "certificate or protocol problem"
        return f"the TLS handshake failed ({why})"
    if "Network is unreachable" in names or "No route to host" in names:
        return "the network is unreachable (offline?)"
    if "RemoteDisconnected" in names or "Connection reset" in names \
            or "Connection aborted" in names:
        return "the service closed the connection"
    return "the connection failed"


def _host(url: str) -> str:
    from urllib.parse import urlsplit
    return urlsplit(url).netloc or url


def _short(exc: BaseException | str) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:297] + "..."


def read_capped(resp: requests.Response, what: str, max_bytes: int) -> bytes:
    """Read a streamed response body into memory, refusing it past ``max_bytes``.

    Raises
    ------
    ResultTooLarge
        As soon as the body goes over ``max_bytes``.
    """
    body = bytearray()
    for chunk in resp.iter_content(_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise ResultTooLarge(f"{what}: the result is over the cap of {max_bytes:,} bytes",
                                 url=resp.url)
    return bytes(body)


def download(session: requests.Session, url: str, dest: Path, *, what: str,
             max_bytes: int, method: str = "GET", params: Mapping[str, Any] | None = None,
             data: Any = None, retries: int | None = None, idempotent: bool = False,
             on_chunk: Callable[[bytes], None] | None = None,
             deadline: float | None = None, gunzip: bool = False,
             chunk_size: int = _CHUNK, counts: dict[str, int] | None = None) -> int:
    """Stream a response body to ``dest`` atomically; return the number of bytes written.

    The body goes to ``dest`` + ``.part`` and is renamed into place only when complete, so a
    reader never sees half a file.  A body over ``max_bytes`` is abandoned and removed.
    ``on_chunk``, if given, sees every chunk as it is written (to check the body in the same
    pass, see :class:`.votable.StreamScan`); it may raise to abandon the download.

    With ``gunzip``, a body that starts with the gzip magic bytes (``1f 8b``) is decompressed
    while it streams, whatever its Content-Type or URL say, and the decompressed bytes are
    written; ``max_bytes`` then caps both the bytes received and the bytes written, so a
    small body that inflates past the cap (a "gzip bomb") is abandoned as soon as it does.
    ``chunk_size`` is the most bytes read from the network at a time.  ``counts``, if given,
    receives ``received`` (body bytes read) and ``written``.  ``retries`` and ``idempotent``
    are as for :func:`request` (the request is retried; a body cut off midway is not).

    ``deadline``, if given, is the most seconds the whole download may take, retries and body
    included, however steadily a slow server trickles its bytes.  It is checked between
    chunks, and the read timeout is cut to it, so a download ends at most one read timeout
    (itself at most ``deadline``) late.

    Raises
    ------
    ResultTooLarge
        If the body is larger than ``max_bytes``.
    ServiceTimeout
        If the download did not finish within ``deadline`` seconds.
    CSCError
        For any HTTP or transport failure.
    """
    part = dest.with_name(dest.name + ".part")
    give_up_at = None if deadline is None else time.monotonic() + deadline
    timeout = None if deadline is None else _capped_timeout(session, deadline)
    resp = request(session, method, url, what, retries=retries, idempotent=idempotent,
                   stream=True, params=params, data=data, give_up_at=give_up_at,
                   timeout=timeout)
    with resp:
        raise_for_http(resp, what)
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise ResultTooLarge(f"{what}: the result is {int(length):,} bytes, over the cap "
                                 f"of {max_bytes:,} bytes", url=resp.url, status=resp.status_code)
        counts = {} if counts is None else counts
        counts.update(received=0, written=0)

        def over(where: str) -> ResultTooLarge:
            return ResultTooLarge(f"{what}: the result is over the cap of {max_bytes:,} bytes"
                                  f"{where}", url=resp.url, status=resp.status_code)

        def received() -> Iterator[bytes]:
            for chunk in _chunks(resp, what, give_up_at, deadline, chunk_size):
                counts["received"] += len(chunk)
                if counts["received"] > max_bytes:
                    raise over("")
                yield chunk

        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                body: Iterable[bytes] = received()
                if gunzip:
                    body = maybe_gunzip(body)
                for chunk in body:
                    counts["written"] += len(chunk)
                    if counts["written"] > max_bytes:
                        raise over(" once decompressed")
                    fh.write(chunk)
                    if on_chunk is not None:
                        on_chunk(chunk)
            os.replace(part, dest)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
            part.unlink(missing_ok=True)
            raise ServiceError(f"{what}: the response was cut off", url=resp.url,
                               status=resp.status_code, service_message=_short(exc)) from None
        except (zlib.error, EOFError) as exc:
            part.unlink(missing_ok=True)
            cut = "cut off" if isinstance(exc, EOFError) else "damaged"
            raise ServiceError(f"{what}: the gzip-compressed body is {cut}", url=resp.url,
                               status=resp.status_code) from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    return counts["written"]


def _capped_timeout(session: requests.Session, deadline: float) -> tuple[float, float]:
    """Return the session's (connect, read) timeout, each cut to ``deadline`` seconds."""
    connect, read = getattr(session, "timeout", None) or (10.0, 120.0)
    return min(connect, deadline), min(read, deadline)


def _chunks(resp: requests.Response, what: str, give_up_at: float | None,
            deadline: float | None, size: int = _CHUNK) -> Iterator[bytes]:
    """Yield the body in chunks; with a deadline, each as it arrives, until the deadline.

    ``iter_content`` fills a whole chunk before it returns one, so a body trickled a byte a
    second never yields; ``read1`` returns what one read brought.
    """
    if give_up_at is None:
        yield from resp.iter_content(size)
        return
    while True:
        if time.monotonic() >= give_up_at:
            raise ServiceTimeout(f"{what}: the download did not finish within {deadline:g} s",
                                 url=resp.url, status=resp.status_code)
        chunk = resp.raw.read1(size, decode_content=True)
        if not chunk:
            return
        yield chunk
