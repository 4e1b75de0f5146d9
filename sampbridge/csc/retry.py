"""When a request is tried again: urllib3's :class:`~urllib3.util.Retry` on the session's adapter.

urllib3 does the retrying (counts, backoff, ``Retry-After``); this module only says, per call,
what may be retried.  The rules:

- a connection that never opened (refused, no route, connect timeout) is tried again whatever
  the method: the service saw nothing;
- an answer of 429, 502, 503 or 504 is tried again for GET and HEAD, and for a POST that is
  an idempotent query (a TAP ``/sync`` query, :func:`policy` ``idempotent=True``);
- a read failure (read timeout, connection dropped mid-answer) is tried again for a GET sent
  through :func:`.http.request` (a cone, a download), never for a POST (a query that ran out
  of read time would run out again) nor for pyvo's own requests on the session (a SIAP
  search or a job poll: one read timeout is long enough);
- never for a POST that changes state on the server (creating a TAP async job, running or
  deleting one): a second job would be left behind;
- the wait before a retry is urllib3's backoff (0 s, then ``backoff`` x 2, x 4 ..., at most
  :data:`BACKOFF_MAX`) or the service's ``Retry-After``, cut to :data:`RETRY_AFTER_MAX`;
- no retry starts, nor is waited for, past the caller's deadline (``give_up_at``).

:class:`RetryAdapter` reads the policy set by :func:`per_call` on the calling thread (a
:class:`contextvars.ContextVar`), else its own, so that one session serves calls with
different deadlines at once from many threads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.util import Retry

__all__ = ["BACKOFF", "BACKOFF_MAX", "RETRY_AFTER_MAX", "RETRY_STATUS", "DeadlineRetry",
           "RetryAdapter", "per_call", "policy"]

#: HTTP answers that say "not now": tried again (for a method that may be repeated)
RETRY_STATUS = frozenset({429, 502, 503, 504})
#: seconds of urllib3's backoff factor: the waits are 0, 2 x, 4 x ... this
BACKOFF = 0.5
#: the longest backoff wait, seconds
BACKOFF_MAX = 8.0
#: the longest wait a service's ``Retry-After`` may ask, seconds
RETRY_AFTER_MAX = 30.0
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})

_CALL: ContextVar[Retry | None] = ContextVar("sampbridge_retry", default=None)


class DeadlineRetry(Retry):
    """A :class:`~urllib3.util.Retry` that starts no retry past ``give_up_at``.

    Parameters
    ----------
    *args, **kwargs
        As for :class:`~urllib3.util.Retry`.
    give_up_at : float, optional
        A :func:`time.monotonic` time: a retry whose wait would end after it is not made
        (the last answer or error stands).
    """

    def __init__(self, *args: Any, give_up_at: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.give_up_at = give_up_at

    def new(self, **kw: Any) -> DeadlineRetry:
        """Return a copy with ``kw`` changed (urllib3 calls it on every increment)."""
        kw.setdefault("give_up_at", self.give_up_at)
        return super().new(**kw)

    def get_retry_after(self, response: Any) -> float | None:
        """Return the service's ``Retry-After`` in seconds, cut to :data:`RETRY_AFTER_MAX`."""
        after = super().get_retry_after(response)
        return None if after is None else min(after, RETRY_AFTER_MAX)

    def increment(self, method: str | None = None, url: str | None = None,
                  response: Any = None, error: Exception | None = None, _pool: Any = None,
                  _stacktrace: Any = None) -> DeadlineRetry:
        """Count one more try (see urllib3); refuse it when its wait would pass the deadline.

        Raises
        ------
        urllib3.exceptions.MaxRetryError
            When the retries are used up or the deadline comes first; its ``reason`` is the
            last error (urllib3 then returns the last answer of a retried status).
        """
        nxt = super().increment(method, url, response, error, _pool, _stacktrace)
        if self.give_up_at is not None:
            wait = (nxt.get_retry_after(response) if response is not None
                    and self.respect_retry_after_header else None)
            if wait is None:
                wait = nxt.get_backoff_time()
            if time.monotonic() + wait >= self.give_up_at:
                reason = error or ResponseError("the deadline comes before another try")
                raise MaxRetryError(_pool, url or "", reason) from reason
        return nxt


def policy(retries: int, *, idempotent: bool = False, reads: bool = True,
           give_up_at: float | None = None) -> DeadlineRetry:
    """Return the retry policy of one call (see the module's rules).

    Parameters
    ----------
    retries : int
        Most retries after the first try (``http.retries``); 0 tries once.
    idempotent : bool
        The call is a POST that may be repeated (a TAP ``/sync`` query): its 429/502/503/504
        answers are retried too.  A GET is retried anyway; a POST that is not idempotent is
        retried only when no connection was made.
    reads : bool
        Retry a GET after a read failure too (False: only connections and busy answers).
    give_up_at : float, optional
        A :func:`time.monotonic` time after which no retry starts.
    """
    n = max(0, int(retries))
    return DeadlineRetry(
        total=n, connect=n, read=n if reads and n and not idempotent else False, status=n,
        other=0,
        redirect=False, backoff_factor=BACKOFF, backoff_max=BACKOFF_MAX,
        status_forcelist=RETRY_STATUS, respect_retry_after_header=True,
        allowed_methods=_SAFE | {"POST"} if idempotent else _SAFE,
        raise_on_status=False, raise_on_redirect=False, give_up_at=give_up_at)


@contextmanager
def per_call(retry: Retry) -> Iterator[None]:
    """Make ``retry`` the policy of the requests sent on this thread inside the block."""
    token = _CALL.set(retry)
    try:
        yield
    finally:
        _CALL.reset(token)


class RetryAdapter(HTTPAdapter):
    """An :class:`~requests.adapters.HTTPAdapter` whose retry policy may be set per call.

    Inside :func:`per_call` its ``max_retries`` is that call's policy; elsewhere (pyvo's own
    requests on the same session) the adapter's default, given as ``max_retries``.
    """

    _default: Retry

    @property
    def max_retries(self) -> Retry:
        """The policy of the call under way on this thread, else the adapter's default."""
        return _CALL.get() or self._default

    @max_retries.setter
    def max_retries(self, value: Retry) -> None:
        self._default = value
