"""One error hierarchy for the CSC services, carrying the URL, HTTP status and service message."""

from __future__ import annotations

from ..errors import SampBridgeError

__all__ = [
    "CSCError",
    "ServiceError",
    "ServiceUnreachable",
    "ServiceTimeout",
    "QueryError",
    "ResultTooLarge",
]


class CSCError(SampBridgeError):
    """Base class of every error raised by the query layer.

    Parameters
    ----------
    message : str
        A sentence a person can act on.
    url : str, optional
        The URL that was requested.
    status : int, optional
        The HTTP status code, when a response came back.
    service_message : str, optional
        The service's own words, e.g. the ``QUERY_STATUS=ERROR`` text of a VOTable.
    """

    def __init__(self, message: str, url: str | None = None, status: int | None = None,
                 service_message: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.url = url
        self.status = status
        self.service_message = service_message

    def __str__(self) -> str:
        text = self.message
        if self.service_message and self.service_message not in text:
            text += f": {self.service_message}"
        return text


class ServiceError(CSCError):
    """The service answered with an HTTP error or a body that is not a usable result."""


class ServiceUnreachable(CSCError):
    """No connection could be made to the service."""


class ServiceTimeout(CSCError):
    """The service did not answer within the configured timeout."""


class QueryError(CSCError):
    """The service rejected the query (``QUERY_STATUS=ERROR``), e.g. invalid ADQL."""


class ResultTooLarge(CSCError):
    """A download went over its size cap; nothing was kept."""
