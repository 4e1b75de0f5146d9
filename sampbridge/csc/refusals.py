"""What TAP services refuse, read from their own words, and what each was found to accept.

A refusal is a refused query (``QUERY_STATUS=ERROR``, or HTTP 400) in the service's words:
:func:`refuses_dialect` tells a cone dialect the service cannot read, :func:`refuses_upload`
a service that takes no table upload.  What was learnt is kept per service URL for the life of
the process (:func:`learnt`, :func:`remember_dialect`, :func:`no_upload`, :func:`forget`).
"""

from __future__ import annotations

import logging
import re
import threading

from .errors import QueryError, ServiceError

__all__ = ["forget", "learnt", "no_upload", "refuses_dialect", "refuses_upload",
           "remember_dialect"]

log = logging.getLogger("sampbridge.csc.tap")   # the name these lines always had

#: words that name each dialect's functions in a service's refusal
_DIALECT_WORDS = {
    "geometry": re.compile(r"\b(contains|circle|point|geometr\w*|adqlgeo)\b", re.I),
    "csc": re.compile(r"cone_distance|\bdbo\b", re.I),
}
#: how services say that they cannot read a query (a form they do not know)
_UNREADABLE = re.compile(r"pars(e|ing)|syntax|not found|unknown|not (be )?supported|unsupported|"
                         r"not recogni[sz]ed|undefined|no such function|not implemented", re.I)


def _refusal_text(exc: BaseException) -> str | None:
    """Return the service's words refusing a query (QUERY_STATUS=ERROR, HTTP 400), else None."""
    if isinstance(exc, QueryError) or (isinstance(exc, ServiceError) and exc.status == 400):
        return exc.service_message or ""
    return None


def refuses_dialect(exc: BaseException, dialect: str) -> bool:
    """Return True when ``exc`` is a service saying it cannot run ``dialect``'s cone.

    That is a refused query (``QUERY_STATUS=ERROR``, or HTTP 400) whose text names one of the
    dialect's functions or says the query could not be parsed.  A timeout, an unreachable
    service or a server failure (5xx) is not: those say nothing about the dialect; nor is a
    refused upload (see :func:`refuses_upload`).  Nothing comes after ``box``, so it is never
    refused in this sense.
    """
    text = _refusal_text(exc)
    if text is None or dialect not in _DIALECT_WORDS or refuses_upload(exc):
        return False
    return bool(_DIALECT_WORDS[dialect].search(text) or _UNREADABLE.search(text))


_NO = (r"(not (be )?supported|unsupported|not available|unavailable|not allowed|not permitted|"
       r"disabled|not enabled|unknown|not recogni[sz]ed|not implemented)")
_NO_UPLOAD = re.compile(rf"upload[^.;]*{_NO}|{_NO}[^.;]*upload", re.I)


def refuses_upload(exc: BaseException) -> bool:
    """Return True when ``exc`` is a service saying that it takes no table upload.

    That is a refused query (``QUERY_STATUS=ERROR``, or HTTP 400) whose words say, in one
    sentence, that UPLOAD is not supported (or not available, unknown, disabled...); an upload
    the service could not read is an error of its own, not this.
    """
    text = _refusal_text(exc)
    return text is not None and _NO_UPLOAD.search(text) is not None


class _Learnt:
    """What services turned out to accept, per service URL, for the life of the process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.dialect: dict[str, str] = {}
        self.no_upload: set[str] = set()

    def set_dialect(self, url: str, dialect: str, refused: dict[str, str]) -> None:
        with self.lock:
            if self.dialect.get(url) == dialect:
                return
            self.dialect[url] = dialect
        if refused:
            why = "; ".join(f"'{d}' refused ({text})" for d, text in refused.items())
            log.warning("TAP %s: %s; ADQL cones use the '%s' dialect from now on%s", url, why,
                        dialect, " (an ra/dec box, the distance cut done here)"
                        if dialect == "box" else "")
        else:
            log.info("TAP %s: ADQL cones use the '%s' dialect", url, dialect)

    def set_no_upload(self, url: str, text: str) -> bool:
        with self.lock:
            if url in self.no_upload:
                return False
            self.no_upload.add(url)
        log.warning("TAP %s refused a table upload (%s); matches use cone searches from now "
                    "on", url, text)
        return True


_LEARNT = _Learnt()


def learnt(url: str) -> dict[str, object]:
    """Return what this process learnt about the TAP service at ``url``.

    Returns
    -------
    dict
        ``dialect`` (the cone dialect that works, or ``None`` before a cone ran) and
        ``upload`` (False once the service refused an upload).
    """
    url = url.rstrip("/")
    with _LEARNT.lock:
        return {"dialect": _LEARNT.dialect.get(url), "upload": url not in _LEARNT.no_upload}


def no_upload(url: str, why: str) -> bool:
    """Remember that the service at ``url`` refused an upload (logged once); True if new."""
    return _LEARNT.set_no_upload(url.rstrip("/"), why)


def forget(url: str) -> None:
    """Forget what was learnt about the service at ``url`` (after the service changed)."""
    url = url.rstrip("/")
    with _LEARNT.lock:
        _LEARNT.dialect.pop(url, None)
        _LEARNT.no_upload.discard(url)


def remember_dialect(url: str, dialect: str, refused: dict[str, str]) -> None:
    """Remember that ``dialect`` works at ``url`` (logged once), after the ``refused`` ones.

    Parameters
    ----------
    url : str
        The TAP base URL.
    dialect : str
        The cone dialect the service accepted.
    refused : dict of str to str
        The dialects it refused first, each with the gist of its words.
    """
    _LEARNT.set_dialect(url.rstrip("/"), dialect, refused)
