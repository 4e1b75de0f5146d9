"""Translate pyvo's DAL exceptions into this package's one error hierarchy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import requests
from pyvo.dal.exceptions import DALFormatError, DALQueryError, DALServiceError

from .errors import CSCError, QueryError, ServiceError, ServiceTimeout, ServiceUnreachable
from .votable import error_text

__all__ = ["translated"]


def _cause(exc: BaseException) -> BaseException | None:
    seen = exc
    for _ in range(5):
        nxt = getattr(seen, "cause", None)       # pyvo's own; may be text, not an exception
        if not isinstance(nxt, BaseException):
            nxt = seen.__cause__ or seen.__context__
        if nxt is None:
            return None
        if isinstance(nxt, requests.exceptions.RequestException):
            return nxt
        seen = nxt
    return None


@contextmanager
def translated(what: str, url: str) -> Iterator[None]:
    """Run a pyvo call; re-raise its DAL and requests errors as :class:`CSCError`."""
    try:
        yield
    except CSCError:
        raise
    except DALQueryError as exc:
        raise QueryError(f"{what} was rejected by the service", url=getattr(exc, "url", url),
                         service_message=_clean(exc)) from None
    except (DALServiceError, DALFormatError, requests.exceptions.RequestException) as exc:
        cause = exc if isinstance(exc, requests.exceptions.RequestException) else _cause(exc)
        status = getattr(exc, "code", None)
        if isinstance(cause, requests.exceptions.Timeout):
            raise ServiceTimeout(f"{what}: the service did not answer in time", url=url) from None
        if isinstance(cause, requests.exceptions.ConnectionError):
            from urllib.parse import urlsplit

            from .http import unreachable_reason

            host = urlsplit(url).netloc or url
            raise ServiceUnreachable(f"{what}: cannot reach the service at {host}: "
                                     f"{unreachable_reason(cause)}", url=url) from None
        stated = _stated(cause)
        if stated is not None:
            code = cause.response.status_code  # type: ignore[union-attr]  # _stated: it has one
            kind = QueryError if 400 <= code < 500 else ServiceError
            verb = "was rejected by the service" if kind is QueryError else "failed"
            raise kind(f"{what} {verb} (HTTP {code})", url=url, status=code,
                       service_message=stated) from None
        raise ServiceError(f"{what} failed", url=url, status=status if isinstance(status, int)
                           else None, service_message=_clean(exc)) from None


def _stated(cause: BaseException | None) -> str | None:
    """Return the error text of an HTTP error's VOTable body (pyvo drops it), if any."""
    resp = getattr(cause, "response", None)
    if resp is None or resp.status_code < 400:
        return None
    try:
        body = resp.content[:1 << 17]
    except Exception:  # a body that cannot be read states nothing
        return None
    text = error_text(body)
    return None if text is None else (text if len(text) <= 400 else text[:397] + "...")


def _clean(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 400 else text[:397] + "..."
