"""The CSC query layer: cone search, SIAP and TAP clients.  It knows nothing of SAMP."""

from .errors import (
    CSCError,
    QueryError,
    ResultTooLarge,
    ServiceError,
    ServiceTimeout,
    ServiceUnreachable,
)

__all__ = [
    "CSCError",
    "QueryError",
    "ResultTooLarge",
    "ServiceError",
    "ServiceTimeout",
    "ServiceUnreachable",
]
